"""Length rewards (algorithms.md §12): the spec's vectors, ragged groups, and the registered wrappers."""

import math

import pytest
import torch

from rlreason.rewards import REWARDS
from rlreason.rewards.length import (cosine_length_reward, kimi_length_reward, lcpo_exact, lcpo_max,
                                     linear_length_penalty, overlong_penalty, remaining_budget_reward)

T = lambda *x: torch.tensor(x, dtype=torch.float64)  # noqa: E731


def test_dapo_overlong_vector():
    got = overlong_penalty(T(16384, 17408, 18432, 20480, 30000, 100), 20480, 4096)
    assert got.tolist() == pytest.approx([0.0, -0.25, -0.5, -1.0, -1.0, 0.0])
    assert overlong_penalty(T(18432), 20480, 4096, factor=0.5).item() == pytest.approx(-0.25)


def test_kimi_vector_and_equal_lengths_and_ragged_groups():
    assert kimi_length_reward(T(100, 200, 300), T(1, 0, 1), torch.zeros(3, dtype=torch.long)).tolist() == \
        pytest.approx([0.5, 0.0, -0.5])
    # two groups of different sizes, interleaved ids; equal lengths -> 0; NaN verdict counts as incorrect
    lengths = T(100, 50, 200, 50, 300, 10)
    correct = T(1, 1, 0, 0, math.nan, 1)
    groups = torch.tensor([7, 3, 7, 3, 7, 9])
    got = kimi_length_reward(lengths, correct, groups)
    assert got.tolist() == pytest.approx([0.5, 0.0, 0.0, 0.0, -0.5, 0.0])


def test_cosine_linear_budget_lcpo():
    c = cosine_length_reward(T(0, 500, 1000, 0, 500, 1000), T(1, 1, 1, 0, 0, 0), 1000)
    assert c.tolist() == pytest.approx([1.0, 0.75, 0.5, -1.0, -0.75, -0.5])
    assert linear_length_penalty(T(0, 50, 200), 100).tolist() == pytest.approx([0.0, -0.5, -1.0])
    # L-GRPO: only the all-correct group (0) gets 1 - L/L_max
    got = remaining_budget_reward(T(10, 30, 10, 30), T(1, 1, 1, 0), torch.tensor([0, 0, 1, 1]), 40)
    assert got.tolist() == pytest.approx([0.75, 0.25, 0.0, 0.0])
    assert lcpo_exact(T(1500), T(1000)).item() == pytest.approx(-0.15)
    assert lcpo_max(T(1500), T(1000)).item() == pytest.approx(0.35)
    assert lcpo_max(T(1500), T(1000), slope="code").item() == pytest.approx(0.425)


def test_registered_wrappers():
    overlong = REWARDS.get("overlong")
    assert overlong(response_length=90, max_response_length=100) == pytest.approx(-0.5)  # cache 20 tokens
    assert overlong(response_length=10, max_response_length=100) == 0.0
    linear = REWARDS.get("length_linear")
    assert linear(response_length=50, correct=1.0, max_response_length=100) == pytest.approx(-0.5)
    assert linear(response_length=50, correct=0.0, max_response_length=100) == 0.0  # gated on correctness
    assert linear(response_length=50, correct=0.0, max_response_length=100, gate="none") == pytest.approx(-0.5)
    assert REWARDS.get("length_cosine")(response_length=5, correct=None, max_response_length=10) is None
    kimi = REWARDS.get("length_kimi")
    assert kimi(response_length=[100, 200, 300], correct=[1.0, 0.0, None]) == pytest.approx([0.5, 0.0, None])
    assert kimi(response_length=[1, 2], correct=[1.0, 1.0], step=3, start_step=10) == [0.0, 0.0]
    budget = REWARDS.get("length_budget")
    assert budget(response_length=[10, 30], correct=[1.0, 1.0], max_response_length=40) == pytest.approx([0.75, 0.25])
    assert REWARDS.entry("length_kimi").traits["kind"] == "group"


def test_lcpo_reward_reads_a_fixed_or_per_row_target():
    lcpo = REWARDS.get("length_lcpo")
    assert lcpo(response_length=1500, target=1000) == pytest.approx(-0.15)
    assert lcpo(response_length=1500, target_length=1000) == pytest.approx(-0.15)  # the row's column
    assert lcpo(response_length=1500, budget=1000, target_key="budget", mode="max", correct=1.0) == pytest.approx(0.35)
    assert lcpo(response_length=1500, target=1000, mode="max", correct=0.0) == 0.0
    assert lcpo(response_length=1500, target=1000, mode="max", correct=None) is None
    with pytest.raises(ValueError, match="'target_length' column"):
        lcpo(response_length=10, prompt="Q")
