"""The run configuration: one dataclass per section, holding every default exactly once.

Recipes (recipes/*.yaml) and command-line overrides only change these values; validation
(``rlreason.config.validate``) runs before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from rlreason.config.spec_schema import SpecConfig


@dataclass
class ModelConfig:
    path: Optional[str] = None
    """Hugging Face model: a local directory or a hub id. Required unless ``builder`` is set."""
    builder: Optional[str] = None
    """'module:function' writing a fresh model dir (``fn(out_dir, seed=..., **builder_kwargs)``);
    used when ``path`` is null, e.g. the quickstart's tiny model built in code."""
    builder_kwargs: dict[str, Any] = field(default_factory=dict)
    tokenizer: Optional[str] = None
    """Tokenizer dir or hub id; defaults to the model's."""
    dtype: str = "float32"
    """Parameter dtype on the learner and rollout engine: float32 | bfloat16 (fp16 fails on CPU)."""
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False


@dataclass
class DataConfig:
    train: Optional[str] = None
    """Training prompts: a .jsonl/.json/.parquet file, a directory of them, or a hub dataset name."""
    val: Optional[str] = None
    """Optional validation set, same forms as ``train``."""
    split: str = "train"
    """Split to read when ``train`` is a hub dataset."""
    subset: Optional[str] = None
    """Configuration of a ``train`` hub dataset that has several (the hub's "subset", e.g. "en")."""
    generator: Optional[str] = None
    """'module:function' writing jsonl files (``fn(out_dir, seed=..., **generator_kwargs)`` ->
    {"train": path, "val": path}); used when ``train`` is null (procedural tasks)."""
    generator_kwargs: dict[str, Any] = field(default_factory=dict)
    prompt_key: str = "prompt"
    answer_key: str = "answer"
    """Column passed to rewards as ``ground_truth``."""
    system_prompt: Optional[str] = None
    chat_template: bool = False
    """Wrap prompts with the tokenizer's chat template (system prompt + user turn)."""
    prompt_template: str = "{prompt}"
    """Format string applied to the prompt column when no chat template is used."""
    max_prompt_length: int = 512
    """Prompts longer than this (in tokens) are left-truncated with a warning count."""
    prompts_per_step: int = 8
    """B: prompts sampled per RL step."""
    shuffle: bool = True


@dataclass
class RolloutConfig:
    engine: str = "native"
    """native (PyTorch, CPU or GPU) | vllm (GPU; the ``gpu`` extra, rollout/vllm_engine.py)."""
    workers: int = 1
    """Rollout actors; prompts are split evenly between them."""
    n: int = 8
    """G: responses sampled per prompt."""
    temperature: float = 1.0
    """Sampling temperature; 0 = greedy. Learner log-probs use the same temperature."""
    top_p: float = 1.0
    top_k: int = 0
    """0 = off."""
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    """Stop strings (the response keeps them); EOS always stops."""
    batch_size: int = 0
    """Max sequences decoded together per worker (0 = all of the worker's share at once)."""
    threads: int = 0
    """torch threads in each rollout actor (0 = all CPUs of the machine / workers; trainer.mode=pipelined:
    / (workers + learner.world_size) from the first RL step, as generation and training then run at once)."""
    gpu_memory_utilization: float = 0.5
    """vLLM: the share of each GPU its engine may take (weights, activations, KV cache); colocated with a
    learner (cluster.placement=colocate), the learner and worker 0's drafter copy live in the rest."""
    max_model_len: Optional[int] = None
    """vLLM: the longest sequence it plans KV-cache memory for; null = data.max_prompt_length +
    rollout.max_new_tokens (no sequence is longer), not the model's whole context."""
    spec: SpecConfig = field(default_factory=SpecConfig)
    """Speculative decoding (``rollout.spec.enable=true``)."""


@dataclass
class RewardFunctionConfig:
    name: str = "math_verify"
    """Registry name, 'module:function', 'path/to/file.py:function' or an HTTP endpoint 'http://host:port/path'."""
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    when: dict[str, Any] = field(default_factory=dict)
    """Routing: only rows whose columns match, e.g. {data_source: [gsm8k, math]}; other rows get
    "not applicable" from this function. Empty = every row."""
    log_as: Optional[str] = None
    """Name in the metrics (reward/<log_as>/mean); default: the function's name."""
    timeout_s: Optional[float] = None
    """Per-call limit for this function (a batched call scores a whole group or batch); null = reward.timeout_s."""


