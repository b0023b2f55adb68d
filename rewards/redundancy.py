"""Redundancy reward: penalise reasoning that goes on after it has found the answer, and reasoning
that repeats itself (Hong, Zhen et al., "Reconsidering Overthinking", arXiv:2508.02178; §13).

For a correct response: the first correct solution (FCS) is the CoT up to the first mention of the
model's (verified) answer; external redundancy ERD is the share of CoT tokens after it,
R_ext = 1 − ERD; internal redundancy IRD is the mean cosine similarity of adjacent sliding windows
of FCS sentences, R_int = P(IRD) with a normalised sigmoid. Both on: R = ½(R_int + R_ext).
Incorrect or malformed responses get the base reward (0 by default).

Not here: the paper's LLM-based FCS splitter (commented out in its code) — the regex search below
can stop at an intermediate number equal to a short answer, overstating ERD (a known limitation).
The embedder is a batched callable (``rewards/embedders.py``); every window of every response in
the batch is embedded in one call, which is why this reward is of the ``batch`` kind.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Optional

from rlreason.rewards import REWARDS
from rlreason.rewards.embedders import DEFAULT, load_embedder

_MATH_BLOCK = re.compile(r"\$\$.*?\$\$|\$[^$]*?\$|\\\[.*?\\\]|\\\(.*?\\\)|\\begin\{([^}]*)\}.*?\\end\{\1\}", re.DOTALL)
_WORD = re.compile(r"\w+|[^\w\s]")


def split_cot(response: str, think_end: Optional[str] = "</think>") -> Optional[str]:
    """The chain of thought: text before the single ``think_end`` tag (None if 0 or ≥2 tags, or empty)."""
    if not think_end:
        return response.strip() or None
    if response.count(think_end) != 1:
        return None
    return response.split(think_end)[0].strip() or None


def last_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{...}`` (braces matched), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j].strip()
    return None


def fcs_end(cot: str, answer: str) -> Optional[int]:
    """Where the first correct solution ends: just past the answer's first mention in the CoT.

    The reference ``split_by_keywords``: the lower-cased CoT is searched for the answer (not
    lower-cased) not preceded by a digit, operator or bracket; an answer of > 3 characters is also
    tried with a thousands comma; the earlier end wins; else a plain case-insensitive substring.
    """
    low = cot.lower()
    forms = [answer] + ([answer[:-3] + "," + answer[-3:]] if len(answer) > 3 else [])
    ends = []
    for form in forms:
        m = re.search(r"(?<![\d+\-*/^<>%&|!()\[\],.?])" + re.escape(form) + r"\b", low)
        if m:
            ends.append(m.end())
    if ends:
        return min(ends)
    i = low.find(answer.lower())
    return i + len(answer) if i >= 0 else None


def split_sentences(text: str) -> list[str]:
    """Split at '.', '!' and '?' — not a '.' between two digits, never inside LaTeX math blocks."""
    protected = [(m.start(), m.end()) for m in _MATH_BLOCK.finditer(text)]
    out, start, k = [], 0, 0
    for i, ch in enumerate(text):
        while k < len(protected) and protected[k][1] <= i:
            k += 1
        if k < len(protected) and protected[k][0] <= i < protected[k][1]:
            continue
        decimal = ch == "." and 0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit()
        if ch in ".!?" and not decimal:
            out.append(text[start:i + 1].strip())
            start = i + 1
    out.append(text[start:].strip())
    return [s for s in out if s]


def windows(sentences: list[str], window_frac: float = 0.1, stride_frac: float = 0.05) -> list[str]:
    """Sliding windows of sentences: width max(1, ⌊0.1N⌋), stride max(1, ⌊0.05N⌋), while they fit."""
    n = len(sentences)
    w, s = max(1, int(window_frac * n)), max(1, int(stride_frac * n))
    return [" ".join(sentences[k:k + w]) for k in range(0, n - w + 1, s)]


def internal_redundancy(embeddings) -> float:
    """IRD: mean over adjacent windows of cos(e_k, e_{k+1}) clipped to [0, 1]; 0 for < 2 windows.

    embeddings: [K, d] L2-normalised.
    """
    if embeddings.shape[0] < 2:
        return 0.0
    cos = (embeddings[:-1] * embeddings[1:]).sum(-1).clamp(0.0, 1.0)
    return float(cos.mean())


def penalty_sigmoid(x: float, k: float = 20.0, c: float = 0.3) -> float:
    """P(x) = [σ(k(1−x−c)) − σ(−kc)] / [σ(k(1−c)) − σ(−kc)]: P(0)=1, P(0.7)≈0.5, P(1)=0."""
    sig = lambda z: 1.0 / (1.0 + math.exp(-z))  # noqa: E731
    return (sig(k * (1 - x - c)) - sig(-k * c)) / (sig(k * (1 - c)) - sig(-k * c))


def count_tokens(text: str, tokenizer: Optional[str]) -> int:
    """Tokens of ``text``: a named Hugging Face tokenizer's, or word/punctuation pieces when None."""
    if tokenizer is None:
        return len(_WORD.findall(text))
    return len(_tokenizer(tokenizer).encode(text, add_special_tokens=False))


