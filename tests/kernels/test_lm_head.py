"""The fused head inside a real Hugging Face causal LM: same log-probs, entropies and gradients (every
parameter, tied or untied head) as the model's own logits through the naive path."""

import pytest
import torch
from torch import nn

from rlreason.kernels.lm_head import fused_head_blocker, model_logprobs_entropy


def tiny_llama(tied: bool, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=301, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tied)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def batch(vocab=301, n=3, width=11, prompt=4, seed=0):
    """Model inputs, the response tokens [n, width - prompt] and the position predicting the first."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, width), generator=gen)
    mask = torch.ones(n, width, dtype=torch.long)
    mask[0, :2] = 0  # a left-padded prompt, as the learner sees them
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    inputs = dict(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
    return inputs, ids[:, prompt:], prompt - 1


def values_and_grads(model, impl, temperature=0.8):
    model.zero_grad()
    inputs, targets, start = batch()
    lp, ent = model_logprobs_entropy(model, inputs, targets, start, temperature, True, impl=impl, chunk=5)
    weights = torch.linspace(-1, 1, lp.numel()).view_as(lp)
    ((lp * weights).sum() - 0.1 * ent.sum()).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    return lp.detach(), ent.detach(), grads


@pytest.mark.parametrize("tied", [True, False])
def test_fused_head_matches_model_logits(impl, tied):
    model = tiny_llama(tied)
    assert fused_head_blocker(model) is None
    lp0, ent0, g0 = values_and_grads(model, "naive")
    lp1, ent1, g1 = values_and_grads(model, impl)
    assert lp1.shape == lp0.shape == (3, 7)
    torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent1, ent0, atol=1e-5, rtol=1e-5)
    assert set(g1) == set(g0)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], atol=1e-5, rtol=1e-5, msg=lambda m: f"{k}: {m}")


def test_logits_never_materialised():
    """The head sees only the response positions and returns [n, T, 2], never [n, L, V]."""
    model = tiny_llama(tied=True)
    seen = []
    model.lm_head.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    inputs, targets, start = batch()
    model_logprobs_entropy(model, inputs, targets, start, impl="chunked")
    assert seen == [torch.Size([3, 7, 2])]
    assert "forward" not in model.lm_head.__dict__  # the swap is undone


def test_post_head_transforms_fall_back_to_logits():
    model = tiny_llama(tied=True)
    model.config.final_logit_softcapping = 30.0
    assert "softcapping" in fused_head_blocker(model)
    inputs, targets, start = batch()
    lp, _ = model_logprobs_entropy(model, inputs, targets, start, impl="chunked")
    ref, _ = model_logprobs_entropy(model, inputs, targets, start, impl="naive")
    torch.testing.assert_close(lp, ref, atol=1e-5, rtol=1e-5)


class ScaledLM(nn.Module):
    """A model that rescales its head's output, which no config field announces."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        out.logits = out.logits * 2.0
        return out


def test_unannounced_logit_transform_is_an_error():
    model = ScaledLM(tiny_llama(tied=True))
    inputs, targets, start = batch()
    with pytest.raises(RuntimeError, match="logprob_impl=naive"):
        model_logprobs_entropy(model, inputs, targets, start, impl="chunked")
