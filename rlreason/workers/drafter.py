"""The speculative drafter across Ray: its host inside each rollout worker, and the driver's handle.

Where it trains: on rollout worker 0, right after the weight sync, because that worker already
holds the new policy (the target the drafter must imitate next) and its tokenizer; the learner is
left alone and nothing large crosses the network (rollout token ids in, drafter weights out).
With the native engine the drafter trains against the engine's own model; a vLLM worker holds no
Hugging Face model, so worker 0 keeps a copy of the policy for it (``RolloutWorker.drafter_target``,
synced with the engine) and every worker takes new versions into vLLM (``load_drafter_state``).
Deterministic mode (``rollout.spec.train.mode``): ``steps`` drafter steps after every RL step.
Spot mode (TLT): once the step's rollouts are collected, worker 0 is idle until the weight sync (the
score, log-prob and update phases), so a background thread trains the drafter there, one step at a
time, until the worker is needed again: ``generate``, ``load_weights`` or ``score_tokens`` stop it
after its current step (``steps`` caps a window; 0 = until preempted). It trains against the policy
that wrote the rollouts, one update behind the one it is published with (TLT's one-step offset),
and how many steps fit depends on timing, so spot runs are not reproducible step for step.

Versioning: the drafter trained after RL step s is published as version s, the policy version it
was trained against, to every worker before the rollout of step s+1; so every rollout runs one
fixed (policy version, drafter version) pair, and they are equal after the first step.

Restarts: a restarted worker gets the vocabulary map and the latest published drafter again. A
restarted worker 0 loses the trainer's optimizer and buffer (its drafter resumes from the latest
publish); a checkpoint keeps all three.
"""

from __future__ import annotations

import threading
from typing import Optional

import torch
from torch import Tensor

from rlreason.config.schema import RunConfig
from rlreason.types import SequenceBatch


def build_spec_engine(cfg: RunConfig, model, tokenizer, vocab_map: Optional[Tensor] = None):
    """The SpeculativeEngine of ``rollout.spec`` around ``model`` (every worker builds the same drafter)."""
    from rlreason.rollout.spec.build import build_drafter, build_strategy
    from rlreason.rollout.spec.engine import SpeculativeEngine

    spec = cfg.rollout.spec
    return SpeculativeEngine(model, tokenizer, build_drafter(spec, model, vocab_map, seed=cfg.trainer.seed),
                             build_strategy(spec, seed=cfg.trainer.seed), max_batch=cfg.rollout.batch_size)


def trains_drafter(cfg: RunConfig) -> bool:
    """Whether ``rollout.spec`` has a drafter that trains online (EAGLE or lm, mode not off)."""
    spec = cfg.rollout.spec
    return spec.enable and spec.drafter != "ngram" and spec.train.mode in ("deterministic", "spot")


class DrafterHost:
    """Mixed into RolloutWorker, which sets ``self.cfg``, ``self.engine`` and ``self.drafter_target`` (the
    Hugging Face policy the drafter learns from; None on vLLM workers other than 0): the actor's drafter calls."""

    def init_drafter(self, vocab_map: Optional[Tensor]) -> bool:
        """Start from the seeded initial drafter over ``vocab_map`` (a reduced draft vocabulary, or None)."""
        from rlreason.rollout.spec.build import build_drafter

        self.vocab_map, self.drafter_version, self.published = vocab_map, 0, None
        if self.cfg.rollout.engine == "native":
            self.engine.drafter = build_drafter(self.cfg.rollout.spec, self.engine.model, vocab_map,
                                                seed=self.cfg.trainer.seed)
        elif vocab_map is not None:  # vLLM loaded the same initial drafter from its checkpoint
            raise ValueError("vLLM's drafters propose over the full vocabulary: rollout.spec.draft_vocab must be 0")
        return True

    def load_drafter(self, weights) -> int:
        """Install published drafter weights (``DrafterWeights``); returns their version."""
        self.engine.load_drafter_state(weights.state)
        self.published = weights.state  # where a trainer built later (after a restart) starts from
        self.drafter_version = weights.version
        return weights.version

    def _trainer(self):
        """The drafter trainer, built on first use from the latest published drafter (or the initial one)."""
        if getattr(self, "drafter_trainer", None) is None:
            from rlreason.rollout.spec.build import build_drafter
            from rlreason.rollout.spec.train import DrafterTrainer

            if self.drafter_target is None:
                raise RuntimeError("the drafter trains on rollout worker 0, which keeps the policy copy it needs; "
                                   "this worker has none")
            spec = self.cfg.rollout.spec
            drafter = build_drafter(spec, self.drafter_target, getattr(self, "vocab_map", None),
                                    seed=self.cfg.trainer.seed)
            if getattr(self, "published", None) is not None:
                drafter.load_state_dict(self.published)
            self.drafter_trainer = DrafterTrainer(drafter, self.drafter_target, spec.train, self.cfg.rollout.temperature,
                                                  self.engine.pad_id, seed=self.cfg.trainer.seed)
        return self.drafter_trainer

    def train_drafter(self, seqs: SequenceBatch, version: int, steps: Optional[int] = None):
        """One RL step's drafter phase on this worker's (already synced) policy -> ``DrafterUpdate``."""
        from rlreason.rollout.spec.train import DrafterUpdate

        trainer = self._trainer()
        metrics = trainer.step(seqs, version, steps)
        return DrafterUpdate(trainer.weights(version), metrics)

    # ---- spot mode: train while the worker is idle, stop when it is needed ----------------------

    def spot_start(self, seqs: SequenceBatch, step: int) -> bool:
        """Add the step's rollouts to the buffer and train in the background until preempted."""
        self.spot_halt()
        trainer, stop = self._trainer(), threading.Event()
        trainer.add(seqs, step)
        limit = self.cfg.rollout.spec.train.steps
        self._spot = {"stop": stop, "steps": 0, "sums": {}}

        def loop(state=self._spot):
            try:
                while not stop.is_set() and (limit == 0 or state["steps"] < limit):
                    stats = trainer.train(1)
                    if not stats:  # nothing to train on
                        return
                    state["steps"] += 1
                    for k, v in stats.items():
                        state["sums"][k] = state["sums"].get(k, 0.0) + v
            except BaseException as e:  # re-raised by spot_collect on the actor's thread, where Ray reports it
                state["error"] = e

        self._spot_thread = threading.Thread(target=loop, name="drafter-spot", daemon=True)
        self._spot_thread.start()
        return True

    def spot_halt(self) -> None:
        """Preempt the background training (it finishes its current drafter step first)."""
        thread = getattr(self, "_spot_thread", None)
        if thread is not None:
            self._spot["stop"].set()
            thread.join()
            self._spot_thread = None

    def spot_collect(self, version: int):
        """Stop training and hand over what the idle window produced, as ``version`` (a DrafterUpdate)."""
        from rlreason.rollout.spec.train import DrafterUpdate

        self.spot_halt()
        trainer = self._trainer()
        spot = getattr(self, "_spot", None) or {"steps": 0, "sums": {}}
        self._spot = None
        if "error" in spot:
            raise RuntimeError("spot-mode drafter training failed in its background thread") from spot["error"]
        n = spot["steps"]
        metrics = {k: v / n for k, v in spot["sums"].items()} if n else {}
        metrics.update({"drafter/spot_steps": float(n), "drafter/updates": float(trainer.updates)})
        return DrafterUpdate(trainer.weights(version), metrics)

    def drafter_state(self) -> dict:
        self.spot_halt()
        return self._trainer().state_dict()

    def load_drafter_state(self, state: dict) -> bool:
        self._trainer().load_state_dict(state)
        return True


