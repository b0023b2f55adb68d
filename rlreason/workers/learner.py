"""LearnerWorker: one data-parallel rank of the DeepSpeed policy (a Ray actor).

Algorithm-blind: it receives advantages, applies the registered policy loss to micro-batches,
adds the generic KL / entropy terms, and steps. Every rank runs the same number of
micro-batches (shards are padded with fully-masked rows) because ZeRO-2/3 communicate inside
backward. Losses are contributions with *global* denominators, so the sum over micro-batches
and ranks is the step's loss whatever the split; DeepSpeed averages gradients over ranks, so
each backward is scaled by the world size to turn that average back into the sum.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor

from rlreason.algorithms import POLICY_LOSSES
from rlreason.algorithms.aggregation import AggContext, aggregate
from rlreason.algorithms.base import LossInput
from rlreason.algorithms.kl import KL_ESTIMATORS
from rlreason.algorithms.rollout_correction import rollout_is_weights
from rlreason.config.schema import RunConfig
from rlreason.kernels.lm_head import model_logprobs_entropy
from rlreason.models import load_model
from rlreason.workers.extensions import prepare_extensions_dir
from rlreason.workers.packing import model_inputs, packing_is_exact
from rlreason.workers.reference import maybe_reference
from rlreason.workers.rendezvous import join_loopback_group
from rlreason.rollout.sampling import logprob_temperature
from rlreason.types import LogprobResult, SequenceBatch, TrainBatch, UpdateStats
from rlreason.workers import plan
from rlreason.workers.weights import PolicySource, WeightsPublisher


def _plain_fp32(cfg: RunConfig) -> bool:
    """ZeRO-0 in fp32: DeepSpeed clips there but never reports the norm, so we clip ourselves."""
    return cfg.learner.zero_stage == 0 and cfg.model.dtype == "float32"


def deepspeed_config(cfg: RunConfig) -> dict:
    lr = cfg.learner
    return {
        "train_micro_batch_size_per_gpu": lr.micro_batch_size,
        "gradient_accumulation_steps": 1,
        # We own the accumulation boundary: backward() accumulates, step() reduces and updates,
        # so the number of micro-batches may change from step to step.
        "managed_gradient_accumulation": False,
        "gradient_clipping": 0.0 if _plain_fp32(cfg) else lr.grad_clip,
        "zero_optimization": {"stage": lr.zero_stage},
        "bf16": {"enabled": cfg.model.dtype == "bfloat16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def load_policy(model_path: str, cfg: RunConfig, device: str):
    """The policy to train (and the reference's starting point). With ZeRO-3 it is built and loaded
    partitioned (transformers runs ``deepspeed.zero.Init`` while an ``HfDeepSpeedConfig`` lives), so no
    rank ever holds the whole model."""
    model_cfg = replace(cfg.model, attn_implementation=cfg.learner.attn_implementation or cfg.model.attn_implementation)
    if cfg.learner.zero_stage != 3:
        return load_model(model_path, model_cfg, device)
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    marker = HfDeepSpeedConfig(deepspeed_config(cfg))  # noqa: F841 (transformers holds only a weak reference)
    try:
        return load_model(model_path, model_cfg, device)
    finally:
        unset_hf_deepspeed_config()


def require_own_accumulation(engine, version: str) -> None:
    """The engine must leave the accumulation boundary to us (``managed_gradient_accumulation=False``):
    DeepSpeed releases that ignore the key would step every ``gradient_accumulation_steps`` backward
    calls instead, silently, and apply a wrong update."""
    managed = getattr(engine, "managed_gradient_accumulation", None)
    if managed is None or managed():
        raise RuntimeError(f"DeepSpeed {version} does not let the caller own gradient accumulation "
                           "(managed_gradient_accumulation=false, DeepSpeed >= 0.19.8 for ZeRO 0-3); the learner "
                           "would apply wrong updates. Install deepspeed>=0.19.8 (the lock has 0.19.8).")


def rollout_is_cap(cfg: RunConfig) -> float:
    """The truncation of the rollout importance weights (algorithm.rollout_is_cap; 0 = off)."""
    cap = cfg.algorithm.rollout_is_cap
    if cap is None:
        return 2.0 if cfg.trainer.mode == "pipelined" else 0.0
    return float(cap)


def lr_at(cfg: RunConfig, step: int) -> float:
    """Learning rate of RL optimizer step ``step`` (0-based): linear warm-up, then constant or cosine."""
    lr = cfg.learner
    if step < lr.warmup_steps:
        return lr.lr * (step + 1) / lr.warmup_steps
    if lr.lr_schedule == "cosine":
        total = max(cfg.trainer.total_steps * lr.updates_per_step * lr.epochs - lr.warmup_steps, 1)
        progress = min((step - lr.warmup_steps) / total, 1.0)
        return lr.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr.lr


class LearnerWorker(PolicySource):  # PolicySource: the weight sync (rlreason.workers.weights)
    def __init__(self, cfg: RunConfig, model_path: str, rank: int, world_size: int, master: str, threads: int):
        host, port = master.split(":")
        os.environ.update(MASTER_ADDR=host, MASTER_PORT=port, RANK=str(rank), WORLD_SIZE=str(world_size),
                          LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        torch.set_num_threads(max(threads, 1))
        torch.manual_seed(cfg.trainer.seed)
        for note in prepare_extensions_dir():  # before DeepSpeed builds its ops (rlreason.workers.extensions)
            print(f"rlreason learner {rank}: {note}", flush=True)
        import deepspeed

        backend = "gloo" if not torch.cuda.is_available() else "nccl"
        self._rendezvous = join_loopback_group(master, rank, world_size, backend)  # a local run: 127.0.0.1 only
        deepspeed.init_distributed(dist_backend=backend)
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        model = load_policy(model_path, cfg, self.device)
        self.loaded_partitioned = hasattr(next(model.parameters()), "ds_id")  # ZeRO-3: built under zero.Init
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learner.lr, betas=tuple(cfg.learner.betas),
                                      weight_decay=cfg.learner.weight_decay)
        self.grad_norm: Optional[float] = None
        self._skipped = False  # set by _clip_hook when it skips a step with a non-finite gradient
        if _plain_fp32(cfg):
            optimizer.register_step_pre_hook(self._clip_hook)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=deepspeed_config(cfg))
        require_own_accumulation(self.engine, deepspeed.__version__)
        self.ref = maybe_reference(cfg, model_path, self.device, load_policy, deepspeed_config(cfg))
        self.engine.eval()
        self.packing = packing_is_exact(self.engine, self.device)  # every rank: ZeRO-3 gathers in forward
        if not self.packing and rank == 0:
            print("rlreason learner: this model mixes packed sequences; micro-batches stay padded", flush=True)
        POLICY_LOSSES.entry(cfg.algorithm.loss)  # fail here, naming the loss, if it does not resolve
        self.temperature = logprob_temperature(cfg.rollout.temperature)
        self.optimizer_steps = 0
        self.is_cap = rollout_is_cap(cfg)
        self.publisher: Optional[WeightsPublisher] = None  # rank 0's shared weight files (first publish)

    def ready(self) -> bool:
        return True

    def set_threads(self, threads: int) -> None:
        """torch threads from now on (pipelined mode splits the CPUs once generation and training overlap)."""
        torch.set_num_threads(max(threads, 1))

    def _clip_hook(self, optimizer, args, kwargs) -> None:
        # runs inside engine.step() after the gradient all-reduce, before AdamW's update
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        max_norm = self.cfg.learner.grad_clip if self.cfg.learner.grad_clip > 0 else float("inf")
        self.grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if not math.isfinite(self.grad_norm):
            # AdamW leaves parameters without a gradient untouched (state included): the step is skipped,
            # as DeepSpeed skips it in every other configuration
            for p in params:
                p.grad = None
            self._skipped = True

    # ---- forward passes -------------------------------------------------------------------

    def _forward(self, model, seqs: SequenceBatch, with_entropy: bool) -> tuple[Tensor, Optional[Tensor]]:
        targets = seqs.input_ids[:, seqs.prompt_width:].to(self.device)
        inputs, where = model_inputs(seqs, self.device, self.packing)
        # position p-1+j predicts response token j (packed: at ``where``); the fused head never builds [n, L, V] logits
        return model_logprobs_entropy(model, inputs, targets, seqs.prompt_width - 1, self.temperature, with_entropy,
                                      impl=self.cfg.learner.logprob_impl, chunk=self.cfg.learner.logprob_chunk,
                                      where=where)

    @torch.no_grad()
    def compute_logprobs(self, seqs: SequenceBatch, micro_sizes: list[int], policy: bool = True) -> LogprobResult:
        """A shard's log-probs and entropy under the current policy (``policy``) and, with a reference
        model, its reference log-probs, micro-batch by micro-batch (rlreason.workers.plan)."""
        self.engine.eval()
        width = seqs.response_mask.shape[1]
        olds, ents, refs = [], [], []
        for mb in plan.split(seqs, micro_sizes):
            if policy:
                lp, ent = self._forward(self.engine, mb, with_entropy=True)
                olds.append(_widen(lp, width))
                ents.append(_widen(ent, width))
            if self.ref is not None:
                refs.append(_widen(self._forward(self.ref.model, mb, with_entropy=False)[0], width))
        cat = lambda xs: torch.cat(xs) if xs else None  # noqa: E731
        return LogprobResult(cat(olds), cat(ents), cat(refs))

    # ---- one optimizer step ---------------------------------------------------------------

    def update(self, batch: TrainBatch, micro_sizes: list[int], lr: float,
               loss_name: Optional[str] = None) -> tuple[UpdateStats, Optional[LogprobResult]]:
        """Accumulate gradients over the micro-batches of this rank's shard, then step.

        Returns sums over this rank (the driver adds ranks) and, when ``batch.old_logprobs`` is None
        (on-policy reuse), the log-probs and entropy of the shard's rows before the step.
        """
        self.engine.train()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        entry = POLICY_LOSSES.entry(loss_name or self.cfg.algorithm.loss)
        kwargs = {} if loss_name else dict(self.cfg.algorithm.loss_kwargs)
        ctx = self._agg_context(batch, sft=loss_name is not None)
        parts = plan.split(batch, micro_sizes)
        terms = self._step_terms(parts, entry, kwargs, ctx, regularise=loss_name is None)
        reuse = batch.old_logprobs is None
        sums, olds, ents = UpdateStats(), [], []
        for mb in parts:
            loss, stats, lp, ent = self._micro_loss(mb, entry.fn, kwargs, ctx, loss_name is None, terms, reuse)
            if not math.isfinite(stats.loss):
                # a non-finite loss must not move the weights: NaN gradients make the global gradient-norm
                # check skip the step on every rank (a local skip would desynchronise the ranks)
                loss = loss * float("nan")
            self.engine.backward(loss * self.world_size)
            sums = sums.add(stats)
            if reuse:
                olds.append(_widen(lp, batch.seqs.response_mask.shape[1]))
                ents.append(_widen(ent, batch.seqs.response_mask.shape[1]))
        skipped_before, self._skipped = self.engine.skipped_steps, False
        self.engine.step()
        self.optimizer_steps += 1
        grad_norm = self.grad_norm if _plain_fp32(self.cfg) else self.engine.get_global_grad_norm()
        sums.grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        sums.skipped = bool(self._skipped or self.engine.skipped_steps > skipped_before)
        return sums, (LogprobResult(torch.cat(olds), torch.cat(ents)) if reuse else None)

    def _agg_context(self, batch: TrainBatch, sft: bool) -> AggContext:
        a = self.cfg.algorithm
        return AggContext(
            mode="token-mean" if sft else a.agg_mode,
            global_tokens=batch.global_tokens, global_seqs=batch.global_seqs, global_rows=batch.global_rows,
            constant=a.agg_constant or float(self.cfg.rollout.max_new_tokens),
            sum_norm_divide_by=a.sum_norm_divide_by,
        )

    def _step_terms(self, parts: list[TrainBatch], entry, kwargs: dict, ctx: AggContext,
                    regularise: bool) -> "StepTerms":
        """What the step's micro-batches share, from the loss's registry traits and the switches."""
        sums = self._step_sums(parts, entry.traits["step_sums"], kwargs) if "step_sums" in entry.traits else {}
        correct = self._correct_context(parts, ctx) if regularise and self.cfg.algorithm.sft_coef > 0 else None
        return StepTerms(replace(ctx, mode=entry.traits.get("agg_mode", ctx.mode)), sums, correct)

    @torch.no_grad()
    def _step_sums(self, parts: list[TrainBatch], fn, kwargs: dict) -> dict[str, float]:
        """A loss's ``step_sums`` trait over every micro-batch of every rank, at the current weights.

        One no-grad forward per micro-batch before the backward pass: the price of a statistic of the
        whole step (DRPO's KL) that the loss needs before any gradient, exactly and split-invariant.
        """
        self.engine.eval()
        totals: dict[str, Tensor] = {}
        for mb in parts:
            lp, _ = self._forward(self.engine, mb.seqs, with_entropy=False)
            for k, v in fn(self._loss_input(mb, lp, None), **kwargs).items():
                totals[k] = totals.get(k, 0.0) + v.detach().double()
        self.engine.train()
        keys = sorted(totals)  # the same order on every rank
        return dict(zip(keys, self._all_reduce([totals[k] for k in keys])))

    def _correct_context(self, parts: list[TrainBatch], ctx: AggContext) -> AggContext:
        """``ctx`` with the counts of the correct responses (the SFT term's denominators), over all ranks."""
        tokens, seqs = 0.0, 0.0
        for mb in parts:
            m = mb.seqs.response_mask * (mb.correct == 1).to(mb.seqs.response_mask.dtype)[:, None]
            tokens, seqs = tokens + m.sum(), seqs + (m.sum(-1) > 0).sum()
        tokens, seqs = self._all_reduce([torch.as_tensor(tokens), torch.as_tensor(seqs)])
        return replace(ctx, global_tokens=tokens, global_seqs=seqs, global_rows=seqs)

    def _all_reduce(self, values: list[Tensor]) -> list[float]:
        """Sums over the learner ranks (every rank must call, with the same number of values)."""
        t = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in values]).to(self.device)
        if self.world_size > 1:
            torch.distributed.all_reduce(t)
        return t.cpu().tolist()

    def _loss_input(self, mb: TrainBatch, lp: Tensor, ent: Optional[Tensor], step_sums=None) -> LossInput:
        dev = self.device
        # on-policy reuse: π_old is the policy of this very forward, so its detached log-probs are exact
        old = lp.detach() if mb.old_logprobs is None else mb.old_logprobs.to(dev)
        return LossInput(
            logprobs=lp, old_logprobs=old, advantages=mb.advantages.to(dev),
            response_mask=mb.seqs.response_mask.to(dev), rewards=mb.rewards.to(dev), correct=mb.correct.to(dev),
            group_index=mb.group_index.to(dev),
            ref_logprobs=None if mb.ref_logprobs is None else mb.ref_logprobs.to(dev),
            entropy=ent, global_tokens=mb.global_tokens, global_groups=mb.global_groups,
            max_response_length=self.cfg.rollout.max_new_tokens, step_sums=dict(step_sums or {}),
        )

    def _micro_loss(self, mb: TrainBatch, loss_fn, kwargs: dict, ctx: AggContext, regularise: bool,
                    terms: "StepTerms", with_entropy: bool = False):
        """The micro-batch's loss contribution, its stats, and its log-probs and entropy (detached)."""
        a = self.cfg.algorithm
        mask = mb.seqs.response_mask.to(self.device)
        need_entropy = regularise and a.entropy_coef != 0
        lp, ent = self._forward(self.engine, mb.seqs, with_entropy=need_entropy or with_entropy)
        inp = self._loss_input(mb, lp, ent if need_entropy else None, terms.step_sums)
        ref = inp.ref_logprobs
        out = loss_fn(inp, **kwargs)
        token_loss, token_sums = out.token_loss, {}
        if regularise and self.is_cap:  # rollouts from an older policy (pipelined): truncated IS to π_old
            weight, truncated = rollout_is_weights(inp.old_logprobs, mb.rollout_logprobs.to(self.device), self.is_cap)
            token_loss = token_loss * weight
            token_sums["rollout_is/weight"] = (weight * mask).sum().item()
            token_sums["rollout_is/truncated"] = (truncated * mask).sum().item()
        policy_loss = aggregate(token_loss, mask, terms.policy_ctx)
        loss = policy_loss
        if regularise and ref is not None:
            kl = KL_ESTIMATORS[a.kl_estimator](lp, ref)
            if a.kl_coef > 0 and not a.kl_in_reward:  # with kl_in_reward the KL went into the advantages
                loss = loss + a.kl_coef * aggregate(kl, mask, ctx)
            token_sums["kl"] = (kl.detach() * mask).sum().item()
        if need_entropy:
            loss = loss - a.entropy_coef * aggregate(ent, mask, ctx)
        if terms.correct_ctx is not None:  # SFT term on correct rollouts (Klear-Reasoner, algorithms.md §9)
            correct = (inp.correct == 1).to(mask.dtype)[:, None]
            loss = loss + a.sft_coef * aggregate(-lp, mask * correct, terms.correct_ctx)
        for name, value in out.token_metrics.items():
            token_sums[name] = (value.detach().float() * mask).sum().item()
        stats = UpdateStats(loss=loss.item(), policy_loss=policy_loss.item(), tokens=mask.sum().item(),
                            token_sums=token_sums)
        detach = lambda x: None if x is None else x.detach().float().cpu()  # noqa: E731
        return loss, stats, detach(lp), detach(ent)

    def reset_reference(self) -> None:
        """Make the reference policy a copy of the current one (after the SFT warm-up: KL is then
        measured against the warmed-up model, as in an SFT -> RL pipeline). Every rank calls."""
        if self.ref is not None:
            self.ref.copy_from(self.engine.module)

    # ---- checkpoints (rlreason.checkpoint; every rank calls) ------------------------------------

    def save_checkpoint(self, path: str) -> None:
        """Weights, optimizer state and counters as a DeepSpeed checkpoint in ``path/deepspeed``;
        a reference policy that is not the initial model (``reset_reference``) goes beside it."""
        self.engine.save_checkpoint(path, tag="deepspeed", save_latest=False, client_state={
            "optimizer_steps": self.optimizer_steps, "torch_rng": torch.get_rng_state()})
        if self.ref is not None and self.ref.is_reset:
            state = self.ref.full_state()  # every rank: ZeRO-3 gathers
            if self.rank == 0:
                torch.save(state, os.path.join(path, "reference.pt"))

    def load_checkpoint(self, path: str) -> None:
        loaded, client = self.engine.load_checkpoint(path, tag="deepspeed", load_optimizer_states=True,
                                                     load_lr_scheduler_states=False)
        if loaded is None:
            raise RuntimeError(f"no DeepSpeed checkpoint in {path}/deepspeed")
        self.optimizer_steps = client["optimizer_steps"]
        torch.set_rng_state(client["torch_rng"])
        ref_path = os.path.join(path, "reference.pt")
        if self.ref is not None and os.path.isfile(ref_path):
            self.ref.load_full(torch.load(ref_path, map_location=self.device), self.rank)


def _widen(x: Tensor, width: int) -> Tensor:
    """[n, w] values of a trimmed micro-batch back to the shard's response width (zeros on the right)."""
    x = x.float().cpu()
    return torch.nn.functional.pad(x, (0, width - x.shape[1])) if x.shape[1] < width else x


@dataclass
class StepTerms:
    """What every micro-batch of one optimizer step shares besides its rows (see ``_step_terms``)."""

    policy_ctx: AggContext  # aggregation of the policy loss: its ``agg_mode`` trait, else algorithm.agg_mode
    step_sums: dict[str, float]  # the loss's ``step_sums`` trait summed over the step ({} without one)
    correct_ctx: Optional[AggContext]  # counts of the correct responses for algorithm.sft_coef (None: off)
