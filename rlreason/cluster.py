"""Attaching to Ray, and placing the rollout / reward / learner actors on it.

A local cluster is sized to the machine, with its dashboard off (or bound to loopback when asked
for); ``cluster.address`` attaches to an existing one (``auto`` inside a submitted job).

Placement (``cluster.placement``): with ``none`` every actor floats and reserves ``actor_cpus``.
With ``colocate`` or ``split`` the learner ranks and rollout workers go into one Ray placement
group of *slots* (bundles of 1 GPU, or ``slot_cpus`` CPUs when ``gpus_per_node`` is 0):

    colocate   slot i holds learner rank i and rollout worker i, half of the slot each
    split      slots 0..L-1 hold the learner ranks, slots L..L+R-1 the rollout workers

Reward actors always float (they run CPU processes). A request the cluster cannot satisfy fails
after ``init_timeout_s`` with the resources that are missing, instead of waiting forever.
Not here: autoscaling, and tensor-parallel engines spanning several slots.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from typing import Any, Optional

from rlreason.config.schema import ClusterConfig, RunConfig

PLACEMENTS = ("none", "colocate", "split")
STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def start_ray(cfg: ClusterConfig) -> int:
    """Start or attach to Ray; returns the CPUs available to this run."""
    if not cfg.address:
        loopback_only()
    else:
        probe_address(cfg.address)
    import ray

    # Workers inherit the driver's environment; keep tokenizers single-threaded inside actors
    # and wandb offline unless the user said otherwise.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_MODE", "offline")
    if not ray.is_initialized():
        if cfg.address:
            ray.init(address=cfg.address, log_to_driver=cfg.log_to_driver)
        else:
            # Ray turns token authentication on for a new local cluster (good) and warns about it on
            # every start (noise in every run): keep its default, drop the warning.
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
            # address="local": never attach to a stale cluster left by an earlier run.
            ray.init(address="local", num_cpus=cfg.num_cpus or os.cpu_count(), include_dashboard=cfg.dashboard,
                     dashboard_host=cfg.dashboard_host, log_to_driver=cfg.log_to_driver)
    check_actor_cpus(cfg)
    return int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))


def probe_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail at once, naming the address, when nothing answers there (Ray itself would wait minutes)."""
    import socket

    from rlreason.config import ConfigError

    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"cluster.address={address!r}: give host:port (the head's GCS, port 6379 by default), "
                          "ray://host:port (Ray Client, 10001), or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError(f"cluster.address={address}: nothing answers at {host}:{port} ({e.strerror or e}); "
                          "start the head there (`ray start --head`), or leave cluster.address unset to run on a "
                          "local cluster") from None


def check_actor_cpus(cfg: ClusterConfig) -> None:
    """Floating actors (cluster.placement=none) each reserve actor_cpus: more than any node has never starts."""
    import ray

    from rlreason.config import ConfigError

    if cfg.placement != "none":
        return  # slots are checked, with a timeout, where the placement group is made
    largest = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=0.0)
    if cfg.actor_cpus > largest:
        raise ConfigError(f"cluster.actor_cpus={cfg.actor_cpus:g} is more than any node of the cluster has "
                          f"({largest:g} CPUs): no actor could ever start. Lower it")


