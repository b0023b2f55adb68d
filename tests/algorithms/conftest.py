"""A random step's worth of responses for the zoo tests: ragged groups in shuffled row order,
including an all-equal group, a singleton, a group with a fully masked (truncated) response, a
group with continuous rewards and one with a NaN reward."""

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from rlreason.algorithms.base import AdvantageInput, LossInput


@dataclass
class Case:
    rewards: Tensor  # [N]
    correct: Tensor  # [N] 1/0/NaN
    group_index: Tensor  # [N] (ids not contiguous, rows shuffled)
    mask: Tensor  # [N, T]
    lp: Tensor  # [N, T] leaf with grad
    old: Tensor  # [N, T]
    ref: Tensor  # [N, T]
    advantages: Tensor  # [N, T] one value per response, 0 on padding

    def adv_input(self, **kw) -> AdvantageInput:
        return AdvantageInput(self.rewards, self.group_index, self.mask, self.correct, self.old, self.ref, **kw)

    def loss_input(self, rows=None, **kw) -> LossInput:
        rows = torch.arange(len(self.rewards)) if rows is None else rows
        return LossInput(logprobs=self.lp[rows], old_logprobs=self.old[rows], advantages=self.advantages[rows],
                         response_mask=self.mask[rows], rewards=self.rewards[rows], correct=self.correct[rows],
                         group_index=self.group_index[rows], ref_logprobs=self.ref[rows], **kw)


def make_case(seed: int, T: int = 6) -> Case:
    gen = torch.Generator().manual_seed(seed)
    nan = float("nan")
    groups = [  # (group id, rewards)
        (3, [1.0, 0.0, 0.0, 1.0]), (7, [1.0, 1.0, 1.0, 1.0]), (8, [0.0]), (11, [1.0, 0.0, 1.0, 0.0, 0.0]),
        (12, [0.5, 1.0, 0.0]), (20, [1.0, nan, 0.0]), (21, [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]),
    ]
    gid = torch.tensor([g for g, rs in groups for _ in rs])
    rewards = torch.tensor([r for _, rs in groups for r in rs])
    n = len(rewards)
    lengths = torch.randint(1, T + 1, (n,), generator=gen)
    lengths[int((gid == 11).nonzero()[1])] = 0  # a truncated response whose tokens are masked out
    perm = torch.randperm(n, generator=gen)
    gid, rewards, lengths = gid[perm], rewards[perm], lengths[perm]
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    lp = (-2.0 * torch.rand(n, T, generator=gen)).requires_grad_()
    old = lp.detach() + 0.3 * torch.randn(n, T, generator=gen)
    ref = lp.detach() - 0.2 * torch.randn(n, T, generator=gen)
    adv = torch.randn(n, 1, generator=gen).expand(n, T) * mask
    correct = torch.where(torch.isnan(rewards), rewards, (rewards == 1).float())
    return Case(rewards, correct, gid, mask, lp, old, ref, adv)


@pytest.fixture(params=[0, 1, 2])
def case(request) -> Case:
    return make_case(request.param)


@pytest.fixture
def case_factory():
    return make_case


def members(case: Case, i: int) -> list[int]:
    """Rows of row i's group (a plain loop, independent of the scatter code)."""
    return [j for j in range(len(case.rewards)) if int(case.group_index[j]) == int(case.group_index[i])]
