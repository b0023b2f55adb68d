"""The built-in math_verify reward: what math-verify 0.9.0 actually verifies, and our wrapper's contract."""

from __future__ import annotations

import threading

import pytest

import rlreason.rewards.math_verify as mv_module
from math_verify.errors import TimeoutException
from rlreason.rewards import REWARDS
from rlreason.rewards.math_verify import RewardTimeout, math_verify

# (response, ground truth, verified?) — asserted as math-verify really behaves; surprises are commented.
CASES = [
    # fractions vs decimals (verify rounds floats to 6 digits)
    (r"\boxed{\frac{1}{2}}", "0.5", True),
    (r"\boxed{0.5}", r"\frac{1}{2}", True),
    (r"\boxed{0.50}", "1/2", True),
    (r"\boxed{\dfrac{1}{2}}", "0.5", True),
    (r"\boxed{\frac13}", "1/3", True),  # needs malformed_operators/nits normalisation (TRL turns them off)
    (r"\boxed{0.333333}", "1/3", True),
    (r"\boxed{0.3333}", "1/3", False),  # only 4 digits: not equal at 6-digit rounding
    (r"\boxed{1.5}", "3/2", True),
    (r"\boxed{2}", "2.0", True),
    # negative numbers
    (r"\boxed{-3}", "-3", True),
    (r"\boxed{3}", "-3", False),
    (r"\boxed{-\frac{1}{2}}", "-0.5", True),
    # thousands separators
    (r"\boxed{1,000}", "1000", True),
    (r"\boxed{1{,}000}", "1000", True),
    (r"\boxed{1000}", "1,000", True),
    (r"\boxed{1\,000}", "1000", False),  # surprise: a thin space reads as the product 1*000 = 0
    # sets and intervals (order of set elements does not matter; bracket type does)
    (r"\boxed{\{1,2\}}", r"\{1,2\}", True),
    (r"\boxed{\{2,1\}}", r"\{1,2\}", True),
    (r"\boxed{1,2}", r"\{1,2\}", True),
    (r"\boxed{\{1,3\}}", r"\{1,2\}", False),
    (r"\boxed{[1,2)}", "[1,2)", True),
    (r"\boxed{[1,2]}", "[1,2)", False),
    (r"\boxed{(-\infty, 3]}", r"(-\infty,3]", True),
    # units, degrees, currency are dropped by the units normalisation
    (r"\boxed{5\text{ cm}}", "5", True),
    (r"\boxed{5\,\mathrm{cm}}", "5", True),
    (r"\boxed{5 \text{ apples}}", "5", True),
    (r"\boxed{5^{\circ}}", "5", True),
    (r"\boxed{\$5}", "5", True),
    # percent: a gold "10\%" is 10, but a boxed "10\%" in a response is never parsed (raw text only)
    (r"\boxed{10}", r"10\%", True),
    (r"\boxed{10\%}", "10", False),
    # symbolic equivalence, equations, multiple choice
    (r"\boxed{\sqrt{12}}", r"2\sqrt{3}", True),
    (r"\boxed{\frac{\pi}{2}}", r"\pi/2", True),
    (r"\boxed{x^2+2x+1}", "(x+1)^2", True),
    (r"\boxed{x=3}", "3", True),
    (r"\boxed{3}", "x=3", True),
    (r"\boxed{\text{(A)}}", "A", True),
    (r"\boxed{B}", "A", False),
    # text around the box, environments around the box, gold given in LaTeX environments
    (r"so the answer is \boxed{17}. Done.", "17", True),
    (r"$\boxed{17}$", "17", True),
    (r"\[\boxed{17}\]", "17", True),
    (r"\boxed{7}", r"\boxed{7}", True),
    (r"\boxed{7}", "$7$", True),
    # no anchor: the prediction config needs \boxed{} or "final answer is $..$"
    ("The answer is 17", "17", False),
    ("$17$", "17", False),
    ("The final answer is $17$", "17", True),
    (r"\boxed{17", "17", False),  # unbalanced brace
    (r"\boxed{}", "17", False),
    ("", "17", False),
    # known gap: scientific notation reads as 1*e*3
    (r"\boxed{1e3}", "1000", False),
]


@pytest.mark.parametrize("response,gold,expected", CASES)
def test_tricky_pairs(response, gold, expected):
    out = math_verify(response=response, ground_truth=gold)
    assert out["correct"] == float(expected), out
    assert out["score"] == float(expected)


def test_registered_as_verifier_with_summary():
    entry = REWARDS.entry("math_verify")
    assert entry.fn is math_verify and entry.traits == {"verifier": True}
    assert entry.summary and "\n" not in entry.summary


def test_two_boxes_close_together_form_a_set_far_apart_the_last_wins():
    # latex2sympy2's boxed extraction joins boxes < 10 chars apart (or < 70 with and/or/,/;) into a set.
    close = r"\boxed{16} or \boxed{17}"
    assert math_verify(response=close, ground_truth="17")["correct"] == 0.0
    assert math_verify(response=close, ground_truth=r"\{16,17\}")["correct"] == 1.0
    far = r"\boxed{16} Hmm that cannot be right. Let me recheck. \boxed{17}"  # no separator word
    assert math_verify(response=far, ground_truth="17")["correct"] == 1.0
    assert math_verify(response=far, ground_truth="16")["correct"] == 0.0


