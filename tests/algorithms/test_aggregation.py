"""Loss aggregation: algorithms.md §0.4 vectors, and invariance to micro-batches and ranks."""

import pytest
import torch

from rlreason.algorithms.aggregation import AGG_MODES, AggContext, aggregate, global_counts


def ctx_for(mask, mode, constant=4.0, divide="N*C", count_empty=False):
    tokens, seqs, rows = global_counts(mask, count_empty)
    return AggContext(mode, tokens, seqs, rows, constant, divide)


LOSS = torch.tensor([[1.0, 2.0, 0.0, 0.0], [3.0, 4.0, 5.0, 6.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])


@pytest.mark.parametrize("mode,divide,expect", [
    ("token-mean", "N*C", 3.5), ("seq-mean-token-mean", "N*C", 3.0), ("seq-mean-token-sum", "N*C", 10.5),
    ("seq-mean-token-sum-norm", "C", 5.25), ("seq-mean-token-sum-norm", "N*C", 2.625)])
def test_spec_vector(mode, divide, expect):
    assert aggregate(LOSS, MASK, ctx_for(MASK, mode, 4.0, divide)).item() == pytest.approx(expect)


def test_empty_sequences_counted_only_on_request():
    mask = torch.cat([MASK, torch.zeros(1, 4)])
    loss = torch.cat([LOSS, torch.ones(1, 4)])
    assert aggregate(loss, mask, ctx_for(mask, "seq-mean-token-mean")).item() == pytest.approx(3.0)
    assert aggregate(loss, mask, ctx_for(mask, "seq-mean-token-mean", count_empty=True)).item() == pytest.approx(2.0)


@pytest.mark.parametrize("mode", list(AGG_MODES))
@pytest.mark.parametrize("micro,world", [(1, 1), (3, 1), (2, 2), (1, 4), (5, 3)])
def test_split_invariance_values_and_gradients(mode, micro, world):
    """Summing micro-batch contributions over ranks equals the one-batch loss, gradients included."""
    gen = torch.Generator().manual_seed(0)
    n, T = 13, 7
    lengths = torch.randint(0, T + 1, (n,), generator=gen)
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    x = torch.randn(n, T, generator=gen, requires_grad=True)
    ctx = ctx_for(mask, mode, constant=float(T))
    full = aggregate(x ** 2, mask, ctx)
    (g_full,) = torch.autograd.grad(full, x)
    total = torch.zeros(())
    for rank in range(world):
        rows = torch.arange(rank, n, world)
        for idx in rows.tensor_split(micro) if len(rows) >= micro else [rows]:
            total = total + aggregate(x[idx] ** 2, mask[idx], ctx)
    (g_split,) = torch.autograd.grad(total, x)
    assert total.item() == pytest.approx(full.item(), rel=1e-6)
    assert torch.allclose(g_split, g_full, atol=1e-7)
