"""Benchmark the reward workers; prints JSON.

1. Throughput: samples/s of ``math_verify`` called in a plain loop in this process vs through a
   RewardWorker (its process pool, ``--processes`` processes), on the same responses.
2. Hangs: the time a step loses when ``--hang-frac`` of its calls hang, with the elastic pool
   (default) and with a fixed pool (``extra_processes=0``). Hanging calls overlap in the elastic
   pool, so the loss should be about one timeout; a fixed pool queues them: (hangs / processes)
   timeouts.

    python scripts/bench_rewards.py [--samples 400] [--processes 2] [--hang-samples 200] [--timeout 5]

Not measured here: model rewards (likelihood, redundancy), whose cost is their forward pass.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time

HANGING = """
import time
from rlreason.rewards.math_verify import math_verify

def sometimes_hangs(*, hang=False, **kw):
    if hang:
        time.sleep(3600)
    return math_verify(**kw)
"""


def samples(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(response, ground truth) pairs in the formats math-verify meets: integers, fractions, decimals, sets."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(1, 99), rng.randint(2, 12)
        gold, shown = [(str(a), str(a + rng.choice([0, 0, 1]))),
                       (f"\\frac{{{a}}}{{{b}}}", f"\\frac{{{a * 2}}}{{{b * 2}}}"),
                       (str(a / 4), f"\\frac{{{a}}}{{4}}"),
                       (f"\\{{{a},{b}\\}}", f"\\{{{b},{a}\\}}")][i % 4]
        out.append((f"Let me think. Step one gives {a}, then {b}. So the answer is $\\boxed{{{shown}}}$.", gold))
    return out


def request(pairs, hang_every: int = 0):
    from rlreason.types import ScoreRequest

    n = len(pairs)
    rows = [{"answer": g, "hang": bool(hang_every) and i % hang_every == hang_every // 2}
            for i, (_, g) in enumerate(pairs)]
    return ScoreRequest(["Q"] * n, [r for r, _ in pairs], rows, list(range(n)), [32] * n, [False] * n,
                        group_ids=[i // 8 for i in range(n)])


def worker(fn: str, processes: int, timeout: float, extra: int | None = None):
    from rlreason.config.schema import RewardConfig, RewardFunctionConfig
    from rlreason.workers.reward import RewardWorker

    cfg = RewardConfig(functions=[RewardFunctionConfig(fn)], processes=processes, timeout_s=timeout)
    if extra is not None:
        cfg.extra_processes = extra
    return RewardWorker(cfg, answer_key="answer")


def throughput(n: int, processes: int, repeats: int = 3) -> dict:
    from rlreason.rewards.math_verify import math_verify

    warm = samples(8 * processes, seed=9)
    math_verify(response=warm[0][0], ground_truth=warm[0][1])  # imports done
    loop_s, pool_s = float("inf"), float("inf")
    w = worker("math_verify", processes, 30.0)
    try:
        w.score(request(warm))  # every process has loaded and run the reward
        for r in range(repeats):  # best of: the machines are shared, timings vary several-fold
            pairs = samples(n, seed=100 + r)  # new gold answers: no parse cache helps either side
            t0 = time.perf_counter()
            loop = [math_verify(response=x, ground_truth=g) for x, g in pairs]
            loop_s = min(loop_s, time.perf_counter() - t0)
            t0 = time.perf_counter()
            res = w.score(request(pairs))
            pool_s = min(pool_s, time.perf_counter() - t0)
    finally:
        w.close()
    agree = sum(float(a["correct"]) == float(b) for a, b in zip(loop, res.correct.tolist()))
    return {"samples": n, "processes": processes, "loop_samples_per_s": round(n / loop_s, 1),
            "workers_samples_per_s": round(n / pool_s, 1), "speedup": round(loop_s / pool_s, 2),
            "disagreements": n - agree, "errors": [e.splitlines()[0] for e in res.errors][:3],
            "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}


def hang_cost(n: int, processes: int, timeout: float, frac: float, extra: int | None, path: str) -> dict:
    pairs = samples(n, seed=1)
    every = max(int(round(1 / frac)), 1)
    w = worker(f"{path}:sometimes_hangs", processes, timeout, extra)
    try:
        w.score(request(pairs[:4 * processes]))  # loaded, and the pool has seen the function's usual speed
        t0 = time.perf_counter()
        clean = w.score(request(pairs))
        clean_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        hung = w.score(request(pairs, hang_every=every))
        hang_s = time.perf_counter() - t0
    finally:
        w.close()
    hangs = len(hung.errors)
    return {"extra_processes": w.pool.extra_processes, "hanging_calls": hangs, "clean_step_s": round(clean_s, 2),
            "step_with_hangs_s": round(hang_s, 2), "lost_s": round(hang_s - clean_s, 2),
            "lost_in_timeouts": round((hang_s - clean_s) / timeout, 2),
            "fixed_pool_expectation_s": round(-(-hangs // processes) * timeout, 2),
            "samples_accounted": len(hung.scores) == n and not bool(clean.errors)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=400)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--hang-samples", type=int, default=200)
    p.add_argument("--hang-frac", type=float, default=0.05)
    p.add_argument("--timeout", type=float, default=5.0)
    args = p.parse_args()
    out = {"throughput": throughput(args.samples, args.processes)}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "hanging.py")
        with open(path, "w") as f:
            f.write(HANGING)
        out["hangs"] = {"timeout_s": args.timeout, "hang_frac": args.hang_frac, "samples": args.hang_samples,
                        "elastic": hang_cost(args.hang_samples, args.processes, args.timeout, args.hang_frac, None, path),
                        "fixed": hang_cost(args.hang_samples, args.processes, args.timeout, args.hang_frac, 0, path)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
