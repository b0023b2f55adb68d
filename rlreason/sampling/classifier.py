"""Online difficulty classifier: each prompt's bin of recent pass@k (GDRO, arXiv:2601.19280; algorithms.md §11.2).

After every step, each prompt (uid) seen records c = 1 if any of its responses was correct. Its rate
p̂ is the mean of its last ``history`` records (0 = all of them; an unseen uid has p̂ = 0, the hardest
bin). Bins are [a_b, a_{b+1}) over the edges 0 = a_0 < … < a_B = 1 (``edges`` gives the inner ones;
default ``num_bins`` equal widths). Hysteresis δ: a uid changes bin only once p̂ is δ past the edge
between the lower of its old and new bins and the bin above it (the true shared edge). The reference
code, moving down through equal-width bins, compares with the new bin's *lower* edge, which p̂ is at or
above by definition, so there a prompt never moves down; ``hysteresis_compat`` keeps that for parity
tests. ``exclude_extremes`` puts p̂ ∈ {0, 1} into an extra bin, number ``num_bins``.
"""

from __future__ import annotations

import bisect
from typing import Any, Optional, Sequence


class DifficultyClassifier:
    def __init__(self, num_bins: int = 10, edges: Optional[Sequence[float]] = None, history: int = 100,
                 hysteresis: float = 0.03, exclude_extremes: bool = False, hysteresis_compat: bool = False):
        inner = sorted(float(e) for e in edges) if edges else [b / num_bins for b in range(1, num_bins)]
        if any(not 0.0 < e < 1.0 for e in inner) or len(set(inner)) != len(inner):
            raise ValueError(f"difficulty bins: edges must be distinct values in (0, 1), got {list(edges or [])}")
        self.edges = [0.0, *inner, 1.0]  # a_0 .. a_B
        self.num_bins = len(inner) + 1
        self.equal_width = not edges
        self.history, self.hysteresis = history, hysteresis
        self.exclude_extremes, self.compat = exclude_extremes, hysteresis_compat
        self.records: dict[int, list[float]] = {}  # uid -> recent c values (all of them when history = 0)
        self.last: dict[int, int] = {}  # uid -> the bin it was last given

    def record(self, uids: Sequence[int], passed: Sequence[float]) -> None:
        """One pass@k observation (1.0 / 0.0) per uid, in step order."""
        for uid, c in zip(uids, passed):
            rec = self.records.setdefault(int(uid), [])
            rec.append(1.0 if float(c) > 0.5 else 0.0)
            if self.history > 0 and len(rec) > self.history:
                del rec[: len(rec) - self.history]

    def rate(self, uid: int) -> float:
        rec = self.records.get(int(uid))
        return sum(rec) / len(rec) if rec else 0.0

    def raw_bin(self, p: float) -> int:
        """b with a_b <= p < a_{b+1}; p = 1 lands in the top bin."""
        return min(bisect.bisect_right(self.edges, p) - 1, self.num_bins - 1)

    def classify(self, uids: Sequence[int]) -> list[int]:
        """Each uid's bin now (updates the remembered bin that hysteresis compares against)."""
        return [self._classify(int(u)) for u in uids]

    def _classify(self, uid: int) -> int:
        p = self.rate(uid)
        if self.exclude_extremes and p in (0.0, 1.0):
            return self.num_bins
        new = self.raw_bin(p)
        prev = self.last.get(uid, new)
        if prev >= self.num_bins:  # was excluded; nothing to resist
            prev = new
        if new != prev and self.hysteresis > 0:
            edge = self.edges[min(prev, new) + 1]  # the edge above the lower of the two bins
            if self.compat and self.equal_width and new < prev:
                edge = self.edges[new]  # reference code: raw_bin / B, one edge too low
            if (new > prev and p < edge + self.hysteresis) or (new < prev and p > edge - self.hysteresis):
                new = prev
        self.last[uid] = new
        return new

    def state_dict(self) -> dict[str, Any]:
        return {"records": {u: list(r) for u, r in self.records.items()}, "last": dict(self.last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records = {int(u): list(r) for u, r in state["records"].items()}
        self.last = {int(u): int(b) for u, b in state["last"].items()}
