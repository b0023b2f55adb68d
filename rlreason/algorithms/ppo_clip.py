"""PPO clipped surrogate with decoupled ε and optional dual clip (algorithms.md §1.1).

Schulman et al. arXiv:1707.06347; dual clip: Ye et al. arXiv:1912.09729; clip-higher: DAPO.
"""

from __future__ import annotations

from typing import Optional

import torch

from rlreason.algorithms import POLICY_LOSSES
from rlreason.algorithms.base import LossInput, LossOutput


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip(
    inp: LossInput,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: Optional[float] = 3.0,
    log_ratio_clamp: float = 20.0,
) -> LossOutput:
    """PPO-clip: ℓ = max(-Aρ, -A·clip(ρ, 1-ε_low, 1+ε_high)), capped at -c·A where A < 0.

    ``dual_clip=None`` disables the cap (OpenRLHF default); 3.0 is verl's. The log-ratio is
    clamped to ±20 before exp, as verl does, which only touches pathological values.
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"ppo_clip: dual_clip must be > 1 (or null to disable), got {dual_clip}")
    adv = inp.advantages
    log_ratio = (inp.logprobs - inp.old_logprobs).clamp(-log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(log_ratio)
    loss_unclipped = -adv * ratio
    loss_clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(loss_unclipped, loss_clipped)
    metrics = {"clip_frac": (loss_clipped > loss_unclipped).float()}
    if dual_clip is not None:
        capped = torch.minimum(loss, -dual_clip * adv)
        negative = adv < 0
        metrics["clip_frac_dual"] = (negative & (capped < loss)).float()
        loss = torch.where(negative, capped, loss)
    metrics["ppo_kl"] = (inp.old_logprobs - inp.logprobs).detach()
    return LossOutput(token_loss=loss, token_metrics=metrics)
