"""Starting the Ray actors and fanning work out to them.

Each group splits a batch between its actors, calls them in parallel and reassembles the
results in the original order. The learner group splits by the update plan (rlreason.workers.plan).
"""

from __future__ import annotations

import random
import socket
import sys
from typing import Optional

from rlreason.config.schema import RunConfig
from rlreason.types import (GenerationRequest, LogprobResult, RewardResult, RolloutBatch, SamplingParams,
                            ScoreRequest, SequenceBatch, TrainBatch, UpdateStats)
from rlreason.workers import plan
from rlreason.workers.weights import WeightsHandle, slots_for


def _ray():
    import ray

    return ray


def wait_ready(actors: list, what: str, timeout_s: float) -> None:
    ray = _ray()
    try:
        ray.get([a.ready.remote() for a in actors], timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise RuntimeError(
            f"{what} actors were not placed within {timeout_s:.0f}s. Cluster resources: "
            f"{ray.available_resources()} available of {ray.cluster_resources()}; each actor asks for the "
            f"resources in cluster.*. Lower the worker counts or add nodes (cluster.init_timeout_s waits longer)."
        ) from None


RAY_WORKER_PORTS_END = 20000  # Ray's workers listen on 10002-19999 by default


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now, for a listener that another process opens later: from below the
    kernel's ephemeral range and above Ray's worker ports, so no outgoing connection and no Ray worker
    takes it in between (a port from the ephemeral range sometimes was, and the rendezvous failed
    with "Address already in use")."""
    low = ephemeral_ports_start()
    pick = random.SystemRandom()  # not the run's seeded generators
    for _ in range(100):
        port = pick.randrange(RAY_WORKER_PORTS_END, low) if low > RAY_WORKER_PORTS_END else 0
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError(f"no free port on {host or 'any interface'} between {RAY_WORKER_PORTS_END} and {low}")


def ephemeral_ports_start() -> int:
    """The first port the kernel hands to outgoing connections (Linux; 32768 elsewhere)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def even_chunks(n: int, parts: int) -> list[range]:
    """Split range(n) into ``parts`` contiguous near-equal ranges (some may be empty)."""
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(parts)]


class RolloutGroup:
    def __init__(self, cfg: RunConfig, model_path: str, threads: int, placement=None, wait: bool = True):
        """``wait=False``: return once the actors are asked for; ``ready()`` waits (start groups side by side)."""
        from rlreason.cluster import Placement
        from rlreason.faults import Supervisor
        from rlreason.workers.rollout import RolloutWorker

        placement = placement or Placement(cfg)
        actor = _ray().remote(RolloutWorker)
        self.actors = [actor.options(**placement.options("rollout", w)).remote(cfg, model_path, threads, w)
                       for w in range(cfg.rollout.workers)]
        self.timeout_s = cfg.cluster.init_timeout_s
        if wait:
            self.ready()
        self._weights = None  # (object ref, version) of the weights the workers hold, for restarted ones
        self.on_restart: list = []  # more catch-up calls for a restarted worker w (e.g. the drafter's)
        self.rejoin = None  # fn(w): a restarted worker joins the weight broadcast again, before it loads
        self.supervisor = Supervisor(self.actors, "rollout", cfg.cluster.max_restarts, cfg.cluster.init_timeout_s,
                                     on_restart=self._catch_up)

    def ready(self) -> None:
        wait_ready(self.actors, "rollout", self.timeout_s)

    def generate(self, prompts: list[list[int]], group_sizes: list[int], sampling: SamplingParams,
                 seed: int) -> RolloutBatch:
        """Split prompts between workers (whole groups stay together) and concatenate their batches."""
        calls = []
        for w, part in enumerate(even_chunks(len(prompts), len(self.actors))):
            if len(part) == 0:
                continue
            req = GenerationRequest([prompts[b] for b in part], [group_sizes[b] for b in part],
                                    group_offset=part.start, sampling=sampling, seed=seed * 1000 + w)
            calls.append((w, lambda a, req=req: a.generate.remote(req)))
        return RolloutBatch.concat(self.supervisor.run(calls))  # a dead worker's share is redone

    def load_weights(self, handle: WeightsHandle, version: int) -> None:
        """Every worker loads the weights the learner published (rlreason.workers.weights: they skip the driver)."""
        self._weights = (handle, version)
        self.supervisor.run([(w, lambda a: a.load_weights.remote(*self._weights)) for w in range(len(self.actors))])

    def weights_handle(self) -> Optional[WeightsHandle]:
        """The handle of the weights the workers hold (None before the first sync)."""
        return self._weights[0] if self._weights else None

    def set_threads(self, threads: int) -> None:
        _ray().get([a.set_threads.remote(threads) for a in self.actors])

    def release_gpu(self) -> None:
        """Free the GPUs the workers share with learners while the learners train (a no-op unless colocated vLLM)."""
        self.supervisor.run([(w, lambda a: a.release_gpu.remote()) for w in range(len(self.actors))])

    def nodes(self) -> list[str]:
        """The Ray node of each worker."""
        return _ray().get([a.node.remote() for a in self.actors])

    def _catch_up(self, w: int) -> None:
        """A restarted worker holds the initial model: load the current weights before it works again."""
        if self.rejoin is not None:
            self.rejoin(w)
        if self._weights is not None:
            _ray().get(self.actors[w].load_weights.remote(*self._weights))
        for fn in self.on_restart:
            fn(w)


