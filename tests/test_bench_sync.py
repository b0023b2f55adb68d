"""scripts/bench_sync.py end to end with the tiny model (a plumbing check, not a measurement): every path
of cluster.weight_sync on one node and across two raylets prints its row."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "bench_sync.py")


@pytest.mark.slow
def test_bench_sync_prints_every_path(tmp_path):
    out = subprocess.run([sys.executable, SCRIPT, "--size", "tiny", "--dtype", "float32", "--reps", "2",
                          "--cache", str(tmp_path)], capture_output=True, text=True, check=True, timeout=600).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(r["nodes"], r["weight_sync"]) for r in rows] == [(1, "auto"), (1, "broadcast"), (2, "auto"),
                                                              (2, "object_store")]
    assert all(r["syncs"] == 2 and 0 < r["publish_s"] < r["sync_s"] for r in rows)
