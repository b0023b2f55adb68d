"""Synthetic scored groups for the sampling tests (no model, no Ray)."""

import pytest
import torch

from rlreason.sampling.base import Groups
from rlreason.types import RewardResult, RolloutBatch


def make_groups(correct: list[list[float]], uids=None, lengths=None, scores=None) -> Groups:
    """Groups whose g-th group has one response per entry of ``correct[g]`` (lengths default 10)."""
    flat = [c for g in correct for c in g]
    gid = torch.tensor([g for g, grp in enumerate(correct) for _ in grp], dtype=torch.long)
    lens = [x for g in (lengths or [[10] * len(grp) for grp in correct]) for x in g]
    width = max(lens) if lens else 1
    mask = torch.zeros(len(flat), width)
    for i, n in enumerate(lens):
        mask[i, :n] = 1.0
    n = len(flat)
    rollout = RolloutBatch(
        prompt_ids=torch.ones(n, 3, dtype=torch.long), prompt_mask=torch.ones(n, 3, dtype=torch.long),
        response_ids=(mask * 5).long(), response_mask=mask, rollout_logprobs=torch.zeros(n, width),
        truncated=torch.zeros(n, dtype=torch.bool), group_index=gid, response_text=[f"r{i}" for i in range(n)])
    c = torch.tensor(flat, dtype=torch.float32)
    s = c.clone() if scores is None else torch.tensor([x for g in scores for x in g], dtype=torch.float32)
    rewards = RewardResult(scores=s, correct=c, components={})
    return Groups(rollout, rewards, list(uids if uids is not None else range(len(correct))))


@pytest.fixture
def groups_of():
    return make_groups
