"""Pass@k training with the analytical group advantage (Chen et al., "Pass@k Training for
Adaptively Balancing Exploration and Exploitation of Large Reasoning Models", arXiv:2508.10751).

The reward of a k-subset of a group is its pass@k (1 if any member is correct); a response's
advantage is the mean, over the k-subsets that contain it, of that subset's GRPO-normalised
reward. In closed form, for a group of n responses with c correct:
    R̄ = 1 − C(n−c, k)/C(n, k),  σ = sqrt(R̄(1 − R̄))
    A⁺ = (1 − R̄)/σ,  A⁻ = (1 − R̄ − C(n−c−1, k−1)/C(n−1, k−1))/σ
The paper's own k is not recovered here [UNVERIFIED]; k = 4 is a keyword default. k = 1 is GRPO
with the population std.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rlreason.algorithms import ADVANTAGES
from rlreason.algorithms.base import AdvantageInput


@ADVANTAGES.register("grpo_passk", needs_groups=True)
def grpo_passk(inp: AdvantageInput, *, k: int = 4) -> Tensor:
    """Pass@k GRPO: analytical per-response advantage of the group's pass@k reward [N, T].

    Correctness is ``inp.correct`` (1/0; NaN rows get 0 and are left out of n). Groups smaller
    than k use k = n; all-correct, all-wrong and singleton groups get 0 (σ = 0).
    """
    if k < 1:
        raise ValueError(f"grpo_passk: k must be >= 1, got {k}")
    hit = inp.correct.float()
    adv = torch.zeros_like(hit)
    for g in inp.group_index.unique().tolist():
        rows = ((inp.group_index == g) & ~torch.isnan(hit)).nonzero().squeeze(1)
        pos, neg = _group_advantages(len(rows), int(hit[rows].sum().item()), k)
        adv[rows] = torch.where(hit[rows] == 1, pos, neg)
    return adv[:, None] * inp.response_mask


def _group_advantages(n: int, c: int, k: int) -> tuple[float, float]:
    """(A⁺, A⁻) of a group with n responses and c correct."""
    k = min(k, n)
    if n < 2 or c == 0 or c == n:
        return 0.0, 0.0
    mean = 1.0 - math.comb(n - c, k) / math.comb(n, k)
    std = math.sqrt(mean * (1.0 - mean))
    if std == 0.0:  # every k-subset holds a correct response (n − c < k): no signal
        return 0.0, 0.0
    miss = math.comb(n - c - 1, k - 1) / math.comb(n - 1, k - 1)  # share of i's subsets with no hit
    return (1.0 - mean) / std, (1.0 - mean - miss) / std
