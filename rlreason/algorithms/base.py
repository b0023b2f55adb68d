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
    # [N, T] β·k1(lp_old, lp_ref) per token when the KL is in the reward (algorithm.kl_in_reward), else None;
    # sequence-level estimators subtract its row sum from R, token-level ones (REINFORCE++) each token
    kl_penalty: Optional[Tensor] = None


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
    global_tokens: float = 0.0  # Σ response_mask over the whole optimizer step (all ranks, all micro-batches)
    global_groups: float = 0.0  # B: prompts in the optimizer step, for losses normalised per prompt (DRPO)
    max_response_length: int = 0  # rollout.max_new_tokens: C of length rewards (0: use the width T)
    # sums over the whole optimizer step that the loss asked for with the ``step_sums`` trait
    # (computed by the learner in a no-grad pass before the backward one), e.g. DRPO's global KL
    step_sums: dict[str, float] = field(default_factory=dict)


@dataclass
class LossOutput:
    token_loss: Tensor  # [n, T] per-token loss ℓ_{i,t} (already negated: minimised); aggregated by the learner
    # [n, T] per-token diagnostics (e.g. clip indicators), reported as token means over the step
    token_metrics: dict[str, Tensor] = field(default_factory=dict)
