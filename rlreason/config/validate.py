"""Cross-field checks of a RunConfig, run before any model or cluster starts.

Each check explains what is wrong and what would be valid. Registered entries are resolved
here too, so a misspelt algorithm or reward fails in seconds, not after the model loads.
"""

from __future__ import annotations

import math

from rlreason.config.compose import ConfigError
from rlreason.config.schema import RunConfig
from rlreason.registry import RegistryError, check_kwargs

DTYPES = ("float32", "bfloat16")
LOGGERS = ("console", "jsonl", "wandb", "tensorboard")
ENGINES = ("native", "vllm")
WEIGHT_SYNC_MODES = ("auto", "broadcast", "object_store")  # rlreason.workers.weights
SPEC_DRAFTERS = ("eagle", "lm", "ngram")
MAX_K = 16


def validate(cfg: RunConfig) -> None:
    """Raise ConfigError on the first impossible setting."""
    for check in (_check_model, _check_data, _check_rollout, _check_algorithm, _check_learner,
                  _check_rewards, _check_trainer, _check_operations, _check_sampling, _check_spec):
        check(cfg)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_model(cfg: RunConfig) -> None:
    m = cfg.model
    _require(bool(m.path) or bool(m.builder),
             "model.path is not set: give a Hugging Face model dir or hub id (or model.builder=module:function); "
             "a recipe file that should build on a built-in recipe starts with `defaults: [quickstart, _self_]`")
    _require(m.dtype in DTYPES,
             f"model.dtype={m.dtype!r} is not supported; use one of {', '.join(DTYPES)} "
             "(float16 does not run on CPU; bfloat16 does everywhere)")


def _check_data(cfg: RunConfig) -> None:
    d = cfg.data
    _require(bool(d.train) or bool(d.generator),
             "data.train is not set: give a .jsonl/.parquet file, a directory or a hub dataset name "
             "(or data.generator=module:function)")
    _require(d.prompts_per_step >= 1, f"data.prompts_per_step must be >= 1, got {d.prompts_per_step}")
    _require(d.max_prompt_length >= 1, f"data.max_prompt_length must be >= 1, got {d.max_prompt_length}")
    try:
        d.prompt_template.format(prompt="x")
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"data.prompt_template={d.prompt_template!r} must be a format string whose only "
                          f"field is {{prompt}} ({type(e).__name__}: {e})") from None


def vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _check_rollout(cfg: RunConfig) -> None:
    r = cfg.rollout
    _require(r.engine in ENGINES, f"rollout.engine={r.engine!r}: available engines are {', '.join(ENGINES)}")
    c = cfg.cluster
    # checked before vLLM's presence: a GPU-less placement is wrong on every machine
    _require(r.engine != "vllm" or (c.placement != "none" and c.gpus_per_node > 0),
             f"rollout.engine=vllm runs on GPUs, but with cluster.placement={c.placement} and cluster.gpus_per_node="
             f"{c.gpus_per_node} no actor asks Ray for a GPU, and Ray then hides every GPU from it (vLLM finds no "
             "device, the learners fall back to CPU): set cluster.placement=colocate (or split) and "
             "cluster.gpus_per_node=<GPUs per node>")
    _require(r.engine != "vllm" or vllm_installed(),
             "rollout.engine=vllm needs vLLM, which is not installed here: pip install -e '.[gpu]' on a CUDA "
             "machine, or use rollout.engine=native (PyTorch, CPU or GPU)")
    _require(r.engine != "vllm" or not r.spec.enable or r.spec.drafter == "ngram" or not r.spec.draft_vocab,
             f"rollout.engine=vllm with rollout.spec.drafter={r.spec.drafter} and rollout.spec.draft_vocab="
             f"{r.spec.draft_vocab}: vLLM's EAGLE-1 and draft-model drafters propose over the full vocabulary; "
             "set rollout.spec.draft_vocab=0, or use rollout.engine=native for a reduced draft vocabulary")
    _require(r.engine != "vllm" or not r.spec.enable or str(r.spec.k) != "0",
             "rollout.engine=vllm with rollout.spec.k=0: vLLM has no speculative loop to run without drafts; "
             "set rollout.spec.enable=false for plain decoding, or a K > 0 (or auto)")
    _require(0 < r.gpu_memory_utilization <= 1,
             f"rollout.gpu_memory_utilization must be in (0, 1], got {r.gpu_memory_utilization}")
    longest = cfg.data.max_prompt_length + r.max_new_tokens
    _require(r.max_model_len is None or r.max_model_len >= longest,
             f"rollout.max_model_len={r.max_model_len} is shorter than the longest sequence, data.max_prompt_length + "
             f"rollout.max_new_tokens = {longest}: raise it, or leave it null")
    _require(r.n >= 1, f"rollout.n (samples per prompt) must be >= 1, got {r.n}")
    _require(r.temperature >= 0, f"rollout.temperature must be >= 0 (0 = greedy), got {r.temperature}")
    _require(0 < r.top_p <= 1, f"rollout.top_p must be in (0, 1], got {r.top_p}")
    _require(r.top_k >= 0, f"rollout.top_k must be >= 0 (0 = off), got {r.top_k}")
    _require(r.max_new_tokens >= 1, f"rollout.max_new_tokens must be >= 1, got {r.max_new_tokens}")
    _require(r.workers >= 1, f"rollout.workers must be >= 1, got {r.workers}")


