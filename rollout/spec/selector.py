"""Adaptive choice of K per iteration: a cost model plus ε-greedy over K arms per batch-size bucket.

TLT's BEG-MAB buckets batch sizes and keeps, per bucket, the strategy with the best measured
accepted-tokens-per-second. Here the reward is modelled rather than only sampled, so information
is shared between arms (speculative.md §5.5):

    goodput(B, K) = B · E(K) / c(bucket(B), K),    E(K) = 1 + Σ_{j≤K} Π_{i≤j} âᵢ

âᵢ is the conditional acceptance of draft position i (shared by every bucket: acceptance does not
depend on the batch), c the measured wall time of one iteration per (bucket, K), both discounted
(old observations fade: the policy drifts and contexts grow). Unmeasured cells are tried first
(each ``min_trials`` times), then the best arm is used, a random arm with probability ε, and the
current arm is only left for one better by more than ``hysteresis`` (no thrashing between arms
whose estimates are within noise). K = 0 is always an arm, so SD never costs much more than plain
decoding, and arms with B·(K+1) > ``max_verify_tokens`` are never chosen (the memory cap).
"""

from __future__ import annotations

import random
from typing import Optional

BUCKETS = (1, 2, 3, 5, 9, 17, 33)  # lower edges: {1}, {2}, {3-4}, {5-8}, {9-16}, {17-32}, {33+}


def bucket_of(batch: int) -> int:
    """Index of the batch-size bucket holding ``batch``."""
    return max(i for i, lo in enumerate(BUCKETS) if batch >= lo)


class AdaptiveK:
    def __init__(self, arms=(0, 1, 2, 3, 4, 6, 8), epsilon: float = 0.05, hysteresis: float = 0.05,
                 decay: float = 0.98, min_trials: int = 2, max_verify_tokens: int = 0, prior_accept: float = 0.6,
                 seed: int = 0):
        self.arms = sorted(set(arms) | {0})
        self.epsilon, self.hysteresis, self.decay = epsilon, hysteresis, decay
        self.min_trials, self.max_verify_tokens = min_trials, max_verify_tokens
        kmax = max(self.arms)
        # discounted counts: tried[i] drafts reached position i+1, hit[i] were accepted there
        self.tried = [0.0] * kmax
        self.hit = [0.0] * kmax
        self.prior = prior_accept
        self.cost: dict[tuple[int, int], list[float]] = {}  # (bucket, K) -> [discounted seconds, weight, trials]
        self.current: dict[int, int] = {}
        self.rng = random.Random(seed)

    # ---- the model
    def accept_probs(self) -> list[float]:
        """âᵢ for i = 1..Kmax (a weak prior of one pseudo-observation at ``prior_accept``)."""
        return [(h + self.prior) / (t + 1.0) for h, t in zip(self.hit, self.tried)]

    def expected_tokens(self, k: int) -> float:
        """E(K): tokens per iteration and row under the acceptance model."""
        total, run = 1.0, 1.0
        for a in self.accept_probs()[:k]:
            run *= a
            total += run
        return total

    def goodput(self, batch: int, k: int) -> Optional[float]:
        cell = self.cost.get((bucket_of(batch), k))
        if cell is None or cell[1] <= 0:
            return None
        return batch * self.expected_tokens(k) / (cell[0] / cell[1])

    # ---- the policy
    def allowed(self, batch: int) -> list[int]:
        cap = self.max_verify_tokens
        return [k for k in self.arms if k == 0 or not cap or batch * (k + 1) <= cap]

    def choose(self, batch: int) -> int:
        b, arms = bucket_of(batch), self.allowed(batch)
        untried = [k for k in arms if self.cost.get((b, k), [0, 0, 0])[2] < self.min_trials]
        if untried:
            return untried[0]
        if self.rng.random() < self.epsilon:
            return self.rng.choice(arms)
        scores = {k: self.goodput(batch, k) for k in arms}
        best = max(arms, key=lambda k: scores[k])
        cur = self.current.get(b)
        if cur in scores and scores[best] <= scores[cur] * (1.0 + self.hysteresis):
            best = cur
        self.current[b] = best
        return best

    def observe(self, batch: int, k: int, seconds: float, n_acc: Optional[list[int]]) -> None:
        """One iteration's wall time, and (K > 0) how many drafts each row accepted."""
        cell = self.cost.setdefault((bucket_of(batch), k), [0.0, 0.0, 0])
        cell[0] = cell[0] * self.decay + seconds
        cell[1] = cell[1] * self.decay + 1.0
        cell[2] += 1
        if not k or not n_acc:
            return
        self.tried = [t * self.decay for t in self.tried]
        self.hit = [h * self.decay for h in self.hit]
        for n in n_acc:
            for i in range(min(n + 1, k)):  # positions reached: 1..n accepted, n+1 rejected (if n < K)
                self.tried[i] += 1.0
                self.hit[i] += 1.0 if i < n else 0.0

    def table(self, batches=(1, 2, 4, 8, 16, 32, 64)) -> dict[int, int]:
        """The greedy K per batch size (no exploration): what a static batch-size → K schedule would be."""
        out = {}
        for batch in batches:
            scores = {k: self.goodput(batch, k) for k in self.allowed(batch)}
            known = {k: s for k, s in scores.items() if s is not None}
            out[batch] = max(known, key=known.get) if known else 0
        return out

    def reset_acceptance(self) -> None:
        """Forget acceptance (a new drafter version); costs stay valid."""
        self.tried = [0.0] * len(self.tried)
        self.hit = [0.0] * len(self.hit)
