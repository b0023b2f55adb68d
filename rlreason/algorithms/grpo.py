"""GRPO group-relative advantage (DeepSeekMath, arXiv:2402.03300; algorithms.md §2, §0.2).

A_i = (R_i - mean_g) / (std_g + eps), broadcast to every response token.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlreason.algorithms import ADVANTAGES
from rlreason.algorithms.base import AdvantageInput
from rlreason.algorithms.group_stats import group_stats
from rlreason.algorithms.kl_reward import sequence_rewards


@ADVANTAGES.register("grpo", needs_groups=True)
def grpo(
    inp: AdvantageInput,
    *,
    norm_by_std: bool = True,
    std_ddof: int = 1,
    eps: float = 1e-6,
    singleton: str = "zero",
) -> Tensor:
    """GRPO: reward minus the group mean, divided by the group std (ddof 1 as verl/TRL/OpenRLHF).

    norm_by_std=False gives Dr. GRPO's advantage (R - mean). All-equal groups get exactly 0;
    singleton groups get 0 (``singleton="zero"``) or their raw reward (``"raw"``, verl parity);
    NaN rewards get 0 and are left out of the group statistics. With the KL in the reward
    (``inp.kl_penalty``), R_i is the reward minus the response's summed penalty, as in verl.
    """
    if singleton not in ("zero", "raw"):
        raise ValueError(f"grpo: singleton must be 'zero' or 'raw', got {singleton!r}")
    r = sequence_rewards(inp)
    stats = group_stats(r, inp.group_index, ddof=std_ddof)
    centred = r - stats.mean
    adv = centred / (stats.std + eps) if norm_by_std else centred
    adv = torch.where(stats.all_equal, torch.zeros_like(adv), adv)
    single = stats.count <= 1
    adv = torch.where(single, r if singleton == "raw" else torch.zeros_like(r), adv)
    adv = torch.nan_to_num(adv, nan=0.0)
    return adv[:, None] * inp.response_mask
