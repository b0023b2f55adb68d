"""Combining reward functions: weights, None, dict metrics, failures and the on_error policy."""

import math
import time

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


# ----------------------------------------------------------------------------- kinds, routing, verdicts

KINDS_FILE = '''
import asyncio, os, time
from rlreason.rewards import batched

def per_sample(*, response, data_source, **kw):
    return {"score": float(len(response)), "is_code": float(data_source == "code")}

@batched(per="group")
def group_size(*, response, correct, step, **kw):
    # lists for one prompt's group; scalars stay scalars; verdicts from math_verify (None where it did not apply)
    assert isinstance(step, int) and isinstance(response, list)
    return [{"score": float(len(response)), "verdict": -1.0 if c is None else c} for c in correct]

@batched(per="batch")
async def batch_size(*, response, **kw):
    await asyncio.sleep(0.01)
    return [float(len(response))] * len(response)

def not_batched_but_returns_list(**kw):
    return [1.0]

@batched(per="group")
def wrong_length(*, response, **kw):
    return [1.0]

def faulty(*, fault, response, **kw):
    if fault == "raise":
        raise ValueError("bad sample " + response)
    if fault == "hang":
        time.sleep(60)
    if fault == "crash":
        os._exit(3)
    return 1.0
'''


def kinds_request():
    rows = [{"answer": "4", "data_source": "math", "fault": "none"}] * 3 + \
           [{"answer": "4", "data_source": "code", "fault": "none"}] * 2
    responses = [r"\boxed{4}", r"\boxed{5}", "none", "print(4)", "print(5)"]
    return ScoreRequest(["p"] * 5, responses, rows, [10, 11, 12, 13, 14], [3] * 5, [False] * 5,
                        group_ids=[0, 0, 0, 1, 1], step=7)