class DrafterGroup:
    """Driver side: trains on rollout worker 0 after each RL step, publishes to every worker, checkpoints."""

    def __init__(self, cfg: RunConfig, rollout, prompt_ids: list[list[int]], eos_id: int, vocab_size: int):
        import ray

        from rlreason.rollout.spec.build import prompt_vocab_map

        self.cfg, self.rollout = cfg, rollout
        spec = cfg.rollout.spec
        self.vocab_map = prompt_vocab_map(prompt_ids, spec.draft_vocab, vocab_size, (eos_id,))
        self.trains = spec.drafter != "ngram" and spec.train.mode in ("deterministic", "spot")
        self.spot = self.trains and spec.train.mode == "spot"
        self.latest = None  # the last published DrafterWeights (for restarted workers and checkpoints)
        ray.get([a.init_drafter.remote(self.vocab_map) for a in rollout.actors])
        rollout.on_restart.append(self._catch_up)

    @property
    def version(self) -> int:
        return self.latest.version if self.latest is not None else 0

    def spot_start(self, seqs: SequenceBatch, step: int) -> None:
        """Spot mode: worker 0 trains on this step's rollouts while it waits for the weight sync."""
        import ray

        if self.spot:
            ray.get(self.rollout.actors[0].spot_start.remote(seqs, step))

    def step(self, seqs: SequenceBatch, version: int) -> dict[str, float]:
        """Train on this step's rollouts (spot: collect what trained meanwhile) and publish as ``version``."""
        import ray

        if self.trains:
            worker = self.rollout.actors[0]
            update = ray.get(worker.spot_collect.remote(version) if self.spot else worker.train_drafter.remote(seqs, version))
            self.publish(update.weights)
            return {**update.metrics, "drafter/version": float(self.version)}
        return {"drafter/version": float(self.version)}

    def warm_start(self, seqs: SequenceBatch) -> str:
        """``warmup_steps`` drafter steps on the SFT demonstrations ``seqs``, published as version 0."""
        import ray

        steps = self.cfg.rollout.spec.train.warmup_steps
        if not (self.trains and steps):
            return ""
        update = ray.get(self.rollout.actors[0].train_drafter.remote(seqs, 0, steps))
        self.publish(update.weights)
        m = update.metrics
        return (f"drafter warm start: {steps} steps on {len(seqs)} demonstrations, loss {m['drafter/loss']:.4f}, "
                f"acceptance {m['drafter/accept_before']:.3f} -> {m['drafter/accept_after']:.3f}")

    def publish(self, weights) -> None:
        import ray

        self.latest = weights
        ref = ray.put(weights)  # one copy in the object store, read by every worker
        ray.get([a.load_drafter.remote(ref) for a in self.rollout.actors])

    def _catch_up(self, w: int) -> None:
        import ray

        actor = self.rollout.actors[w]
        ray.get(actor.init_drafter.remote(self.vocab_map))
        if self.latest is not None:
            ray.get(actor.load_drafter.remote(self.latest))

    # checkpoint protocol (rlreason.checkpoint): the trainer's state lives on worker 0
    def state_dict(self) -> dict:
        import ray

        trainer = ray.get(self.rollout.actors[0].drafter_state.remote()) if self.trains else None
        latest = None if self.latest is None else {"version": self.latest.version, "state": self.latest.state}
        return {"trainer": trainer, "latest": latest}

    def load_state_dict(self, state: dict) -> None:
        import ray

        from rlreason.rollout.spec.train import DrafterWeights

        if state["latest"] is not None:
            self.publish(DrafterWeights(state["latest"]["version"], state["latest"]["state"]))
        if self.trains and state["trainer"] is not None:
            ray.get(self.rollout.actors[0].load_drafter_state.remote(state["trainer"]))
