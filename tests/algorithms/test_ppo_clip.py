"""PPO-clip values and gradients against algorithms.md §1.1 test vectors."""

import pytest
import torch

from rlreason.algorithms import POLICY_LOSSES
from rlreason.algorithms.base import LossInput


def single(adv, ratio, **kw):
    lp = torch.tensor([[0.0]], requires_grad=True)
    old = -torch.log(torch.tensor([[ratio]]))  # ρ = exp(lp - old) = ratio at lp = 0
    inp = LossInput(logprobs=lp, old_logprobs=old, advantages=torch.tensor([[adv]]),
                    response_mask=torch.ones(1, 1), rewards=torch.zeros(1), correct=torch.zeros(1),
                    group_index=torch.zeros(1, dtype=torch.long))
    out = POLICY_LOSSES.get("ppo_clip")(inp, **kw)
    out.token_loss.sum().backward()
    return out.token_loss.item(), lp.grad.item(), out


@pytest.mark.parametrize("adv,ratio,sym,higher", [
    (1, 1.5, -1.2, -1.28), (1, 0.5, -0.5, -0.5), (-1, 0.5, 0.8, 0.8), (-1, 1.5, 1.5, 1.5), (-1, 4.0, 3.0, 3.0)])
def test_spec_values(adv, ratio, sym, higher):
    assert single(adv, ratio)[0] == pytest.approx(sym, abs=1e-6)
    assert single(adv, ratio, clip_high=0.28)[0] == pytest.approx(higher, abs=1e-6)


def test_without_dual_clip_the_negative_advantage_is_uncapped():
    assert single(-1, 4.0, dual_clip=None)[0] == pytest.approx(4.0, abs=1e-5)


@pytest.mark.parametrize("adv,ratio,grad", [
    (1, 1.5, 0.0),      # clipped above with A > 0: no gradient
    (1, 0.5, -0.5),     # unclipped: ∂(-Aρ)/∂lp = -Aρ
    (-1, 0.5, 0.0),     # clipped below with A < 0
    (-1, 1.5, 1.5),     # unclipped
    (-1, 4.0, 0.0),     # dual-clip cap is a constant
])
def test_gradients(adv, ratio, grad):
    assert single(adv, ratio)[1] == pytest.approx(grad, abs=1e-6)


def test_clip_fraction_metric():
    _, _, out = single(1, 1.5)
    assert out.token_metrics["clip_frac"].item() == 1.0
    _, _, out = single(1, 1.0)
    assert out.token_metrics["clip_frac"].item() == 0.0


def test_dual_clip_must_exceed_one():
    with pytest.raises(ValueError, match="dual_clip"):
        single(1, 1.0, dual_clip=0.5)