def _check_algorithm(cfg: RunConfig) -> None:
    from rlreason.algorithms import ADVANTAGES, POLICY_LOSSES
    from rlreason.algorithms.aggregation import AGG_MODES
    from rlreason.algorithms.kl import KL_ESTIMATORS

    a = cfg.algorithm
    try:
        adv = ADVANTAGES.entry(a.advantage)
        loss = POLICY_LOSSES.entry(a.loss)
        check_kwargs(adv.fn, a.advantage_kwargs, "algorithm.advantage_kwargs")
        check_kwargs(loss.fn, a.loss_kwargs, "algorithm.loss_kwargs")
    except RegistryError as e:
        raise ConfigError(f"algorithm: {e}") from None
    if adv.traits.get("needs_groups") and cfg.rollout.n < 2:
        raise ConfigError(
            f"algorithm.advantage={a.advantage!r} compares responses within a prompt's group, but "
            f"rollout.n={cfg.rollout.n}: every advantage would be 0 and nothing would be learned. "
            "Set rollout.n >= 2 (GRPO papers use 8-64), or pick an estimator without a group baseline.")
    _check_loss_traits(cfg, loss)
    _require(a.agg_mode in AGG_MODES, f"algorithm.agg_mode={a.agg_mode!r}: valid modes are {', '.join(AGG_MODES)}")
    _require(a.sum_norm_divide_by in ("N*C", "C"),
             f"algorithm.sum_norm_divide_by={a.sum_norm_divide_by!r}: use 'N*C' (paper, TRL) or 'C' (verl)")
    _require(a.kl_estimator in KL_ESTIMATORS,
             f"algorithm.kl_estimator={a.kl_estimator!r}: valid estimators are {', '.join(KL_ESTIMATORS)}")
    _require(a.kl_coef >= 0, f"algorithm.kl_coef must be >= 0, got {a.kl_coef}")
    _require(a.agg_constant is None or a.agg_constant > 0,
             f"algorithm.agg_constant must be > 0 or null, got {a.agg_constant}")
    _require(not a.kl_in_reward or a.kl_coef > 0,
             "algorithm.kl_in_reward=true puts kl_coef · k1 in the reward, but algorithm.kl_coef=0: "
             "set kl_coef > 0 (REINFORCE++: 0.001) or kl_in_reward=false")
    _require(a.adv_clip is None or a.adv_clip > 0, f"algorithm.adv_clip must be > 0 or null, got {a.adv_clip}")
    _require(a.sft_coef >= 0, f"algorithm.sft_coef must be >= 0, got {a.sft_coef}")