@dataclass
class RewardConfig:
    functions: list[RewardFunctionConfig] = field(default_factory=lambda: [RewardFunctionConfig()])
    workers: int = 1
    """Reward actors."""
    processes: int = 2
    """Worker processes per reward actor (reward code runs there, with a wall-clock timeout)."""
    timeout_s: float = 10.0
    """Per-call wall-clock limit; a call over it is reported as a timeout."""
    extra_processes: int = 32
    """Extra processes a reward actor may start while calls look hung, so hanging calls overlap
    (a step loses about one timeout) instead of queueing behind each other."""
    on_error: str = "zero"
    """A call that raised, timed out or crashed its process is reported, then scored 0 ("zero"),
    treated as not applicable ("skip": left out of the group statistics, advantage 0), or its
    prompt's whole group is dropped before advantages ("drop_group", counted in reward/dropped_groups)."""
    max_memory_mb: int = 4096
    """Memory limit of each reward process (its data segment); a call that allocates past it fails
    with an out-of-memory error, reported like any failed call. 0 = no limit."""
    max_unscored_steps: int = 3
    """Stop the run after this many steps in a row in which no response got a score (every function
    returned None or failed): it would train on nothing. 0 = never stop."""


@dataclass
class AlgorithmConfig:
    advantage: str = "grpo"
    """Advantage estimator: a registered name or 'module:function'."""
    advantage_kwargs: dict[str, Any] = field(default_factory=dict)
    loss: str = "ppo_clip"
    """Policy loss: a registered name or 'module:function'."""
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    agg_mode: str = "token-mean"
    """token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm."""
    agg_constant: Optional[float] = None
    """C of seq-mean-token-sum-norm (null = rollout.max_new_tokens)."""
    sum_norm_divide_by: str = "N*C"
    """seq-mean-token-sum-norm divides by N*C (Dr. GRPO paper, TRL) or C (verl)."""
    count_empty_seqs: bool = False
    """Count fully-masked sequences in the seq-mean denominators (TRL) or not (verl)."""
    kl_coef: float = 0.0
    """β of the KL-to-reference loss term; > 0 loads a frozen reference model."""
    kl_estimator: str = "k3"
    """k1 | k2 | k3 | abs | k1+ | k3+ (algorithms.md §0.3)."""
    track_kl: bool = False
    """Load the reference model even when kl_coef = 0, to log ``kl``."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient (loss -= coef · Agg(H))."""
    kl_in_reward: bool = False
    """Put the KL to the reference in the reward instead of the loss: each token's reward loses
    kl_coef · k1(lp_old, lp_ref) (no gradient; REINFORCE++, RLOO, PPO-RLHF). Sequence-level
    estimators subtract the response's sum from R; the KL loss term is then off."""
    adv_clip: Optional[float] = None
    """Clip advantages to [-adv_clip, adv_clip] after the estimator (GDRO: 5); null = off."""
    rollout_is_cap: Optional[float] = None
    """Truncated importance sampling for the gap between the policy that generated the rollouts and
    π_old (trainer.mode=pipelined: one update behind): each token's loss is multiplied by
    min(π_old / π_rollout, cap), detached. null = 2.0 in pipelined mode, off otherwise; 0 = off."""
    sft_coef: float = 0.0
    """SFT term on correct rollouts (Klear-Reasoner, 0.1): loss += coef · Agg(-log π) over the responses
    the verifier marked correct, aggregated like the policy loss with those responses' own counts."""


@dataclass
class DynamicSamplingConfig:
    mode: str = "off"
    """off | dapo: drop groups whose metric is constant and draw more prompts until
    data.prompts_per_step groups survive (DAPO, algorithms.md §3.2) | predictive: one round whose size
    is predicted from recent survival rates, every surviving group trained on (DOT's PDS, §12.5)."""
    metric: str = "correct"
    """What must vary within a group for it to be kept: correct (the verifier's verdict, DAPO's acc)
    or reward (the summed reward, e.g. with length terms)."""
    oversample: float = 1.0
    """dapo: prompts drawn per round = ceil(oversample × data.prompts_per_step) (verl's
    gen_batch_size / train_batch_size)."""
    max_rounds: int = 4
    """dapo: generation rounds per step before giving up (verl's max_num_gen_batches; <= 0 = unlimited)."""
    on_exhausted: str = "train"
    """dapo, when max_rounds did not fill the batch: train on the groups kept so far ("train"), or
    stop the run ("error", what verl does). No group kept at all skips the step either way."""
    window: int = 20
    """predictive: steps of survival rates remembered."""
    initial_factor: float = 1.5
    """predictive: prompts drawn at the first step, as a multiple of data.prompts_per_step."""
    min_factor: float = 1.2
    max_factor: float = 5.0
    """predictive: bounds of the factor (1/mean p)(1 + std p); max_factor also when mean p = 0."""


