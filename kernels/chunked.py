"""Chunked log-prob / entropy with a backward that recomputes chunk by chunk (pure PyTorch).

Two autograd Functions share one plan: process ``chunk`` tokens at a time, keep only per-token
statistics (row max ``m``, ``log Σ exp(z - m)``, entropy) for backward, and recompute the chunk's
logits there. Peak memory is then O(chunk · V) instead of O(N · V) in forward *and* backward.

- ``LinearLogprobs``: from hidden states and the LM head weight; the [N, V] logits never exist.
  Each chunk's logits are ``h_c @ Wᵀ`` in the input dtype (exactly what ``nn.Linear`` computes),
  then upcast to fp32, as the naive path does.
- ``LogitsLogprobs``: from logits that already exist; saves no log-softmax or softmax.

The row maths lives in a "rows backend" (``fwd`` / ``bwd``): ``TorchRows`` below, or the Triton
kernels of ``rlreason.kernels.triton_rows``. Both compute, with z = logits / T,

    log π(y) = (z_y - m) - log s,   s = Σ_v exp(z_v - m),   m = max_v z_v
    H        = log s - Σ_v exp(z_v - m) (z_v - m) / s

which, unlike ``lse - Σ p z``, has no cancellation between two numbers of size |z| (logits of
1e4 keep full precision). Backward, with log p = (z - m) - log s:

    ∂/∂z_v = g_lp (1[v = y] - p_v) - g_H p_v (log p_v + H).

Not done here: vocab-parallel heads (tensor parallelism), biases or logit soft-capping on the
head (the caller falls back to the logits path for those).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

# Auto chunk (tokens): a 16th of the tokens, so a chunk's [chunk, V] temporaries stay well under
# 1/8 of the naive path's [N, V] ones; at least 128, because smaller matmuls run at half the
# FLOP rate on CPU (and W, dW are re-read once per chunk), which made 64-token chunks slower
# than the naive path; at most 2^25 logits (128 MB in fp32) per chunk, so long batches stay bounded.
MIN_AUTO_CHUNK, MAX_CHUNK_ELEMENTS = 128, 1 << 25


def auto_chunk(tokens: int, vocab: int) -> int:
    """Tokens per chunk when the config says 0 (auto), for ``tokens`` rows of a ``vocab``-wide head."""
    return max(MIN_AUTO_CHUNK, min(tokens // 16, MAX_CHUNK_ELEMENTS // max(vocab, 1)))


class TorchRows:
    """Row statistics and gradients of logits chunks in plain PyTorch (the reference backend).

    Written for few passes over the [c, V] chunk (each pass is a full read/write of it, which is
    what the CPU time goes into) and at most one [c, V] fp32 buffer besides the logits.
    """

    @staticmethod
    def fwd(logits: Tensor, targets: Tensor, temperature: float, with_entropy: bool, scratch: bool = False):
        """logits [c, V], targets [c] -> log π(y) [c], H [c] or None, m [c], log s [c] (all fp32).

        ``scratch``: the logits may be overwritten (they are a recomputed temporary).
        """
        z = _scaled(logits, temperature, scratch)
        m = z.amax(-1, keepdim=True)
        z.sub_(m)  # z - m
        e = z.exp()
        s = e.sum(-1)
        log_s = s.log()
        lp = z.gather(-1, targets[:, None]).squeeze(-1) - log_s
        ent = log_s - e.mul_(z).sum(-1) / s if with_entropy else None
        return lp, ent, m.squeeze(-1), log_s

    @staticmethod
    def bwd(logits: Tensor, targets: Tensor, m: Tensor, log_s: Tensor, ent: Optional[Tensor],
            g_lp: Optional[Tensor], g_ent: Optional[Tensor], temperature: float, out: Tensor) -> Tensor:
        """d loss / d logits [c, V] written into ``out`` (may be ``logits`` itself) and returned."""
        work = _scaled(logits, temperature, scratch=out is logits)
        logp = work.sub_(m[:, None]).sub_(log_s[:, None])  # two steps: m + log s would round z - m away
        p = logp.exp()
        g_lp = torch.zeros_like(m) if g_lp is None else g_lp
        # ∂/∂logits = -(p/T)·(g_lp + g_H·(log p + H)) + (g_lp/T)·1[v = y], per-row factors folded
        if g_ent is not None:
            dz = logp.mul_((-g_ent / temperature)[:, None]).add_((-(g_lp + g_ent * ent) / temperature)[:, None])
            dz.mul_(p)
        else:
            dz = torch.mul(p, (-g_lp / temperature)[:, None], out=logp)
        dz.scatter_add_(-1, targets[:, None], (g_lp / temperature)[:, None])
        return dz if dz is out else out.copy_(dz)


def _scaled(logits: Tensor, temperature: float, scratch: bool) -> Tensor:
    """logits / T in fp32 as a buffer the caller may overwrite: the logits themselves when ``scratch``."""
    if logits.dtype != torch.float32:
        z = logits.float()  # the upcast is already a new buffer
        return z.div_(temperature) if temperature != 1.0 else z
    if scratch:
        return logits.div_(temperature) if temperature != 1.0 else logits
    return logits / temperature if temperature != 1.0 else logits.clone()


def _rows_backend(impl: str):
    if impl == "triton":
        from rlreason.kernels.triton_rows import TritonRows

        return TritonRows
    return TorchRows


def _at(t: Optional[Tensor], sl: slice) -> Optional[Tensor]:
    return None if t is None else t[sl]


def _chunks(n: int, chunk: int) -> list[slice]:
    # at least one (possibly empty) chunk, so zero tokens still give [0]-shaped outputs
    return [slice(i, i + chunk) for i in range(0, max(n, 1), chunk)]


def _forward_chunks(ctx, rows, logits_of, targets: Tensor, temperature: float, with_entropy: bool, chunk: int,
                    scratch: bool):
    """rows.fwd over token chunks (``logits_of(sl)`` gives chunk ``sl``'s logits; ``scratch``: they are
    a temporary rows.fwd may overwrite); sets what backward needs on ctx."""
    outs = [rows.fwd(logits_of(sl), targets[sl], temperature, with_entropy, scratch)
            for sl in _chunks(len(targets), chunk)]
    lp, ent, m, log_s = (None if outs[0][k] is None else torch.cat([o[k] for o in outs]) for k in range(4))
    ctx.temperature, ctx.chunk, ctx.rows = temperature, chunk, rows
    return lp, ent, (targets, m, log_s, ent)


def _backward_chunk(ctx, sl: slice, logits: Tensor, stats, g_lp, g_ent, out: Tensor) -> Tensor:
    """d loss / d logits of chunk ``sl`` into ``out``; ``stats`` = (targets, m, log s, H or None)."""
    targets, m, log_s, ent = stats
    return ctx.rows.bwd(logits, targets[sl], m[sl], log_s[sl], _at(ent, sl), _at(g_lp, sl), _at(g_ent, sl),
                        ctx.temperature, out=out)


def _f32(g: Optional[Tensor]) -> Optional[Tensor]:
    return None if g is None else g.float().contiguous()


class LinearLogprobs(torch.autograd.Function):
    """log π(y) and entropy of softmax(h Wᵀ / T), chunked over tokens; see the module docstring."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, with_entropy, chunk, impl):
        lp, ent, stats = _forward_chunks(ctx, _rows_backend(impl), lambda sl: hidden[sl] @ weight.T, targets,
                                         temperature, with_entropy, chunk, scratch=True)
        ctx.save_for_backward(hidden, weight, *stats)  # outputs (H) too: no reference cycle through ctx
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        hidden, weight, *stats = ctx.saved_tensors
        g_lp, g_ent = _f32(g_lp), _f32(g_ent)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dh = torch.empty_like(hidden) if need_h else None
        # bf16 partial products are summed in fp32: rounding each chunk's share of dW to bf16
        # and adding in bf16 would lose precision with the number of chunks.
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        for sl in _chunks(hidden.shape[0], ctx.chunk):
            logits = hidden[sl] @ weight.T
            dl = _backward_chunk(ctx, sl, logits, stats, g_lp, g_ent, out=logits)  # in place
            if need_h:
                torch.mm(dl, weight, out=dh[sl])
            if need_w and dw.dtype == dl.dtype:
                dw.addmm_(dl.T, hidden[sl])
            elif need_w:
                dw.add_(dl.T @ hidden[sl])
        return dh, None if dw is None else dw.to(weight.dtype), None, None, None, None, None


class LogitsLogprobs(torch.autograd.Function):
    """log π(y) and entropy of softmax(logits / T) for logits [N, V], chunked over tokens."""

    @staticmethod
    def forward(ctx, logits, targets, temperature, with_entropy, chunk, impl):
        lp, ent, stats = _forward_chunks(ctx, _rows_backend(impl), lambda sl: logits[sl], targets, temperature,
                                         with_entropy, chunk, scratch=False)
        ctx.save_for_backward(logits, *stats)
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        logits, *stats = ctx.saved_tensors
        g_lp, g_ent = _f32(g_lp), _f32(g_ent)
        dlogits = torch.empty_like(logits)
        for sl in _chunks(logits.shape[0], ctx.chunk):
            _backward_chunk(ctx, sl, logits[sl], stats, g_lp, g_ent, out=dlogits[sl])
        return dlogits, None, None, None, None, None
