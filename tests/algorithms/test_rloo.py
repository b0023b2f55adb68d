"""RLOO (algorithms.md §6): spec vector, and a leave-one-out loop on ragged groups."""

import math

import pytest
import torch

from rlreason.algorithms import ADVANTAGES
from rlreason.algorithms.base import AdvantageInput


def test_spec_vector():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    adv = ADVANTAGES.get("rloo")(AdvantageInput(r, torch.zeros(4, dtype=torch.long), torch.ones(4, 2), r))
    assert torch.allclose(adv[:, 0], torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]), atol=1e-6)


def test_matches_a_leave_one_out_loop(case):
    got = ADVANTAGES.get("rloo")(case.adv_input())
    n = len(case.rewards)
    for i in range(n):
        r = case.rewards[i].item()
        others = [case.rewards[j].item() for j in range(n) if j != i and case.group_index[j] == case.group_index[i]
                  and not math.isnan(case.rewards[j].item())]
        group = others + [r]
        expect = 0.0 if math.isnan(r) or not others or max(group) == min(group) else r - sum(others) / len(others)
        assert torch.allclose(got[i], expect * case.mask[i], atol=1e-6), i


def test_kl_in_reward_is_subtracted_from_the_sequence_reward(case):
    penalty = 0.01 * torch.rand(case.mask.shape, generator=torch.Generator().manual_seed(1)) * case.mask
    folded = AdvantageInput(case.rewards - penalty.sum(-1), case.group_index, case.mask, case.correct)
    assert torch.allclose(ADVANTAGES.get("rloo")(case.adv_input(kl_penalty=penalty)),
                          ADVANTAGES.get("rloo")(folded), atol=1e-6)
    assert torch.allclose(ADVANTAGES.get("grpo")(case.adv_input(kl_penalty=penalty)),
                          ADVANTAGES.get("grpo")(folded), atol=1e-5)


@pytest.mark.parametrize("name", ["rloo", "dr_grpo"])
def test_zero_variance_and_singleton_groups_are_exactly_zero(name):
    r = torch.tensor([0.7] * 5 + [1.0])
    adv = ADVANTAGES.get(name)(AdvantageInput(r, torch.tensor([0] * 5 + [1]), torch.ones(6, 3), r))
    assert torch.equal(adv, torch.zeros_like(adv))
