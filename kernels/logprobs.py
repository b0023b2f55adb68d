"""Per-token log-prob of the target token and entropy, at a sampling temperature.

Three implementations with one meaning (log π(y) = log softmax(z)_y and H = -Σ p log p, with
z = logits / T as in the rollout, computed in fp32):

- ``naive``: materialises the [.., V] log-softmax and softmax (and their gradients): the
  reference, and what the learner did before the fused paths existed;
- ``chunked``: ``rlreason.kernels.chunked``, pure PyTorch, O(chunk · V) memory in forward and
  backward (used on CPU);
- ``triton``: the same plan with the row loops as Triton kernels (used on CUDA).

``auto`` picks ``triton`` for CUDA tensors when Triton imports, else ``chunked``. From hidden
states (``linear_logprobs_entropy``) the non-naive paths never build the [N, V] logits either.
"""

from __future__ import annotations

import importlib.util
from typing import Optional

import torch
from torch import Tensor

from rlreason.kernels.chunked import LinearLogprobs, LogitsLogprobs, auto_chunk

IMPLS = ("auto", "naive", "chunked", "triton")


def resolve_impl(impl: str, device: torch.device) -> str:
    """``auto`` -> ``triton`` on CUDA when Triton is installed, else ``chunked``; others unchanged."""
    if impl not in IMPLS:
        raise ValueError(f"logprob impl {impl!r}: use one of {', '.join(IMPLS)}")
    if impl != "auto":
        return impl
    if torch.device(device).type == "cuda" and importlib.util.find_spec("triton") is not None:
        return "triton"
    return "chunked"


def _naive(logits: Tensor, targets: Tensor, temperature: float, with_entropy: bool):
    z = logits.float() / temperature
    logp = torch.log_softmax(z, dim=-1)
    lp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return lp, None
    # -Σ p log p rather than lse - Σ p z: no cancellation between two numbers of size |z|
    ent = -(logp.exp() * logp).sum(-1)
    return lp, ent


def token_logprobs_entropy(logits: Tensor, targets: Tensor, temperature: float = 1.0, with_entropy: bool = True,
                           impl: str = "naive", chunk: int = 0) -> tuple[Tensor, Optional[Tensor]]:
    """logits [..., V], targets [...] -> (log π(target) [...], entropy [...] or None), in fp32.

    ``chunk``: tokens per chunk for the chunked/Triton paths (0 = auto from V).
    """
    impl = resolve_impl(impl, logits.device)
    if impl == "naive":
        return _naive(logits, targets, temperature, with_entropy)
    lead, v = targets.shape, logits.shape[-1]
    flat = logits.reshape(-1, v)
    lp, ent = LogitsLogprobs.apply(flat, targets.reshape(-1), float(temperature), with_entropy,
                                   chunk or auto_chunk(flat.shape[0], v), impl)
    return lp.view(lead), None if ent is None else ent.view(lead)


def linear_logprobs_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float = 1.0,
                            with_entropy: bool = True, impl: str = "auto",
                            chunk: int = 0) -> tuple[Tensor, Optional[Tensor]]:
    """hidden [..., D], head weight [V, D], targets [...] -> (log π(target) [...], entropy [...] or None).

    The logits are ``hidden @ weight.T`` (an ``nn.Linear`` head without bias), divided by the
    temperature. Gradients flow to ``hidden`` and ``weight``. ``naive`` builds the full logits.
    """
    impl = resolve_impl(impl, hidden.device)
    if impl == "naive":
        return _naive(hidden @ weight.T, targets, temperature, with_entropy)
    lead, d = targets.shape, hidden.shape[-1]
    flat = hidden.reshape(-1, d)
    lp, ent = LinearLogprobs.apply(flat, weight, targets.reshape(-1), float(temperature), with_entropy,
                                   chunk or auto_chunk(flat.shape[0], weight.shape[0]), impl)
    return lp.view(lead), None if ent is None else ent.view(lead)
