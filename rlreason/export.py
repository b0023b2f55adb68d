"""Export a training checkpoint as a Hugging Face model directory.

``rlreason export CHECKPOINT OUT`` reads the policy weights from the checkpoint's DeepSpeed files
(ZeRO 0-2: rank 0's module state; ZeRO-3: the shards merged with DeepSpeed's zero_to_fp32), puts
them into the model class named by the checkpoint's ``model/config.json`` and writes ``OUT`` with
``save_pretrained`` (safetensors, config, generation config) plus the tokenizer.
``AutoModelForCausalLM.from_pretrained(OUT)`` then loads exactly the weights the rollout workers
held at that step. CHECKPOINT may be a ``step_N`` directory, a ``checkpoints/`` directory or a
run directory (its latest complete checkpoint).
"""

from __future__ import annotations

import json
import os
import shutil

import torch

# Files of a model directory that hold weights; everything else (config, tokenizer, generation
# config, custom modelling code) is copied into checkpoints so export needs nothing else.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
DEEPSPEED_TAG = "deepspeed"  # LearnerWorker.save_checkpoint writes <checkpoint>/learner/deepspeed/


class ModelFiles:
    """Checkpoint component: the model's non-weight files, saved into ``<checkpoint>/model``."""

    def __init__(self, model_dir: str, trust_remote_code: bool = False):
        self.model_dir, self.trust_remote_code = model_dir, trust_remote_code

    def save_checkpoint(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        if not os.path.isdir(self.model_dir):  # a hub id: write what transformers reads back
            from transformers import AutoConfig, AutoTokenizer

            AutoConfig.from_pretrained(self.model_dir, trust_remote_code=self.trust_remote_code).save_pretrained(path)
            AutoTokenizer.from_pretrained(self.model_dir, trust_remote_code=self.trust_remote_code).save_pretrained(path)
            return
        for name in os.listdir(self.model_dir):
            src = os.path.join(self.model_dir, name)
            if os.path.isfile(src) and not name.endswith(WEIGHT_SUFFIXES) and name not in WEIGHT_INDEXES:
                shutil.copy2(src, os.path.join(path, name))

    def load_checkpoint(self, path: str) -> None:
        """Nothing to restore: the run loads its model from model.path / model.builder."""


def checkpoint_dtype_and_stage(ckpt: str) -> tuple[str, int]:
    """The parameter dtype and ZeRO stage the checkpoint was trained with (from its config.yaml)."""
    import yaml

    with open(os.path.join(ckpt, "config.yaml")) as f:
        cfg = yaml.safe_load(f)
    return cfg["model"]["dtype"], int(cfg["learner"]["zero_stage"])


def _trust_remote_code(ckpt: str) -> bool:
    import yaml

    with open(os.path.join(ckpt, "config.yaml")) as f:
        return bool(yaml.safe_load(f)["model"].get("trust_remote_code", False))


def learner_weights(ckpt: str) -> dict[str, torch.Tensor]:
    """The full policy state dict from the checkpoint's DeepSpeed files."""
    from rlreason.models import DTYPES

    dtype, stage = checkpoint_dtype_and_stage(ckpt)
    ds_dir = os.path.join(ckpt, "learner")
    if stage == 3:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        # ZeRO-3 keeps only shards of the module: merge the fp32 master shards of every rank
        state = get_fp32_state_dict_from_zero_checkpoint(ds_dir, tag=DEEPSPEED_TAG)
    else:
        path = os.path.join(ds_dir, DEEPSPEED_TAG, "mp_rank_00_model_states.pt")
        from rlreason.checkpoint import load_small_state

        state = load_small_state(path)["module"]
    return {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in state.items()}


def export_checkpoint(checkpoint: str, out_dir: str) -> str:
    """Write ``out_dir`` as a Hugging Face model directory; returns it."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from rlreason.checkpoint import resolve_checkpoint
    from rlreason.models import DTYPES

    ckpt = resolve_checkpoint(checkpoint)
    model_files = os.path.join(ckpt, "model")
    dtype, _ = checkpoint_dtype_and_stage(ckpt)
    remote = _trust_remote_code(ckpt)
    config = AutoConfig.from_pretrained(model_files, trust_remote_code=remote)
    model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype], trust_remote_code=remote)
    missing, unexpected = model.load_state_dict(learner_weights(ckpt), strict=False)
    # tied weights (lm_head = embeddings) may be absent from one side; anything else is a mismatch
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {ckpt} does not match {config.model_type}: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    model.tie_weights()
    if os.path.isfile(os.path.join(model_files, "generation_config.json")):
        model.generation_config = GenerationConfig.from_pretrained(model_files)  # pad / eos as trained
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(model_files, trust_remote_code=remote).save_pretrained(out_dir)
    with open(os.path.join(out_dir, "rlreason_export.json"), "w") as f:
        json.dump({"checkpoint": ckpt, "dtype": dtype}, f, indent=1)
    return out_dir
