"""Pass@k advantage: the closed form against brute force over every k-subset of the group."""

import itertools
import math

import pytest
import torch

from rlreason.algorithms import ADVANTAGES
from rlreason.algorithms.base import AdvantageInput


def brute_force(hits: list[int], k: int) -> list[float]:
    """Mean over i's k-subsets of (pass@k(subset) − mean)/std, with mean/std over all k-subsets."""
    n = len(hits)
    k = min(k, n)
    subsets = list(itertools.combinations(range(n), k))
    reward = {s: float(any(hits[j] for j in s)) for s in subsets}
    mean = sum(reward.values()) / len(subsets)
    std = math.sqrt(mean * (1 - mean))
    if n < 2 or std == 0:
        return [0.0] * n
    return [sum((reward[s] - mean) / std for s in subsets if i in s) / sum(1 for s in subsets if i in s)
            for i in range(n)]


@pytest.mark.parametrize("hits", [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0], [0, 1, 0, 1, 1], [1, 0], [1, 1, 1],
                                  [0, 0, 0, 0], [1]])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_closed_form_matches_every_subset(hits, k):
    c = torch.tensor(hits, dtype=torch.float)
    adv = ADVANTAGES.get("grpo_passk")(AdvantageInput(c, torch.zeros(len(hits), dtype=torch.long),
                                                      torch.ones(len(hits), 2), c), k=k)
    assert adv[:, 0].tolist() == pytest.approx(brute_force(hits, k), abs=1e-6)


def test_k1_is_grpo_with_population_std():
    c = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    inp = AdvantageInput(c, torch.zeros(5, dtype=torch.long), torch.ones(5, 1), c)
    grpo = ADVANTAGES.get("grpo")(inp, std_ddof=0, eps=0.0)
    assert torch.allclose(ADVANTAGES.get("grpo_passk")(inp, k=1), grpo, atol=1e-6)


def test_ragged_groups_and_nan_rows(case):
    adv = ADVANTAGES.get("grpo_passk")(case.adv_input(), k=2)
    for g in case.group_index.unique().tolist():
        rows = [i for i in range(len(case.correct)) if case.group_index[i] == g and not math.isnan(case.correct[i])]
        expect = brute_force([int(case.correct[i]) for i in rows], 2)
        for i, e in zip(rows, expect):
            assert torch.allclose(adv[i], e * case.mask[i], atol=1e-6)
    assert (adv[torch.isnan(case.correct)] == 0).all()