def loopback_only() -> None:
    """A local cluster listens on 127.0.0.1 only: its node IP becomes the loopback address.

    Otherwise Ray binds the GCS, the raylet, every actor's gRPC port and the dashboard agent on all
    interfaces, and its metrics ports on 0.0.0.0. Ray's switch for this is the flag it reads at import
    (single-host mode, its default on macOS and Windows); if Ray was imported already, its value is set
    where Ray reads it at start.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


def threads_per_actor(requested: int, cpus: int, actors: int) -> int:
    """torch threads for each of ``actors`` actors that run at the same time (0 = share the CPUs)."""
    if requested > 0:
        return requested
    local = cpus if cpus else (os.cpu_count() or 1)
    return max(1, min(local, os.cpu_count() or local) // max(actors, 1))


def stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


# ---- placement ----------------------------------------------------------------------------------

def slots_needed(cfg: RunConfig) -> int:
    world, workers = cfg.learner.world_size, cfg.rollout.workers
    return max(world, workers) if cfg.cluster.placement == "colocate" else world + workers


def placement_problem(cfg: RunConfig) -> Optional[str]:
    """What is wrong with the cluster.* placement settings, before anything starts (None if fine)."""
    c = cfg.cluster
    if c.placement not in PLACEMENTS:
        return f"cluster.placement={c.placement!r}: use one of {', '.join(PLACEMENTS)}"
    if c.placement_strategy not in STRATEGIES:
        return f"cluster.placement_strategy={c.placement_strategy!r}: use one of {', '.join(STRATEGIES)}"
    if c.nodes < 1 or c.gpus_per_node < 0 or c.slot_cpus <= 0 or c.max_restarts < 0:
        return "cluster.nodes must be >= 1, gpus_per_node >= 0, slot_cpus > 0 and max_restarts >= 0"
    if c.placement == "none":
        if c.gpus_per_node > 0:
            return ("cluster.gpus_per_node > 0 needs cluster.placement=colocate or split, so that learners and "
                    "rollout workers reserve their GPUs")
        return None
    need, have = slots_needed(cfg), c.nodes * c.gpus_per_node
    if c.gpus_per_node and need > have:
        how = ("max(learner.world_size, rollout.workers)" if c.placement == "colocate"
               else "learner.world_size + rollout.workers")
        return (f"cluster.placement={c.placement} needs {need} GPUs ({how}) but cluster.nodes × gpus_per_node = "
                f"{c.nodes} × {c.gpus_per_node} = {have}. Add nodes, or lower learner.world_size / rollout.workers"
                + ("" if c.placement == "colocate" else ", or colocate them"))
    return None


class Placement:
    """Ray actor options for each (role, index): resources and, with slots, the bundle to use."""

    def __init__(self, cfg: RunConfig, group: Any = None):
        self.cfg = cfg
        self.group = group  # the Ray placement group of the slots (None with placement=none)

    def options(self, role: str, index: int) -> dict[str, Any]:
        c = self.cfg.cluster
        restarts = {"max_restarts": c.max_restarts} if role in ("rollout", "reward") else {}
        if self.group is None or role == "reward":
            return {"num_cpus": c.actor_cpus, **restarts}
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        share = 0.5 if c.placement == "colocate" else 1.0
        slot = index if role == "learner" or c.placement == "colocate" else self.cfg.learner.world_size + index
        return {"num_cpus": c.slot_cpus * share, "num_gpus": share if c.gpus_per_node else 0,
                "scheduling_strategy": PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=slot),
                **restarts}

    def remove(self) -> None:
        if self.group is not None:
            from ray.util import remove_placement_group

            remove_placement_group(self.group)
            self.group = None


def _node_address() -> str:
    import ray

    from rlreason.workers.groups import free_port

    return f"{ray.util.get_node_ip_address()}:{free_port('')}"


def master_address(placement: Placement) -> str:
    """host:port for DeepSpeed's rendezvous, on the node where learner rank 0 will run."""
    if placement.group is None:  # floating actors: a single-node cluster is assumed
        from rlreason.workers.groups import free_port

        return f"127.0.0.1:{free_port()}"
    import ray

    # a task in rank 0's slot finds that node's address (and a free port there) before rank 0 takes the slot
    return ray.get(ray.remote(_node_address).options(**placement.options("learner", 0)).remote())


def build_placement(cfg: RunConfig) -> Placement:
    """Reserve the slots (waiting at most cluster.init_timeout_s) or return the floating placement."""
    c = cfg.cluster
    if c.placement == "none":
        return Placement(cfg)
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    bundle = {"CPU": c.slot_cpus, **({"GPU": 1} if c.gpus_per_node else {})}
    bundles = [dict(bundle) for _ in range(slots_needed(cfg))]
    # a name of its own: Ray refuses a second group of the same name in one namespace (one driver's)
    group = placement_group(bundles, strategy=c.placement_strategy, name=f"rlreason-slots-{uuid.uuid4().hex[:8]}")
    try:
        ray.get(group.ready(), timeout=c.init_timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(group)
        raise RuntimeError(infeasible_message(bundles, c)) from None
    return Placement(cfg, group)


def infeasible_message(bundles: list[dict[str, float]], c: ClusterConfig) -> str:
    """Say which resources a placement group that never became ready lacks."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    need: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            need[k] = need.get(k, 0.0) + v
    have = {k: sum(n.get(k, 0.0) for n in nodes) for k in need}
    free = ray.available_resources()
    short = [f"{k}: needs {v:g}, the cluster has {have[k]:g} ({free.get(k, 0.0):g} free)"
             for k, v in need.items() if v > free.get(k, 0.0)]
    if c.placement_strategy == "STRICT_SPREAD" and len(bundles) > len(nodes):
        short.append(f"STRICT_SPREAD puts each of the {len(bundles)} slots on its own node; {len(nodes)} alive")
    if c.placement_strategy == "STRICT_PACK":
        biggest = {k: max((n.get(k, 0.0) for n in nodes), default=0.0) for k in need}
        short += [f"STRICT_PACK needs {k} {v:g} on one node; the largest node has {biggest[k]:g}"
                  for k, v in need.items() if v > biggest[k]]
    missing = "; ".join(short) or "resources are held by other jobs or actors"
    return (f"the {len(bundles)} slots of cluster.placement={c.placement} ({bundles[0]} each, strategy "
            f"{c.placement_strategy}) were not placed within {c.init_timeout_s:.0f}s. Missing: {missing}. "
            f"Nodes: {len(nodes)}. Lower learner.world_size / rollout.workers / cluster.slot_cpus, change "
            "cluster.placement or placement_strategy, or add nodes.")
