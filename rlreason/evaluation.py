"""Evaluation: k samples per prompt, scored by the run's rewards, summarised per data source.

For a prompt with k samples of which c are correct:

    pass@j   = 1 - C(k-c, j) / C(k, j)   for j = 1, 2, 4, ..., k — the unbiased estimator of the
               chance that at least one of j samples is correct (Chen et al. 2021, "Evaluating Large
               Language Models Trained on Code", eq. 1); pass@1 = c / k
    mean@k   = c / k averaged over prompts, the same number as pass@1, under the name papers use
    maj@k    = 1 if the most frequent final answer among the k samples is correct (ties: the answer
               seen first; samples without an answer do not vote)
    reward   = mean reward of the samples; length = mean response length in tokens

A sample is correct when the rewards' verifier says so (``correct``); with no verifier, when its
reward is > 0. Metrics are averaged over prompts, for all prompts and per value of the dataset's
``data_source`` column. The trainer logs them as ``eval/<metric>`` and ``eval/<source>/<metric>``
every ``trainer.eval_every`` steps; ``rlreason eval`` writes them to eval.json and eval.md.
Not here: LLM-as-judge grading, and answer extraction beyond boxed / last-number heuristics.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from typing import Any, Optional

import torch

from rlreason import batches
from rlreason.config.schema import RunConfig
from rlreason.data.dataset import PromptSet, encode_prompt, format_prompt
from rlreason.types import SamplingParams

EVAL_SEED = 7_919_000  # eval sampling has its own seed, the same at every step (comparable curves)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    # the product form avoids the huge binomials: C(n-c, k)/C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i)
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def ks_for(k: int) -> list[int]:
    """The j of pass@j reported for k samples: powers of two below k, and k."""
    return sorted({2 ** i for i in range(int(math.log2(k)) + 1) if 2 ** i < k} | {k})


def extract_answer(text: str) -> Optional[str]:
    """The final answer of a response: the last \\boxed{...}, else the last number, else None."""
    start = text.rfind("\\boxed{")
    if start >= 0:
        depth, i = 1, start + len("\\boxed{")
        for j in range(i, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                return text[i:j].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def majority_correct(answers: list[Optional[str]], correct: list[float]) -> float:
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    winner = next(a for a in answers if a is not None and votes[a] == top)  # ties: first seen
    return correct[answers.index(winner)]


def prompt_metrics(correct: list[float], scores: list[float], lengths: list[float],
                   answers: list[Optional[str]]) -> dict[str, float]:
    """Metrics of one prompt from its k samples."""
    k, c = len(correct), int(round(sum(correct)))
    out = {f"pass@{j}": pass_at_k(k, c, j) for j in ks_for(k)}
    out[f"maj@{k}"] = majority_correct(answers, correct)
    out[f"mean@{k}"] = c / k
    out["reward"] = sum(scores) / k
    out["length"] = sum(lengths) / k
    return out


def summarize(per_prompt: list[dict[str, float]], sources: list[str]) -> dict[str, float]:
    """Average over prompts, overall and per source: {"pass@1": .., "<source>/pass@1": .., "prompts": ..}."""
    def mean(rows: list[dict[str, float]]) -> dict[str, float]:
        return {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]} | {"prompts": float(len(rows))}

    out = mean(per_prompt)
    for source in sorted(set(sources)):
        rows = [m for m, s in zip(per_prompt, sources) if s == source]
        out.update({f"{source}/{k}": v for k, v in mean(rows).items()})
    return out


class Evaluator:
    """A fixed prompt set, sampled k times per prompt with the run's workers and scored by its rewards."""

    def __init__(self, cfg: RunConfig, data: PromptSet, tokenizer):
        e, r = cfg.eval, cfg.rollout
        self.rows = data.rows[:e.max_prompts] if e.max_prompts else data.rows
        self.prompts = [format_prompt(row, cfg.data, tokenizer) for row in self.rows]
        self.prompt_ids = [encode_prompt(p, cfg.data, tokenizer) for p in self.prompts]
        self.sources = [str(row.get("data_source", "all")) for row in self.rows]
        self.k = e.k
        self.sampling = SamplingParams(temperature=r.temperature if e.temperature is None else e.temperature,
                                       top_p=r.top_p, top_k=r.top_k, stop=list(r.stop),
                                       max_new_tokens=e.max_new_tokens or r.max_new_tokens)
        self.seed = cfg.trainer.seed + EVAL_SEED

    def run(self, rollout_group, reward_group, step: int = 0) -> dict[str, float]:
        """Generate, score and summarise; keys as in ``summarize`` (unprefixed)."""
        out = rollout_group.generate(self.prompt_ids, [self.k] * len(self.prompt_ids), self.sampling, seed=self.seed)
        rewards = reward_group.score(batches.score_request(out, self.prompts, self.rows, step))
        scores = torch.nan_to_num(rewards.scores.float(), nan=0.0)
        # the verifier's verdict where there is one, else "rewarded at all"
        correct = torch.where(torch.isnan(rewards.correct), (scores > 0).float(), rewards.correct.float())
        per_prompt = []
        for b in range(len(self.prompts)):
            rows = (out.group_index == b).nonzero().squeeze(1).tolist()
            per_prompt.append(prompt_metrics([float(correct[i]) for i in rows], [float(scores[i]) for i in rows],
                                             [float(out.lengths[i]) for i in rows],
                                             [extract_answer(out.response_text[i]) for i in rows]))
        return summarize(per_prompt, self.sources)


