"""The weight sync across Ray nodes: a two-node Ray cluster on this machine (two raylets, so two node
ids), learner rank 0 on one, the rollout worker on the other. With cluster.weight_sync=auto the worker
cannot map rank 0's file (another node) and receives rank 0's broadcast; with object_store it fetches
rank 0's copy; either way it ends with exactly the learner's weights and the driver carries a handle."""

import pickle

import pytest
import torch


@pytest.fixture(scope="module")
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    yield
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("sync", ["auto", "object_store"])
def test_a_rollout_worker_on_another_node_loads_what_the_learner_published(two_nodes, tiny_model_dir, sync):
    import ray

    from rlreason.batches import with_counts
    from rlreason.cluster import build_placement
    from rlreason.config import load_config
    from rlreason.workers.groups import LearnerGroup, RolloutGroup
    from shared_builders import fixed_batch

    cfg = load_config(["recipe=quickstart", f"model.path={tiny_model_dir}", f"cluster.weight_sync={sync}",
                       "cluster.placement=split", "cluster.nodes=2", "cluster.placement_strategy=STRICT_SPREAD",
                       "cluster.slot_cpus=1", "cluster.init_timeout_s=120"])
    placement = build_placement(cfg)
    learners = LearnerGroup(cfg, tiny_model_dir, threads=1, placement=placement)
    rollout = RolloutGroup(cfg, tiny_model_dir, threads=1, placement=placement)
    try:
        assert ray.get(learners.actors[0].node.remote()) != rollout.nodes()[0]  # two nodes indeed
        for version in (1, 2):
            learners.update(with_counts(fixed_batch(tiny_model_dir, n=8)), lr=1e-2, loss_name="sft")
            handle = learners.publish_weights(version=version, readers=rollout)
            assert len(pickle.dumps(handle)) < 4096
            assert (handle.broadcast, handle.ref is not None) == ((True, False) if sync == "auto" else (False, True))
            rollout.load_weights(handle, version=version)
        want = learners.policy_weights()
        has_receiver, got = ray.get(rollout.actors[0].__ray_call__.remote(
            lambda w: (w.receiver is not None, {k: v.clone() for k, v in w.engine.model.state_dict().items()})))
        assert has_receiver == (sync == "auto") and want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k]) for k in want)
    finally:
        for a in learners.actors + rollout.actors:
            ray.kill(a)
        from rlreason.workers.weights import remove_files

        remove_files(rollout.weights_handle())  # a killed learner leaves its files (the driver removes them)
        ray.util.remove_placement_group(placement.group)
