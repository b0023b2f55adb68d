"""Loss aggregation modes with global denominators (algorithms.md §0.4).

``aggregate`` returns one micro-batch's *contribution*: summing contributions over micro-batches
and data-parallel ranks gives the formula over the whole step, so the loss does not depend on
micro-batch size or learner count.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class AggContext:
    mode: str
    global_tokens: float  # Σ_{i,t} m over the step
    global_seqs: float  # #S: sequences with L_i > 0 (or all sequences when counting empty ones)
    global_rows: float  # N: every sequence of the step, fully masked ones included
    constant: float = 1.0  # C of the sum-norm modes (e.g. max response length)
    sum_norm_divide_by: str = "N*C"  # "N*C" (Dr. GRPO paper/oat, TRL) or "C" (verl)


def _token_mean(loss: Tensor, mask: Tensor, ctx: AggContext) -> Tensor:
    return (loss * mask).sum() / max(ctx.global_tokens, 1.0)


def _seq_mean_token_mean(loss: Tensor, mask: Tensor, ctx: AggContext) -> Tensor:
    per_seq = (loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return per_seq.sum() / max(ctx.global_seqs, 1.0)


def _seq_mean_token_sum(loss: Tensor, mask: Tensor, ctx: AggContext) -> Tensor:
    return (loss * mask).sum() / max(ctx.global_seqs, 1.0)


def _seq_mean_token_sum_norm(loss: Tensor, mask: Tensor, ctx: AggContext) -> Tensor:
    denom = ctx.constant * (ctx.global_rows if ctx.sum_norm_divide_by == "N*C" else 1.0)
    return (loss * mask).sum() / max(denom, 1e-12)


def _sum(loss: Tensor, mask: Tensor, ctx: AggContext) -> Tensor:
    # for losses that normalise themselves with the step's global counts (DRPO: 1/B per prompt)
    return (loss * mask).sum()


AGG_MODES = {
    "token-mean": _token_mean,
    "seq-mean-token-mean": _seq_mean_token_mean,
    "seq-mean-token-sum": _seq_mean_token_sum,
    "seq-mean-token-sum-norm": _seq_mean_token_sum_norm,
    "sum": _sum,
}


def aggregate(loss: Tensor, mask: Tensor, ctx: AggContext) -> Tensor:
    """Contribution of a [n, T] per-token matrix to the step's aggregated scalar."""
    return AGG_MODES[ctx.mode](loss, mask.to(loss.dtype), ctx)


def global_counts(mask: Tensor, count_empty_seqs: bool = False) -> tuple[float, float, float]:
    """(tokens, sequences with loss, rows) of a [N, T] mask — the denominators of ``AggContext``."""
    lengths = mask.sum(-1)
    rows = float(mask.shape[0])
    seqs = rows if count_empty_seqs else float((lengths > 0).sum().item())
    return float(lengths.sum().item()), seqs, rows


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)