class RewardGroup:
    def __init__(self, cfg: RunConfig, policy_actors: list | None = None):
        """``policy_actors``: the rollout workers, which score model rewards under the current policy."""
        from rlreason.rewards.base import read_sources
        from rlreason.workers.reward import RewardContext, RewardWorker

        # Reward files are read here, on the driver, and their source travels with the actors, so
        # actors on other nodes need not see the files (rewards/base.py: read_sources).
        context = RewardContext(max_response_length=cfg.rollout.max_new_tokens,
                                add_special_tokens=not cfg.data.chat_template,
                                sources=read_sources([f.name for f in cfg.reward.functions]))
        from rlreason.cluster import Placement
        from rlreason.faults import Supervisor

        actor = _ray().remote(RewardWorker).options(**Placement(cfg).options("reward", 0))
        # The context travels by value in the creation task, so a restarted actor (cluster.max_restarts)
        # is rebuilt from it alone. The rollout actors' handles are sent after creation, and again to a
        # restarted actor: as creation arguments Ray would keep them in its object store.
        self.policy = list(policy_actors or [])
        self.actors = [actor.remote(cfg.reward, cfg.data.answer_key, context) for _ in range(cfg.reward.workers)]
        wait_ready(self.actors, "reward", cfg.cluster.init_timeout_s)
        self.set_policy(self.policy)
        self.supervisor = Supervisor(self.actors, "reward", cfg.cluster.max_restarts, cfg.cluster.init_timeout_s,
                                     on_restart=lambda w: _ray().get(self.actors[w].set_policy.remote(self.policy)))

    def score(self, req: ScoreRequest) -> RewardResult:
        """Split whole groups between the actors (group rewards see every response of a prompt)."""
        groups = list(dict.fromkeys(req.group_ids)) if req.group_ids else list(range(len(req.responses)))
        calls = []
        for w, part in enumerate(even_chunks(len(groups), len(self.actors))):
            if len(part) == 0:
                continue
            mine = {groups[g] for g in part}
            rows = [i for i in range(len(req.responses)) if (req.group_ids[i] if req.group_ids else i) in mine]
            calls.append((w, lambda a, sub=req.select(rows): a.score.remote(sub)))
        return RewardResult.concat(self.supervisor.run(calls))  # a dead actor's share is redone

    def set_policy(self, actors: list) -> None:
        """Point model rewards (scorer=policy) at the current rollout actors, e.g. after one was restarted."""
        self.policy = list(actors)
        _ray().get([a.set_policy.remote(self.policy) for a in self.actors])

    def close(self) -> None:
        _ray().get([a.close.remote() for a in self.actors])


