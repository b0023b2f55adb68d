"""Prompt-GDRO and Rollout-GDRO as prompt samplers (Panaganti et al., arXiv:2601.19280; algorithms.md §11).

Both draw prompts uniformly, bin them by online pass@k (``DifficultyClassifier``) and learn from a
per-response loss signal after each update; they differ in what they move:

- ``gdro`` (Prompt-GDRO, §11.3) reweights advantages: bins with a higher EMA loss get larger weights
  (EXP3P over the bins present, mean-1 over the responses, capped at ω_max). Prompts are not resampled.
- ``rollout_gdro`` (Rollout-GDRO, §11.4) reallocates responses: each bin gets an arm n_b ∈
  [n_min, n_max]; the arms maximise Σ log p_b(n_b) under Σ count_b·n_b = n̄·B exactly (DP), so the
  mean responses per prompt stays n̄ = rollout.n (compute-neutral); arm scores gain the bin's loss
  minus μ(n_b − n̄), and μ follows the realised mean. Bins are looked up *before* generation from
  each uid's history (the reference reuses the previous step's bins positionally).

The loss signal (§11.1) is the token-mean clipped surrogate of each response with the *unweighted*
advantages. With ``measure_after_update`` (default) ρ comes from one extra no-grad forward of the
updated policy over the step's batch (``StepOutcome.updated_logprobs``); without it ρ = 1, which is
what verl's on-policy branch measures with one mini-batch per step, but then ℓ_i = −A_i and every
GRPO group's mean is exactly 0, so every bin's loss is 0 and both methods reduce to the baseline.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from rlreason.data.sampler import SAMPLERS, PromptSampler
from rlreason.sampling import gdro
from rlreason.sampling.base import Groups, PromptDraw, Sampler, SamplerContext, StepOutcome, group_correct
from rlreason.sampling.classifier import DifficultyClassifier


class _GDRO(Sampler):
    """Uniform draws, the pass@k classifier, the EMA bin losses S(b) and the loss signal."""

    def __init__(self, ctx: SamplerContext, num_bins: int, edges: Optional[Sequence[float]], history: int,
                 hysteresis: float, exclude_extremes: bool, hysteresis_compat: bool, ema_beta: float,
                 norm_by_class: bool, measure_after_update: bool, clip_low: float, clip_high: float):
        super().__init__(ctx)
        self.walk = PromptSampler(ctx.num_rows, ctx.prompts_per_step, ctx.seed, ctx.shuffle)
        self.classifier = DifficultyClassifier(num_bins, edges, history, hysteresis, exclude_extremes,
                                               hysteresis_compat)
        self.num_classes = self.classifier.num_bins + 1  # + the "excluded extremes" bin
        self.ema_beta, self.norm_by_class = ema_beta, norm_by_class
        self.measure_after_update, self.clip = measure_after_update, (clip_low, clip_high)
        self.scores: dict[int, float] = {}  # S(b), EMA of the bin's loss
        self.log: dict[str, float] = {}

    def scored(self, groups: Groups) -> None:
        self.classifier.record(groups.uids, group_correct(groups).tolist())

    def signal(self, outcome: StepOutcome, weights: Optional[Tensor]) -> Tensor:
        """[N] ℓ_i of the trained responses, from the advantages before this sampler's weights."""
        b = outcome.batch
        adv = b.advantages if weights is None else b.advantages / weights.to(b.advantages)[:, None]
        lp = outcome.updated_logprobs() if self.measure_after_update else None
        return gdro.loss_signal(adv, b.seqs.response_mask, lp, b.old_logprobs, *self.clip)

    def update_scores(self, signal: Tensor, bins: Tensor) -> Tensor:
        """EMA of each present bin's mean loss (÷ its share of responses with norm_by_class); -> [K] means."""
        means, counts = gdro.bin_means(signal, bins, self.num_classes)
        shares = counts / counts.sum().clamp(min=1.0)
        for b in counts.nonzero().flatten().tolist():
            value = float(means[b] / shares[b]) if self.norm_by_class else float(means[b])
            self.scores[b] = gdro.ema(self.scores.get(b), value, self.ema_beta)
        self.log["gdro/signal_mean"] = float(signal.mean()) if len(signal) else 0.0
        self.log["gdro/bins_present"] = float((counts > 0).sum())
        return means

    def metrics(self) -> dict[str, float]:
        return dict(self.log)

    def state_dict(self) -> dict[str, Any]:
        return {"walk": self.walk.state_dict(), "classifier": self.classifier.state_dict(),
                "scores": dict(self.scores)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.walk.load_state_dict(state["walk"])
        self.classifier.load_state_dict(state["classifier"])
        self.scores = {int(k): float(v) for k, v in state["scores"].items()}


@SAMPLERS.register("gdro")
class PromptGDRO(_GDRO):
    """Prompt-GDRO: advantages reweighted towards the pass@k bins with the highest EMA loss (EXP3P)."""

    def __init__(self, ctx: SamplerContext, *, num_bins: int = 10, edges: Optional[list[float]] = None,
                 history: int = 100, hysteresis: float = 0.03, exclude_extremes: bool = False,
                 hysteresis_compat: bool = False, eta: float = 0.65, gamma: float = 0.01, ema_beta: float = 0.12,
                 max_weight: float = 15.0, norm_by_class: bool = True, form: str = "code", score_clip: float = 5.0,
                 measure_after_update: bool = True, clip_low: float = 0.2, clip_high: float = 0.28):
        if form not in ("code", "paper"):
            raise ValueError(f"gdro: form={form!r}, use 'code' (reference implementation) or 'paper' (Eqs. 14-16)")
        super().__init__(ctx, num_bins, edges, history, hysteresis, exclude_extremes, hysteresis_compat, ema_beta,
                         norm_by_class, measure_after_update, clip_low, clip_high)
        self.eta, self.gamma, self.cap, self.form, self.score_clip = eta, gamma, max_weight, form, score_clip
        self._bins: Optional[Tensor] = None  # [B] bin of each trained group (this step)
        self._weights: Optional[Tensor] = None  # [N] weights given to this step's advantages

    def next(self, step: int, num_prompts: int) -> PromptDraw:
        idx = self.walk.next(num_prompts)
        return PromptDraw(idx, [self.ctx.group_size] * len(idx))

    def weights(self, groups: Groups) -> Tensor:
        """[N] w_i from the bins of the step's groups, classified after this step's pass@k was recorded."""
        self._bins = torch.tensor(self.classifier.classify(groups.uids), dtype=torch.long)
        present = sorted(set(self._bins.tolist()))
        s = torch.tensor([self.scores.get(b, 0.0) for b in present], dtype=torch.float64)
        per_bin = torch.ones(self.num_classes, dtype=torch.float64)
        per_bin[present] = gdro.class_weights(s, self.eta, self.gamma, self.cap, self.form, self.score_clip)
        w = gdro.response_weights(per_bin, self._bins[groups.rollout.group_index], self.cap,
                                  normalise=self.form == "code")
        self._weights = w
        self.log.update({"gdro/weight_min": float(w.min()), "gdro/weight_max": float(w.max())})
        return w

    def observe(self, outcome: StepOutcome) -> None:
        if self._bins is None:
            return
        sig = self.signal(outcome, self._weights)
        self.update_scores(sig, self._bins[outcome.batch.group_index])


@SAMPLERS.register("rollout_gdro")
class RolloutGDRO(_GDRO):
    """Rollout-GDRO: more responses for the pass@k bins with the highest loss, mean kept at rollout.n."""

    def __init__(self, ctx: SamplerContext, *, n_min: int = 2, n_max: Optional[int] = None, dual_lr: float = 0.05,
                 allocation: str = "bandit", arm_eta: float = 0.65, arm_gamma: float = 0.01, num_bins: int = 10,
                 edges: Optional[list[float]] = None, history: int = 100, hysteresis: float = 0.03,
                 exclude_extremes: bool = False, hysteresis_compat: bool = False, ema_beta: float = 0.4,
                 norm_by_class: bool = True, measure_after_update: bool = True, clip_low: float = 0.2,
                 clip_high: float = 0.28):
        super().__init__(ctx, num_bins, edges, history, hysteresis, exclude_extremes, hysteresis_compat, ema_beta,
                         norm_by_class, measure_after_update, clip_low, clip_high)
        self.arms = gdro.default_arms(ctx.group_size, n_min, n_max)
        if ctx.group_size not in self.arms:
            raise ValueError(f"rollout_gdro: the mean budget rollout.n={ctx.group_size} must be one of the arms "
                             f"{self.arms[0]}..{self.arms[-1]} (n_min..n_max)")
        if allocation not in ("bandit", "sqrt"):
            raise ValueError(f"rollout_gdro: allocation={allocation!r}, use 'bandit' (paper code) or 'sqrt'")
        self.allocation, self.dual_lr, self.arm_eta, self.arm_gamma = allocation, dual_lr, arm_eta, arm_gamma
        self.arm_scores = torch.zeros(self.num_classes, len(self.arms), dtype=torch.float64)  # s_b[arm]
        self.variance = torch.ones(self.num_classes, dtype=torch.float64)  # v_b of the square-root law
        self.mu = 0.0  # shadow price of a response
        self.drawn: dict[int, tuple[int, int]] = {}  # uid -> (bin, arm index) of this step's draws
        self.draws: list[tuple[int, int]] = []  # (prompts, responses) of this step's draws
        self.step = 0

    def next(self, step: int, num_prompts: int) -> PromptDraw:
        if step != self.step:  # a new step (the last one may have been skipped before observe)
            self.step, self.drawn, self.draws = step, {}, []
        idx = self.walk.next(num_prompts)
        bins = self.classifier.classify(idx)
        present = sorted(set(bins))
        counts = [bins.count(b) for b in present]
        picks = gdro.match_budget(self.allocation_scores(present, counts), counts, self.arms,
                                  self.ctx.group_size * len(idx))
        arm_of = dict(zip(present, picks))
        sizes = [self.arms[arm_of[b]] for b in bins]
        self.drawn.update({u: (b, arm_of[b]) for u, b in zip(idx, bins)})
        self.draws.append((len(idx), sum(sizes)))
        return PromptDraw(idx, sizes)

    def allocation_scores(self, present: list[int], counts: list[int]) -> Tensor:
        """[K, A] DP scores: log p_b(arm) (bandit), or closeness to the square-root targets (sqrt)."""
        if self.allocation == "sqrt":
            shares = torch.tensor(counts, dtype=torch.float64) / sum(counts)
            targets = gdro.sqrt_allocation(self.variance[present], shares, self.ctx.group_size)
            return gdro.closeness_scores(targets, self.arms)
        return gdro.arm_log_probs(self.arm_scores[present], self.arm_eta, self.arm_gamma)

    def observe(self, outcome: StepOutcome) -> None:
        """Arm scores s_b[n_b] += l̄(b) − μ(n_b − n̄) per (bin, arm) trained; then μ += α_μ(n̂ − n̄)."""
        picks = torch.tensor([self.drawn[u] for u in outcome.groups.uids], dtype=torch.long)[outcome.batch.group_index]
        sig = self.signal(outcome, None)
        self.update_scores(sig, picks[:, 0])
        cell = picks[:, 0] * len(self.arms) + picks[:, 1]
        means, counts = gdro.bin_means(sig, cell, self.num_classes * len(self.arms))
        n_bar = self.ctx.group_size
        for c in counts.nonzero().flatten().tolist():
            b, a = divmod(c, len(self.arms))
            self.arm_scores[b, a] += float(means[c]) - self.mu * (self.arms[a] - n_bar)
        self.update_variance(sig, picks[:, 0])
        realised = sum(r for _, r in self.draws) / max(sum(p for p, _ in self.draws), 1)
        self.mu += self.dual_lr * (realised - n_bar)
        self.log.update({"gdro/mu": self.mu, "gdro/rollouts_realised": realised})
        self.drawn, self.draws = {}, []

    def update_variance(self, signal: Tensor, bins: Tensor) -> None:
        """EMA of each bin's within-bin variance of ℓ_i: the v_b of the square-root allocation."""
        means, counts = gdro.bin_means(signal, bins, self.num_classes)
        sq, _ = gdro.bin_means(signal.double() ** 2, bins, self.num_classes)
        for b in counts.nonzero().flatten().tolist():
            var = max(float(sq[b] - means[b] ** 2), 0.0)
            self.variance[b] = gdro.ema(float(self.variance[b]), var, self.ema_beta)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "arm_scores": self.arm_scores.clone(), "variance": self.variance.clone(),
                "mu": self.mu}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.arm_scores, self.variance, self.mu = state["arm_scores"].clone(), state["variance"].clone(), state["mu"]
