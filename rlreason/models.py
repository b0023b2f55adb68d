"""Loading the policy model and tokenizer (local dir or hub id), or building one from code."""

from __future__ import annotations

import os

import torch

from rlreason.config.schema import ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_model_path(cfg: ModelConfig, run_dir: str, seed: int) -> str:
    """The model to load: ``model.path``, or a fresh one written by ``model.builder`` into the run dir."""
    if cfg.path:
        return cfg.path
    from rlreason.registry import load_callable

    out = os.path.join(run_dir, "init_model")
    if not os.path.isfile(os.path.join(out, "config.json")):
        load_callable(cfg.builder)(out, seed=seed, **cfg.builder_kwargs)
    return out


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        # Causal LMs often ship without a pad token; EOS is masked out wherever padding is.
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, cfg: ModelConfig, device: str = "cpu"):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=DTYPES[cfg.dtype],
        attn_implementation=cfg.attn_implementation,
        trust_remote_code=cfg.trust_remote_code,
    )
    return model.to(device)
