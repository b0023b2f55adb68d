"""SpeculativeEngine on real tiny Llamas: greedy equality, log-probs, KV rollback, EOS/length, and the
output law with vs without SD (chi-square against exact enumeration; a broken verifier must fail)."""

import itertools

import pytest
import torch

from rlreason.rollout.native import NativeEngine
from rlreason.rollout.spec import verify
from rlreason.rollout.spec.verify import target_probs
from rlreason.types import GenerationRequest, SamplingParams
from shared_builders import teacher_forced_logprobs
from spec_helpers import load, make_drafter, small_vocab_model, spec_engine

PROMPTS = ["Q: 1+2 =\nA:", "Q: 33+4+5 =\nA:", "Q: 7 =\nA:"]


def request(tok, sp, sizes=(2, 1, 3), seed=0):
    return GenerationRequest([tok.encode(p, add_special_tokens=False) for p in PROMPTS], list(sizes), 0, sp, seed)


@pytest.mark.parametrize("kind", ["eagle", "lm", "ngram"])
@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("which", ["tiny_model_dir", "eos_model_dir"])
def test_greedy_with_sd_equals_greedy_without(kind, k, which, request_fixture):
    model, tok = load(request_fixture(which))
    sp = SamplingParams(temperature=0.0, max_new_tokens=14)
    base = NativeEngine(model, tok).generate(request(tok, sp))
    out = spec_engine(model, tok, kind, k, max_batch=4).generate(request(tok, sp))
    assert torch.equal(out.response_ids, base.response_ids)
    assert torch.equal(out.response_mask, base.response_mask) and torch.equal(out.truncated, base.truncated)
    assert torch.allclose(out.rollout_logprobs, base.rollout_logprobs, atol=1e-5)


@pytest.fixture
def request_fixture(request):
    return lambda name: request.getfixturevalue(name)


@pytest.mark.parametrize("kind,k", [("ngram", 4), ("eagle", 3), ("lm", 2)])
def test_logprobs_equal_a_full_forward_after_ragged_rollbacks(tiny_model_dir, kind, k):
    """Holes left by rejected drafts are invisible: every returned log-prob equals a teacher-forced
    forward of the committed sequence (speculative.md §2.5 tests 4 and 5)."""
    model, tok = load(tiny_model_dir)
    eng = spec_engine(model, tok, kind, k)
    out = eng.generate(request(tok, SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=16), (3, 3, 3)))
    if kind == "ngram":  # ragged acceptance across rows and iterations did happen
        assert 0 < out.stats["spec/n/accepted"] < out.stats["spec/n/draft_tokens"]
    lp = teacher_forced_logprobs(model, out, 0.9)
    m = out.response_mask.bool()
    assert torch.allclose(lp[m], out.rollout_logprobs[m], atol=1e-4)


def test_length_limit_and_eos_per_row(eos_model_dir):
    model, tok = load(eos_model_dir)
    for n in (2, 3, 5):
        sp = SamplingParams(temperature=0.0, max_new_tokens=n)
        base = NativeEngine(model, tok).generate(request(tok, sp))
        out = spec_engine(model, tok, "ngram", 8).generate(request(tok, sp))
        assert out.lengths.tolist() == base.lengths.tolist() and torch.equal(out.truncated, base.truncated)


def test_stop_strings_inside_an_accepted_run(eos_model_dir):
    model, tok = load(eos_model_dir)
    sp = SamplingParams(temperature=0.0, max_new_tokens=10, stop=["o"])
    out = spec_engine(model, tok, "ngram", 4).generate(request(tok, sp))
    assert out.response_text == [" o"] * 6 and not out.truncated.any()


def test_drafter_cache_after_rollback_equals_a_fresh_prefill(tiny_model_dir):
    """The drafter's state after propose -> (ragged) extend equals one built from the committed text."""
    model, tok = load(tiny_model_dir)
    sp = SamplingParams(temperature=0.0)
    ids = torch.tensor([[0, 5, 6, 7], [8, 9, 10, 11]])
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    h = torch.randn(2, 4, model.config.hidden_size)
    first = torch.tensor([12, 13])
    for kind in ("eagle", "lm"):
        a, b = make_drafter(kind, model), make_drafter(kind, model)
        a.begin(ids, mask, h, first)
        a.propose(3, sp, None)  # leaves speculative entries in a's cache
        new = torch.tensor([[0, 20, 21], [0, 0, 22]])  # row 0 committed 2 tokens, row 1 one (right-aligned)
        valid = torch.tensor([[False, True, True], [False, False, True]])
        feats = torch.randn(2, 3, model.config.hidden_size)
        a.extend(new, valid, feats)
        b.begin(ids, mask, h, first)
        b.extend(new[:1, 1:2].expand(2, 1).clone(), torch.tensor([[True], [False]]), feats[:, 1:2])
        b.extend(torch.tensor([[21], [22]]), torch.tensor([[True], [True]]), feats[:, 2:3])
        # (b holds the same pairs as a, in another block layout; row 1's first column is a hole)
        da, _ = a.propose(4, sp, None)
        db, _ = b.propose(4, sp, None)
        assert torch.equal(da, db), kind


