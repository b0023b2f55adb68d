"""The lean decode step against the Hugging Face forward it replaces: logits, sampled tokens, weight
syncs, and the models it leaves to the Hugging Face forward."""

import pytest
import torch
import torch.nn.functional as F
from transformers import (AttentionInterface, AttentionMaskInterface, AutoModelForCausalLM, AutoTokenizer,
                          LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM)
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from rlreason.rollout.decoder import LeanCache, LeanDecoder, Projection, unsupported
from rlreason.rollout.kv_cache import GrowingCache
from rlreason.rollout.native import NativeEngine, left_pad
from rlreason.types import GenerationRequest, SamplingParams

VOCAB = 61


def llama(**over):
    """GQA, an untied head, biases on the attention projections, llama3 RoPE scaling (the rotary module's)."""
    cfg = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, tie_word_embeddings=False, attention_bias=True, pad_token_id=0,
               rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    torch.manual_seed(0)
    return randomise(LlamaForCausalLM(LlamaConfig(**{**cfg, **over})))


def qwen2(**over):
    cfg = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
               num_key_value_heads=2, pad_token_id=0)
    torch.manual_seed(1)
    return randomise(Qwen2ForCausalLM(Qwen2Config(**{**cfg, **over})))


def randomise(model):
    """Non-zero biases and norm weights (initialisation leaves them 0 and 1, which would hide mistakes)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]


def fp32_sdpa(module, query, key, value, attention_mask, **kwargs):
    """Transformers' SDPA attention on fp32 copies of its inputs, the output rounded back: what the lean
    step computes (its cache holds the bf16 keys and values exactly in fp32)."""
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
    return out.to(query.dtype), weights


AttentionInterface.register("fp32_sdpa", fp32_sdpa)
AttentionMaskInterface.register("fp32_sdpa", sdpa_mask)  # SDPA's masks (an unregistered name gets none)


@torch.no_grad()
def lean_and_hf_logits(model, steps: int, drops: dict[int, list[int]], prompts=PROMPTS):
    """Decode the same tokens through both paths from one prefill; before step s only the rows
    ``drops[s]`` (of those left) stay."""
    ids, mask = left_pad(prompts, 0)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    hf_cache, lean_src = GrowingCache(), GrowingCache()
    model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=hf_cache, use_cache=True)
    model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=lean_src, use_cache=True)
    lean_cache, decoder = LeanCache.from_prefill(lean_src, mask, room=steps), LeanDecoder(model)
    nxt, tok = pos[:, -1] + 1, torch.arange(20, 20 + len(prompts))
    pairs = []
    for step in range(steps):
        if step in drops:
            keep = torch.tensor(drops[step])
            hf_cache.batch_select_indices(keep)
            lean_cache.batch_select_indices(keep)
            mask, nxt, tok = mask[keep], nxt[keep], tok[keep]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        hf = model(input_ids=tok[:, None], attention_mask=mask, position_ids=nxt[:, None], cache=hf_cache,
                   use_cache=True).logits[:, -1]
        pairs.append((decoder.step(tok, nxt, lean_cache), hf))
        nxt, tok = nxt + 1, hf.argmax(-1)
    return pairs


@pytest.mark.parametrize("build", [llama, qwen2], ids=["llama", "qwen2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lean_step_logits_equal_the_hf_forward(build, dtype):
    model = build().to(dtype)
    model.set_attn_implementation("fp32_sdpa")  # fp32 models: transformers' own SDPA
    assert unsupported(model) is None
    exact = dtype == torch.bfloat16  # bf16: the same roundings, bit for bit; fp32: sums may associate differently
    for lean, hf in lean_and_hf_logits(model, steps=6, drops={3: [0, 2]}):
        torch.testing.assert_close(lean, hf, atol=0 if exact else 1e-6, rtol=0 if exact else 1e-5)


def test_finished_rows_leave_the_cache_in_place_without_changing_any_other_row():
    """Rows leave from the front, the middle, the end and several at once; the rows that stay move up
    inside the buffers (filled positions only) and decode exactly as the Hugging Face cache's."""
    model = llama().to(torch.bfloat16)
    model.set_attn_implementation("fp32_sdpa")
    prompts = [[5, 6, 7], [8], [9, 10, 11, 12], [13, 14], [15, 16, 17], [18, 19, 20, 21, 22], [23]]
    drops = {1: [0, 1, 2, 4, 5, 6], 3: [1, 2, 3, 4, 5], 4: [0, 2, 4], 6: [1, 2], 7: [0]}
    for lean, hf in lean_and_hf_logits(model, steps=9, drops=drops, prompts=prompts):
        torch.testing.assert_close(lean, hf, atol=0, rtol=0)


