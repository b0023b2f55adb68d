"""The in-place KV cache (rlreason.rollout.kv_cache) gives the logits transformers' DynamicCache gives,
through prefill, decode steps that outgrow its buffer, dropped rows and a crop (speculative rollback)."""

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from rlreason.rollout.kv_cache import GrowingCache, GrowingLayer
from rlreason.rollout.native import cache_arg


def run(model, cache, steps=80):
    torch.manual_seed(0)
    ids = torch.randint(4, 90, (4, 6))
    mask = torch.ones_like(ids)
    key = cache_arg(model)
    out = model(input_ids=ids, attention_mask=mask, **{key: cache}, use_cache=True)
    logits = [out.logits[:, -1]]
    for step in range(steps):  # more steps than GrowingLayer.min_room: the buffer grows
        if step == 30:  # two rows finish
            keep = torch.tensor([0, 2])
            cache.batch_select_indices(keep)
            mask, ids = mask[keep], ids[keep]
        if step == 50:  # a speculative rollback of 3 positions
            cache.crop(-3)
            mask = mask[:, :-3]
        tok = torch.randint(4, 90, (len(mask), 1))
        mask = torch.cat([mask, torch.ones_like(tok)], 1)
        out = model(input_ids=tok, attention_mask=mask, position_ids=(mask.sum(-1, keepdim=True) - 1),
                    **{key: cache}, use_cache=True)
        logits.append(out.logits[:, -1])
    return logits, cache.get_seq_length(), type(cache.layers[0])


def test_growing_cache_matches_dynamic_cache(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        want, want_len, _ = run(model, DynamicCache())
        got, got_len, layer = run(model, GrowingCache())
    assert layer is GrowingLayer
    assert got_len == want_len == 6 + 80 - 3
    for a, b in zip(want, got):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    assert GrowingLayer.min_room < 80
