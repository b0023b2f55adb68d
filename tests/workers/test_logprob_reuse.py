"""On-policy log-prob reuse (learner.reuse_logprobs): when the step is one optimizer update on fresh
rollouts, π_old is the policy of the update's own forward. Taking its detached log-probs there gives
the same loss and gradients as the separate pass it replaces, for every registered loss, and the
update hands those log-probs back for metrics and samplers."""

import pytest
import torch

from rlreason.algorithms import POLICY_LOSSES
from rlreason.batches import reuses_update_logprobs, with_counts
from rlreason.config import load_config
from shared_builders import bare_learner, fixed_batch


def loss_grads(model_dir, loss, reuse):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = load_config(["recipe=quickstart", f"model.path={model_dir}", f"algorithm.loss={loss}",
                       "rollout.temperature=0.8", "algorithm.entropy_coef=0.01"])
    worker = bare_learner(cfg, AutoModelForCausalLM.from_pretrained(model_dir))
    batch = fixed_batch(model_dir, n=8)
    batch.rewards = batch.correct = (batch.advantages[:, 0] > 0).float()
    if reuse:
        batch.old_logprobs = None
    else:  # the separate no-grad pass, as the controller runs it without reuse
        batch.old_logprobs = worker.compute_logprobs(batch.seqs, micro_sizes=[5, 3]).old_logprobs
    batch = with_counts(batch)
    worker.engine.train()
    entry, kwargs = POLICY_LOSSES.entry(loss), dict(cfg.algorithm.loss_kwargs)
    ctx = worker._agg_context(batch, sft=False)
    terms = worker._step_terms([batch], entry, kwargs, ctx, regularise=True)
    out, stats, lp, ent = worker._micro_loss(batch, entry.fn, kwargs, ctx, True, terms, with_entropy=reuse)
    out.backward()
    grads = {k: p.grad.clone() for k, p in worker.engine.named_parameters() if p.grad is not None}
    return stats, grads, lp, ent, batch


@pytest.mark.parametrize("loss", [name for name in POLICY_LOSSES.names() if name != "sft"])
def test_reuse_gives_the_recompute_path_loss_and_gradients(tiny_model_dir, loss):
    s0, g0, _, _, b0 = loss_grads(tiny_model_dir, loss, reuse=False)
    s1, g1, lp, ent, _ = loss_grads(tiny_model_dir, loss, reuse=True)
    assert s1.loss == pytest.approx(s0.loss, abs=1e-6) and s1.policy_loss == pytest.approx(s0.policy_loss, abs=1e-6)
    assert g0 and g0.keys() == g1.keys()
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], atol=1e-6, rtol=1e-5, msg=lambda m: f"{loss} {k}: {m}")
    mask = b0.seqs.response_mask
    torch.testing.assert_close(lp * mask, b0.old_logprobs * mask, atol=1e-6, rtol=0)  # handed back for metrics
    assert ent is not None and bool((ent * mask >= 0).all())


def test_reuse_only_where_it_is_exact():
    def reuses(*overrides):
        return reuses_update_logprobs(load_config(["recipe=quickstart", *overrides]))

    assert reuses()
    assert not reuses("learner.epochs=2")  # the second epoch's π_old is the pre-step policy, not the current
    assert not reuses("learner.updates_per_step=2")
    assert not reuses("algorithm.kl_in_reward=true", "algorithm.kl_coef=0.01")  # advantages need π_old first
    assert not reuses("algorithm.loss=drpo")  # its step_sums pre-pass needs π_old before the backward
    assert not reuses("learner.reuse_logprobs=false")
