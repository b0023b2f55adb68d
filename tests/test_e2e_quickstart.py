"""The quickstart learns: what the README promises, checked on the real CLI (minutes on 2 cores)."""

import json
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_quickstart_raises_accuracy(tmp_path):
    run = tmp_path / "quickstart"
    start = time.time()
    out = subprocess.run([sys.executable, "-m", "rlreason", "train", "recipe=quickstart",
                          f"trainer.output_dir={run}", "trainer.progress=false"],
                         capture_output=True, text=True, timeout=1200)
    minutes = (time.time() - start) / 60
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    correct = [r["correct/mean"] for r in rows]
    first, last = sum(correct[:3]) / 3, sum(correct[-3:]) / 3
    print(f"quickstart: correct/mean first 3 steps {first:.3f}, last 3 steps {last:.3f}, {minutes:.1f} min")
    assert last - first >= 0.2, correct
