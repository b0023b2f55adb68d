"""The weight sync without the driver (rlreason.workers.weights): the learner publishes into a shared
file, a rollout worker on the node loads exactly those weights, the handle the driver passes stays a
few KB whatever the model's size, versions alternate between two files so a reader never sees a
half-written one, a too-small /dev/shm falls back to the object store, and dead runs' files go."""

import os
import pickle

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
@pytest.mark.parametrize("world,stage", [(1, 0), (2, 3)])
def test_a_rollout_worker_loads_what_the_learner_published(ray_local, tiny_model_dir, world, stage):
    """Through real actors: DeepSpeed learners publish (ZeRO-3: one module gathered at a time), a rollout
    worker loads; its weights equal the learner's, and what passed through the driver is a handle of a few KB."""
    import ray

    from rlreason.batches import with_counts
    from rlreason.config import load_config
    from rlreason.workers.groups import LearnerGroup, RolloutGroup
    from shared_builders import fixed_batch

    cfg = load_config(["recipe=quickstart", f"model.path={tiny_model_dir}", f"learner.world_size={world}",
                       f"learner.zero_stage={stage}"])
    learners = LearnerGroup(cfg, tiny_model_dir, threads=1)
    rollout = RolloutGroup(cfg, tiny_model_dir, threads=1)
    try:
        batch = fixed_batch(tiny_model_dir, n=8)
        learners.update(with_counts(batch), lr=1e-2, loss_name="sft")  # the policy moves away from the files
        handle = learners.publish_weights(version=1, reader_nodes=rollout.nodes())
        assert handle.path.startswith("/dev/shm/") and handle.ref is None and len(pickle.dumps(handle)) < 4096
        rollout.load_weights(handle, version=1)
        want = learners.policy_weights()

        def rollout_state(worker):
            return {k: v.clone() for k, v in worker.engine.model.state_dict().items()}

        got = ray.get(rollout.actors[0].__ray_call__.remote(rollout_state))
        assert want.keys() == got.keys()
        for k in want:
            assert torch.equal(want[k], got[k]), k
    finally:
        for a in learners.actors + rollout.actors:
            ray.kill(a)
