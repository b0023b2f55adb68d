"""Builders shared by the speculative-decoding tests: engines around the conftest models, a small-vocab model."""

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rlreason.rollout.spec.drafters import EagleDrafter, NgramDrafter, SmallLMDrafter
from rlreason.rollout.spec.engine import FixedK, SpeculativeEngine
from rlreason.rollout.spec.layers import DrafterConfig


def load(path, dtype=torch.float32):
    tok = AutoTokenizer.from_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval(), tok


def make_drafter(kind, model, seed=0, scale=1.0):
    """A randomly initialised drafter of ``kind`` (eagle | lm | ngram) for ``model``."""
    if kind == "ngram":
        return NgramDrafter()
    c = model.config
    cfg = DrafterConfig(hidden_size=c.hidden_size, num_heads=c.num_attention_heads,
                        intermediate_size=c.intermediate_size, vocab_size=c.vocab_size)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        d = EagleDrafter(cfg) if kind == "eagle" else SmallLMDrafter(cfg)
        if scale != 1.0:
            for p in d.parameters():
                p.data.mul_(scale)
    d = d.to(model.dtype)
    if kind == "eagle":
        d.attach(model.get_input_embeddings(), model.get_output_embeddings())
    return d


def spec_engine(model, tok, kind, k, max_batch=0, seed=0, scale=1.0):
    return SpeculativeEngine(model, tok, make_drafter(kind, model, seed, scale), FixedK(k), max_batch=max_batch)


def small_vocab_model(out_dir, seed=0):
    """A float64 one-layer Llama over 8 tokens with peaked (non-uniform) next-token laws."""
    symbols = ["<pad>", "<eos>", "a", "b", "c", "d", "e", "f"]
    backend = Tokenizer(models.WordLevel(vocab={s: i for i, s in enumerate(symbols)}, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")
    cfg = LlamaConfig(vocab_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, initializer_range=0.4, tie_word_embeddings=False,
                      pad_token_id=0, eos_token_id=1, bos_token_id=None)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = 1
    model.generation_config.pad_token_id = 0
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir
