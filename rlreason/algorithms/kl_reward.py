"""KL in the reward (algorithms.md §0.3 "two places a KL can enter", §7).

The PPO/RLHF placement: each token's reward loses β·k1(lp_old, lp_ref), computed from the
log-probs of the policy that generated the data, so it carries no gradient. The alternative,
KL-as-loss (GRPO), lives in the learner. The controller builds ``AdvantageInput.kl_penalty``
with ``kl_penalty``; estimators consume it through ``sequence_rewards`` (sequence level) or
per token (REINFORCE++).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from rlreason.algorithms.base import AdvantageInput
from rlreason.algorithms.kl import k1


def kl_penalty(old_logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, coef: float) -> Tensor:
    """β·k1(lp_old, lp_ref) per token [N, T], 0 on padding; no gradient (verl ``apply_kl_penalty``)."""
    return coef * k1(old_logprobs.detach(), ref_logprobs.detach()) * mask


def sequence_rewards(inp: AdvantageInput) -> Tensor:
    """R_i − Σ_t penalty_{i,t} [N]: the KL folded into the scalar reward of sequence-level estimators.

    verl's group estimators sum the token-level rewards, and the RLOO paper uses R − β·Σ_t k1;
    both are this. NaN rewards stay NaN (not applicable).
    """
    return _fold(inp.rewards.float(), inp.kl_penalty)


def _fold(rewards: Tensor, penalty: Optional[Tensor]) -> Tensor:
    return rewards if penalty is None else rewards - penalty.sum(-1).to(rewards.dtype)
