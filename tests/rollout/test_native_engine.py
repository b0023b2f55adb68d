"""The native engine on a real tiny Llama: greedy parity with HF, stopping, log-probs, determinism."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlreason.rollout.native import NativeEngine
from rlreason.types import GenerationRequest, SamplingParams
from shared_builders import teacher_forced_logprobs


def engine_for(path, max_batch=0):
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    return NativeEngine(model, tok, max_batch=max_batch), tok, model


PROMPTS = ["Q: 1+2 =\nA:", "Q: 33+4+5 =\nA:", "Q: 7 =\nA:"]


def request(tok, sp, sizes=(1, 1, 1), seed=0):
    ids = [tok.encode(p, add_special_tokens=False) for p in PROMPTS]
    return GenerationRequest(ids, list(sizes), 0, sp, seed)


def test_greedy_matches_hf_generate_with_left_padding(tiny_model_dir):
    eng, tok, model = engine_for(tiny_model_dir)
    out = eng.generate(request(tok, SamplingParams(temperature=0.0, max_new_tokens=12)))
    for i, p in enumerate(PROMPTS):
        ids = torch.tensor([tok.encode(p, add_special_tokens=False)])
        ref = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
        n = int(out.response_mask[i].sum())
        assert out.response_ids[i, :n].tolist() == ref.tolist()[:n]


def test_pruning_finished_rows_does_not_change_results(eos_model_dir):
    sp = SamplingParams(temperature=0.0, max_new_tokens=10)
    full, tok, _ = engine_for(eos_model_dir)
    one, _, _ = engine_for(eos_model_dir, max_batch=1)
    a, b = full.generate(request(tok, sp, (2, 1, 3))), one.generate(request(tok, sp, (2, 1, 3)))
    assert torch.equal(a.response_ids, b.response_ids)
    assert torch.allclose(a.rollout_logprobs, b.rollout_logprobs, atol=1e-5)


def test_eos_stops_and_is_kept_in_the_mask(eos_model_dir):
    eng, tok, _ = engine_for(eos_model_dir)
    out = eng.generate(request(tok, SamplingParams(temperature=0.0, max_new_tokens=10)))
    assert out.truncated.tolist() == [False, False, False]
    assert out.response_text == [" ok"] * 3
    assert out.lengths.tolist() == [4.0, 4.0, 4.0]  # " ", "o", "k", EOS
    assert (out.response_ids[:, 3] == tok.eos_token_id).all()


def test_max_new_tokens_marks_truncation(eos_model_dir):
    eng, tok, _ = engine_for(eos_model_dir)
    out = eng.generate(request(tok, SamplingParams(temperature=0.0, max_new_tokens=2)))
    assert out.truncated.all() and out.lengths.tolist() == [2.0, 2.0, 2.0]


def test_stop_string_ends_the_response(eos_model_dir):
    eng, tok, _ = engine_for(eos_model_dir)
    out = eng.generate(request(tok, SamplingParams(temperature=0.0, max_new_tokens=10, stop=["o"])))
    assert out.response_text == [" o"] * 3 and not out.truncated.any()


def test_rollout_logprobs_equal_a_full_forward(tiny_model_dir):
    """Cached incremental decoding with left padding gives the learner's teacher-forced log-probs."""
    eng, tok, model = engine_for(tiny_model_dir)
    out = eng.generate(request(tok, SamplingParams(temperature=0.8, max_new_tokens=8), sizes=(2, 2, 2)))
    lp = teacher_forced_logprobs(model, out, 0.8)
    m = out.response_mask.bool()
    assert torch.allclose(lp[m], out.rollout_logprobs[m], atol=1e-4)


def test_same_seed_same_samples_and_groups_are_indexed(tiny_model_dir):
    eng, tok, _ = engine_for(tiny_model_dir)
    sp = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=8)
    a, b = eng.generate(request(tok, sp, (2, 3, 1), seed=5)), eng.generate(request(tok, sp, (2, 3, 1), seed=5))
    c = eng.generate(request(tok, sp, (2, 3, 1), seed=6))
    assert torch.equal(a.response_ids, b.response_ids)
    assert not torch.equal(a.response_ids, c.response_ids)
    assert a.group_index.tolist() == [0, 0, 1, 1, 1, 2]
    assert a.batch_sizes[0] == 6 and a.gen_tokens == int(a.response_mask.sum())


def test_realistic_model_greedy_matches_hf_and_every_end_token_stops(qwen_model_dir):
    """Qwen2.5's tokenizer and chat template, GQA and a 152k vocabulary; generation_config lists two
    end tokens, and whichever comes first ends the response."""
    eng, tok, model = engine_for(qwen_model_dir)
    chats = [[{"role": "user", "content": q}] for q in ("What is 2+3?", "Name a prime number larger than 10.")]
    ids = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False) for c in chats]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
    out = eng.generate(GenerationRequest(ids, [1, 1], 0, greedy, 0))
    for i, p in enumerate(ids):
        ref = model.generate(torch.tensor([p]), max_new_tokens=8, do_sample=False)[0, len(p):]
        assert out.response_ids[i, :8].tolist() == ref.tolist()
    # Make the last new greedy token of row 0 an end token: that row now stops at its first occurrence.
    tokens = out.response_ids[0, :8].tolist()
    k = max(tokens.index(t) for t in tokens)
    model.generation_config.eos_token_id = [tok.eos_token_id, tokens[k]]
    stopped = NativeEngine(model, tok).generate(GenerationRequest(ids[:1], [1], 0, greedy, 0))
    assert stopped.lengths.tolist() == [k + 1.0] and not stopped.truncated.any()
    assert stopped.response_ids[0, :k + 1].tolist() == tokens[:k + 1]
