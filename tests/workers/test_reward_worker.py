"""Combining reward functions: weights, None, dict metrics, failures and the on_error policy."""

import math

import pytest
import torch

from rlreason.config.schema import RewardConfig, RewardFunctionConfig
from rlreason.types import ScoreRequest
from rlreason.workers.reward import RewardWorker, combine, component_names


def test_component_names_are_short_and_unique():
    fns = [RewardFunctionConfig("math_verify"), RewardFunctionConfig("pkg.mod:length"),
           RewardFunctionConfig("dir/file.py:length")]
    assert component_names(fns) == ["math_verify", "length", "length#2"]


def test_combine_weights_none_and_metrics():
    values = [
        [{"score": 1.0, "correct": 1.0, "parsed": 1.0}, {"score": 0.0, "correct": 0.0, "parsed": 0.0}, None],
        [0.5, -0.5, None],
    ]
    res = combine(["acc", "len"], [1.0, 2.0], values)
    assert res.scores[:2].tolist() == [2.0, -1.0]
    assert math.isnan(res.scores[2])  # no function applied
    assert res.correct[:2].tolist() == [1.0, 0.0] and math.isnan(res.correct[2])
    assert res.components["acc/parsed"][:2].tolist() == [1.0, 0.0]
    assert res.components["len"][:2].tolist() == [0.5, -0.5]


def write_reward(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text(
        "def reward(*, response, ground_truth, difficulty, bonus=0.0, **kw):\n"
        "    if response == 'boom':\n"
        "        raise RuntimeError('bad sample')\n"
        "    return {'score': float(response == ground_truth) + bonus, 'difficulty': float(difficulty)}\n")
    return f"{path}:reward"


def request(responses):
    n = len(responses)
    return ScoreRequest(prompts=["p"] * n, responses=responses,
                        rows=[{"prompt": "p", "answer": "42", "difficulty": 3}] * n,
                        sample_ids=list(range(100, 100 + n)), response_lengths=[5] * n, truncated=[False] * n)


@pytest.mark.parametrize("on_error,failed_score", [("zero", 0.0), ("skip", float("nan"))])
def test_user_file_reward_gets_columns_and_kwargs_and_failures_are_reported(tmp_path, on_error, failed_score):
    fn = write_reward(tmp_path)
    cfg = RewardConfig(functions=[RewardFunctionConfig(fn, 1.0, {"bonus": 0.5})], processes=1, timeout_s=20,
                       on_error=on_error)
    worker = RewardWorker(cfg, answer_key="answer")
    try:
        res = worker.score(request(["42", "41", "boom"]))
    finally:
        worker.close()
    assert res.scores[:2].tolist() == [1.5, 0.5]
    assert res.components["reward/difficulty"][:2].tolist() == [3.0, 3.0]
    got = res.scores[2].item()
    assert (math.isnan(got) and math.isnan(failed_score)) or got == failed_score
    assert len(res.errors) == 1 and "sample 102" in res.errors[0] and "RuntimeError" in res.errors[0]
    assert torch.isnan(res.correct).all()
