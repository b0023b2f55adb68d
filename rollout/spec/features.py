"""Target features for EAGLE drafters: the input of the LM head (last hidden state, after the final norm).

Captured with a forward pre-hook on ``model.get_output_embeddings()``, so it works for any Hugging
Face causal LM and inside the learner's fused log-prob head (which keeps the head's ``__call__``).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import Tensor


def _head(model) -> torch.nn.Module:
    return getattr(model, "module", model).get_output_embeddings()  # DeepSpeed keeps the model in .module


class FeatureTap:
    """Keeps the latest head input [B, T, H] of every forward of ``model`` (the rollout engine's view)."""

    def __init__(self, model):
        self.value: Optional[Tensor] = None
        self.handle = _head(model).register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        self.value = args[0]

    def take(self) -> Optional[Tensor]:
        v, self.value = self.value, None
        return v


@contextlib.contextmanager
def capture_features(model, into: Optional[list], dtype: torch.dtype = torch.bfloat16) -> Iterator[None]:
    """Append the features of positions 0..L-2 ([n, L-1, H], on CPU in ``dtype``) of each forward to ``into``.

    Position i's feature predicts token i+1, so the last position (which predicts nothing in a
    teacher-forced sequence) is dropped. ``into=None`` captures nothing.
    """
    if into is None:
        yield
        return

    def hook(module, args) -> None:
        into.append(args[0][:, :-1].detach().to("cpu", dtype))

    handle = _head(model).register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()
