"""GSPO: one importance ratio per sequence (Zheng et al., "Group Sequence Policy Optimization",
arXiv:2507.18071; algorithms.md §5).

s_i = exp((1/L_i)·Σ_t m(lp − lp_old)) — the length-normalised sequence likelihood ratio — is
clipped instead of the token ratios, so a whole response shares one clip decision. The ratio is a
per-token geometric mean, hence the tiny clip ranges (paper: ε = 3e-4 / 4e-4). The paper
aggregates with ``seq-mean-token-mean`` (verl forces it), which turns the per-token matrix below
into (1/G)·Σ_i of the sequence objective. KL off in the paper's runs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlreason.algorithms import POLICY_LOSSES
from rlreason.algorithms.base import LossInput, LossOutput

LOG_RATIO_MAX = 10.0  # verl clamps the log sequence ratio at 10 before exp


@POLICY_LOSSES.register("gspo")
def gspo(inp: LossInput, *, clip_low: float = 3e-4, clip_high: float = 4e-4) -> LossOutput:
    """GSPO: ℓ_{i,t} = max(−A·s_i, −A·clip(s_i, 1−ε_low, 1+ε_high)) [n, T], s_i the sequence ratio.

    The gradient flows through s_i into every token of the response (∂s_i/∂lp_{i,t} = s_i/L_i).
    """
    log_s = _log_seq_ratio(inp)
    return _clipped(inp, torch.exp(log_s)[:, None].expand_as(inp.logprobs), clip_low, clip_high)


@POLICY_LOSSES.register("gspo_token")
def gspo_token(inp: LossInput, *, clip_low: float = 3e-4, clip_high: float = 4e-4) -> LossOutput:
    """GSPO-token: s_{i,t} = sg(s_i)·π_θ(o_t)/sg(π_θ(o_t)) allows token-level advantages [n, T].

    Same value as GSPO; each token's gradient is its own (∂s_{i,t}/∂lp_{i,t} = s_i), which with
    seq-mean-token-mean equals GSPO's when A is constant over the response. Where the sequence
    log-ratio is clamped (> 10) there is no gradient, as in GSPO.
    """
    raw = _log_seq_ratio(inp, clamp=False).detach()
    live = (raw <= LOG_RATIO_MAX).to(inp.logprobs.dtype)[:, None]
    log_s = raw.clamp(max=LOG_RATIO_MAX)[:, None] + (inp.logprobs - inp.logprobs.detach()) * live
    return _clipped(inp, torch.exp(log_s), clip_low, clip_high)


def _log_seq_ratio(inp: LossInput, clamp: bool = True) -> Tensor:
    """[n] log s_i; an empty response (L = 0) gets 0 (its tokens carry no loss anyway)."""
    mask = inp.response_mask
    log_ratio = ((inp.logprobs - inp.old_logprobs) * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return log_ratio.clamp(max=LOG_RATIO_MAX) if clamp else log_ratio


def _clipped(inp: LossInput, ratio: Tensor, clip_low: float, clip_high: float) -> LossOutput:
    adv = inp.advantages
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    metrics = {"clip_frac": (clipped > unclipped).float(), "ppo_kl": (inp.old_logprobs - inp.logprobs).detach()}
    return LossOutput(token_loss=loss, token_metrics=metrics)
