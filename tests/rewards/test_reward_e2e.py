"""The real CLI with user rewards: a file path and a module:function (the README's example file), a
group reward, a likelihood reward scored by the rollout workers' policy, routing by data_source, and a
reward that raises or hangs with on_error=drop_group. The step finishes and every sample is counted."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FAULTY = """
import time

def faulty(*, fault, **kw):
    if fault == "raise":
        raise RuntimeError("judge exploded")
    time.sleep(60)  # fault == "hang"
"""


@pytest.mark.slow
def test_user_rewards_through_the_cli(tmp_path):
    rows = [("Q: 1+2 =\nA:", "3", "arith", 0, "none"), ("Q: 7+5 =\nA:", "12", "arith", 2, "raise"),
            ("Q: 3+3 =\nA:", "6", "other", 1, "none"), ("Q: 9+9 =\nA:", "18", "other", 2, "hang")]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "answer": a, "data_source": s, "num_carries": c, "fault": f})
                            + "\n" for p, a, s, c, f in rows))
    (tmp_path / "faulty.py").write_text(FAULTY)
    recipe = tmp_path / "rewards.yaml"
    recipe.write_text(f"""# user rewards, end to end
model:
  builder: rlreason.tasks.arithmetic:build_model
  builder_kwargs: {{hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64}}
data:
  train: {data}
  prompts_per_step: 4
rollout: {{n: 4, max_new_tokens: 12}}
reward:
  functions:
    - {{name: math_verify, when: {{data_source: arith}}}}
    - {{name: examples/rewards/my_reward.py:concise, weight: 0.5, kwargs: {{max_chars: 50}}}}
    - {{name: "my_reward:shortest_correct_bonus", weight: 0.2}}
    - {{name: likelihood, weight: 0.0, kwargs: {{answer_marker: null, answer_prefix: " "}}}}
    - {{name: "{tmp_path / 'faulty.py'}:faulty", weight: 0.0, when: {{fault: [raise, hang]}}}}
  timeout_s: 2
  on_error: drop_group
trainer: {{total_steps: 1, loggers: [jsonl], progress: false}}
""")
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "examples" / "rewards"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "rlreason", "train", f"recipe={recipe}", f"trainer.output_dir={run}"],
                         capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1]
    for m in metrics:
        # the raising and the hanging rows' groups are dropped, counted, and the step still trains
        assert m["reward/dropped_groups"] == 2 and m["reward/dropped_samples"] == 8 and m["reward/errors"] == 8
        assert m["time/score"] < 10, m["time/score"]  # 4 hanging calls cost about one 2 s timeout
        assert m["reward/concise/carries/mean"] == 0.5  # a dataset column reached the file reward (kept rows 0, 1)
        assert "reward/concise/right/mean" in m and "reward/shortest_correct_bonus/mean" in m
        assert "reward/math_verify/mean" in m
        assert math.isfinite(m["reward/likelihood/mean"]) and m["reward/likelihood/mean"] < 0
        assert m["reward/likelihood/marker/mean"] == 1.0
        assert math.isfinite(m["loss"])
    errors = [json.loads(line) for line in (run / "reward_errors.jsonl").read_text().splitlines()]
    assert len(errors) == 8 and {e["step"] for e in errors} == {1}
    raised = [e["error"] for e in errors if "RuntimeError" in e["error"]]
    hung = [e["error"] for e in errors if "timeout after 2s" in e["error"]]
    assert len(raised) == len(hung) == 4
    assert all("faulty.py:faulty on sample" in e for e in raised + hung)  # function and sample named
    assert all("Traceback" in e and "judge exploded" in e for e in raised)  # with the traceback
