"""Checkpointer: the component protocol round-trips, RNGs come back, and a checkpoint whose save was
interrupted (killed mid-write, or truncated afterwards) is never loaded."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from rlreason.checkpoint import (Checkpointer, CheckpointError, checkpoint_problem, latest_checkpoint, resume_path)


class Counter:
    """Small state (state_dict protocol)."""

    def __init__(self):
        self.n = 0

    def state_dict(self):
        return {"n": self.n, "t": torch.arange(3) * self.n}

    def load_state_dict(self, state):
        self.n = state["n"]
        assert torch.equal(state["t"], torch.arange(3) * self.n)


class Blob:
    """Large state written by the component itself (save_checkpoint protocol)."""

    def __init__(self):
        self.payload = b""

    def save_checkpoint(self, path):
        os.makedirs(path)
        with open(os.path.join(path, "blob.bin"), "wb") as f:
            f.write(self.payload)

    def load_checkpoint(self, path):
        with open(os.path.join(path, "blob.bin"), "rb") as f:
            self.payload = f.read()


def make(run_dir, keep=0):
    ck = Checkpointer(str(run_dir), keep=keep)
    counter, blob = Counter(), Blob()
    ck.register("counter", counter)
    ck.register("blob", blob)
    return ck, counter, blob


def write_metrics(run_dir, steps):
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for s in steps:
            f.write(json.dumps({"step": s, "loss": s / 10}) + "\n")


def test_save_and_load_restore_components_rngs_and_metrics(tmp_path):
    ck, counter, blob = make(tmp_path)
    counter.n, blob.payload = 7, b"x" * 1000
    write_metrics(tmp_path, [1, 2])
    random.seed(1)
    torch.manual_seed(1)
    path = ck.save(3, pending_row={"loss": 0.3, "kl": float("nan")})
    expected = (random.random(), torch.rand(2))
    write_metrics(tmp_path, [1, 2, 3, 4, 5])  # the run went on, then crashed

    ck2, counter2, blob2 = make(tmp_path)
    assert ck2.load(path) == 3
    assert counter2.n == 7 and blob2.payload == b"x" * 1000
    assert (random.random(), torch.rand(2))[0] == expected[0]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # rows after the checkpoint are dropped
    assert rows[-1] == {"step": 3, "loss": 0.3, "kl": None}  # NaN written as RunLog writes it
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_3"


def test_rng_states_are_restored_exactly(tmp_path):
    ck, _, _ = make(tmp_path)
    torch.manual_seed(5)
    random.seed(5)
    path = ck.save(1)
    a = (torch.rand(4), random.random())
    torch.manual_seed(99)
    random.seed(99)
    make(tmp_path)[0].load(path)
    b = (torch.rand(4), random.random())
    assert torch.equal(a[0], b[0]) and a[1] == b[1]


def test_a_component_missing_from_the_checkpoint_is_an_error_unless_optional(tmp_path):
    ck, _, _ = make(tmp_path)
    path = ck.save(1)
    ck2, _, _ = make(tmp_path)
    ck2.register("drafter", Counter())
    with pytest.raises(CheckpointError, match="drafter"):
        ck2.load(path)
    ck3, _, _ = make(tmp_path)
    late = Counter()
    late.n = 4
    ck3.register("drafter", late, optional=True)
    assert ck3.load(path, log=lambda m: None) == 1 and late.n == 4  # keeps its fresh state


def test_register_rejects_objects_without_the_protocol(tmp_path):
    with pytest.raises(TypeError, match="state_dict"):
        Checkpointer(str(tmp_path)).register("x", object())


def test_a_truncated_checkpoint_is_never_loaded_and_auto_falls_back(tmp_path):
    ck, counter, blob = make(tmp_path)
    counter.n, blob.payload = 1, b"a" * 4096
    good = ck.save(2)
    counter.n, blob.payload = 2, b"b" * 4096
    bad = ck.save(4)
    with open(os.path.join(bad, "blob", "blob.bin"), "r+b") as f:  # a file cut short after the save
        f.truncate(100)
    assert "truncated" in checkpoint_problem(bad)
    with pytest.raises(CheckpointError, match="truncated"):
        make(tmp_path)[0].load(bad)
    assert latest_checkpoint(str(tmp_path / "checkpoints"), log=lambda m: None) == good
    assert resume_path("auto", str(tmp_path), log=lambda m: None) == good
    with pytest.raises(CheckpointError):
        resume_path(bad, str(tmp_path))


def test_keep_prunes_old_checkpoints_of_this_timeline(tmp_path):
    ck, _, _ = make(tmp_path, keep=2)
    for s in (1, 2, 3, 4):
        ck.save(s)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["latest", "step_3", "step_4"]
    # resumed from step 3, the run saves step 3 again: step 4 (the abandoned future) is not pruned
    make(tmp_path)[0].load(str(tmp_path / "checkpoints" / "step_3"))
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_3"
    ck.save(3)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["latest", "step_3", "step_4"]
    assert resume_path("auto", str(tmp_path)) == str(tmp_path / "checkpoints" / "step_3")


KILLED_MID_SAVE = textwrap.dedent("""
    import os, sys, time
    from rlreason.checkpoint import Checkpointer

    class Slow:
        def save_checkpoint(self, path):
            os.makedirs(path)
            with open(os.path.join(path, "part"), "wb") as f:
                f.write(b"half")
                f.flush()
                print("writing", flush=True)
                time.sleep(60)  # killed here, mid-write
        def load_checkpoint(self, path):
            pass

    class Small:
        def state_dict(self): return {"v": 1}
        def load_state_dict(self, s): pass

    ck = Checkpointer(sys.argv[1])
    ck.register("small", Small())
    ck.save(1)                      # a complete checkpoint first
    ck.register("slow", Slow())
    ck.save(2)                      # then one that never finishes
