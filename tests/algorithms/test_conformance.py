"""Every registered entry honours its registry's signature (one call shape, no special cases)."""

import pytest
import torch

from rlreason.algorithms import ADVANTAGES, POLICY_LOSSES
from rlreason.algorithms.base import AdvantageInput, LossInput, LossOutput
from rlreason.registry import RegistryError


def ragged_mask(n, T, gen):
    lengths = torch.randint(1, T + 1, (n,), generator=gen)
    return (torch.arange(T)[None] < lengths[:, None]).float()


@pytest.mark.parametrize("name", ADVANTAGES.names())
def test_advantage_estimators(name):
    gen = torch.Generator().manual_seed(0)
    n, T = 12, 6
    mask = ragged_mask(n, T, gen)
    rewards = torch.randint(0, 2, (n,), generator=gen).float()
    lp = -torch.rand(n, T, generator=gen)
    inp = AdvantageInput(rewards, torch.arange(n) // 4, mask, rewards, lp, lp - 0.1)
    adv = ADVANTAGES.get(name)(inp)
    assert adv.shape == (n, T) and torch.isfinite(adv).all()
    assert (adv[mask == 0] == 0).all()


@pytest.mark.parametrize("name", POLICY_LOSSES.names())
def test_policy_losses(name):
    gen = torch.Generator().manual_seed(0)
    n, T = 8, 5
    mask = ragged_mask(n, T, gen)
    lp = (-torch.rand(n, T, generator=gen)).requires_grad_()
    inp = LossInput(logprobs=lp, old_logprobs=lp.detach() + 0.05 * torch.randn(n, T, generator=gen),
                    advantages=torch.randn(n, 1, generator=gen).expand(n, T) * mask, response_mask=mask,
                    rewards=torch.randint(0, 2, (n,), generator=gen).float(), correct=torch.ones(n),
                    group_index=torch.arange(n) // 4, ref_logprobs=lp.detach() - 0.1, entropy=None)
    out = POLICY_LOSSES.get(name)(inp)
    assert isinstance(out, LossOutput) and out.token_loss.shape == (n, T)
    assert torch.isfinite(out.token_loss).all()
    (out.token_loss * mask).sum().backward()
    assert lp.grad is not None and torch.isfinite(lp.grad).all()
    for value in out.token_metrics.values():
        assert value.shape == (n, T)


def test_entries_are_reachable_as_module_function():
    assert ADVANTAGES.get("rlreason.algorithms.grpo:grpo") is ADVANTAGES.get("grpo")
    assert POLICY_LOSSES.get("rlreason.algorithms.ppo_clip:ppo_clip") is POLICY_LOSSES.get("ppo_clip")


def test_file_path_entries_and_clear_errors(tmp_path):
    path = tmp_path / "my_adv.py"
    path.write_text("def flat(inp):\n    'every token gets its reward'\n    return inp.rewards[:, None] * inp.response_mask\n")
    fn = ADVANTAGES.get(f"{path}:flat")
    mask = torch.ones(2, 3)
    assert fn(AdvantageInput(torch.tensor([1.0, 2.0]), torch.zeros(2, dtype=torch.long), mask, mask[:, 0])).sum() == 9
    with pytest.raises(RegistryError, match="no attribute 'flatt'.*flat"):
        ADVANTAGES.get(f"{path}:flatt")
    with pytest.raises(RegistryError, match="does not exist"):
        ADVANTAGES.get(f"{tmp_path}/nope.py:f")
    with pytest.raises(RegistryError, match="cannot import module"):
        ADVANTAGES.get("no_such_module_xyz:f")
