"""Format reward: does the response follow the reasoning template's tags?"""

from __future__ import annotations

import re

from rlreason.rewards import REWARDS

# TRL's think_format_reward: one <think>…</think> block at the start, anything after it.
_THINK = re.compile(r"^<think>(?!.*<think>)(.*?)</think>.*$", re.DOTALL)
# R1-style template: <think>…</think> then exactly one <answer>…</answer> and nothing after it.
_THINK_ANSWER = re.compile(r"^<think>(?!.*<think>).*?</think>\s*<answer>(?!.*<answer>).*?</answer>\s*$", re.DOTALL)
_STYLES = {"think": _THINK, "think_answer": _THINK_ANSWER}


@REWARDS.register("format")
def format_reward(*, response: str, style: str = "think_answer", think_prefilled: bool = False, **_) -> float:
    """1.0 if the response has the template's tags (<think>…</think><answer>…</answer>), else 0.0.

    ``style="think"`` checks only the think block (TRL's ``think_format_reward``);
    ``think_prefilled=true`` when the prompt already ends with ``<think>`` (R1 template), so the
    response starts inside the block.
    """
    if style not in _STYLES:
        raise ValueError(f"format: style={style!r}, use one of {', '.join(_STYLES)}")
    text = ("<think>" + response) if think_prefilled else response
    return 1.0 if _STYLES[style].match(text.strip()) else 0.0