def _check_loss_traits(cfg: RunConfig, loss) -> None:
    """What a policy loss declares about its batches (registry traits), checked against the run."""
    name = cfg.algorithm.loss
    if loss.traits.get("needs_groups") and cfg.rollout.n < 2:
        raise ConfigError(f"algorithm.loss={name!r} compares the responses of a prompt, but rollout.n="
                          f"{cfg.rollout.n}: set rollout.n >= 2 (DRPO uses 8)")
    if loss.traits.get("keep_groups"):
        _require(cfg.learner.updates_per_step <= cfg.data.prompts_per_step,
                 f"algorithm.loss={name!r} keeps each prompt's responses in one mini-batch, so "
                 f"learner.updates_per_step={cfg.learner.updates_per_step} cannot exceed data.prompts_per_step="
                 f"{cfg.data.prompts_per_step}")


def _check_learner(cfg: RunConfig) -> None:
    lr = cfg.learner
    _require(lr.world_size >= 1, f"learner.world_size must be >= 1, got {lr.world_size}")
    _require(lr.zero_stage in (0, 1, 2, 3), f"learner.zero_stage must be 0, 1, 2 or 3, got {lr.zero_stage}")
    _require(lr.micro_batch_size >= 1, f"learner.micro_batch_size must be >= 1, got {lr.micro_batch_size}")
    _require(lr.updates_per_step >= 1, f"learner.updates_per_step must be >= 1, got {lr.updates_per_step}")
    _require(lr.epochs >= 1, f"learner.epochs must be >= 1, got {lr.epochs}")
    _require(lr.lr_schedule in ("constant", "cosine"),
             f"learner.lr_schedule={lr.lr_schedule!r}: use constant or cosine")
    _require(len(lr.betas) == 2 and all(0.0 <= b < 1.0 for b in lr.betas),
             f"learner.betas must be two values in [0, 1), got {lr.betas}")
    _require(math.isfinite(lr.lr) and lr.lr > 0, f"learner.lr must be a finite number > 0, got {lr.lr}")
    _require(math.isfinite(lr.weight_decay) and lr.weight_decay >= 0,
             f"learner.weight_decay must be >= 0, got {lr.weight_decay}")
    _require(math.isfinite(lr.grad_clip) and lr.grad_clip >= 0,
             f"learner.grad_clip must be >= 0 (0 = off), got {lr.grad_clip}")
    _require(lr.warmup_steps >= 0, f"learner.warmup_steps must be >= 0, got {lr.warmup_steps}")
    rows = cfg.data.prompts_per_step * cfg.rollout.n
    _require(lr.updates_per_step <= rows,
             f"learner.updates_per_step={lr.updates_per_step} is more than the {rows} responses of a step "
             f"(data.prompts_per_step × rollout.n)")
    _check_logprob_impl(lr.logprob_impl, lr.logprob_chunk)


def _check_logprob_impl(impl: str, chunk: int) -> None:
    import importlib.util

    from rlreason.kernels.logprobs import IMPLS

    _require(impl in IMPLS, f"learner.logprob_impl={impl!r}: use one of {', '.join(IMPLS)} "
                            "(auto = triton on CUDA, chunked on CPU)")
    _require(impl != "triton" or importlib.util.find_spec("triton") is not None,
             "learner.logprob_impl=triton but Triton is not installed: pip install triton "
             "(it runs on CUDA GPUs), or use logprob_impl=auto")
    _require(chunk >= 0, f"learner.logprob_chunk must be >= 0 (0 = auto), got {chunk}")


