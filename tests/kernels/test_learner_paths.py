"""The learner gives the same losses, log-probs and gradients (to 1e-5) whichever log-prob path
it takes: in process on the quickstart's tiny model, and through DeepSpeed ZeRO-3 on Ray, where
the fused head's weight is partitioned and must be gathered for forward and backward."""

import pytest
import torch

from rlreason.algorithms import POLICY_LOSSES
from rlreason.batches import with_counts
from rlreason.config import load_config
from rlreason.types import SequenceBatch
from shared_builders import bare_learner, fixed_batch


def config(model_dir, impl, **overrides):
    args = [f"{k}={v}" for k, v in overrides.items()]
    return load_config(["recipe=quickstart", f"model.path={model_dir}", f"learner.logprob_impl={impl}",
                        "rollout.temperature=0.8", *args])


def loss_and_grads(model_dir, impl):
    from transformers import AutoModelForCausalLM

    cfg = config(model_dir, impl, **{"algorithm.entropy_coef": 0.01, "algorithm.kl_coef": 0.05})
    worker = bare_learner(cfg, AutoModelForCausalLM.from_pretrained(model_dir))
    batch = fixed_batch(model_dir, n=8)
    lps = worker.compute_logprobs(batch.seqs, micro_sizes=[4, 4])
    # stale old log-probs (ratio != 1, some clipped) and a reference: every loss term is live
    noise = torch.randn(lps.old_logprobs.shape, generator=torch.Generator().manual_seed(1))
    batch.old_logprobs = lps.old_logprobs + 0.3 * noise
    batch.ref_logprobs = lps.old_logprobs - 0.1
    batch = with_counts(batch)
    worker.engine.train()
    entry, kwargs = POLICY_LOSSES.entry(cfg.algorithm.loss), dict(cfg.algorithm.loss_kwargs)
    ctx = worker._agg_context(batch, sft=False)
    terms = worker._step_terms([batch], entry, kwargs, ctx, regularise=True)
    loss, stats, _, _ = worker._micro_loss(batch, entry.fn, kwargs, ctx, True, terms)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in worker.engine.named_parameters()}
    return lps, stats, grads


def test_learner_loss_and_grads_match_naive(tiny_model_dir, impl):
    lps0, stats0, g0 = loss_and_grads(tiny_model_dir, "naive")
    lps1, stats1, g1 = loss_and_grads(tiny_model_dir, impl)
    torch.testing.assert_close(lps1.old_logprobs, lps0.old_logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(lps1.entropy, lps0.entropy, atol=1e-5, rtol=0)
    for key in ("loss", "policy_loss"):
        assert getattr(stats1, key) == pytest.approx(getattr(stats0, key), abs=1e-5), key
    assert stats1.token_sums["kl"] == pytest.approx(stats0.token_sums["kl"], abs=1e-5)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], atol=1e-5, rtol=1e-5, msg=lambda m: f"{k}: {m}")


def zero3_update(model_dir, impl):
    """One RL step on two ZeRO-3 learners; returns old log-probs, stats and the new weights."""
    import ray

    from rlreason.workers.groups import LearnerGroup

    cfg = config(model_dir, impl, **{"learner.zero_stage": 3, "learner.world_size": 2, "learner.micro_batch_size": 4,
                                     "algorithm.entropy_coef": 0.01})
    group = LearnerGroup(cfg, model_dir, threads=1)
    try:
        batch = fixed_batch(model_dir, n=8)
        lps = group.logprobs(SequenceBatch(batch.seqs.input_ids, batch.seqs.attention_mask,
                                           batch.seqs.response_mask, batch.seqs.prompt_width))
        batch.old_logprobs, batch.ref_logprobs = lps.old_logprobs, lps.ref_logprobs
        stats, _ = group.update(with_counts(batch), lr=1e-2)
        return lps, stats, group.policy_weights()
    finally:
        for actor in group.actors:
            ray.kill(actor)


@pytest.mark.slow
def test_zero3_fused_head_matches_naive(ray_local, tiny_model_dir):
    lps0, s0, w0 = zero3_update(tiny_model_dir, "naive")
    lps1, s1, w1 = zero3_update(tiny_model_dir, "chunked")
    torch.testing.assert_close(lps1.old_logprobs, lps0.old_logprobs, atol=1e-5, rtol=0)
    assert s1.loss == pytest.approx(s0.loss, abs=1e-5)
    assert s1.grad_norm == pytest.approx(s0.grad_norm, rel=1e-4)
    for k in w0:
        torch.testing.assert_close(w1[k], w0[k], atol=1e-5, rtol=0, msg=lambda m: f"{k}: {m}")


def test_config_names_a_wrong_logprob_impl():
    from rlreason.config.compose import ConfigError
    from rlreason.config.validate import validate

    assert load_config(["recipe=quickstart"]).learner.logprob_impl == "auto"
    with pytest.raises(ConfigError, match="learner.logprob_impl='fast'.*auto, naive, chunked, triton"):
        validate(load_config(["recipe=quickstart", "learner.logprob_impl=fast"]))
    with pytest.raises(ConfigError, match="logprob_chunk"):
        validate(load_config(["recipe=quickstart", "learner.logprob_chunk=-1"]))
