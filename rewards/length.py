"""Length rewards: the formulas once (tensor in, tensor out), and the rewards that recipes name.

The pure functions below are the single home of the length-shaping maths (algorithms.md §12); the
algorithm side (DAPO overlong shaping, Kimi, L-GRPO, DOT in ``rlreason.algorithms``) calls them too.
All take ``lengths`` as generated-token counts including EOS (§17.4) and, where the method gates
on it, ``correct`` as 1/0 with NaN meaning "no verdict" (treated as incorrect by the formulas).
Group-relative formulas take ``group_index`` and work on ragged groups (scatter, never view(-1, G)).

Not here: DOT's truncation (a rollout transform, §12.5) and C3PO's token budget (§12.6).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from rlreason.rewards import REWARDS


def overlong_penalty(lengths: Tensor, max_length: int, cache_length: int, factor: float = 1.0) -> Tensor:
    """DAPO soft overlong punishment (§12.1): 0 up to L_max − L_cache, then linear down to −factor at L_max.

    DAPO (arXiv:2503.14476) §3.3; verl's ``overlong_buffer`` adds ``factor``. Beyond L_max: −factor.
    lengths: [N]. Returns [N] float.
    """
    if cache_length <= 0:
        return torch.where(lengths.double() > max_length, -factor, 0.0).float()
    start = max_length - cache_length
    return (((start - lengths.double()) / cache_length).clamp(-1.0, 0.0) * factor).float()


def linear_length_penalty(lengths: Tensor, max_length: int) -> Tensor:
    """−L/L_max, clipped to [−1, 0]: the plain linear penalty. lengths: [N] -> [N]."""
    return -(lengths.double() / max_length).clamp(0.0, 1.0).float()


def cosine_length_reward(lengths: Tensor, correct: Tensor, max_length: int, min_value_correct: float = 0.5,
                         max_value_correct: float = 1.0, min_value_wrong: float = -1.0,
                         max_value_wrong: float = -0.5) -> Tensor:
    """Cosine length-scaled correctness reward (Yeo et al., arXiv:2502.03373; open-r1's defaults).

    Correct: from max_value_correct at L=0 down to min_value_correct at L_max (short right answers
    earn more). Wrong: from min_value_wrong at L=0 up to max_value_wrong at L_max (long attempts lose
    less). r = lo + ½(hi − lo)(1 + cos(π·L/L_max)). lengths, correct: [N] -> [N].
    """
    cos = torch.cos(math.pi * (lengths.double() / max_length).clamp(0.0, 1.0))
    right = correct.double() == 1.0
    lo = torch.where(right, min_value_correct, max_value_wrong)
    hi = torch.where(right, max_value_correct, min_value_wrong)
    return (lo + 0.5 * (hi - lo) * (1.0 + cos)).float()


def _group_min_max(values: Tensor, group_index: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row min and max of ``values`` over the row's group ([N] each), for ragged groups."""
    _, inverse = torch.unique(group_index, return_inverse=True)
    g = int(inverse.max()) + 1 if len(inverse) else 0
    v = values.double()
    lo = torch.full((g,), math.inf, dtype=torch.float64).scatter_reduce(0, inverse, v, "amin")
    hi = torch.full((g,), -math.inf, dtype=torch.float64).scatter_reduce(0, inverse, v, "amax")
    return lo[inverse], hi[inverse]


def kimi_length_reward(lengths: Tensor, correct: Tensor, group_index: Tensor) -> Tensor:
    """Kimi k1.5 group-relative length reward (arXiv:2501.12599 §2.3.3; algorithms.md §12.2).

    λ_i = 0.5 − (L_i − min_len)/(max_len − min_len) within the group; correct rows get λ_i,
    incorrect rows min(0, λ_i); a group whose lengths are all equal gets 0.
    lengths, correct, group_index: [N] -> [N].
    """
    lo, hi = _group_min_max(lengths, group_index)
    span = hi - lo
    lam = torch.where(span > 0, 0.5 - (lengths.double() - lo) / span.clamp(min=1e-12), 0.0)
    right = correct.double() == 1.0
    return torch.where(right, lam, lam.clamp(max=0.0)).float()


def remaining_budget_reward(lengths: Tensor, correct: Tensor, group_index: Tensor, max_length: int) -> Tensor:
    """ConciseR L-GRPO length term (arXiv:2505.21178; §12.4): 1 − L/L_max, only in all-correct groups.

    Rows of a group with any incorrect (or unverified) response get 0. [N] -> [N].
    """
    right = (correct.double() == 1.0).double()
    all_right, _ = _group_min_max(right, group_index)
    term = 1.0 - lengths.double() / max_length
    return torch.where(all_right == 1.0, term, 0.0).float()


def lcpo_exact(lengths: Tensor, target: Tensor, alpha: float = 0.0003) -> Tensor:
    """L1 LCPO-Exact length term (arXiv:2503.04697; §12.3): −α·|n_gold − n_y|, added to correctness."""
    return (-alpha * (target.double() - lengths.double()).abs()).float()


def lcpo_max(lengths: Tensor, target: Tensor, alpha: float = 0.0003, delta: float = 0.5,
             slope: str = "paper") -> Tensor:
    """L1 LCPO-Max factor (§12.3), multiplied by correctness: clip(α(n_gold − n_y) + δ, 0, 1) ("paper")
    or clip(½ + (α/2)(n_gold − n_y), 0, 1) (the released code, ``slope="code"``)."""
    gap = target.double() - lengths.double()
    if slope == "code":
        return (0.5 + 0.5 * alpha * gap).clamp(0.0, 1.0).float()
    return (alpha * gap + delta).clamp(0.0, 1.0).float()


# ----------------------------------------------------------------------------- registered rewards


def _correct_tensor(correct) -> Tensor:
    values = correct if isinstance(correct, list) else [correct]
    return torch.tensor([math.nan if c is None else float(c) for c in values], dtype=torch.float64)


@REWARDS.register("overlong")
def overlong(*, response_length: int, max_response_length: int = 0, max_length: Optional[int] = None,
             cache_length: Optional[int] = None, factor: float = 1.0, **_) -> float:
    """DAPO soft overlong punishment: 0 until L_max − L_cache tokens, then down to −factor at L_max.

    ``max_length`` defaults to the run's rollout.max_new_tokens, ``cache_length`` to 20% of it (the
    paper's 4096 of 20480). Applies to correct and incorrect responses alike (§12.1).
    """
    top = max_length or max_response_length
    if not top:
        raise ValueError("overlong needs max_length (or the run's rollout.max_new_tokens)")
    cache = round(0.2 * top) if cache_length is None else cache_length
    return float(overlong_penalty(torch.tensor([float(response_length)]), top, cache, factor)[0])


@REWARDS.register("length_linear")
def length_linear(*, response_length: int, correct: Optional[float] = None, max_response_length: int = 0,
                  max_length: Optional[int] = None, gate: str = "correct", **_) -> Optional[float]:
    """Linear length penalty −L/L_max; by default only on correct responses (gate="correct" | "none")."""
    if gate not in ("correct", "none"):
        raise ValueError(f"length_linear: gate={gate!r}, use 'correct' or 'none'")
    if gate == "correct" and correct != 1.0:
        return 0.0
    top = max_length or max_response_length
    return float(linear_length_penalty(torch.tensor([float(response_length)]), top)[0])


@REWARDS.register("length_cosine")
def length_cosine(*, response_length: int, correct: Optional[float] = None, max_response_length: int = 0,
                  max_length: Optional[int] = None, min_value_correct: float = 0.5, max_value_correct: float = 1.0,
                  min_value_wrong: float = -1.0, max_value_wrong: float = -0.5, **_) -> Optional[float]:
    """Cosine length-scaled correctness (Yeo et al. 2025); replaces the verifier's score (give it weight 0)."""
    if correct is None:
        return None  # no verifier applied to this row
    top = max_length or max_response_length
    value = cosine_length_reward(torch.tensor([float(response_length)]), _correct_tensor(correct), top,
                                 min_value_correct, max_value_correct, min_value_wrong, max_value_wrong)
    return float(value[0])


@REWARDS.register("length_kimi", kind="group")
def length_kimi(*, response_length: list[int], correct: list[Optional[float]], step: int = 0,
                start_step: int = 0, **_) -> list[Optional[float]]:
    """Kimi k1.5 group-relative length reward: +0.5 for the shortest of a group … −0.5 for the longest."""
    n = len(response_length)
    if step < start_step:  # the paper trains without the penalty first (warm-up)
        return [0.0] * n
    value = kimi_length_reward(torch.tensor(response_length, dtype=torch.float64), _correct_tensor(correct),
                               torch.zeros(n, dtype=torch.long))
    return [None if c is None else float(v) for v, c in zip(value, correct)]


@REWARDS.register("length_budget", kind="group")
def length_budget(*, response_length: list[int], correct: list[Optional[float]], max_response_length: int = 0,
                  max_length: Optional[int] = None, **_) -> list[float]:
    """ConciseR L-GRPO: 1 − L/L_max for every response of an all-correct group, 0 otherwise."""
    n = len(response_length)
    value = remaining_budget_reward(torch.tensor(response_length, dtype=torch.float64), _correct_tensor(correct),
                                    torch.zeros(n, dtype=torch.long), max_length or max_response_length)
    return [float(v) for v in value]


@REWARDS.register("length_lcpo")
def length_lcpo(*, response_length: int, correct: Optional[float] = None, target: Optional[int] = None,
                target_key: str = "target_length", mode: str = "exact", alpha: float = 0.0003, delta: float = 0.5,
                slope: str = "paper", **row) -> Optional[float]:
    """L1 LCPO toward a target length n_gold: ``target`` for every prompt, else the row's ``target_key`` column.

    mode="exact": −α·|n_gold − n_y|, added to the verifier's score. mode="max": correctness × the LCPO-Max
    factor, which replaces the verifier's score (give math_verify weight 0, as with length_cosine).
    """
    n_gold = target if target is not None else row.get(target_key)
    if n_gold is None:
        raise ValueError(f"length_lcpo needs a target length: kwargs target=N, or a '{target_key}' column "
                         f"in the data (target_key names it); this row has {sorted(row)}")
    lengths, gold = torch.tensor([float(response_length)]), torch.tensor([float(n_gold)])
    if mode == "exact":
        return float(lcpo_exact(lengths, gold, alpha)[0])
    if mode != "max":
        raise ValueError(f"length_lcpo: mode={mode!r}, use 'exact' or 'max'")
    if correct is None:
        return None  # no verifier applied to this row
    return float(correct) * float(lcpo_max(lengths, gold, alpha, delta, slope)[0])