def test_kinds_routing_and_verdicts(tmp_path):
    path = tmp_path / "kinds.py"
    path.write_text(KINDS_FILE)
    fns = [RewardFunctionConfig("math_verify", 1.0, when={"data_source": "math"}),
           RewardFunctionConfig(f"{path}:per_sample", 0.0, when={"data_source": ["code", "other"]}),
           RewardFunctionConfig(f"{path}:group_size", 0.0),
           RewardFunctionConfig(f"{path}:batch_size", 0.0, log_as="batch"),
           RewardFunctionConfig(f"{path}:not_batched_but_returns_list", 0.0),
           RewardFunctionConfig(f"{path}:wrong_length", 0.0)]
    worker = RewardWorker(RewardConfig(functions=fns, processes=2, timeout_s=20), answer_key="answer")
    try:
        res = worker.score(kinds_request())
    finally:
        worker.close()
    nan = float("nan")
    same = lambda t, want: all((math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(t.tolist(), want))  # noqa
    assert same(res.components["math_verify"], [1.0, 0.0, 0.0, nan, nan])  # routed to math rows only
    assert same(res.components["per_sample"], [nan, nan, nan, 8.0, 8.0])
    assert same(res.components["per_sample/is_code"], [nan, nan, nan, 1.0, 1.0])
    assert res.components["group_size"].tolist() == [3.0, 3.0, 3.0, 2.0, 2.0]  # one call per group
    assert res.components["group_size/verdict"].tolist() == [1.0, 0.0, 0.0, -1.0, -1.0]
    assert res.components["batch"].tolist() == [5.0] * 5  # one call for the whole batch
    assert same(res.correct, [1.0, 0.0, 0.0, nan, nan])
    assert len(res.errors) == 5 + 2  # one per sample, one per group
    assert "not_batched_but_returns_list on sample 10: returned a list" in " ".join(res.errors)
    assert "wrong_length on samples [10, 11, 12]: a group reward must return a list of 3" in " ".join(res.errors)


def test_reward_file_source_travels_without_the_file(tmp_path):
    """What RewardGroup does for a cluster: read the file on the driver, ship its text, run it remotely."""
    from rlreason.rewards.base import read_sources
    from rlreason.workers.reward import RewardContext

    path = tmp_path / "shipped.py"
    path.write_text("def shipped(*, response, **kw):\n    return float(len(response))\n")
    spec = f"{path}:shipped"
    sources = read_sources([spec, "math_verify", "pkg.mod:fn"])
    assert list(sources) == [str(path)]
    path.unlink()  # a worker node does not have the file
    worker = RewardWorker(RewardConfig(functions=[RewardFunctionConfig(spec)], processes=1), "answer",
                          RewardContext(sources=sources))
    try:
        res = worker.score(request(["abc", "de"]))
    finally:
        worker.close()
    assert res.scores.tolist() == [3.0, 2.0] and res.errors == []


# ----------------------------------------------------------------------------- failures: drop_group and fault injection


def fault_request(faults, group_size=2, step=0):
    n = len(faults)
    return ScoreRequest(["p"] * n, [f"r{i}" for i in range(n)], [{"answer": "1", "fault": f} for f in faults],
                        [step * 1000 + i for i in range(n)], [1] * n, [False] * n,
                        group_ids=[i // group_size for i in range(n)], step=step)


def test_fault_injection_every_step_finishes_with_every_sample_accounted_for(tmp_path):
    from rlreason import batches
    from rlreason.types import RolloutBatch

    path = tmp_path / "faults.py"
    path.write_text(KINDS_FILE)
    cfg = RewardConfig(functions=[RewardFunctionConfig(f"{path}:faulty")], processes=2, timeout_s=1.5,
                       on_error="drop_group")
    plans = [["none"] * 16,
             ["none"] * 6 + ["hang", "none", "raise", "none", "crash", "none", "hang", "none", "none", "hang"],
             ["raise"] * 4 + ["none"] * 12,
             ["crash", "hang", "none", "raise"] + ["none"] * 12]
    worker = RewardWorker(cfg, answer_key="answer")
    try:
        for step, faults in enumerate(plans):
            t0 = time.time()
            res = worker.score(fault_request(faults, step=step))
            took = time.time() - t0
            bad = [i for i, f in enumerate(faults) if f != "none"]
            assert len(res.scores) == 16 and len(res.errors) == len(bad), res.errors
            for i in bad:  # each failure names the function, the sample and what happened
                assert any(f"faulty on sample {step * 1000 + i}:" in e for e in res.errors)
            assert all("Traceback" in e and "ValueError: bad sample" in e for e in res.errors if "ValueError" in e)
            groups = {i // 2 for i in bad}
            assert res.drop.tolist() == [i // 2 in groups for i in range(16)]
            # hangs overlap: a step with 3 hanging calls costs about one timeout, not three
            assert took < 1.5 + 2.5, f"step {step} took {took:.1f}s"
            # the controller drops those groups before advantages, and counts them
            rollout = RolloutBatch(prompt_ids=torch.zeros(16, 1, dtype=torch.long),
                                   prompt_mask=torch.ones(16, 1, dtype=torch.long),
                                   response_ids=torch.zeros(16, 2, dtype=torch.long), response_mask=torch.ones(16, 2),
                                   rollout_logprobs=torch.zeros(16, 2), truncated=torch.zeros(16, dtype=torch.bool),
                                   group_index=torch.arange(16) // 2, response_text=[f"r{i}" for i in range(16)])
            kept_rollout, kept = batches.drop_groups(rollout, res)
            assert len(kept_rollout) == len(kept.scores) == 16 - 2 * len(groups)
            assert kept.dropped_groups == len(groups) and kept.dropped_samples + len(kept.scores) == 16
            assert not torch.isnan(kept.scores).any()
    finally:
        worker.close()


def test_model_reward_without_rollout_workers_is_a_reported_failure():
    worker = RewardWorker(RewardConfig(functions=[RewardFunctionConfig("likelihood")], processes=1), "answer")
    try:
        worker.set_policy([])  # what RewardGroup does after rollout actors change
        res = worker.score(request(["<answer>42</answer>", "x"]))
    finally:
        worker.close()
    assert res.scores.tolist() == [0.0, 0.0] and len(res.errors) == 1
    assert "likelihood on samples [100, 101]: ValueError: scorer=policy needs the rollout workers" in res.errors[0]


NON_FINITE_FILE = '''
from rlreason.rewards import batched

def per_sample(*, response, **kw):
    return {"nan": float("nan"), "inf": float("inf"), "ninf": {"score": float("-inf")}, "none": None}.get(response, 1.0)

@batched(per="group")
def per_group(*, response, **kw):
    return [float("nan") if r == "nan" else 0.5 for r in response]
'''


@pytest.mark.parametrize("fn,bad", [("per_sample", ["nan", "inf", "ninf"]), ("per_group", ["nan"])])
@pytest.mark.parametrize("on_error", ["zero", "skip"])
def test_a_nan_or_infinite_score_is_an_error_of_that_sample(tmp_path, fn, bad, on_error):
    path = tmp_path / "non_finite.py"
    path.write_text(NON_FINITE_FILE)
    cfg = RewardConfig(functions=[RewardFunctionConfig(f"{path}:{fn}")], processes=1, timeout_s=20, on_error=on_error)
    worker = RewardWorker(cfg, answer_key="answer")
    responses = ["ok", "nan", "inf", "ninf", "none"]
    req = request(responses)
    req.group_ids = [0] * len(responses)
    try:
        res = worker.score(req)
    finally:
        worker.close()
    assert len(res.errors) == len(bad)  # counted in reward/errors, each naming the function and the sample
    for error, response in zip(res.errors, bad):
        sample = 100 + responses.index(response)
        assert f"sample {sample}" in error and fn in error and "finite" in error
    for i, response in enumerate(responses):
        got = res.scores[i].item()
        if response in bad:
            assert (got == 0.0) if on_error == "zero" else math.isnan(got)
        else:
            assert math.isfinite(got) or response == "none"
