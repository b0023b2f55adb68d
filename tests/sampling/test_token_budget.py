"""C3PO fixed token budget: exactly Φ tokens per step and the constant normaliser (algorithms.md §12.6)."""

import pytest
import torch

from rlreason.algorithms.aggregation import AggContext, aggregate
from rlreason.batches import with_counts
from rlreason.config.schema import SamplingConfig
from rlreason.sampling.budget import apply_token_budget, budget_mask
from rlreason.types import SequenceBatch, TrainBatch


def mask_of(lengths, width=10):
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).float()


def test_fifo_fills_rows_in_order_and_cuts_the_crossing_one():
    out = budget_mask(mask_of([4, 6, 3, 5]), 12, torch.arange(4))
    assert out.sum(-1).tolist() == [4, 6, 2, 0]
    assert out.sum() == 12


def test_random_order_is_exact_for_any_budget():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        lengths = torch.randint(0, 10, (12,), generator=g).tolist()
        budget = int(torch.randint(1, 80, (1,), generator=g))
        out = budget_mask(mask_of(lengths), budget, torch.randperm(12, generator=g))
        assert out.sum() == min(budget, sum(lengths))
        assert (out <= mask_of(lengths)).all()
        # each row keeps a prefix of its own tokens
        kept = out.sum(-1).long()
        assert torch.equal(out, mask_of(kept.tolist()))


def batch_of(lengths, width=10):
    n = len(lengths)
    mask = mask_of(lengths, width)
    seqs = SequenceBatch(torch.ones(n, 2 + width, dtype=torch.long), torch.ones(n, 2 + width, dtype=torch.long), mask, 2)
    adv = torch.linspace(-1, 1, n)[:, None] * mask
    return with_counts(TrainBatch(seqs, adv, torch.zeros_like(mask), None, torch.zeros_like(mask), torch.zeros(n),
                                  torch.zeros(n), torch.arange(n) // 2))


def test_batch_holds_exactly_the_budget_and_the_loss_divides_by_it():
    batch = batch_of([4, 6, 3, 5, 7, 2])
    cfg = SamplingConfig(token_budget=15, token_selection="random")
    out = apply_token_budget(batch, cfg, torch.Generator().manual_seed(3))
    assert out.global_tokens == 15 and out.seqs.response_mask.sum() == 15
    assert len(out) <= len(batch) and (out.seqs.response_mask.sum(-1) > 0).all()  # unused rows left out
    assert (out.advantages * (1 - out.seqs.response_mask)).abs().sum() == 0
    loss = torch.randn(len(out), 10)
    ctx = AggContext("seq-mean-token-sum-norm", out.global_tokens, out.global_seqs, out.global_rows,
                     constant=15.0, sum_norm_divide_by="C")
    assert aggregate(loss, out.seqs.response_mask, ctx).item() == pytest.approx(
        float((loss * out.seqs.response_mask).sum() / 15.0))
    assert apply_token_budget(batch, SamplingConfig(), torch.Generator()) is batch  # budget 0: untouched
    short = apply_token_budget(batch, SamplingConfig(token_budget=1000), torch.Generator())
    assert short.global_tokens == batch.global_tokens  # fewer tokens than Φ: all of them (still ÷ Φ)