# ---- rlreason eval --------------------------------------------------------------------------------

def format_table(metrics: dict[str, float], k: int) -> str:
    """A markdown table: one row for all prompts, one per data source."""
    cols = [f"pass@{j}" for j in ks_for(k)] + [f"maj@{k}", f"mean@{k}", "reward", "length"]
    sources = sorted({key.split("/")[0] for key in metrics if "/" in key})
    lines = ["| source | prompts | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for name, prefix in [("all", "")] + [(s, f"{s}/") for s in sources]:
        vals = [f"{metrics[prefix + c]:.4f}" if c != "length" else f"{metrics[prefix + c]:.1f}" for c in cols]
        lines.append(f"| {name} | {int(metrics[prefix + 'prompts'])} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def eval_prompts(cfg: RunConfig, work_dir: str) -> PromptSet:
    """eval.data, else data.val, else the val split a data.generator writes."""
    from rlreason.data.dataset import DataError, check_columns, load_rows, resolve_data

    if cfg.eval.data:
        data = load_rows(cfg.eval.data, "validation")
    elif cfg.data.val:
        data = load_rows(cfg.data.val, "validation")
    else:
        _, data = resolve_data(cfg.data, work_dir, cfg.trainer.seed)
        if data is None:
            raise DataError("nothing to evaluate: set eval.data (or data.val) to a prompt file or dataset")
    check_columns(data, [cfg.data.prompt_key, cfg.data.answer_key])
    return data


def model_for_eval(checkpoint: str, out_dir: str) -> tuple[str, int]:
    """A Hugging Face model dir for ``checkpoint`` (exported into out_dir/model) and its step (0 if unknown)."""
    from rlreason.checkpoint import resolve_checkpoint
    from rlreason.export import export_checkpoint

    if os.path.isfile(os.path.join(checkpoint, "config.json")):  # already a Hugging Face model dir
        return checkpoint, 0
    ckpt = resolve_checkpoint(checkpoint)
    with open(os.path.join(ckpt, "manifest.json")) as f:
        step = int(json.load(f)["step"])
    return export_checkpoint(ckpt, os.path.join(out_dir, "model")), step


def evaluate_checkpoint(cfg: RunConfig, checkpoint: str) -> tuple[dict[str, Any], str]:
    """The whole `rlreason eval`: returns the results and the directory they were written to."""
    from rlreason.cluster import start_ray, threads_per_actor
    from rlreason.models import load_tokenizer
    from rlreason.workers.groups import RewardGroup, RolloutGroup

    out_dir = os.path.abspath(cfg.eval.output_dir or os.path.join(checkpoint, "eval"))
    os.makedirs(out_dir, exist_ok=True)
    model_dir, step = model_for_eval(checkpoint, out_dir)
    cfg.model.path, cfg.model.builder = model_dir, None
    evaluator = Evaluator(cfg, eval_prompts(cfg, out_dir), load_tokenizer(model_dir, cfg.model.trust_remote_code))
    cpus = start_ray(cfg.cluster)
    rollout = RolloutGroup(cfg, model_dir, threads_per_actor(cfg.rollout.threads, cpus, cfg.rollout.workers))
    rewards = RewardGroup(cfg, rollout.actors)
    try:
        metrics = evaluator.run(rollout, rewards, step)
    finally:
        rewards.close()
    results = {"checkpoint": os.path.abspath(checkpoint), "step": step, "k": evaluator.k,
               "temperature": evaluator.sampling.temperature, "metrics": metrics}
    with open(os.path.join(out_dir, "eval.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(out_dir, "eval.md"), "w") as f:
        f.write(format_table(metrics, evaluator.k) + "\n")
    return results, out_dir
