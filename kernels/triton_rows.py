"""Triton kernels for the row statistics and gradients of a logits chunk (online log-sum-exp).

One program per token row walks the vocabulary in blocks of ``BLOCK_V``, keeping a running max
``m``, ``s = Σ exp(z - m)`` and ``t = Σ exp(z - m)(z - m)`` (rescaled when ``m`` grows), so
nothing of size V is ever held beyond one block: forward reads the logits once, backward reads
them once and writes the gradient in place. The token chunking and the ``h @ Wᵀ`` /
``dlogits @ W`` matmuls stay in PyTorch (cuBLAS does them better than a hand-written ``tl.dot``);
see ``rlreason.kernels.chunked`` for the plan and the formulas, which ``TritonRows`` mirrors
exactly with the same signatures as ``TorchRows``.

Written against Triton's public API (``triton.jit``, ``tl.load/store``, ``tl.reduce``). This
repository's CI has no GPU: these kernels are tested under the interpreter (``TRITON_INTERPRET=1``
with CPU tensors), which runs the same program semantics but says nothing about speed on CUDA.
This module is imported lazily, only when the Triton path is chosen.
"""

from __future__ import annotations

import os

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK_V = 1024


# Reductions go through tl.reduce with our own combine functions, not tl.max / tl.sum: those are
# @triton.jit functions of Triton's standard library, fixed as compiled or interpreted when Triton
# is first imported (often by torch or transformers, before TRITON_INTERPRET is set).
@triton.jit
def _max_combine(a, b):
    return tl.maximum(a, b)


@triton.jit
def _add_combine(a, b):
    return a + b


@triton.jit
def _rows_fwd_kernel(x_ptr, stride_x, tgt_ptr, lp_ptr, ent_ptr, m_ptr, logs_ptr, V, temperature,
                     BLOCK_V: tl.constexpr, WITH_ENT: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.full((), 0.0, tl.float32)
    t = tl.full((), 0.0, tl.float32)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        valid = cols < V
        z = tl.load(x_row + cols, mask=valid, other=float("-inf")).to(tl.float32) / temperature
        m_new = tl.maximum(m, tl.reduce(z, 0, _max_combine))
        alpha = tl.exp(m - m_new)  # 0 on the first block, where m = -inf
        d = tl.where(valid, z - m_new, 0.0)
        e = tl.where(valid, tl.exp(d), 0.0)
        if WITH_ENT:
            # t is relative to m; moving the reference to m_new adds (m - m_new)·s before rescaling
            shift = tl.where(s > 0, m - m_new, 0.0) * s
            t = alpha * (t + shift) + tl.reduce(e * d, 0, _add_combine)
        s = alpha * s + tl.reduce(e, 0, _add_combine)
        m = m_new
    log_s = tl.log(s)
    y = tl.load(tgt_ptr + row)
    z_y = tl.load(x_row + y).to(tl.float32) / temperature
    tl.store(lp_ptr + row, (z_y - m) - log_s)
    tl.store(m_ptr + row, m)
    tl.store(logs_ptr + row, log_s)
    if WITH_ENT:
        tl.store(ent_ptr + row, log_s - t / s)


@triton.jit
def _rows_bwd_kernel(x_ptr, stride_x, dx_ptr, stride_dx, tgt_ptr, m_ptr, logs_ptr, ent_ptr, glp_ptr, gent_ptr,
                     V, temperature, BLOCK_V: tl.constexpr, WITH_LP: tl.constexpr, WITH_ENT: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    dx_row = dx_ptr + row * stride_dx
    # log p = (z - m) - log s, in that order: m + log s would round away the precision of z - m
    m = tl.load(m_ptr + row)
    log_s = tl.load(logs_ptr + row)
    y = tl.load(tgt_ptr + row)
    g_lp = 0.0
    if WITH_LP:
        g_lp = tl.load(glp_ptr + row)
    g_h = 0.0
    h = 0.0
    if WITH_ENT:
        g_h = tl.load(gent_ptr + row)
        h = tl.load(ent_ptr + row)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        valid = cols < V
        z = tl.load(x_row + cols, mask=valid, other=0.0).to(tl.float32) / temperature
        logp = tl.where(valid, z - m, 0.0) - log_s
        p = tl.exp(logp)
        dz = tl.where(cols == y, g_lp, 0.0) - g_lp * p
        if WITH_ENT:
            dz -= g_h * p * (logp + h)
        tl.store(dx_row + cols, (dz / temperature).to(dx_ptr.dtype.element_ty), mask=valid)


# triton.jit picks the interpreter when this module is imported, so that is when it counts.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _check(t: Tensor) -> None:
    if t.device.type != "cuda" and not INTERPRETED:
        raise RuntimeError("the Triton path needs CUDA tensors (or TRITON_INTERPRET=1 set before the first import "
                           "of rlreason.kernels.triton_rows, for CPU tests); use learner.logprob_impl=chunked on CPU")


class TritonRows:
    """Same contract as ``TorchRows``; the row loops run as Triton kernels."""

    @staticmethod
    def fwd(logits: Tensor, targets: Tensor, temperature: float, with_entropy: bool, scratch: bool = False):
        """logits [c, V], targets [c] -> log π(y) [c], H [c] or None, m [c], log s [c] (all fp32)."""
        _check(logits)
        logits = logits if logits.stride(-1) == 1 else logits.contiguous()
        c, v = logits.shape
        lp, ent, m, log_s = (torch.empty(c, dtype=torch.float32, device=logits.device) for _ in range(4))
        if c:
            _rows_fwd_kernel[(c,)](logits, logits.stride(0), targets.contiguous(), lp, ent, m, log_s, v,
                                   float(temperature), BLOCK_V=min(BLOCK_V, triton.next_power_of_2(v)),
                                   WITH_ENT=with_entropy)
        return lp, ent if with_entropy else None, m, log_s

    @staticmethod
    def bwd(logits: Tensor, targets: Tensor, m: Tensor, log_s: Tensor, ent: Optional[Tensor],
            g_lp: Optional[Tensor], g_ent: Optional[Tensor], temperature: float, out: Tensor) -> Tensor:
        """d loss / d logits [c, V] written into ``out`` (may be ``logits`` itself) and returned."""
        _check(logits)
        assert logits.stride(-1) == 1 and out.stride(-1) == 1
        c, v = logits.shape
        dummy = m  # never read: the constexpr flags compile those loads away
        if c:
            _rows_bwd_kernel[(c,)](logits, logits.stride(0), out, out.stride(0), targets.contiguous(), m, log_s,
                                   ent if ent is not None else dummy, g_lp if g_lp is not None else dummy,
                                   g_ent if g_ent is not None else dummy, v, float(temperature),
                                   BLOCK_V=min(BLOCK_V, triton.next_power_of_2(v)),
                                   WITH_LP=g_lp is not None, WITH_ENT=g_ent is not None)
        return out
