"""RewardWorker: scores responses with the recipe's reward functions (a Ray actor).

User code never runs in this actor: every call goes to a process pool with a wall-clock
timeout, so a hanging or crashing reward costs at most its timeout. A failed call is reported
with the function and sample, then scored by ``reward.on_error`` (0, or not applicable).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from rlreason.config.schema import RewardConfig, RewardFunctionConfig
from rlreason.types import RewardResult, ScoreRequest


def component_names(functions: list[RewardFunctionConfig]) -> list[str]:
    """Log names: the function part of 'module:fn' / 'file.py:fn', de-duplicated with #i."""
    names: list[str] = []
    for f in functions:
        base = f.name.rpartition(":")[2] or f.name
        name, i = base, 2
        while name in names:
            name, i = f"{base}#{i}", i + 1
        names.append(name)
    return names


def call_kwargs(req: ScoreRequest, i: int, answer_key: str, fn_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of one reward call: dataset columns, then the contract's names, then recipe kwargs."""
    row = req.rows[i]
    return {
        **row,
        "prompt": req.prompts[i],
        "response": req.responses[i],
        "ground_truth": row.get(answer_key),
        "response_length": req.response_lengths[i],
        "truncated": req.truncated[i],
        **fn_kwargs,
    }


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
            score = float(v["score"]) if isinstance(v, dict) else float(v)
            comp[i] = score
            if isinstance(v, dict):
                for key, extra in v.items():
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


class RewardWorker:
    def __init__(self, cfg: RewardConfig, answer_key: str):
        from rlreason.workers.reward_pool import RewardPool

        self.functions = cfg.functions
        self.error_value = 0.0 if cfg.on_error == "zero" else None
        self.names = component_names(cfg.functions)
        self.answer_key = answer_key
        self.pool = RewardPool(num_processes=cfg.processes, timeout_s=cfg.timeout_s)

    def ready(self) -> bool:
        return True

    def score(self, req: ScoreRequest) -> RewardResult:
        from rlreason.workers.reward_pool import RewardCall

        n = len(req.responses)
        calls = [RewardCall(f.name, call_kwargs(req, i, self.answer_key, f.kwargs), req.sample_ids[i])
                 for f in self.functions for i in range(n)]
        outcomes = self.pool.run(calls)
        values, errors = [], []
        for k in range(len(self.functions)):
            chunk = outcomes[k * n:(k + 1) * n]
            # a failed call is reported (errors below) and scored by the reward.on_error policy
            values.append([self.error_value if o.error else o.value for o in chunk])
            errors += [o.error.split("\n")[0] for o in chunk if o.error]
        result = combine(self.names, [f.weight for f in self.functions], values)
        result.errors = errors
        return result

    def close(self) -> None:
        self.pool.close()
