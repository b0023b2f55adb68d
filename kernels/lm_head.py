"""Log-probs and entropy of a causal LM's next tokens without building its [N, V] logits.

``model_logprobs_entropy`` runs the model's own forward with its output head (the module
``model.get_output_embeddings()`` returns: ``lm_head`` in every Hugging Face causal LM, tied to the
input embeddings or not) temporarily replaced by the fused head of ``linear_logprobs_entropy``.
``.logits`` then comes back as [n, T, 2] (log π(target), entropy) of just the positions asked for.

Why swap the head inside the forward rather than call ``model.get_decoder()`` and then the fused
head ourselves: the head keeps running inside its own ``nn.Module.__call__`` and inside the
model's (and the DeepSpeed engine's) forward, so every hook sees the calls it expects. Under
ZeRO-3 the head weight is partitioned; DeepSpeed's module hooks gather it before the head's
forward and again before its backward, and reduce-scatter its gradient, exactly as for the
stock ``lm_head``; the engine's own forward bookkeeping (parameter trace, backward prologue) runs
unchanged. Anything the model does to the hidden states before the head (final norm, MiniCPM's
scaling) is included for free.

Falls back to the logits path (model logits, then the chunked/naive maths) where the head is not a
bias-free ``nn.Linear`` or the model transforms logits after the head (soft-capping, logit scale);
if an unknown model changes the head's output anyway, the run stops with an error rather than
training on wrong numbers. Not done: heads split across tensor-parallel ranks.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import Tensor, nn

from rlreason.kernels.logprobs import linear_logprobs_entropy, resolve_impl, token_logprobs_entropy

# Config fields of Hugging Face models that transform logits after the head, with the values that
# leave them alone: Gemma 2/3 soft-capping, Cohere's logit_scale, Granite's logits_scaling,
# Falcon-H1's lm_head_multiplier.
_POST_HEAD_FIELDS = {"final_logit_softcapping": (None,), "logit_scale": (None, 1), "logits_scaling": (None, 1),
                     "lm_head_multiplier": (None, 1)}


def _unwrap(model) -> nn.Module:
    # DeepSpeed's engine (and DDP) keep the Hugging Face model in .module
    return getattr(model, "module", model)


def fused_head_blocker(model) -> Optional[str]:
    """Why the fused head cannot replace this model's output head, or None when it can."""
    inner = _unwrap(model)
    get_head = getattr(inner, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    if not isinstance(head, nn.Linear):
        return f"output head is {type(head).__name__}, not nn.Linear"
    if head.bias is not None:
        return "output head has a bias"
    config = getattr(inner, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for name, identity in _POST_HEAD_FIELDS.items():
        value = getattr(config, name, None)
        if value not in identity:
            return f"config.{name}={value} transforms the logits after the head"
    return None


@contextlib.contextmanager
def _fused_head(head: nn.Linear, pick, targets: Tensor, temperature: float, with_entropy: bool,
                impl: str, chunk: int, produced: list):
    def forward(hidden: Tensor) -> Tensor:  # hidden [m, L, D] -> [n, T, 2]
        h = pick(hidden)
        lp, ent = linear_logprobs_entropy(h, head.weight, targets, temperature, with_entropy, impl, chunk)
        out = torch.stack([lp, ent if ent is not None else torch.zeros_like(lp)], dim=-1)
        produced.append(out)
        return out

    # An instance attribute shadows the class's forward; nn.Module.__call__ (and its hooks) still run.
    head.forward = forward
    try:
        yield
    finally:
        del head.forward


def model_logprobs_entropy(model, inputs: dict, targets: Tensor, start: int, temperature: float = 1.0,
                           with_entropy: bool = True, impl: str = "auto", chunk: int = 0,
                           where: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Tensor, Optional[Tensor]]:
    """log π(targets) [n, T] and entropy [n, T] (or None) of a causal LM at positions start..start+T-1.

    ``model(**inputs)`` must return ``.logits`` [n, L, V]; position ``start + j`` predicts
    ``targets[:, j]`` (so ``start = prompt_width - 1`` for responses). ``where`` replaces that with
    (rows [n, T], columns [n, T]) of the positions predicting ``targets`` (packed sequences: the
    forward's rows are not the targets' rows). ``impl``: auto | naive | chunked | triton
    (``rlreason.kernels.logprobs``); ``chunk``: tokens per chunk (0 = auto).
    """
    impl = resolve_impl(impl, targets.device)  # targets live where the model runs
    t = targets.shape[1]

    def pick(x: Tensor) -> Tensor:  # [m, L, ...] -> [n, T, ...] at the predicting positions
        return x[where[0], where[1]] if where is not None else x[:, start:start + t]

    if impl == "naive" or fused_head_blocker(model) is not None:
        logits = pick(model(**inputs).logits)
        return token_logprobs_entropy(logits, targets, temperature, with_entropy, impl=impl, chunk=chunk)
    produced: list[Tensor] = []
    head = _unwrap(model).get_output_embeddings()
    with _fused_head(head, pick, targets, temperature, with_entropy, impl, chunk, produced):
        out = model(**inputs).logits
    if len(produced) != 1 or out.shape != produced[0].shape or out.data_ptr() != produced[0].data_ptr():
        raise RuntimeError(
            f"{type(_unwrap(model)).__name__} does not return its output head's result unchanged as .logits "
            "(it transforms or re-computes the logits), so the fused log-prob head cannot be used with it: "
            "set learner.logprob_impl=naive")
    return out[..., 0], out[..., 1] if with_entropy else None
