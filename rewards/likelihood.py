"""Likelihood rewards: how likely is the reference answer after the model's own reasoning?

Kwiatkowski, Butt, Labiad, Kempe, Ollivier, "Likelihood-Based Reward Designs for General LLM
Reasoning" (arXiv:2602.03979; algorithms.md §14). The response is cut at the first answer marker
(``<answer`` in the R1 template), the reference answer is appended in the answer format, and one
forward pass scores its tokens: R = log π(a* | prompt, CoT) (the paper's recommendation), its mean
per token, π(a* | …) itself (VeriFree) or the mean per-token probability (RLPR-like). The answer is
never sampled, so this works where no verifier exists (long-form answers).

A ``model`` reward: the reward actor gives it ``inp.scorer``, a batched forward pass of the policy
that generated the responses (on the rollout workers) or of a named model; see
``rlreason/workers/scoring.py``. Cutting happens on text and CoT + answer are re-tokenised together
(no token ids are spliced across the cut). Not here: the answer-NLL loss term of §14's gradient
(a policy-loss concern) and JEPO's group objective.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from rlreason.rewards import REWARDS
from rlreason.rewards.base import ModelRewardInput

VARIANTS = ("logprob", "avg_logprob", "prob", "avg_prob")


def likelihood_scores(logprobs: Tensor, mask: Tensor, variant: str = "logprob") -> Tensor:
    """Reward of each row from its answer-token log-probs. logprobs, mask: [n, A] -> [n].

    logprob Σ_t lp_t; avg_logprob Σ_t lp_t / |a*|; prob exp(Σ_t lp_t); avg_prob Σ_t exp(lp_t) / |a*|.
    """
    lp = logprobs.double() * mask
    count = mask.double().sum(-1).clamp(min=1.0)
    total = lp.sum(-1)
    if variant == "logprob":
        out = total
    elif variant == "avg_logprob":
        out = total / count
    elif variant == "prob":
        out = total.exp()
    elif variant == "avg_prob":
        out = (logprobs.double().exp() * mask).sum(-1) / count
    else:
        raise ValueError(f"likelihood: variant={variant!r}, use one of {', '.join(VARIANTS)}")
    return out.float()


def floor_value(variant: str, answer_tokens: int, vocab_size: int, floor: Optional[float]) -> float:
    """Reward for a response without the answer marker: finite (§14: −∞ must not reach advantages).

    Log-prob variants: ``floor`` if given, else the uniform model's −log|V| per answer token
    (−|a*|·log|V| summed); probability variants: 0.
    """
    if variant in ("prob", "avg_prob"):
        return 0.0
    if floor is not None:
        return float(floor)
    per_token = -math.log(max(vocab_size, 2))
    return per_token if variant == "avg_logprob" else per_token * max(answer_tokens, 1)


@REWARDS.register("likelihood", kind="model")
def likelihood(inp: ModelRewardInput, *, variant: str = "logprob", answer_marker: Optional[str] = "<answer",
               answer_prefix: str = ">", answer_suffix: str = "</answer>", score_suffix: bool = False,
               floor: Optional[float] = None, **_) -> list[dict]:
    """log π(reference answer | prompt, reasoning cut at the answer marker); also mean, prob, mean-prob variants.

    The scored text is ``answer_prefix`` (context) then the ground truth (+ ``answer_suffix`` when
    ``score_suffix``). ``answer_marker=null`` appends the answer after the whole response. A response
    without the marker gets ``floor_value`` (finite). Metrics: ``logprob`` (the sum) and ``marker``
    (1 if the marker was found), ``truncated`` (1 if prompt + reasoning + answer exceeded the scorer's
    positions and the start of the context was cut).
    """
    if variant not in VARIANTS:
        raise ValueError(f"likelihood: variant={variant!r}, use one of {', '.join(VARIANTS)}")
    rows = [i for i, a in enumerate(inp.ground_truths) if a is not None]  # no reference: not applicable
    contexts, continuations, found = [], [], []
    for i in rows:
        response = inp.responses[i]
        cut = response.find(answer_marker) if answer_marker else len(response)
        found.append(cut >= 0)
        # Without a marker the row is still scored, after the prompt alone (short), only to count
        # the answer's tokens for the floor.
        reasoning = response[:cut] if cut >= 0 else ""
        contexts.append(inp.prompts[i] + reasoning + (answer_marker or "") + answer_prefix)
        continuations.append(str(inp.ground_truths[i]) + (answer_suffix if score_suffix else ""))
    out: list = [None] * len(inp.responses)
    if not rows:
        return out
    res = inp.scorer(contexts, continuations)
    scores = likelihood_scores(res.logprobs, res.mask, variant)
    sums = (res.logprobs.double() * res.mask).sum(-1)
    cut = res.truncated if res.truncated is not None else torch.zeros(len(rows), dtype=torch.bool)
    for j, (i, ok) in enumerate(zip(rows, found)):
        if ok:
            out[i] = {"score": float(scores[j]), "logprob": float(sums[j]), "marker": 1.0,
                      "truncated": float(cut[j])}  # reasoning cut from the left to fit the model
        else:
            out[i] = {"score": floor_value(variant, int(res.mask[j].sum()), res.vocab_size, floor), "marker": 0.0}
    return out
