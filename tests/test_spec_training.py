"""Speculative decoding inside training, through the real CLI on a tiny quickstart: the run works with
rollout.spec.enable=true and logs the SD and drafter metrics; the drafter trains after every step and
is published with the policy's version; a resume restores the drafter trainer (its update count and
buffer); and greedy evaluation of the final policy is identical with SD on (in the run) and off."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
DRAFTER_STEPS = 3
WARMUP_STEPS = 2  # drafter steps on the SFT demonstrations before step 1


def args(run_dir, *extra):
    return ["recipe=quickstart", "model.builder_kwargs.hidden_size=32", "model.builder_kwargs.num_layers=1",
            "model.builder_kwargs.num_heads=2", "model.builder_kwargs.intermediate_size=64",
            "data.generator_kwargs.num_train=64", "data.generator_kwargs.num_val=8", "data.prompts_per_step=4",
            "rollout.n=4", "rollout.max_new_tokens=16", "trainer.sft.steps=20", "trainer.sft.batch_size=16",
            "trainer.eval_every=1", "eval.max_prompts=4", "eval.k=1", "eval.temperature=0", "learner.lr=1e-2",
            "trainer.progress=false", f"trainer.output_dir={run_dir}", *extra]


def spec(*extra):
    return ["rollout.spec.enable=true", "rollout.spec.k=auto", f"rollout.spec.train.steps={DRAFTER_STEPS}",
            "rollout.spec.train.batch_size=8", f"rollout.spec.train.warmup_steps={WARMUP_STEPS}", *extra]


def run(*a):
    out = subprocess.run([sys.executable, "-m", "rlreason", *a], capture_output=True, text=True, env=ENV, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout + out.stderr


def rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def spec_run(tmp_path_factory):
    """A 2-step SD run saved at its end, then resumed to 3 steps in the same run dir."""
    run_dir = tmp_path_factory.mktemp("spec") / "run"
    run("train", *args(run_dir, "trainer.total_steps=2", "trainer.save_final=true", *spec()))
    log = run("train", *args(run_dir, "trainer.total_steps=3", "trainer.save_final=true", "trainer.resume=auto",
                             *spec()))
    return run_dir, log


def test_run_logs_speculative_and_drafter_metrics(spec_run):
    run_dir, _ = spec_run
    r = rows(run_dir)
    assert [x["step"] for x in r] == [1, 2, 3]
    for x in r:
        assert x["spec/iters"] > 0 and 0 <= x["spec/sd_frac"] <= 1 and x["rollout/tokens_per_s"] > 0
        assert x["drafter/version"] == x["step"] and x["time/drafter"] > 0
        assert x["drafter/loss"] > 0 and 0 <= x["drafter/accept_before"] <= 1
        assert 0 < x["rollout/batch_size/first"] <= 16 and x["rollout/iters"] >= 1
        assert "rollout/logprob_mismatch" in x and x["correct/mean"] is not None
        assert abs(sum(v for k, v in x.items() if k.startswith("spec/k_frac/")) - 1) < 1e-9
    drafted = [x for x in r if "spec/accept_len" in x]  # the selector drafted in some step
    assert drafted and all(1 <= x["spec/accept_len"] <= 9 and "spec/accept_pos1" in x for x in drafted)


def test_resume_restores_the_drafter_trainer(spec_run):
    run_dir, log = spec_run
    assert "resumed from" in log and "step_2" in log
    r = rows(run_dir)
    # the optimizer-step count and the buffer (steps 2 and 3: buffer_steps=2) came back from the checkpoint
    assert [x["drafter/updates"] for x in r] == [WARMUP_STEPS + DRAFTER_STEPS * s for s in (1, 2, 3)]
    rows_per_step = 16  # data.prompts_per_step × rollout.n
    assert r[1]["drafter/buffer_rows"] == r[2]["drafter/buffer_rows"] == 2 * rows_per_step
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["latest", "step_2", "step_3"]


def test_greedy_eval_is_identical_with_sd_off(spec_run, tmp_path):
    run_dir, _ = spec_run
    out_dir = tmp_path / "eval"
    run("eval", *args(run_dir, "rollout.spec.enable=false", f"checkpoint={run_dir / 'checkpoints' / 'step_3'}",
                      f"eval.output_dir={out_dir}"))
    off = json.loads((out_dir / "eval.json").read_text())["metrics"]
    on = rows(run_dir)[-1]  # evaluated in the run, through the speculative engine
    for key in ("pass@1", "length", "reward"):
        assert on[f"eval/{key}"] == pytest.approx(off[key], abs=1e-12), key


def test_spot_mode_trains_the_drafter_between_collection_and_the_sync(tmp_path):
    """rollout.spec.train.mode=spot through the CLI: worker 0 trains in the background while the learner works,
    the sync preempts it, and the drafter phase publishes what the window trained."""
    run_dir = tmp_path / "spot"
    run("train", *args(run_dir, "trainer.total_steps=2", "trainer.eval_every=0",
                       *spec("rollout.spec.train.mode=spot", "rollout.spec.train.steps=0")))
    r = rows(run_dir)
    assert [x["drafter/version"] for x in r] == [1, 2]
    windows = [x["drafter/spot_steps"] for x in r]
    assert all(w >= 0 for w in windows) and sum(windows) >= 1, windows  # 0 = until preempted
    assert r[-1]["drafter/updates"] == WARMUP_STEPS + sum(windows)
