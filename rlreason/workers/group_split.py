"""Group-aligned shards and micro-batches, for losses that couple a prompt's responses (DRPO).

A policy loss registered with the ``keep_groups`` trait must see every response of a prompt in
one micro-batch (its per-prompt term is then exact there, whatever the split). Whole groups go to
the rank with the fewest rows so far, and each rank packs its groups, in order, into micro-batches
of at most ``learner.micro_batch_size`` rows (a bigger group is a micro-batch of its own). Every
rank must run the same number of micro-batches — ZeRO communicates inside forward and backward —
so a rank with fewer gets one-row micro-batches of a fully masked row, which carry no loss.
Not here: balancing by token count (rows only), and splitting a group that exceeds one device.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from rlreason.types import TrainBatch


def group_plan(group_index: Tensor, world: int, micro: int) -> list[list[Tensor]]:
    """Row indices per rank per micro-batch, each micro-batch a union of whole groups."""
    ranks: list[list[Tensor]] = [[] for _ in range(world)]
    loads = [0] * world
    for g in group_index.unique().tolist():
        rows = (group_index == g).nonzero().squeeze(1)
        r = loads.index(min(loads))
        ranks[r].append(rows)
        loads[r] += len(rows)
    plan = []
    for groups in ranks:
        micros: list[list[Tensor]] = []
        for rows in groups:
            if micros and sum(len(x) for x in micros[-1]) + len(rows) <= micro:
                micros[-1].append(rows)
            else:
                micros.append([rows])
        plan.append([torch.cat(m) for m in micros])
    return plan


def group_shards(batch: TrainBatch, world: int, micro: int) -> list[tuple[TrainBatch, list[int]]]:
    """Per rank: its rows (whole groups, then padding) and the row count of each of its micro-batches.

    Every rank gets the same number of micro-batches; padding rows copy row 0 with a zero mask and
    zero advantages (the global counts of ``batch`` already exclude them).
    """
    plan = group_plan(batch.group_index, world, micro)
    num_micro = max(max(len(p) for p in plan), 1)
    out = []
    for micros in plan:
        pad = num_micro - len(micros)
        real = torch.cat(micros) if micros else torch.zeros(0, dtype=torch.long)
        shard = batch.rows(torch.cat([real, torch.zeros(pad, dtype=torch.long)]))
        out.append((_mask_rows_from(shard, len(real)), [len(m) for m in micros] + [1] * pad))
    return out


def _mask_rows_from(shard: TrainBatch, start: int) -> TrainBatch:
    """Rows ``start:`` carry no loss: zero response mask and advantages."""
    if start == len(shard):
        return shard
    mask, adv = shard.seqs.response_mask.clone(), shard.advantages.clone()
    mask[start:] = 0.0
    adv[start:] = 0.0
    return replace(shard, seqs=replace(shard.seqs, response_mask=mask), advantages=adv)