@functools.lru_cache(maxsize=2)
def _tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def _is_correct(answer: str, ground_truth: Any) -> bool:
    from rlreason.rewards.math_verify import math_verify

    out = math_verify(response="\\boxed{" + answer + "}", ground_truth=ground_truth)
    return bool(out and out["correct"])


def _analyse(response: str, ground_truth: Any, think_end: Optional[str], tokenizer: Optional[str]):
    """(reason, FCS text, ERD): reason is None for a correct response with a found FCS."""
    cot = split_cot(response, think_end)
    if cot is None:
        return "format", None, None
    answer = last_boxed(cot)
    if answer is None or ground_truth is None or not _is_correct(answer, ground_truth):
        return "incorrect", None, None
    end = fcs_end(cot, answer)
    if end is None or not cot[end:].strip():  # the reference returns the incorrect reward here (§13)
        return "incorrect", None, None
    erd = round(count_tokens(cot[end:], tokenizer) / max(count_tokens(cot, tokenizer), 1), 2)
    return None, cot[:end], erd


@REWARDS.register("redundancy", kind="batch")
def redundancy(*, response: list[str], ground_truth: list[Any], external: bool = True, internal: bool = True,
               embedder: str = DEFAULT, device: str = "cpu", tokenizer: Optional[str] = None,
               think_end: Optional[str] = "</think>", k: float = 20.0, c: float = 0.3, window_frac: float = 0.1,
               stride_frac: float = 0.05, format_error_reward: float = 0.0, incorrect_reward: float = 0.0,
               **_) -> list[dict]:
    """Reconsidering-Overthinking reward: correct answers scored ½[(1 − ERD) + P(IRD)], redundancy penalised."""
    found = [_analyse(r, g, think_end, tokenizer) for r, g in zip(response, ground_truth)]
    spans, texts = [], []
    for reason, fcs, _erd in found:
        ws = windows(split_sentences(fcs), window_frac, stride_frac) if reason is None and internal else []
        spans.append((len(texts), len(texts) + len(ws)))
        texts += ws
    emb = load_embedder(embedder, device)(texts) if texts else None
    out = []
    for (reason, _fcs, erd), (lo, hi) in zip(found, spans):
        if reason is not None:
            out.append({"score": format_error_reward if reason == "format" else incorrect_reward})
            continue
        ird = internal_redundancy(emb[lo:hi]) if hi > lo else 0.0
        parts = ([1.0 - erd] if external else []) + ([penalty_sigmoid(ird, k, c)] if internal else [])
        out.append({"score": sum(parts) / len(parts) if parts else 1.0, "erd": erd, "ird": ird})
    return out


def _warmup(*, embedder: str = DEFAULT, device: str = "cpu", internal: bool = True, **_) -> None:
    # Called by the reward pool before the first call's timeout starts: loading the embedder takes
    # seconds (importing transformers), which must not count as a hanging reward.
    if internal:
        load_embedder(embedder, device)


redundancy.warmup = _warmup
