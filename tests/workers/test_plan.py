"""The update plan (rlreason.workers.plan): every row once, the same number of micro-batches on every
rank, padding that carries no loss, micro-batches of similar lengths, whole groups for losses with the
keep_groups trait (DRPO); trimmed micro-batches whose log-probs equal the padded ones; and mini-batches
that keep groups whole."""

import pytest
import torch

from rlreason.batches import with_counts
from rlreason.types import LogprobResult, SequenceBatch, TrainBatch
from rlreason.workers import plan


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
@pytest.mark.parametrize("keep_groups", [True, False])
def test_every_row_once_and_every_micro_batch_holds_whole_groups(world, micro, keep_groups):
    batch = batch_of([4, 4, 1, 6, 3, 2])
    batch.keep_groups = keep_groups
    shares = plan.plan_for(batch, world, micro)
    real = torch.cat([s.rows[:s.real] for s in shares])
    assert sorted(real.tolist()) == list(range(len(batch)))
    assert len({len(s.micro_sizes) for s in shares}) == 1  # every rank runs the same number of micro-batches
    for share in shares:
        assert sum(share.micro_sizes) == len(share.rows)
        shard = plan.take(batch, share)
        assert int((shard.seqs.response_mask.sum(-1) > 0).sum()) == share.real  # padding rows are fully masked
        assert float(shard.advantages[share.real:].abs().sum()) == 0.0
        assert shard.global_tokens == batch.global_tokens and shard.global_groups == batch.global_groups
        for rows in share.micro_rows():
            if not keep_groups:
                assert len(rows) <= micro
                continue
            for g in batch.group_index[rows].unique():
                assert (batch.group_index[rows] == g).sum() == (batch.group_index == g).sum()
            sizes = [int((batch.group_index[rows] == g).sum()) for g in batch.group_index[rows].unique()]
            assert len(rows) <= micro or len(sizes) == 1  # a group bigger than the micro-batch stands alone


def test_rows_of_similar_length_share_a_micro_batch():
    lengths = torch.tensor([3, 40, 5, 38, 4, 41, 6, 39])
    (share,) = plan.plan(lengths, world=1, micro=4)
    first, second = share.rows.split(share.micro_sizes)
    assert sorted(lengths[first].tolist()) == [38, 39, 40, 41] and sorted(lengths[second].tolist()) == [3, 4, 5, 6]
    two = plan.plan(lengths, world=2, micro=2)
    assert [s.real for s in two] == [4, 4]  # rows are balanced between ranks


def test_trimmed_micro_batch_has_the_padded_log_probs(tiny_model_dir):
    """Cutting the all-padding columns changes no log-prob (fp32, 1e-5), and the plan's gather puts
    every row back in its place."""
    from transformers import AutoModelForCausalLM

    from rlreason.kernels.lm_head import model_logprobs_entropy
    from shared_builders import fixed_batch

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    batch = fixed_batch(tiny_model_dir, n=8)

    def logprobs(seqs):
        mask = seqs.attention_mask
        inputs = dict(input_ids=seqs.input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                      use_cache=False)
        p = seqs.prompt_width
        with torch.no_grad():
            return model_logprobs_entropy(model, inputs, seqs.input_ids[:, p:], p - 1, 1.0, False, impl="naive")[0]

    full = logprobs(batch.seqs) * batch.seqs.response_mask
    shares = plan.plan_for(batch.seqs, world=2, micro=3)
    parts, widths = [], []
    for share in shares:
        shard = plan.take(batch.seqs, share)
        pieces = [logprobs(mb) for mb in plan.split(shard, share.micro_sizes)]
        widths += [p.shape[1] for p in pieces]
        width = full.shape[1]
        old = torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in pieces])
        parts.append(LogprobResult(old, old))
    assert min(widths) < full.shape[1]  # some micro-batch was cut
    back = plan.gather(parts, shares, len(batch))
    torch.testing.assert_close(back.old_logprobs * batch.seqs.response_mask, full, atol=1e-5, rtol=0)


def test_mini_batches_keep_groups_whole():
    batch = batch_of([4, 4, 1, 6, 3, 2, 5])
    parts = plan.mini_batches(batch, 3, torch.Generator().manual_seed(0), count_empty_seqs=False)
    assert sum(len(p) for p in parts) == len(batch)
    for p in parts:
        assert p.keep_groups
        for g in p.group_index.unique():
            assert (p.group_index == g).sum() == (batch.group_index == g).sum()
        assert p.global_groups == p.group_index.unique().numel()


def test_the_rendezvous_port_is_picked_where_no_outgoing_connection_or_ray_worker_takes_it():
    """free_port picks below the kernel's ephemeral range and above Ray's worker ports: a port from the
    ephemeral range was sometimes taken between the pick and the learner's bind ("Address already in use")."""
    import socket

    from rlreason.workers.groups import RAY_WORKER_PORTS_END, ephemeral_ports_start, free_port

    for host in ("127.0.0.1", ""):
        port = free_port(host)
        assert RAY_WORKER_PORTS_END <= port < ephemeral_ports_start()
        with socket.socket() as s:
            s.bind((host, port))  # still free
