"""GSPO and GSPO-token (algorithms.md §5): spec vector, a per-sequence loop on random inputs
(value and gradient under seq-mean-token-mean), and GSPO-token's gradient closed form."""

import math

import pytest
import torch

from rlreason.algorithms import POLICY_LOSSES
from rlreason.algorithms.aggregation import AggContext, aggregate, global_counts
from rlreason.algorithms.base import LossInput


def seq_mean_token_mean(out, mask):
    tokens, seqs, rows = global_counts(mask)
    return aggregate(out.token_loss, mask, AggContext("seq-mean-token-mean", tokens, seqs, rows))


def test_spec_vector():
    lp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    inp = LossInput(logprobs=lp, old_logprobs=torch.tensor([[-1.1, -1.8, -0.5]]), advantages=torch.ones(1, 3),
                    response_mask=torch.ones(1, 3), rewards=torch.ones(1), correct=torch.ones(1),
                    group_index=torch.zeros(1, dtype=torch.long))
    out = POLICY_LOSSES.get("gspo")(inp)
    s = math.exp(-0.1 / 3)
    assert s == pytest.approx(0.9672161, abs=1e-7)
    assert out.token_loss[0].tolist() == pytest.approx([-s] * 3, abs=1e-6)  # s < 1 − ε_low: A > 0 is not clipped


def reference(case, lo, hi):
    """(1/#S)·Σ_i max(−A_i s_i, −A_i clip(s_i)) with s_i from a loop over the response's tokens."""
    total, seqs = 0.0, 0
    for i in range(len(case.rewards)):
        length = int(case.mask[i].sum())
        if length == 0:
            continue
        log_s = sum(case.lp[i, t] - case.old[i, t] for t in range(length)) / length
        s = torch.exp(torch.clamp(log_s, max=10.0))
        a = case.advantages[i, 0].item()
        total = total + torch.maximum(-a * s, -a * torch.clamp(s, 1 - lo, 1 + hi))
        seqs += 1
    return total / seqs


@pytest.mark.parametrize("name", ["gspo", "gspo_token"])
@pytest.mark.parametrize("lo,hi", [(3e-4, 4e-4), (0.05, 0.1)])
def test_matches_a_sequence_loop(case, name, lo, hi):
    got = seq_mean_token_mean(POLICY_LOSSES.get(name)(case.loss_input(), clip_low=lo, clip_high=hi), case.mask)
    expect = reference(case, lo, hi)
    (g_got,) = torch.autograd.grad(got, case.lp)
    (g_expect,) = torch.autograd.grad(expect, case.lp)
    assert got.item() == pytest.approx(expect.item(), abs=1e-6)
    assert torch.allclose(g_got, g_expect, atol=1e-6)


def test_gspo_token_gradient_closed_form(case):
    """∂ℓ_{i,t}/∂lp_{i,t} = −A_{i,t}·s_i where unclipped, 0 where clipped, with token-level advantages."""
    adv = torch.randn(case.mask.shape, generator=torch.Generator().manual_seed(5)) * case.mask
    inp = case.loss_input()
    inp.advantages = adv
    out = POLICY_LOSSES.get("gspo_token")(inp, clip_low=0.05, clip_high=0.05)
    (grad,) = torch.autograd.grad((out.token_loss * case.mask).sum(), case.lp)
    for i in range(len(adv)):
        length = int(case.mask[i].sum())
        s = math.exp(sum(case.lp[i, t].item() - case.old[i, t].item() for t in range(length)) / max(length, 1))
        for t in range(length):
            a = adv[i, t].item()
            clipped = -a * min(max(s, 0.95), 1.05) > -a * s
            assert grad[i, t].item() == pytest.approx(0.0 if clipped else -a * s, abs=1e-5)


@pytest.mark.parametrize("name", ["gspo", "gspo_token"])
def test_a_clamped_sequence_ratio_passes_no_gradient(name):
    # one token, lp − lp_old = 11 > 10: log s is clamped, s = e^10; the clamp stops the gradient in both
    lp = torch.tensor([[11.0]], dtype=torch.float64, requires_grad=True)
    inp = LossInput(logprobs=lp, old_logprobs=torch.zeros(1, 1, dtype=torch.float64),
                    advantages=-torch.ones(1, 1, dtype=torch.float64), response_mask=torch.ones(1, 1, dtype=torch.float64),
                    rewards=torch.zeros(1), correct=torch.zeros(1), group_index=torch.zeros(1, dtype=torch.long))
    out = POLICY_LOSSES.get(name)(inp)
    out.token_loss.sum().backward()
    assert out.token_loss.item() == pytest.approx(math.exp(10.0), rel=1e-12)
    assert lp.grad.item() == 0.0
