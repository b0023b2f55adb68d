"""Reward functions (installed as ``rlreason.rewards``).

A reward is a plain function called with keyword arguments ``prompt``, ``response``,
``ground_truth`` and every other column of the dataset row, plus the recipe's ``kwargs``.
It returns a float, a dict with ``score`` (and extra metrics to log), or ``None`` for
"not applicable". Register a built-in with ``@REWARDS.register("name")``; user functions are
named in a recipe as ``module:function`` or ``path/to/file.py:function``.
"""

from rlreason.registry import Registry

REWARDS = Registry("reward", "fn(*, prompt, response, ground_truth, **columns) -> float | dict | None")

from rlreason.rewards import math_verify  # noqa: E402,F401  (registers "math_verify")
