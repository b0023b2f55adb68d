"""The frozen reference policy of one learner rank (KL terms and KL tracking).

Without ZeRO-3 each rank holds the whole reference model. Under ZeRO-3 it is partitioned like the
policy: built under ``zero.Init`` and wrapped in a DeepSpeed engine without an optimizer, whose hooks
gather one module at a time for the forward (as OpenRLHF and verl hold their reference models). A
7B reference then costs each of 8 GPUs 1/8 of its weights instead of all of them.

Both layouts answer the same four calls; every rank calls each of them (ZeRO-3 gathers are collective).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from rlreason.config.schema import RunConfig
from rlreason.workers.weights import zero3_tensors


class Reference:
    def __init__(self, model_path: str, cfg: RunConfig, device: str, load: Callable, ds_config: dict):
        """``load(model_path, cfg, device)``: the policy's loader (partitioned under ZeRO-3);
        ``ds_config``: the policy's DeepSpeed config (its ZeRO stage and precision)."""
        self.partitioned = cfg.learner.zero_stage == 3
        model = load(model_path, cfg, device).eval().requires_grad_(False)
        if self.partitioned:
            import deepspeed

            config = {k: ds_config[k] for k in ("train_micro_batch_size_per_gpu", "zero_optimization", "bf16",
                                                 "steps_per_print")}
            model, *_ = deepspeed.initialize(model=model, config=config)  # no optimizer: gather-on-forward only
        self.model = model
        self.is_reset = False  # True once it is no longer the initial model

    def copy_from(self, policy: torch.nn.Module) -> None:
        """Become a copy of ``policy`` (the module the learner's engine wraps). Partitioned: each rank
        copies its own shards, which line up because both models were partitioned the same way."""
        with torch.no_grad():
            if self.partitioned:
                mine, theirs = dict(self.model.module.named_parameters()), dict(policy.named_parameters())
                assert mine.keys() == theirs.keys(), "reference and policy differ in parameters"
                for name, p in mine.items():
                    p.ds_tensor.copy_(theirs[name].ds_tensor)
            else:
                self.model.load_state_dict(policy.state_dict())
        self.is_reset = True

    def full_state(self) -> dict[str, Tensor]:
        """The whole reference on CPU (under ZeRO-3 every rank gathers, and every rank gets it)."""
        if self.partitioned:
            return {k: v.detach().to("cpu", copy=True) for k, v in zero3_tensors(self.model.module)}
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def load_full(self, state: dict[str, Tensor], rank: int) -> None:
        """Load a whole state dict (``full_state``'s). Partitioned: rank 0's values are scattered, one
        module at a time."""
        if not self.partitioned:
            self.model.load_state_dict(state)
        else:
            import deepspeed

            for prefix, sub in self.model.module.named_modules():
                params = dict(sub.named_parameters(recurse=False))
                with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=0):
                    if rank == 0:
                        for name, p in params.items():
                            p.data.copy_(state[f"{prefix}.{name}" if prefix else name])
        self.is_reset = True


def maybe_reference(cfg: RunConfig, model_path: str, device: str, load: Callable,
                    ds_config: dict) -> Optional[Reference]:
    """A reference when the loss or the metrics need one (``algorithm.kl_coef`` > 0 or ``track_kl``)."""
    if cfg.algorithm.kl_coef > 0 or cfg.algorithm.track_kl:
        return Reference(model_path, cfg, device, load, ds_config)
    return None
