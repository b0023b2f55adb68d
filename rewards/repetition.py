"""Repetition penalty: the share of repeated word n-grams, scaled to a negative reward."""

from __future__ import annotations

from rlreason.rewards import REWARDS


@REWARDS.register("repetition")
def repetition(*, response: str, ngram_size: int = 3, max_penalty: float = -1.0, **_) -> float:
    """max_penalty × (1 − distinct/total word n-grams): 0 for no repeats, max_penalty for one n-gram looped.

    Yeo et al., "Demystifying Long Chain-of-Thought Reasoning in LLMs" (arXiv:2502.03373); open-r1's
    ``get_repetition_penalty_reward``: lower-cased whitespace words, 0 when there are fewer words than
    ``ngram_size``.
    """
    if max_penalty > 0:
        raise ValueError(f"repetition: max_penalty={max_penalty} should be <= 0 (it is a penalty)")
    words = response.lower().split()
    if len(words) < ngram_size:
        return 0.0
    grams = [tuple(words[i:i + ngram_size]) for i in range(len(words) - ngram_size + 1)]
    return (1.0 - len(set(grams)) / len(grams)) * max_penalty