def _check_rewards(cfg: RunConfig) -> None:
    from rlreason.rewards.base import resolve

    _require(len(cfg.reward.functions) > 0, "reward.functions is empty: name at least one reward")
    for i, spec in enumerate(cfg.reward.functions):
        where = f"reward.functions[{i}] ({spec.name})"
        try:
            kind = resolve(spec.name).kind  # imports the function here, so a typo fails before any model loads
        except RegistryError as e:
            raise ConfigError(f"{where}: {e}") from None
        _require(kind != "model" or cfg.rollout.engine != "vllm",
                 f"{where} scores with the policy model (a model reward), which the rollout workers hold only with "
                 "rollout.engine=native; vLLM keeps no Hugging Face copy: use rollout.engine=native or drop it")
        for column, wanted in spec.when.items():
            values = list(wanted) if isinstance(wanted, (list, tuple)) else [wanted]
            _require(all(isinstance(x, (str, int, float, bool)) for x in values),
                     f"{where}.when.{column}={wanted!r}: give a value or a list of values to route rows by")
        _require(spec.timeout_s is None or spec.timeout_s > 0, f"{where}.timeout_s must be > 0 or null")
    _require(cfg.reward.timeout_s > 0, f"reward.timeout_s must be > 0, got {cfg.reward.timeout_s}")
    _require(cfg.reward.max_memory_mb == 0 or cfg.reward.max_memory_mb >= 256,
             f"reward.max_memory_mb must be 0 (no limit) or >= 256, got {cfg.reward.max_memory_mb}")
    _require(cfg.reward.max_unscored_steps >= 0,
             f"reward.max_unscored_steps must be >= 0 (0 = never stop), got {cfg.reward.max_unscored_steps}")
    _require(cfg.reward.on_error in ("zero", "skip", "drop_group"),
             f"reward.on_error={cfg.reward.on_error!r}: use 'zero' (score 0), 'skip' (not applicable) or "
             "'drop_group' (drop the prompt's group before advantages)")
    _require(cfg.reward.workers >= 1 and cfg.reward.processes >= 1,
             "reward.workers and reward.processes must be >= 1")
    _require(cfg.reward.extra_processes >= 0, f"reward.extra_processes must be >= 0, got {cfg.reward.extra_processes}")


TRAINER_MODES = ("sync", "pipelined")  # rlreason.modes.MODES


def _check_trainer(cfg: RunConfig) -> None:
    t = cfg.trainer
    _require(t.total_steps >= 0, f"trainer.total_steps must be >= 0, got {t.total_steps}")
    bad = [x for x in t.loggers if x not in LOGGERS]
    _require(not bad, f"trainer.loggers has {bad}; choose from {', '.join(LOGGERS)}")
    _require(t.sft.steps >= 0 and t.sft.batch_size >= 1, "trainer.sft.steps must be >= 0 and batch_size >= 1")
    _require(t.sft.steps == 0 or (math.isfinite(t.sft.lr) and t.sft.lr > 0),
             f"trainer.sft.lr must be a finite number > 0, got {t.sft.lr}")
    _require(t.save_every >= 0, f"trainer.save_every must be >= 0, got {t.save_every}")
    _require(t.mode in TRAINER_MODES, f"trainer.mode={t.mode!r}: use one of {', '.join(TRAINER_MODES)}")
    cap = cfg.algorithm.rollout_is_cap
    _require(cap is None or (math.isfinite(cap) and cap >= 0),
             f"algorithm.rollout_is_cap must be >= 0 (0 = off) or null (auto), got {cap}")
    if t.mode == "pipelined":
        _check_pipelined(cfg)


def _check_pipelined(cfg: RunConfig) -> None:
    """What pipelined generation (rlreason.pipeline) cannot run, with the reason."""
    from rlreason.data.sampler import SAMPLERS
    from rlreason.sampling.base import Sampler

    t = cfg.trainer
    _require(t.max_staleness >= 1, f"trainer.max_staleness={t.max_staleness}: pipelined mode generates at least one "
                                   "step ahead (>= 1); trainer.mode=sync is the loop without staleness")
    _require(not cfg.rollout.spec.enable,
             "trainer.mode=pipelined with rollout.spec.enable=true: the drafter trains on the rollout workers between "
             "steps, which pipelined generation keeps busy; use trainer.mode=sync")
    sampler = SAMPLERS.get(cfg.sampling.sampler)
    _require(getattr(sampler, "observe", Sampler.observe) is Sampler.observe,
             f"trainer.mode=pipelined with sampling.sampler={cfg.sampling.sampler}: this sampler learns from each "
             "update before its next draw, which pipelined generation makes ahead of the update; use trainer.mode=sync")


