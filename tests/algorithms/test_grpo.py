"""GRPO advantages against algorithms.md §0.2 / §2 and an independent per-group loop."""

import math

import pytest
import torch

from rlreason.algorithms import ADVANTAGES
from rlreason.algorithms.base import AdvantageInput


def run(rewards, groups, T=3, **kw):
    r = torch.tensor(rewards, dtype=torch.float32)
    g = torch.tensor(groups)
    mask = torch.ones(len(rewards), T)
    return ADVANTAGES.get("grpo")(AdvantageInput(r, g, mask, r), **kw)


def test_spec_vector_ddof1_and_ddof0():
    adv = run([1, 0, 0, 1], [0, 0, 0, 0])
    assert torch.allclose(adv[:, 0], torch.tensor([0.866024, -0.866024, -0.866024, 0.866024]), atol=1e-6)
    adv0 = run([1, 0, 0, 1], [0, 0, 0, 0], std_ddof=0)
    assert torch.allclose(adv0[:, 0], torch.tensor([0.999998, -0.999998, -0.999998, 0.999998]), atol=1e-6)


def test_all_equal_group_is_exactly_zero_even_for_non_dyadic_rewards():
    adv = run([0.7] * 7 + [1, 1, 1, 1], [0] * 7 + [1] * 4)
    assert torch.equal(adv, torch.zeros_like(adv))


def test_broadcast_to_tokens_and_masked():
    r = torch.tensor([1.0, 0.0])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv = ADVANTAGES.get("grpo")(AdvantageInput(r, torch.tensor([0, 0]), mask, r))
    assert adv[0, 2] == 0 and adv[1, 1] == 0 and adv[0, 0] == adv[0, 1] > 0


def test_singleton_group_zero_or_raw():
    assert torch.equal(run([1.0, 0.5, 0.0], [0, 1, 1])[0], torch.zeros(3))
    assert torch.allclose(run([1.0, 0.5, 0.0], [0, 1, 1], singleton="raw")[0], torch.ones(3))


def test_nan_rewards_are_excluded_and_get_zero():
    adv = run([1.0, float("nan"), 0.0, 0.0], [0, 0, 0, 0])
    ref = run([1.0, 0.0, 0.0], [0, 0, 0])
    assert adv[1].abs().sum() == 0
    assert torch.allclose(adv[[0, 2, 3], 0], ref[:, 0])


def test_dr_grpo_variant_no_std():
    adv = run([1, 0, 0, 0], [0, 0, 0, 0], norm_by_std=False)
    assert torch.allclose(adv[:, 0], torch.tensor([0.75, -0.25, -0.25, -0.25]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ragged_groups_match_a_per_group_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 7, (6,), generator=gen).tolist()
    groups = [g for g, s in enumerate(sizes) for _ in range(s)]
    rewards = torch.randint(0, 3, (len(groups),), generator=gen).float() / 2
    perm = torch.randperm(len(groups), generator=gen)  # rows of a group need not be adjacent
    got = run(rewards[perm].tolist(), [groups[i] for i in perm.tolist()], T=1)[:, 0]
    for row, i in enumerate(perm.tolist()):
        members = [rewards[j].item() for j in range(len(groups)) if groups[j] == groups[i]]
        n = len(members)
        if n == 1 or max(members) == min(members):
            expect = 0.0
        else:
            mean = sum(members) / n
            std = math.sqrt(sum((x - mean) ** 2 for x in members) / (n - 1))
            expect = (rewards[i].item() - mean) / (std + 1e-6)
        assert got[row].item() == pytest.approx(expect, abs=1e-5)