def test_the_lean_cache_refuses_rows_out_of_order():
    ids, mask = left_pad(PROMPTS, 0)
    cache = GrowingCache()
    model = llama()
    model(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True)
    lean = LeanCache.from_prefill(cache, mask, room=2)
    with pytest.raises(ValueError, match="must increase"):
        lean.batch_select_indices(torch.tensor([2, 0]))


@pytest.mark.parametrize("build", [llama, qwen2], ids=["llama", "qwen2"])
def test_bf16_lean_step_is_as_close_to_fp32_as_bf16_sdpa(build):
    """The fp32 attention changes bf16 logits by roundings only: no further from the fp32 model's than
    bf16 SDPA's are."""
    model = build()
    fp32 = [hf for _, hf in lean_and_hf_logits(model, steps=6, drops={3: [0, 2]})]
    for (lean, hf), ref in zip(lean_and_hf_logits(model.to(torch.bfloat16), steps=6, drops={3: [0, 2]}), fp32):
        assert (lean.float() - ref).abs().max() <= 1.5 * (hf.float() - ref).abs().max() + 1e-3


def engine_pair(model, tok):
    return NativeEngine(model, tok, lean=True), NativeEngine(model, tok, lean=False)


@pytest.mark.parametrize("path", ["tiny_model_dir", "qwen_model_dir"])
def test_sampled_responses_are_those_of_the_hf_forward(path, request):
    path = request.getfixturevalue(path)
    tok = AutoTokenizer.from_pretrained(path)
    model = randomise(AutoModelForCausalLM.from_pretrained(path))
    prompts = [tok.encode(p, add_special_tokens=False) for p in ["Q: 1+2 =\nA:", "Q: 33+4 =\nA:"]]
    req = GenerationRequest(prompts, [3, 2], 0, SamplingParams(temperature=1.0, max_new_tokens=12), seed=5)
    lean, hf = engine_pair(model, tok)
    a, b = lean.generate(req), hf.generate(req)
    assert lean.decoder is not None and hf.decoder is None
    assert torch.equal(a.response_ids, b.response_ids)
    torch.testing.assert_close(a.rollout_logprobs, b.rollout_logprobs, atol=1e-5, rtol=0)


def test_new_weights_build_a_new_decoder(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lean, hf = engine_pair(model, tok)
    req = GenerationRequest([tok.encode("Q: 7 =\nA:")], [4], 0, SamplingParams(temperature=1.0, max_new_tokens=10), 0)
    lean.generate(req)
    first = lean.decoder
    lean.generate(req)
    assert lean.decoder is first  # unchanged weights: the packed ones are reused
    state = {k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()}
    lean.load_state_dict(state)  # a weight sync, as the rollout worker does it
    a, b = lean.generate(req), hf.generate(req)
    assert lean.decoder is not first
    assert torch.equal(a.response_ids, b.response_ids)


@pytest.mark.parametrize("build, reason", [
    (lambda: llama(hidden_act="gelu"), "hidden_act"),
    (lambda: qwen2(use_sliding_window=True, sliding_window=4, max_window_layers=0), "sliding-window"),
])
def test_models_it_cannot_reproduce_decode_through_hf(build, reason, tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = build()
    model.resize_token_embeddings(len(tok))
    assert reason in unsupported(model)
    req = GenerationRequest([tok.encode("Q: 7 =\nA:")], [2], 0, SamplingParams(temperature=1.0, max_new_tokens=6), 0)
    lean, hf = engine_pair(model, tok)
    a, b = lean.generate(req), hf.generate(req)
    assert lean.decoder is None
    assert torch.equal(a.response_ids, b.response_ids)


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="no oneDNN bf16 on this CPU")
@pytest.mark.parametrize("rows", [1, 7, 32, 100])
def test_packed_bf16_projection_equals_linear_bit_for_bit(rows):
    torch.manual_seed(rows)
    w, b = torch.randn(96, 48, dtype=torch.bfloat16), torch.randn(96, dtype=torch.bfloat16)
    x = torch.randn(rows, 48, dtype=torch.bfloat16)
    proj = Projection(w, b)
    assert proj.packed is not None
    assert torch.equal(proj(x), F.linear(x, w, b))
