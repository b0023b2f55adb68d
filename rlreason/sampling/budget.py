"""C3PO fixed token budget per optimisation step (Ring-lite, arXiv:2506.14731; algorithms.md §12.6).

GRPO/DAPO divide the loss by the step's token count, which swings with response length, so the
gradient scale swings too. C3PO instead builds each step's batch at token level: responses enter in
a fixed (``fifo``) or shuffled (``random``) order until exactly Φ tokens are in; the response that
crosses Φ is cut at token granularity and the later ones are left out of the step. The loss is then
divided by the constant Φ: algorithm.agg_mode=seq-mean-token-sum-norm with sum_norm_divide_by=C and
agg_constant=Φ gives Σ m·ℓ / Φ exactly (validation insists). A step with fewer than Φ tokens trains on
all of them, still divided by Φ. [The paper's selection order is unverified; both are offered.]

Not here: ``carry_over_unused`` (responses left out are dropped, not queued for the next step).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlreason.types import TrainBatch


def budget_mask(mask: Tensor, budget: int, order: Tensor) -> Tensor:
    """[N, T] mask keeping the first ``budget`` response tokens, taking rows in ``order`` ([N] long)."""
    lengths = mask.sum(-1)[order]
    before = torch.cumsum(lengths, 0) - lengths  # tokens taken before each row (in order)
    allowed = torch.empty_like(lengths)
    allowed[order] = (budget - before).clamp(min=0.0)
    # the k-th response token of a row is kept when k < allowed (masks are contiguous from the start)
    position = torch.cumsum(mask, -1)
    return mask * (position <= allowed[:, None]).to(mask.dtype)


def apply_token_budget(batch: TrainBatch, cfg, generator: torch.Generator,
                       count_empty_seqs: bool = False) -> TrainBatch:
    """The step's batch cut to ``cfg.token_budget`` response tokens (rows left with none are dropped);
    the batch itself when the budget is 0. ``cfg``: the run's SamplingConfig."""
    from rlreason.batches import with_counts

    if cfg.token_budget <= 0:
        return batch
    n = len(batch)
    order = torch.randperm(n, generator=generator) if cfg.token_selection == "random" else torch.arange(n)
    mask = budget_mask(batch.seqs.response_mask, cfg.token_budget, order)
    rows = (mask.sum(-1) > 0).nonzero().flatten()
    out = batch.rows(rows)
    kept = mask[rows]
    out.seqs.response_mask = kept
    out.advantages = out.advantages * kept
    return with_counts(out, count_empty_seqs)
