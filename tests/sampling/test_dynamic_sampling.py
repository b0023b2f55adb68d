"""DAPO dynamic sampling (refill, cap, empty) and DOT's predictive variant (algorithms.md §3.2, §12.5)."""

import math

import pytest

from rlreason.config.schema import DynamicSamplingConfig
from rlreason.sampling.dynamic import DynamicSamplingExhausted, build_dynamic_sampling, predicted_factor


def run_pool(mode, rounds_of_groups):
    """Drive a pool like Trainer.collect does, feeding it the given rounds; returns (result, prompts asked)."""
    pool, asked, rounds = mode.pool(), [], iter(rounds_of_groups)
    while pool.wants_more():
        asked.append(pool.prompts_wanted())
        pool.add(next(rounds))
    return pool.result(), asked


def test_off_keeps_one_round_whole(groups_of):
    mode = build_dynamic_sampling(DynamicSamplingConfig(), 3)
    out, asked = run_pool(mode, [groups_of([[1, 1], [0, 1], [0, 0]])])
    assert asked == [3] and len(out) == 3 and out.stats["sampling/groups_filtered"] == 0


def test_dapo_refills_until_the_batch_is_full_then_keeps_exactly_b(groups_of):
    mode = build_dynamic_sampling(DynamicSamplingConfig(mode="dapo", oversample=1.5, max_rounds=5), 4)
    first = groups_of([[1, 1], [0, 1], [0, 0], [1, 0], [0, 0], [1, 1]], uids=range(6))
    second = groups_of([[0, 1], [1, 1], [1, 0], [0, 1], [0, 0], [1, 0]], uids=range(6, 12))
    out, asked = run_pool(mode, [first, second])
    assert asked == [6, 6]  # ceil(1.5 * 4) prompts per round
    assert out.uids == [1, 3, 6, 8]  # survivors in order, cut to exactly B groups
    assert out.stats == {"sampling/rounds": 2.0, "sampling/prompts_drawn": 12.0, "sampling/groups_kept": 4.0,
                         "sampling/groups_filtered": 6.0, "sampling/groups_surplus": 2.0,
                         "sampling/rollouts_per_prompt": 2.0}
    # every kept group has both verdicts, and rows stay grouped with renumbered ids
    assert out.rollout.group_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert out.rewards.correct.tolist() == [0, 1, 1, 0, 0, 1, 1, 0]


def test_dapo_cap_trains_on_what_survived_or_raises(groups_of):
    rounds = [groups_of([[1, 1], [0, 1]]), groups_of([[0, 0], [1, 1]])]
    mode = build_dynamic_sampling(DynamicSamplingConfig(mode="dapo", max_rounds=2), 2)
    out, asked = run_pool(mode, rounds)
    assert len(asked) == 2 and len(out) == 1 and out.stats["sampling/groups_kept"] == 1
    strict = build_dynamic_sampling(DynamicSamplingConfig(mode="dapo", max_rounds=2, on_exhausted="error"), 2)
    with pytest.raises(DynamicSamplingExhausted, match="max_rounds"):
        run_pool(strict, rounds)


def test_dapo_empty_survivors_skip_the_step_even_in_error_mode(groups_of):
    mode = build_dynamic_sampling(DynamicSamplingConfig(mode="dapo", max_rounds=2, on_exhausted="error"), 2)
    out, _ = run_pool(mode, [groups_of([[1, 1], [0, 0]]), groups_of([[0, 0], [1, 1]])])
    assert len(out) == 0 and len(out.rollout) == 0 and out.stats["sampling/groups_filtered"] == 4


def test_reward_metric_keeps_groups_whose_shaped_scores_differ(groups_of):
    # all correct, but a length term makes the scores differ: kept with metric=reward, dropped with correct
    g = groups_of([[1, 1], [1, 1]], scores=[[1.0, 0.7], [1.0, 1.0]])
    by_reward = build_dynamic_sampling(DynamicSamplingConfig(mode="dapo", metric="reward", max_rounds=1), 2)
    assert run_pool(by_reward, [g])[0].uids == [0]
    by_correct = build_dynamic_sampling(DynamicSamplingConfig(mode="dapo", max_rounds=1), 2)
    assert run_pool(by_correct, [g])[0].uids == []


def test_predicted_factor():
    assert predicted_factor([], 1.5, 1.2, 5.0) == 1.5
    assert predicted_factor([0.0, 0.0], 1.5, 1.2, 5.0) == 5.0
    assert predicted_factor([0.5, 0.5], 1.5, 1.2, 5.0) == pytest.approx(2.0)
    # mean 0.5, std (ddof 0) 0.1 -> 2 * 1.1 = 2.2
    assert predicted_factor([0.4, 0.6], 1.5, 1.2, 5.0) == pytest.approx(2.2)
    assert predicted_factor([1.0], 1.5, 1.2, 5.0) == 1.2  # clipped below


def test_predictive_one_round_sized_from_survival_rates_and_trains_all_survivors(groups_of):
    mode = build_dynamic_sampling(DynamicSamplingConfig(mode="predictive", window=2), 4)
    out, asked = run_pool(mode, [groups_of([[1, 0]] * 3 + [[1, 1]] * 3)])
    assert asked == [6] and len(out) == 3  # ceil(4 * 1.5); survivors not cut to B
    out, asked = run_pool(mode, [groups_of([[1, 0]] * 8)])
    assert asked == [8]  # rate 0.5 -> factor 2
    assert mode.rates == [0.5, 1.0]
    _, asked = run_pool(mode, [groups_of([[1, 0]] * 5)])
    assert asked == [math.ceil(4 * (1 / 0.75) * 1.25)]  # mean 0.75, std 0.25
    state = mode.state_dict()
    again = build_dynamic_sampling(DynamicSamplingConfig(mode="predictive", window=2), 4)
    again.load_state_dict(state)
    assert again.prompts(0, 0) == mode.prompts(0, 0)
