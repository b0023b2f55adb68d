"""DOT — Dynamic Outlier Truncation (Wu et al., "Anti-Length Shift", arXiv:2601.03969; algorithms.md §12.5).

In a group whose success rate reaches τ (default: all correct) the advantages are all zero, yet its
longest responses teach the policy that length is free. DOT cuts each such group's length outliers,
L_i > T_g = floor(mean + α·std) (std ddof 1) by at least a margin, to their first T_g tokens and
re-scores them with the rewards: a cut response usually loses its answer, turns incorrect, and the
group now has signal that favours its shorter members. Tokens past T_g never receive gradient.

Runs after scoring and before dynamic sampling (``shape`` phase), so groups DOT gives a signal survive
the filter. Only groups with a cut response are re-scored, whole (group rewards see the new lengths).
Not here: DOT's KL-Cov companion loss (a policy loss; DOT's recipe uses GRPO's ppo-clip instead).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from rlreason.sampling.base import Groups
from rlreason.types import RolloutBatch

Rescore = Callable[[RolloutBatch, list], Groups]  # (rollout of some groups, their uids) -> re-scored groups


def outlier_lengths(lengths: Tensor, correct: Tensor, group_index: Tensor, alpha: float = 3.0,
                    margin: float = 32.0, success_rate: float = 1.0) -> Tensor:
    """New length of every response: T_g for the outliers DOT cuts, L_i otherwise. [N] -> [N] long.

    Eligible groups: share of correct (== 1) responses >= success_rate. margin >= 1 is in tokens;
    0 < margin < 1 is a fraction of L_i, at least 16 tokens.
    """
    L = lengths.double()
    groups = int(group_index.max()) + 1 if len(group_index) else 0
    ones = torch.ones_like(L)
    n = torch.zeros(groups, dtype=torch.float64).index_add_(0, group_index, ones)
    right = torch.zeros(groups, dtype=torch.float64).index_add_(0, group_index, (correct.double() == 1.0).double())
    mean = torch.zeros(groups, dtype=torch.float64).index_add_(0, group_index, L) / n.clamp(min=1)
    ss = torch.zeros(groups, dtype=torch.float64).index_add_(0, group_index, (L - mean[group_index]) ** 2)
    std = torch.where(n > 1, (ss / (n - 1).clamp(min=1)).sqrt(), torch.zeros_like(ss))
    cap = torch.floor(mean + alpha * std)[group_index]
    eligible = (right / n.clamp(min=1) >= success_rate - 1e-9)[group_index]
    need = torch.full_like(L, margin) if margin >= 1 else torch.clamp(torch.floor(L * margin), min=16.0)
    cut = eligible & (L > cap) & (L - cap >= need)
    return torch.where(cut, cap, L).long()


def truncate_rollout(rollout: RolloutBatch, lengths: Tensor, tokenizer) -> RolloutBatch:
    """Responses cut to ``lengths`` tokens: mask, ids and log-probs past the cut cleared, text re-decoded."""
    width = rollout.response_mask.shape[1]
    keep = (torch.arange(width)[None, :] < lengths[:, None]).to(rollout.response_mask.dtype)
    mask = rollout.response_mask * keep
    cut = (mask.sum(-1) < rollout.response_mask.sum(-1)).nonzero().flatten().tolist()
    ids = torch.where(mask > 0, rollout.response_ids, torch.full_like(rollout.response_ids, rollout.pad_id))
    text = list(rollout.response_text)
    for i in cut:
        text[i] = tokenizer.decode(ids[i, : int(lengths[i])].tolist(), skip_special_tokens=True)
    out = rollout.select(torch.arange(len(rollout)))
    out.response_mask, out.response_ids, out.response_text = mask, ids, text
    out.rollout_logprobs = rollout.rollout_logprobs * keep
    return out


class OutlierTruncation:
    """The ``shape`` phase with sampling.dot.enable: cut outliers of (nearly) all-correct groups, re-score them."""

    def __init__(self, cfg, tokenizer):
        self.cfg, self.tokenizer = cfg, tokenizer

    def __call__(self, groups: Groups, rescore: Rescore) -> Groups:
        r, c = groups.rollout, self.cfg
        lengths = r.lengths.round().long()
        new = outlier_lengths(lengths, groups.rewards.correct, r.group_index, c.alpha, c.margin, c.success_rate)
        cut = new < lengths
        stats = {"dot/truncated": float(cut.sum()), "dot/tokens_removed": float((lengths - new).sum())}
        if not bool(cut.any()):
            groups.stats.update(stats)
            return groups
        hit = sorted(set(r.group_index[cut].tolist()))
        rest = [g for g in range(len(groups)) if g not in set(hit)]
        shaped = Groups(truncate_rollout(r, new, self.tokenizer), groups.rewards, groups.uids).select(hit)
        fresh = rescore(shaped.rollout, shaped.uids)
        flipped = (fresh.rewards.correct != 1.0).sum() if len(fresh) else torch.tensor(0)
        out = Groups.concat([groups.select(rest), fresh])
        out.stats = {**groups.stats, **stats, "dot/groups_rescored": float(len(hit)),
                     "dot/rescored_incorrect": float(flipped)}
        return out


def no_shaping(groups: Groups, rescore: Rescore) -> Groups:
    """The ``shape`` phase when nothing reshapes rollouts."""
    return groups


def build_shaper(cfg, tokenizer) -> Callable[[Groups, Rescore], Groups]:
    return OutlierTruncation(cfg.dot, tokenizer) if cfg.dot.enable else no_shaping

