"""scripts/bench_rollout.py end to end with miniature models (a plumbing check, not a measurement)."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "bench_rollout.py")


@pytest.mark.slow
def test_bench_rollout_smoke_prints_every_mode(tmp_path):
    out = subprocess.run([sys.executable, SCRIPT, "--smoke", "--cache", str(tmp_path)],
                         capture_output=True, text=True, check=True, timeout=600).stdout
    res = json.loads(out[out.index("{\n"):])
    assert set(res["modes"]) == {"native", "k0", "k2", "adaptive"}
    assert res["modes"]["k0"]["speedup_whole"]["median"] == 1.0
    assert res["modes"]["k2"]["accept_len"]["median"] >= 1.0 and "speedup_tail" in res["modes"]["k2"]
    assert set(res["profile_ms"]) == {"c_t1", "c_v3", "c_d2"}
    assert "formula_batch1" in res["predicted_vs_measured"]["k2"]
