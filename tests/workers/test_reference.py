"""The reference policy under ZeRO-3 is partitioned like the policy, and behaves as the whole one does:
the same reference log-probs, a reset that copies the current policy, and a checkpoint round trip."""

import pytest
import torch

from rlreason.batches import with_counts
from rlreason.config import load_config
from rlreason.types import SequenceBatch
from shared_builders import fixed_batch

pytestmark = pytest.mark.slow


def seqs(batch) -> SequenceBatch:
    s = batch.seqs
    return SequenceBatch(s.input_ids, s.attention_mask, s.response_mask, s.prompt_width)


def group_for(model_dir, stage):
    from rlreason.workers.groups import LearnerGroup

    cfg = load_config(["recipe=quickstart", f"model.path={model_dir}", f"learner.zero_stage={stage}",
                       "learner.world_size=2", "learner.micro_batch_size=4", "algorithm.kl_coef=0.05"])
    return LearnerGroup(cfg, model_dir, threads=1)


def kill(group):
    import ray

    for a in group.actors:
        ray.kill(a)


def run(model_dir, stage, tmp_path):
    """Reference log-probs before, after an update + reset, and in a new group resumed from a checkpoint."""
    import ray

    group = group_for(model_dir, stage)
    batch = fixed_batch(model_dir, n=8)
    try:
        parted = ray.get([a.__ray_call__.remote(lambda w: hasattr(next(w.ref.model.parameters()), "ds_id"))
                          for a in group.actors])
        assert parted == [stage == 3] * 2
        first = group.logprobs(seqs(batch))
        batch.old_logprobs, batch.ref_logprobs = first.old_logprobs, first.ref_logprobs
        group.update(with_counts(batch), lr=1e-2)
        group.reset_reference()
        after = group.logprobs(seqs(batch))
        group.save_checkpoint(str(tmp_path / f"ckpt{stage}"))
    finally:
        kill(group)
    group = group_for(model_dir, stage)
    try:
        before_load = group.logprobs(seqs(batch)).ref_logprobs
        group.load_checkpoint(str(tmp_path / f"ckpt{stage}"))
        resumed = group.logprobs(seqs(batch))
    finally:
        kill(group)
    return first, after, before_load, resumed


def test_zero3_reference_is_partitioned_and_matches_the_whole_one(ray_local, tiny_model_dir, tmp_path):
    whole, parted = run(tiny_model_dir, 0, tmp_path), run(tiny_model_dir, 3, tmp_path)
    for w, p in zip(whole, parted):  # every stage of the story agrees between the two layouts
        ref_w = w if isinstance(w, torch.Tensor) else w.ref_logprobs
        ref_p = p if isinstance(p, torch.Tensor) else p.ref_logprobs
        torch.testing.assert_close(ref_p, ref_w, atol=1e-5, rtol=0)
    first, after, before_load, resumed = parted
    torch.testing.assert_close(first.ref_logprobs, first.old_logprobs, atol=1e-6, rtol=0)  # starts as the policy
    assert not torch.allclose(after.ref_logprobs, first.ref_logprobs, atol=1e-4)  # the reset moved it ...
    torch.testing.assert_close(after.ref_logprobs, after.old_logprobs, atol=1e-6, rtol=0)  # ... to the policy
    torch.testing.assert_close(before_load, first.ref_logprobs, atol=1e-6, rtol=0)  # a new group: initial model
    torch.testing.assert_close(resumed.ref_logprobs, after.ref_logprobs, atol=1e-6, rtol=0)  # restored
    torch.testing.assert_close(resumed.old_logprobs, after.old_logprobs, atol=1e-6, rtol=0)
