"""Token sampling: temperature, top-k and top-p applied exactly one way, shared by every engine.

Speculative decoding must accept/reject against the same *warped* distribution that plain
sampling draws from, so the warp lives here, once.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def warp_logits(logits: Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Logits [n, V] -> warped logits: divided by temperature, -inf outside top-k and top-p.

    Top-p keeps the smallest set of most-likely tokens whose mass reaches ``top_p`` (the token
    that crosses the threshold is kept), applied after top-k, as HF and vLLM do.
    """
    # float64 stays float64 (the exactness tests run in it); anything narrower is computed in float32
    x = (logits if logits.dtype == torch.float64 else logits.float()) / max(temperature, 1e-8)
    if top_k and top_k < x.shape[-1]:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    return x


def sample_tokens(
    logits: Tensor, temperature: float, top_k: int, top_p: float, generator: Optional[torch.Generator]
) -> Tensor:
    """Draw one token per row of logits [n, V]; temperature 0 is greedy. Returns [n] long."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(warp_logits(logits, temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def logprob_temperature(temperature: float) -> float:
    """Temperature at which log-probs are reported: the sampling one, or 1 for greedy decoding."""
    return temperature if temperature > 0 else 1.0


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float) -> Tensor:
    """log softmax(logits / T)[token] for logits [n, V], tokens [n] -> [n].

    Reported at the sampling temperature without top-k/top-p truncation, the convention of
    verl/TRL, so the learner's recomputed log-probs are directly comparable.
    """
    lp = torch.log_softmax(logits.float() / logprob_temperature(temperature), dim=-1)
    return lp.gather(-1, tokens[:, None]).squeeze(-1)
