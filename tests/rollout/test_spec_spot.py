"""Spot-mode drafter training (TLT) inside a rollout worker, in process: it trains in the background
after the rollouts, yields the worker when generation or the weight sync needs it, and hands over
what it trained as the published version."""

import time

import pytest
import torch

from rlreason.config import load_config
from rlreason.types import GenerationRequest, SamplingParams, SequenceBatch
from rlreason.workers.rollout import RolloutWorker

SP = SamplingParams(temperature=1.0, max_new_tokens=12)


def worker(model_dir, steps):
    cfg = load_config(["recipe=quickstart", f"model.path={model_dir}", "rollout.spec.enable=true",
                       "rollout.spec.train.mode=spot", f"rollout.spec.train.steps={steps}",
                       "rollout.spec.train.batch_size=8", "rollout.spec.k=2"])
    w = RolloutWorker(cfg, model_dir, threads=1)
    w.init_drafter(None)
    return w


def rollouts(w, seed=0):
    tok = w.engine.tokenizer
    ids = [tok.encode(f"Q: {i}+{i + 2} =\nA:", add_special_tokens=False) for i in range(4)]
    return SequenceBatch.from_rollout(w.generate(GenerationRequest(ids, [2] * 4, 0, SP, seed)))


def wait_for(predicate, timeout=120.0):
    start = time.time()
    while not predicate():
        assert time.time() - start < timeout, "spot training made no progress"
        time.sleep(0.05)


def test_spot_training_yields_to_the_weight_sync_and_publishes_what_it_trained(tiny_model_dir):
    w = worker(tiny_model_dir, steps=0)  # 0: train until preempted
    before = {k: v.clone() for k, v in w._trainer().drafter.state_dict().items()}
    w.spot_start(rollouts(w), step=1)
    wait_for(lambda: w._spot["steps"] >= 2)
    policy = {k: v.clone() for k, v in w.engine.model.state_dict().items()}
    w.load_weights(policy, version=1)  # the sync preempts the background thread
    assert w._spot_thread is None
    done = w._spot["steps"]
    time.sleep(0.2)
    assert w._spot["steps"] == done  # stopped, not still training
    update = w.spot_collect(version=1)
    assert update.weights.version == 1 and update.metrics["drafter/spot_steps"] == done >= 2
    assert "drafter/loss" in update.metrics
    changed = [k for k, v in update.weights.state.items() if k in before and not torch.equal(v, before[k])]
    assert changed, "the published drafter is the one spot training moved"
    assert all(torch.equal(v, policy[k]) for k, v in w.engine.model.state_dict().items())  # no gradient to the policy
    w.load_drafter(update.weights)
    assert len(rollouts(w, seed=1)) == 8  # the worker generates with it afterwards


def test_spot_window_is_capped_by_steps_and_generate_preempts(tiny_model_dir):
    w = worker(tiny_model_dir, steps=3)
    w.spot_start(rollouts(w), step=1)
    wait_for(lambda: not w._spot_thread.is_alive())
    assert w.spot_collect(version=1).metrics["drafter/spot_steps"] == 3
    w.spot_start(rollouts(w, seed=2), step=2)
    rollouts(w, seed=3)  # generation preempts the window
    assert w._spot_thread is None
    assert w.spot_collect(version=2).metrics["drafter/spot_steps"] <= 3


def test_an_error_in_the_background_thread_is_raised_at_collection(tiny_model_dir, monkeypatch):
    def broken_train(steps=None):
        raise ValueError("drafter blew up")

    w = worker(tiny_model_dir, steps=2)
    monkeypatch.setattr(w._trainer(), "train", broken_train)
    w.spot_start(rollouts(w), step=1)
    wait_for(lambda: not w._spot_thread.is_alive())
    with pytest.raises(RuntimeError, match="background thread") as info:
        w.spot_collect(version=1)
    assert isinstance(info.value.__cause__, ValueError)
