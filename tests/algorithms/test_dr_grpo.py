"""Dr. GRPO's advantage (algorithms.md §4): R − group mean, no std, against a loop."""

import math

import torch

from rlreason.algorithms import ADVANTAGES


def test_matches_a_group_mean_loop(case):
    got = ADVANTAGES.get("dr_grpo")(case.adv_input())
    n = len(case.rewards)
    for i in range(n):
        r = case.rewards[i].item()
        group = [case.rewards[j].item() for j in range(n) if case.group_index[j] == case.group_index[i]
                 and not math.isnan(case.rewards[j].item())]
        expect = 0.0 if math.isnan(r) or len(group) < 2 or max(group) == min(group) else r - sum(group) / len(group)
        assert torch.allclose(got[i], expect * case.mask[i], atol=1e-6), i


def test_no_std_so_scale_is_kept():
    r = torch.tensor([10.0, 0.0])
    from rlreason.algorithms.base import AdvantageInput

    adv = ADVANTAGES.get("dr_grpo")(AdvantageInput(r, torch.zeros(2, dtype=torch.long), torch.ones(2, 1), r))
    assert adv[:, 0].tolist() == [5.0, -5.0]
