"""GDRO maths against the spec's vectors (algorithms.md §11.3, §11.4) and the DP budget match."""

import itertools
import random

import pytest
import torch

from rlreason.sampling import gdro


def test_prompt_gdro_q_vector():
    q = gdro.exploration_probs(torch.tensor([-0.02, 0.05, 0.30]), eta=0.65, gamma=0.01)
    assert q.tolist() == pytest.approx([0.305368, 0.319429, 0.375203], abs=1e-6)
    assert float(q.sum()) == pytest.approx(1.0)


def test_class_weights_code_and_paper_forms():
    s = torch.tensor([-0.02, 0.05, 0.30])
    assert gdro.class_weights(s, 0.65, 0.01, cap=15.0).tolist() == pytest.approx([0.305368, 0.319429, 0.375203],
                                                                                 abs=1e-6)
    paper = gdro.class_weights(torch.tensor([-0.02, 0.05, 9.0]), 0.65, 0.01, cap=15.0, form="paper", score_clip=5.0)
    assert paper.tolist() == pytest.approx([torch.exp(torch.tensor(-0.013)).item(),
                                            torch.exp(torch.tensor(0.0325)).item(), min(float(torch.exp(torch.tensor(3.25))), 15.0)],
                                           rel=1e-6)


def test_response_weights_mean_one_then_cap():
    per_bin = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    bins = torch.tensor([0, 0, 1, 2, 2, 2])
    w = gdro.response_weights(per_bin, bins, cap=15.0)
    assert float(w.mean()) == pytest.approx(1.0)
    assert (w[3] / w[0]).item() == pytest.approx(2.5)
    capped = gdro.response_weights(torch.tensor([0.01, 1.0], dtype=torch.float64), torch.tensor([0, 0, 0, 1]), cap=2.0)
    assert float(capped.max()) == 2.0  # mean-1 would give 3.96 to the last response; the cap wins
    equal = gdro.response_weights(torch.tensor([0.4, 0.4], dtype=torch.float64), torch.tensor([0, 1, 1]), cap=15.0)
    assert equal.tolist() == pytest.approx([1.0, 1.0, 1.0])  # equal weights: a no-op


def test_square_root_allocation_vector():
    n = gdro.sqrt_allocation(torch.tensor([1.0, 4.0, 9.0]), torch.tensor([0.5, 0.3, 0.2]), 4)
    assert n.tolist() == pytest.approx([2.352941, 4.705882, 7.058824], abs=1e-6)
    assert float((torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64) * n).sum()) == pytest.approx(4.0)
    # it minimises the variance proxy sum q v / n at that mean: nearby feasible points are worse
    v, q = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64), torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    best = float((q * v / n).sum())
    for d in (0.1, -0.1):
        m = n + torch.tensor([d / 0.5, -d / 0.3, 0.0], dtype=torch.float64)
        assert float((q * v / m).sum()) > best


def test_loss_signal_is_the_token_mean_clipped_surrogate():
    adv = torch.tensor([[1.0, 1.0, 0.0], [-2.0, -2.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    old = torch.zeros(2, 3)
    assert gdro.loss_signal(adv, mask, None, old).tolist() == pytest.approx([-1.0, 2.0])  # rho = 1: -A
    lp = torch.log(torch.tensor([[1.5, 1.0, 1.0], [0.5, 1.0, 1.0]]))
    # row 0: max(-1.5, -1.28) = -1.28 and -1.0 -> -1.14; row 1: max(1.0, 1.6) = 1.6, 2, 2 -> 5.6/3
    assert gdro.loss_signal(adv, mask, lp, old, 0.2, 0.28).tolist() == pytest.approx([-1.14, 5.6 / 3], rel=1e-6)


def brute_force(scores, counts, arms, target):
    best = None
    for picks in itertools.product(range(len(arms)), repeat=len(counts)):
        total = sum(c * arms[a] for c, a in zip(counts, picks))
        value = sum(scores[b][a] for b, a in enumerate(picks))
        key = (abs(total - target), -value)
        if best is None or key < best[0]:
            best = (key, picks)
    return best


def test_dp_matches_the_budget_exactly_and_maximises_the_score():
    rng = random.Random(0)
    arms = list(range(2, 13))
    for _ in range(40):
        k = rng.randint(1, 3)
        counts = [rng.randint(1, 6) for _ in range(k)]
        scores = [[rng.gauss(0, 1) for _ in arms] for _ in range(k)]
        picks = gdro.match_budget(scores, counts, arms, 4 * sum(counts))
        assert sum(c * arms[a] for c, a in zip(counts, picks)) == 4 * sum(counts)  # exact: n̄ = 4 is an arm
        (gap, neg_value), _ = brute_force(scores, counts, arms, 4 * sum(counts))
        assert gap == 0
        assert sum(scores[b][a] for b, a in enumerate(picks)) == pytest.approx(-neg_value)


def test_dp_infeasible_budget_takes_the_closest_total_and_ties_go_to_uniform():
    picks = gdro.match_budget([[0.0, 0.0]], [3], [2, 4], 10)  # totals 6 or 12: 12 is closer
    assert picks == [1]
    flat = [[0.0] * 11] * 3
    picks = gdro.match_budget(flat, [2, 3, 5], list(range(2, 13)), 40)
    assert [list(range(2, 13))[a] for a in picks] == [4, 4, 4]  # no information: everyone gets n̄


def test_arms_and_realised_mean():
    assert gdro.default_arms(4) == list(range(2, 13))
    assert gdro.realised_mean([2, 3], [6, 2]) == pytest.approx((12 + 6) / 5)
    lp = gdro.arm_log_probs(torch.zeros(2, 4), 0.65, 0.01)
    assert torch.allclose(lp.exp(), torch.full((2, 4), 0.25, dtype=torch.float64))
