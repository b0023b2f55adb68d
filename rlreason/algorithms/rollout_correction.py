"""Rollout correction: truncated importance sampling from the rollout policy to π_old.

When the rollouts come from weights older than the learner's (trainer.mode=pipelined, one update
behind), the PPO-style ratio π/π_old is taken against the learner's current policy π_old (the
proximal policy), and each token's loss is reweighted by w = min(π_old / π_rollout, cap), detached:
the truncated IS of verl's rollout correction and OpenRLHF's ``is_correction``. Truncation bounds the
variance that a rare token with a large ratio would bring, at the price of a small bias.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rollout_is_weights(old_logprobs: Tensor, rollout_logprobs: Tensor, cap: float) -> tuple[Tensor, Tensor]:
    """[N, T] weights min(exp(old - rollout), cap) (no gradient), and 1.0 where the cap cut a weight."""
    ratio = torch.exp((old_logprobs.detach() - rollout_logprobs.detach()).clamp(max=20.0))
    return ratio.clamp(max=cap), (ratio > cap).to(ratio.dtype)
