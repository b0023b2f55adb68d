"""Format (think/answer tags) and repetition rewards."""

import pytest

from rlreason.rewards import REWARDS

fmt = REWARDS.get("format")
rep = REWARDS.get("repetition")


@pytest.mark.parametrize("response,style,prefilled,expected", [
    ("<think>2+2=4</think> <answer>4</answer>", "think_answer", False, 1.0),
    ("<think>a\nb</think>\n<answer>4</answer>\n", "think_answer", False, 1.0),
    ("<think>2+2=4</think> the answer is 4", "think_answer", False, 0.0),     # no answer tags
    ("<think>x</think><answer>4</answer> and more", "think_answer", False, 0.0),  # text after the answer
    ("<think>x<think>y</think><answer>4</answer>", "think_answer", False, 0.0),  # two think tags
    ("2+2=4</think><answer>4</answer>", "think_answer", True, 1.0),           # prompt ended with <think>
    ("<think>2+2=4</think> anything", "think", False, 1.0),
    ("no tags at all", "think", False, 0.0),
])
def test_format(response, style, prefilled, expected):
    assert fmt(response=response, style=style, think_prefilled=prefilled) == expected


def test_repetition():
    assert rep(response="a b c d e f") == 0.0
    assert rep(response="a a a a a", ngram_size=2) == pytest.approx(-0.75)  # 1 distinct of 4 bigrams
    assert rep(response="x y", ngram_size=3) == 0.0
    looped = " ".join(["the cat sat"] * 20)
    assert rep(response=looped) < rep(response=looped[:40]) <= 0.0
    with pytest.raises(ValueError):
        rep(response="a b c", max_penalty=1.0)
