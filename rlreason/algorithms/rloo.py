"""RLOO: REINFORCE with a leave-one-out baseline (Ahmadian et al., "Back to Basics: Revisiting
REINFORCE Style Optimization for Learning from Human Feedback in LLMs", arXiv:2402.14740;
Kool et al. 2019; algorithms.md §6).

A_i = R_i − mean of the *other* responses of the group = n/(n−1)·(R_i − mean_g). The paper folds
the RLHF KL into the reward (R − β·Σ_t k1): set ``algorithm.kl_in_reward=true`` with
``algorithm.kl_coef=β``. Not here: the paper's whole-sequence REINFORCE loss — the advantage is
broadcast to tokens and used inside the configured policy loss, as verl and OpenRLHF do.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlreason.algorithms import ADVANTAGES
from rlreason.algorithms.base import AdvantageInput
from rlreason.algorithms.group_stats import group_stats
from rlreason.algorithms.kl_reward import sequence_rewards


@ADVANTAGES.register("rloo", needs_groups=True)
def rloo(inp: AdvantageInput) -> Tensor:
    """RLOO: A_i = R_i − (1/(n_g−1))·Σ_{j≠i} R_j broadcast to tokens [N, T].

    Singleton groups have no "others" and get 0 (verl's vectorised version; the loop version
    returns R); all-equal groups exactly 0; NaN rewards 0 and left out of n_g and the sums.
    """
    r = sequence_rewards(inp)
    stats = group_stats(r, inp.group_index, ddof=0)
    n = stats.count
    adv = n / (n - 1).clamp(min=1) * (r - stats.mean)
    zero = stats.all_equal | (n <= 1) | torch.isnan(r)
    adv = torch.where(zero, torch.zeros_like(adv), adv)
    return adv[:, None] * inp.response_mask
