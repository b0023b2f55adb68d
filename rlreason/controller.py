"""The controller: one readable RL loop on the driver, each phase named and timed.

    sample -> generate -> score -> shape -> filter -> release -> logprobs -> advantages -> update -> observe
           -> sync -> drafter -> log -> eval -> checkpoint

``release`` lets colocated vLLM sleep while the learner has the GPU (the sync wakes it); elsewhere a no-op.

``drafter`` (only with rollout.spec.enable) trains the speculative drafter on the step's rollouts against
the just-synced policy and publishes it to the rollout workers (rlreason.workers.drafter).

The first five repeat as generation rounds when dynamic sampling refills the batch (``collect``).

Rollout, reward and learner workers are Ray actors; everything between them is a typed batch.
Checkpoints hold every registered component's state (rlreason.checkpoint describes the
protocol); ``trainer.resume`` restores them and the loop continues at the next step.
Pipelined generation (trainer.mode=pipelined) is a second controller, rlreason.pipeline, built from this
one's ``collect`` and ``learn``. Not here on purpose: multi-turn control flow (a new controller file too).
"""

from __future__ import annotations

from typing import Optional

import torch

from rlreason import batches
from rlreason.config import RunConfig, to_yaml
from rlreason.data.dataset import check_columns, encode_prompts, format_prompt, resolve_data, truncation_note
from rlreason.data.sampler import PromptSampler, build_sampler
from rlreason.models import load_tokenizer, resolve_model_path
from rlreason.rollout.spec.stats import rollout_curve_metrics, spec_metrics
from rlreason.sampling.base import Groups, SamplerContext, StepOutcome
from rlreason.sampling.budget import apply_token_budget
from rlreason.sampling.dot import build_shaper
from rlreason.sampling.dynamic import build_dynamic_sampling
from rlreason.tracking import PhaseTimer, RunLog
from rlreason.types import LogprobResult, RolloutBatch, SamplingParams, SequenceBatch, StepUpdate, TrainBatch
from rlreason.workers import plan
from rlreason.workers.learner import lr_at


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: str):
        self.cfg = cfg
        self.run_dir = run_dir
        self.log = RunLog(run_dir, to_yaml(cfg), cfg.trainer.loggers, cfg.trainer.total_steps,
                          cfg.trainer.project, cfg.trainer.progress)
        self.optimizer_steps = 0
        self.skipped_updates = 0  # optimizer steps skipped for a non-finite loss or gradient
        self.unscored_steps = 0  # steps in a row in which no response got a reward score
        self.generator = torch.Generator().manual_seed(cfg.trainer.seed)

    # ---- setup ------------------------------------------------------------------------------

    def setup(self) -> None:
        from rlreason.checkpoint import Checkpointer
        from rlreason.cluster import build_placement, start_ray, threads_per_actor
        from rlreason.export import ModelFiles
        from rlreason.workers.groups import LearnerGroup, RewardGroup, RolloutGroup

        cfg = self.cfg
        timer = PhaseTimer()
        with timer("data"):
            self.train_set, self.val_set = resolve_data(cfg.data, self.run_dir, cfg.trainer.seed)
            self.model_path = resolve_model_path(cfg.model, self.run_dir, cfg.trainer.seed)
            self.tokenizer = load_tokenizer(cfg.model.tokenizer or self.model_path, cfg.model.trust_remote_code)
            self.prompts = [format_prompt(r, cfg.data, self.tokenizer) for r in self.train_set.rows]
            encoded = encode_prompts(self.prompts, cfg.data, self.tokenizer)
            self.prompt_ids, self.shown_prompts = encoded.ids, encoded.shown
            note = truncation_note(encoded, cfg.data)
            if note:
                self.log.message(note)
            s = cfg.sampling
            self.sampler = build_sampler(s.sampler, SamplerContext(len(self.prompts), cfg.data.prompts_per_step,
                                                                   cfg.rollout.n, cfg.trainer.seed, cfg.data.shuffle),
                                         s.sampler_kwargs)
            self.dynamic = build_dynamic_sampling(s.dynamic, cfg.data.prompts_per_step)
            self.shaper = build_shaper(s, self.tokenizer)
        with timer("ray"):
            cpus = start_ray(cfg.cluster)
            placement = build_placement(cfg)  # slots for learners and rollout workers (cluster.placement)
        with timer("workers"):  # every group starts at once (each actor loads its libraries and model)
            self.cpus = cpus  # the phases alternate here, so each group has the machine to itself
            self.rollout = RolloutGroup(cfg, self.model_path,
                                        threads_per_actor(cfg.rollout.threads, cpus, cfg.rollout.workers),
                                        placement, wait=False)
            self.learners = LearnerGroup(cfg, self.model_path,
                                         threads_per_actor(cfg.learner.threads, cpus, cfg.learner.world_size),
                                         placement, wait=False)
            self.rewards = RewardGroup(cfg, self.rollout.actors)  # rollout actors score model rewards
            self.rollout.ready()
            self.learners.ready()
        self.evaluator = self.build_evaluator()
        self.drafter = self.build_drafter()
        # what a checkpoint holds, restored in this order (protocol: rlreason.checkpoint)
        self.checkpointer = Checkpointer(self.run_dir, cfg.trainer.keep_checkpoints)
        for name, component in (("trainer", self), ("sampler", self.sampler), ("learner", self.learners),
                                ("model", ModelFiles(self.model_path, cfg.model.trust_remote_code))):
            self.checkpointer.register(name, component)
        self.checkpointer.register("dynamic_sampling", self.dynamic, optional=True)  # predictive: survival rates
        if self.drafter is not None:  # optional: SD may be switched on when resuming a run that had it off
            self.checkpointer.register("drafter", self.drafter, optional=True)
        self.log.message(f"run dir {self.run_dir}: {len(self.prompts)} prompts, model {self.model_path}; setup " +
                         ", ".join(f"{k} {v:.0f}s" for k, v in timer.times.items()))

    # ---- the RL step --------------------------------------------------------------------------

    def step(self, step: int) -> dict[str, float]:
        t = PhaseTimer()
        groups = self.collect(step, t)
        with t("release"):  # colocated vLLM sleeps while the learner has the GPU; the sync wakes it
            self.rollout.release_gpu()
        return self.learn(step, groups, t)

    def learn(self, step: int, groups: Groups, t: PhaseTimer) -> dict[str, float]:
        """Everything after the rollouts: logprobs, advantages, update, observe, sync, drafter, log."""
        cfg = self.cfg
        rollout, rewards = groups.rollout, groups.rewards
        rows = [self.train_set.rows[u] for u in groups.uids]
        if len(groups):
            self.check_scored(step, rewards)
        if len(groups) == 0:  # reward errors or dynamic sampling left no group: nothing to learn this step
            self.log.log_reward_errors(step, rewards.errors)
            filtered = groups.stats.get("sampling/groups_filtered", 0)
            self.log.message(f"step {step}: no group left to train on ({filtered:.0f} filtered by dynamic sampling; "
                             "reward errors, if any, in reward_errors.jsonl)")
            return {**batches.dropped_step_metrics(rewards), **groups.stats, **t.metrics()}
        if self.drafter is not None:  # spot mode: worker 0 trains the drafter while it waits for the sync
            self.drafter.spot_start(SequenceBatch.from_rollout(rollout), step)
        with t("logprobs"):  # with on-policy reuse only the reference model runs here, if there is one
            lps = self.logprobs(SequenceBatch.from_rollout(rollout))
        with t("advantages"):
            batch = batches.train_batch(cfg, rollout, rewards, lps, self.sampler.weights(groups))
        with t("update"):  # C3PO (sampling.token_budget): exactly Φ of the batch's tokens
            batch = apply_token_budget(batch, cfg.sampling, self.generator, cfg.algorithm.count_empty_seqs)
            update = self.update(batch)
            if update.logprobs is not None:  # reused: the update's forward computed π_old of the batch's rows
                batch.old_logprobs = update.logprobs.old_logprobs
        with t("observe"):  # the sampler learns from the step (GDRO: per-response loss after the update)
            updated = lambda: self.learners.logprobs(batch.seqs).old_logprobs  # noqa: E731 (run only if asked)
            self.sampler.observe(StepOutcome(step, groups, batch, updated))
        with t("sync"):
            self.sync_weights(version=step)
        drafter_metrics = {}
        if self.drafter is not None:
            with t("drafter"):  # published with the policy it was trained on: both are version `step`
                drafter_metrics = self.drafter.step(SequenceBatch.from_rollout(rollout), version=step)
        with t("log"):
            metrics = batches.step_metrics(rollout, rewards, lps, batch, update)
            metrics.update({**rollout_curve_metrics(rollout.batch_sizes), **spec_metrics(rollout.stats),
                            **drafter_metrics})
            shown = [self.shown_prompts[u] for u in groups.uids]
            self.log.log_samples(batches.sample_rows(step, shown, rollout, rewards, rows, cfg.data.answer_key,
                                                     cfg.trainer.samples_per_step))
            self.log.log_reward_errors(step, rewards.errors)
            for err in rewards.errors[:3]:
                self.log.message(f"step {step}: reward error: {err.splitlines()[0]} (traceback: reward_errors.jsonl)")
            metrics.update(self.fault_metrics(step, update.skipped))
            metrics.update({**groups.stats, **self.sampler.metrics()})
        return {**metrics, **t.metrics()}

    def collect(self, step: int, t: PhaseTimer) -> Groups:
        """Generation rounds until the step's batch is full: one round of data.prompts_per_step prompts,
        unless dynamic sampling (sampling.dynamic) filters groups out and draws again."""
        pool = self.dynamic.pool()
        while pool.wants_more():
            with t("sample"):
                draw = self.sampler.next(step, pool.prompts_wanted())  # prompts and a group size for each
            with t("generate"):
                seed = self.cfg.trainer.seed * 100_003 + step + 10_000_019 * pool.rounds
                rollout = self.rollout.generate([self.prompt_ids[i] for i in draw.indices], draw.group_sizes,
                                                self.sampling(), seed=seed)
            with t("score"):
                groups = self.score(step, rollout, draw.indices)
            with t("shape"):  # DOT truncates length outliers and re-scores them, before the filter sees them
                groups = self.shaper(groups, lambda r, uids: self.score(step, r, uids))
            with t("filter"):  # the sampler sees every scored group (GDRO's pass@k); the filter keeps some
                self.sampler.scored(groups)
                pool.add(groups)
        return pool.result()

    def score(self, step: int, rollout: RolloutBatch, uids: list[int]) -> Groups:
        """Rewards of one round; groups the reward workers marked (reward.on_error=drop_group) leave."""
        prompts, rows = [self.prompts[u] for u in uids], [self.train_set.rows[u] for u in uids]
        rewards = self.rewards.score(batches.score_request(rollout, prompts, rows, step))
        rollout, rewards = batches.drop_groups(rollout, rewards)
        return Groups(rollout, rewards, list(uids)).compact()

    def after_step(self, step: int, metrics: dict[str, float]) -> None:
        """The step's last phases, eval and checkpoint (also after a step whose groups were all dropped);
        their times join the step's row."""
        t = PhaseTimer()
        with t("eval"):
            if self.evaluates_at(step):
                metrics.update({f"eval/{k}": v for k, v in self.evaluator.run(self.rollout, self.rewards, step).items()})
        with t("checkpoint"):
            if self.saves_at(step):
                self.checkpointer.save(step, pending_row=with_phase_times(metrics, t))
        metrics.update(with_phase_times(metrics, t))

    def evaluates_at(self, step: int) -> bool:
        every = self.cfg.trainer.eval_every
        return bool(every) and step % every == 0

    def saves_at(self, step: int) -> bool:
        """A checkpoint after ``step``: every trainer.save_every steps, and the last with save_final."""
        tr = self.cfg.trainer
        return bool(tr.save_every and step % tr.save_every == 0) or (tr.save_final and step == tr.total_steps)

    def check_scored(self, step: int, rewards) -> None:
        """A step in which no response got a score trains on nothing: say so, and stop after
        reward.max_unscored_steps such steps in a row."""
        from rlreason.faults import RunStopped

        if not torch.isnan(rewards.scores).all():
            self.unscored_steps = 0
            return
        self.unscored_steps += 1
        self.log.message(f"step {step}: no response got a reward score: every reward function returned None or "
                         "failed (errors, if any, in reward_errors.jsonl); nothing to learn from")
        limit = self.cfg.reward.max_unscored_steps
        if limit and self.unscored_steps >= limit:
            names = ", ".join(f.name for f in self.cfg.reward.functions)
            raise RunStopped(f"{self.unscored_steps} steps in a row without a single reward score from {names}. "
                             f"Check that the reward applies to this data (its 'when' routing, data.answer_key) and "
                             f"see {self.run_dir}/reward_errors.jsonl; reward.max_unscored_steps=0 lets the run go on")

    def fault_metrics(self, step: int, skipped: int) -> dict[str, float]:
        """Counters of what went wrong and was survived: skipped updates, restarted actors."""
        if skipped:
            self.skipped_updates += skipped
            self.log.message(f"step {step}: non-finite loss or gradient norm; {skipped} optimizer step(s) skipped "
                             f"({self.skipped_updates} so far)")
        return {"update/skipped": float(skipped), "faults/skipped_updates": float(self.skipped_updates),
                "faults/rollout_restarts": float(self.rollout.supervisor.restarts),
                "faults/reward_restarts": float(self.rewards.supervisor.restarts)}

    def sampling(self) -> SamplingParams:
        r = self.cfg.rollout
        return SamplingParams(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                              max_new_tokens=r.max_new_tokens, stop=list(r.stop))

    def logprobs(self, seqs: SequenceBatch) -> LogprobResult:
        """The pass before the update: π_old unless the update supplies it (``batches.reuses_update_logprobs``),
        and the reference model's log-probs when there is one."""
        if not batches.reuses_update_logprobs(self.cfg):
            return self.learners.logprobs(seqs)
        if batches.needs_reference(self.cfg):
            return self.learners.logprobs(seqs, policy=False)
        return LogprobResult(None, None)

    def update(self, batch: TrainBatch) -> StepUpdate:
        """``epochs`` passes over the batch, ``updates_per_step`` optimizer steps each."""
        lr_cfg = self.cfg.learner
        steps, logprobs = [], None
        for _ in range(lr_cfg.epochs):
            for mb in plan.mini_batches(batch, lr_cfg.updates_per_step, self.generator,
                                        self.cfg.algorithm.count_empty_seqs):
                stats, logprobs = self.learners.update(mb, lr=lr_at(self.cfg, self.optimizer_steps))
                self.optimizer_steps += 1
                steps.append(stats)
        return StepUpdate.of(steps, lr_at(self.cfg, self.optimizer_steps - 1), logprobs)

    def sync_weights(self, version: int) -> None:
        """The learner publishes the policy, the rollout workers load it; only a handle passes here."""
        self.rollout.load_weights(self.learners.publish_weights(version, self.rollout), version)

    # ---- supervised warm-up -------------------------------------------------------------------

    def sft_warmup(self) -> None:
        """A few supervised steps on the dataset's demonstrations, so RL starts from a model that
        already produces the answer format."""
        sft = self.cfg.trainer.sft
        rows = self.train_set.rows
        check_columns(self.train_set, [sft.response_key])  # names the row; see trainer.sft.response_key
        sampler = PromptSampler(len(rows), sft.batch_size, self.cfg.trainer.seed + 1)
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        for k in range(1, sft.steps + 1):
            idx = sampler.next()
            responses = [self.tokenizer.encode(str(rows[i][sft.response_key]), add_special_tokens=False) + [eos]
                         for i in idx]
            batch = batches.sft_batch([self.prompt_ids[i] for i in idx], responses, pad)
            stats, _ = self.learners.update(batch, lr=sft.lr, loss_name="sft")
            self.log.log_warmup({"sft_step": k, "loss": stats.loss, "grad_norm": stats.grad_norm})
            self.log.warmup_progress(k, sft.steps, stats.loss)
            if k == sft.steps:
                self.log.message(f"sft warm-up done: {k} steps, loss {stats.loss:.4f}")
        self.learners.reset_reference()  # KL is measured against the warmed-up policy
        self.sync_weights(version=0)
        if self.drafter is not None and self.cfg.rollout.spec.train.warmup_steps:  # in-domain drafter warm start
            demos = list(range(min(len(rows), 1024)))
            responses = [self.tokenizer.encode(str(rows[i][sft.response_key]), add_special_tokens=False) + [eos]
                         for i in demos]
            seqs = batches.sft_batch([self.prompt_ids[i] for i in demos], responses, pad).seqs
            self.log.message(self.drafter.warm_start(seqs))

    # ---- evaluation and checkpoints ---------------------------------------------------------

    def build_drafter(self):
        from rlreason.workers.drafter import DrafterGroup

        spec = self.cfg.rollout.spec
        if not spec.enable or (self.cfg.rollout.engine == "vllm" and spec.drafter == "ngram"):
            return None  # vLLM's n-gram drafter is its own prompt lookup: nothing to train or publish
        return DrafterGroup(self.cfg, self.rollout, self.prompt_ids, self.tokenizer.eos_token_id, len(self.tokenizer))

    def build_evaluator(self):
        from rlreason.data.dataset import DataError
        from rlreason.evaluation import Evaluator

        if not self.cfg.trainer.eval_every:
            return None
        if self.val_set is None:
            raise DataError("trainer.eval_every > 0 but there is no validation set: set data.val "
                            "(or trainer.eval_every=0)")
        return Evaluator(self.cfg, self.val_set, self.tokenizer)

    def resume(self) -> int:
        """The first step to run: 1, or the step after the checkpoint ``trainer.resume`` names."""
        from rlreason.checkpoint import resume_path, set_aside_logs

        path = resume_path(self.cfg.trainer.resume, self.run_dir, self.log.message)
        if path is None:
            if self.cfg.trainer.resume:
                self.log.message("trainer.resume=auto: no checkpoint in this run dir yet; starting at step 1")
            aside = set_aside_logs(self.run_dir)
            if aside:
                self.log.message(f"the logs of an earlier attempt in this run dir are now in {aside}")
            return 1
        step = self.checkpointer.load(path, self.log.message)
        self.sync_weights(version=step)  # rollout workers start from the restored policy
        self.log.message(f"resumed from {path}: continuing at step {step + 1}")
        return step + 1

    def state_dict(self) -> dict:
        """The driver's own training state (checkpoint protocol)."""
        return {"optimizer_steps": self.optimizer_steps, "skipped_updates": self.skipped_updates,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer_steps, self.skipped_updates = state["optimizer_steps"], state["skipped_updates"]
        self.generator.set_state(state["generator"])

    # ---- the whole run ------------------------------------------------------------------------

    def fit(self) -> str:
        try:
            self.setup()
            start = self.resume()
            if self.cfg.trainer.sft.steps and start == 1:  # a resumed policy is already warmed up
                self.sft_warmup()
            self.log.start_rl(start)
            for step in range(start, self.cfg.trainer.total_steps + 1):
                metrics = self.step(step)
                self.after_step(step, metrics)
                self.log.log_step(step, metrics)
        finally:
            self.close()
        return self.run_dir

    def close(self) -> None:
        if getattr(self, "rollout", None) is not None and self.rollout.weights_handle() is not None:
            from rlreason.workers.weights import remove_files

            remove_files(self.rollout.weights_handle())  # the learner's shared weight files
        if getattr(self, "rewards", None) is not None:
            try:
                self.rewards.close()
            except Exception:  # the cluster may already be gone; nothing to recover here
                pass
        self.log.close()


def with_phase_times(metrics: dict[str, float], timer: PhaseTimer) -> dict[str, float]:
    """``metrics`` plus the times of ``timer``'s phases, which also count in time/step."""
    extra = {f"time/{k}": v for k, v in timer.times.items()}
    return {**metrics, **extra, "time/step": metrics.get("time/step", 0.0) + sum(timer.times.values())}
