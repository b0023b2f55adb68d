"""Prompt samplers: the registry (``SAMPLERS``), the uniform walk, and ``PromptSampler`` under both.

Every sampler is a class registered here and built as ``cls(ctx: SamplerContext, **sampling.sampler_kwargs)``;
the protocol it implements (next / scored / weights / observe / state) is in ``rlreason.sampling.base``.
The GDRO samplers live in ``rlreason.sampling.gdro_samplers`` and register themselves on import (bottom).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from rlreason.registry import Registry
from rlreason.sampling.base import PromptDraw, Sampler, SamplerContext

SAMPLERS = Registry("prompt sampler", "cls(ctx: SamplerContext, **kwargs) -> Sampler (next(step, num_prompts) -> "
                                      "PromptDraw; observe(StepOutcome) after the update)")


class PromptSampler:
    """Uniform prompt order: walks a seeded permutation, reshuffling at every epoch boundary."""

    def __init__(self, num_rows: int, batch_size: int, seed: int, shuffle: bool = True):
        self.num_rows, self.batch_size, self.seed, self.shuffle = num_rows, batch_size, seed, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_rows))
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        return torch.randperm(self.num_rows, generator=g).tolist()

    def next(self, count: Optional[int] = None) -> list[int]:
        """Row indices of the next ``count`` (default ``batch_size``) prompts, crossing into the next epoch if needed."""
        count = self.batch_size if count is None else count
        out: list[int] = []
        while len(out) < count:
            if self.position == self.num_rows:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
            take = min(count - len(out), self.num_rows - self.position)
            out += self._order[self.position:self.position + take]
            self.position += take
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._permutation()


@SAMPLERS.register("uniform")
class UniformSampler(Sampler):
    """Uniform: a seeded permutation of the prompts (data.shuffle), rollout.n responses each."""

    def __init__(self, ctx: SamplerContext):
        super().__init__(ctx)
        self.walk = PromptSampler(ctx.num_rows, ctx.prompts_per_step, ctx.seed, ctx.shuffle)

    def next(self, step: int, num_prompts: int) -> PromptDraw:
        idx = self.walk.next(num_prompts)
        return PromptDraw(idx, [self.ctx.group_size] * len(idx))

    def state_dict(self) -> dict[str, Any]:
        return self.walk.state_dict()  # the format of checkpoints written before the registry existed

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.walk.load_state_dict(state)


def build_sampler(name: str, ctx: SamplerContext, kwargs: dict[str, Any]) -> Sampler:
    """The sampler a recipe names (registered name or 'module:Class'), built with its kwargs."""
    return SAMPLERS.get(name)(ctx, **kwargs)


from rlreason.sampling import gdro_samplers  # noqa: E402,F401  (registers gdro, rollout_gdro)
