"""The weight sync without the driver (rlreason.workers.weights): the learner publishes into a shared
file, a rollout worker on the node loads exactly those weights, the handle the driver passes stays a
few KB whatever the model's size, versions alternate between two files so a reader never sees a
half-written one, a too-small /dev/shm falls back to the object store, and dead runs' files go."""

import os
import pickle
import time

import pytest
import torch

from rlreason.workers import weights


def publish(pub, state, version, remote_readers=False):
    return pub.publish({k: (v.dtype, list(v.shape)) for k, v in state.items()}, iter(state.items()), version,
                       remote_readers)


def state(scale=1.0):
    return {"a": torch.arange(12, dtype=torch.float32).reshape(3, 4) * scale,
            "b": (torch.ones(5, dtype=torch.bfloat16) * scale), "steps": torch.tensor([7, 8], dtype=torch.int64),
            "empty": torch.zeros(0, 3)}


def test_published_weights_read_back_exactly_and_versions_alternate():
    pub = weights.WeightsPublisher()
    try:
        h1 = publish(pub, state(1.0), 1)
        h2 = publish(pub, state(2.0), 2)
        assert h1.path != h2.path and h1.ref is None
        for handle, scale in ((h1, 1.0), (h2, 2.0)):  # version 1 is intact after version 2 was written
            got = weights.read(handle)
            for k, v in state(scale).items():
                assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
        assert len(pickle.dumps(h2)) < 4096  # what the driver carries
    finally:
        pub.close()
    assert not os.path.exists(h1.path) and not os.path.exists(h2.path)


def test_too_small_dev_shm_falls_back_to_the_object_store(ray_local, monkeypatch):
    class Tiny:
        f_bavail, f_frsize = 10, 4096

    monkeypatch.setattr(weights.os, "statvfs", lambda path: Tiny())
    pub = weights.WeightsPublisher()
    handle = publish(pub, state(), 1)
    assert handle.path is None and handle.ref is not None and "too little" in pub.note
    assert torch.equal(weights.read(handle)["a"], state()["a"])


def test_files_of_dead_learners_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "SHM_DIR", str(tmp_path))
    dead, alive = tmp_path / "rlreason-weights-999999999-abc-0", tmp_path / f"rlreason-weights-{os.getpid()}-abc-0"
    dead.write_bytes(b"x")
    alive.write_bytes(b"x")
    weights.remove_stale_files()
    assert not dead.exists() and alive.exists()


@pytest.mark.slow
@pytest.mark.parametrize("world,stage,sync", [(1, 0, "auto"), (2, 3, "auto"), (2, 3, "broadcast")])
def test_a_rollout_worker_loads_what_the_learner_published(ray_local, tiny_model_dir, world, stage, sync):
    """Through real actors: DeepSpeed learners publish (ZeRO-3: one module gathered at a time), rollout
    workers load, from rank 0's file or its broadcast (cluster.weight_sync); their weights equal the
    learner's, and what passed through the driver is a handle of a few KB."""
    import ray

    from rlreason.batches import with_counts
    from rlreason.config import load_config
    from rlreason.workers.groups import LearnerGroup, RolloutGroup
    from shared_builders import fixed_batch

    cfg = load_config(["recipe=quickstart", f"model.path={tiny_model_dir}", f"learner.world_size={world}",
                       f"learner.zero_stage={stage}", f"cluster.weight_sync={sync}", "rollout.workers=2"])
    learners = LearnerGroup(cfg, tiny_model_dir, threads=1)
    rollout = RolloutGroup(cfg, tiny_model_dir, threads=1)
    try:
        batch = fixed_batch(tiny_model_dir, n=8)
        for version in (1, 2):  # the policy moves away from the files, then moves again
            learners.update(with_counts(batch), lr=1e-2, loss_name="sft")
            handle = learners.publish_weights(version=version, readers=rollout)
            assert handle.path.startswith("/dev/shm/") and handle.ref is None and len(pickle.dumps(handle)) < 4096
            assert handle.broadcast == (sync == "broadcast") and learners.far == ([0, 1] if handle.broadcast else [])
            rollout.load_weights(handle, version=version)
        want = learners.policy_weights()

        def rollout_state(worker):
            assert (worker.receiver is not None) == (sync == "broadcast")
            return {k: v.clone() for k, v in worker.engine.model.state_dict().items()}

        for actor in rollout.actors:
            got = ray.get(actor.__ray_call__.remote(rollout_state))
            assert want.keys() == got.keys()
            for k in want:
                assert torch.equal(want[k], got[k]), k
    finally:
        for a in learners.actors + rollout.actors:
            ray.kill(a)
        from rlreason.workers.weights import remove_files

        remove_files(rollout.weights_handle())  # a killed learner leaves its files (the driver removes them)


