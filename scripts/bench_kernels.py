"""Benchmark the log-prob / entropy paths from hidden states: peak memory, time and error, as JSON.

    python scripts/bench_kernels.py            # vocab 32k (1k-16k tokens) and 152k (1k, 4k): ~10 min on 2 cores
    python scripts/bench_kernels.py --quick    # vocab 32k, 1k and 4k tokens: ~2 min
    python scripts/bench_kernels.py --large    # also 16k tokens at 152k (chunked only): many more minutes

For each vocab V, token count N and pass (``fwd``: no-grad forward, as for old/reference
log-probs; ``fwd+bwd``: forward with grad, then backward of Σ g₁·log π + Σ g₂·H, as in an update
with an entropy term) it runs ``naive`` (full [N, V] logits and log-softmax) and ``chunked``
(rlreason.kernels, auto chunk), and ``triton`` when CUDA is available (then every path runs on
the GPU). Inputs: fp32 hidden states [N, D] and head weight [V, D], D = --hidden (128: the logits
dominate the memory, and a small D keeps the CPU matmuls short; real heads make the matmuls, which
the chunked path runs once more in backward, a larger share of the time).

Memory: each path runs once in a fresh subprocess, so one path's allocations cannot hide another's.
On CPU torch's allocator is invisible to tracemalloc, so we read the process's resident set: the
current RSS (/proc/self/statm) once the inputs exist and a small warm-up of the same path has run,
then the high-water mark ``ru_maxrss`` after the run; the difference is the run's peak extra
memory (outputs and gradients included). Children run with MALLOC_MMAP_THRESHOLD_=128 KiB so
freed buffers leave the RSS at once (glibc would otherwise keep freed chunk buffers in its heap,
and RSS would measure its retention). ``floor_mb``: how far an earlier high-water mark lay above
the baseline (a peak below it would not show). On CUDA: ``torch.cuda.max_memory_allocated``.

Time and error: one more subprocess runs the paths interleaved (naive, chunked, naive, ...) for
--repeats rounds and keeps each path's best time, since the machine is shared and noisy (read the
ratios, not the seconds); error is the max abs difference of every output and gradient from naive.

Naive cases whose [N, V] fp32 logits exceed --max-naive-gb (1 GB) are skipped and reported as such:
the naive path holds about five [N, V] fp32 buffers at its peak (16k x 32k would need ~10 GB, 4k x
152k ~12 GB, on a 24 GB machine shared with others).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time

# (vocab, tokens); 16k x 152k is opt-in (--large): ~1.5 min for one chunked forward on 2 cores
FULL = [(32768, 1024), (32768, 4096), (32768, 16384), (152064, 1024), (152064, 4096)]
QUICK = [(32768, 1024), (32768, 4096)]
LARGE = [(152064, 16384)]
PASSES = ("fwd", "fwd+bwd")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _inputs(n: int, v: int, d: int, device: str):
    import torch

    gen = torch.Generator().manual_seed(0)
    h = torch.randn(n, d, generator=gen).to(device)
    w = torch.randn(v, d, generator=gen).div_(d ** 0.5).to(device)
    y = torch.randint(0, v, (n,), generator=gen).to(device)
    g = torch.randn(2, n, generator=gen).to(device)
    return h, w, y, g


def _run(impl: str, pass_: str, h, w, y, g, chunk: int = 0):
    """One forward (and backward); returns (log π, H, dh, dW) with None where not computed."""
    import torch

    from rlreason.kernels.logprobs import linear_logprobs_entropy

    if pass_ == "fwd":
        with torch.no_grad():
            lp, ent = linear_logprobs_entropy(h, w, y, 1.0, True, impl=impl, chunk=chunk)
        return lp, ent, None, None
    h, w = h.detach().requires_grad_(True), w.detach().requires_grad_(True)
    lp, ent = linear_logprobs_entropy(h, w, y, 1.0, True, impl=impl, chunk=chunk)
    ((lp * g[0]).sum() + (ent * g[1]).sum()).backward()
    return lp.detach(), ent.detach(), h.grad, w.grad


def _baseline(device: str):
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated(), 0
    return _rss_bytes(), _maxrss_bytes()


def _peak(device: str) -> int:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return _maxrss_bytes()


def memory_child(args, device: str) -> dict:
    """Peak extra memory (and time) of one run of one path, in this fresh process."""
    h, w, y, g = _inputs(args.tokens, args.vocab, args.hidden, device)
    # warm-up (thread pools, kernels) on a small vocab, so its own peak stays below the baseline
    _run(args.impl, args.pass_, h[:8], w[:1024].contiguous(), y[:8] % 1024, g[:, :8], args.chunk)
    base, before = _baseline(device)
    start = time.perf_counter()
    _run(args.impl, args.pass_, h, w, y, g, args.chunk)
    peak = _peak(device)
    result = {"peak_mb": round((peak - base) / 2**20, 1), "time_s": round(time.perf_counter() - start, 3)}
    if device == "cpu":
        result["floor_mb"] = round(max(before - base, 0) / 2**20, 1)
    return result


def timing_child(args, device: str) -> dict:
    """Best time of each path, runs interleaved (naive, impl, naive, impl, ...), and max abs error."""
    import torch

    h, w, y, g = _inputs(args.tokens, args.vocab, args.hidden, device)
    impls = ["naive", *args.impls.split(",")]
    times: dict[str, list[float]] = {k: [] for k in impls}
    outs = {}
    for _ in range(args.repeats):
        for impl in impls:
            start = time.perf_counter()
            outs[impl] = _run(impl, args.pass_, h, w, y, g, args.chunk)
            if device == "cuda":
                torch.cuda.synchronize()
            times[impl].append(time.perf_counter() - start)
        if sum(times["naive"]) > 20:  # long cases: one or two rounds say enough
            break
    result = {impl: {"time_s": round(min(t), 3)} for impl, t in times.items()}
    for impl in impls[1:]:
        errs = [float((a - b).abs().max()) for a, b in zip(outs[impl], outs["naive"]) if a is not None]
        result[impl]["max_abs_err"] = float(f"{max(errs):.3g}")
    return result


def _spawn(args: list[str]) -> dict:
    # Large blocks straight from mmap, so freed memory leaves the RSS at once; without this glibc
    # raises its mmap threshold after the first free and keeps freed chunk buffers in its heap,
    # and RSS then measures the allocator's retention rather than what the path holds.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 17)}
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_case(vocab: int, tokens: int, pass_: str, opts, impls: list[str]) -> dict:
    """Memory of every path (one process each), then their times side by side (one process)."""
    common = ["--vocab", str(vocab), "--tokens", str(tokens), "--pass", pass_, "--hidden", str(opts.hidden),
              "--chunk", str(opts.chunk), "--repeats", str(opts.repeats)]
    logits_gb = tokens * vocab * 4 / 2**30
    row: dict = {"vocab": vocab, "tokens": tokens, "pass": pass_}
    for impl in impls:
        row[impl] = _spawn(["--child", "memory", "--impl", impl, *common])
    if logits_gb > opts.max_naive_gb:
        row["naive"] = {"skipped": f"[N, V] fp32 logits alone would be {logits_gb:.1f} GB (> --max-naive-gb)"}
    else:
        row["naive"] = _spawn(["--child", "memory", "--impl", "naive", *common])
        timed = _spawn(["--child", "timing", "--impls", ",".join(impls), *common])
        for impl in ["naive", *impls]:
            row[impl].update(timed.get(impl, {"timing_error": timed.get("error")}))
        for impl in impls:
            base, new = row["naive"], row[impl]
            if "peak_mb" in base and "peak_mb" in new:
                new["mem_ratio"] = round(new["peak_mb"] / max(base["peak_mb"], 1e-9), 4)
                new["time_ratio"] = round(new["time_s"] / max(base["time_s"], 1e-9), 3)
    print(json.dumps(row), file=sys.stderr, flush=True)  # progress
    return row


def summary(rows: list[dict], impls: list[str]) -> dict:
    out = {}
    for impl in impls:
        done = [r[impl] for r in rows if "mem_ratio" in r.get(impl, {})]
        if done:
            out[impl] = {"cases_vs_naive": len(done),
                         "worst_mem_ratio": max(d["mem_ratio"] for d in done),
                         "worst_time_ratio": max(d["time_ratio"] for d in done),
                         "median_time_ratio": sorted(d["time_ratio"] for d in done)[len(done) // 2],
                         "max_abs_err": max(d.get("max_abs_err", 0.0) for d in done)}
    return out


def _args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="vocab 32k, 1k and 4k tokens only")
    p.add_argument("--large", action="store_true", help="add 16k tokens at vocab 152k (chunked only; many minutes)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--chunk", type=int, default=0, help="tokens per chunk of the fused paths (0 = auto)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (best is reported)")
    p.add_argument("--max-naive-gb", type=float, default=1.0, help="skip naive cases with more [N, V] fp32 logits")
    # one measurement in a child process
    p.add_argument("--child", choices=("memory", "timing"), help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--impls", help=argparse.SUPPRESS)
    p.add_argument("--pass", dest="pass_", help=argparse.SUPPRESS)
    p.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    p.add_argument("--tokens", type=int, help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> None:
    opts = _args()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if opts.child:
        run = memory_child if opts.child == "memory" else timing_child
        print(json.dumps(run(opts, device)))
        return
    impls = ["chunked"] + (["triton"] if device == "cuda" else [])
    cases = QUICK if opts.quick else FULL + (LARGE if opts.large else [])
    rows = [bench_case(v, n, pass_, opts, impls) for v, n in cases for pass_ in PASSES]
    print(json.dumps({
        "command": " ".join(["python", "scripts/bench_kernels.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"},
        "hidden": opts.hidden, "dtype": "float32", "chunk": opts.chunk or "auto",
        "memory": "peak extra bytes over the inputs (RSS on CPU, allocator peak on CUDA)",
        "summary": summary(rows, impls), "cases": rows,
    }, indent=1))


if __name__ == "__main__":
    main()
