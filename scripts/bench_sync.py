"""The weight sync, learner rank 0 to the rollout workers, by each path of ``cluster.weight_sync`` (JSON).

    python scripts/bench_sync.py                   # the bench's 21M model in bf16, 6 syncs per path
    python scripts/bench_sync.py --size small --dtype float32 --reps 10

One machine, two Ray clusters in turn:
- one node, 2 rollout workers: rank 0's shared-memory file (``auto``) against the broadcast to both
  workers (``broadcast``);
- two nodes on this machine (two raylets, so two node ids; learner on one, 1 rollout worker on the
  other, placement slots with STRICT_SPREAD): the broadcast (``auto``) against a copy in Ray's object
  store (``object_store``). The bytes travel over loopback here, not a network: the ratio between
  the two paths is what this shows, not a network's speed.

Each sync is one ``publish_weights`` (rank 0 copies the policy into its slot, then sends or puts it)
and one ``load_weights`` (every worker loads it into its engine), timed from the driver; the paths of
a cluster alternate (one node: sync by sync; two nodes: in rounds, since one path's groups hold the
placement slots at a time), and the first sync of each set of groups (which forms the broadcast group)
is left out. Prints one JSON line per path: median publish, load and total seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_step import prepare  # noqa: E402  (the bench's model, built once per cache dir)


def groups(model: str, dtype: str, sync: str, nodes: int):
    from rlreason.cluster import build_placement
    from rlreason.config import load_config
    from rlreason.workers.groups import LearnerGroup, RolloutGroup

    extra = (["cluster.placement=split", "cluster.nodes=2", "cluster.placement_strategy=STRICT_SPREAD",
              "cluster.slot_cpus=1", "rollout.workers=1"] if nodes == 2 else ["rollout.workers=2"])
    cfg = load_config(["recipe=quickstart", f"model.path={model}", f"model.dtype={dtype}",
                       f"cluster.weight_sync={sync}", *extra])
    placement = build_placement(cfg)
    return placement, LearnerGroup(cfg, model, threads=1, placement=placement), \
        RolloutGroup(cfg, model, threads=1, placement=placement)


def measure(model: str, dtype: str, paths: list[str], nodes: int, reps: int) -> list[dict]:
    """Alternate the paths sync by sync when their groups fit side by side (one node); with placement
    slots (two nodes) one path's groups hold the slots at a time, so the paths alternate by rounds."""
    times: dict[str, list[tuple[float, float]]] = {sync: [] for sync in paths}
    rounds = [paths] if nodes == 1 else [[sync] for sync in paths] * 2
    for together in rounds:
        built = {sync: groups(model, dtype, sync, nodes) for sync in together}
        for version in range(1, (reps if nodes == 1 else reps // 2) + 2):
            for sync, (_, learners, rollout) in built.items():
                start = time.perf_counter()
                handle = learners.publish_weights(version, rollout)
                published = time.perf_counter()
                rollout.load_weights(handle, version)
                if version > 1:  # the first forms the broadcast group
                    times[sync].append((published - start, time.perf_counter() - published))
        for built_groups in built.values():
            close(*built_groups)
    return [{"nodes": nodes, "weight_sync": sync, "workers": 1 if nodes == 2 else 2, "syncs": len(xs),
             "publish_s": round(statistics.median(p for p, _ in xs), 4),
             "load_s": round(statistics.median(lo for _, lo in xs), 4),
             "sync_s": round(statistics.median(p + lo for p, lo in xs), 4)} for sync, xs in times.items()]


def close(placement, learners, rollout) -> None:
    import ray

    from rlreason.workers.weights import remove_files

    remove_files(rollout.weights_handle())
    for actor in learners.actors + rollout.actors:
        ray.kill(actor)
    if placement.group is not None:
        ray.util.remove_placement_group(placement.group)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="large", choices=["tiny", "small", "large"])
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--reps", type=int, default=6)
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "rlreason-bench-step"))
    args = p.parse_args()
    os.makedirs(args.cache, exist_ok=True)
    model, _ = prepare(args.cache, args.size)
    import ray
    from ray.cluster_utils import Cluster

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = measure(model, args.dtype, ["auto", "broadcast"], 1, args.reps)
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    rows += measure(model, args.dtype, ["auto", "object_store"], 2, args.reps)
    ray.shutdown()
    cluster.shutdown()
    nbytes = sum(os.path.getsize(os.path.join(model, f)) for f in os.listdir(model) if f.endswith(".safetensors"))
    for row in rows:
        print(json.dumps({"size": args.size, "dtype": args.dtype, "model_mb_fp32": round(nbytes / 2**20), **row}))


if __name__ == "__main__":
    main()
