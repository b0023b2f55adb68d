"""Per-group statistics with scatter ops, so groups may be ragged (algorithms.md §0.2, §17.2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class GroupStats:
    mean: Tensor  # [N] mean of the response's group (valid rewards only)
    std: Tensor  # [N] std of the group (ddof as requested; 0 for groups with < ddof+1 values)
    count: Tensor  # [N] number of valid rewards in the group
    all_equal: Tensor  # [N] bool, every valid reward of the group is identical (max == min)


def group_stats(values: Tensor, group_index: Tensor, ddof: int = 1) -> GroupStats:
    """Mean/std/count of ``values`` [N] per group, broadcast back to responses; NaN values are skipped."""
    n_groups = int(group_index.max().item()) + 1 if group_index.numel() else 0
    valid = ~torch.isnan(values)
    x = torch.where(valid, values, torch.zeros_like(values)).double()
    w = valid.double()
    count = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, group_index, w)
    total = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, group_index, x)
    mean = total / count.clamp(min=1)
    dev2 = ((x - mean[group_index]) ** 2) * w
    ss = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, group_index, dev2)
    std = torch.sqrt(ss / (count - ddof).clamp(min=1)) * (count > ddof)
    # Detect all-equal groups explicitly: in floating point R - mean is not exactly 0 (§0.2).
    big = torch.finfo(torch.float64).max
    hi = torch.full((n_groups,), -big, dtype=torch.float64).scatter_reduce(
        0, group_index, torch.where(valid, x, torch.full_like(x, -big)), "amax")
    lo = torch.full((n_groups,), big, dtype=torch.float64).scatter_reduce(
        0, group_index, torch.where(valid, x, torch.full_like(x, big)), "amin")
    dtype = values.dtype
    return GroupStats(
        mean=mean[group_index].to(dtype),
        std=std[group_index].to(dtype),
        count=count[group_index].to(dtype),
        all_equal=(hi <= lo)[group_index],
    )
