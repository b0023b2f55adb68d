"""Benchmark speculative rollouts on CPU: tokens/s without SD, with fixed K and with the adaptive selector (JSON).

    python scripts/bench_rollout.py --cache runs/bench_rollout   # trains target + drafter once (cached), measures
    python scripts/bench_rollout.py --smoke --cache /tmp/smoke     # miniature settings, seconds (a plumbing check)

Models (``bench_rollout_models.py``): a 12-layer Llama trained on the quickstart's arithmetic task
(2-12 terms) and a one-layer EAGLE drafter distilled from the target's own samples. Workload: 8
prompts of different term counts (``--terms``; longer sums have longer solutions, as far as the
target has learned them), so the live batch shrinks from 8 to 1 as in an RL step's tail; sampled
at temperature 1.

Protocol: one process, ``--threads`` torch threads (1 by default: on a shared 2-core machine a second
OpenMP thread waits on a descheduled sibling and was 10-20x slower in a probe), warm-up rollouts, then
``--reps`` repetitions in which every mode runs once on the same prompts and seed, in a rotated order
(interleaved, so machine load hits every mode alike). Modes: ``native`` (NativeEngine, the production
no-SD path), ``k0`` (the speculative engine's loop with K = 0: the baseline the phase times come
from), ``k<K>`` (fixed K) and ``adaptive`` (AdaptiveK, kept across repetitions as in an RL run).
Ratios are taken per repetition against ``k0`` and summarised by median, min and max.

Phases come from the engine's per-iteration trace: tail = live batch <= 2, large = batch >= 5.
Predicted speedups: (a) the cost formula S = E(K) / ((c_v(K+1) + c_d(K)) / c_t(1)) at batch 1, with
c_t, c_v (target forward of 1 and K+1 tokens) and c_d (drafting K tokens) micro-profiled here and
E(K) from the measured per-position acceptance, against the measured tail (batch <= 2) speedup;
(b) the adaptive selector's own model, goodput(B, K*) / goodput(B, 0), with its table.

Not measured here: GPU (vLLM), the drafter tracking a moving policy (see the drafter-adaptation plot).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_rollout_models import NOISE, cached_models  # noqa: E402

from rlreason.rollout.native import NativeEngine, cache_arg  # noqa: E402
from rlreason.rollout.spec.engine import FixedK, SpeculativeEngine  # noqa: E402
from rlreason.rollout.spec.features import FeatureTap  # noqa: E402
from rlreason.rollout.spec.selector import AdaptiveK  # noqa: E402
from rlreason.rollout.spec.stats import spec_metrics  # noqa: E402
from rlreason.tasks.arithmetic import make_prompt, make_row  # noqa: E402
from rlreason.types import GenerationRequest, SamplingParams  # noqa: E402

TAIL, LARGE = 2, 5


def workload(tok, terms: list[int], seed: int, max_new: int) -> GenerationRequest:
    """One prompt per entry of ``terms`` (that many random digits), sampled once each at T = 1."""
    rng = random.Random(f"bench-load-{seed}")
    prompts = [tok.encode(make_prompt([rng.randint(1, 9) for _ in range(t)]), add_special_tokens=False) for t in terms]
    sp = SamplingParams(temperature=1.0, max_new_tokens=max_new)
    return GenerationRequest(prompts, [1] * len(prompts), 0, sp, seed)


def phase(trace, keep) -> tuple[float, int]:
    """(seconds, tokens) of the iterations whose live batch satisfies ``keep``."""
    rows = [(s, n) for b, _, s, n in trace if keep(b)]
    return sum(s for s, _ in rows), sum(n for _, n in rows)


def run_once(engines: dict, mode: str, req: GenerationRequest) -> dict:
    eng = engines[mode]
    if isinstance(eng, SpeculativeEngine):
        eng.stats.trace.clear()
    start = time.perf_counter()
    batch = eng.generate(req)
    wall = time.perf_counter() - start
    out = {"seconds": wall, "tokens": batch.gen_tokens, "tps": batch.gen_tokens / wall}
    if isinstance(eng, SpeculativeEngine):
        trace = eng.stats.trace
        for name, keep in (("tail", lambda b: b <= TAIL), ("large", lambda b: b >= LARGE)):
            s, n = phase(trace, keep)
            out[f"{name}_tps"] = n / s if s else float("nan")
            out[f"{name}_iters"] = sum(1 for b, *_ in trace if keep(b))
        out["metrics"] = spec_metrics(batch.stats)
        out["curve"] = [b for b, *_ in trace]
    return out


def summary(values: list[float]) -> dict:
    vals = [v for v in values if v == v]  # drop NaN
    if not vals:
        return {}
    return {"median": round(statistics.median(vals), 3), "min": round(min(vals), 3), "max": round(max(vals), 3)}


@torch.no_grad()
def profile(model, drafter, tok, ks: list[int], reps: int) -> dict:
    """Micro-profile at batch 1, interleaved, in ms: c_t(1), c_v(K+1) and c_d(K).

    The minimum over ``reps`` is kept: on a shared machine it is the best estimate of the
    uncontended cost (medians mixed in other jobs' time slices in a first run: c_t(1) > c_v(3)).
    """
    from transformers import DynamicCache

    rng = random.Random("bench-profile")
    row = make_row(rng, 12, 12, NOISE)
    ids = torch.tensor([tok.encode(row["prompt"] + row["solution"][:60], add_special_tokens=False)])
    tap = FeatureTap(model)
    cache = DynamicCache()
    arg = cache_arg(model)
    model(input_ids=ids, **{arg: cache}, use_cache=True)
    feats = tap.take()
    sp = SamplingParams(temperature=1.0)
    gen = torch.Generator().manual_seed(0)
    drafter.begin(ids[:, :-1], torch.ones_like(ids[:, :-1]), feats[:, :-1], ids[:, -1])
    times: dict[str, list[float]] = {}

    def timed(key, fn):
        t0 = time.perf_counter()
        fn()
        times.setdefault(key, []).append(time.perf_counter() - t0)

    def target(t):
        model(input_ids=ids[:, -t:], **{arg: cache}, use_cache=True)
        cache.crop(-t)

    def draft(k):
        drafter.extend(ids[:, -1:], torch.ones(1, 1, dtype=torch.bool), feats[:, -1:])
        drafter.propose(k, sp, gen)

    for _ in range(reps):
        for k in [0] + ks:
            timed(f"c_v{k + 1}" if k else "c_t1", lambda: target(k + 1))
            if k:
                timed(f"c_d{k}", lambda: draft(k))
    tap.handle.remove()
    return {key: 1000 * min(v) for key, v in times.items()}


def predicted(prof: dict, accept_pos: list[float], k: int) -> float:
    """S = E(K) / ((c_v(K+1) + c_d(K)) / c_t(1)), E(K) = 1 + Σ_{j<K} u_j (unconditional rates)."""
    return (1.0 + sum(accept_pos[:k])) / ((prof[f"c_v{k + 1}"] + prof[f"c_d{k}"]) / prof["c_t1"])


def unconditional(metrics: dict, k: int) -> list[float]:
    """Per-position acceptance P(first j drafts accepted) from spec_metrics' accept_pos (same definition)."""
    return [metrics.get(f"spec/accept_pos{j}", 0.0) for j in range(1, k + 1)]


def bench(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, tok, drafter, info = cached_models(args.cache, args.layers, args.hidden, args.target_steps,
                                              args.drafter_steps, args.seed, rollouts=8 if args.smoke else 256)
    adaptive = AdaptiveK(arms=(0, 1, 2, 3, 4, 6, 8), seed=args.seed)
    engines = {"native": NativeEngine(model, tok), "k0": SpeculativeEngine(model, tok, drafter, FixedK(0))}
    for k in args.ks:
        engines[f"k{k}"] = SpeculativeEngine(model, tok, drafter, FixedK(k))
    engines["adaptive"] = SpeculativeEngine(model, tok, drafter, adaptive)
    modes = list(engines)
    load_start = os.getloadavg()
    for w in range(args.warmup):  # warm-up: allocator, kernels, and the selector's first trials
        for mode in modes:
            run_once(engines, mode, workload(tok, args.terms, 10_000 + w, args.max_new))
    prof = profile(model, drafter, tok, args.ks, args.profile_reps)
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for rep in range(args.reps):
        req = workload(tok, args.terms, rep, args.max_new)
        for mode in modes[rep % len(modes):] + modes[:rep % len(modes)]:
            runs[mode].append(run_once(engines, mode, req))
    return report(args, info, runs, prof, adaptive, load_start)


def report(args, info: dict, runs: dict, prof: dict, adaptive: AdaptiveK, load_start) -> dict:
    base = runs["k0"]
    out_modes = {}
    for mode, rs in runs.items():
        entry = {"tokens_per_s": summary([r["tps"] for r in rs]),
                 "speedup_whole": summary([r["tps"] / b["tps"] for r, b in zip(rs, base)]),
                 "tokens_per_rollout": summary([r["tokens"] for r in rs])}
        if "metrics" in rs[0]:
            entry["speedup_tail"] = summary([r["tail_tps"] / b["tail_tps"] for r, b in zip(rs, base)])
            entry["speedup_large_batch"] = summary([r["large_tps"] / b["large_tps"] for r, b in zip(rs, base)])
            m = rs[-1]["metrics"]
            entry["accept_len"] = summary([r["metrics"].get("spec/accept_len", float("nan")) for r in rs])
            entry["accept_pos"] = [round(m[k], 3) for k in sorted(m) if k.startswith("spec/accept_pos")]
            entry["k_frac"] = {k.split("/")[-1]: round(v, 3) for k, v in m.items() if k.startswith("spec/k_frac/")}
        out_modes[mode] = entry
    pred = {}
    for k in args.ks:
        acc = unconditional(runs[f"k{k}"][-1]["metrics"], k)
        pred[f"k{k}"] = {"formula_batch1": round(predicted(prof, acc, k), 3),
                         "measured_tail": out_modes[f"k{k}"]["speedup_tail"].get("median")}
    table = adaptive.table(batches=(1, 2, 3, 4, 8, 16, 32))
    pred["adaptive"] = {"k_table": table, "selector_goodput_ratio": {
        b: round(adaptive.goodput(b, k) / adaptive.goodput(b, 0), 3) if k and adaptive.goodput(b, 0) else 1.0
        for b, k in table.items()}}
    return {
        "command": "python scripts/bench_rollout.py " + " ".join(sys.argv[1:]),
        "setup": {"threads": args.threads, "reps": args.reps, "terms": args.terms, "layers": args.layers,
                  "hidden": args.hidden, "loadavg_start": [round(x, 2) for x in load_start],
                  "loadavg_end": [round(x, 2) for x in os.getloadavg()], "models": info,
                  "batch_curve_k0": runs["k0"][0].get("curve")},
        "modes": out_modes,
        "profile_ms": {k: round(v, 2) for k, v in prof.items()},
        "predicted_vs_measured": pred,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", default="runs/bench_rollout", help="directory caching the trained models")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--target-steps", type=int, default=200)
    p.add_argument("--drafter-steps", type=int, default=200)
    p.add_argument("--ks", type=int, nargs="+", default=[2, 4, 6], help="fixed-K modes")
    p.add_argument("--terms", type=int, nargs="+", default=[3, 3, 4, 4, 5, 5, 8, 12], help="the length mix")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--profile-reps", type=int, default=15)
    p.add_argument("--max-new", type=int, default=160)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="miniature models and workload (a plumbing check)")
    args = p.parse_args(argv)
    if args.smoke:
        args.layers, args.hidden, args.target_steps, args.drafter_steps = 2, 32, 2, 2
        args.reps, args.warmup, args.profile_reps, args.max_new, args.terms = 1, 1, 2, 12, [2, 3]
        args.ks = [2]
    print(json.dumps(bench(args), indent=1))


if __name__ == "__main__":
    main()
