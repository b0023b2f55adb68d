"""The chunked and Triton log-prob / entropy paths against naive log_softmax().gather(): values and
gradients w.r.t. hidden states, head weight and logits; odd shapes, bf16, extreme logits."""

import pytest
import torch

from rlreason.kernels.logprobs import linear_logprobs_entropy, resolve_impl, token_logprobs_entropy


def naive_from_logits(logits, targets, temperature):
    """The textbook reference: full log-softmax in the logits' dtype upcast to fp32 (or fp64)."""
    z = logits.float() / temperature if logits.dtype != torch.float64 else logits / temperature
    logp = torch.log_softmax(z, -1)
    return logp.gather(-1, targets[..., None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


def run_linear(impl, h, w, y, temperature, chunk, g_lp, g_ent):
    """Values and grads (d/dh, d/dW) of Σ g_lp·lp + Σ g_ent·H."""
    h = h.detach().requires_grad_(True)
    w = w.detach().requires_grad_(True)
    if impl == "reference":
        lp, ent = naive_from_logits(h @ w.T, y, temperature)
    else:
        lp, ent = linear_logprobs_entropy(h, w, y, temperature, True, impl=impl, chunk=chunk)
    ((lp * g_lp).sum() + (ent * g_ent).sum()).backward()
    return [lp.detach().float(), ent.detach().float(), h.grad.float(), w.grad.float()]


def assert_close(got, want, atol, rtol=0.0):
    names = ["logprob", "entropy", "d hidden", "d weight", "d logits"]
    for name, a, b in zip(names, got, want):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


SHAPES = [  # tokens, hidden, vocab, chunk
    (1, 8, 70, 0),  # one token
    (13, 16, 333, 4),  # vocab not a multiple of any block; chunk does not divide the tokens
    (6, 8, 1031, 5),  # several vocab blocks under the Triton kernel (BLOCK_V patched to 256)
]


@pytest.fixture(autouse=True)
def small_triton_block(monkeypatch):
    """Small vocab blocks so small vocabularies still take several online-LSE steps."""
    import sys

    mod = sys.modules.get("rlreason.kernels.triton_rows")
    if mod is not None:
        monkeypatch.setattr(mod, "BLOCK_V", 256)


@pytest.mark.parametrize("n,d,v,chunk", SHAPES)
def test_linear_fp32_matches_naive(impl, n, d, v, chunk):
    gen = torch.Generator().manual_seed(n * v)
    h, w = torch.randn(n, d, generator=gen), torch.randn(v, d, generator=gen) / d ** 0.5
    y = torch.randint(0, v, (n,), generator=gen)
    g_lp, g_ent = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    want = run_linear("naive", h, w, y, 0.7, 0, g_lp, g_ent)
    assert_close(run_linear(impl, h, w, y, 0.7, chunk, g_lp, g_ent), want, atol=1e-5, rtol=1e-5)
    # and the naive path is the textbook one
    assert_close(want, run_linear("reference", h, w, y, 0.7, 0, g_lp, g_ent), atol=1e-6, rtol=1e-6)


def test_linear_bf16_matches_naive(impl):
    n, d, v = 9, 16, 600
    gen = torch.Generator().manual_seed(1)
    h, w = torch.randn(n, d, generator=gen).bfloat16(), (torch.randn(v, d, generator=gen) / 4).bfloat16()
    y = torch.randint(0, v, (n,), generator=gen)
    g_lp, g_ent = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    got = run_linear(impl, h, w, y, 1.0, 4, g_lp, g_ent)
    # forward: the same bf16 logits upcast to fp32, so values agree to fp32 rounding
    want = run_linear("naive", h, w, y, 1.0, 0, g_lp, g_ent)
    assert_close(got[:2], want[:2], atol=1e-5, rtol=1e-5)
    # backward: bf16 d logits in both; dW is summed in fp32 over chunks (naive: one bf16 matmul)
    assert_close(got[2:], want[2:], atol=2e-2, rtol=2e-2)
    # against an fp64 reference of the same bf16 inputs
    ref = run_linear("reference", h.double(), w.double(), y, 1.0, 0, g_lp.double(), g_ent.double())
    assert_close(got, [r.float() for r in ref], atol=3e-2, rtol=3e-2)


def extreme_logits():
    """Rows at ±1e4 scale, a one-hot-dominant row, a flat row and a near-tie at -1e4."""
    gen = torch.Generator().manual_seed(3)
    v = 300
    rows = [torch.randn(v, generator=gen) * 1e4, torch.zeros(v), torch.zeros(v), torch.full((v,), -1e4)]
    rows[1][17] = 1e4  # one token has all the mass
    rows[3][5], rows[3][250] = -1e4 + 1.0, -1e4 + 1.5
    logits = torch.stack(rows)
    targets = torch.tensor([int(logits[0].argmax()), 17, 4, 250])
    return logits, targets


def run_logits(impl, logits, targets, g_lp, g_ent, temperature=1.0, chunk=3):
    x = logits.detach().requires_grad_(True)
    if impl == "reference":
        lp, ent = naive_from_logits(x, targets, temperature)
    else:
        lp, ent = token_logprobs_entropy(x, targets, temperature, True, impl=impl, chunk=chunk)
    ((lp * g_lp).sum() + (ent * g_ent).sum()).backward()
    return [lp.detach().float(), ent.detach().float(), x.grad.float()]


def test_extreme_logits_match_fp64(impl):
    logits, y = extreme_logits()
    g_lp, g_ent = torch.tensor([1.0, -2.0, 0.5, 1.5]), torch.tensor([0.3, 1.0, -1.0, 2.0])
    got = run_logits(impl, logits, y, g_lp, g_ent)
    lp, ent, dx = run_logits("reference", logits.double(), y, g_lp.double(), g_ent.double())
    # log-probs of size 1e4 carry fp32's relative precision; entropies and gradients are O(1)
    torch.testing.assert_close(got[0], lp.float(), atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(got[1], ent.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(got[2], dx.float(), atol=1e-5, rtol=0)
    assert got[1][1].abs() < 1e-6 and got[0][1].abs() < 1e-6  # one-hot row: H = 0, log π = 0
    assert got[1][2] == pytest.approx(torch.log(torch.tensor(300.0)).item(), abs=1e-5)  # flat row


def test_logits_path_matches_naive_with_batch_dims(impl):
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 5, 257, generator=gen) * 3
    y = torch.randint(0, 257, (2, 5), generator=gen)
    g_lp, g_ent = torch.randn(2, 5, generator=gen), torch.randn(2, 5, generator=gen)
    got = run_logits(impl, logits, y, g_lp, g_ent, temperature=0.6)
    want = run_logits("naive", logits, y, g_lp, g_ent, temperature=0.6)
    assert got[0].shape == (2, 5)
    assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use", ["logprob", "entropy"])
def test_one_output_used(impl, use):
    """Only one output in the loss: the other's gradient arrives as None."""
    gen = torch.Generator().manual_seed(5)
    h, w = torch.randn(4, 8, generator=gen), torch.randn(40, 8, generator=gen)
    y = torch.randint(0, 40, (4,), generator=gen)
    grads = []
    for name in (impl, "naive"):
        hh, ww = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
        lp, ent = linear_logprobs_entropy(hh, ww, y, 1.0, use == "entropy", impl=name, chunk=3)
        (lp.sum() if use == "logprob" else ent.sum()).backward()
        grads.append((hh.grad, ww.grad))
        assert (ent is None) == (use == "logprob")
    assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-5)


def test_no_grad_and_frozen_weight(impl):
    """The reference model's pass: no grad at all, or grads for hidden states only."""
    gen = torch.Generator().manual_seed(6)
    h, w = torch.randn(5, 8, generator=gen), torch.randn(50, 8, generator=gen)
    y = torch.randint(0, 50, (5,), generator=gen)
    with torch.no_grad():
        lp, _ = linear_logprobs_entropy(h, w, y, 1.0, False, impl=impl)
    assert torch.allclose(lp, linear_logprobs_entropy(h, w, y, 1.0, False, impl="naive")[0], atol=1e-6)
    hh = h.clone().requires_grad_(True)
    linear_logprobs_entropy(hh, w, y, 1.0, True, impl=impl)[0].sum().backward()
    assert hh.grad is not None and w.grad is None


def test_auto_picks_chunked_on_cpu():
    assert resolve_impl("auto", torch.device("cpu")) == "chunked"
    with pytest.raises(ValueError, match="logprob impl"):
        resolve_impl("fast", torch.device("cpu"))


def test_zero_tokens(impl):
    h, w = torch.randn(0, 8, requires_grad=True), torch.randn(30, 8, requires_grad=True)
    lp, ent = linear_logprobs_entropy(h, w, torch.zeros(0, dtype=torch.long), 1.0, True, impl=impl)
    assert lp.shape == ent.shape == (0,)
    (lp.sum() + ent.sum()).backward()
    assert h.grad.shape == (0, 8) and torch.equal(w.grad, torch.zeros(30, 8))


def test_qwen_vocabulary_matches_fp64():
    """A real model's head: Qwen2.5's 151,936 rows (the 22 added tokens and the padding rows past
    them included), targets at both ends of the vocabulary; fp32 against an fp64 reference.

    The chunked path only: Triton's CPU interpreter needs ~25 s per launch at this width, so the
    Triton kernels are checked at 152k on a GPU, by scripts/gpu_smoke.py."""
    impl = "chunked"
    n, d, v = 6, 32, 151936
    gen = torch.Generator().manual_seed(7)
    h, w = torch.randn(n, d, generator=gen), torch.randn(v, d, generator=gen) / d ** 0.5
    y = torch.tensor([0, 151643, 151645, 151664, 151935, 1234])
    g_lp, g_ent = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    want = run_linear("reference", h.double(), w.double(), y, 1.0, 0, g_lp.double(), g_ent.double())
    got = run_linear(impl, h, w, y, 1.0, 2, g_lp, g_ent)
    assert_close(got, [t.float() for t in want], atol=2e-5, rtol=1e-5)
