"""scripts/bench_step.py end to end with the tiny model (a plumbing check, not a measurement): both of
rlreason's modes run, each with the rollout workers asked for, and report their step and phase times.
TRL's side needs the ``bench`` extra: CI does not install it, scripts/refresh_lock.sh does, so a TRL
release that breaks the bench stops the lock from moving to it."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "bench_step.py")


def smoke(tmp_path, *args: str) -> tuple[dict, dict]:
    """The runs of ``bench_step.py --smoke ARGS`` by variant, and its summary."""
    out = subprocess.run([sys.executable, SCRIPT, "--smoke", *args, "--cache", str(tmp_path)],
                         capture_output=True, text=True, check=True, timeout=600).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {r["variant"]: r for r in rows if "variant" in r}, next(r["summary"] for r in rows if "summary" in r)


@pytest.mark.slow
def test_bench_step_smoke_runs_both_modes_with_the_actors_asked_for(tmp_path):
    runs, _ = smoke(tmp_path, "--frameworks", "rlreason,rlreason-pipelined", "--threads",
                    "rlreason=2,rlreason-pipelined=1", "--rollout-workers", "rlreason=2",
                    "--learner-ranks", "rlreason=2")
    assert sorted(runs) == ["rlreason", "rlreason-pipelined"]
    assert [runs[v]["rollout_actors"] for v in ("rlreason", "rlreason-pipelined")] == [2, 1]
    assert [runs[v]["learner_actors"] for v in ("rlreason", "rlreason-pipelined")] == [2, 1]
    assert [runs[v]["learner_ranks"] for v in ("rlreason", "rlreason-pipelined")] == [2, 1]
    for r in runs.values():
        assert "error" not in r and r["s_per_step"] > 0 and len(r["steps_s"]) == 2
        assert r["phases"]["generate"] > 0 and r["phases"]["update"] > 0 and r["tokens_per_step"] > 0


@pytest.mark.slow
def test_bench_step_smoke_runs_trl_beside_rlreason(tmp_path):
    pytest.importorskip("trl")  # the bench extra (TRL's GRPOTrainer and the private hook the bench times)
    runs, summary = smoke(tmp_path, "--frameworks", "trl:bf16,rlreason", "--attn", "eager")
    assert sorted(runs) == ["rlreason", "trl:bf16"]
    trl = runs["trl:bf16"]
    assert "error" not in trl, trl.get("error")
    assert trl["s_per_step"] > 0 and len(trl["steps_s"]) == 2 and trl["precision"] == "bf16"
    assert trl["phases"]["generate+score"] > 0 and trl["tokens_per_step"] > 0
    assert trl["gradient_checkpointing"] is False  # TRL's default is on: a recomputed forward rlreason does not do
    ratio = summary["tiny/rlreason_speed_vs_trl"]
    assert ratio["reps"] == 1 and ratio["median"] == trl["s_per_step"] / runs["rlreason"]["s_per_step"]
