"""KL estimators per token (Schulman, "Approximating KL divergence"; algorithms.md §0.3).

Each takes ``logprobs`` (current, may carry grad) and ``ref_logprobs`` [n, T] and returns [n, T].
A small closed set, so a plain dict rather than a registry.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

VALUE_CLAMP = 10.0  # verl/OpenRLHF clamp KL values to ±10
LOG_CLAMP = 20.0  # and the exponent of k3 to ±20


def k1(lp: Tensor, ref: Tensor) -> Tensor:
    """d = log π - log π_ref: unbiased, high variance, no gradient in expectation."""
    return (lp - ref).clamp(-VALUE_CLAMP, VALUE_CLAMP)


def k2(lp: Tensor, ref: Tensor) -> Tensor:
    """½ d²: biased, low variance; its gradient is the reverse-KL gradient."""
    return (0.5 * (lp - ref) ** 2).clamp(-VALUE_CLAMP, VALUE_CLAMP)


def k3(lp: Tensor, ref: Tensor) -> Tensor:
    """exp(-d) + d - 1 (GRPO's KL): unbiased, ≥ 0, low variance."""
    d = lp - ref
    return (torch.exp((-d).clamp(-LOG_CLAMP, LOG_CLAMP)) + d - 1.0).clamp(-VALUE_CLAMP, VALUE_CLAMP)


def abs_kl(lp: Tensor, ref: Tensor) -> Tensor:
    """|d|."""
    return (lp - ref).abs().clamp(max=VALUE_CLAMP)


def _straight_through(value_fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    # value of value_fn, gradient of ½d² (verl's "k1+"/"k3+"): the unclamped square, so the gradient
    # is d at any distance (k2's value clamp would zero it beyond |d| = √20)
    def est(lp: Tensor, ref: Tensor) -> Tensor:
        g = 0.5 * (lp - ref) ** 2
        return g - g.detach() + value_fn(lp, ref).detach()

    return est


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "k1": k1,
    "k2": k2,
    "k3": k3,
    "abs": abs_kl,
    "k1+": _straight_through(k1),
    "k3+": _straight_through(k3),
}
