"""Uniform prompt sampler: walks a seeded permutation, reshuffling at every epoch boundary."""

from __future__ import annotations

import torch


class PromptSampler:
    def __init__(self, num_rows: int, batch_size: int, seed: int, shuffle: bool = True):
        self.num_rows, self.batch_size, self.seed, self.shuffle = num_rows, batch_size, seed, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_rows))
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        return torch.randperm(self.num_rows, generator=g).tolist()

    def next(self) -> list[int]:
        """Row indices of the next ``batch_size`` prompts (crossing into the next epoch if needed)."""
        out: list[int] = []
        while len(out) < self.batch_size:
            if self.position == self.num_rows:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
            take = min(self.batch_size - len(out), self.num_rows - self.position)
            out += self._order[self.position:self.position + take]
            self.position += take
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._permutation()
