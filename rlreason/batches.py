"""Builders that turn one phase's output into the next phase's typed input, plus step metrics.

Plain functions of typed batches, so the controller loop stays a list of named phases.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from rlreason.algorithms import ADVANTAGES, POLICY_LOSSES
from rlreason.algorithms.aggregation import global_counts, masked_mean
from rlreason.algorithms.base import AdvantageInput
from rlreason.algorithms.kl_reward import kl_penalty
from rlreason.config.schema import RunConfig
from rlreason.rollout.native import left_pad
from rlreason.types import (LogprobResult, RewardResult, RolloutBatch, ScoreRequest, SequenceBatch, StepUpdate,
                            TrainBatch)


def score_request(rollout: RolloutBatch, prompts: list[str], rows: list[dict[str, Any]], step: int) -> ScoreRequest:
    """One reward request row per response; ``prompts``/``rows`` are per prompt of the step."""
    g = rollout.group_index.tolist()
    return ScoreRequest(
        prompts=[prompts[b] for b in g],
        responses=rollout.response_text,
        rows=[rows[b] for b in g],
        sample_ids=[step * 1_000_000 + i for i in range(len(g))],
        response_lengths=[int(x) for x in rollout.lengths.tolist()],
        truncated=[bool(x) for x in rollout.truncated.tolist()],
        group_ids=g,
        step=step,
    )


def drop_groups(rollout: RolloutBatch, rewards: RewardResult) -> tuple[RolloutBatch, RewardResult]:
    """Remove the groups the reward workers marked (reward.on_error=drop_group), counting what went.

    A group with a failed reward call is dropped whole: scoring the rest of it against a made-up
    value would bias its baseline. The counts travel in the result, so metrics account for every sample.
    """
    if rewards.drop is None or not bool(rewards.drop.any()):
        return rollout, rewards
    keep = (~rewards.drop).nonzero().squeeze(1)
    kept = rewards.select(keep)
    kept.dropped_samples = rewards.dropped_samples + int(rewards.drop.sum())
    kept.dropped_groups = rewards.dropped_groups + int(rollout.group_index[rewards.drop].unique().numel())
    kept.drop = None
    return rollout.select(keep), kept


def reuses_update_logprobs(cfg: RunConfig) -> bool:
    """Whether the update's own forward supplies π_old, saving a forward pass over the batch.

    Exact when the step is a single optimizer update on the freshly generated batch (one epoch, one
    update per step): π_old is then the current policy, and its log-probs are the update's, detached.
    Not when something needs π_old before the update: a KL penalty in the reward, or a loss with a
    ``step_sums`` pre-pass (DRPO); learner.reuse_logprobs=false always recomputes.
    """
    a, lr = cfg.algorithm, cfg.learner
    return (lr.reuse_logprobs and lr.epochs == 1 and lr.updates_per_step == 1 and not a.kl_in_reward
            and "step_sums" not in POLICY_LOSSES.entry(a.loss).traits)


def needs_reference(cfg: RunConfig) -> bool:
    """A reference model runs when the KL to it is a loss or reward term, or is logged."""
    return cfg.algorithm.kl_coef > 0 or cfg.algorithm.track_kl


def train_batch(cfg: RunConfig, rollout: RolloutBatch, rewards: RewardResult, lps: LogprobResult,
                weights: Optional[torch.Tensor] = None) -> TrainBatch:
    """Advantages from the registered estimator, packed with everything the learner needs.

    ``weights`` [N]: the prompt sampler's multipliers of each response's advantages (Prompt-GDRO), or None.
    """
    a = cfg.algorithm
    mask = rollout.response_mask
    penalty = (kl_penalty(lps.old_logprobs, lps.ref_logprobs, mask, a.kl_coef)
               if a.kl_in_reward and lps.ref_logprobs is not None else None)  # KL in the reward (§0.3)
    inp = AdvantageInput(rewards=rewards.scores, group_index=rollout.group_index, response_mask=mask,
                         correct=rewards.correct, old_logprobs=lps.old_logprobs, ref_logprobs=lps.ref_logprobs,
                         kl_penalty=penalty)
    advantages = ADVANTAGES.get(a.advantage)(inp, **a.advantage_kwargs) * mask
    if a.adv_clip is not None:  # a post-transform of any estimator (GDRO clips to ±5, §17.10)
        advantages = advantages.clamp(-a.adv_clip, a.adv_clip)
    if weights is not None:
        advantages = advantages * weights.to(advantages.dtype)[:, None]
    return with_counts(TrainBatch(
        seqs=SequenceBatch.from_rollout(rollout),
        advantages=advantages,
        old_logprobs=lps.old_logprobs,
        ref_logprobs=lps.ref_logprobs,
        rollout_logprobs=rollout.rollout_logprobs,
        rewards=rewards.scores,
        correct=rewards.correct,
        group_index=rollout.group_index,
        keep_groups=bool(POLICY_LOSSES.entry(a.loss).traits.get("keep_groups")),
    ), count_empty_seqs=a.count_empty_seqs)


def with_counts(batch: TrainBatch, count_empty_seqs: bool = False) -> TrainBatch:
    """Set the global denominators of a batch that is one optimizer step."""
    tokens, seqs, rows = global_counts(batch.seqs.response_mask, count_empty_seqs)
    batch.global_tokens, batch.global_seqs, batch.global_rows = tokens, seqs, rows
    batch.global_groups = float(batch.group_index.unique().numel())
    return batch


def sft_batch(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int) -> TrainBatch:
    """A TrainBatch for supervised warm-up: prompt -> demonstration (advantages unused)."""
    pids, pmask = left_pad(prompt_ids, pad_id)
    width = max(len(r) for r in response_ids)
    rids = torch.full((len(response_ids), width), pad_id, dtype=torch.long)
    rmask = torch.zeros(len(response_ids), width)
    for i, r in enumerate(response_ids):
        rids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        rmask[i, :len(r)] = 1.0
    seqs = SequenceBatch(torch.cat([pids, rids], 1), torch.cat([pmask, rmask.long()], 1), rmask, pids.shape[1])
    zeros = torch.zeros_like(rmask)
    n = len(response_ids)
    return with_counts(TrainBatch(seqs=seqs, advantages=zeros, old_logprobs=zeros, ref_logprobs=None,
                                  rollout_logprobs=zeros, rewards=torch.zeros(n), correct=torch.full((n,), math.nan),
                                  group_index=torch.arange(n)))


def _nanmean(x: torch.Tensor) -> float:
    x = x.float()
    ok = ~torch.isnan(x)
    return float(x[ok].mean()) if ok.any() else math.nan


def step_metrics(rollout: RolloutBatch, rewards: RewardResult, lps: LogprobResult, batch: TrainBatch,
                 update: StepUpdate) -> dict[str, float]:
    """The per-step row of metrics.jsonl (besides the phase times)."""
    lengths = rollout.lengths
    m: dict[str, float] = {
        "reward/mean": _nanmean(rewards.scores),
        "reward/std": float(rewards.scores[~torch.isnan(rewards.scores)].std()) if len(rewards.scores) > 1 else 0.0,
        "correct/mean": _nanmean(rewards.correct),
        "response_length/mean": float(lengths.mean()),
        "response_length/max": float(lengths.max()),
        "truncated/frac": float(rollout.truncated.float().mean()),
        "advantage/abs_mean": float(masked_mean(batch.advantages.abs(), batch.seqs.response_mask)),
        "rollout/tokens_per_s": rollout.gen_tokens / max(rollout.gen_seconds, 1e-9),
        "reward/errors": float(len(rewards.errors)),
        "reward/dropped_groups": float(rewards.dropped_groups),
        "reward/dropped_samples": float(rewards.dropped_samples),
        "loss": update.loss,
        "pg_loss": update.policy_loss,
        "grad_norm": update.grad_norm,
        **_policy_metrics(rollout, lps, batch, update),
        **update.token_means,  # kl, clip_frac, ppo_kl, ...: means over the step's loss tokens
    }
    for name, values in rewards.components.items():
        m[f"reward/{name}/mean"] = _nanmean(values)
    return m


def _policy_metrics(rollout: RolloutBatch, lps: LogprobResult, batch: TrainBatch,
                    update: StepUpdate) -> dict[str, float]:
    """Entropy of π_old and its gap to the rollout engine's log-probs, over the rows π_old was computed
    for: the rollout's (a log-prob pass) or the updated batch's (reused from the update)."""
    if update.logprobs is not None:
        old, entropy = update.logprobs.old_logprobs, update.logprobs.entropy
        mask, behaviour = batch.seqs.response_mask, batch.rollout_logprobs
    else:
        old, entropy, mask, behaviour = lps.old_logprobs, lps.entropy, rollout.response_mask, rollout.rollout_logprobs
    return {"entropy": float(masked_mean(entropy, mask)),
            "rollout/logprob_mismatch": float(masked_mean((old - behaviour).abs(), mask))}


def dropped_step_metrics(rewards: RewardResult) -> dict[str, float]:
    """The metrics of a step whose every group was dropped (no update happened)."""
    return {"reward/errors": float(len(rewards.errors)), "reward/dropped_groups": float(rewards.dropped_groups),
            "reward/dropped_samples": float(rewards.dropped_samples)}


def sample_rows(step: int, prompts: list[str], rollout: RolloutBatch, rewards: RewardResult,
                rows: list[dict[str, Any]], answer_key: str, k: int) -> list[dict[str, Any]]:
    """A few responses of the step for samples.jsonl (the first k, one per group where possible)."""
    out: list[dict[str, Any]] = []
    seen: set[int] = set()
    for i, g in enumerate(rollout.group_index.tolist()):
        if len(out) >= k:
            break
        if g in seen:
            continue
        seen.add(g)
        out.append({"step": step, "prompt": prompts[g], "response": rollout.response_text[i],
                    "ground_truth": rows[g].get(answer_key), "reward": _maybe(rewards.scores[i]),
                    "correct": _maybe(rewards.correct[i]), "length": int(rollout.lengths[i])})
    return out


def _maybe(x: torch.Tensor) -> Optional[float]:
    v = float(x)
    return None if math.isnan(v) else v
