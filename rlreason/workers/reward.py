"""RewardWorker: scores responses with the recipe's reward functions (a Ray actor).

Each configured function is resolved once to its kind (``rewards/base.py``) and then called the same
way as every other function of that kind: per response, per group, or per batch in the process
pool (wall-clock timeout per call, hung or crashed processes replaced), or — model rewards — here,
with a scorer that runs the forward pass where the model lives (``rlreason/workers/scoring.py``).
A function applies to the rows its ``when`` selects (routing by a column such as ``data_source``).
Functions that name a ``correct`` parameter run second and receive the verifiers' verdict.

A failed call (raised, timed out, crashed its process, returned garbage) is reported with the
function, the sample(s) and the traceback, then handled by ``reward.on_error``: scored 0 ("zero"),
not applicable ("skip"), or its whole group dropped before advantages ("drop_group").
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from rlreason.config.schema import RewardConfig, RewardFunctionConfig
from rlreason.rewards.base import ModelRewardInput, log_name, read_sources, resolve
from rlreason.types import RewardResult, ScoreRequest
from rlreason.workers.reward_pool import RewardCall, RewardPool, check_value, where


@dataclass
class RewardContext:
    """What reward workers need to know about the run, filled on the driver by RewardGroup."""

    max_response_length: int = 0  # rollout.max_new_tokens, passed to every call (length rewards)
    add_special_tokens: bool = True  # how prompts were tokenised for generation (model rewards re-tokenise)
    sources: Optional[dict[str, str]] = None  # file reward path -> source text (None: read them here)
    policy: list = field(default_factory=list)  # rollout actor handles, for model rewards with scorer=policy


def component_names(functions: list[RewardFunctionConfig]) -> list[str]:
    """Log names: ``log_as``, else the function part of 'module:fn' / 'file.py:fn', de-duplicated with #i."""
    names: list[str] = []
    for f in functions:
        base = f.log_as or log_name(f.name)
        name, i = base, 2
        while name in names:
            name, i = f"{base}#{i}", i + 1
        names.append(name)
    return names


def applies(when: dict[str, Any], row: dict[str, Any]) -> bool:
    """Routing: does a row match every ``column: value`` (or ``column: [values]``) of ``when``?"""
    for column, wanted in (when or {}).items():
        value = row.get(column)
        if not (value in wanted if isinstance(wanted, (list, tuple)) else value == wanted):
            return False
    return True