def _check_operations(cfg: RunConfig) -> None:
    """Checkpoints, evaluation and actor placement (rlreason.checkpoint, .evaluation, .cluster)."""
    from rlreason.cluster import placement_problem

    t, e = cfg.trainer, cfg.eval
    _require(t.eval_every >= 0, f"trainer.eval_every must be >= 0, got {t.eval_every}")
    _require(t.keep_checkpoints >= 0, f"trainer.keep_checkpoints must be >= 0 (0 = all), got {t.keep_checkpoints}")
    _require(e.k >= 1, f"eval.k (samples per prompt) must be >= 1, got {e.k}")
    _require(e.max_prompts >= 0, f"eval.max_prompts must be >= 0 (0 = all), got {e.max_prompts}")
    _require(e.temperature is None or e.temperature >= 0, f"eval.temperature must be >= 0 or null, got {e.temperature}")
    problem = placement_problem(cfg)
    _require(problem is None, problem or "")
    _require(cfg.cluster.weight_sync in WEIGHT_SYNC_MODES, f"cluster.weight_sync must be one of "
             f"{', '.join(WEIGHT_SYNC_MODES)} (rlreason.workers.weights), got {cfg.cluster.weight_sync!r}")


def _check_sampling(cfg: RunConfig) -> None:
    """Prompt sampler, dynamic sampling, DOT and the C3PO token budget (rlreason.sampling)."""
    from rlreason.data.sampler import SAMPLERS
    from rlreason.sampling.base import SamplerContext
    from rlreason.sampling.dynamic import DYNAMIC_MODES

    s, d = cfg.sampling, cfg.sampling.dynamic
    try:
        entry = SAMPLERS.entry(s.sampler)
        check_kwargs(entry.fn, s.sampler_kwargs, "sampling.sampler_kwargs")
        # built once on a stand-in dataset, so a bad value (edges, arms) fails here, not after the model loads
        entry.fn(SamplerContext(1, cfg.data.prompts_per_step, cfg.rollout.n, cfg.trainer.seed), **s.sampler_kwargs)
    except (RegistryError, ValueError, TypeError) as e:
        raise ConfigError(f"sampling.sampler={s.sampler!r}: {e}") from None
    _require(d.mode in DYNAMIC_MODES, f"sampling.dynamic.mode={d.mode!r}: use one of {', '.join(DYNAMIC_MODES)}")
    _require(d.metric in ("correct", "reward"), f"sampling.dynamic.metric={d.metric!r}: use correct or reward")
    _require(d.on_exhausted in ("train", "error"), f"sampling.dynamic.on_exhausted={d.on_exhausted!r}: train or error")
    _require(d.oversample >= 1.0, f"sampling.dynamic.oversample must be >= 1, got {d.oversample}")
    _require(d.window >= 1, f"sampling.dynamic.window must be >= 1, got {d.window}")
    _require(0 < d.min_factor <= d.max_factor and d.initial_factor > 0,
             f"sampling.dynamic: need 0 < min_factor <= max_factor and initial_factor > 0, got "
             f"{d.min_factor}, {d.max_factor}, {d.initial_factor}")
    dot = s.dot
    _require(dot.alpha >= 0 and dot.margin > 0 and 0 < dot.success_rate <= 1,
             f"sampling.dot: need alpha >= 0, margin > 0 and success_rate in (0, 1], got {dot.alpha}, {dot.margin}, "
             f"{dot.success_rate}")
    _check_token_budget(cfg)


def _check_token_budget(cfg: RunConfig) -> None:
    s, a = cfg.sampling, cfg.algorithm
    _require(s.token_budget >= 0, f"sampling.token_budget must be >= 0 (0 = off), got {s.token_budget}")
    _require(s.token_selection in ("random", "fifo"), f"sampling.token_selection={s.token_selection!r}: random or fifo")
    if not s.token_budget:
        return
    constant_norm = (a.agg_mode == "seq-mean-token-sum-norm" and a.sum_norm_divide_by == "C"
                     and a.agg_constant == s.token_budget)
    _require(constant_norm, f"sampling.token_budget={s.token_budget} (C3PO) divides the loss by the constant budget: "
             "set algorithm.agg_mode=seq-mean-token-sum-norm, algorithm.sum_norm_divide_by=C and "
             f"algorithm.agg_constant={s.token_budget} (recipe c3po_quickstart does)")
    _require(cfg.learner.updates_per_step == 1,
             f"sampling.token_budget is per optimizer step: set learner.updates_per_step=1 "
             f"(got {cfg.learner.updates_per_step})")


