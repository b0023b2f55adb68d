"""Builders: a drafter, a K strategy and a reduced draft vocabulary from ``rollout.spec`` (SpecConfig).

Plain functions, shared by the rollout worker, the drafter trainer and the scripts, so every
worker builds the same initial drafter from the same seed (the first publish then makes them equal
anyway). The config object is only read here; nothing in ``rollout/spec`` imports the schema.
"""

from __future__ import annotations

from collections import Counter
from typing import Optional

import torch
from torch import Tensor

from rlreason.rollout.spec.drafters import EagleDrafter, NgramDrafter, SmallLMDrafter, build_vocab_map
from rlreason.rollout.spec.engine import FixedK
from rlreason.rollout.spec.layers import DrafterConfig
from rlreason.rollout.spec.selector import AdaptiveK


def drafter_config(target_config, spec) -> DrafterConfig:
    """The drafter's shape from the target's config: its width for EAGLE (its features are the input),
    ``lm_hidden_size`` for lm."""
    c = target_config
    width = c.hidden_size if spec.drafter == "eagle" or not spec.lm_hidden_size else spec.lm_hidden_size
    head_dim = c.hidden_size // c.num_attention_heads
    heads = max(width // head_dim, 1) if width % head_dim == 0 else 1
    inter = max(int(c.intermediate_size * width / c.hidden_size), 1)
    return DrafterConfig(hidden_size=width, num_heads=heads, intermediate_size=inter, vocab_size=c.vocab_size,
                         num_layers=spec.drafter_layers, rope_theta=rope_theta(c))


def rope_theta(config) -> float:
    """The target's RoPE base: current transformers keep it in ``rope_parameters`` (Qwen2.5: 1e6), older ones
    in ``rope_theta``; 1e4 only if neither says."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict):
        if "rope_theta" not in params:  # per attention type (e.g. full / sliding): the full layers' base
            params = next((v for v in params.values() if isinstance(v, dict) and "rope_theta" in v), {})
        if params.get("rope_theta"):
            return float(params["rope_theta"])
    return float(getattr(config, "rope_theta", None) or 1e4)


def new_drafter(spec, target_config, vocab_map: Optional[Tensor] = None, seed: int = 0):
    """A freshly initialised neural drafter (float32, CPU, not attached to a target): the same on every
    worker for the same seed. The vLLM engine writes it as its initial draft checkpoint."""
    with torch.random.fork_rng():  # seeded without moving the caller's RNG
        torch.manual_seed(seed)
        cfg = drafter_config(target_config, spec)
        return EagleDrafter(cfg, vocab_map) if spec.drafter == "eagle" else SmallLMDrafter(cfg, vocab_map)


def build_drafter(spec, model, vocab_map: Optional[Tensor] = None, seed: int = 0):
    """A freshly initialised drafter of kind ``spec.drafter`` for the target ``model`` (seeded, same dtype/device)."""
    if spec.drafter == "ngram":
        return NgramDrafter()
    param = next(model.parameters())
    drafter = new_drafter(spec, model.config, vocab_map, seed).to(device=param.device, dtype=param.dtype).eval()
    if spec.drafter == "eagle":
        drafter.attach(model.get_input_embeddings(), model.get_output_embeddings())
    return drafter


def build_strategy(spec, seed: int = 0):
    """FixedK for a number, the adaptive selector for ``auto``."""
    if str(spec.k) != "auto":
        return FixedK(int(spec.k))
    return AdaptiveK(arms=tuple(spec.arms), epsilon=spec.epsilon, hysteresis=spec.hysteresis, decay=spec.decay,
                     max_verify_tokens=spec.max_verify_tokens, seed=seed)


def prompt_vocab_map(prompt_ids: list[list[int]], size: int, vocab: int, always: tuple[int, ...]) -> Optional[Tensor]:
    """The ``size`` most frequent prompt tokens (plus ``always``, e.g. EOS); None when ``size`` is 0 or covers V.

    The prompts stand in for the responses, which do not exist before the first rollout. A token
    outside the map is never drafted (it costs acceptance, never exactness).
    """
    if not size or size >= vocab:
        return None
    counts = torch.zeros(vocab)
    for token, n in Counter(t for ids in prompt_ids for t in ids).items():
        counts[token] = n
    return build_vocab_map(counts, size, always)
