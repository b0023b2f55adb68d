"""A KV cache that appends in place: transformers' ``DynamicLayer`` with room to grow.

``DynamicLayer.update`` concatenates the whole cache with the new token at every decode step, so a
response of L tokens copies O(L²) keys and values; profiled on CPU, that was a quarter of the
rollout's time. Here each layer keeps a buffer with spare positions, writes the new keys and values
into it and hands the model views of the filled part; the buffer doubles when full. Everything else
(masks, cropping for speculative decoding, dropping finished rows) behaves as in ``DynamicCache``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.cache_utils import DynamicCache, DynamicLayer


class GrowingLayer(DynamicLayer):
    min_room = 64  # spare positions allocated past what is needed (doubling after that)

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> None:
        super().lazy_initialization(key_states, value_states)
        self.length = 0
        self.key_buf = self.value_buf = None

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if self.key_buf is None or end > self.key_buf.shape[-2]:
            self._grow(key_states, value_states, end)
        self.key_buf[..., self.length:end, :] = key_states
        self.value_buf[..., self.length:end, :] = value_states
        self.length = end
        self._expose()
        return self.keys, self.values

    def _grow(self, key_states: Tensor, value_states: Tensor, end: int) -> None:
        room = max(end + self.min_room, 2 * (self.key_buf.shape[-2] if self.key_buf is not None else 0))
        new_k = key_states.new_empty(*key_states.shape[:-2], room, key_states.shape[-1])
        new_v = value_states.new_empty(*value_states.shape[:-2], room, value_states.shape[-1])
        if self.length:
            new_k[..., :self.length, :] = self.key_buf[..., :self.length, :]
            new_v[..., :self.length, :] = self.value_buf[..., :self.length, :]
        self.key_buf, self.value_buf = new_k, new_v

    def _expose(self) -> None:
        self.keys = self.key_buf[..., :self.length, :]
        self.values = self.value_buf[..., :self.length, :]

    def get_seq_length(self, *args, **kwargs) -> int:
        return self.length if self.is_initialized else 0

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last ``-tokens_to_remove`` positions (a negative count, as ``DynamicLayer.crop``)."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop takes a negative count of positions to remove, got {tokens_to_remove}")
        if tokens_to_remove == 0 or not self.is_initialized:
            return
        self.length = max(self.length + tokens_to_remove, 0)
        self._expose()

    def batch_select_indices(self, indices: Tensor) -> None:
        if self.get_seq_length() > 0:
            # index_select, not key_buf[indices]: the dedicated row copy is ~2.5x faster on CPU in bf16
            self.key_buf = self.key_buf.index_select(0, indices)
            self.value_buf = self.value_buf.index_select(0, indices)
            self._expose()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.get_seq_length() > 0:
            self.key_buf = self.key_buf.repeat_interleave(repeats, dim=0)
            self.value_buf = self.value_buf.repeat_interleave(repeats, dim=0)
            self._expose()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def reset(self) -> None:
        self.length = 0
        self.key_buf = self.value_buf = None
        super().reset()


class GrowingCache(DynamicCache):
    """A ``DynamicCache`` whose layers are ``GrowingLayer``s (one per model layer, made on first use)."""

    def __init__(self):
        super().__init__()
        self.layer_class_to_replicate = GrowingLayer
