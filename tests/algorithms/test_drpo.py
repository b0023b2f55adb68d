"""DRPO (algorithms.md §10): the length weights' vector, the gradient closed forms, a loop
implementation of the objective (value of the reference code, gradient of LSE + squared hinge),
edge cases, and exact invariance to micro-batching and learner count with whole groups."""

import math

import pytest
import torch

from rlreason.algorithms import POLICY_LOSSES
from rlreason.algorithms.aggregation import AggContext, aggregate
from rlreason.algorithms.base import LossInput
from rlreason.algorithms.drpo import drpo_step_sums
from rlreason.workers import plan

HP = dict(lam=0.1, tau=10.0, delta=1e-4, beta=1e3)


def drpo_loss(case, rows=None, step_sums=None, cap=None, **hp):
    """Sum-aggregated DRPO contribution of ``rows`` (the learner's "sum" mode)."""
    mask = case.mask if rows is None else case.mask[rows]
    inp = case.loss_input(rows, global_tokens=case.mask.sum().item(),
                          global_groups=float(case.group_index.unique().numel()),
                          max_response_length=cap or case.mask.shape[1])
    if step_sums is None:
        step_sums = {k: v.item() for k, v in drpo_step_sums(case.loss_input()).items()}
    inp.step_sums = step_sums
    out = POLICY_LOSSES.get("drpo")(inp, **{**HP, **hp})
    return aggregate(out.token_loss, mask, AggContext("sum", 0, 0, 0))


def reference(case, cap, lam=0.1, tau=10.0, delta=1e-4, beta=1e3):
    """(value as the reference code computes it, the objective whose gradient the loss must have)."""
    n = len(case.rewards)
    length = [int(case.mask[i].sum()) for i in range(n)]
    score = {i: sum(case.lp[i, t] for t in range(length[i])) / length[i] for i in range(n) if length[i] > 0}
    groups = sorted(set(case.group_index.tolist()))
    value, objective = 0.0, 0.0
    for g in groups:
        pos = [i for i in score if case.group_index[i] == g and case.rewards[i] == 1]
        neg = [i for i in score if case.group_index[i] == g and case.rewards[i] == 0]
        if not pos or not neg:
            continue
        z = [math.exp((1 - length[i] / cap) / lam) for i in pos]
        w = [x / sum(z) for x in z]
        weighted = sum(wi * score[i] for wi, i in zip(w, pos))
        value = value + weighted - tau
        objective = objective + weighted - tau * torch.logsumexp(torch.stack([score[j] / tau for j in neg]), 0)
    cells = [(i, t) for i in range(n) for t in range(length[i])]
    kl = sum(case.old[i, t] - case.lp[i, t] for i, t in cells) / len(cells)
    hinge = torch.clamp(kl - delta, min=0.0)
    B = len(groups)
    return -value / B + beta * hinge.detach() * kl, -objective / B + beta / 2 * hinge ** 2


@pytest.mark.parametrize("shift", [0.0, 0.05])  # shift > 0 makes kl > δ: the trust region is active
def test_matches_a_loop_in_value_and_gradient(case, shift):
    case.old = case.old - case.old.mean() + case.lp.detach().mean() + shift
    cap = 8
    got = drpo_loss(case, cap=cap)
    value, objective = reference(case, cap)
    (g_got,) = torch.autograd.grad(got, case.lp)
    (g_ref,) = torch.autograd.grad(objective, case.lp)
    assert got.item() == pytest.approx(value.item(), abs=1e-5)
    assert torch.allclose(g_got, g_ref, atol=1e-6)


def one_group(lengths, rewards, T, lp_value=-1.0):
    mask = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).float()
    lp = torch.full((len(lengths), T), lp_value, requires_grad=True)
    inp = LossInput(logprobs=lp, old_logprobs=lp.detach().clone(), advantages=torch.zeros_like(mask),
                    response_mask=mask, rewards=torch.tensor(rewards), correct=torch.tensor(rewards),
                    group_index=torch.zeros(len(lengths), dtype=torch.long), global_tokens=mask.sum().item(),
                    global_groups=1.0, max_response_length=T)
    return lp, mask, inp


