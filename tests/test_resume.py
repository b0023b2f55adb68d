"""Exact resume through the real CLI: 4 steps straight, against 2 steps + kill -9 of the training
process + trainer.resume=auto. metrics.jsonl must match row by row, except the wall-clock fields
(rlreason.checkpoint.WALL_CLOCK_KEYS: time/*, rollout/tokens_per_s). The run updates with a length
reward (so every step moves the weights), two optimizer steps per RL step (the driver's shuffling
generator), a KL term and an evaluation every 2 steps. `rlreason eval` and `rlreason plot` then run
on the checkpoint and the two run dirs."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rlreason.checkpoint import is_wall_clock
from shared_builders import session_processes

pytestmark = pytest.mark.slow

REWARD = '''def short(*, response, **columns):
    """Shorter is better: gives every group a spread of rewards, so every step updates the weights."""
    return -len(response) / 16.0
'''


def args(tmp_path, run_dir, *extra):
    return ["recipe=quickstart", "model.builder_kwargs.hidden_size=32", "model.builder_kwargs.num_layers=1",
            "model.builder_kwargs.num_heads=2", "model.builder_kwargs.intermediate_size=64",
            "data.generator_kwargs.num_train=64", "data.generator_kwargs.num_val=8", "data.prompts_per_step=4",
            "rollout.n=4", "rollout.max_new_tokens=12", "trainer.sft.steps=2", "trainer.total_steps=4",
            "trainer.save_every=2", "trainer.eval_every=2", "eval.max_prompts=4", "eval.k=2",
            f"reward.functions=[{{name: math_verify}}, {{name: '{tmp_path / 'short.py'}:short', weight: 0.5}}]",
            "learner.lr=1e-2", "learner.updates_per_step=2", "algorithm.kl_coef=0.01", "trainer.progress=false",
            f"trainer.output_dir={run_dir}", *extra]


def rlreason_cmd(*a):
    return [sys.executable, "-m", "rlreason", *a]


ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(straight run dir, killed-and-resumed run dir, resume log)."""
    return straight_and_resumed(tmp_path_factory.mktemp("resume"))


def straight_and_resumed(tmp, *extra):
    (tmp / "short.py").write_text(REWARD)
    straight, crashed = tmp / "straight", tmp / "crashed"
    out = subprocess.run(rlreason_cmd("train", *args(tmp, straight, *extra)), capture_output=True, text=True, env=ENV,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]

    # the same run, killed with SIGKILL as soon as its step-2 checkpoint is complete
    proc = subprocess.Popen(rlreason_cmd("train", *args(tmp, crashed, *extra)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
    latest = crashed / "checkpoints" / "latest"
    deadline = time.time() + 600
    try:
        while not (latest.exists() and latest.read_text().strip() == "step_2"):
            assert proc.poll() is None, "the run ended before its step-2 checkpoint"
            assert time.time() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # the crash: the driver dies mid-step, no cleanup runs
        proc.wait()
    finally:
        time.sleep(2)
        for pid in session_processes(proc.pid):  # Ray processes the dead driver left behind (ours only)
            os.kill(pid, signal.SIGKILL)
    assert len(rows(crashed)) < 4 and latest.read_text().strip() == "step_2"

    resumed = subprocess.run(rlreason_cmd("train", *args(tmp, crashed, *extra, "trainer.resume=auto")), capture_output=True,
                             text=True, env=ENV, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return straight, crashed, resumed.stdout + resumed.stderr


def test_killed_and_resumed_run_matches_the_straight_run_row_by_row(runs):
    same_rows(*runs)


def test_pipelined_run_resumes_exactly(tmp_path_factory):
    """trainer.mode=pipelined: the pipeline drains before each checkpoint, so kill -9 and resume give the
    straight run's rows; steps 2 and 4 were generated one update behind the learner (rollout/staleness 1)."""
    straight, crashed, log = straight_and_resumed(tmp_path_factory.mktemp("pipelined"), "trainer.mode=pipelined")
    same_rows(straight, crashed, log)
    assert [r["rollout/staleness"] for r in rows(straight)] == [0.0, 1.0, 0.0, 1.0]
    assert all(r["rollout_is/weight"] > 0 for r in rows(straight))


def same_rows(straight, crashed, log):
    assert "resumed from" in log and "step_2" in log
    a, b = rows(straight), rows(crashed)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        ka = {k: v for k, v in ra.items() if not is_wall_clock(k)}
        kb = {k: v for k, v in rb.items() if not is_wall_clock(k)}
        assert ka == kb, {k: (ka.get(k), kb.get(k)) for k in set(ka) | set(kb) if ka.get(k) != kb.get(k)}
    assert a[-1]["grad_norm"] > 0 and a[1]["eval/pass@1"] is not None and "eval/arithmetic/pass@2" in a[3]
    assert a[2]["loss"] != a[3]["loss"]  # the weights moved: equal rows are not trivially equal
    # both runs end with the same complete checkpoints
    assert sorted(os.listdir(crashed / "checkpoints")) == ["latest", "step_2", "step_4"]


def test_plot_command_overlays_both_runs(runs, tmp_path):
    straight, crashed, _ = runs
    png = tmp_path / "runs.png"
    out = subprocess.run(rlreason_cmd("plot", str(straight), str(crashed), "-o", str(png)), capture_output=True,
                         text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert png.stat().st_size > 50_000
