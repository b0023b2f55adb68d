"""GDRO maths: Prompt-GDRO weights and Rollout-GDRO budgets (Panaganti et al., arXiv:2601.19280;
algorithms.md §11.1, §11.3, §11.4). Pure functions of torch tensors and lists; the samplers that keep
their state are in ``rlreason.sampling.gdro_samplers``.

Not here: the paper's optional ``passk_focus_map`` schedule (an ablation knob) and its fallback
allocation for an infeasible budget (with n̄ among the arms the exact match always exists).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor


def loss_signal(advantages: Tensor, mask: Tensor, logprobs: Optional[Tensor], old_logprobs: Tensor,
                clip_low: float = 0.2, clip_high: float = 0.28) -> Tensor:
    """GDRO's per-response loss ℓ_i (§11.1): the token-mean clipped surrogate, no gradient.

    ℓ_i = (1/L_i) Σ_t m·max(−A ρ, −A clip(ρ, 1−ε_low, 1+ε_high)), ρ = exp(lp − lp_old);
    ``logprobs=None`` means ρ = 1 (on-policy: ℓ_i = −A_i). advantages, mask, logprobs: [N, T] -> [N].
    """
    if logprobs is None:
        ratio = torch.ones_like(advantages)
    else:
        ratio = torch.exp((logprobs - old_logprobs).clamp(-20.0, 20.0))
    loss = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high))
    return (loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def bin_means(values: Tensor, bins: Tensor, num: int) -> tuple[Tensor, Tensor]:
    """(mean of ``values`` per bin, count per bin) over ``num`` bins; values, bins: [N] -> [num], [num]."""
    count = torch.zeros(num, dtype=torch.float64).index_add_(0, bins, torch.ones_like(values, dtype=torch.float64))
    total = torch.zeros(num, dtype=torch.float64).index_add_(0, bins, values.double())
    return total / count.clamp(min=1.0), count


def exploration_probs(scores: Tensor, eta: float, gamma: float) -> Tensor:
    """q = (1−γ)·softmax(η·S) + γ/|S| (EXP3P with exploration, Eqs. 14–16). scores: [K] -> [K]."""
    return (1.0 - gamma) * torch.softmax(eta * scores.double(), 0) + gamma / len(scores)


def class_weights(scores: Tensor, eta: float, gamma: float, cap: float, form: str = "code",
                  score_clip: float = 5.0) -> Tensor:
    """Per-bin weight of the bins present this step; scores: EMA losses S(b) [K] -> [K].

    ``code`` (default; what produced the paper's numbers): min((1−γ)·softmax(η S) + γ/K, ω_max) over the
    bins present. ``paper``: min(exp(η·clip(S, −C, C)), ω_max).
    """
    if form == "paper":
        return torch.exp(eta * scores.double().clamp(-score_clip, score_clip)).clamp(max=cap)
    return exploration_probs(scores, eta, gamma).clamp(max=cap)


def response_weights(per_bin: Tensor, bins: Tensor, cap: float, normalise: bool = True) -> Tensor:
    """w_i = w_{b(i)}, rescaled to mean 1 over the N responses and capped at ω_max (§11.3). -> [N]."""
    w = per_bin.double()[bins]
    if normalise and len(w):
        w = w * (len(w) / w.sum())
    return w.clamp(max=cap).float()


def ema(previous: Optional[float], value: float, beta: float) -> float:
    """S ← value at the first observation, else (1−β)·S + β·value."""
    return value if previous is None else (1.0 - beta) * previous + beta * value


def sqrt_allocation(variances: Tensor, shares: Tensor, n_bar: float) -> Tensor:
    """Square-root law (Thm 4.2): n*_b = n̄·sqrt(v_b) / Σ_j q̂_j sqrt(v_j), so Σ_b q̂_b n*_b = n̄.

    Minimises Σ q̂_b v_b / n_b at a fixed mean; KKT form n_b = sqrt(v_b/μ). All-zero variances: n̄ each.
    """
    root = variances.double().clamp(min=0.0).sqrt()
    denom = float((shares.double() * root).sum())
    if denom <= 0:
        return torch.full_like(root, float(n_bar))
    return n_bar * root / denom


def match_budget(scores: Sequence[Sequence[float]], counts: Sequence[int], arms: Sequence[int],
                 target: int) -> list[int]:
    """Arm index per bin maximising Σ_b scores[b][arm] s.t. Σ_b counts_b·arms[arm_b] = target.

    Dynamic programming over bins, keyed by the running total (§11.4): exact when feasible, otherwise
    the closest total, and among those the higher score. Equal scores (e.g. uniform arm probabilities
    before any feedback) go to the allocation closest to uniform, Σ count_b·(n_b − target/Σcount)².
    """
    mean = target / max(sum(counts), 1)
    best: dict[int, tuple[float, float, list[int]]] = {0: (0.0, 0.0, [])}
    for b, count in enumerate(counts):
        nxt: dict[int, tuple[float, float, list[int]]] = {}
        for total, (value, spread, picks) in best.items():
            for a, n in enumerate(arms):
                key, v, d = total + count * n, value + float(scores[b][a]), spread + count * (n - mean) ** 2
                old = nxt.get(key)
                if old is None or v > old[0] + 1e-12 or (abs(v - old[0]) <= 1e-12 and d < old[1]):
                    nxt[key] = (v, d, picks + [a])
        best = nxt
    total = min(best, key=lambda s: (abs(s - target), -best[s][0], best[s][1]))
    return best[total][2]


def arm_log_probs(arm_scores: Tensor, eta: float, gamma: float) -> Tensor:
    """log p_b over the arms, p_b = (1−γ)·softmax(η·s_b) + γ/|arms|. arm_scores: [K, A] -> [K, A]."""
    p = (1.0 - gamma) * torch.softmax(eta * arm_scores.double(), -1) + gamma / arm_scores.shape[-1]
    return p.clamp(min=1e-12).log()


def closeness_scores(targets: Tensor, arms: Sequence[int]) -> Tensor:
    """−(n − n*_b)²: the DP score that rounds square-root targets to arms. targets: [K] -> [K, A]."""
    a = torch.tensor(list(arms), dtype=torch.float64)
    return -((a[None, :] - targets.double()[:, None]) ** 2)


def default_arms(n_bar: int, n_min: int = 2, n_max: Optional[int] = None) -> list[int]:
    """[n_min … n_max], n_max = round(3·n̄) by default (the paper's arms 2…12 at n̄ = 4)."""
    top = int(round(3.0 * n_bar)) if n_max is None else n_max
    return list(range(n_min, top + 1))


def realised_mean(counts: Sequence[int], sizes: Sequence[int]) -> float:
    """n̂ = Σ_b count_b·n_b / Σ_b count_b, the mean responses per prompt actually drawn."""
    total = sum(counts)
    return sum(c * n for c, n in zip(counts, sizes)) / total if total else math.nan
