"""Typed inputs and outputs of the algorithm registries (advantage estimators, policy losses).

Every advantage estimator is ``fn(inp: AdvantageInput, **hparams) -> Tensor [N, T]`` and every
policy loss is ``fn(inp: LossInput, **hparams) -> LossOutput``. A method that needs another
input adds a field here; call sites never pass conditional keyword arguments.
Shapes: N responses, T response width, n rows of a micro-batch (see rlreason.types).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from torch import Tensor


@dataclass
class AdvantageInput:
    rewards: Tensor  # [N] scalar outcome reward R_i; NaN = not applicable (advantage 0)
    group_index: Tensor  # [N] long, prompt (group) of each response
    response_mask: Tensor  # [N, T] float, 1 on generated tokens
    correct: Tensor  # [N] float, verifier outcome 1/0, NaN where none ran
    old_logprobs: Optional[Tensor] = None  # [N, T] log π_old (no grad)
    ref_logprobs: Optional[Tensor] = None  # [N, T] log π_ref (no grad), None without a reference model


@dataclass
class LossInput:
    logprobs: Tensor  # [n, T] log π_θ of the response tokens (carries grad)
    old_logprobs: Tensor  # [n, T] log π_old, the policy that generated the data (no grad)
    advantages: Tensor  # [n, T] A_{i,t}
    response_mask: Tensor  # [n, T] float, 1 on tokens that carry loss
    rewards: Tensor  # [n] R_i
    correct: Tensor  # [n] 1/0/NaN
    group_index: Tensor  # [n] long
    ref_logprobs: Optional[Tensor] = None  # [n, T] log π_ref or None
    entropy: Optional[Tensor] = None  # [n, T] token entropy at the sampling temperature (carries grad) or None


@dataclass
class LossOutput:
    token_loss: Tensor  # [n, T] per-token loss ℓ_{i,t} (already negated: minimised); aggregated by the learner
    # [n, T] per-token diagnostics (e.g. clip indicators), reported as token means over the step
    token_metrics: dict[str, Tensor] = field(default_factory=dict)
