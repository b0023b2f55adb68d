"""What prompt samplers exchange with the controller (driver-side only: nothing here crosses Ray).

A sampler is a registered class ``cls(ctx: SamplerContext, **kwargs)`` with one protocol:

    next(step, num_prompts) -> PromptDraw   before generation: which prompts, how many responses each
    scored(groups)                           after each scored round, filtered groups included (pass@k)
    weights(groups) -> [N] | None            once per step, multipliers of the advantages (Prompt-GDRO)
    observe(outcome)                         after the update: the per-response loss signal (GDRO)
    metrics() -> dict                        logged with the step
    state_dict() / load_state_dict(state)    checkpointed (rlreason.checkpoint), so a resume is exact

The controller calls every sampler the same way; ``Sampler`` gives the no-op defaults.
Shapes: B prompts (groups) of the step, N responses, T response tokens (rlreason.types).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from rlreason.types import RewardResult, RolloutBatch, TrainBatch


@dataclass
class SamplerContext:
    num_rows: int  # prompts in the training set; a row index is the prompt's stable uid
    prompts_per_step: int  # data.prompts_per_step
    group_size: int  # rollout.n: responses per prompt (Rollout-GDRO's mean budget n̄)
    seed: int
    shuffle: bool = True


@dataclass
class PromptDraw:
    indices: list[int]  # [B] dataset rows of the drawn prompts (their uids)
    group_sizes: list[int]  # [B] responses to sample for each prompt


@dataclass
class Groups:
    """The scored groups of (part of) a step: group g holds the responses to dataset row ``uids[g]``."""

    rollout: RolloutBatch  # group_index in 0..B-1, rows of a group adjacent
    rewards: RewardResult
    uids: list[int]  # [B]
    stats: dict[str, float] = field(default_factory=dict)  # sampling/* metrics of the step

    def __len__(self) -> int:
        return len(self.uids)

    @property
    def sizes(self) -> Tensor:  # [B] responses per group
        return torch.bincount(self.rollout.group_index, minlength=len(self.uids))

    def select(self, keep: list[int]) -> "Groups":
        """Keep the groups ``keep`` (in that order), renumbered 0..len(keep)-1."""
        new_id = torch.full((len(self.uids),), -1, dtype=torch.long)
        new_id[torch.tensor(keep, dtype=torch.long)] = torch.arange(len(keep))
        gid = new_id[self.rollout.group_index]
        kept = (gid >= 0).nonzero().squeeze(1)
        rows = kept[torch.sort(gid[kept], stable=True).indices]  # rows of a group stay adjacent, in order
        rollout = replace(self.rollout.select(rows), group_index=gid[rows])
        return replace(self, rollout=rollout, rewards=self.rewards.select(rows), uids=[self.uids[g] for g in keep])

    def compact(self) -> "Groups":
        """Drop groups left without responses (e.g. after reward errors), renumbering the rest."""
        sizes = self.sizes
        return self.select([g for g in range(len(self.uids)) if int(sizes[g]) > 0])

    @staticmethod
    def concat(parts: list["Groups"]) -> "Groups":
        """The groups of several generation rounds, one after another."""
        offsets, total = [], 0
        for p in parts:
            offsets.append(total)
            total += len(p.uids)
        rollouts = [replace(p.rollout, group_index=p.rollout.group_index + o) for p, o in zip(parts, offsets)]
        merged = RolloutBatch.concat(rollouts)
        merged.gen_seconds = sum(p.rollout.gen_seconds for p in parts)  # rounds run one after another
        return Groups(merged, RewardResult.concat([p.rewards for p in parts]), [u for p in parts for u in p.uids])


@dataclass
class StepOutcome:
    """What the step trained on, handed to ``Sampler.observe`` after the update."""

    step: int
    groups: Groups  # the trained groups (after filtering)
    batch: TrainBatch  # advantages as trained (times the sampler's weights, if it gave any)
    # log π_θ of batch's response tokens under the *updated* policy ([N, T]); one extra learner
    # forward pass, run only when a sampler calls it
    updated_logprobs: Callable[[], Tensor] = field(default=lambda: None)  # type: ignore[assignment]


class Sampler:
    """Defaults of the protocol: uniform draws of ``ctx.group_size`` responses, no feedback."""

    def __init__(self, ctx: SamplerContext):
        self.ctx = ctx

    def next(self, step: int, num_prompts: int) -> PromptDraw:
        raise NotImplementedError

    def scored(self, groups: Groups) -> None:
        pass

    def weights(self, groups: Groups) -> Optional[Tensor]:
        return None

    def observe(self, outcome: StepOutcome) -> None:
        pass

    def metrics(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def group_correct(groups: Groups) -> Tensor:
    """[B] 1.0 where any response of the group is correct (pass@k of the step, algorithms.md §11.2).

    "Correct" is the verifier's verdict; where no verifier ran, a reward > 0.5 counts (as the GDRO code).
    """
    c = groups.rewards.correct.double()
    ok = torch.where(torch.isnan(c), (groups.rewards.scores.double() > 0.5).double(), c)
    out = torch.zeros(len(groups.uids), dtype=torch.float64)
    return out.scatter_reduce(0, groups.rollout.group_index, ok, "amax", include_self=True)