class LearnerGroup:
    def __init__(self, cfg: RunConfig, model_path: str, threads: int, placement=None, wait: bool = True):
        """``wait=False``: return once the actors are asked for; ``ready()`` waits (start groups side by side)."""
        from rlreason.cluster import Placement, master_address
        from rlreason.workers.extensions import prepare_extensions_dir
        from rlreason.workers.learner import LearnerWorker

        for note in prepare_extensions_dir():  # this machine's; each learner checks its own node too
            print(f"rlreason: {note}", file=sys.stderr, flush=True)
        world = cfg.learner.world_size
        placement = placement or Placement(cfg)
        master = master_address(placement)  # on rank 0's node when the learners have slots
        actor = _ray().remote(LearnerWorker)
        self.actors = [actor.options(**placement.options("learner", rank)).remote(cfg, model_path, rank, world,
                                                                                  master, threads)
                       for rank in range(world)]
        self.timeout_s = cfg.cluster.init_timeout_s
        if wait:
            self.ready()
        self.world = world
        self.micro = cfg.learner.micro_batch_size
        self.cfg = cfg
        self.far: Optional[list[int]] = None  # the rollout workers in rank 0's broadcast group (first sync)
        self.object_store = False  # rank 0 also puts each version in the object store (cluster.weight_sync)

    def ready(self) -> None:
        wait_ready(self.actors, "learner", self.timeout_s)

    def logprobs(self, seqs: SequenceBatch, policy: bool = True) -> LogprobResult:
        """Log-probs and entropy under the current policy (``policy``), and reference log-probs with a
        reference model, of every row of ``seqs``."""
        shares = plan.plan_for(seqs, self.world, self.micro)
        parts = _ray().get([a.compute_logprobs.remote(plan.take(seqs, s), s.micro_sizes, policy)
                            for a, s in zip(self.actors, shares)])
        return plan.gather(parts, shares, len(seqs)) or LogprobResult(None, None)

    def update(self, batch: TrainBatch, lr: float, loss_name: str | None = None
               ) -> tuple[UpdateStats, Optional[LogprobResult]]:
        """One optimizer step on ``batch`` (whose global counts are already set): its stats summed over
        the ranks and, with on-policy reuse (``batch.old_logprobs`` None), the rows' log-probs before it."""
        shares = plan.plan_for(batch, self.world, self.micro)
        parts = _ray().get([a.update.remote(plan.take(batch, s), s.micro_sizes, lr, loss_name)
                            for a, s in zip(self.actors, shares)])
        stats = parts[0][0]
        for rank_stats, _ in parts[1:]:
            stats = stats.add(rank_stats)
        return stats, plan.gather([lps for _, lps in parts], shares, len(batch))

    def reset_reference(self) -> None:
        _ray().get([a.reset_reference.remote() for a in self.actors])

    def set_threads(self, threads: int) -> None:
        _ray().get([a.set_threads.remote(threads) for a in self.actors])

    def publish_weights(self, version: int, readers: RolloutGroup) -> WeightsHandle:
        """Rank 0 publishes the policy for the rollout workers ``readers`` (the driver gets a handle only).
        The first call decides how each worker reads it (cluster.weight_sync, rlreason.workers.weights)."""
        if self.far is None:
            self._plan_sync(readers)
        return _ray().get([a.publish_weights.remote(version, self.object_store) for a in self.actors])[0]

    def _plan_sync(self, readers: RolloutGroup) -> None:
        """Workers on rank 0's node map its files; the others join its broadcast group (auto), or read a
        copy in the object store (object_store); with ``broadcast`` every worker joins the group."""
        mode = self.cfg.cluster.weight_sync
        home = _ray().get(self.actors[0].node.remote())
        away = [w for w, node in enumerate(readers.nodes()) if node != home]
        self.far = list(range(len(readers.actors))) if mode == "broadcast" else away if mode == "auto" else []
        self.object_store = mode == "object_store" and bool(away)
        if self.far:
            self.join_broadcast(readers)
            readers.rejoin = lambda w: self.join_broadcast(readers)

    def join_broadcast(self, readers: RolloutGroup) -> None:
        """Form rank 0's broadcast group with the far rollout workers (again, after one was restarted:
        rank 0 then sends the versions it holds once more)."""
        ray = _ray()
        where = ray.get(self.actors[0].broadcast_address.remote())
        size, slots = len(self.far) + 1, slots_for(self.cfg.trainer)
        ray.get([self.actors[0].join_broadcast.remote(size)]
                + [readers.actors[w].join_broadcast.remote(where, rank, size, slots)
                   for rank, w in enumerate(self.far, start=1)])

    def policy_weights(self) -> dict:
        """Full policy weights on the driver (for the weight sync and export)."""
        return _ray().get([a.policy_weights.remote() for a in self.actors])[0]

    # checkpoint protocol (rlreason.checkpoint): every rank writes its DeepSpeed shard under ``path``
    def save_checkpoint(self, path: str) -> None:
        _ray().get([a.save_checkpoint.remote(path) for a in self.actors])

    def load_checkpoint(self, path: str) -> None:
        _ray().get([a.load_checkpoint.remote(path) for a in self.actors])
