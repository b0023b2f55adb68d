"""The update plan, decided on the driver: the optimizer steps of an RL step, and which rows each
learner rank runs in which micro-batches.

- **Optimizer steps** (``mini_batches``): ``learner.updates_per_step`` shuffled parts of the step's
  batch, each with its own global counts; whole groups for a loss with the ``keep_groups`` trait.

One rank plan serves the log-prob pass and every optimizer step:

- **Buckets by length.** Rows (or, for a loss with the ``keep_groups`` trait such as DRPO, whole
  groups) are sorted by their real token count, longest first, and dealt to the rank with the fewest
  rows so far; each rank packs them, in that order, into micro-batches of at most
  ``learner.micro_batch_size`` rows (a bigger group is a micro-batch of its own). Rows of similar length
  then share a micro-batch, and the learner cuts each micro-batch to its own width
  (``SequenceBatch.trimmed``), so little compute goes to padding. Inside a micro-batch the learner
  then packs whole sequences end to end into fewer rows (rlreason.workers.packing), which removes the
  rest; bucketing still decides which rows share a micro-batch, on every model.
- **Equal micro-batch counts.** ZeRO communicates inside forward and backward, so every rank must run
  the same number of micro-batches: a rank with fewer gets one-row micro-batches of a fully masked row
  (zero response mask and advantages), which carry no loss.

Losses use global denominators (``TrainBatch.global_*``), so the split never changes the step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, TypeVar, Union

import torch
from torch import Tensor

from rlreason.batches import with_counts
from rlreason.types import LogprobResult, SequenceBatch, TrainBatch

Rows = TypeVar("Rows", SequenceBatch, TrainBatch)


@dataclass
class RankShare:
    """One rank's part of the plan: its rows in order, padding rows last, and its micro-batch sizes."""

    rows: Tensor  # [n] long, row indices into the planned batch (padding rows repeat row 0)
    real: int  # the first ``real`` entries of ``rows`` are the rank's own rows
    micro_sizes: list[int]  # consecutive micro-batch sizes, summing to len(rows)

    def micro_rows(self) -> list[Tensor]:
        """The row indices of each micro-batch of real rows (padding ones are one row each, last)."""
        return list(self.rows.split(self.micro_sizes))[:len(self.micro_sizes) - (len(self.rows) - self.real)]


def mini_batches(batch: TrainBatch, parts: int, generator: torch.Generator, count_empty_seqs: bool) -> list[TrainBatch]:
    """Split a step's batch into ``parts`` shuffled optimizer steps, each with its own global counts."""
    if parts == 1:
        return [batch]
    if batch.keep_groups:  # whole groups per mini-batch: the loss couples a prompt's responses (DRPO)
        groups = batch.group_index.unique()
        order = groups[torch.randperm(len(groups), generator=generator)]
        return [with_counts(batch.rows(torch.isin(batch.group_index, part).nonzero().squeeze(1)), count_empty_seqs)
                for part in order.tensor_split(parts)]
    order = torch.randperm(len(batch), generator=generator)
    return [with_counts(batch.rows(idx), count_empty_seqs) for idx in order.tensor_split(parts)]


def plan(lengths: Tensor, world: int, micro: int, group_index: Optional[Tensor] = None) -> list[RankShare]:
    """The plan for a batch whose rows cost ``lengths`` [N] tokens; ``group_index`` [N] keeps groups whole."""
    if group_index is None:
        units = [torch.tensor([i]) for i in range(len(lengths))]
    else:
        units = [(group_index == g).nonzero().squeeze(1) for g in group_index.unique()]
    units.sort(key=lambda rows: -int(lengths[rows].max()))  # stable: equal lengths keep their order
    ranks: list[list[Tensor]] = [[] for _ in range(world)]
    loads = [0] * world
    for rows in units:
        r = loads.index(min(loads))
        ranks[r].append(rows)
        loads[r] += len(rows)
    micros = [_pack(units_of_rank, micro) for units_of_rank in ranks]
    count = max(max(len(m) for m in micros), 1)
    shares = []
    for m in micros:
        real = torch.cat(m) if m else torch.zeros(0, dtype=torch.long)
        pad = count - len(m)
        shares.append(RankShare(torch.cat([real, torch.zeros(pad, dtype=torch.long)]), len(real),
                                [len(x) for x in m] + [1] * pad))
    return shares


def _pack(units: list[Tensor], micro: int) -> list[Tensor]:
    """Consecutive units into micro-batches of at most ``micro`` rows (a bigger unit stands alone)."""
    out: list[list[Tensor]] = []
    for rows in units:
        if out and sum(len(x) for x in out[-1]) + len(rows) <= micro:
            out[-1].append(rows)
        else:
            out.append([rows])
    return [torch.cat(m) for m in out]


def plan_for(batch: Union[SequenceBatch, TrainBatch], world: int, micro: int) -> list[RankShare]:
    seqs = batch.seqs if isinstance(batch, TrainBatch) else batch
    groups = batch.group_index if isinstance(batch, TrainBatch) and batch.keep_groups else None
    return plan(seqs.lengths, world, micro, groups)


def take(batch: Rows, share: RankShare) -> Rows:
    """The rank's rows of ``batch``; padding rows carry no loss (zero response mask and advantages)."""
    out = batch.rows(share.rows)
    if share.real == len(share.rows):
        return out
    seqs = out.seqs if isinstance(out, TrainBatch) else out
    mask = seqs.response_mask.clone()
    mask[share.real:] = 0.0
    seqs = replace(seqs, response_mask=mask)
    if isinstance(out, SequenceBatch):
        return seqs
    adv = out.advantages.clone()
    adv[share.real:] = 0.0
    return replace(out, seqs=seqs, advantages=adv)


def split(batch: Rows, sizes: list[int]) -> list[Rows]:
    """A rank's batch as its consecutive micro-batches, each cut to its own width (on the learner)."""
    return [batch.rows(idx).trimmed() for idx in torch.arange(len(batch)).split(sizes)]


def gather(parts: list[Optional[LogprobResult]], shares: list[RankShare], n: int) -> Optional[LogprobResult]:
    """The ranks' per-row results back in the batch's row order (padding rows dropped)."""
    if parts[0] is None:
        return None

    def one(get) -> Optional[Tensor]:
        if get(parts[0]) is None:
            return None
        width = max(get(p).shape[1] for p in parts)
        out = torch.zeros(n, width, dtype=get(parts[0]).dtype)
        for share, part in zip(shares, parts):
            values = get(part)[:share.real]
            out[share.rows[:share.real], :values.shape[1]] = values
        return out

    return LogprobResult(one(lambda p: p.old_logprobs), one(lambda p: p.entropy), one(lambda p: p.ref_logprobs))
