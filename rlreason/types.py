"""Typed batches: what crosses process boundaries (Ray) between controller and workers.

Glossary of shapes used in the comments:
    B  prompts in a step
    G  samples (responses) per prompt; may differ per prompt (ragged groups)
    N  responses in the batch, N = sum of group sizes (= B·G when every group has G)
    P  prompt width (left-padded)
    T  response width (right-padded)
    n  rows of one shard / micro-batch

Sequence layout, shared by the rollout engine and the learner: the prompt is left-padded to P,
the response right-padded to T, so ``input_ids = [prompt | response]`` is [N, P+T] and the logits
at positions P-1 … P+T-2 predict the response tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Optional

import torch
from torch import Tensor


def _pad_cat(tensors: list[Tensor], value: float, left: bool = False) -> Tensor:
    """Concatenate [n_i, W_i] tensors along dim 0, padding the width to max W_i."""
    width = max(t.shape[1] for t in tensors)
    out = []
    for t in tensors:
        pad = width - t.shape[1]
        if pad:
            filler = torch.full((t.shape[0], pad), value, dtype=t.dtype)
            t = torch.cat([filler, t] if left else [t, filler], dim=1)
        out.append(t)
    return torch.cat(out, dim=0)


@dataclass
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)  # stop strings (EOS always stops)


@dataclass
class GenerationRequest:
    """Prompts for one rollout worker; each prompt is sampled ``group_sizes[b]`` times."""

    prompt_ids: list[list[int]]  # B lists of prompt token ids (unpadded)
    group_sizes: list[int]  # [B] samples per prompt
    group_offset: int  # index of this request's first prompt in the step's batch
    sampling: SamplingParams
    seed: int  # per-request seed; sampling is deterministic given it


@dataclass
class RolloutBatch:
    """Responses from the rollout engine, one row per response (rows of a group are adjacent)."""

    prompt_ids: Tensor  # [N, P] long, left-padded with pad_id
    prompt_mask: Tensor  # [N, P] long, 1 on real prompt tokens
    response_ids: Tensor  # [N, T] long, right-padded with pad_id
    response_mask: Tensor  # [N, T] float, 1 on generated tokens (EOS included), 0 on padding
    rollout_logprobs: Tensor  # [N, T] float, log π_rollout(token) at the sampling temperature
    truncated: Tensor  # [N] bool, True when generation hit max_new_tokens (finish_reason "length")
    group_index: Tensor  # [N] long, index of the response's prompt within the step (0..B-1)
    response_text: list[str]  # [N] decoded responses (special tokens skipped)
    pad_id: int = 0
    gen_tokens: int = 0  # tokens generated for this batch (for throughput)
    gen_seconds: float = 0.0  # wall time of the engine's generate call
    batch_sizes: list[int] = field(default_factory=list)  # live rows per decode step (the long tail)
    stats: dict[str, float] = field(default_factory=dict)  # engine counters (speculative decoding), summed over workers
    weights_version: int = 0  # the policy version (RL step of its last update) that generated it; oldest worker's

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    @property
    def lengths(self) -> Tensor:  # [N] generated tokens per response
        return self.response_mask.sum(-1)

    @staticmethod
    def concat(parts: list["RolloutBatch"]) -> "RolloutBatch":
        pad = parts[0].pad_id
        return RolloutBatch(
            prompt_ids=_pad_cat([p.prompt_ids for p in parts], pad, left=True),
            prompt_mask=_pad_cat([p.prompt_mask for p in parts], 0, left=True),
            response_ids=_pad_cat([p.response_ids for p in parts], pad),
            response_mask=_pad_cat([p.response_mask for p in parts], 0),
            rollout_logprobs=_pad_cat([p.rollout_logprobs for p in parts], 0),
            truncated=torch.cat([p.truncated for p in parts]),
            group_index=torch.cat([p.group_index for p in parts]),
            response_text=[t for p in parts for t in p.response_text],
            pad_id=pad,
            gen_tokens=sum(p.gen_tokens for p in parts),
            gen_seconds=max(p.gen_seconds for p in parts),
            batch_sizes=_sum_curves([p.batch_sizes for p in parts]),
            stats={k: sum(p.stats.get(k, 0.0) for p in parts) for k in dict.fromkeys(k for p in parts for k in p.stats)},
            weights_version=min(p.weights_version for p in parts),
        )

    def select(self, rows: Tensor) -> "RolloutBatch":
        """Keep the given rows (a [k] long index), e.g. after filtering groups."""
        idx = rows.tolist()
        return replace(
            self,
            prompt_ids=self.prompt_ids[rows],
            prompt_mask=self.prompt_mask[rows],
            response_ids=self.response_ids[rows],
            response_mask=self.response_mask[rows],
            rollout_logprobs=self.rollout_logprobs[rows],
            truncated=self.truncated[rows],
            group_index=self.group_index[rows],
            response_text=[self.response_text[i] for i in idx],
        )


def _sum_curves(curves: list[list[int]]) -> list[int]:
    """Live batch size per decode step summed over workers that decode in parallel."""
    out = [0] * max((len(c) for c in curves), default=0)
    for c in curves:
        for i, v in enumerate(c):
            out[i] += v
    return out


@dataclass
class ScoreRequest:
    """What a reward worker needs to score responses."""

    prompts: list[str]  # [N] prompt text of each response
    responses: list[str]  # [N] response text
    rows: list[dict[str, Any]]  # [N] the dataset row of each response (ground truth + every column)
    sample_ids: list[int]  # [N] ids used in error reports
    response_lengths: list[int]  # [N] generated tokens (length-aware rewards)
    truncated: list[bool]  # [N]
    group_ids: list[int] = field(default_factory=list)  # [N] prompt of each response (group rewards); [] = own group each
    step: int = 0  # RL step (rewards with a schedule, e.g. a length penalty switched on later)

    def select(self, idx: list[int]) -> "ScoreRequest":
        """The sub-request of rows ``idx`` (a reward worker's share: whole groups)."""
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        return replace(self, prompts=pick(self.prompts), responses=pick(self.responses), rows=pick(self.rows),
                       sample_ids=pick(self.sample_ids), response_lengths=pick(self.response_lengths),
                       truncated=pick(self.truncated), group_ids=pick(self.group_ids) if self.group_ids else [])


@dataclass
class RewardResult:
    """Scores for a ScoreRequest, in the same order."""

    scores: Tensor  # [N] float, weighted sum of the reward functions (NaN = no reward applied)
    correct: Tensor  # [N] float in {0,1}, NaN where no verifier ran
    components: dict[str, Tensor]  # reward name -> [N] float (NaN = not applicable); logged as reward/<name>/mean
    errors: list[str] = field(default_factory=list)  # one per failed or timed-out call: function, sample(s), traceback
    drop: Optional[Tensor] = None  # [N] bool, rows of groups to drop before advantages (reward.on_error=drop_group)
    dropped_groups: int = 0  # groups already removed from this result (counted for metrics)
    dropped_samples: int = 0  # responses already removed from this result

    @staticmethod
    def concat(parts: list["RewardResult"]) -> "RewardResult":
        names = list(dict.fromkeys(k for p in parts for k in p.components))
        full = lambda p, k: p.components.get(k, torch.full_like(p.scores, float("nan")))  # noqa: E731
        drops = [p.drop if p.drop is not None else torch.zeros(len(p.scores), dtype=torch.bool) for p in parts]
        return RewardResult(
            scores=torch.cat([p.scores for p in parts]),
            correct=torch.cat([p.correct for p in parts]),
            components={k: torch.cat([full(p, k) for p in parts]) for k in names},
            errors=[e for p in parts for e in p.errors],
            drop=torch.cat(drops) if any(p.drop is not None for p in parts) else None,
            dropped_groups=sum(p.dropped_groups for p in parts),
            dropped_samples=sum(p.dropped_samples for p in parts),
        )

    def select(self, rows: Tensor) -> "RewardResult":
        """Keep the given rows (a [k] long index), e.g. after dropping groups."""
        return replace(self, scores=self.scores[rows], correct=self.correct[rows],
                       components={k: v[rows] for k, v in self.components.items()},
                       drop=None if self.drop is None else self.drop[rows])


@dataclass
class TokenScoreRequest:
    """Texts for a batched forward pass (likelihood rewards): log π(continuation | context)."""

    contexts: list[str]  # [n] e.g. prompt + reasoning cut at the answer marker + answer prefix
    continuations: list[str]  # [n] the text whose tokens are scored, e.g. the reference answer
    add_special_tokens: bool = True  # as the prompts were tokenised for generation
    batch_size: int = 16  # sequences per forward pass


@dataclass
class TokenScoreResult:
    """Per-token log-probs of each continuation (context and continuation re-tokenised together)."""

    logprobs: Tensor  # [n, A] float, log π(token) of continuation tokens at temperature 1, 0 on padding
    mask: Tensor  # [n, A] float, 1 on continuation tokens
    vocab_size: int = 0  # V, for floors such as -log V per token
    truncated: Optional[Tensor] = None  # [n] bool, context cut from the left to fit the model's positions

    @staticmethod
    def concat(parts: list["TokenScoreResult"]) -> "TokenScoreResult":
        cut = [p.truncated if p.truncated is not None else torch.zeros(len(p.mask), dtype=torch.bool) for p in parts]
        return TokenScoreResult(_pad_cat([p.logprobs for p in parts], 0.0), _pad_cat([p.mask for p in parts], 0.0),
                                max(p.vocab_size for p in parts), torch.cat(cut))


@dataclass
class ScoredBatch:
    """A rollout batch with its rewards; the input of the advantage estimator."""

    rollout: RolloutBatch
    rewards: Tensor  # [N] float scalar outcome reward R_i
    correct: Tensor  # [N] float, 1/0 from the verifier, NaN where none ran


@dataclass
class SequenceBatch:
    """Token sequences for a learner forward pass (log-probs of the response tokens)."""

    input_ids: Tensor  # [N, P+T] long: left-padded prompt, right-padded response
    attention_mask: Tensor  # [N, P+T] long
    response_mask: Tensor  # [N, T] float, 1 on response tokens that carry loss
    prompt_width: int  # P

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def lengths(self) -> Tensor:  # [N] real tokens per row (prompt + response): its compute cost
        return self.attention_mask.sum(-1)

    def rows(self, idx: Tensor) -> "SequenceBatch":
        """The rows ``idx`` ([k] long)."""
        return SequenceBatch(self.input_ids[idx], self.attention_mask[idx], self.response_mask[idx], self.prompt_width)

    def trimmed(self) -> "SequenceBatch":
        """The same rows without the columns that are padding in every row: prompt columns on the left,
        response columns on the right (so a micro-batch of short rows costs what its rows cost).
        Positions come from the attention mask, so log-probs do not change; the response width shrinks
        to the longest real response, which callers slice their [n, T] tensors to."""
        real = self.attention_mask.bool()
        p = self.prompt_width
        prompt_cols = real[:, :p].any(0).nonzero()
        left = int(prompt_cols[0]) if len(prompt_cols) else p - 1
        left = min(left, p - 1)  # keep the last prompt column: it predicts the first response token
        response_cols = real[:, p:].any(0).nonzero()
        width = int(response_cols[-1]) + 1 if len(response_cols) else 1
        width = min(max(width, 1), self.response_mask.shape[1])
        return SequenceBatch(self.input_ids[:, left:p + width], self.attention_mask[:, left:p + width],
                             self.response_mask[:, :width], p - left)

    @staticmethod
    def from_rollout(r: RolloutBatch) -> "SequenceBatch":
        return SequenceBatch(
            input_ids=torch.cat([r.prompt_ids, r.response_ids], dim=1),
            attention_mask=torch.cat([r.prompt_mask, r.response_mask.long()], dim=1),
            response_mask=r.response_mask.clone(),
            prompt_width=r.prompt_ids.shape[1],
        )


@dataclass
class LogprobResult:
    """The learner's no-grad pass over a SequenceBatch."""

    old_logprobs: Optional[Tensor]  # [N, T] log π_old at the sampling temperature; None: not computed (the
    # update supplies them, see TrainBatch.old_logprobs)
    entropy: Optional[Tensor]  # [N, T] token entropy of π_old; None with old_logprobs
    ref_logprobs: Optional[Tensor] = None  # [N, T] log π_ref, None without a reference model


@dataclass
class TrainBatch:
    """Everything the learner needs for one optimizer step; algorithm-blind (advantages are given).

    ``global_tokens`` / ``global_seqs`` are counts over the *whole* step (all ranks, all
    micro-batches), so loss normalisation does not depend on how the batch is split.
    """

    seqs: SequenceBatch
    advantages: Tensor  # [N, T] float, A_{i,t} (0 on padding)
    old_logprobs: Optional[Tensor]  # [N, T] float, log π_old at the sampling temperature (no grad); None:
    # the update's own forward supplies them, detached (one on-policy optimizer step: π_old is the current policy)
    ref_logprobs: Optional[Tensor]  # [N, T] float, log π_ref, None when no KL term
    rollout_logprobs: Tensor  # [N, T] float, log-probs reported by the rollout engine
    rewards: Tensor  # [N] float, R_i
    correct: Tensor  # [N] float, 1/0/NaN
    group_index: Tensor  # [N] long, prompt of each response
    global_tokens: float = 0.0  # Σ response_mask over the whole step
    global_seqs: float = 0.0  # number of sequences with at least one loss token
    global_rows: float = 0.0  # number of sequences, fully masked ones included
    global_groups: float = 0.0  # number of prompts in the step
    keep_groups: bool = False  # split only at group boundaries (the loss couples a prompt's responses: DRPO)

    def __len__(self) -> int:
        return self.seqs.input_ids.shape[0]

    def rows(self, idx: Tensor) -> "TrainBatch":
        """The sub-batch of rows ``idx`` ([k] long), keeping the global counts."""
        seqs = self.seqs.rows(idx)
        per_row = {
            f.name: getattr(self, f.name)[idx]
            for f in fields(self)
            if f.name not in ("seqs",) and isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, seqs=seqs, **per_row)

    def trimmed(self) -> "TrainBatch":
        """The batch without its all-padding columns (``SequenceBatch.trimmed``); every [n, T] tensor
        is cut to the new response width."""
        seqs = self.seqs.trimmed()
        width = seqs.response_mask.shape[1]
        per_token = {f.name: getattr(self, f.name)[:, :width] for f in fields(self)
                     if isinstance(getattr(self, f.name), Tensor) and getattr(self, f.name).dim() == 2}
        return replace(self, seqs=seqs, **per_token)


@dataclass
class UpdateStats:
    """What one optimizer step reports: sums over its micro-batches (and, on the driver, its ranks).

    The loss terms are contributions with global denominators, so their sum is the step's value.
    ``token_sums``: a per-token quantity (a loss's metrics such as clip_frac and ppo_kl, and kl) summed
    over the step's loss tokens; ``token_means`` divides by ``tokens``.
    """

    loss: float = 0.0
    policy_loss: float = 0.0
    tokens: float = 0.0  # loss tokens (Σ response_mask)
    token_sums: dict[str, float] = field(default_factory=dict)
    grad_norm: float = float("nan")  # after the all-reduce: the same on every rank
    skipped: bool = False  # the step was skipped for a non-finite loss or gradient (the same on every rank)

    def add(self, other: "UpdateStats") -> "UpdateStats":
        """Sums of two parts of one step (micro-batches, ranks); the step-wide fields come from ``self``."""
        sums = dict(self.token_sums)
        for k, v in other.token_sums.items():
            sums[k] = sums.get(k, 0.0) + v
        return replace(self, loss=self.loss + other.loss, policy_loss=self.policy_loss + other.policy_loss,
                       tokens=self.tokens + other.tokens, token_sums=sums)

    def token_means(self) -> dict[str, float]:
        return {k: v / max(self.tokens, 1.0) for k, v in self.token_sums.items()}


@dataclass
class StepUpdate:
    """The optimizer steps of one RL step: their mean losses and gradient norm, and how many were skipped.

    ``logprobs``: with on-policy log-prob reuse, the log-probs (and entropy) the update's forward
    computed before the step, one row per row of the updated batch; None when they were computed
    before the update (``LearnerGroup.logprobs``).
    """

    loss: float
    policy_loss: float
    grad_norm: float
    skipped: int  # optimizer steps skipped for a non-finite loss or gradient
    updates: int
    token_means: dict[str, float]  # over every update's loss tokens (kl, clip_frac, ...)
    tokens: float
    lr: float = 0.0
    logprobs: Optional[LogprobResult] = None

    @staticmethod
    def of(steps: list[UpdateStats], lr: float, logprobs: Optional[LogprobResult] = None) -> "StepUpdate":
        n = max(len(steps), 1)
        total = steps[0]
        for s in steps[1:]:
            total = total.add(s)
        return StepUpdate(loss=total.loss / n, policy_loss=total.policy_loss / n,
                          grad_norm=sum(s.grad_norm for s in steps) / n, skipped=sum(int(s.skipped) for s in steps),
                          updates=len(steps), token_means=total.token_means(), tokens=total.tokens, lr=lr,
                          logprobs=logprobs)
