"""Dynamic sampling: keep only groups that carry a learning signal, and refill the batch.

A group whose rewards (or verdicts) are all equal has zero GRPO advantage everywhere: it costs a
forward/backward and teaches nothing. Three modes (``sampling.dynamic.mode``):

- ``off``: one round of data.prompts_per_step prompts, every group kept.
- ``dapo`` (DAPO, arXiv:2503.14476 §3.2; algorithms.md §3.2): drop constant groups, draw another
  round of ceil(oversample·B) prompts until B groups survive, then keep exactly the first B. At most
  ``max_rounds`` rounds; after that either train on what survived or raise (``on_exhausted``).
- ``predictive`` (DOT, arXiv:2601.03969, "predictive dynamic sampling"; §12.5): a single round whose
  size is B·clip((1/mean p)(1 + std p), f_min, f_max), p the survival rates of the last ``window``
  steps; every surviving group is trained on.

The controller drives it through a ``Pool`` per step (``pool.wants_more()``, ``pool.prompts_wanted()``,
``pool.add(groups)``, ``pool.result()``) and never asks which mode is on. An empty result skips the
step. std p uses ddof 0 (numpy's default, as the DOT code).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from rlreason.algorithms.group_stats import group_stats
from rlreason.sampling.base import Groups


class DynamicSamplingExhausted(RuntimeError):
    pass


def constant_groups(values: Tensor, group_index: Tensor, num_groups: int) -> Tensor:
    """[B] bool: the group's valid values are all equal (NaN skipped; no valid value counts as constant)."""
    if len(values) == 0:
        return torch.ones(num_groups, dtype=torch.bool)
    equal = group_stats(values.double(), group_index).all_equal.double()
    out = torch.ones(num_groups, dtype=torch.float64).scatter_reduce(0, group_index, equal, "amin")
    return out > 0.5


def predicted_factor(rates: list[float], initial: float, lo: float, hi: float) -> float:
    """DOT's PDS factor: clip((1/mean p)(1 + std p), lo, hi); ``initial`` before any rate, ``hi`` if mean p = 0."""
    if not rates:
        return initial
    p = torch.tensor(rates, dtype=torch.float64)
    mean = float(p.mean())
    if mean <= 0:
        return hi
    return min(max((1.0 / mean) * (1.0 + float(p.std(correction=0))), lo), hi)


class DynamicSampling:
    """``off``: one round, nothing filtered. Subclasses change how many prompts, what is kept, when to stop."""

    filters = False

    def __init__(self, cfg, prompts_per_step: int):
        self.cfg, self.batch = cfg, prompts_per_step

    def pool(self) -> "Pool":
        return Pool(self)

    def prompts(self, kept: int, rounds: int) -> int:
        return self.batch

    def more(self, kept: int, rounds: int) -> bool:
        return rounds == 0

    def finish(self, kept: Groups, drawn: int, rounds: int) -> Groups:
        return kept

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class DAPODynamicSampling(DynamicSampling):
    """Refill rounds of ceil(oversample·B) prompts until B groups survive (DAPO §3.2)."""

    filters = True

    def prompts(self, kept: int, rounds: int) -> int:
        return math.ceil(self.cfg.oversample * self.batch)

    def more(self, kept: int, rounds: int) -> bool:
        capped = self.cfg.max_rounds > 0 and rounds >= self.cfg.max_rounds
        return kept < self.batch and not capped

    def finish(self, kept: Groups, drawn: int, rounds: int) -> Groups:
        if len(kept) < self.batch and len(kept) > 0 and self.cfg.on_exhausted == "error":
            raise DynamicSamplingExhausted(
                f"dynamic sampling kept {len(kept)} of the {self.batch} groups a step needs after "
                f"{rounds} rounds ({drawn} prompts drawn); raise sampling.dynamic.max_rounds or oversample, "
                "or set sampling.dynamic.on_exhausted=train")
        return kept.select(list(range(min(len(kept), self.batch))))  # exactly B groups (§3.2)


class PredictiveDynamicSampling(DynamicSampling):
    """One round sized by the recent survival rate; all survivors trained on (DOT's PDS)."""

    filters = True

    def __init__(self, cfg, prompts_per_step: int):
        super().__init__(cfg, prompts_per_step)
        self.rates: list[float] = []

    def prompts(self, kept: int, rounds: int) -> int:
        c = self.cfg
        return math.ceil(self.batch * predicted_factor(self.rates, c.initial_factor, c.min_factor, c.max_factor))

    def finish(self, kept: Groups, drawn: int, rounds: int) -> Groups:
        self.rates = (self.rates + [len(kept) / max(drawn, 1)])[-self.cfg.window:]
        return kept

    def state_dict(self) -> dict[str, Any]:
        return {"rates": list(self.rates)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rates = list(state["rates"])


DYNAMIC_MODES = {"off": DynamicSampling, "dapo": DAPODynamicSampling, "predictive": PredictiveDynamicSampling}


def build_dynamic_sampling(cfg, prompts_per_step: int) -> DynamicSampling:
    return DYNAMIC_MODES[cfg.mode](cfg, prompts_per_step)


class Pool:
    """The groups kept so far in one step, and the counts logged as sampling/*."""

    def __init__(self, mode: DynamicSampling):
        self.mode, self.parts, self.rounds, self.drawn, self.filtered = mode, [], 0, 0, 0
        self.shaping: dict[str, float] = {}  # counts the shape phase left on each round's groups (dot/*)

    @property
    def kept(self) -> int:
        return sum(len(p) for p in self.parts)

    def wants_more(self) -> bool:
        return self.mode.more(self.kept, self.rounds)

    def prompts_wanted(self) -> int:
        return self.mode.prompts(self.kept, self.rounds)

    def add(self, groups: Groups) -> None:
        """Keep the groups whose metric varies (every group when the mode does not filter)."""
        self.rounds += 1
        self.drawn += len(groups)
        for k, v in groups.stats.items():
            self.shaping[k] = self.shaping.get(k, 0.0) + v
        keep = list(range(len(groups)))
        if self.mode.filters:
            values = groups.rewards.correct if self.mode.cfg.metric == "correct" else groups.rewards.scores
            constant = constant_groups(values, groups.rollout.group_index, len(groups))
            keep = [g for g in keep if not bool(constant[g])]
        self.filtered += len(groups) - len(keep)
        self.parts.append(groups.select(keep))

    def result(self) -> Groups:
        out = self.mode.finish(Groups.concat(self.parts), self.drawn, self.rounds)
        sizes = out.sizes.double()
        out.stats = {
            **self.shaping,
            "sampling/rounds": float(self.rounds),
            "sampling/prompts_drawn": float(self.drawn),
            "sampling/groups_kept": float(len(out)),
            "sampling/groups_filtered": float(self.filtered),
            "sampling/groups_surplus": float(self.kept - len(out)),  # survivors beyond the batch (dapo)
            "sampling/rollouts_per_prompt": float(sizes.mean()) if len(out) else 0.0,
        }
        return out
