"""A lean decode step for Llama-family models on CPU: one new token per row, without the module tree.

Decoding streams every weight once per token. Around its seven projections per layer, the Hugging
Face forward runs ~40 small operators, each paying dispatch overhead at decode's tiny sizes, and
oneDNN re-lays-out each bf16 weight on every call. Here a layer is four projections (q/k/v and
gate/up fused), their weights packed once per weight version for the CPU's matrix unit, over a KV
cache preallocated for the whole response. The arithmetic is the model's own: the same products as
``F.linear``, the model's rotary module and its RMSNorm's order of operations. Attention alone runs
in fp32 over an fp32 cache that holds the model's bf16 keys and values exactly: CPU SDPA is 2-4x
slower on bf16 than on fp32 at decode sizes (one query per row), and fp32 rounds less. In fp32
models the step's logits equal the Hugging Face forward's (to summation order); in bf16 they equal,
bit for bit, the Hugging Face forward with its SDPA run on fp32 copies of q, k and v (tests).
Prefill, and every model this step does not reproduce (``unsupported``), stay with the Hugging Face
forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

ARCHITECTURES = ("llama", "qwen2")  # RMSNorm + RoPE + GQA attention + SiLU-gated MLP, no extras
PACK_ROWS = 32  # oneDNN's layout hint: the decode batch it is tuned for (any batch size works)


def unsupported(model) -> Optional[str]:
    """Why ``model`` must decode through the Hugging Face forward (None: the lean step reproduces it)."""
    cfg = model.config
    if next(model.parameters()).device.type != "cpu":
        return "the lean decode step is for CPU (GPUs decode through the Hugging Face forward or vLLM)"
    if cfg.model_type not in ARCHITECTURES:
        return f"model_type {cfg.model_type!r} is not one of {ARCHITECTURES}"
    if getattr(cfg, "hidden_act", None) != "silu":
        return f"hidden_act {cfg.hidden_act!r} is not 'silu'"
    if getattr(cfg, "use_sliding_window", False) or any(
            t != "full_attention" for t in getattr(cfg, "layer_types", None) or []):
        return "sliding-window attention"
    return None


class Projection:
    """``F.linear(x, weight, bias)`` with the weight packed once: oneDNN's bf16 path re-lays the
    weight out on every call otherwise (1.7x slower at decode sizes). Same results, bit for bit."""

    def __init__(self, weight: Tensor, bias: Optional[Tensor]):
        self.weight = weight.detach().contiguous()
        self.bias = None if bias is None else bias.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, PACK_ROWS) if packs(self.weight) else None

    @classmethod
    def fused(cls, *linears) -> "Projection":
        """One projection computing several ``nn.Linear``s of the same input, concatenated."""
        biases = [lin.bias for lin in linears]
        bias = None if all(b is None for b in biases) else torch.cat(
            [b if b is not None else lin.weight.new_zeros(lin.out_features) for b, lin in zip(biases, linears)])
        return cls(torch.cat([lin.weight for lin in linears]), bias)

    def __call__(self, x: Tensor) -> Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def packs(weight: Tensor) -> bool:
    """Whether oneDNN can pack this weight: bf16 on a CPU with bf16 support, in a torch that has the
    (internal, Inductor's) packing ops; otherwise ``F.linear``."""
    ops = torch.ops.mkldnn
    return (weight.dtype == torch.bfloat16 and weight.device.type == "cpu"
            and all(hasattr(ops, op) for op in ("_is_mkldnn_bf16_supported", "_reorder_linear_weight",
                                                 "_linear_pointwise"))
            and ops._is_mkldnn_bf16_supported())


@dataclass
class Layer:
    qkv: Projection
    out: Projection
    gate_up: Projection
    down: Projection
    norm_in: Tensor  # [hidden] RMSNorm weights before attention and before the MLP
    norm_mlp: Tensor


@dataclass
class LeanCache:
    """Every layer's keys and values in fp32 buffers sized for the whole batch and response; the live rows
    are the first ``rows`` of each buffer."""

    keys: list[Tensor]  # per layer [B, kv_heads, capacity, head_dim] fp32 (bf16 values are exact in it)
    values: list[Tensor]
    bias: Tensor  # [B, 1, 1, capacity] fp32 additive attention mask: -inf on left padding, 0 elsewhere
    length: int  # filled positions
    rows: int  # live rows

    @classmethod
    def from_prefill(cls, cache, mask: Tensor, room: int) -> "LeanCache":
        """Copy a Hugging Face cache after prefill ([B, P] attention ``mask``) into buffers with ``room``
        more positions."""
        width = mask.shape[1]
        keys, values = [], []
        for layer in cache.layers:
            for src, dst in ((layer.keys, keys), (layer.values, values)):
                buf = src.new_empty(*src.shape[:2], width + room, src.shape[-1], dtype=torch.float32)
                buf[:, :, :width] = src[:, :, :width]
                dst.append(buf)
        bias = torch.zeros(mask.shape[0], 1, 1, width + room, device=mask.device)
        bias[:, 0, 0, :width].masked_fill_(mask == 0, float("-inf"))
        return cls(keys, values, bias, width, mask.shape[0])

    def batch_select_indices(self, idx: Tensor) -> None:
        """Keep rows ``idx`` (increasing; finished rows leave the batch). The rows after the first one that
        leaves move up in place, their filled positions only (copying the whole cache whenever a row
        finished took 6-17% of generation at 21M)."""
        idx = idx.to(self.bias.device)
        n = idx.numel()
        if n > 1 and not bool((idx[1:] > idx[:-1]).all()):
            raise ValueError("LeanCache keeps rows in order: the indices must increase")
        first = int((idx == torch.arange(n, device=idx.device)).long().cumprod(0).sum())  # rows already in place
        src = idx[first:]
        if src.numel():
            for buf in self.keys + self.values:
                buf[first:n, :, :self.length] = buf[:, :, :self.length].index_select(0, src)
            self.bias[first:n] = self.bias.index_select(0, src)
        self.rows = n


class LeanDecoder:
    """The decode step of one weight version of a supported model (see ``unsupported``)."""

    def __init__(self, model):
        cfg, body = model.config, model.model
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.inner = cfg.intermediate_size
        self.eps = cfg.rms_norm_eps
        self.embed = body.embed_tokens.weight.detach()
        self.rotary = body.rotary_emb  # the model's own: every RoPE variant and its attention scaling
        self.layers = [self._layer(layer) for layer in body.layers]
        self.norm = body.norm.weight.detach()
        self.head = Projection(model.lm_head.weight, model.lm_head.bias)
        self.version = weights_version(model)

    @staticmethod
    def _layer(layer) -> Layer:
        a, m = layer.self_attn, layer.mlp
        return Layer(Projection.fused(a.q_proj, a.k_proj, a.v_proj), Projection(a.o_proj.weight, a.o_proj.bias),
                     Projection.fused(m.gate_proj, m.up_proj), Projection(m.down_proj.weight, m.down_proj.bias),
                     layer.input_layernorm.weight.detach(), layer.post_attention_layernorm.weight.detach())

    def step(self, tokens: Tensor, positions: Tensor, cache: LeanCache) -> Tensor:
        """Feed one token per row ([B] ids at [B] positions); returns the next-token logits [B, V]."""
        x = F.embedding(tokens, self.embed)  # [B, hidden]
        cos, sin = self.rotary(x[:, None], positions[:, None])  # [B, 1, head_dim], broadcast over heads
        for i, layer in enumerate(self.layers):
            x = x + self._attention(layer, rms_norm(x, layer.norm_in, self.eps), cos, sin, cache, i)
            gate_up = layer.gate_up(rms_norm(x, layer.norm_mlp, self.eps))
            x = x + layer.down(F.silu(gate_up[:, :self.inner]) * gate_up[:, self.inner:])
        cache.length += 1
        return self.head(rms_norm(x, self.norm, self.eps))

    def _attention(self, layer: Layer, h: Tensor, cos: Tensor, sin: Tensor, cache: LeanCache, i: int) -> Tensor:
        b, heads, kv, d = h.shape[0], self.heads, self.kv_heads, self.head_dim
        qkv = layer.qkv(h).view(b, heads + 2 * kv, d)
        qk = qkv[:, :heads + kv]
        half = d // 2
        qk = qk * cos + torch.cat([-qk[..., half:], qk[..., :half]], -1) * sin  # RoPE on queries and keys at once
        end = cache.length + 1
        keys, values = cache.keys[i][:cache.rows], cache.values[i][:cache.rows]
        keys[:, :, cache.length] = qk[:, heads:]
        values[:, :, cache.length] = qkv[:, heads + kv:]
        out = F.scaled_dot_product_attention(qk[:, :heads, None].float(), keys[:, :, :end], values[:, :, :end],
                                             attn_mask=cache.bias[:cache.rows, ..., :end], enable_gqa=heads != kv)
        return layer.out(out.reshape(b, heads * d).to(h.dtype))


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Llama's and Qwen2's RMSNorm in their order of operations (normalised in fp32, rounded to the
    model's dtype, then scaled): ``F.rms_norm`` scales before rounding, which differs in bf16."""
    h = x.float()
    h = h * torch.rsqrt(h.square().mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def weights_version(model) -> tuple[int, ...]:
    """Changes whenever any parameter is written in place (``load_state_dict`` included)."""
    return tuple(p._version for p in model.parameters())


def lean_decoder(model, current: Optional[LeanDecoder]) -> Optional[LeanDecoder]:
    """The decoder for the model's current weights: ``current`` while they are unchanged, a new one after
    a weight sync; None for a model the lean step does not support."""
    if unsupported(model) is not None:
        return None
    if current is not None and current.version == weights_version(model):
        return current
    return LeanDecoder(model)
