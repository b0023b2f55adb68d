"""Attaching to Ray: a local cluster sized to the machine, or an existing one at cluster.address."""

from __future__ import annotations

import os

from rlreason.config.schema import ClusterConfig


def start_ray(cfg: ClusterConfig) -> int:
    """Start or attach to Ray; returns the CPUs available to this run."""
    import ray

    # Workers inherit the driver's environment; keep tokenizers single-threaded inside actors
    # and wandb offline unless the user said otherwise.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_MODE", "offline")
    if not ray.is_initialized():
        if cfg.address:
            ray.init(address=cfg.address, log_to_driver=cfg.log_to_driver)
        else:
            # address="local": never attach to a stale cluster left by an earlier run.
            ray.init(address="local", num_cpus=cfg.num_cpus or os.cpu_count(), include_dashboard=False,
                     log_to_driver=cfg.log_to_driver)
    return int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))


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
