"""Per-token log-prob of the target token and entropy from logits, at a sampling temperature.

The reference (naive) path materialises the [n, T, V] log-softmax; ``chunk`` bounds the extra
memory by processing that many rows at a time. Fused kernels that never store the log-softmax
plug in behind ``token_logprobs_entropy``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def _logprobs_entropy(logits: Tensor, targets: Tensor, temperature: float, with_entropy: bool):
    z = logits.float() / temperature
    logz = torch.logsumexp(z, dim=-1, keepdim=True)
    lp = (z.gather(-1, targets.unsqueeze(-1)) - logz).squeeze(-1)
    if not with_entropy:
        return lp, None
    p = torch.softmax(z, dim=-1)
    # H = logsumexp(z) - Σ p·z, which avoids p·log p at p = 0
    ent = logz.squeeze(-1) - (p * z).sum(-1)
    return lp, ent


def token_logprobs_entropy(
    logits: Tensor, targets: Tensor, temperature: float = 1.0, with_entropy: bool = True, chunk: int = 0
) -> tuple[Tensor, Optional[Tensor]]:
    """logits [n, T, V], targets [n, T] -> (log π(target) [n, T], entropy [n, T] or None).

    ``chunk`` > 0 processes that many rows at a time (same values; lower peak memory).
    """
    if chunk <= 0 or chunk >= logits.shape[0]:
        return _logprobs_entropy(logits, targets, temperature, with_entropy)
    parts = [_logprobs_entropy(logits[i:i + chunk], targets[i:i + chunk], temperature, with_entropy)
             for i in range(0, logits.shape[0], chunk)]
    lp = torch.cat([p[0] for p in parts])
    ent = torch.cat([p[1] for p in parts]) if with_entropy else None
    return lp, ent