# ---- the output law: chi-square against exact enumeration ---------------------------------------

N_TOK, SAMPLES = 3, 20_000


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return load(small_vocab_model(str(tmp_path_factory.mktemp("v8"))), torch.float64)


def exact_law(model, prompt, sp):
    """P(response) for every response of <= N_TOK tokens (cut after EOS), by enumeration in float64."""
    seqs = torch.tensor(list(itertools.product(range(8), repeat=N_TOK)))
    ids = torch.cat([torch.tensor(prompt).expand(len(seqs), -1), seqs], 1)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, len(prompt) - 1:-1]
    p = target_probs(logits, sp.temperature, sp.top_k, sp.top_p).gather(-1, seqs[..., None]).squeeze(-1)
    law = {}
    for s, pr in zip(seqs.tolist(), p.tolist()):
        cut = s[:s.index(1) + 1] if 1 in s else s
        # P(cut) = Σ over continuations after EOS of P(full) (continuation laws sum to one)
        law[tuple(cut)] = law.get(tuple(cut), 0.0) + float(torch.tensor(pr[:len(cut)]).prod()) * (
            float(torch.tensor(pr[len(cut):]).prod()) if len(cut) < N_TOK else 1.0)
    return law


def chi_square_p(counts, law, n):
    """p-value of Pearson's chi-square, bins with expected count < 5 pooled."""
    obs, exp, pool_o, pool_e = [], [], 0.0, 0.0
    for key, pr in law.items():
        e, o = pr * n, counts.get(key, 0)
        if e < 5:
            pool_o, pool_e = pool_o + o, pool_e + e
        else:
            obs.append(o)
            exp.append(e)
    if pool_e > 0:
        obs.append(pool_o)
        exp.append(pool_e)
    extra = sum(v for k, v in counts.items() if k not in law)  # impossible outcomes -> reject outright
    if extra:
        return 0.0
    o, e = torch.tensor(obs, dtype=torch.float64), torch.tensor(exp, dtype=torch.float64)
    stat = ((o - e) ** 2 / e).sum()
    return float(torch.special.gammaincc(torch.tensor((len(obs) - 1) / 2.0), stat / 2))


def sample_law(engine, prompt, sp, seed):
    out = engine.generate(GenerationRequest([prompt], [SAMPLES], 0, sp, seed))
    counts = {}
    for row, n in zip(out.response_ids.tolist(), out.lengths.long().tolist()):
        counts[tuple(row[:n])] = counts.get(tuple(row[:n]), 0) + 1
    return counts, out


SAMPLINGS = [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 0, 0.8), (1.3, 3, 0.9)]


@pytest.mark.parametrize("temperature,top_k,top_p", SAMPLINGS)
@pytest.mark.parametrize("kind,k", [("off", 0), ("lm", 2), ("ngram", 3)])
def test_output_law_with_and_without_sd(small, kind, k, temperature, top_k, top_p):
    model, tok = small
    prompt = [2, 3, 4]
    sp = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=N_TOK)
    eng = NativeEngine(model, tok) if kind == "off" else spec_engine(model, tok, kind, k, scale=4.0)
    counts, out = sample_law(eng, prompt, sp, seed=1)
    if kind != "off":
        assert 0 < out.stats["spec/n/accepted"] < out.stats["spec/n/draft_tokens"]
    assert chi_square_p(counts, exact_law(model, prompt, sp), SAMPLES) > 1e-3


@pytest.mark.parametrize("kind", ["lm", "ngram"])
def test_a_broken_verifier_fails_the_same_test(small, kind, monkeypatch):
    """Power check: resampling from p′ instead of the residual after a rejection is detected."""
    model, tok = small
    monkeypatch.setattr(verify, "next_token_dist", lambda p, d, q, n: p[torch.arange(len(n)), n])
    prompt = [2, 3, 4]
    sp = SamplingParams(temperature=1.0, max_new_tokens=N_TOK)
    counts, _ = sample_law(spec_engine(model, tok, kind, 2, scale=4.0), prompt, sp, seed=1)
    assert chi_square_p(counts, exact_law(model, prompt, sp), SAMPLES) < 1e-6
