"""Dr. GRPO advantage: the group mean as baseline, no std (Liu et al., "Understanding R1-Zero-Like
Training: A Critical Perspective", arXiv:2503.20783; algorithms.md §4).

Dividing by the group std up-weights too-easy and too-hard questions; Dr. GRPO drops it. The
paper's other removal, the 1/|o_i| length normalisation, is the aggregation mode
``seq-mean-token-sum-norm`` with a constant C (recipe ``dr_grpo_quickstart``), not this file.
"""

from __future__ import annotations

from torch import Tensor

from rlreason.algorithms import ADVANTAGES
from rlreason.algorithms.base import AdvantageInput
from rlreason.algorithms.grpo import grpo


@ADVANTAGES.register("dr_grpo", needs_groups=True)
def dr_grpo(inp: AdvantageInput, *, singleton: str = "zero") -> Tensor:
    """Dr. GRPO: A_i = R_i − mean_g broadcast to tokens [N, T] (no std, so no epsilon).

    All-equal groups give exactly 0; singletons 0 (or R_i with ``singleton="raw"``); NaN rewards
    0 and left out of the mean.
    """
    return grpo(inp, norm_by_std=False, singleton=singleton)
