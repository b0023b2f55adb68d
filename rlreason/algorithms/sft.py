"""Supervised fine-tuning as a policy loss: next-token NLL of the response tokens.

Used by the SFT warm-up stage (advantages are ignored) and as a building block of methods that
add an SFT term on correct rollouts (GPPO/Klear, algorithms.md §9).
"""

from __future__ import annotations

from rlreason.algorithms import POLICY_LOSSES
from rlreason.algorithms.base import LossInput, LossOutput


@POLICY_LOSSES.register("sft")
def sft(inp: LossInput) -> LossOutput:
    """SFT: ℓ_{i,t} = -log π_θ(o_{i,t}); aggregate with token-mean for the usual NLL."""
    return LossOutput(token_loss=-inp.logprobs)