def call_kwargs(req: ScoreRequest, i: int, answer_key: str, fn_kwargs: dict[str, Any],
                context: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Keyword arguments of one reward call: dataset columns, then the contract's names, then recipe kwargs."""
    row = req.rows[i]
    return {
        **row,
        "prompt": req.prompts[i],
        "response": req.responses[i],
        "ground_truth": row.get(answer_key),
        "response_length": req.response_lengths[i],
        "truncated": req.truncated[i],
        "step": req.step,
        **(context or {}),
        **fn_kwargs,
    }


def batch_kwargs(req: ScoreRequest, rows: list[int], answer_key: str, fn_kwargs: dict[str, Any],
                 context: dict[str, Any], correct: Optional[list]) -> dict[str, Any]:
    """A batched call's keywords: each per-response field a list over ``rows``; run-level fields stay scalars."""
    columns = list(dict.fromkeys(k for i in rows for k in req.rows[i]))  # rows of several sources may differ
    out: dict[str, Any] = {c: [req.rows[i].get(c) for i in rows] for c in columns}
    out.update(prompt=[req.prompts[i] for i in rows], response=[req.responses[i] for i in rows],
               ground_truth=[req.rows[i].get(answer_key) for i in rows],
               response_length=[req.response_lengths[i] for i in rows], truncated=[req.truncated[i] for i in rows],
               step=req.step, **context)
    if correct is not None:
        out["correct"] = [correct[i] for i in rows]
    return {**out, **fn_kwargs}


def combine(names: list[str], weights: list[float], values: list[list[Any]]) -> RewardResult:
    """values[f][i] is function f's return for sample i (float, dict with 'score', or None).

    score_i = Σ_f w_f · s_{f,i} over functions that applied (not None); NaN if none applied.
    correct_i comes from the first function that reports 'correct'.
    """
    n = len(values[0]) if values else 0
    scores = torch.zeros(n, dtype=torch.float64)
    applied = torch.zeros(n, dtype=torch.bool)
    correct = torch.full((n,), float("nan"))
    components: dict[str, torch.Tensor] = {}
    for name, w, vals in zip(names, weights, values):
        comp = torch.full((n,), float("nan"))
        for i, v in enumerate(vals):
            if v is None:
                continue
            comp[i] = float(v["score"]) if isinstance(v, dict) else float(v)
            for key, extra in (v.items() if isinstance(v, dict) else ()):
                if key == "score" or not isinstance(extra, (int, float, bool)):
                    continue
                if key == "correct":
                    if math.isnan(correct[i].item()):
                        correct[i] = float(extra)
                    continue
                components.setdefault(f"{name}/{key}", torch.full((n,), float("nan")))[i] = float(extra)
        ok = ~torch.isnan(comp)
        scores[ok] += w * comp[ok].double()
        applied |= ok
        components[name] = comp
    scores[~applied] = float("nan")
    return RewardResult(scores=scores.float(), correct=correct, components=components)


def verdicts(values: list[list[Any]], stage: list[int], n: int) -> list[Optional[float]]:
    """Per sample, the first 'correct' reported by the functions in ``stage`` (None if none did)."""
    out: list[Optional[float]] = [None] * n
    for k in stage:
        for i, v in enumerate(values[k]):
            if out[i] is None and isinstance(v, dict) and isinstance(v.get("correct"), (int, float)):
                out[i] = float(v["correct"])
    return out


def _units(kind: str, rows: list[int], group_ids: list[int]) -> list[list[int]]:
    """The rows of each call: one per response, one per group (in order of appearance), or one batch."""
    if kind == "sample":
        return [[i] for i in rows]
    if kind == "batch":
        return [rows] if rows else []
    groups: dict[int, list[int]] = {}
    for i in rows:
        groups.setdefault(group_ids[i] if group_ids else i, []).append(i)
    return list(groups.values())


class RewardWorker:
    def __init__(self, cfg: RewardConfig, answer_key: str, context: Optional[RewardContext] = None):
        self.context = context or RewardContext()
        sources = self.context.sources
        if sources is None:  # not given by a driver: read the files here
            sources = read_sources([f.name for f in cfg.functions])
        self.functions = cfg.functions
        self.resolved = [resolve(f.name, sources) for f in cfg.functions]
        self.names = component_names(cfg.functions)
        self.on_error = cfg.on_error
        self.answer_key = answer_key
        self.pool = RewardPool(num_processes=cfg.processes, timeout_s=cfg.timeout_s,
                               extra_processes=cfg.extra_processes, sources=sources,
                               max_memory_mb=cfg.max_memory_mb)
        self._scorers: dict[str, Callable] = {}

    def ready(self) -> bool:
        return True

    def set_policy(self, actors: list) -> None:
        """New rollout actor handles for scorer=policy (after a rollout actor was restarted)."""
        self.context.policy = list(actors)
        self._scorers.pop("policy", None)

    def score(self, req: ScoreRequest) -> RewardResult:
        n = len(req.responses)
        values: list[list[Any]] = [[None] * n for _ in self.functions]
        failed = [False] * n
        errors: list[str] = []
        first = [k for k, r in enumerate(self.resolved) if not r.wants_correct]
        second = [k for k, r in enumerate(self.resolved) if r.wants_correct]
        self._run_stage(req, first, None, values, failed, errors)
        if second:
            self._run_stage(req, second, verdicts(values, first, n), values, failed, errors)
        result = combine(self.names, [f.weight for f in self.functions], values)
        result.errors = errors
        if self.on_error == "drop_group":
            bad = {(req.group_ids[i] if req.group_ids else i) for i in range(n) if failed[i]}
            result.drop = torch.tensor([(req.group_ids[i] if req.group_ids else i) in bad for i in range(n)],
                                       dtype=torch.bool)
        return result

    def _run_stage(self, req: ScoreRequest, stage: list[int], correct: Optional[list], values: list,
                   failed: list, errors: list) -> None:
        """Run the functions ``stage`` (indices): pool calls all at once, model rewards here."""
        context = {"max_response_length": self.context.max_response_length}
        calls, targets = [], []
        for k in stage:
            f, r = self.functions[k], self.resolved[k]
            rows = [i for i in range(len(req.responses)) if applies(f.when, req.rows[i])]
            if r.kind == "model":
                self._run_model(k, req, rows, correct, values, failed, errors)
                continue
            for unit in _units(r.kind, rows, req.group_ids):
                if r.kind == "sample":
                    kwargs = call_kwargs(req, unit[0], self.answer_key, f.kwargs, context)
                    if correct is not None:
                        kwargs["correct"] = correct[unit[0]]
                    sample_id: Any = req.sample_ids[unit[0]]
                else:
                    kwargs = batch_kwargs(req, unit, self.answer_key, f.kwargs, context, correct)
                    sample_id = [req.sample_ids[i] for i in unit]
                calls.append(RewardCall(f.name, kwargs, sample_id, f.timeout_s))
                targets.append((k, unit))
        for (k, unit), outcome in zip(targets, self.pool.run(calls)):
            error = outcome.error or self._shape_error(k, unit, outcome.value, req)
            if error:
                self._fail(k, unit, error, values, failed, errors)
            else:
                got = [outcome.value] if self.resolved[k].kind == "sample" else outcome.value
                self._store(k, unit, got, req, values, failed, errors)

    def _store(self, k: int, unit: list[int], got: list, req: ScoreRequest, values: list, failed: list,
               errors: list) -> None:
        """Keep each sample's value; a NaN or infinite score is that sample's error, not a score."""
        for i, v in zip(unit, got):
            score = v.get("score") if isinstance(v, dict) else v
            if isinstance(score, (int, float)) and not math.isfinite(score):
                self._fail(k, [i], f"{where(self.functions[k].name, req.sample_ids[i])}: returned a score of "
                                   f"{score}: a reward must be a finite number, or None for not applicable",
                           values, failed, errors)
            else:
                values[k][i] = v

    def _shape_error(self, k: int, unit: list[int], value: Any, req: ScoreRequest) -> Optional[str]:
        batched = self.resolved[k].kind != "sample"
        if batched and not (isinstance(value, list) and len(value) == len(unit)):
            return (f"{where(self.functions[k].name, [req.sample_ids[i] for i in unit])}: a {self.resolved[k].kind} "
                    f"reward must return a list of {len(unit)} values, got {str(value)[:200]}")
        if not batched and isinstance(value, list):
            return (f"{where(self.functions[k].name, req.sample_ids[unit[0]])}: returned a list; mark batched "
                    "rewards with @rlreason.rewards.batched(per='group' | 'batch')")
        return None

    def _fail(self, k: int, unit: list[int], error: str, values: list, failed: list, errors: list) -> None:
        errors.append(error)
        for i in unit:
            failed[i] = True
            values[k][i] = 0.0 if self.on_error == "zero" else None

    def _run_model(self, k: int, req: ScoreRequest, rows: list[int], correct: Optional[list], values: list,
                   failed: list, errors: list) -> None:
        """A model reward, in this actor: one batched call over ``rows``; failures reported like pool calls."""
        if not rows:
            return
        f = self.functions[k]
        kwargs = dict(f.kwargs)
        ids = [req.sample_ids[i] for i in rows]
        try:
            inp = ModelRewardInput(
                prompts=[req.prompts[i] for i in rows], responses=[req.responses[i] for i in rows],
                ground_truths=[req.rows[i].get(self.answer_key) for i in rows], rows=[req.rows[i] for i in rows],
                group_ids=[req.group_ids[i] if req.group_ids else i for i in rows],
                scorer=self._scorer(kwargs.pop("scorer", "policy")),
                correct=None if correct is None else [correct[i] for i in rows], step=req.step)
            got = check_value(self.resolved[k].fn(inp, **kwargs))
        except Exception as e:  # noqa: BLE001 — reported, then handled by reward.on_error
            self._fail(k, rows, f"{where(f.name, ids)}: {type(e).__name__}: {e}\n{traceback.format_exc()}",
                       values, failed, errors)
            return
        error = self._shape_error(k, rows, got, req)
        if error:
            self._fail(k, rows, error, values, failed, errors)
            return
        self._store(k, rows, got, req, values, failed, errors)

    def _scorer(self, name: str) -> Callable:
        from rlreason.workers.scoring import PolicyScorer, local_scorer

        if name not in self._scorers:
            special = self.context.add_special_tokens
            self._scorers[name] = (PolicyScorer(self.context.policy, special) if name == "policy"
                                   else local_scorer(name, special))
        return self._scorers[name]

    def close(self) -> None:
        self.pool.close()
