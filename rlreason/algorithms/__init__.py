"""The maths of rlreason: advantage estimators, policy losses, KL estimators, loss aggregation.

Imports only torch. Registries hold one fixed signature each (see ``base``); a new method is one
file that registers itself, imported below.
"""

from rlreason.registry import Registry

ADVANTAGES = Registry("advantage estimator", "fn(inp: AdvantageInput, **hparams) -> Tensor [N, T]")
POLICY_LOSSES = Registry("policy loss", "fn(inp: LossInput, **hparams) -> LossOutput")

from rlreason.algorithms import (  # noqa: E402,F401  (register entries)
    cispo, dapo, dr_grpo, drpo, gppo, grpo, grpo_passk, gspo, ppo_clip, reinforce_pp, rloo, sft)
