"""The pipelined controller (trainer.mode=pipelined): rollouts of the next steps are generated while
the learner trains on this one.

    step t:   [collect t+1 ... in the background]      rollout workers, reward workers
              logprobs -> advantages -> update -> observe -> sync     learner (this thread)

The background collection is the synchronous loop's own ``collect`` (sample, generate, score, shape,
filter), run ahead by up to ``trainer.max_staleness`` steps on one background thread. That thread
also runs the weight loads and the evaluation, in the order they were asked for, so the weights each
rollout comes from are fixed by the loop, not by timing: the rollouts of step t+1 are queued before
the load of the weights step t produces, and come from weights one update behind the learner's.
The learner's π_old is its current policy, and truncated importance sampling corrects for the
rollout policy's gap to it (``algorithm.rollout_is_cap``, rlreason.algorithms.rollout_correction);
the gap, its weights and the staleness are logged every step.

The pipeline is drained before every checkpoint: no rollout of a step after a saved one is generated
before the save, so a resumed run generates the same rollouts from the same weights as the original.
Refused, with the reason (rlreason.config.validate): samplers that learn from the update (their next
draw would miss it) and speculative decoding (its drafter trains on the rollout workers between steps).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from rlreason.controller import Trainer
from rlreason.tracking import PhaseTimer


class PipelinedTrainer(Trainer):
    def setup(self) -> None:
        # one background thread runs, in submission order, everything that uses the rollout workers:
        # collections, weight loads, evaluation; the order alone fixes which weights each rollout sees
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlreason-rollouts")
        self.ahead: deque[tuple[int, Future, PhaseTimer]] = deque()  # (step, its collection, its timer)
        self.loads: list[Future] = []
        self.pipeline_started = False
        super().setup()

    def start_pipeline(self) -> None:
        """From the first RL step on, generation and training run at the same time: automatic thread
        counts split the CPUs between every rollout worker and learner (on 2 cores, one each). The
        warm-up before it has each group to itself, as in the synchronous loop."""
        from rlreason.cluster import threads_per_actor

        both = self.cfg.rollout.workers + self.cfg.learner.world_size
        self.rollout.set_threads(threads_per_actor(self.cfg.rollout.threads, self.cpus, both))
        self.learners.set_threads(threads_per_actor(self.cfg.learner.threads, self.cpus, both))
        self.pipeline_started = True

    def step(self, step: int) -> dict[str, float]:
        if not self.pipeline_started:
            self.start_pipeline()
        if not self.ahead:  # the first step, and the first after a drain: nothing was collected ahead
            self._submit(step)
        first, future, collected = self.ahead.popleft()
        assert first == step, (first, step)
        t = PhaseTimer()
        with t("wait"):  # the learner's idle time: this step's rollouts were not ready yet
            groups = future.result()
        self._check_loads()
        for ahead in range(step + 1, step + 1 + self.cfg.trainer.max_staleness - len(self.ahead)):
            if ahead > self.cfg.trainer.total_steps or self._saves_before(step, ahead):
                break
            self._submit(ahead)
        metrics = self.learn(step, groups, t)  # time/step: this thread's wall time (waiting included)
        metrics.update({f"time/{k}": v for k, v in collected.times.items()})  # overlapped the previous step
        metrics["rollout/staleness"] = float(step - 1 - groups.rollout.weights_version)
        return metrics

    def sync_weights(self, version: int) -> None:
        """Publish now; the rollout workers load after the collections already queued (no waiting here)."""
        handle = self.learners.publish_weights(version, self.rollout)
        self.loads.append(self.pool.submit(self.rollout.load_weights, handle, version))

    def after_step(self, step: int, metrics: dict[str, float]) -> None:
        """Evaluation and checkpoints run behind this step's weight load (the evaluation sees them)."""
        if self.evaluates_at(step) or self.saves_at(step):
            self.pool.submit(super().after_step, step, metrics).result()
        else:
            super().after_step(step, metrics)

    def _submit(self, step: int) -> None:
        timer = PhaseTimer()
        self.ahead.append((step, self.pool.submit(self.collect, step, timer), timer))

    def _check_loads(self) -> None:
        """Raise a failed weight load here, in the loop (a finished future is dropped)."""
        for future in [f for f in self.loads if f.done()]:
            self.loads.remove(future)
            future.result()

    def _saves_before(self, step: int, ahead: int) -> bool:
        """A checkpoint after one of steps step .. ahead-1: collecting ``ahead`` now would cross it."""
        return any(self.saves_at(s) for s in range(step, ahead))

    def close(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is not None:  # a collection in flight ends with the Ray session (Ctrl-C must not wait for it)
            pool.shutdown(wait=False, cancel_futures=True)
        super().close()
