"""Reward functions (installed as ``rlreason.rewards``).

A reward is a plain function called with keyword arguments ``prompt``, ``response``,
``ground_truth`` and every other column of the dataset row, plus the recipe's ``kwargs``.
It returns a float, a dict with ``score`` (and extra metrics to log), or ``None`` for
"not applicable". Batched (per group / per batch) and model rewards are marked with
``batched`` / ``model_reward``; ``rewards/base.py`` describes the kinds. Register a built-in with
``@REWARDS.register("name", kind=...)``; user functions are named in a recipe as
``module:function``, ``path/to/file.py:function`` or an ``http://`` endpoint.
"""

if __name__ == "rewards":  # imported by its bare name from the repository root: not ours to answer
    from rlreason.toplevel_guard import step_aside

    step_aside(__name__, __file__)
else:
    from rlreason.rewards.base import RewardRegistry, batched, model_reward  # noqa: F401

    REWARDS = RewardRegistry("reward", "fn(*, prompt, response, ground_truth, **columns) -> float | dict | None")

    # Built-ins register themselves on import.
    from rlreason.rewards import format_tags, length, likelihood, math_verify, redundancy, repetition  # noqa: E402,F401
