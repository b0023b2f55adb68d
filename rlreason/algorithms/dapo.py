"""DAPO's policy loss: clip-higher PPO without a dual clip (Yu et al., "DAPO: An Open-Source LLM
Reinforcement Learning System at Scale", arXiv:2503.14476; algorithms.md §3.1).

A preset of ``ppo_clip`` with the paper's ε_low = 0.2, ε_high = 0.28: raising the ceiling lets
low-probability tokens with A > 0 grow, against entropy collapse. The rest of DAPO lives
elsewhere: token-mean aggregation (``algorithm.agg_mode``, the default), no KL
(``algorithm.kl_coef=0``), dynamic sampling (the prompt sampler) and overlong shaping (the
``overlong`` reward); recipe ``dapo_quickstart`` sets them together.
"""

from __future__ import annotations

from typing import Optional

from rlreason.algorithms import POLICY_LOSSES
from rlreason.algorithms.base import LossInput, LossOutput
from rlreason.algorithms.ppo_clip import ppo_clip


@POLICY_LOSSES.register("dapo")
def dapo(inp: LossInput, *, clip_low: float = 0.2, clip_high: float = 0.28,
         dual_clip: Optional[float] = None) -> LossOutput:
    """DAPO clip-higher: ℓ = max(−Aρ, −A·clip(ρ, 1−0.2, 1+0.28)) per token [n, T]; no dual clip."""
    return ppo_clip(inp, clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip)
