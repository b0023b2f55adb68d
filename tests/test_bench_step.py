"""scripts/bench_step.py end to end with the tiny model (a plumbing check, not a measurement): both of
rlreason's modes run, each with the rollout workers asked for, and report their step and phase times.
(TRL's side needs the ``bench`` extra, which CI does not install.)"""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "bench_step.py")


@pytest.mark.slow
def test_bench_step_smoke_runs_both_modes_with_the_rollout_workers_asked_for(tmp_path):
    out = subprocess.run([sys.executable, SCRIPT, "--smoke", "--frameworks", "rlreason,rlreason-pipelined",
                          "--threads", "rlreason=2,rlreason-pipelined=1", "--rollout-workers", "rlreason=2",
                          "--cache", str(tmp_path)], capture_output=True, text=True, check=True, timeout=600).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    runs = {r["variant"]: r for r in rows if "variant" in r}
    assert sorted(runs) == ["rlreason", "rlreason-pipelined"]
    assert [runs[v]["rollout_actors"] for v in ("rlreason", "rlreason-pipelined")] == [2, 1]
    for r in runs.values():
        assert "error" not in r and r["s_per_step"] > 0 and len(r["steps_s"]) == 2
        assert r["phases"]["generate"] > 0 and r["phases"]["update"] > 0 and r["tokens_per_step"] > 0