""")


def test_a_save_killed_mid_write_leaves_the_previous_checkpoint(tmp_path):
    script = tmp_path / "save.py"
    script.write_text(KILLED_MID_SAVE)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    root = tmp_path / "checkpoints"
    leftovers = [n for n in os.listdir(root) if n.startswith(".tmp-step_2")]
    assert leftovers, os.listdir(root)  # the half-written save is there ...
    assert not (root / "step_2").exists()  # ... but never became a checkpoint
    assert (root / "latest").read_text().strip() == "step_1"
    assert latest_checkpoint(str(root)) == str(root / "step_1")
    with pytest.raises(CheckpointError, match="manifest"):
        resume_path(str(root / leftovers[0]), str(tmp_path))
    # the next save clears the leftover
    Checkpointer(str(tmp_path)).save(3)
    assert not any(n.startswith(".tmp-") for n in os.listdir(root))


def test_resume_leaves_each_step_once_in_every_log(tmp_path):
    from rlreason.checkpoint import set_aside_logs

    def write(name, rows):
        with open(tmp_path / name, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)

    def steps(name):
        return [json.loads(line).get("step") for line in (tmp_path / name).read_text().splitlines()]

    ck, _, _ = make(tmp_path)
    write("warmup.jsonl", [{"sft_step": 1, "loss": 2.0}, {"sft_step": 2, "loss": 1.0}])
    write("reward_errors.jsonl", [{"step": 1, "error": "a"}, {"step": 2, "error": "b"}])
    write_metrics(tmp_path, [1, 2])
    path = ck.save(2)
    write("reward_errors.jsonl", [{"step": s, "error": "x"} for s in (1, 2, 3, 4)])  # steps 3-4, then a crash
    write_metrics(tmp_path, [1, 2, 3, 4])
    assert make(tmp_path)[0].load(path) == 2
    assert steps("metrics.jsonl") == [1, 2] and steps("reward_errors.jsonl") == [1, 2]
    assert len(steps("warmup.jsonl")) == 2
    # a checkpoint written before reward_errors.jsonl was kept: the rows of rolled-back steps are still dropped
    from rlreason.checkpoint import _write_manifest

    os.remove(os.path.join(path, "reward_errors.jsonl"))
    os.remove(os.path.join(path, "manifest.json"))  # re-sealed as an older save would have been
    _write_manifest(path, 2)
    write("reward_errors.jsonl", [{"step": s, "error": "x"} for s in (1, 2, 3)])
    make(tmp_path)[0].load(path)
    assert steps("reward_errors.jsonl") == [1, 2]
    # starting again at step 1 (resume=auto before any checkpoint): the earlier attempt's logs move aside
    aside = set_aside_logs(str(tmp_path))
    assert sorted(os.listdir(aside)) == ["metrics.jsonl", "reward_errors.jsonl", "samples.jsonl", "warmup.jsonl"]
    assert not (tmp_path / "metrics.jsonl").exists() and set_aside_logs(str(tmp_path)) is None


def test_state_pt_loads_weights_only_and_an_unsafe_one_needs_trust(tmp_path, monkeypatch):
    import numpy

    from rlreason.checkpoint import load_small_state

    ck, counter, _ = make(tmp_path)
    numpy.random.seed(3)
    path = ck.save(1)
    expected = numpy.random.rand(3)
    state = torch.load(os.path.join(path, "state.pt"), weights_only=True)  # no pickled code objects inside
    assert isinstance(state["__rng__"]["numpy"]["keys"], torch.Tensor)
    make(tmp_path)[0].load(path)
    assert numpy.array_equal(numpy.random.rand(3), expected)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"obj": Counter()}, unsafe)  # a pickled class instance: would run code on load
    with pytest.raises(CheckpointError, match="RLREASON_TRUST_CHECKPOINTS=1"):
        load_small_state(str(unsafe))
    monkeypatch.setenv("RLREASON_TRUST_CHECKPOINTS", "1")
    assert isinstance(load_small_state(str(unsafe))["obj"], Counter)


def test_a_full_disk_is_said_and_leaves_nothing_partial(tmp_path):
    from shared_builders import tmpfs

    with tmpfs(tmp_path / "small", "size=1m") as mount:
        ck, counter, blob = make(mount)
        path = ck.save(1)  # fits
        blob.payload = os.urandom(2 * 2**20)  # does not
        with pytest.raises(CheckpointError, match=r"the disk holding .* is full .* while writing checkpoint step_2"):
            ck.save(2)
        left = os.listdir(mount / "checkpoints")
        assert sorted(left) == ["latest", "step_1"], left
        assert (mount / "checkpoints" / "latest").read_text().strip() == "step_1" and checkpoint_problem(path) is None