# ---- the broadcast from rank 0 (rlreason.workers.broadcast), members on threads of this process ------------

def _group(size, slots=2):
    """A root and size-1 readers joined at once (each join blocks until all members are in)."""
    from concurrent.futures import ThreadPoolExecutor

    from rlreason.workers.broadcast import BroadcastReader

    pub = weights.WeightsPublisher(slots=slots)
    where = pub.listen()
    with ThreadPoolExecutor(size) as pool:
        readers = [pool.submit(BroadcastReader, where, rank, size, slots) for rank in range(1, size)]
        pool.submit(pub.join, size).result(timeout=60)
        return pub, [r.result(timeout=60) for r in readers]


def test_broadcast_readers_get_every_version_exactly_and_a_written_over_one_is_refused():
    pub, readers = _group(3)
    try:
        handles = [publish(pub, state(float(v)), v) for v in (1, 2, 3)]  # 2 slots: version 3 writes over 1
        assert all(h.broadcast and h.ref is None for h in handles)
        for reader in readers:
            for handle, scale in ((handles[1], 2.0), (handles[2], 3.0)):
                got = weights.read(handle, reader)
                for k, v in state(scale).items():
                    assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
            with pytest.raises(RuntimeError, match="version 1 was overwritten by version 3"):
                weights.read(handles[0], reader)
    finally:
        pub.close()
    for reader in readers:  # the root's close ends the readers' threads
        reader.thread.join(timeout=30)
        assert not reader.thread.is_alive() and reader.error == "the group was closed"


def test_a_broken_group_falls_back_to_the_object_store_until_it_is_formed_again(ray_local):
    """A reader killed (-9, a real process) breaks the group: rank 0's send fails fast, the version goes
    to the object store; a new group with a fresh reader gets the versions rank 0 still holds, then the next."""
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from rlreason.workers.broadcast import BroadcastReader

    pub = weights.WeightsPublisher(slots=2)
    where = pub.listen()
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; from rlreason.workers.broadcast import "
                              f"BroadcastReader; BroadcastReader({where!r}, 1, 2, 2); time.sleep(600)"])
    try:
        pub.join(2)
        first = publish(pub, state(1.0), 1)
        assert first.broadcast
        child.kill()
        child.wait()
        start = time.monotonic()
        second = publish(pub, state(2.0), 2)
        assert time.monotonic() - start < 30 and not second.broadcast and second.ref is not None
        assert "broadcast" in pub.note and "object store" in pub.note
        import ray

        assert torch.equal(ray.get(second.ref)["a"], state(2.0)["a"])  # what a reader off the node gets
        where = pub.listen()
        with ThreadPoolExecutor(1) as pool:
            fresh = pool.submit(BroadcastReader, where, 1, 2, 2)
            pub.join(2)
            fresh = fresh.result(timeout=60)
        third = publish(pub, state(3.0), 3)
        assert third.broadcast and third.ref is None
        for handle, scale in ((second, 2.0), (third, 3.0)):
            assert torch.equal(weights.read(handle, fresh)["a"], state(scale)["a"])
    finally:
        child.kill()
        pub.close()