def test_no_box_and_wrong_answer_give_incorrect_score():
    for response in ["I think it is 17.", r"\boxed{18}"]:
        out = math_verify(response=response, ground_truth="17", correct_score=1.0, incorrect_score=-1.0)
        assert out["correct"] == 0.0 and out["score"] == -1.0
    assert math_verify(response=r"\boxed{17}", ground_truth="17", incorrect_score=-1.0)["score"] == 1.0


@pytest.mark.parametrize("gold", ["", "   ", r"\frac{", None])
def test_unparsable_gold_is_not_applicable(gold):
    # math-verify keeps "\frac{" only as raw text; we treat that as unparsable rather than compare strings
    assert math_verify(response=r"\boxed{17}", ground_truth=gold) is None


def test_non_string_gold():
    assert math_verify(response=r"\boxed{17}", ground_truth=17)["correct"] == 1.0
    assert math_verify(response=r"\boxed{\frac{1}{2}}", ground_truth=0.5)["correct"] == 1.0


def test_gsm8k_gold_counts_only_the_number_after_the_marker():
    # The worked solution has other numbers, dollar signs (LaTeX delimiters to math-verify) and a
    # thousands comma; only "#### 1,200" is the answer.
    gold = "He saves $<<5*200=1000>>1,000 and then 200 more: 1000 + 200 = <<1000+200=1200>>1200.\n#### 1,200"
    assert math_verify(response="\\boxed{1200}", ground_truth=gold)["correct"] == 1.0
    for wrong in ("1000", "200", "5"):
        assert math_verify(response=f"\\boxed{{{wrong}}}", ground_truth=gold)["correct"] == 0.0
    assert math_verify(response="\\boxed{-3}", ground_truth="It drops by 3.\n#### -3")["correct"] == 1.0
    assert mv_module.gold_answer(gold) == "1200" and mv_module.gold_answer(" 7 ") == "7"


def test_answer_pattern_uses_last_match_instead_of_box():
    pat = r"Answer:\s*(.+)"
    resp = "Answer: 16\nno wait\nAnswer: 17."
    assert math_verify(response=resp, ground_truth="17", answer_pattern=pat)["correct"] == 1.0
    assert math_verify(response=resp, ground_truth="16", answer_pattern=pat)["correct"] == 0.0
    assert math_verify(response="Answer: $\\frac{1}{2}$", ground_truth="0.5", answer_pattern=pat)["correct"] == 1.0
    assert math_verify(response=r"Answer: \frac{1}{2}", ground_truth="0.5", answer_pattern=pat)["correct"] == 1.0
    # the box is ignored when a pattern is given
    out = math_verify(response=r"\boxed{17}", ground_truth="17", answer_pattern=pat)
    assert out == {"score": 0.0, "correct": 0.0, "parsed": 0.0}
    # without the pattern, "Answer: 17" has no LaTeX environment and is not extracted
    assert math_verify(response="Answer: 17", ground_truth="17")["correct"] == 0.0


def test_format_reward_for_any_parsed_answer():
    kw = dict(ground_truth="17", format_reward=0.1)
    assert math_verify(response=r"\boxed{17}", **kw) == {"score": 1.1, "correct": 1.0, "parsed": 1.0}
    assert math_verify(response=r"\boxed{18}", **kw) == {"score": 0.1, "correct": 0.0, "parsed": 1.0}
    assert math_verify(response="17", **kw) == {"score": 0.0, "correct": 0.0, "parsed": 0.0}
    assert math_verify(response="Answer: 3", answer_pattern=r"Answer:\s*(.+)", **kw)["score"] == 0.1


def test_tail_chars_bounds_the_search():
    response = r"\boxed{17}" + " filler" * 1000
    assert math_verify(response=response, ground_truth="17", tail_chars=None)["correct"] == 1.0
    assert math_verify(response=response, ground_truth="17", tail_chars=100)["correct"] == 0.0
    assert math_verify(response=response[-100:] + r" \boxed{17}", ground_truth="17", tail_chars=100)["correct"] == 1.0


def test_timeout_is_raised_as_reward_timeout(monkeypatch):
    def timing_out(*args, **kwargs):
        raise TimeoutException("Operation timed out!")

    monkeypatch.setattr(mv_module, "verify", timing_out)
    with pytest.raises(RewardTimeout):
        math_verify(response=r"\boxed{17}", ground_truth="17")
    monkeypatch.setattr(mv_module, "parse", timing_out)
    mv_module._parse_plain.cache_clear()
    with pytest.raises(RewardTimeout):
        math_verify(response=r"\boxed{17}", ground_truth="17")
    assert issubclass(RewardTimeout, Exception)


def test_timeout_passed_only_in_main_thread(monkeypatch):
    seen = []
    real_parse = mv_module.parse

    def recording_parse(*args, parsing_timeout=None, **kwargs):
        seen.append(parsing_timeout)
        return real_parse(*args, parsing_timeout=parsing_timeout, **kwargs)

    monkeypatch.setattr(mv_module, "parse", recording_parse)
    assert math_verify(response=r"\boxed{4}", ground_truth="4.0", timeout_s=2.5)["correct"] == 1.0
    assert seen and all(t == 3 for t in seen)  # signal.alarm takes whole seconds: rounded up
    seen.clear()
    result = []
    thread = threading.Thread(target=lambda: result.append(math_verify(response=r"\boxed{5}", ground_truth="5.0")))
    thread.start()
    thread.join()
    assert result[0]["correct"] == 1.0  # no "signal only works in main thread" error
    assert seen and all(t is None for t in seen)
