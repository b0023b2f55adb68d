"""REINFORCE++ / REINFORCE++-baseline (algorithms.md §7): the spec's whitening vectors, and a loop
implementation of token rewards, discounted returns and global token-weighted whitening."""

import math

import pytest
import torch

from rlreason.algorithms import ADVANTAGES
from rlreason.algorithms.base import AdvantageInput


def spec_input():
    # groups {R=[1,0], L=[2,3]}, {R=[1,1], L=[1,2]}
    r = torch.tensor([1.0, 0.0, 1.0, 1.0])
    lengths = torch.tensor([2, 3, 1, 2])
    mask = (torch.arange(3)[None] < lengths[:, None]).float()
    return AdvantageInput(r, torch.tensor([0, 0, 1, 1]), mask, r)


@pytest.mark.parametrize("ddof,expect", [
    (1, [1.348076, -1.048503, 0.149786, 0.149786]),   # verl (unbiased variance)
    (0, [1.441153, -1.120897, 0.160128, 0.160128]),   # OpenRLHF
])
def test_spec_vector_baseline(ddof, expect):
    inp = spec_input()
    adv = ADVANTAGES.get("reinforce_pp_baseline")(inp, whiten_ddof=ddof)
    for row, value in enumerate(expect):
        tokens = adv[row][inp.response_mask[row] == 1]
        assert torch.allclose(tokens, torch.full_like(tokens, value), atol=1e-5), (row, tokens)
    assert (adv[inp.response_mask == 0] == 0).all()


def loop_reinforce(case, baseline, gamma, ddof, penalty=None, eps=1e-8):
    n, T = case.mask.shape
    outcome = []
    for i in range(n):
        r = case.rewards[i].item()
        if baseline and not math.isnan(r):
            group = [case.rewards[j].item() for j in range(n) if case.group_index[j] == case.group_index[i]
                     and not math.isnan(case.rewards[j].item())]
            r = 0.0 if len(group) < 2 or max(group) == min(group) else r - sum(group) / len(group)
        outcome.append(r)
    returns = [[0.0] * T for _ in range(n)]
    for i in range(n):
        length = int(case.mask[i].sum())
        g = 0.0
        for t in reversed(range(length)):
            reward = (0.0 if math.isnan(outcome[i]) else outcome[i]) * (t == length - 1)
            reward -= 0.0 if penalty is None else penalty[i, t].item()
            g = reward + gamma * g
            returns[i][t] = g
    cells = [(i, t) for i in range(n) for t in range(int(case.mask[i].sum())) if not math.isnan(outcome[i])]
    mean = sum(returns[i][t] for i, t in cells) / len(cells)
    var = sum((returns[i][t] - mean) ** 2 for i, t in cells) / (len(cells) - ddof)
    out = torch.zeros(n, T)
    for i, t in cells:
        out[i, t] = (returns[i][t] - mean) / math.sqrt(var + eps)
    return out


@pytest.mark.parametrize("name,baseline", [("reinforce_pp", False), ("reinforce_pp_baseline", True)])
@pytest.mark.parametrize("gamma,ddof", [(1.0, 1), (0.9, 0)])
def test_matches_a_loop(case, name, baseline, gamma, ddof):
    penalty = 0.05 * torch.rand(case.mask.shape, generator=torch.Generator().manual_seed(3)) * case.mask
    got = ADVANTAGES.get(name)(case.adv_input(kl_penalty=penalty), gamma=gamma, whiten_ddof=ddof)
    expect = loop_reinforce(case, baseline, gamma, ddof, penalty)
    assert torch.allclose(got, expect, atol=1e-5)


def test_without_kl_and_gamma_one_every_token_of_a_response_is_equal(case):
    adv = ADVANTAGES.get("reinforce_pp")(case.adv_input())
    for i in range(len(adv)):
        tokens = adv[i][case.mask[i] == 1]
        if len(tokens):
            assert torch.allclose(tokens, tokens[0].expand_as(tokens))


def test_single_valid_token_is_left_unnormalised():
    r = torch.tensor([2.0])
    mask = torch.tensor([[1.0, 0.0]])
    adv = ADVANTAGES.get("reinforce_pp")(AdvantageInput(r, torch.zeros(1, dtype=torch.long), mask, r))
    assert adv.tolist() == [[2.0, 0.0]]


def test_baseline_nan_rows_stay_out_even_in_groups_with_one_valid_or_equal_rewards():
    # group 0: both rewards NaN; group 1: [1, 0]; lengths [1, 1, 2, 1], ddof 1 (float64 reference by hand:
    # token values [.5, .5, −.5], mean 1/6, var 1/3 → (.5 − 1/6)/√(1/3) = 0.577350, (−.5 − 1/6)/√(1/3) = −1.154701)
    nan = float("nan")
    r = torch.tensor([nan, nan, 1.0, 0.0])
    mask = (torch.arange(2)[None] < torch.tensor([1, 1, 2, 1])[:, None]).float()
    adv = ADVANTAGES.get("reinforce_pp_baseline")(AdvantageInput(r, torch.tensor([0, 0, 1, 1]), mask, r),
                                                  whiten_ddof=1)
    assert adv[:2].abs().max().item() == 0.0
    assert adv[2].tolist() == pytest.approx([0.577350, 0.577350], abs=1e-6)
    assert adv[3].tolist() == pytest.approx([-1.154701, 0.0], abs=1e-6)
    # one NaN beside one valid reward (a singleton once NaN is left out), and beside two equal ones
    r2 = torch.tensor([nan, 1.0, nan, 1.0, 1.0, 1.0, 0.0])
    mask2 = torch.ones(7, 1)
    adv2 = ADVANTAGES.get("reinforce_pp_baseline")(AdvantageInput(r2, torch.tensor([0, 0, 1, 1, 1, 2, 2]), mask2, r2))
    assert adv2[0].item() == 0.0 and adv2[2].item() == 0.0
    valid = adv2[[1, 3, 4, 5, 6], 0]  # outcomes [0, 0, 0, .5, −.5] whitened over these five tokens only
    expect = torch.tensor([0.0, 0.0, 0.0, 0.5, -0.5])
    expect = (expect - expect.mean()) / torch.sqrt(expect.var(unbiased=True) + 1e-8)
    assert torch.allclose(valid, expect, atol=1e-5)
