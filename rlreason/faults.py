"""Faults: dead actors are restarted and their work redone; fatal errors are explained.

* ``Supervisor`` wraps the calls a group makes to its actors. Rollout and reward actors are
  created with ``max_restarts`` (cluster.max_restarts), so Ray restarts a dead one by running its
  constructor again; the supervisor waits for that, lets the group bring the new actor up to date
  (the rollout group reloads the current weights: a restarted worker holds the initial model), and
  calls it again with the same request. Requests carry their seeds, so the redone work is what the
  dead actor would have returned. Errors raised by the called code itself are not retried.
* ``explain_failure`` turns an out-of-memory error into one message naming the phase it happened
  in and what to change. The controller's PhaseTimer marks exceptions with their phase.

Not here: learner faults. A dead DeepSpeed rank takes its collective with it; the run stops
and ``trainer.resume=auto`` continues it from the last checkpoint.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Optional


def _ray():
    import ray

    return ray


class Supervisor:
    """Gets results from a group's actors, restarting and redoing the work of any that died."""

    def __init__(self, actors: list, what: str, max_restarts: int, timeout_s: float,
                 on_restart: Optional[Callable[[int], None]] = None):
        self.actors, self.what, self.max_restarts, self.timeout_s = actors, what, max_restarts, timeout_s
        self.on_restart = on_restart  # called with the actor's index once it is back, before the redo
        self.restarts = 0  # all restarts so far (logged as faults/<what>_restarts)
        self._per_actor = [0] * len(actors)

    def run(self, calls: list[tuple[int, Callable[[Any], Any]]]) -> list:
        """``calls``: (actor index, fn(actor) -> ObjectRef). Results in the order of ``calls``."""
        pending = [(w, fn, fn(self.actors[w])) for w, fn in calls]  # all in flight at once
        return [self._get(w, fn, ref) for w, fn, ref in pending]

    def _get(self, w: int, fn: Callable[[Any], Any], ref: Any) -> Any:
        ray = _ray()
        while True:
            try:
                return ray.get(ref)
            except ray.exceptions.RayActorError as e:
                self._revive(w, e)
                ref = fn(self.actors[w])

    def _revive(self, w: int, error: Exception) -> None:
        ray = _ray()
        self._per_actor[w] += 1
        self.restarts += 1
        if self._per_actor[w] > self.max_restarts:
            raise RuntimeError(f"{self.what} actor {w} died {self._per_actor[w]} times, more than "
                               f"cluster.max_restarts={self.max_restarts}; last error: {error}") from error
        print(f"rlreason: {self.what} actor {w} died ({type(error).__name__}); waiting for Ray to restart it, "
              "then redoing its work", file=sys.stderr, flush=True)
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                ray.get(self.actors[w].ready.remote(), timeout=max(deadline - time.monotonic(), 0.1))
                break
            except ray.exceptions.ActorUnavailableError:  # still restarting: its constructor runs again
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.what} actor {w} did not come back within {self.timeout_s:.0f}s") from error
                time.sleep(0.5)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as e:
                raise RuntimeError(f"{self.what} actor {w} died and did not come back within {self.timeout_s:.0f}s "
                                   f"({type(e).__name__}: {e})") from error
        if self.on_restart is not None:
            self.on_restart(w)


# ---- explaining fatal errors --------------------------------------------------------------------

HINTS = {
    "generate": "lower rollout.batch_size (rows decoded together), rollout.max_new_tokens or rollout.n, "
                "or spread the prompts over more rollout.workers",
    "score": "lower reward.processes or reward.workers; a reward that loads a model should load it once per process",
    "logprobs": "lower learner.micro_batch_size, use learner.zero_stage=3 or model.dtype=bfloat16, "
                "or add learners (learner.world_size)",
    "update": "lower learner.micro_batch_size, use learner.zero_stage=3 or model.dtype=bfloat16, "
              "or add learners (learner.world_size)",
    "sync": "the full weights pass through Ray's object store: give it more memory (ray start "
            "--object-store-memory) or run fewer rollout workers per node",
    "eval": "lower eval.k, eval.max_prompts or eval.max_new_tokens",
    "checkpoint": "the checkpoint gathers the optimizer state; save less often or on a larger node",
}
GENERIC_HINT = ("Ray's memory monitor kills the process using the most memory when a node passes "
                "RAY_memory_usage_threshold (0.95 by default); lower the batch sizes of that phase or add memory")


class RunStopped(RuntimeError):
    """The run cannot usefully go on (e.g. no response gets a reward); the message says why and what to do."""


def is_out_of_memory(exc: BaseException) -> bool:
    ray = _ray()
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ray.exceptions.OutOfMemoryError, MemoryError)):
            return True
        if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
            return True
        exc = getattr(exc, "cause", None) or exc.__cause__
    return False


def dead_actor(exc: BaseException) -> Optional[str]:
    """'a LearnerWorker actor died in phase update (...)' for an actor death Ray reports, else None.

    Rollout and reward actors are restarted (Supervisor); a learner rank that dies ends the run here.
    """
    import re

    ray = _ray()
    if not isinstance(exc, ray.exceptions.RayActorError) or is_out_of_memory(exc):
        return None
    text = str(exc)
    name = re.search(r"class_name:\s*(\w+)", text)
    phase = getattr(exc, "rlreason_phase", None)
    cause = next((line.strip() for line in text.splitlines() if "died" in line.lower() or "exit" in line.lower()),
                 text.strip().splitlines()[0] if text.strip() else type(exc).__name__)
    return (f"a {name.group(1) if name else 'worker'} actor died" + (f" in phase '{phase}'" if phase else "") +
            f" ({cause[:300]})")


def explain_failure(exc: BaseException) -> Optional[str]:
    """A one-paragraph explanation for errors we recognise (out of memory), else None."""
    if not is_out_of_memory(exc):
        return None
    phase = getattr(exc, "rlreason_phase", None)
    where = f"in phase '{phase}'" if phase else "during setup"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = HINTS.get(phase or "", GENERIC_HINT)
    return f"out of memory {where}: {type(exc).__name__}: {first[:300]}\nHint: {hint}."
