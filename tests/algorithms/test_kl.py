"""KL estimators: algorithms.md §0.3 test vector, values and gradients."""

import math

import pytest
import torch

from rlreason.algorithms.kl import KL_ESTIMATORS


@pytest.mark.parametrize("name,value,grad", [
    ("k1", 0.5, 1.0), ("k2", 0.125, 0.5), ("k3", math.exp(-0.5) + 0.5 - 1, 1 - math.exp(-0.5)),
    ("abs", 0.5, 1.0),
    ("k1+", 0.5, 0.5), ("k3+", math.exp(-0.5) + 0.5 - 1, 0.5),  # value of k1/k3, gradient of k2
])
def test_single_token_vector(name, value, grad):
    lp = torch.tensor([[-1.0]], requires_grad=True)
    ref = torch.tensor([[-1.5]])
    v = KL_ESTIMATORS[name](lp, ref)
    v.sum().backward()
    assert v.item() == pytest.approx(value, abs=1e-6)
    assert lp.grad.item() == pytest.approx(grad, abs=1e-6)


def test_k3_is_nonnegative_and_clamped():
    lp = torch.tensor([[0.0, -50.0, 50.0]])
    ref = torch.tensor([[0.0, 0.0, 0.0]])
    v = KL_ESTIMATORS["k3"](lp, ref)
    assert (v >= 0).all() and (v <= 10).all() and torch.isfinite(v).all()


@pytest.mark.parametrize("name,value", [("k1+", 5.0), ("k3+", math.exp(-5.0) + 5.0 - 1.0)])
def test_straight_through_gradient_is_d_beyond_the_value_clamp(name, value):
    # |d| = 5 > √20: k2's value clamp would zero the gradient; the gradient of ½d² is d = 5
    lp = torch.tensor([[0.0]], dtype=torch.float64, requires_grad=True)
    v = KL_ESTIMATORS[name](lp, torch.tensor([[-5.0]], dtype=torch.float64))
    v.sum().backward()
    assert v.item() == pytest.approx(value, abs=1e-6) and value == pytest.approx(5.0 if name == "k1+" else 4.006738, abs=1e-6)
    assert lp.grad.item() == pytest.approx(5.0, abs=1e-9)
