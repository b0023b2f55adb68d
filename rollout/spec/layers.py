"""A Llama-style decoder block with its own KV cache, for drafters (no Hugging Face internals).

The drafter's cache must be rolled back to any length and carry holes (masked columns) for
entries of a ragged block, which is simpler to guarantee with a cache we own than through
``DynamicCache``. Parameter names follow Hugging Face Llama (``self_attn.q_proj`` ...), so a
drafter's state dict maps onto EAGLE checkpoints that vLLM loads (``rollout/vllm_engine.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class DrafterConfig:
    hidden_size: int
    num_heads: int
    intermediate_size: int
    vocab_size: int  # V of the target
    num_layers: int = 1
    rope_theta: float = 10000.0
    eps: float = 1e-6


class KVCache:
    """Keys/values per layer [B, H, L, D] and which of the L columns hold real entries [B, L]."""

    def __init__(self, num_layers: int):
        self.k: list[Optional[Tensor]] = [None] * num_layers
        self.v: list[Optional[Tensor]] = [None] * num_layers
        self.mask: Optional[Tensor] = None  # [B, L] bool

    @property
    def length(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]

    def attend_mask(self, valid: Tensor) -> Tensor:
        """Append ``valid`` [B, T] columns; return the query→key mask [B, 1, T, L+T] for them."""
        old = self.length
        self.mask = valid if self.mask is None else torch.cat([self.mask, valid], 1)
        t = valid.shape[1]
        col = torch.arange(old + t, device=valid.device)
        causal = col[None, :] <= (old + torch.arange(t, device=valid.device))[:, None]  # [T, L+T]
        allowed = self.mask[:, None, :] & causal[None]
        # a padding entry must still attend somewhere (its own column) or SDPA returns NaN for it
        allowed = allowed | (col[None, :] == (old + torch.arange(t, device=valid.device))[:, None])[None]
        return allowed[:, None]

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.k[layer] is not None:
            k, v = torch.cat([self.k[layer], k], 2), torch.cat([self.v[layer], v], 2)
        self.k[layer], self.v[layer] = k, v
        return k, v

    def crop(self, length: int) -> None:
        """Forget every column from ``length`` on (rolled-back speculative entries)."""
        if self.mask is None or length >= self.length:
            return
        self.mask = self.mask[:, :length]
        self.k = [None if k is None else k[:, :, :length] for k in self.k]
        self.v = [None if v is None else v[:, :, :length] for v in self.v]

    def select(self, idx: Tensor) -> None:
        """Keep rows ``idx`` (finished rows leave the batch)."""
        if self.mask is None:
            return
        self.mask = self.mask[idx]
        self.k = [None if k is None else k[idx] for k in self.k]
        self.v = [None if v is None else v[idx] for v in self.v]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotary(x: Tensor, pos: Tensor, theta: float) -> Tensor:
    """Rotary position embedding (Llama's rotate-half form) of x [B, H, T, D] at positions pos [B, T]."""
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float64) / d))
    ang = (pos.to(torch.float64)[..., None] * inv).to(x.dtype)  # [B, T, D/2]
    cos, sin = torch.cat([ang, ang], -1).cos()[:, None], torch.cat([ang, ang], -1).sin()[:, None]
    half = torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * cos + half * sin


class Attention(nn.Module):
    def __init__(self, cfg: DrafterConfig):
        super().__init__()
        h = cfg.hidden_size
        self.heads, self.head_dim, self.theta = cfg.num_heads, h // cfg.num_heads, cfg.rope_theta
        self.q_proj, self.k_proj = nn.Linear(h, h, bias=False), nn.Linear(h, h, bias=False)
        self.v_proj, self.o_proj = nn.Linear(h, h, bias=False), nn.Linear(h, h, bias=False)

    def forward(self, x: Tensor, pos: Tensor, cache: KVCache, layer: int, mask: Tensor) -> Tensor:
        b, t, _ = x.shape
        split = lambda y: y.view(b, t, self.heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q = rotary(split(self.q_proj(x)), pos, self.theta)
        k = rotary(split(self.k_proj(x)), pos, self.theta)
        k, v = cache.append(layer, k, split(self.v_proj(x)))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, cfg: DrafterConfig):
        super().__init__()
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj, self.up_proj = nn.Linear(h, i, bias=False), nn.Linear(h, i, bias=False)
        self.down_proj = nn.Linear(i, h, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderBlock(nn.Module):
    def __init__(self, cfg: DrafterConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.eps)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, pos: Tensor, cache: KVCache, layer: int, mask: Tensor) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), pos, cache, layer, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


def run_blocks(blocks: nn.ModuleList, x: Tensor, pos: Tensor, valid: Tensor, cache: KVCache) -> Tensor:
    """x [B, T, H] at positions pos [B, T] (``valid`` [B, T] marks real entries) through every block."""
    mask = cache.attend_mask(valid)
    for i, block in enumerate(blocks):
        x = block(x, pos, cache, i, mask)
    return x