@dataclass
class OutlierTruncationConfig:
    enable: bool = False
    """DOT (algorithms.md §12.5): in groups whose success rate reaches ``success_rate``, cut responses
    longer than T = floor(mean + alpha·std) of the group's lengths to T tokens, then re-score them."""
    alpha: float = 3.0
    margin: float = 32.0
    """Only cut when L - T >= margin tokens (a value in (0, 1): max(int(L·margin), 16) tokens)."""
    success_rate: float = 1.0
    """Groups at or above this share of correct responses are eligible (1.0 = all correct)."""


@dataclass
class SamplingConfig:
    sampler: str = "uniform"
    """Prompt sampler (``rlreason list``): uniform | gdro (Prompt-GDRO advantage reweighting) |
    rollout_gdro (responses per prompt from a shadow-priced budget) | 'module:Class'."""
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    dynamic: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)
    dot: OutlierTruncationConfig = field(default_factory=OutlierTruncationConfig)
    token_budget: int = 0
    """C3PO (algorithms.md §12.6): train each step on exactly this many response tokens (the response
    crossing the budget is cut; later ones are not trained on this step). 0 = off. Pair it with
    algorithm.agg_mode=seq-mean-token-sum-norm, sum_norm_divide_by=C, agg_constant=token_budget."""
    token_selection: str = "random"
    """Order responses enter the token budget: random | fifo (as generated)."""


@dataclass
class LearnerConfig:
    world_size: int = 1
    """DeepSpeed data-parallel learner actors."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0-3."""
    lr: float = 1e-6
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    """Linear learning-rate warm-up, in optimizer steps."""
    lr_schedule: str = "constant"
    """constant | cosine (decays to 0 over trainer.total_steps after warm-up)."""
    grad_clip: float = 1.0
    micro_batch_size: int = 8
    """Sequences per forward/backward on each learner; the loss does not depend on it."""
    updates_per_step: int = 1
    """Optimizer steps per RL step (the batch is split into this many mini-batches)."""
    epochs: int = 1
    """Passes over the step's batch (PPO epochs)."""
    threads: int = 0
    """torch threads per learner actor (0 = CPUs of the machine / world_size; pipelined: / (world_size +
    rollout.workers))."""
    reuse_logprobs: bool = True
    """When the RL step is one on-policy optimizer update (epochs=1, updates_per_step=1), take π_old's
    log-probs from the update's own forward instead of a separate pass (exact; rlreason.batches)."""
    attn_implementation: Optional[str] = None
    """The learner's attention kernel (null = model.attn_implementation, which the rollout engine uses).
    On CPU in bfloat16, eager trains ~25% faster than sdpa, whose CPU backward is slow, while sdpa
    decodes faster (scripts/bench_step.py)."""
    logprob_impl: str = "auto"
    """Log-prob / entropy computation: auto (triton on CUDA, chunked on CPU) | naive (full logits and
    log-softmax) | chunked (PyTorch, O(chunk·V) memory) | triton. Non-naive paths apply the LM head
    chunk by chunk, so the [tokens, vocab] logits are never built (rlreason.kernels.lm_head)."""
    logprob_chunk: int = 0
    """Tokens per chunk of the chunked / triton paths (0 = auto: about 2M logits per chunk)."""


@dataclass
class SFTWarmupConfig:
    steps: int = 0
    """Supervised steps before RL (0 = none)."""
    batch_size: int = 32
    lr: float = 1e-3
    response_key: str = "solution"
    """Dataset column holding the demonstration response."""


