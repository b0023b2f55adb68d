"""scripts/gpu_smoke.py: its CPU dry run (the plumbing of every step at toy sizes) here, the real
thing on a CUDA machine."""

import json
import os
import subprocess
import sys

import pytest
import torch

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "gpu_smoke.py")


def smoke(*args, timeout):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.stdout.startswith("{"), proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.slow
def test_cpu_dry_run_passes_every_step_it_can_run():
    rc, report = smoke("--cpu", timeout=600)
    steps = report["steps"]
    assert rc == 0 and report["ok"], json.dumps(report, indent=1)[-3000:]
    assert steps["model"]["sft_loss_last"] < steps["model"]["sft_loss_first"]
    for v in ("V32768", "V151936"):  # the chunked path against fp64, as on a GPU
        assert steps["kernels"][v]["chunked"]["ok"] and steps["kernels"][v]["chunked"]["err_lp"] < 1e-4
    assert steps["engine"]["greedy_equal_with_sd"] and steps["engine"]["batch4_tok_s"] > 0
    for stage in ("zero0", "zero3"):
        assert steps["learner"][stage]["weights_equal_after_sync"] and steps["learner"][stage]["weights_moved"]
    assert steps["learner"]["zero3"]["partitioned"] and not steps["learner"]["zero0"]["partitioned"]
    assert "not_run" in steps["vllm"]  # no GPU here: said, not faked


def test_refuses_to_run_without_a_gpu_unless_asked_for_the_dry_run():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--cpu" in proc.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_smoke():
    rc, report = smoke(timeout=600)
    assert rc == 0 and report["ok"], json.dumps(report, indent=1)[-3000:]
