"""Loading the policy model and tokenizer (local dir or hub id), or building one from code."""

from __future__ import annotations

import os

import torch

from rlreason.config.compose import ConfigError
from rlreason.config.schema import ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_model_path(cfg: ModelConfig, run_dir: str, seed: int) -> str:
    """The model to load: ``model.path``, or a fresh one written by ``model.builder`` into the run dir."""
    if cfg.path:
        require_model_source(cfg.path, "model.path")
        if cfg.tokenizer:
            require_model_source(cfg.tokenizer, "model.tokenizer")
        return cfg.path
    from rlreason.registry import load_callable

    from transformers.utils import logging as hf_logging

    out = os.path.join(run_dir, "init_model")
    if not os.path.isfile(os.path.join(out, "config.json")):
        hf_logging.disable_progress_bar()  # a bar for writing one small shard is noise in the run's output
        try:
            load_callable(cfg.builder)(out, seed=seed, **cfg.builder_kwargs)
        finally:
            hf_logging.enable_progress_bar()
    return out


def save_random_model(model_cls, config, tokenizer, out_dir: str, seed: int, eos_token_id) -> str:
    """Build ``model_cls(config)`` with a seeded random init (the caller's RNG untouched), let generation
    stop at ``eos_token_id`` (an id or a list) and pad with the tokenizer's pad token, and save the
    model and the tokenizer to ``out_dir``: a model dir like any downloaded one."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_cls(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = eos_token_id
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def require_model_source(path: str, key: str, timeout_s: float = 5.0) -> None:
    """Fail in one line, at once, when ``path`` is neither a local dir nor a hub id we can fetch.

    Without this, a hub id on a machine with no network costs a minute of retries and a long
    traceback. A hub id already in the local Hugging Face cache is used offline.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    if os.path.isdir(path):
        return
    if os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1:
        raise ConfigError(f"{key}={path!r}: no such directory")
    cached = isinstance(try_to_load_from_cache(path, "config.json"), str)
    if constants.HF_HUB_OFFLINE:
        if cached:
            return
        raise ConfigError(f"{key}={path!r} is not a local directory and not in the Hugging Face cache, and "
                          "HF_HUB_OFFLINE is set: point it at a local copy (a directory with config.json)")
    host = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((host.hostname, host.port or 443), timeout=timeout_s).close()
    except OSError as e:
        if cached:  # use the cached copy without a minute of retries
            os.environ["HF_HUB_OFFLINE"] = "1"
            return
        raise ConfigError(f"{key}={path!r} is not a local directory, and the Hugging Face Hub ({constants.ENDPOINT}) "
                          f"cannot be reached ({e}): point it at a local copy (a directory with config.json, e.g. "
                          f"from `hf download {path} --local-dir DIR` on a machine with network)") from None


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