@dataclass
class TrainerConfig:
    total_steps: int = 20
    output_dir: Optional[str] = None
    """Run directory (null = runs/<recipe>-<timestamp>)."""
    seed: int = 0
    sft: SFTWarmupConfig = field(default_factory=SFTWarmupConfig)
    loggers: list[str] = field(default_factory=lambda: ["console", "jsonl"])
    """Any of console, jsonl, wandb, tensorboard."""
    project: str = "rlreason"
    """wandb project (wandb runs offline unless WANDB_MODE says otherwise)."""
    samples_per_step: int = 4
    """Rows written to samples.jsonl per step."""
    save_every: int = 0
    """Save a checkpoint every N steps (0 = only at the end when save_final)."""
    save_final: bool = True
    """Save a checkpoint after the last step, so ``rlreason eval`` / ``export`` work on the run dir."""
    keep_checkpoints: int = 0
    """Complete checkpoints to keep, newest first (0 = all)."""
    resume: Optional[str] = None
    """auto (this run dir's latest complete checkpoint, if any) | a checkpoint / run directory | null."""
    eval_every: int = 0
    """Evaluate on the validation set (``eval.*``) every N steps, logged as eval/... (0 = never)."""
    progress: bool = True
    """Show a progress bar on the console."""
    mode: str = "sync"
    """sync (generate, then train: the default) | pipelined (rollouts of step t+1 are generated while the
    learner trains on step t, with weights at most ``max_staleness`` updates old; rlreason.pipeline)."""
    max_staleness: int = 1
    """pipelined: how many optimizer updates behind the learner the generating weights may be (>= 1)."""


@dataclass
class ClusterConfig:
    address: Optional[str] = None
    """Ray address to attach to; null starts a local cluster sized to the machine."""
    num_cpus: Optional[int] = None
    """CPUs of the local cluster (null = the machine's)."""
    actor_cpus: float = 0.01
    """CPU resource each actor reserves. Phases run one after another, so actors share cores."""
    init_timeout_s: float = 300.0
    """How long to wait for actors to be placed before failing with what is missing."""
    log_to_driver: bool = False
    """Stream actor stdout/stderr to the console (off: DeepSpeed is chatty; errors still surface)."""
    placement: str = "none"
    """none (actors float, ``actor_cpus`` each) | colocate (learner rank i and rollout worker i share
    slot i) | split (learners and rollout workers on separate slots). A slot is one placement-group
    bundle: 1 GPU when ``gpus_per_node`` > 0, else ``slot_cpus`` CPUs. Reward actors always float."""
    nodes: int = 1
    """Nodes the slots may span (checked against the slots needed when GPUs are used)."""
    gpus_per_node: int = 0
    """GPUs per node (0 = CPU slots)."""
    slot_cpus: float = 1.0
    """CPUs reserved by each slot (shared by the actors in it)."""
    placement_strategy: str = "PACK"
    """Ray placement-group strategy: PACK | SPREAD | STRICT_PACK | STRICT_SPREAD."""
    weight_sync: str = "auto"
    """How rollout workers get the learner's weights each step: auto (those on learner rank 0's node map
    its shared-memory file, the others receive a broadcast from rank 0) | broadcast (every rollout worker
    receives the broadcast) | object_store (the others fetch a copy rank 0 puts in Ray's object store)."""
    max_restarts: int = 3
    """Times a dead rollout or reward actor is restarted (its work is redone) before the run fails."""
    dashboard: bool = False
    """Start the Ray dashboard with a local cluster."""
    dashboard_host: str = "127.0.0.1"
    """Interface the local dashboard binds to (loopback unless you open it on purpose)."""


@dataclass
class EvalConfig:
    k: int = 4
    """Samples per prompt: pass@1, pass@2, ... pass@k (unbiased estimator), maj@k and mean@k."""
    temperature: Optional[float] = None
    """Sampling temperature (null = rollout.temperature)."""
    max_new_tokens: Optional[int] = None
    """Response length limit (null = rollout.max_new_tokens)."""
    max_prompts: int = 0
    """Evaluate the first N prompts of the set (0 = all)."""
    data: Optional[str] = None
    """Prompts to evaluate, same forms as data.train (null = data.val)."""
    output_dir: Optional[str] = None
    """Where `rlreason eval` writes eval.json and eval.md (null = CHECKPOINT/eval)."""


@dataclass
class RunConfig:
    recipe: str = ""
    """Name of the recipe this run was composed from (set by the loader)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
