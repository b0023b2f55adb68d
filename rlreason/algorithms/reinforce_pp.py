"""REINFORCE++ and REINFORCE++-baseline (Hu, "REINFORCE++: A Simple and Efficient Approach for
Aligning Large Language Models", arXiv:2501.03262; algorithms.md §7).

Token rewards: the outcome R_i on the response's last token minus the per-token KL penalty
(``algorithm.kl_in_reward``: β·k1(lp_old, lp_ref)); discounted returns within each response
(each row is one response, so the sum restarts at every EOS); then the returns are whitened over
every valid token of the step's batch — token-weighted, so long responses weigh more, as in verl
and OpenRLHF. The baseline variant first subtracts the group mean from R_i (no std).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlreason.algorithms import ADVANTAGES
from rlreason.algorithms.base import AdvantageInput
from rlreason.algorithms.group_stats import group_stats


@ADVANTAGES.register("reinforce_pp")
def reinforce_pp(inp: AdvantageInput, *, gamma: float = 1.0, whiten_ddof: int = 1, eps: float = 1e-8) -> Tensor:
    """REINFORCE++: globally whitened discounted returns of R at EOS − β·k1 per token [N, T].

    ``whiten_ddof`` 1 is verl's unbiased variance, 0 OpenRLHF's; ``eps`` goes inside the sqrt.
    """
    return _reinforce(inp, inp.rewards.float(), gamma, whiten_ddof, eps)


@ADVANTAGES.register("reinforce_pp_baseline", needs_groups=True)
def reinforce_pp_baseline(inp: AdvantageInput, *, gamma: float = 1.0, whiten_ddof: int = 1,
                          eps: float = 1e-8) -> Tensor:
    """REINFORCE++-baseline: R_i − mean_g (no std), then REINFORCE++'s returns and global whitening [N, T].

    All-equal and singleton groups get a 0 outcome term before whitening; OpenRLHF recommends this
    variant for verifiable rewards, with the KL as a loss term (k2) rather than in the reward.
    """
    r = inp.rewards.float()
    stats = group_stats(r, inp.group_index, ddof=0)
    centred = torch.where(stats.all_equal | (stats.count <= 1), torch.zeros_like(r), r - stats.mean)
    centred = torch.where(torch.isnan(r), r, centred)  # a NaN row stays out of the whitening (§17.3)
    return _reinforce(inp, centred, gamma, whiten_ddof, eps)


def _reinforce(inp: AdvantageInput, outcome: Tensor, gamma: float, ddof: int, eps: float) -> Tensor:
    mask = inp.response_mask.float()
    valid = ~torch.isnan(outcome)  # NaN reward: advantage 0 and out of the whitening statistics
    weight = mask * valid[:, None]
    rewards = torch.nan_to_num(outcome)[:, None] * last_token(mask)
    if inp.kl_penalty is not None:
        rewards = rewards - inp.kl_penalty.float() * mask
    return whiten(discounted_returns(rewards, gamma), weight, ddof, eps)


def last_token(mask: Tensor) -> Tensor:
    """[N, T] one-hot of each row's last valid token (all zeros for an empty row)."""
    width = mask.shape[1]
    last = width - 1 - torch.flip(mask, [1]).argmax(-1)
    return torch.nn.functional.one_hot(last, width).to(mask.dtype) * mask


def discounted_returns(rewards: Tensor, gamma: float) -> Tensor:
    """G_t = Σ_{t'≥t} γ^{t'−t} r_{t'} along each row of [N, T] (padding carries reward 0)."""
    if gamma == 1.0:
        return rewards.flip(-1).cumsum(-1).flip(-1)
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = rewards[:, t] + gamma * running
        out[:, t] = running
    return out


def whiten(x: Tensor, weight: Tensor, ddof: int, eps: float) -> Tensor:
    """(x − mean)/sqrt(var + eps) over the tokens with weight 1 (verl ``masked_whiten``); others 0.

    With fewer than ddof + 1 tokens the variance is undefined (verl raises): x is returned centred
    on nothing, i.e. unnormalised.
    """
    n = weight.sum()
    if n - ddof <= 0:
        return x * weight
    mean = (x * weight).sum() / n
    var = ((x - mean) ** 2 * weight).sum() / (n - ddof)
    return (x - mean) / torch.sqrt(var + eps) * weight