def test_spec_vector_length_weights():
    """λ = 0.1, C = 8192, positive lengths 1000 and 4000 → w = [0.974965, 0.025035]: ∂loss/∂s_i = −w_i/B."""
    lp, mask, inp = one_group([1000, 4000, 500], [1.0, 1.0, 0.0], 8192)
    out = POLICY_LOSSES.get("drpo")(inp)
    (grad,) = torch.autograd.grad((out.token_loss * mask).sum(), lp)
    w = [-grad[0, 0].item() * 1000, -grad[1, 0].item() * 4000]  # ∂s_i/∂lp_{i,t} = 1/L_i
    assert w == pytest.approx([0.974965, 0.025035], abs=1e-6)


def test_negative_gradient_is_the_softmax_over_negatives():
    lp, mask, inp = one_group([3, 2, 4, 1], [1.0, 0.0, 0.0, 0.0], 4)
    scores = torch.tensor([-1.0, -0.2, -3.0, -1.5])
    with torch.no_grad():
        lp.copy_(scores[:, None].expand(4, 4))
    out = POLICY_LOSSES.get("drpo")(inp, tau=0.5)
    (grad,) = torch.autograd.grad((out.token_loss * mask).sum(), lp)
    p = torch.softmax(scores[1:] / 0.5, 0)
    for j, length in zip(range(1, 4), [2, 4, 1]):
        assert grad[j, 0].item() * length == pytest.approx(p[j - 1].item(), abs=1e-6)  # ∂loss/∂s_j = p_j/B


def test_lam_inf_is_disco_uniform_weights():
    lp, mask, inp = one_group([2, 4, 3], [1.0, 1.0, 0.0], 4)
    out = POLICY_LOSSES.get("drpo")(inp, lam=math.inf)
    (grad,) = torch.autograd.grad((out.token_loss * mask).sum(), lp)
    assert grad[0, 0].item() * 2 == pytest.approx(-0.5) and grad[1, 0].item() * 4 == pytest.approx(-0.5)


def test_groups_without_both_outcomes_and_empty_rows_contribute_nothing_but_count_in_B():
    lp, mask, inp = one_group([2, 2, 0, 3], [1.0, 1.0, 0.0, 1.0], 3)  # the only negative is empty
    out = POLICY_LOSSES.get("drpo")(inp)
    loss = (out.token_loss * mask).sum()
    assert loss.item() == 0.0 and loss.requires_grad  # no valid prompt: a zero that keeps the graph
    (grad,) = torch.autograd.grad(loss, lp)
    assert (grad == 0).all()


@pytest.mark.parametrize("world,micro", [(1, 1), (1, 5), (2, 3), (3, 100), (4, 2)])
def test_invariant_to_micro_batches_and_ranks(case, world, micro):
    """Group-aligned splits (the learner's plan): summed contributions equal the one-batch loss."""
    case.old = case.old + 0.05  # trust region active
    full = drpo_loss(case)
    (g_full,) = torch.autograd.grad(full, case.lp)
    shares = plan.plan(torch.ones(len(case.group_index)), world, micro, case.group_index)
    parts = [rows for s in shares for rows in s.micro_rows()]
    sums = {}
    for rows in parts:  # the learner's no-grad pass: per micro-batch, then summed over the step
        for k, v in drpo_step_sums(case.loss_input(rows)).items():
            sums[k] = sums.get(k, 0.0) + v.item()
    total = sum(drpo_loss(case, rows, step_sums=sums) for rows in parts)
    (g_split,) = torch.autograd.grad(total, case.lp)
    assert total.item() == pytest.approx(full.item(), rel=1e-6)
    assert torch.allclose(g_split, g_full, atol=1e-6)
