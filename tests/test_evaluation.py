"""Evaluation maths against hand computations: unbiased pass@k, maj@k, mean@k, per data source."""

import math

import pytest

from rlreason.evaluation import (extract_answer, format_table, ks_for, majority_correct, pass_at_k, prompt_metrics,
                                 summarize)


def test_pass_at_k_matches_the_binomial_formula():
    # n=5 samples, c=2 correct: pass@1 = 2/5; pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10; pass@3 = 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)
    assert pass_at_k(5, 2, 4) == 1.0  # fewer than 4 wrong samples: any 4 contain a right one
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 4, 1) == 1.0
    for n, c, k in [(10, 3, 4), (16, 1, 8), (7, 6, 2)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))


def test_ks_are_powers_of_two_and_k():
    assert ks_for(1) == [1] and ks_for(4) == [1, 2, 4] and ks_for(6) == [1, 2, 4, 6]


def test_answers_and_majority_vote():
    assert extract_answer(" 3+4=7, 7+5=12 \\boxed{12}") == "12"
    assert extract_answer("\\boxed{\\frac{1}{2}} so") == "\\frac{1}{2}"
    assert extract_answer("the answer is 41, no 42") == "42"
    assert extract_answer("no idea") is None
    # answers 12, 13, 12, None: 12 wins; its first sample is correct
    assert majority_correct(["12", "13", "12", None], [1.0, 0.0, 1.0, 0.0]) == 1.0
    # a tie between 13 and 12 goes to the answer seen first (13, wrong)
    assert majority_correct(["13", "12", None, None], [0.0, 1.0, 0.0, 0.0]) == 0.0
    assert majority_correct([None, None], [0.0, 0.0]) == 0.0


def test_summary_by_hand_with_two_data_sources():
    # prompt A (gsm8k): 4 samples, 1 correct, answers 5,5,5,7 (7 is right) -> maj wrong
    a = prompt_metrics([0, 0, 0, 1], [0.0, 0.0, 0.0, 1.0], [10, 12, 14, 16], ["5", "5", "5", "7"])
    # prompt B (gsm8k): 4 correct
    b = prompt_metrics([1, 1, 1, 1], [1.0] * 4, [4, 4, 4, 4], ["3"] * 4)
    # prompt C (math): 2 correct of 4, majority right
    c = prompt_metrics([1, 1, 0, 0], [1.0, 1.0, 0.0, 0.0], [8, 8, 8, 8], ["9", "9", "1", "2"])
    assert a["pass@1"] == 0.25 and a["pass@2"] == pytest.approx(0.5) and a["pass@4"] == 1.0
    assert a["maj@4"] == 0.0 and a["mean@4"] == 0.25 and a["length"] == 13.0
    assert c["pass@2"] == pytest.approx(1 - 1 / 6)
    out = summarize([a, b, c], ["gsm8k", "gsm8k", "math"])
    assert out["pass@1"] == pytest.approx((0.25 + 1 + 0.5) / 3)
    assert out["pass@2"] == pytest.approx((0.5 + 1 + 5 / 6) / 3)
    assert out["maj@4"] == pytest.approx(2 / 3)
    assert out["prompts"] == 3
    assert out["gsm8k/pass@1"] == pytest.approx(0.625) and out["gsm8k/prompts"] == 2
    assert out["math/maj@4"] == 1.0 and out["math/length"] == 8.0
    table = format_table(out, 4)
    assert "| gsm8k | 2 | 0.6250 |" in table and table.count("\n") == 4


def test_eval_command_needs_a_checkpoint(capsys):
    from rlreason.cli import main

    assert main(["eval", "recipe=quickstart"]) == 2
    assert "checkpoint=DIR" in capsys.readouterr().err
