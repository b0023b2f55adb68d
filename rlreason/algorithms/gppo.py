"""GPPO: gradient-preserving clipping (Su et al., "Klear-Reasoner: Advancing Reasoning Capability
via Gradient-Preserving Clipping Policy Optimization", arXiv:2508.07629) and its CE-GPPO
generalisation ("CE-GPPO: Controlling Entropy via Gradient-Preserving Clipping Policy
Optimization", arXiv:2509.20712); algorithms.md §9.

Forward value of clip-higher PPO, but a clipped token keeps a bounded gradient instead of none:
the clip bound (1±ε) is written as (1±ε)·ρ/sg(ρ), equal in value and with gradient ∝ ∇lp.
CE-GPPO scales the two preserved regions by β1 (low side: A < 0, ρ < 1−ε_l) and β2 (high side:
A > 0, ρ > 1+ε_h) — value included, as in Klear's ``compute_gppo_loss_general_beta``.
Klear's SFT term on correct rollouts is the learner switch ``algorithm.sft_coef`` (0.1 in its
recipe), aggregated over the correct responses' tokens.
"""

from __future__ import annotations

from typing import Optional

import torch

from rlreason.algorithms import POLICY_LOSSES
from rlreason.algorithms.base import LossInput, LossOutput


@POLICY_LOSSES.register("gppo")
def gppo(inp: LossInput, *, clip_low: float = 0.2, clip_high: float = 0.28, dual_clip: Optional[float] = 10.0,
         beta1: float = 1.0, beta2: float = 1.0, log_ratio_clamp: float = 20.0) -> LossOutput:
    """GPPO: clip-higher PPO whose clipped tokens keep gradient −(1±ε)·A·∇lp [n, T].

    Piecewise (value | ∂ℓ/∂lp): A>0, ρ>1+ε_h: −β2(1+ε_h)A | same; A<0, ρ<1−ε_l: −β1(1−ε_l)A | same;
    otherwise −ρA | −ρA; then the dual clip caps A<0 at −c·A (gradient 0). Klear: c = 10.
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"gppo: dual_clip must be > 1 (or null to disable), got {dual_clip}")
    adv = inp.advantages
    ratio = torch.exp((inp.logprobs - inp.old_logprobs).clamp(-log_ratio_clamp, log_ratio_clamp))
    keep = ratio / ratio.detach()  # value 1, gradient ∇lp: the gradient-preserving factor
    high = (adv > 0) & (ratio.detach() > 1.0 + clip_high)
    low = (adv < 0) & (ratio.detach() < 1.0 - clip_low)
    loss = torch.where(high, -beta2 * (1.0 + clip_high) * keep * adv,
                       torch.where(low, -beta1 * (1.0 - clip_low) * keep * adv, -ratio * adv))
    metrics = {"clip_frac": (high | low).float()}
    if dual_clip is not None:
        capped = (adv < 0) & (loss > -dual_clip * adv)
        loss = torch.where(capped, -dual_clip * adv, loss)
        metrics["clip_frac_dual"] = capped.float()
    metrics["ppo_kl"] = (inp.old_logprobs - inp.logprobs).detach()
    return LossOutput(token_loss=loss, token_metrics=metrics)


@POLICY_LOSSES.register("ce_gppo")
def ce_gppo(inp: LossInput, *, clip_low: float = 0.2, clip_high: float = 0.28, dual_clip: Optional[float] = 10.0,
            beta1: float = 0.25, beta2: float = 1.0) -> LossOutput:
    """CE-GPPO: GPPO with the low-side preserved gradient scaled by β1 = 0.25 (Klear's defaults) [n, T].

    A smaller β1 weakens the push-down of low-probability negative tokens, which controls entropy.
    """
    return gppo(inp, clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip, beta1=beta1, beta2=beta2)
