"""Every registered reward: a one-line summary, a known kind, and a valid value from its kind's call."""

import math

import pytest

from rlreason.rewards import REWARDS
from rlreason.rewards.base import KINDS, ModelRewardInput, resolve
from rlreason.workers.reward_pool import check_value

ROW = {"prompt": "Q: 7+5 =\nA:", "ground_truth": "12", "response_length": 30, "truncated": False, "step": 0,
       "max_response_length": 64, "data_source": "arith"}
RESPONSES = ["<think>7+5 is 12. So \\boxed{12}.</think><answer>12</answer>", "<think>hmm</think><answer>13</answer>"]
EMBED = f"{__name__}:toy_embed"


def toy_embed(texts):
    import torch

    return torch.stack([torch.tensor([1.0, float(len(t))]) for t in texts])


@pytest.mark.parametrize("name", REWARDS.names())
def test_registered_reward_conforms(name, tiny_model_dir):
    r = resolve(name)
    assert r.summary and r.kind in KINDS, name
    extra = {"correct": 1.0} if r.wants_correct else {}
    kwargs = {"redundancy": {"embedder": EMBED}, "length_lcpo": {"target": 20}}.get(name, {})
    if r.kind == "sample":
        values = [check_value(r.fn(**ROW, response=resp, **extra, **kwargs)) for resp in RESPONSES]
    elif r.kind in ("group", "batch"):
        lists = {k: [v] * len(RESPONSES) for k, v in ROW.items() if k not in ("step", "max_response_length")}
        extra = {k: [v] * len(RESPONSES) for k, v in extra.items()}
        values = check_value(r.fn(**lists, response=RESPONSES, step=0, max_response_length=64, **extra, **kwargs))
    else:
        from rlreason.workers.scoring import local_scorer

        inp = ModelRewardInput([ROW["prompt"]] * 2, RESPONSES, ["12", "12"], [ROW] * 2, [0, 0],
                               local_scorer(tiny_model_dir))
        values = check_value(r.fn(inp))
    assert len(values) == len(RESPONSES)
    for v in values:
        score = v["score"] if isinstance(v, dict) else v
        assert v is None or math.isfinite(score), (name, v)
