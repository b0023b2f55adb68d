"""Sequence packing for the learner's forward: a micro-batch's sequences end to end in fewer rows.

A micro-batch row is [left-padded prompt | response | right padding], and responses of one batch
differ in length, so a fifth to a half of its tensor is padding. Packing lays the real tokens
(attention mask 1) of several sequences side by side in rows as wide as the longest sequence
(first-fit decreasing), with position ids restarting at 0 for each sequence. Given restarting
position ids and no attention mask, transformers builds a block-diagonal causal mask (eager, SDPA
and flash attention alike), so no token attends across sequences and each sequence computes what it
computes alone. ``packing_is_exact`` checks that once per model, at start-up; where it does not hold
the learner keeps padded rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from rlreason.types import SequenceBatch


@dataclass
class Packed:
    """Whole sequences end to end, and where each response token's prediction sits."""

    input_ids: Tensor  # [m, W] long, m < n rows; token 0 after a row's last sequence
    position_ids: Tensor  # [m, W] long, restarting at 0 at every sequence (and at the trailing padding)
    rows: Tensor  # [n, T] long: packed row whose hidden state predicts response token j of sequence i
    cols: Tensor  # [n, T] long: its column (for a response slot that is padding: the sequence's first token)



def first_fit(lengths: list[int], width: int) -> tuple[list[tuple[int, int]], list[int]]:
    """(row, offset) of each sequence, longest first into the first row with room (first-fit decreasing),
    and the tokens used in each row."""
    fill: list[int] = []
    place = [(0, 0)] * len(lengths)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, used in enumerate(fill) if used + lengths[i] <= width), len(fill))
        if row == len(fill):
            fill.append(0)
        place[i] = (row, fill[row])
        fill[row] += lengths[i]
    return place, fill


def pack(seqs: SequenceBatch) -> Optional[Packed]:
    """The micro-batch packed, or None when packing saves no row."""
    mask = seqs.attention_mask.bool()
    lengths = mask.sum(1).tolist()
    width = max(lengths)
    place, fill = first_fit(lengths, width)
    m = len(fill)
    if m >= len(lengths):
        return None
    ids = torch.zeros(m, width, dtype=seqs.input_ids.dtype)
    pos = torch.zeros(m, width, dtype=torch.long)
    p = seqs.prompt_width
    rank = mask.long().cumsum(1) - 1  # [n, P+T] index of each real token among its row's real tokens
    pred = rank[:, p - 1:-1].clamp(min=0)  # column P-1+j predicts response token j
    rows = torch.empty(len(lengths), seqs.response_mask.shape[1], dtype=torch.long)
    cols = torch.empty_like(rows)
    for i, (r, off) in enumerate(place):
        n = lengths[i]
        ids[r, off:off + n] = seqs.input_ids[i, mask[i]]
        pos[r, off:off + n] = torch.arange(n)
        rows[i] = r
        cols[i] = off + pred[i]
    for r, used in enumerate(fill):  # a row's trailing padding restarts at 0 too: a segment of its own
        pos[r, used:] = torch.arange(width - used)
    return Packed(ids, pos, rows, cols)


def model_inputs(seqs: SequenceBatch, device: str, packing: bool) -> tuple[dict, Optional[tuple[Tensor, Tensor]]]:
    """The forward's inputs for a micro-batch and, packed, (rows, columns) of its response predictions
    (None: padded rows, where column P-1+j predicts response token j)."""
    packed = pack(seqs) if packing else None
    if packed is not None:
        inputs = dict(input_ids=packed.input_ids.to(device), position_ids=packed.position_ids.to(device),
                      use_cache=False)
        return inputs, (packed.rows.to(device), packed.cols.to(device))
    ids, mask = seqs.input_ids.to(device), seqs.attention_mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return dict(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False), None


@torch.no_grad()
def packing_is_exact(model, device: str) -> bool:
    """Whether ``model`` keeps packed sequences apart: the second sequence's logits must not depend on the
    first's tokens (bit for bit) and must equal its logits alone (positions restart)."""
    first_a, first_b, second = [3, 4, 5, 6], [7, 8, 9, 10], [11, 12, 13]
    pos = torch.tensor([list(range(4)) + list(range(3))], device=device)

    def logits(ids: list[int], positions: Optional[Tensor] = None) -> Tensor:
        out = model(input_ids=torch.tensor([ids], device=device), position_ids=positions, use_cache=False)
        return out.logits[0].float()

    a, b = logits(first_a + second, pos)[4:], logits(first_b + second, pos)[4:]
    alone = logits(second)
    tol = 1e-4 if next(model.parameters()).dtype == torch.float32 else 5e-2  # bf16 rounds the logits coarsely
    return torch.equal(a, b) and torch.allclose(a, alone, atol=tol, rtol=tol)
