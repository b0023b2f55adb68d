"""Warping and sampling: top-k / top-p / temperature exactly as specified."""

import pytest
import torch

from rlreason.rollout.sampling import sample_tokens, token_logprobs, warp_logits


def test_temperature_scales_logits():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    assert torch.allclose(torch.softmax(warp_logits(logits, 0.5), -1), torch.softmax(logits / 0.5, -1))


def test_top_k_keeps_k_largest():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0, 2.5]])
    kept = torch.isfinite(warp_logits(logits, 1.0, top_k=2))
    assert kept.tolist() == [[False, True, False, False, True]]


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert torch.isfinite(warp_logits(logits, 1.0, top_p=0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(warp_logits(logits, 1.0, top_p=0.6)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(warp_logits(logits, 1.0, top_p=0.95)).tolist() == [[True, True, True, False]]
    # order of the vocabulary does not matter
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.isfinite(warp_logits(logits[:, perm], 1.0, top_p=0.6)).tolist() == [[False, True, False, True]]


def test_greedy_is_argmax():
    logits = torch.randn(5, 11, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_tokens(logits, 0.0, 0, 1.0, None), logits.argmax(-1))


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 3, 1.0), (1.3, 0, 0.8), (1.0, 4, 0.9)])
def test_empirical_distribution_matches_warped_probs(temperature, top_k, top_p):
    """200k draws: every token's frequency within 5 standard errors of its warped probability."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0])
    n = 200_000
    gen = torch.Generator().manual_seed(0)
    draws = sample_tokens(logits.expand(n, -1), temperature, top_k, top_p, gen)
    freq = torch.bincount(draws, minlength=6).double() / n
    p = torch.softmax(warp_logits(logits[None], temperature, top_k, top_p), -1)[0].double()
    se = torch.sqrt(p * (1 - p) / n).clamp(min=1e-9)
    assert ((freq - p).abs() <= 5 * se + 1e-12).all(), (freq, p)
    assert (freq[p == 0] == 0).all()


def test_token_logprobs_use_temperature_and_greedy_uses_one():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    tok = torch.tensor([1])
    assert token_logprobs(logits, tok, 0.5).item() == pytest.approx(torch.log_softmax(logits / 0.5, -1)[0, 1].item())
    assert token_logprobs(logits, tok, 0.0).item() == pytest.approx(torch.log_softmax(logits, -1)[0, 1].item())
