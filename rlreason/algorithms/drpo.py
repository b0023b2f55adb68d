"""DRPO: Decoupled Reward Policy Optimization (Li, Chen, Lin, Yang, "DRPO: Efficient Reasoning via
Decoupled Reward Policy Optimization", arXiv:2510.04474), on the DisCO objective (Li et al.,
"DisCO: Reinforcing Large Reasoning Models with Discriminative Constrained Optimization",
arXiv:2505.12366); algorithms.md §10.

Per prompt q with correct responses O⁺ and wrong ones O⁻ (rewards exactly 1 / 0), score
s_i = (1/L_i)·Σ_t lp_{i,t} and
    J(q) = Σ_{i∈O⁺} w_i·s_i − τ·log Σ_{j∈O⁻} exp(s_j/τ),   w = softmax_{O⁺}((1 − L_i/C)/λ)
w is the closed-form length-optimal distribution over the positives estimated with
self-normalised importance weights: the length reward only reweights correct responses and never
turns one negative (GRPO + length penalty can). The loss is −(1/B)·Σ_q J(q) + sg(β·max(kl−δ, 0))·kl,
kl = the masked mean of k1(lp_old, lp) over the whole optimizer step — a squared-hinge trust
region. B counts every prompt of the step; prompts without both a correct and a wrong response
contribute nothing (but count in B).

How it meets an algorithm-blind learner, through the entry's traits:
- ``keep_groups``: J(q) couples a prompt's responses, so mini-batches, learner shards and
  micro-batches keep whole groups together; each group's term is then exact in one micro-batch.
- ``step_sums``: the hinge needs the step's KL at the current weights before any backward, so the
  learner runs a no-grad pass over every micro-batch of every rank first and sums ``kl_sum``
  (one extra forward per update; exact, unlike a lagged value). The penalty's gradient is then
  linear per token: sg(coef)·(lp_old − lp)/global_tokens.
- ``agg_mode="sum"``: the loss normalises itself (1/B, 1/global_tokens), so the learner sums.
The per-token matrix spreads each response's term evenly over its tokens; its sum is the
reference loss in value and gradient (∂/∂s_i = −w_i/B on positives, +softmax_j(s/τ)/B on negatives).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlreason.algorithms import POLICY_LOSSES
from rlreason.algorithms.base import LossInput, LossOutput


def drpo_step_sums(inp: LossInput, *, kl_type: str = "k1", **_) -> dict[str, Tensor]:
    """Σ_{i,t} m·kl_{i,t} of a micro-batch: summed over the step, the trust region's KL numerator."""
    return {"kl_sum": (_token_kl(inp, kl_type) * inp.response_mask).sum()}


@POLICY_LOSSES.register("drpo", agg_mode="sum", keep_groups=True, needs_groups=True, step_sums=drpo_step_sums)
def drpo(inp: LossInput, *, lam: float = 0.1, tau: float = 10.0, delta: float = 1e-4, beta: float = 1e3,
         kl_type: str = "k1") -> LossOutput:
    """DRPO: −(1/B)·Σ_q [Σ_{O⁺} w_i s_i − τ·LSE_{O⁻}(s/τ)] + hinge KL, spread over tokens [n, T].

    λ (lam) = 0.1, τ = 10, δ = 1e-4, β = 1e3 and C = rollout.max_new_tokens are the paper's
    (run_drpo_1.5b_8k.sh); lam = inf gives DisCO's uniform positive weights. kl_type: k1 (paper)
    or k3 (verl's low_var_kl). Rewards must be exactly 0/1; empty (fully masked) rows are ignored.
    """
    if kl_type not in ("k1", "k3"):
        raise ValueError(f"drpo: kl_type must be 'k1' or 'k3', got {kl_type!r}")
    mask = inp.response_mask
    length = mask.sum(-1)
    score = (inp.logprobs * mask).sum(-1) / length.clamp(min=1.0)  # s_i, carries grad
    gid = torch.unique(inp.group_index, return_inverse=True)[1]
    pos, neg = (inp.rewards == 1) & (length > 0), (inp.rewards == 0) & (length > 0)
    valid = (_group_sum(pos.float(), gid) > 0) & (_group_sum(neg.float(), gid) > 0)
    cap = float(inp.max_response_length or mask.shape[1])
    w = _group_softmax(((1.0 - length / cap) / lam).detach(), gid, pos & valid)
    neg_term = tau * _lse_surrogate(score / tau, gid, neg & valid)  # value τ·p_j, gradient p_j
    per_seq = torch.where(pos & valid, -w * score, torch.where(neg & valid, neg_term, torch.zeros_like(score)))
    per_seq = per_seq / max(inp.global_groups, 1.0)
    token_kl = _token_kl(inp, kl_type)
    kl = inp.step_sums.get("kl_sum", 0.0) / max(inp.global_tokens, 1.0)
    coef = beta * max(kl - delta, 0.0)  # sg(β·max(kl−δ, 0)): a number, fixed for the step
    loss = (per_seq / length.clamp(min=1.0))[:, None] * mask + coef * token_kl / max(inp.global_tokens, 1.0)
    metrics = {"ppo_kl": token_kl.detach(), "clip_frac": torch.full_like(mask, float(kl > delta))}
    return LossOutput(token_loss=loss, token_metrics=metrics)


def _token_kl(inp: LossInput, kl_type: str) -> Tensor:
    """k1 = lp_old − lp; k3 adds ρ − 1 (verl's low_var_kl of the trust region)."""
    d = inp.old_logprobs - inp.logprobs
    return d if kl_type == "k1" else d + torch.exp(-d.clamp(-20.0, 20.0)) - 1.0


def _group_sum(x: Tensor, gid: Tensor) -> Tensor:
    """Σ of x over each row's group, broadcast back to rows [n]."""
    return torch.zeros(int(gid.max()) + 1, dtype=x.dtype, device=x.device).index_add_(0, gid, x)[gid]


def _group_max(x: Tensor, gid: Tensor, member: Tensor) -> Tensor:
    """max of x over each row's group members (0 for groups without members), broadcast [n]; no grad."""
    x = torch.where(member, x.detach(), torch.full_like(x, -torch.inf))
    top = torch.full((int(gid.max()) + 1,), -torch.inf, dtype=x.dtype, device=x.device).scatter_reduce(
        0, gid, x, "amax")
    return torch.nan_to_num(top, neginf=0.0)[gid]


def _group_softmax(z: Tensor, gid: Tensor, member: Tensor) -> Tensor:
    """softmax of z over each group's members [n] (0 off members)."""
    e = torch.exp(torch.where(member, z - _group_max(z, gid, member), -torch.inf))
    return e / _group_sum(e, gid).clamp(min=1e-30)


def _lse_surrogate(z: Tensor, gid: Tensor, member: Tensor) -> Tensor:
    """e_j/sg(Σ e) per member, e_j = exp(z_j − sg(max z)): value softmax_j, and summed over a
    group it has the gradient of log Σ exp(z) (DRPO's neg_term; the max-shift must be detached)."""
    # exp of −inf off members: a where() after exp would leak NaN gradients from overflowing rows
    e = torch.exp(torch.where(member, z - _group_max(z, gid, member), -torch.inf))
    return e / _group_sum(e, gid).detach().clamp(min=1e-30)
