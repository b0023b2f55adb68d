"""Lossless verification of a chain of K drafted tokens (Leviathan et al. 2023; Chen et al. 2023).

For draft x̃ᵢ drawn from qᵢ, accept with probability min(1, p′ᵢ(x̃ᵢ)/qᵢ(x̃ᵢ)); at the first rejection
emit a token from the residual norm(max(0, p′ᵢ − qᵢ)); if all K are accepted emit a bonus token from
p′_{K+1}. Because min(p, q) + max(0, p − q) = p, every emitted token is distributed exactly as
p′, the *warped* target (``warp_logits``: temperature → top-k → top-p), whatever q is: a sampled
drafter, a one-hot n-gram proposal, or a greedy drafter. Temperature 0 makes p′ one-hot at the
argmax, so the same rule reduces to "accept iff the draft is the target's argmax".

Shapes: B rows, K drafts, V vocabulary. ``q=None`` means one-hot drafts (q(x̃) = 1).
Only torch (and the shared warp) is imported here.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from rlreason.rollout.sampling import warp_logits


def target_probs(logits: Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Warped target distribution p′ [..., V] from logits [..., V]; temperature 0 gives the one-hot argmax."""
    if temperature == 0:
        dtype = logits.dtype if logits.dtype == torch.float64 else torch.float32
        return torch.zeros(logits.shape, dtype=dtype, device=logits.device).scatter_(
            -1, logits.argmax(-1, keepdim=True), 1.0)
    shape = logits.shape
    flat = warp_logits(logits.reshape(-1, shape[-1]), temperature, top_k, top_p)
    return torch.softmax(flat, dim=-1).reshape(shape)


def _draft_probs(q: Optional[Tensor], drafts: Tensor, dtype: torch.dtype) -> Tensor:
    """qᵢ(x̃ᵢ) [B, K]: the probability each draft was drawn with (1 for one-hot drafts)."""
    if q is None:
        return torch.ones(drafts.shape, dtype=dtype, device=drafts.device)
    return q.gather(-1, drafts[..., None]).squeeze(-1)


def acceptance_probs(p: Tensor, drafts: Tensor, q: Optional[Tensor]) -> Tensor:
    """min(1, p′ᵢ(x̃ᵢ)/qᵢ(x̃ᵢ)) [B, K] for p′ [B, K+1, V], drafts [B, K], q [B, K, V] or None."""
    k = drafts.shape[1]
    p_d = p[:, :k].gather(-1, drafts[..., None]).squeeze(-1)
    q_d = _draft_probs(q, drafts, p.dtype)
    # q(x̃) > 0 because x̃ was drawn from q; the clamp only guards a caller that violates that
    return (p_d / q_d.clamp_min(torch.finfo(p.dtype).tiny)).clamp(max=1.0)


def next_token_dist(p: Tensor, drafts: Tensor, q: Optional[Tensor], n_acc: Tensor) -> Tensor:
    """Distribution [B, V] of the token emitted after ``n_acc`` [B] accepted drafts.

    n_acc < K: the residual norm(max(0, p′ − q)) at the rejected position; n_acc = K: the bonus p′_{K+1}.
    """
    b, k = drafts.shape
    rows = torch.arange(b, device=p.device)
    p_n = p[rows, n_acc]  # [B, V]
    if k == 0:
        return p_n
    at = n_acc.clamp(max=k - 1)
    if q is None:  # one-hot q: the residual is p′ with the rejected draft removed
        q_n = torch.zeros_like(p_n).scatter_(-1, drafts[rows, at][:, None], 1.0)
    else:
        q_n = q[rows, at].to(p.dtype)
    resid = (p_n - q_n).clamp_min(0.0)
    mass = resid.sum(-1, keepdim=True)
    # A rejection has probability Σ max(0, q − p) = Σ max(0, p − q), so a rejected row has mass > 0
    # in exact arithmetic; where rounding leaves none, p′ itself is the limit of the residual.
    resid = torch.where(mass > 0, resid / mass.clamp_min(torch.finfo(p.dtype).tiny), p_n)
    return torch.where((n_acc < k)[:, None], resid, p_n)


def verify_chain(p: Tensor, drafts: Tensor, q: Optional[Tensor],
                 generator: Optional[torch.Generator]) -> tuple[Tensor, Tensor]:
    """Accept a prefix of each row's drafts and draw the next token.

    p′ [B, K+1, V] warped target probabilities at the K+1 verified positions, drafts [B, K] long,
    q [B, K, V] the drafter's distributions the drafts were drawn from (None: one-hot).
    Returns (n_acc [B] accepted drafts, next_token [B]). Emitted per row: drafts[:n_acc] + [next_token].
    """
    b, k = drafts.shape
    if k:
        u = torch.rand((b, k), generator=generator, dtype=p.dtype, device="cpu").to(p.device)
        ok = u < acceptance_probs(p, drafts, q)  # P(u < a) = a exactly for u ~ U[0, 1)
        n_acc = ok.long().cumprod(dim=1).sum(dim=1)
    else:
        n_acc = torch.zeros(b, dtype=torch.long, device=p.device)
    dist = next_token_dist(p, drafts, q, n_acc)
    nxt = torch.multinomial(dist.cpu(), 1, generator=generator).squeeze(-1).to(p.device)
    return n_acc, nxt


def expected_accept_len(alpha: float, k: int) -> float:
    """E(K) = (1 − α^{K+1}) / (1 − α): tokens per verify round for i.i.d. per-token acceptance α."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def predicted_speedup(alpha: float, k: int, verify_cost: float, draft_cost: float) -> float:
    """S = E(K) / (c_v(K+1)/c_t(1) + K·c_d/c_t(1)); costs given relative to one plain decode step."""
    return expected_accept_len(alpha, k) / (verify_cost + k * draft_cost)
