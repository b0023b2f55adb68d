"""VLLMEngine: the rollout engine on vLLM (the ``gpu`` extra), behind NativeEngine's interface.

``generate(GenerationRequest) -> RolloutBatch`` and ``load_state_dict(state)`` (the policy sync) as
the native engine, plus ``load_drafter_state`` (drafter refresh), ``set_k_table`` / ``rebuild``
(the selector's batch-size -> K table) and ``sleep`` / ``wake_up`` (colocated placement). Only
vLLM's public surface is used: ``LLM(..., speculative_config=...)``, ``SamplingParams``,
``LLM.get_metrics()``, the weight-transfer calls (``start_weight_update``,
``start_draft_weight_update``, ``update_weights``, ``finish_weight_update``: vLLM 0.28 and later,
which the gpu extra requires; an older vLLM is refused at build), ``reset_prefix_cache`` and
``sleep`` / ``wake_up``. The translations live in
``vllm_convert.py``; vllm itself is imported only in ``VLLMEngine.build``.

What vLLM does not offer, and what this engine does instead:
- no per-iteration K control: the adaptive choice is applied as the static schedule
  ``num_speculative_tokens_per_batch_size`` (vLLM PR #32374), fixed when the LLM is built, so a
  new table takes effect at ``rebuild`` (a model reload), which ``replan`` does at a weight sync,
  before the weights are pushed, at most every ``rollout.spec.vllm.every`` syncs;
- no per-iteration timings, so the selector's cost model cannot be learned online here:
  ``planned_table`` combines vLLM's measured per-position acceptance with a modelled cost
  (``rollout.spec.vllm``: uncalibrated defaults; profile and set them);
- no decode-step batch-size curve: ``RolloutBatch.batch_sizes`` stays empty.

Log-probs are vLLM's ``processed_logprobs`` (after the temperature; with top-k/top-p vLLM
renormalises over the kept tokens, unlike the native engine). The learner recomputes old
log-probs either way (speculative.md §5.8: engine log-probs under SD have had bugs).

The online drafter (EAGLE-1 or lm) trains outside vLLM, on a Hugging Face copy of the policy that
rollout worker 0 keeps in step with every sync (rlreason/workers/drafter.py); this engine only
starts from the initial drafter's checkpoint and takes each new version by ``load_drafter_state``.

Not here: the learner half of an NCCL sync (vLLM's trainer-side engine runs in the learner;
``vllm_convert.nccl_update_info`` is the metadata both sides use), EAGLE-3 drafter publishing
(a different architecture from our EAGLE-1/2 drafter), the HF-model paths (``score_tokens``).
Untested on a GPU in this repository so far; the CPU tests cover our own logic with stand-ins.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import torch

from rlreason.rollout.vllm_convert import (
    BUCKET_BYTES, DRAFTER_METHOD, conditional_acceptance, drafter_tensors, ipc_update_info, iteration_cost,
    k_schedule, k_table, read_spec_counters, sampling_kwargs, spec_stats_delta, speculative_config, to_rollout_batch,
    weight_buckets, write_drafter_checkpoint,
)
from rlreason.types import GenerationRequest, RolloutBatch


@dataclass
class TablePlan:
    """``rollout.spec.k=auto`` on vLLM: re-plan the batch-size -> K table from measured acceptance."""

    arms: tuple[int, ...]
    saturation_tokens: int = 256  # the cost model (vllm_convert.iteration_cost)
    draft_cost: float = 0.05
    every: int = 10  # weight syncs between re-plans


@dataclass
class VLLMSettings:
    """Everything ``LLM(...)`` is built from (``settings_from_config`` fills it from a RunConfig)."""

    model: str
    tokenizer: Optional[str] = None
    dtype: str = "bfloat16"
    seed: int = 0
    method: Optional[str] = None  # vLLM speculative method (eagle | eagle3 | draft_model | ngram); None = off
    k: int = 0  # largest K (vLLM sizes its buffers from it)
    draft_model: Optional[str] = None  # draft checkpoint dir (eagle, eagle3, draft_model)
    draft_tp: int = 1
    ngram: tuple[int, int] = (1, 4)
    k_table: Optional[dict[int, int]] = None  # batch size -> K (the selector's table)
    plan: Optional[TablePlan] = None  # set: the table is re-planned from measurements (k=auto)
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.5  # colocated with a learner by default
    enable_sleep_mode: bool = True
    bucket_bytes: int = BUCKET_BYTES
    stage_device: str = "cuda"  # where a bucket is staged for its IPC handles
    max_model_len: Optional[int] = None
    trust_remote_code: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # any other LLM(...) keyword

    def llm_kwargs(self) -> dict[str, Any]:
        kw = dict(model=self.model, tokenizer=self.tokenizer or self.model, dtype=self.dtype, seed=self.seed,
                  tensor_parallel_size=self.tensor_parallel_size, gpu_memory_utilization=self.gpu_memory_utilization,
                  enable_sleep_mode=self.enable_sleep_mode, trust_remote_code=self.trust_remote_code,
                  disable_log_stats=False,  # get_metrics() needs the stat loggers
                  logprobs_mode="processed_logprobs")
        if self.max_model_len:
            kw["max_model_len"] = self.max_model_len
        spec = speculative_config(self.method, self.k, self.draft_model, self.draft_tp, self.ngram, self.k_table)
        if spec:
            kw["speculative_config"] = spec
        return {**kw, **self.extra}


class VLLMEngine:
    def __init__(self, llm, tokenizer, settings: VLLMSettings, sampling_cls):
        """``llm``: a ``vllm.LLM``; ``sampling_cls``: ``vllm.SamplingParams`` (injected so tests need no vLLM)."""
        self.llm, self.tokenizer, self.settings = llm, tokenizer, settings
        self.sampling_cls = sampling_cls
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.asleep = 0  # sleep level in force (0 = awake)
        self.pending_table: Optional[dict[int, int]] = None  # the selector's latest K table
        self.drafter_tensors: Optional[dict[str, torch.Tensor]] = None  # the drafter vLLM holds (vLLM names, CPU)
        self.drafter_lost = False  # a level-2 sleep discarded the drafter's weights with the target's
        self.measured = {"drafts": 0.0, "accepted_pos": []}  # vLLM's counters since the last re-plan
        self.syncs, self.rebuilds = 0, 0

    @classmethod
    def build(cls, settings: VLLMSettings, tokenizer=None) -> "VLLMEngine":
        """Start vLLM (imported here, not at module import)."""
        import dataclasses

        import vllm

        if not hasattr(vllm.LLM, "update_weights"):
            raise RuntimeError(f"vLLM {getattr(vllm, '__version__', '?')} has no weight-transfer API (LLM.update_weights), "
                               "which the policy sync uses: install vllm>=0.28 (pip install 'rlreason[gpu]')")
        kw = settings.llm_kwargs()
        if "logprobs_mode" not in {f.name for f in dataclasses.fields(vllm.EngineArgs)}:
            kw.pop("logprobs_mode")  # older vLLM: raw log-probs (the learner recomputes them anyway)
        from vllm.config import WeightTransferConfig

        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # IPC handles are pickled to the workers
        kw["weight_transfer_config"] = WeightTransferConfig(backend="ipc")
        llm = vllm.LLM(**kw)
        llm.init_weight_transfer_engine({"init_info": {}})  # IPC needs no rendezvous
        return cls(llm, tokenizer or llm.get_tokenizer(), settings, vllm.SamplingParams)

    @property
    def model(self):
        raise NotImplementedError("the vLLM engine holds no Hugging Face model: model-based rewards (score_tokens, "
                                  "e.g. likelihood) need rollout.engine=native")

    # ---- generation ------------------------------------------------------------------------

    def generate(self, req: GenerationRequest) -> RolloutBatch:
        """Sample ``group_sizes[b]`` responses for every prompt (vLLM's ``n``), one seeded request per prompt."""
        if self.asleep == 1:
            self.wake_up()  # level 1 kept the weights (offloaded to CPU memory): everything comes back
        elif self.asleep:
            raise RuntimeError(f"the vLLM engine sleeps (level {self.asleep}): its weights were discarded; sync "
                               "weights (load_state_dict) or call wake_up() before generate()")
        start = time.perf_counter()
        keep = [b for b, g in enumerate(req.group_sizes) if g > 0]  # vLLM needs n >= 1
        prompts = [list(req.prompt_ids[b]) for b in keep]
        sizes = [req.group_sizes[b] for b in keep]
        firsts = [sum(sizes[:i]) for i in range(len(sizes))]  # each response's seed is unique (see _seed)
        params = [self.sampling_cls(**sampling_kwargs(req.sampling, g, seed=_seed(req.seed, first)))
                  for first, g in zip(firsts, sizes)]
        before = self._counters()
        # LLM.generate returns one RequestOutput per prompt, in the prompts' order
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        batch = to_rollout_batch(prompts, sizes, 0, outputs, self.pad_id)
        batch.group_index = torch.tensor([req.group_offset + keep[i] for i in batch.group_index.tolist()],
                                         dtype=torch.long)
        batch.gen_seconds = time.perf_counter() - start
        if self.settings.method:
            batch.stats = spec_stats_delta(before, self._counters(), batch.gen_tokens, self.settings.k)
            self._measure(batch.stats)
        return batch

    def _measure(self, stats: dict[str, float]) -> None:
        """Add one generate call's counters (``spec_stats_delta``'s keys) to what the next re-plan reads."""
        from rlreason.rollout.spec.stats import MAX_POS

        m = self.measured
        m["drafts"] += stats["spec/n/drafts"]
        pos = [stats[f"spec/n/accepted_pos{i + 1}"] for i in range(MAX_POS)]
        m["accepted_pos"] = [a + b for a, b in zip(m["accepted_pos"] or [0.0] * MAX_POS, pos)]

    def _counters(self) -> Optional[dict]:
        return read_spec_counters(self.llm.get_metrics()) if self.settings.method else None

    # ---- weights ---------------------------------------------------------------------------

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Policy sync: the learner's full state dict (Hugging Face names), pushed in byte-capped buckets.

        After a level-2 sleep the drafter's weights were discarded too (they live in the same memory
        pool) while only the target's come back here, so the drafter is pushed again from its copy.
        A sync is also where a re-planned K table takes effect (``replan``): the LLM is rebuilt first,
        and the weights pushed here land in the new one.
        """
        self.replan()
        if self.asleep:  # colocated: the weights' memory first; the KV cache stays free during the copy
            self.wake_up(["weights"])
        self._push(list(state.items()), draft=False)
        if self.drafter_lost and self.drafter_tensors is not None:
            self._push(list(self.drafter_tensors.items()), draft=True)
        self.drafter_lost = False
        if self.asleep:
            self.wake_up(["kv_cache"])  # vLLM schedules again only once fully awake
        self.llm.reset_prefix_cache()  # cached prefixes hold the old policy's KV

    def load_drafter_state(self, state: dict[str, torch.Tensor]) -> list[str]:
        """Drafter refresh (policy first, same pause window); returns the names vLLM has no place for."""
        tensors, dropped = drafter_tensors(state, self.settings.method)
        self._push(list(tensors.items()), draft=True)
        self.remember_drafter(tensors)
        return dropped

    def remember_drafter(self, tensors: dict[str, torch.Tensor]) -> None:
        """Keep a CPU copy of the drafter vLLM holds (vLLM names), to restore it after a level-2 sleep."""
        self.drafter_tensors = {n: t.detach().to("cpu", copy=True) for n, t in tensors.items()}

    def _push(self, named: list, draft: bool) -> None:
        """Weights into vLLM by CUDA IPC, one bucket on the GPU at a time; buckets end at module
        boundaries, so a round never leaves vLLM a half-received layer (vllm_convert.weight_buckets)."""
        (self.llm.start_draft_weight_update if draft else self.llm.start_weight_update)()
        for bucket in weight_buckets(named, self.settings.bucket_bytes):
            staged = [(n, t.to(self.settings.stage_device)) for n, t in bucket]
            self.llm.update_weights({"update_info": ipc_update_info(staged)})
            del staged
            _ipc_collect()  # release the staging memory vLLM's workers no longer map
        self.llm.finish_weight_update()
        _ipc_collect()

    # ---- batch-size -> K table ---------------------------------------------------------------

    def set_k_table(self, table: dict[int, int]) -> bool:
        """Record the selector's table; True when it differs from the engine's (``rebuild`` applies it)."""
        self.pending_table = dict(table)
        return self.needs_rebuild

    def planned_table(self) -> dict[int, int]:
        """The goodput-argmax table from the acceptance measured since the last re-plan and the cost model.

        Batch size 1 keeps K >= 1 whatever the estimate, so acceptance is still measured there and a
        better drafter can win SD back (the least costly place to explore)."""
        plan, kmax = self.settings.plan, self.settings.k
        current = self.settings.k_table or {1: kmax}
        reliable = min((k for k in current.values() if k > 0), default=0)
        accept = conditional_acceptance(self.measured["accepted_pos"], self.measured["drafts"], reliable, kmax)
        table = k_table(accept, iteration_cost(plan.saturation_tokens, plan.draft_cost), [a for a in plan.arms if a <= kmax])
        table[1] = max(table[1], 1)
        return table

    def replan(self) -> None:
        """At every ``plan.every``-th sync: a new table from the measurements; rebuild when it differs."""
        plan = self.settings.plan
        if plan is None:
            return
        self.syncs += 1
        if self.syncs % plan.every == 0 and self.measured["drafts"] > 0:
            self.set_k_table(self.planned_table())
            self.measured = {"drafts": 0.0, "accepted_pos": []}  # the policy and drafter move on
        if self.needs_rebuild:
            self.rebuild()
            self.rebuilds += 1
            self.drafter_lost = True  # the rebuilt LLM loaded the initial drafter's checkpoint

    @property
    def needs_rebuild(self) -> bool:
        pending = self.pending_table
        if pending is None or not self.settings.method:
            return False
        current = self.settings.k_table or {1: self.settings.k}
        return k_schedule(pending, self.settings.k) != k_schedule(current, self.settings.k)

    def rebuild(self) -> None:
        """Rebuild the LLM with the pending K table. Weights come back from ``settings.model``: re-sync after."""
        self.settings = replace(self.settings, k_table=self.pending_table)
        old, self.llm = self.llm, None
        shutdown(old)  # the old engine's memory must be free before the new one sizes its KV cache
        fresh = VLLMEngine.build(self.settings, self.tokenizer)
        self.llm, self.asleep = fresh.llm, 0

    # ---- colocated placement ---------------------------------------------------------------

    def sleep(self, level: int = 1) -> None:
        """Free the GPU for the learner: level 1 offloads weights to CPU and drops the KV cache;
        level 2 drops the weights too (a policy sync must follow before the next generate)."""
        self.llm.sleep(level=level)
        self.asleep = level
        self.drafter_lost = self.drafter_lost or level >= 2

    def wake_up(self, tags: Optional[list[str]] = None) -> None:
        """Reallocate ``tags`` ("weights", "kv_cache"; None = all). Sync order when colocated:
        wake_up(["weights"]) -> load_state_dict -> wake_up(["kv_cache"]) (the KV cache stays free during the copy)."""
        self.llm.wake_up(tags=tags)
        if tags is None or "kv_cache" in tags:
            self.asleep = 0


def _seed(seed: int, first_response: int) -> int:
    """Seed of one prompt's request, ``first_response`` the index of its first response in the batch.

    vLLM seeds the j-th of a request's n samples with seed + j, so consecutive prompts' seeds must be
    n apart: spaced by 1, prompt b's sample j would share a stream with prompt b+1's sample j-1.
    """
    return (seed * 1_000_003 + first_response) % (2**31 - 1)


def shutdown(llm) -> None:
    """Stop an LLM's engine now, not whenever its finalizer runs (any reference left would keep its
    GPU memory): ``LLM.shutdown()`` where vLLM has it, else the engine core's own ``shutdown()``
    (what vLLM's tests call before building a second LLM in one process)."""
    import gc

    stop = getattr(llm, "shutdown", None)
    if stop is None:
        stop = getattr(getattr(getattr(llm, "llm_engine", None), "engine_core", None), "shutdown", None)
    if stop is not None:
        stop()
    del llm
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _ipc_collect() -> None:
    if torch.cuda.is_available():
        torch.cuda.ipc_collect()


def settings_from_config(cfg, model_path: str, run_dir: str, target_config=None, drafter=None) -> VLLMSettings:
    """A RunConfig (``rollout.*``, ``rollout.spec.*``, ``model.*``) -> VLLMSettings.

    ``rollout.spec.k``: a number is a fixed K; ``auto`` takes the largest arm as vLLM's K with
    ``prior_k_table`` until a table planned from measurements replaces it (``rollout.spec.vllm``). An EAGLE or lm ``drafter`` (the
    initial one: ``rollout.spec.build.new_drafter``) is written as a checkpoint under ``run_dir``.
    """
    r, s = cfg.rollout, cfg.rollout.spec
    base = VLLMSettings(model=model_path, tokenizer=cfg.model.tokenizer, dtype=cfg.model.dtype,
                        seed=cfg.trainer.seed, trust_remote_code=cfg.model.trust_remote_code,
                        gpu_memory_utilization=r.gpu_memory_utilization,
                        enable_sleep_mode=cfg.cluster.placement == "colocate",  # sleep frees the GPU for the learner
                        max_model_len=r.max_model_len or cfg.data.max_prompt_length + r.max_new_tokens)
    if not s.enable or str(s.k) == "0":
        return base
    method = DRAFTER_METHOD[s.drafter]
    auto = str(s.k) == "auto"
    k = max(s.arms) if auto else int(s.k)
    draft_dir = None
    if method != "ngram":
        if drafter is None or target_config is None:
            raise ValueError(f"rollout.spec.drafter={s.drafter!r} on vLLM needs the initial drafter and the "
                             "target config")
        draft_dir = write_drafter_checkpoint(drafter, target_config, os.path.join(run_dir, "vllm_drafter"))
    plan = TablePlan(tuple(s.arms), s.vllm.saturation_tokens, s.vllm.draft_cost, s.vllm.every) if auto else None
    return replace(base, method=method, k=k, draft_model=draft_dir, k_table=prior_k_table(k) if auto else None,
                   plan=plan)


def prior_k_table(kmax: int) -> dict[int, int]:
    """Before any measurement: TLT's shape (deepest drafts at batch 1, fewer as the batch grows, off above 32)."""
    return {1: kmax, 2: max(kmax // 2, 1), 5: min(2, kmax), 33: 0}


def engine_for_worker(cfg, model_path: str, tokenizer) -> VLLMEngine:
    """The rollout worker's vLLM engine: policy from ``model_path``, speculative decoding from ``rollout.spec``.

    An EAGLE or lm drafter starts as the seeded initial drafter (the one every native worker
    builds), written to a temporary checkpoint dir vLLM loads; later versions arrive through
    ``load_drafter_state`` (rlreason/workers/drafter.py trains them on rollout worker 0).
    """
    import tempfile

    from transformers import AutoConfig

    spec, drafter, target_config, draft_root = cfg.rollout.spec, None, None, ""
    if spec.enable and spec.drafter != "ngram":
        from rlreason.models import DTYPES
        from rlreason.rollout.spec.build import new_drafter

        target_config = AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
        drafter = new_drafter(spec, target_config, None, seed=cfg.trainer.seed).to(DTYPES[cfg.model.dtype])
        draft_root = tempfile.mkdtemp(prefix="rlreason-vllm-")
    engine = VLLMEngine.build(settings_from_config(cfg, model_path, draft_root, target_config, drafter), tokenizer)
    if drafter is not None:
        engine.remember_drafter(drafter_tensors(drafter.state_dict(), engine.settings.method)[0])
    return engine
