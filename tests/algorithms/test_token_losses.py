"""Per-token policy losses on random inputs against plain piecewise formulas (values and ∂ℓ/∂lp),
plus the spec's vectors: PPO-clip / DAPO (§1.1, §3.1), CISPO (§8), GPPO / CE-GPPO (§9)."""

import math

import pytest
import torch

from rlreason.algorithms import POLICY_LOSSES
from rlreason.algorithms.base import LossInput


def ppo_ref(a, rho, lo=0.2, hi=0.2, c=3.0):
    unclipped, clipped = -a * rho, -a * min(max(rho, 1 - lo), 1 + hi)
    value, grad = (clipped, 0.0) if clipped > unclipped else (unclipped, -a * rho)
    if c is not None and a < 0 and value > -c * a:
        value, grad = -c * a, 0.0
    return value, grad


def cispo_ref(a, rho, lo=None, hi=0.2):
    w = min(max(rho, 0.0 if lo is None else 1 - lo), 1 + hi)
    return -w * a, -w * a


def gppo_ref(a, rho, lo=0.2, hi=0.28, c=10.0, b1=1.0, b2=1.0):
    if a > 0 and rho > 1 + hi:
        value = grad = -b2 * (1 + hi) * a
    elif a < 0 and rho < 1 - lo:
        value = grad = -b1 * (1 - lo) * a
    else:
        value, grad = -rho * a, -rho * a
    if c is not None and a < 0 and value > -c * a:
        value, grad = -c * a, 0.0
    return value, grad


CASES = [  # name, kwargs, reference(a, rho)
    ("ppo_clip", {}, ppo_ref),
    ("ppo_clip", {"clip_high": 0.28, "dual_clip": None}, lambda a, r: ppo_ref(a, r, hi=0.28, c=None)),
    ("dapo", {}, lambda a, r: ppo_ref(a, r, hi=0.28, c=None)),
    ("cispo", {}, cispo_ref),
    ("cispo", {"clip_low": 0.2, "clip_high": 0.28}, lambda a, r: cispo_ref(a, r, 0.2, 0.28)),
    ("gppo", {}, gppo_ref),
    ("gppo", {"dual_clip": 3.0}, lambda a, r: gppo_ref(a, r, c=3.0)),
    ("ce_gppo", {}, lambda a, r: gppo_ref(a, r, b1=0.25)),
]


def run(name, lp, old, adv, **kw):
    n, T = lp.shape
    inp = LossInput(logprobs=lp, old_logprobs=old, advantages=adv, response_mask=torch.ones(n, T),
                    rewards=torch.zeros(n), correct=torch.zeros(n), group_index=torch.zeros(n, dtype=torch.long))
    out = POLICY_LOSSES.get(name)(inp, **kw)
    (grad,) = torch.autograd.grad(out.token_loss.sum(), lp)
    return out.token_loss.detach(), grad, out


@pytest.mark.parametrize("name,kw,ref", CASES)
def test_random_tokens_match_the_piecewise_formula(name, kw, ref):
    gen = torch.Generator().manual_seed(0)
    lp = (-2 * torch.rand(40, 5, generator=gen)).requires_grad_()
    old = lp.detach() + 0.6 * torch.randn(40, 5, generator=gen)  # ratios from ~0.2 to ~5
    adv = torch.randn(40, 5, generator=gen)
    value, grad, _ = run(name, lp, old, adv, **kw)
    for i in range(40):
        for t in range(5):
            rho = math.exp(lp[i, t].item() - old[i, t].item())
            v, g = ref(adv[i, t].item(), rho)
            assert value[i, t].item() == pytest.approx(v, abs=1e-5), (i, t)
            assert grad[i, t].item() == pytest.approx(g, abs=1e-5), (i, t)


def single(name, a, rho, **kw):
    lp = torch.tensor([[0.0]], requires_grad=True)
    value, grad, out = run(name, lp, -torch.log(torch.tensor([[rho]])), torch.tensor([[a]]), **kw)
    return value.item(), grad.item()


@pytest.mark.parametrize("a,rho,value,grad", [
    (1, 1.5, -1.28, -1.28), (1, 0.5, -0.5, -0.5), (-1, 0.5, 0.8, 0.8), (-1, 1.5, 1.5, 1.5), (-1, 4.0, 3.0, 0.0)])
def test_gppo_spec_vectors(a, rho, value, grad):
    assert single("gppo", a, rho, dual_clip=3.0) == pytest.approx((value, grad), abs=1e-5)


def test_ce_gppo_spec_vector():
    assert single("gppo", -1, 0.5, dual_clip=3.0, beta1=0.25) == pytest.approx((0.2, 0.2), abs=1e-6)
    assert single("ce_gppo", -1, 0.5, dual_clip=3.0) == pytest.approx((0.2, 0.2), abs=1e-6)


@pytest.mark.parametrize("a,rho,grad", [(1, 1.5, -1.2), (-1, 0.5, 0.5)])
def test_cispo_spec_vectors(a, rho, grad):
    assert single("cispo", a, rho)[1] == pytest.approx(grad, abs=1e-6)


def test_dapo_is_clip_higher_without_dual_clip():
    assert single("dapo", 1, 1.5)[0] == pytest.approx(-1.28, abs=1e-6)
    assert single("dapo", -1, 4.0)[0] == pytest.approx(4.0, abs=1e-5)  # no dual-clip cap in DAPO


def test_gppo_keeps_gradient_where_ppo_has_none():
    assert single("ppo_clip", 1, 1.5, clip_high=0.28)[1] == 0.0
    assert single("gppo", 1, 1.5)[1] == pytest.approx(-1.28)
