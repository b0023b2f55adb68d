"""The ``rollout.spec`` section: speculative decoding in the native engine, its drafter's online
training, and the vLLM K table (rollout/spec/, rollout/vllm_engine.py)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DrafterTrainConfig:
    """Online drafter training (rollout/spec/train.py): after each RL step, on the new policy's features."""

    mode: str = "deterministic"
    """deterministic (``steps`` drafter steps after each RL step, at the weight sync; the CPU default) |
    spot (TLT: rollout worker 0 trains in the background from the end of the step's rollouts until
    it is needed again, the weight sync; not reproducible step for step) | off (the drafter stays as
    initialised or restored: a frozen drafter)."""
    steps: int = 8
    """Drafter optimizer steps per RL step (spot: at most this many per idle window; 0 = until preempted)."""
    batch_size: int = 32
    """Sequences per drafter step (sampled from the buffer)."""
    buffer_steps: int = 2
    """RL steps of rollouts kept for training (TLT's one-step offset keeps the last 2)."""
    lr: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    feature_weight: float = 1.0
    """w_v of the smooth-L1 regression onto the target's next feature (EAGLE drafter only)."""
    ce_weight: float = 0.1
    """w_p of the soft cross-entropy against the target's next-token law at the rollout temperature."""
    warmup_steps: int = 100
    """Drafter steps on the SFT demonstrations right after the SFT warm-up (trainer.sft), against the
    warmed-up policy, published as version 0: an in-domain warm start (TLT warm-starts offline).
    Without an SFT warm-up the drafter starts from its random initialisation."""
    track_frozen: bool = False
    """Also log drafter/accept_frozen: the acceptance the version-0 drafter (warm start) would have on
    each step's rollouts, next to the online drafter's (scripts/drafter_adaptation.py)."""


@dataclass
class VLLMTableConfig:
    """``rollout.spec.k=auto`` on vLLM: the batch-size -> K table, re-planned from vLLM's measured acceptance.

    vLLM exposes no per-iteration timings, so the cost of an iteration is modelled, in units of a
    batch-1 decoding step: 1 + B·(K+1) / saturation_tokens + draft_cost·K (verification turns
    compute-bound past ``saturation_tokens`` tokens per forward; each draft step costs ``draft_cost``
    of a target step). Uncalibrated defaults: profile your GPU and model and set them.
    """

    saturation_tokens: int = 256
    draft_cost: float = 0.05
    every: int = 10
    """Re-plan at every ``every``-th weight sync; a changed table rebuilds the LLM there (a model reload)."""


@dataclass
class SpecConfig:
    """Speculative decoding in the native engine (lossless: the output law is the target's)."""

    enable: bool = False
    drafter: str = "eagle"
    """eagle (one layer on the target's features, the target's embedding and head) | lm (a small
    standalone LM) | ngram (prompt and sibling lookup; nothing to train)."""
    k: str = "auto"
    """Drafts per iteration: a fixed number (0 = plain decoding through the SD loop) or auto (the
    adaptive selector over ``arms``; it reacts to wall-clock time, so runs are not bit-reproducible)."""
    arms: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 6, 8])
    """K values the selector chooses from (0 is always added)."""
    epsilon: float = 0.05
    """Selector: probability of a random arm."""
    hysteresis: float = 0.05
    """Selector: leave the current arm only for one better by this fraction."""
    decay: float = 0.98
    """Selector: discount of old observations per iteration."""
    max_verify_tokens: int = 0
    """Selector: never verify more than this many tokens per forward, batch x (K+1) (0 = no cap)."""
    draft_vocab: int = 0
    """Reduced draft vocabulary: the N most frequent tokens of the training prompts (+ EOS); 0 = full."""
    drafter_layers: int = 1
    lm_hidden_size: int = 0
    """Width of the lm drafter (0 = the target's)."""
    train: DrafterTrainConfig = field(default_factory=DrafterTrainConfig)
    vllm: VLLMTableConfig = field(default_factory=VLLMTableConfig)
