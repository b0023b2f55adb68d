"""learner.attn_implementation: the learner's own attention kernel, the rollout engine's untouched,
and the same log-probs either way."""

import torch

from rlreason.config import load_config
from rlreason.models import load_model
from rlreason.workers.learner import load_policy
from shared_builders import fixed_batch


def test_learner_attention_overrides_only_the_learner(tiny_model_dir):
    cfg = load_config(["recipe=quickstart", f"model.path={tiny_model_dir}", "learner.attn_implementation=eager"])
    learner, rollout = load_policy(tiny_model_dir, cfg, "cpu"), load_model(tiny_model_dir, cfg.model)
    assert learner.config._attn_implementation == "eager" and rollout.config._attn_implementation == "sdpa"
    default = load_policy(tiny_model_dir, load_config(["recipe=quickstart", f"model.path={tiny_model_dir}"]), "cpu")
    assert default.config._attn_implementation == "sdpa"
    seqs = fixed_batch(tiny_model_dir, n=6).seqs  # left-padded prompts: the masks matter
    positions = (seqs.attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = [m(input_ids=seqs.input_ids, attention_mask=seqs.attention_mask, position_ids=positions).logits
              for m in (learner, default)]
    real = seqs.attention_mask.bool()
    torch.testing.assert_close(logits[0][real], logits[1][real], atol=1e-5, rtol=1e-5)