def _check_spec(cfg: RunConfig) -> None:
    """rollout.spec: speculative decoding and its online drafter (rlreason.rollout.spec)."""
    s, t = cfg.rollout.spec, cfg.rollout.spec.train
    _require(s.drafter in SPEC_DRAFTERS, f"rollout.spec.drafter={s.drafter!r}: use one of {', '.join(SPEC_DRAFTERS)} "
             "(eagle: one layer on the target's features; lm: a small standalone LM; ngram: lookup, no training)")
    k = str(s.k)
    _require(k == "auto" or (k.isdigit() and int(k) <= MAX_K),
             f"rollout.spec.k={s.k!r}: give a number of drafts 0-{MAX_K} or auto (the adaptive selector)")
    _require(len(s.arms) > 0 and all(isinstance(a, int) and 0 <= a <= MAX_K for a in s.arms),
             f"rollout.spec.arms={s.arms}: give K values in 0-{MAX_K} (0, plain decoding, is always an arm)")
    _require(0 <= s.epsilon <= 1, f"rollout.spec.epsilon must be in [0, 1], got {s.epsilon}")
    _require(s.hysteresis >= 0, f"rollout.spec.hysteresis must be >= 0, got {s.hysteresis}")
    _require(0 < s.decay <= 1, f"rollout.spec.decay must be in (0, 1], got {s.decay}")
    _require(s.max_verify_tokens >= 0, f"rollout.spec.max_verify_tokens must be >= 0 (0 = no cap), got "
             f"{s.max_verify_tokens}")
    _require(s.draft_vocab >= 0, f"rollout.spec.draft_vocab must be >= 0 (0 = full vocabulary), got {s.draft_vocab}")
    _require(s.drafter_layers >= 1 and s.lm_hidden_size >= 0,
             f"rollout.spec: drafter_layers must be >= 1 and lm_hidden_size >= 0, got {s.drafter_layers}, "
             f"{s.lm_hidden_size}")
    v = s.vllm
    _require(v.saturation_tokens >= 1 and v.draft_cost >= 0 and v.every >= 1,
             f"rollout.spec.vllm: need saturation_tokens >= 1, draft_cost >= 0 and every >= 1, got "
             f"{v.saturation_tokens}, {v.draft_cost}, {v.every}")
    _require(t.mode in ("deterministic", "spot", "off"),
             f"rollout.spec.train.mode={t.mode!r}: use deterministic (train after each RL step), spot (train on "
             "rollout worker 0 while it is idle) or off (frozen drafter)")
    _require(t.warmup_steps >= 0, f"rollout.spec.train.warmup_steps must be >= 0, got {t.warmup_steps}")
    _require(t.steps >= 0 and t.batch_size >= 1 and t.buffer_steps >= 1,
             f"rollout.spec.train: need steps >= 0, batch_size >= 1 and buffer_steps >= 1, got {t.steps}, "
             f"{t.batch_size}, {t.buffer_steps}")
    _require(t.lr > 0 and t.weight_decay >= 0 and t.grad_clip >= 0,
             f"rollout.spec.train: need lr > 0, weight_decay >= 0 and grad_clip >= 0 (0 = off), got {t.lr}, "
             f"{t.weight_decay}, {t.grad_clip}")
    _require(t.feature_weight >= 0 and t.ce_weight >= 0 and (t.feature_weight > 0 or t.ce_weight > 0),
             f"rollout.spec.train: the loss weights must be >= 0 and not both 0, got feature_weight="
             f"{t.feature_weight}, ce_weight={t.ce_weight}")
    _require(s.drafter != "lm" or t.ce_weight > 0 or t.mode == "off",
             "rollout.spec.drafter=lm has no features to regress: its only loss is the cross-entropy, so "
             "rollout.spec.train.ce_weight must be > 0")
