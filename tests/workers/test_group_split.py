"""Group-aligned shards (losses with the keep_groups trait, e.g. DRPO): whole groups in every
micro-batch, the same number of micro-batches on every rank, padding that carries no loss; and
mini-batches that keep groups whole."""

import pytest
import torch

from rlreason.batches import mini_batches, with_counts
from rlreason.types import SequenceBatch, TrainBatch
from rlreason.workers.group_split import group_plan, group_shards


def batch_of(sizes, T=4):
    gid = torch.tensor([g for g, s in enumerate(sizes) for _ in range(s)])
    n = len(gid)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    gid = gid[perm] * 3 + 1  # shuffled rows, non-contiguous ids
    mask = torch.ones(n, T)
    seqs = SequenceBatch(torch.zeros(n, T + 2, dtype=torch.long), torch.ones(n, T + 2, dtype=torch.long), mask, 2)
    zeros = torch.zeros(n, T)
    return with_counts(TrainBatch(seqs=seqs, advantages=torch.ones(n, T), old_logprobs=zeros, ref_logprobs=None,
                                  rollout_logprobs=zeros, rewards=torch.arange(n).float(), correct=torch.ones(n),
                                  group_index=gid, keep_groups=True))


@pytest.mark.parametrize("world,micro", [(1, 4), (2, 3), (3, 8), (5, 2), (8, 4)])
def test_every_micro_batch_holds_whole_groups(world, micro):
    batch = batch_of([4, 4, 1, 6, 3, 2])
    plan = group_plan(batch.group_index, world, micro)
    seen = torch.cat([rows for rank in plan for rows in rank])
    assert sorted(seen.tolist()) == list(range(len(batch)))
    for rank in plan:
        for rows in rank:
            for g in batch.group_index[rows].unique():
                assert (batch.group_index[rows] == g).sum() == (batch.group_index == g).sum()
            sizes = [int((batch.group_index[rows] == g).sum()) for g in batch.group_index[rows].unique()]
            assert len(rows) <= micro or len(sizes) == 1  # a group bigger than the micro-batch stands alone

    shards = group_shards(batch, world, micro)
    counts = {len(sizes) for _, sizes in shards}
    assert len(counts) == 1  # every rank runs the same number of micro-batches
    real = 0
    for shard, sizes in shards:
        assert sum(sizes) == len(shard)
        real += int((shard.seqs.response_mask.sum(-1) > 0).sum())
        assert shard.global_tokens == batch.global_tokens and shard.global_groups == batch.global_groups
    assert real == len(batch)  # padding rows are fully masked


def test_mini_batches_keep_groups_whole():
    batch = batch_of([4, 4, 1, 6, 3, 2, 5])
    parts = mini_batches(batch, 3, torch.Generator().manual_seed(0), count_empty_seqs=False)
    assert sum(len(p) for p in parts) == len(batch)
    for p in parts:
        assert p.keep_groups
        for g in p.group_index.unique():
            assert (p.group_index == g).sum() == (batch.group_index == g).sum()
        assert p.global_groups == p.group_index.unique().numel()
