"""Starting the Ray actors and fanning work out to them.

Each group splits a batch between its actors, calls them in parallel and reassembles the
results in the original order. The learner group also pads shards so every DeepSpeed rank runs
the same number of micro-batches (ZeRO communicates inside forward/backward).
"""

from __future__ import annotations

import math
import socket
import sys
from dataclasses import replace

import torch

from rlreason.config.schema import RunConfig
from rlreason.types import (GenerationRequest, LogprobResult, RewardResult, RolloutBatch, SamplingParams,
                            ScoreRequest, SequenceBatch, TrainBatch)


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def even_chunks(n: int, parts: int) -> list[range]:
    """Split range(n) into ``parts`` contiguous near-equal ranges (some may be empty)."""
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(parts)]


class RolloutGroup:
    def __init__(self, cfg: RunConfig, model_path: str, threads: int, placement=None):
        from rlreason.cluster import Placement
        from rlreason.faults import Supervisor
        from rlreason.workers.rollout import RolloutWorker

        placement = placement or Placement(cfg)
        actor = _ray().remote(RolloutWorker)
        self.actors = [actor.options(**placement.options("rollout", w)).remote(cfg, model_path, threads, w)
                       for w in range(cfg.rollout.workers)]
        wait_ready(self.actors, "rollout", cfg.cluster.init_timeout_s)
        self._weights = None  # (object ref, version) of the weights the workers hold, for restarted ones
        self.on_restart: list = []  # more catch-up calls for a restarted worker w (e.g. the drafter's)
        self.supervisor = Supervisor(self.actors, "rollout", cfg.cluster.max_restarts, cfg.cluster.init_timeout_s,
                                     on_restart=self._catch_up)

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

    def load_weights(self, state: dict, version: int) -> None:
        self._weights = (_ray().put(state), version)  # one copy in the object store, read by every worker
        self.supervisor.run([(w, lambda a: a.load_weights.remote(*self._weights)) for w in range(len(self.actors))])

    def _catch_up(self, w: int) -> None:
        """A restarted worker holds the initial model: load the current weights before it works again."""
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
    def __init__(self, cfg: RunConfig, model_path: str, threads: int, placement=None):
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
        wait_ready(self.actors, "learner", cfg.cluster.init_timeout_s)
        self.world = world
        self.micro = cfg.learner.micro_batch_size

    def _plan(self, n: int) -> tuple[int, int]:
        """Rows per rank (after padding) and micro-batches per rank."""
        rows = max(math.ceil(n / self.world), 1)
        return rows, math.ceil(rows / self.micro)

    def logprobs(self, seqs: SequenceBatch) -> LogprobResult:
        rows, num_micro = self._plan(len(seqs))
        futures = [a.compute_logprobs.remote(_pad_seqs(_stride(seqs, r, self.world), rows), num_micro)
                   for r, a in enumerate(self.actors)]
        parts = _ray().get(futures)
        return _unstride(parts, len(seqs), self.world)

    def update(self, batch: TrainBatch, lr: float, loss_name: str | None = None) -> dict[str, float]:
        """One optimizer step on ``batch`` (whose global counts are already set); summed stats."""
        if batch.keep_groups:  # the loss couples a prompt's responses: whole groups per micro-batch
            from rlreason.workers.group_split import group_shards

            shards = group_shards(batch, self.world, self.micro)  # (shard, micro-batch sizes) per rank
        else:
            rows, num_micro = self._plan(len(batch))
            shards = [(_pad_train(batch.shard(r, self.world), rows), num_micro) for r in range(self.world)]
        futures = [a.update.remote(shard, micro, lr, loss_name) for a, (shard, micro) in zip(self.actors, shards)]
        parts = _ray().get(futures)
        same = ("grad_norm", "skipped")  # identical on every rank after the all-reduce
        out = {k: sum(p[k] for p in parts) for k in parts[0] if k not in same}
        out.update({k: parts[0][k] for k in same if k in parts[0]})
        return out

    def reset_reference(self) -> None:
        _ray().get([a.reset_reference.remote() for a in self.actors])

    def policy_weights(self) -> dict:
        """Full policy weights on the driver (for the weight sync and export)."""
        return _ray().get([a.policy_weights.remote() for a in self.actors])[0]

    # checkpoint protocol (rlreason.checkpoint): every rank writes its DeepSpeed shard under ``path``
    def save_checkpoint(self, path: str) -> None:
        _ray().get([a.save_checkpoint.remote(path) for a in self.actors])

    def load_checkpoint(self, path: str) -> None:
        _ray().get([a.load_checkpoint.remote(path) for a in self.actors])


def _stride(seqs: SequenceBatch, rank: int, world: int) -> SequenceBatch:
    idx = torch.arange(rank, len(seqs), world)
    return SequenceBatch(seqs.input_ids[idx], seqs.attention_mask[idx], seqs.response_mask[idx], seqs.prompt_width)


def _pad_seqs(seqs: SequenceBatch, rows: int) -> SequenceBatch:
    """Append fully-masked copies of row 0 up to ``rows`` rows (they carry no loss)."""
    extra = rows - len(seqs)
    if extra <= 0:
        return seqs
    if len(seqs) == 0:
        raise ValueError("cannot pad an empty shard")
    rep = lambda t: torch.cat([t, t[:1].expand(extra, *t.shape[1:])])  # noqa: E731
    return SequenceBatch(rep(seqs.input_ids), rep(seqs.attention_mask),
                         torch.cat([seqs.response_mask, torch.zeros(extra, seqs.response_mask.shape[1])]),
                         seqs.prompt_width)


def _pad_train(batch: TrainBatch, rows: int) -> TrainBatch:
    extra = rows - len(batch)
    if extra <= 0:
        return batch
    padded = batch.rows(torch.cat([torch.arange(len(batch)), torch.zeros(extra, dtype=torch.long)]))
    mask = padded.seqs.response_mask.clone()
    mask[len(batch):] = 0.0
    adv = padded.advantages.clone()
    adv[len(batch):] = 0.0
    return replace(padded, seqs=replace(padded.seqs, response_mask=mask), advantages=adv)


def _unstride(parts: list[LogprobResult], n: int, world: int) -> LogprobResult:
    """Undo strided sharding: row i came from rank i % world, position i // world."""
    def gather(get):
        first = get(parts[0])
        if first is None:
            return None
        out = torch.zeros(n, first.shape[1], dtype=first.dtype)
        for r, p in enumerate(parts):
            k = len(range(r, n, world))
            out[r::world] = get(p)[:k]
        return out

    return LogprobResult(gather(lambda p: p.old_logprobs), gather(lambda p: p.entropy),
                         gather(lambda p: p.ref_logprobs))
