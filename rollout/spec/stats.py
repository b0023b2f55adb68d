"""Speculative-decoding counters, with vLLM's definitions so CPU and GPU numbers compare directly.

mean acceptance length = 1 + accepted / drafts (the bonus or correction token counts), acceptance
rate = accepted / draft tokens, per-position acceptance i = P(drafts 1..i all accepted | K ≥ i).
Counters are sums, so workers' dicts add up (``RolloutBatch.concat``) before rates are taken.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_POS = 8  # per-position counters kept for positions 1..8 (the largest K arm)
TAIL_BATCH = 2  # "tail phase": iterations whose live batch is at most this


@dataclass
class SpecStats:
    """Counters of one generate call (or several, summed)."""

    iters: int = 0  # engine iterations (one target forward each)
    sd_iters: int = 0  # iterations with K > 0
    drafts: int = 0  # rows verified with K > 0 (vLLM num_drafts)
    draft_tokens: int = 0
    accepted: int = 0
    emitted: int = 0  # tokens recorded (after EOS / length truncation)
    draft_s: float = 0.0
    verify_s: float = 0.0  # target forward + verification + rollback of SD iterations
    plain_s: float = 0.0  # K = 0 iterations
    tail_s: float = 0.0  # time and tokens of iterations with batch <= TAIL_BATCH
    tail_tokens: int = 0
    batch_sum: int = 0  # Σ live batch over iterations (mean batch = batch_sum / iters)
    drafted_pos: list[int] = field(default_factory=lambda: [0] * MAX_POS)
    accepted_pos: list[int] = field(default_factory=lambda: [0] * MAX_POS)
    k_iters: dict[int, int] = field(default_factory=dict)
    trace: list[tuple[int, int, float, int]] = field(default_factory=list)  # (batch, K, seconds, tokens)

    def record(self, batch: int, k: int, seconds: float, tokens: int, draft_s: float = 0.0,
               n_acc: list[int] | None = None) -> None:
        """One iteration: ``batch`` live rows ran with ``k`` drafts and emitted ``tokens``."""
        self.iters += 1
        self.emitted += tokens
        self.batch_sum += batch
        self.k_iters[k] = self.k_iters.get(k, 0) + 1
        self.trace.append((batch, k, seconds, tokens))
        if batch <= TAIL_BATCH:
            self.tail_s += seconds
            self.tail_tokens += tokens
        if k == 0:
            self.plain_s += seconds
            return
        self.sd_iters += 1
        self.draft_s += draft_s
        self.verify_s += seconds - draft_s
        self.drafts += batch
        self.draft_tokens += batch * k
        self.accepted += sum(n_acc or [])
        for i in range(min(k, MAX_POS)):
            self.drafted_pos[i] += batch
            self.accepted_pos[i] += sum(1 for n in n_acc or [] if n > i)

    def as_dict(self) -> dict[str, float]:
        """Flat counters for ``RolloutBatch.stats`` (summed across workers)."""
        out = {f"spec/n/{k}": float(v) for k, v in vars(self).items() if isinstance(v, (int, float))}
        for i in range(MAX_POS):
            out[f"spec/n/drafted_pos{i + 1}"] = float(self.drafted_pos[i])
            out[f"spec/n/accepted_pos{i + 1}"] = float(self.accepted_pos[i])
        for k, v in self.k_iters.items():
            out[f"spec/n/k{k}_iters"] = float(v)
        return out


def spec_metrics(counters: dict[str, float]) -> dict[str, float]:
    """metrics.jsonl keys from summed counters: spec/accept_len, spec/accept_rate, per-position, K histogram."""
    c = lambda k: counters.get(f"spec/n/{k}", 0.0)  # noqa: E731
    if not c("iters"):
        return {}
    # wall-clock numbers live under spec/time/ (rlreason.checkpoint.WALL_CLOCK_KEYS: not compared on resume)
    out = {
        "spec/sd_frac": c("sd_iters") / c("iters"),
        "spec/iters": c("iters"),
        "spec/time/draft_s": c("draft_s"),
        "spec/time/verify_s": c("verify_s"),
        "spec/time/plain_s": c("plain_s"),
        "spec/time/tail_frac": c("tail_s") / max(c("draft_s") + c("verify_s") + c("plain_s"), 1e-9),
        "spec/time/tail_tokens_per_s": c("tail_tokens") / c("tail_s") if c("tail_s") else 0.0,
    }
    if c("drafts"):
        out["spec/accept_len"] = 1.0 + c("accepted") / c("drafts")
        out["spec/accept_rate"] = c("accepted") / max(c("draft_tokens"), 1.0)
        for i in range(1, MAX_POS + 1):
            if c(f"drafted_pos{i}"):
                out[f"spec/accept_pos{i}"] = c(f"accepted_pos{i}") / c(f"drafted_pos{i}")
    for key, value in counters.items():
        if key.startswith("spec/n/k") and key.endswith("_iters"):
            out[f"spec/k_frac/{key[len('spec/n/k'):-len('_iters')]}"] = value / c("iters")
    return out


def rollout_curve_metrics(batch_sizes: list[int]) -> dict[str, float]:
    """The long-tail curve (live rows per engine iteration, summed over workers) in a few numbers.

    ``rollout/batch_size/first`` is the starting batch, ``.../mean`` the mean live batch,
    ``rollout/iters`` the iterations of the slowest worker's decode loop and ``rollout/tail_iter_frac``
    the share of iterations at batch <= TAIL_BATCH: where SD pays (TLT), and what it shortens.
    """
    if not batch_sizes:
        return {}
    return {"rollout/batch_size/first": float(batch_sizes[0]),
            "rollout/batch_size/mean": sum(batch_sizes) / len(batch_sizes),
            "rollout/iters": float(len(batch_sizes)),
            "rollout/tail_iter_frac": sum(b <= TAIL_BATCH for b in batch_sizes) / len(batch_sizes)}
