"""DeepSpeed learners as Ray actors on CPU: every ZeRO stage learns, and the loss and the update
do not depend on the number of learners or the micro-batch size."""

import pytest
import torch

from rlreason.batches import with_counts
from rlreason.config import load_config
from rlreason.types import SequenceBatch, TrainBatch
from shared_builders import fixed_batch

pytestmark = pytest.mark.slow


def config(model_dir, **overrides):
    args = [f"{k}={v}" for k, v in overrides.items()]
    return load_config(["recipe=quickstart", f"model.path={model_dir}", "learner.lr=1e-2", *args])


def with_old_logprobs(group, batch: TrainBatch) -> TrainBatch:
    lps = group.logprobs(batch.seqs)
    batch.old_logprobs = lps.old_logprobs
    batch.ref_logprobs = lps.ref_logprobs
    return with_counts(batch)


def make_group(cfg, model_dir):
    from rlreason.workers.groups import LearnerGroup

    return LearnerGroup(cfg, model_dir, threads=1)


def kill(group):
    import ray

    for a in group.actors:
        ray.kill(a)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_every_zero_stage_learns_with_two_learners(ray_local, tiny_model_dir, stage):
    import ray

    cfg = config(tiny_model_dir, **{"learner.zero_stage": stage, "learner.world_size": 2})
    group = make_group(cfg, tiny_model_dir)
    try:
        # ZeRO-3 builds the policy partitioned (zero.Init): no rank holds the whole model, even at load
        partitioned = ray.get([a.__ray_call__.remote(lambda w: w.loaded_partitioned) for a in group.actors])
        assert partitioned == [stage == 3] * 2
        batch = fixed_batch(tiny_model_dir)
        sft_losses = [group.update(batch, lr=1e-2, loss_name="sft")[0].loss for _ in range(6)]
        assert sft_losses[-1] < sft_losses[0] - 0.5, sft_losses
        rl = with_old_logprobs(group, fixed_batch(tiny_model_dir, seed=1))
        pg = [group.update(rl, lr=1e-3)[0].loss for _ in range(4)]
        assert pg[-1] < pg[0] - 0.05, pg
        state = group.policy_weights()
        assert state is not None and all(torch.isfinite(v).all() for v in state.values())
    finally:
        kill(group)


def one_update(model_dir, world, micro, stage=0, kl=0.0):
    cfg = config(model_dir, **{"learner.world_size": world, "learner.micro_batch_size": micro,
                               "learner.zero_stage": stage, "algorithm.kl_coef": kl})
    group = make_group(cfg, model_dir)
    try:
        batch = with_old_logprobs(group, fixed_batch(model_dir, n=10))
        stats, _ = group.update(batch, lr=1e-2)
        return stats, group.policy_weights(), batch
    finally:
        kill(group)


def test_two_learners_match_one_in_loss_and_weights(ray_local, tiny_model_dir):
    s1, w1, b1 = one_update(tiny_model_dir, world=1, micro=16, kl=0.01)
    s2, w2, b2 = one_update(tiny_model_dir, world=2, micro=16, kl=0.01)
    assert torch.allclose(b1.old_logprobs, b2.old_logprobs, atol=1e-5)
    assert s1.loss == pytest.approx(s2.loss, abs=1e-4)
    assert s1.grad_norm == pytest.approx(s2.grad_norm, rel=1e-4)
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5), k


def test_micro_batch_size_does_not_change_the_update(ray_local, tiny_model_dir):
    s_big, w_big, _ = one_update(tiny_model_dir, world=1, micro=16)
    s_small, w_small, _ = one_update(tiny_model_dir, world=1, micro=3)
    assert s_big.loss == pytest.approx(s_small.loss, abs=1e-5)
    for k in w_big:
        assert torch.allclose(w_big[k], w_small[k], atol=1e-5), k


def test_uneven_shards_are_padded_without_changing_the_loss(ray_local, tiny_model_dir):
    """7 rows on 2 learners with micro-batch 2: one rank gets a padded, fully-masked row."""
    cfg = config(tiny_model_dir, **{"learner.world_size": 2, "learner.micro_batch_size": 2})
    group = make_group(cfg, tiny_model_dir)
    try:
        batch = with_old_logprobs(group, fixed_batch(tiny_model_dir, n=7))
        lp = group.logprobs(SequenceBatch(batch.seqs.input_ids, batch.seqs.attention_mask,
                                          batch.seqs.response_mask, batch.seqs.prompt_width))
        assert lp.old_logprobs.shape == batch.old_logprobs.shape
        stats, _ = group.update(batch, lr=0.0)
        # ratio 1 at lr 0: the PPO loss is -token-mean(A)
        m = batch.seqs.response_mask
        assert stats.loss == pytest.approx(-(batch.advantages * m).sum().item() / m.sum().item(), abs=1e-5)
    finally:
        kill(group)


def test_a_deepspeed_that_ignores_managed_accumulation_is_refused():
    """DeepSpeed releases without ``managed_gradient_accumulation`` (or one that kept it on) would step on their
    own schedule: the learner refuses them by version, at start. The real engine passes (every test above)."""
    from rlreason.workers.learner import require_own_accumulation

    class Old:  # no such method: a DeepSpeed from before the key
        pass

    class Managed:
        def managed_gradient_accumulation(self):
            return True

    for engine in (Old(), Managed()):
        with pytest.raises(RuntimeError, match="DeepSpeed 0.16.0 does not let the caller own.*deepspeed>=0.19.8"):
            require_own_accumulation(engine, "0.16.0")
