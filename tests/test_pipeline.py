"""Pipelined mode's contract outside a run: what it refuses, with the reason, and the truncated
importance weights it corrects the rollout policy's gap with. (Runs: tests/test_resume.py resumes a
pipelined run exactly; the README's pipelined quickstart numbers come from scripts/bench_step.py.)"""

import math

import pytest
import torch

from rlreason.algorithms.rollout_correction import rollout_is_weights
from rlreason.config import ConfigError, load_config
from rlreason.config.validate import TRAINER_MODES, validate


def check(*overrides):
    validate(load_config(["recipe=quickstart", *overrides]))


def test_every_mode_has_a_controller():
    from rlreason.modes import MODES

    assert tuple(MODES) == TRAINER_MODES


@pytest.mark.parametrize("overrides,match", [
    (["trainer.mode=async"], "trainer.mode='async': use one of sync, pipelined"),
    (["trainer.mode=pipelined", "trainer.max_staleness=0"], "max_staleness=0.*>= 1"),
    (["trainer.mode=pipelined", "rollout.spec.enable=true"], "rollout.spec.enable=true.*trainer.mode=sync"),
    (["trainer.mode=pipelined", "sampling.sampler=gdro"], "sampling.sampler=gdro.*learns from each update"),
    (["algorithm.rollout_is_cap=-1"], "rollout_is_cap must be >= 0"),
])
def test_what_pipelined_mode_refuses_is_named(overrides, match):
    with pytest.raises(ConfigError, match=match):
        check(*overrides)


def test_pipelined_mode_accepts_dynamic_sampling_drpo_and_a_deeper_pipeline():
    check("trainer.mode=pipelined", "trainer.max_staleness=2", "algorithm.loss=drpo", "sampling.dynamic.mode=dapo")


def test_rollout_is_weights_are_truncated_ratios_without_gradient():
    old = torch.tensor([[0.0, -1.0, -3.0]], requires_grad=True)
    rollout = torch.tensor([[0.0, -2.0, -1.0]])
    w, cut = rollout_is_weights(old, rollout, cap=2.0)
    assert w.tolist()[0] == pytest.approx([1.0, 2.0, math.exp(-2.0)])  # e^1 > 2 is cut to 2
    assert cut.tolist() == [[0.0, 1.0, 0.0]] and not w.requires_grad


def test_the_cap_is_on_in_pipelined_mode_only_unless_set():
    from rlreason.workers.learner import rollout_is_cap

    assert rollout_is_cap(load_config(["recipe=quickstart"])) == 0.0
    assert rollout_is_cap(load_config(["recipe=quickstart", "trainer.mode=pipelined"])) == 2.0
    assert rollout_is_cap(load_config(["recipe=quickstart", "trainer.mode=pipelined", "algorithm.rollout_is_cap=0"])) == 0.0
    assert rollout_is_cap(load_config(["recipe=quickstart", "algorithm.rollout_is_cap=3"])) == 3.0
