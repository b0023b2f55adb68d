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


def split_total(fn, n, world, micro):
    """Σ over ranks (strided shards, as the learner group) and micro-batches of fn(rows)."""
    total = 0.0
    for rank in range(world):
        rows = torch.arange(rank, n, world)
        for idx in rows.tensor_split(micro) if len(rows) >= micro else [rows]:
            total = total + fn(idx)
    return total


def _row_local_losses():
    from rlreason.algorithms import POLICY_LOSSES

    return [n for n in POLICY_LOSSES.names() if not POLICY_LOSSES.entry(n).traits.get("keep_groups")]


@pytest.mark.parametrize("name", _row_local_losses())
@pytest.mark.parametrize("mode", [m for m in AGG_MODES if m != "sum"])
@pytest.mark.parametrize("world,micro", [(2, 3), (3, 1)])
def test_every_loss_in_every_mode_is_split_invariant(case_factory, name, mode, world, micro):
    """Every registered loss (DRPO, which needs whole groups, has its own test) and every mode."""
    from rlreason.algorithms import POLICY_LOSSES

    case = case_factory(0)
    fn = POLICY_LOSSES.get(name)
    ctx = ctx_for(case.mask, mode, constant=float(case.mask.shape[1]))
    contribution = lambda rows: aggregate(fn(case.loss_input(rows)).token_loss, case.mask[rows], ctx)  # noqa: E731
    full = contribution(torch.arange(len(case.mask)))
    (g_full,) = torch.autograd.grad(full, case.lp)
    total = split_total(contribution, len(case.mask), world, micro)
    (g_split,) = torch.autograd.grad(total, case.lp)
    assert total.item() == pytest.approx(full.item(), rel=1e-5, abs=1e-6)
    assert torch.allclose(g_split, g_full, atol=1e-6)


@pytest.mark.parametrize("mode", [m for m in AGG_MODES if m != "sum"])
def test_sft_term_on_correct_responses_uses_their_own_counts(case_factory, mode):
    """algorithm.sft_coef's term: Agg(−lp) over the correct responses, with their global counts."""
    case = case_factory(1)
    sub = case.mask * (case.correct == 1).float()[:, None]
    tokens, seqs, _ = global_counts(sub)
    ctx = AggContext(mode, tokens, seqs, seqs, float(case.mask.shape[1]))
    term = lambda rows: aggregate(-case.lp[rows], sub[rows], ctx)  # noqa: E731
    full = term(torch.arange(len(sub)))
    if mode == "token-mean":  # Klear: the mean NLL of the correct responses' tokens
        assert full.item() == pytest.approx((-case.lp * sub).sum().item() / sub.sum().item(), rel=1e-6)
    assert split_total(term, len(sub), 2, 2).item() == pytest.approx(full.item(), rel=1e-6)
