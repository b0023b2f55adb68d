"""Quickstart task: add 3-5 one-digit numbers with a running-sum chain of thought.

``Q: 7+5+8 =\nA:`` -> `` 7+5=12, 12+8=20 \\boxed{20}``. The SFT demonstrations come from a noisy
teacher that drops the carry (17+8=15) on 60% of the steps that cross a ten, so the warmed-up model's
*most likely* answer is systematically wrong, while sampling still finds the right carry often enough
for the verifiable reward to teach it: the RL rise is an error being fixed, not just sharpening.
Model and character tokenizer are built here from config, so nothing downloads.

The ``verbose`` option (off by default) is the variant for length-control methods: the teacher then
pads some solutions with restatements of the whole sum before the box (`` 7+5=12, 12+8=20, check
7+5+8=20 \\boxed{20}``), so a correct answer is reachable by short and by padded reasoning and a
length method has something to remove that carries no information."""

from __future__ import annotations

import json
import os
import random
import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rlreason.models import save_random_model

DATA_SOURCE = "arithmetic"
PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
BOXED = "\\boxed"  # one token: saves 5 steps of decoding per answer

# ---------------------------------------------------------------------------------------------
# data


def make_prompt(terms: list[int]) -> str:
    return "Q: " + "+".join(map(str, terms)) + " =\nA:"


def count_carries(terms: list[int]) -> int:
    """Steps of the correct running sum that cross a multiple of ten: the problem's difficulty."""
    totals = [sum(terms[:i]) for i in range(1, len(terms) + 1)]
    return sum(a // 10 != b // 10 for a, b in zip(totals, totals[1:]))


def teach(terms: list[int], rng: random.Random, noise: float, verbose: float = 0.0,
          max_checks: int = 2) -> tuple[str, int]:
    """Write the teacher's running-sum solution; return (solution, the teacher's answer).

    On a step whose sum crosses a multiple of ten the teacher drops the carry with probability
    ``noise``; later steps continue from the (possibly wrong) running sum, so a slip propagates
    into the boxed answer exactly as a real careless solver's would.
    """
    total, steps = terms[0], []
    for t in terms[1:]:
        new = total + t
        # A carry into the tens digit happens on this step; a slip always lowers the sum by 10,
        # so one slip is enough to make the boxed answer wrong.
        if new // 10 != total // 10 and rng.random() < noise:
            new -= 10
        steps.append(f"{total}+{t}={new}")
        total = new
    # Padding: each further "check" restates the whole sum with probability ``verbose`` (no rng draw at 0,
    # so the default dataset is unchanged); it repeats the running total, right or wrong.
    checks = 0
    while verbose > 0 and checks < max_checks and rng.random() < verbose:
        steps.append("check " + "+".join(map(str, terms)) + f"={total}")
        checks += 1
    return " " + ", ".join(steps) + f" {BOXED}{{{total}}}", total


def make_row(rng: random.Random, min_terms: int, max_terms: int, noise: float, verbose: float = 0.0,
             max_checks: int = 2) -> dict:
    terms = [rng.randint(1, 9) for _ in range(rng.randint(min_terms, max_terms))]
    solution, teacher_answer = teach(terms, rng, noise, verbose, max_checks)
    answer = sum(terms)
    return {
        "prompt": make_prompt(terms),
        "answer": str(answer),
        "solution": solution,
        "data_source": DATA_SOURCE,
        "num_terms": len(terms),
        "num_carries": count_carries(terms),
        "teacher_correct": teacher_answer == answer,
    }


def _write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def write_dataset(
    out_dir: str,
    *,
    seed: int = 0,
    num_train: int = 2000,
    num_val: int = 200,
    min_terms: int = 3,
    max_terms: int = 5,
    noise: float = 0.6,
    verbose: float = 0.0,
    max_checks: int = 2,
) -> dict[str, str]:
    """Write train.jsonl (noisy-teacher solutions) and val.jsonl (correct solutions).

    ``noise`` is the teacher's probability of dropping a carry. ``verbose`` > 0 pads train solutions
    with up to ``max_checks`` restatements ("check a+b+c=total"), each with probability ``verbose``
    (val solutions stay short). Train and val prompts come from
    separate random streams; a val prompt may also occur in train (the space is small), which is
    harmless here because train solutions are what is noisy, not the prompts.
    """
    os.makedirs(out_dir, exist_ok=True)
    train_rng, val_rng = random.Random(f"train-{seed}"), random.Random(f"val-{seed}")
    train = [make_row(train_rng, min_terms, max_terms, noise, verbose, max_checks) for _ in range(num_train)]
    val = [make_row(val_rng, min_terms, max_terms, 0.0) for _ in range(num_val)]
    paths = {"train": os.path.join(out_dir, "train.jsonl"), "val": os.path.join(out_dir, "val.jsonl")}
    _write_jsonl(paths["train"], train)
    _write_jsonl(paths["val"], val)
    return paths


# ---------------------------------------------------------------------------------------------
# tokenizer and model


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer over printable ASCII, plus ``\\boxed`` as a single token.

    ~100 tokens keeps the LM head tiny. The Fuse decoder joins tokens with no separator, so
    decode(encode(s)) == s for any printable-ASCII string, spaces and newlines included.
    """
    chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"]  # keeps " " and "\n"
    vocab = {tok: i for i, tok in enumerate([PAD, EOS, UNK, BOXED] + chars)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Split *every* character off (and \boxed as one piece); "isolated" keeps spaces as tokens.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"\\boxed|[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",  # prompts are left-padded for batched generation
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )


def build_model(
    out_dir: str,
    *,
    seed: int = 0,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 512,
    max_position_embeddings: int = 256,
) -> str:
    """Save a randomly initialised tiny Llama plus its tokenizer to ``out_dir``."""
    tok = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
    )
    return save_random_model(LlamaForCausalLM, config, tok, out_dir, seed, tok.eos_token_id)
