"""The objective zoo through real DeepSpeed learners (Ray actors, CPU): DRPO's group-aligned
micro-batches and step-wide KL, and GPPO with the SFT, entropy and KL-to-reference terms, give the
same losses and weights on 1 learner with big micro-batches as on 2 learners with small ones —
over two optimizer steps, so the second sees ρ ≠ 1 and an active trust region."""

import pytest
import torch

from rlreason.batches import sft_batch, with_counts
from rlreason.config import load_config

pytestmark = pytest.mark.slow

RUNS = {  # name -> overrides
    # k3 (≥ 0): these responses are not samples of the policy, so k1's mean can go negative
    "drpo": {"algorithm.loss": "drpo", "algorithm.loss_kwargs.kl_type": "k3", "rollout.n": 4},
    "gppo+sft+entropy+kl": {"algorithm.loss": "gppo", "algorithm.sft_coef": 0.1, "algorithm.entropy_coef": 0.01,
                            "algorithm.kl_coef": 0.01, "algorithm.agg_mode": "seq-mean-token-mean"},
}


def grouped_batch(model_dir, keep_groups):
    """12 responses in 3 groups of 4 (rows shuffled), mixed 0/1 rewards, GRPO-like ±1 advantages."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    gen = torch.Generator().manual_seed(0)
    prompts = [tok.encode(f"Q: {i // 4}+{i // 4 + 1} =\nA:", add_special_tokens=False) for i in range(12)]
    responses = [torch.randint(4, 60, (int(torch.randint(3, 10, (1,), generator=gen)),), generator=gen).tolist()
                 for _ in range(12)]
    batch = sft_batch(prompts, responses, tok.pad_token_id)
    rewards = torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 1, 0, 0, 1, 0])  # the 2nd group is all-correct
    order = torch.randperm(12, generator=gen)
    batch = batch.rows(order)
    batch.rewards, batch.correct = rewards[order], rewards[order]
    batch.group_index = (torch.arange(12) // 4)[order]
    batch.advantages = (2 * batch.rewards - 1)[:, None] * batch.seqs.response_mask
    batch.keep_groups = keep_groups
    return batch


def two_updates(model_dir, overrides, world, micro):
    from rlreason.algorithms import POLICY_LOSSES
    from rlreason.workers.groups import LearnerGroup

    sizes = {"learner.world_size": world, "learner.micro_batch_size": micro}
    args = [f"{k}={v}" for k, v in {**overrides, **sizes}.items()]
    cfg = load_config(["recipe=quickstart", f"model.path={model_dir}", *args])
    group = LearnerGroup(cfg, model_dir, threads=1)
    try:
        batch = grouped_batch(model_dir, bool(POLICY_LOSSES.entry(cfg.algorithm.loss).traits.get("keep_groups")))
        lps = group.logprobs(batch.seqs)
        batch.old_logprobs, batch.ref_logprobs = lps.old_logprobs, lps.ref_logprobs
        batch = with_counts(batch)
        stats = [group.update(batch, lr=1e-2)[0] for _ in range(2)]  # the 2nd step is off-policy
        return stats, group.policy_weights()
    finally:
        import ray

        for a in group.actors:
            ray.kill(a)


@pytest.mark.parametrize("name", list(RUNS))
def test_one_learner_equals_two_with_small_micro_batches(ray_local, tiny_model_dir, name):
    (a1, a2), w_a = two_updates(tiny_model_dir, RUNS[name], world=1, micro=16)
    (b1, b2), w_b = two_updates(tiny_model_dir, RUNS[name], world=2, micro=3)
    for sa, sb in ((a1, b1), (a2, b2)):
        assert sa.loss == pytest.approx(sb.loss, rel=1e-4, abs=1e-5)
        assert sa.grad_norm == pytest.approx(sb.grad_norm, rel=1e-4)
    assert a2.token_sums["clip_frac"] > 0  # the second step clipped: DRPO's trust region / GPPO's band was active
    for k in w_a:
        assert torch.allclose(w_a[k], w_b[k], atol=1e-5), k
    if name.startswith("gppo"):  # the entropy bonus reaches the weights: without it they differ
        (_, _), w_c = two_updates(tiny_model_dir, {**RUNS[name], "algorithm.entropy_coef": 0.0}, world=1, micro=16)
        assert max((w_a[k] - w_c[k]).abs().max().item() for k in w_a) > 1e-4
