"""CISPO: clip the importance-sampling weight, not the update (MiniMax, "MiniMax-M1: Scaling
Test-Time Compute Efficiently with Lightning Attention", arXiv:2506.13585; algorithms.md §8).

PPO's clip zeroes the gradient of tokens outside the band — often the rare "fork" tokens of a
reasoning chain. CISPO keeps a REINFORCE gradient on every token and bounds only its weight:
∂ℓ/∂lp = −sg(clip(ρ, 1−ε_low, 1+ε_high))·A. The paper effectively disables the lower bound and
tunes only ε_high (its value is not recovered [UNVERIFIED]; verl's example uses 0.2).
"""

from __future__ import annotations

from typing import Optional

import torch

from rlreason.algorithms import POLICY_LOSSES
from rlreason.algorithms.base import LossInput, LossOutput


@POLICY_LOSSES.register("cispo")
def cispo(inp: LossInput, *, clip_low: Optional[float] = None, clip_high: float = 0.2,
          log_ratio_clamp: float = 20.0) -> LossOutput:
    """CISPO: ℓ = −sg(r̂)·A·ρ/sg(ρ) per token [n, T], r̂ = clip(ρ, 1−ε_low, 1+ε_high); no lower bound by default.

    Gradient −r̂·A·∇lp, as verl's −sg(r̂)·A·lp; the value here is −r̂·A (PPO-comparable) rather
    than verl's −r̂·A·lp, which only shifts the reported loss. Use token-mean aggregation (paper).
    """
    log_ratio = (inp.logprobs - inp.old_logprobs).clamp(-log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(log_ratio)
    low = 0.0 if clip_low is None else 1.0 - clip_low
    weight = ratio.detach().clamp(min=low, max=1.0 + clip_high)
    loss = -inp.advantages * weight * torch.exp(inp.logprobs - inp.logprobs.detach())
    clipped = (ratio.detach() > 1.0 + clip_high) | (ratio.detach() < low)
    metrics = {"clip_frac": clipped.float(), "ppo_kl": (inp.old_logprobs - inp.logprobs).detach()}
    return LossOutput(token_loss=loss, token_metrics=metrics)
