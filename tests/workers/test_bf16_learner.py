"""A bf16 learner on CPU (model.dtype=bfloat16): bf16 weights and compute, fp32 master weights in
DeepSpeed's optimizer. Updates far below bf16's resolution still add up, as in the fp32 run."""

import pytest
import torch

from rlreason.config import load_config
from shared_builders import fixed_batch

pytestmark = pytest.mark.slow


def sft_updates(model_dir, dtype, stage, steps=12, lr=2e-5):
    import ray

    from rlreason.workers.groups import LearnerGroup

    cfg = load_config(["recipe=quickstart", f"model.path={model_dir}", f"model.dtype={dtype}",
                       f"learner.zero_stage={stage}", "learner.micro_batch_size=4", "learner.grad_clip=0"])
    group = LearnerGroup(cfg, model_dir, threads=1)
    try:
        before = group.policy_weights()
        losses = [group.update(fixed_batch(model_dir), lr=lr, loss_name="sft")[0].loss for _ in range(steps)]
        return before, group.policy_weights(), losses
    finally:
        for a in group.actors:
            ray.kill(a)


@pytest.mark.parametrize("stage", [0, 2])
def test_bf16_learner_keeps_fp32_master_weights(ray_local, tiny_model_dir, stage):
    b0, b1, bf16_losses = sft_updates(tiny_model_dir, "bfloat16", stage)
    f0, f1, fp32_losses = sft_updates(tiny_model_dir, "float32", stage)
    name = "model.layers.0.mlp.up_proj.weight"
    assert b1[name].dtype == torch.bfloat16 and f1[name].dtype == torch.float32
    assert bf16_losses[-1] < bf16_losses[0] and bf16_losses[-1] == pytest.approx(fp32_losses[-1], abs=0.01)
    # Adam moves each weight by about lr = 2e-5 a step: under half a bf16 step (2^-8 |w|) wherever
    # |w| > 0.01, most of this matrix. Rounding the weights every step would lose those updates; the
    # fp32 masters add them up, as the fp32 run does.
    moved_bf16, moved_fp32 = (b1[name] - b0[name]).float(), f1[name] - f0[name]
    assert (moved_bf16 != 0).float().mean() > 0.8
    cos = torch.nn.functional.cosine_similarity(moved_bf16.flatten(), moved_fp32.flatten(), dim=0)
    assert cos > 0.9, cos
    assert moved_bf16.norm() == pytest.approx(moved_fp32.norm().item(), rel=0.2)
