"""The RL step, rlreason against TRL's GRPOTrainer, side by side on the same CPU cores (JSON).

    pip install -e '.[bench]' -c constraints-cpu.txt     # TRL (no model or data downloads)
    python scripts/bench_step.py --reps 3                # both sizes, every framework, interleaved (fp32)
    python scripts/bench_step.py --frameworks trl,trl:bf16,rlreason:bf16 --attn eager   # TRL's best vs bf16
    python scripts/bench_step.py --smoke                 # a tiny model, 2 steps: a plumbing check

Workload (the same for every framework): a randomly initialised Llama saved with ``save_pretrained``
and the quickstart's character tokenizer (``rlreason.tasks.arithmetic``), 4 ``a+b=`` prompts x 8
samples per step, at most 64 new tokens, temperature 1, lr 1e-5, no KL and no reference model, one
optimizer step per rollout batch, reward 1 for the exact sum (``bench_step_reward.py``). Sizes:
``small`` 2.65M parameters (4 layers x 256), ``large`` 21M (8 x 512); ``xl`` 85M (12 x 768) shows
that the driver's memory does not grow with the model.

Protocol: every run is a fresh process started the way a user starts it, ``--steps`` steps. s/step
is the median of steps 2..N (step k's time runs from the end of step k-1 to its end, so nothing
between steps is left out); start-up is from the process start to the beginning of step 1. Runs
are interleaved (each repetition runs every framework once, in a rotated order), so the machine's
load hits all of them alike; the summary gives each rlreason mode's speed relative to TRL per
repetition (TRL s/step / rlreason s/step), as median, min and max. Threads: ``--threads`` torch
threads per process, for all or per framework; rlreason's rollout worker and learner are separate
processes and get that many each; ``--rollout-workers`` splits rlreason's rollouts between that many
workers, of threads / workers threads each, and ``--learner-ranks`` its update between that many
DeepSpeed ranks (data parallel), of threads / ranks threads each. The README's table gives each
framework its best setting for 2 cores: TRL and synchronous rlreason 2 threads (one phase runs at a
time), synchronous rlreason with 2 rollout workers of one thread and one learner rank of two threads
(two ranks of one thread update more slowly), pipelined rlreason 1 thread per actor (generation and
training run at the same time, one core each).

Precision: each run in ``--frameworks`` is ``FRAMEWORK[:fp32|bf16]``. bf16 is TRL's mixed precision
(``bf16=True``: autocast over fp32 weights) and rlreason's ``model.dtype=bfloat16`` (bf16 weights in
the rollout engine and the learner, fp32 master weights in DeepSpeed's optimizer); CPUs with AMX run
bf16 matrix multiplies several times faster than fp32. Each rlreason run is compared with the fastest
TRL run of its repetition, so TRL is always at its best precision. ``--attn`` sets the training
forward's attention (TRL: the model's, which it also generates with; rlreason: the learner's).

Peak RSS is sampled every 0.2 s over the whole process tree (Ray's workers included) and also
given for the driver alone (``driver_peak_rss_mb``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = {"small": dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=512),
         "large": dict(hidden_size=512, num_layers=8, num_heads=8, intermediate_size=1024),
         "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128),
         "xl": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=2048)}  # driver memory check
FRAMEWORKS = ("trl", "rlreason", "rlreason-pipelined")
PROMPTS, GROUP, MAX_NEW, LR = 4, 8, 64, 1e-5


# ---- shared set-up ------------------------------------------------------------------------------

def prepare(cache: str, size: str) -> tuple[str, str]:
    """The model dir and the prompt file (built once per cache dir)."""
    from rlreason.tasks.arithmetic import build_model

    model = os.path.join(cache, f"model-{size}")
    if not os.path.isfile(os.path.join(model, "config.json")):
        build_model(model, seed=0, max_position_embeddings=256, **SIZES[size])
    data = os.path.join(cache, "sums.jsonl")
    if not os.path.isfile(data):
        rng = random.Random(0)
        with open(data, "w") as f:
            for _ in range(512):
                a, b = rng.randint(10, 99), rng.randint(10, 99)
                f.write(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n")
    return model, data


class RSSMonitor:
    """Peak resident memory of this process and of its whole tree, sampled in a thread."""

    def __init__(self, every_s: float = 0.2):
        import psutil

        self.me, self.peak_tree, self.peak_self = psutil.Process(), 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                mine = self.me.memory_info().rss
                tree = mine + sum(_rss(p) for p in self.me.children(recursive=True))
            except Exception:  # a child ended while we read it
                continue
            self.peak_self, self.peak_tree = max(self.peak_self, mine), max(self.peak_tree, tree)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {"peak_rss_mb": self.peak_tree / 2**20, "driver_peak_rss_mb": self.peak_self / 2**20}


def _rss(p) -> int:
    try:
        return p.memory_info().rss
    except Exception:
        return 0


def summarise(begin: float, ends: list[float], launched: float) -> dict[str, float]:
    """s/step (median of steps 2..N) and start-up from the step boundaries (epoch seconds)."""
    steps = [ends[0] - begin] + [b - a for a, b in zip(ends, ends[1:])]
    later = steps[1:] or steps
    return {"s_per_step": statistics.median(later), "startup_s": begin - launched, "steps_s": steps}


# ---- the frameworks, each in its own process ----------------------------------------------------

def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    sys.path.insert(0, HERE)
    from bench_step_reward import trl_exact_sum

    torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in open(args.data)]
    marks: dict = {"begin": None, "ends": [], "tokens": [], "generate": []}

    class Marks(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            marks["begin"] = marks["begin"] or time.time()

        def on_step_end(self, a, state, control, **kw):
            marks["ends"].append(time.time())

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                marks["tokens"].append(logs["completions/mean_length"] * PROMPTS * GROUP)

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-"), per_device_train_batch_size=PROMPTS * GROUP,
        num_generations=GROUP, max_completion_length=MAX_NEW, temperature=1.0, learning_rate=LR, beta=0.0,
        num_iterations=1, steps_per_generation=1, gradient_accumulation_steps=1, max_steps=args.steps,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=args.precision == "bf16", seed=0,
        # GRPOConfig checkpoints activations by default, a memory saving that recomputes the forward in
        # the backward; rlreason does not, and at these sizes memory is no concern: TRL's faster setting
        gradient_checkpointing=False,
        disable_tqdm=True, model_init_kwargs={"attn_implementation": args.attn},
        dataloader_num_workers=0)
    trainer = GRPOTrainer(model=args.model, reward_funcs=trl_exact_sum, args=config,
                          train_dataset=Dataset.from_list(rows), processing_class=AutoTokenizer.from_pretrained(args.model),
                          callbacks=[Marks()])
    generate = trainer._generate_and_score_completions  # generation + scoring (+ old log-probs if needed)

    def timed(*a, **kw):
        start = time.perf_counter()
        try:
            return generate(*a, **kw)
        finally:
            marks["generate"].append(time.perf_counter() - start)

    trainer._generate_and_score_completions = timed
    trainer.train()
    out = summarise(marks["begin"], marks["ends"], args.launched)
    out["phases"] = {"generate+score": statistics.median(marks["generate"][1:] or marks["generate"])}
    out["tokens_per_step"] = statistics.median(marks["tokens"][1:] or marks["tokens"]) if marks["tokens"] else None
    out["gradient_checkpointing"] = bool(trainer.args.gradient_checkpointing)
    return out


def run_rlreason(args, pipelined: bool) -> dict:
    from rlreason.config import load_config
    from rlreason.modes import MODES

    marks: dict = {"begin": None, "ends": []}
    mode = "pipelined" if pipelined else "sync"

    class Timed(MODES[mode]):
        def step(self, step):
            marks["begin"] = marks["begin"] or time.time()
            return super().step(step)

        def after_step(self, step, metrics):
            super().after_step(step, metrics)
            marks["ends"].append(time.time())

    reward = os.path.join(HERE, "bench_step_reward.py:exact_sum")
    overrides = [
        "recipe=quickstart", f"model.path={args.model}", f"data.train={args.data}", "data.val=null",
        f"data.prompts_per_step={PROMPTS}", f"rollout.n={GROUP}", f"rollout.max_new_tokens={MAX_NEW}",
        "rollout.temperature=1.0", f"learner.lr={LR}", f"learner.micro_batch_size={PROMPTS * GROUP}",
        f"learner.attn_implementation={args.attn}", "algorithm.track_kl=false",
        "algorithm.kl_coef=0", f"trainer.total_steps={args.steps}", "trainer.sft.steps=0", "trainer.eval_every=0",
        "trainer.save_final=false", "trainer.progress=false", "trainer.loggers=[jsonl]",
        f"reward.functions=[{{name: '{reward}'}}]", f"rollout.workers={args.rollout_workers}",
        f"rollout.threads={max(args.threads // args.rollout_workers, 1)}",
        f"learner.world_size={args.learner_ranks}", f"learner.threads={max(args.threads // args.learner_ranks, 1)}",
        "reward.processes=1",
        f"model.dtype={'bfloat16' if args.precision == 'bf16' else 'float32'}",
    ]
    overrides.append(f"trainer.mode={mode}")
    run_dir = tempfile.mkdtemp(prefix="bench-rlreason-")
    trainer = Timed(load_config(overrides), run_dir)
    trainer.fit()
    out = summarise(marks["begin"], marks["ends"], args.launched)
    out["rollout_actors"] = len(trainer.rollout.actors)
    out["learner_actors"] = len(trainer.learners.actors)
    rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))][1:]
    phases = sorted({k for r in rows for k in r if k.startswith("time/") and k != "time/step"})
    out["phases"] = {k[5:]: statistics.median(r.get(k, 0.0) for r in rows) for k in phases}
    out["tokens_per_step"] = statistics.median(r["response_length/mean"] * PROMPTS * GROUP for r in rows)
    return out


def worker(args) -> None:
    monitor = RSSMonitor()
    out = run_trl(args) if args.worker == "trl" else run_rlreason(args, args.worker == "rlreason-pipelined")
    out.update(monitor.stop())
    out["tokens_per_s"] = out["tokens_per_step"] / out["s_per_step"] if out.get("tokens_per_step") else None
    print("BENCH " + json.dumps(out), flush=True)


# ---- the driver ---------------------------------------------------------------------------------

def setting_for(spec: str, framework: str, default: str = "") -> str:
    """``spec``: one value for every framework, or "name=value,..." (a framework not named gets ``default``)."""
    if "=" not in spec:
        return spec
    return dict(x.split("=") for x in spec.split(",")).get(framework, default)


def count_for(spec: str, framework: str) -> int:
    """A count setting (threads, rollout workers) for ``framework``: 1 where ``spec`` does not name it."""
    return int(setting_for(spec, framework, "1"))


def split_variant(variant: str) -> tuple[str, str]:
    """``trl:bf16`` -> (``trl``, ``bf16``); a bare framework name runs in fp32."""
    framework, _, precision = variant.partition(":")
    if framework not in FRAMEWORKS or precision not in ("", "fp32", "bf16"):
        raise SystemExit(f"--frameworks: {variant!r} is not FRAMEWORK[:fp32|bf16] (frameworks: {', '.join(FRAMEWORKS)})")
    return framework, precision or "fp32"


def launch(variant: str, model: str, data: str, args) -> dict:
    framework, precision = split_variant(variant)
    threads = count_for(args.threads, framework)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework, "--model", model, "--data", data,
           "--steps", str(args.steps), "--threads", str(threads), "--precision", precision,
           "--rollout-workers", str(count_for(args.rollout_workers, framework)),
           "--learner-ranks", str(count_for(args.learner_ranks, framework)),
           "--attn", setting_for(args.attn, framework, "sdpa"), "--launched", repr(time.time())]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout_s)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        return {"error": f"exit {proc.returncode}: " + (proc.stderr or proc.stdout)[-2000:]}
    return json.loads(line[6:])


def ratios(runs: list[dict], reps: int) -> dict:
    """Per repetition: the fastest TRL variant's s/step over each rlreason variant's; median, min, max."""
    out = {}
    for size in dict.fromkeys(r["size"] for r in runs):
        variants = dict.fromkeys(r["variant"] for r in runs if r["size"] == size and not r["variant"].startswith("trl"))
        for variant in variants:
            values = []
            for rep in range(reps):
                done = [r for r in runs if r["size"] == size and r["rep"] == rep and "s_per_step" in r]
                trl = [r["s_per_step"] for r in done if r["variant"].startswith("trl")]
                mine = [r["s_per_step"] for r in done if r["variant"] == variant]
                if trl and mine:
                    values.append(min(trl) / mine[0])
            if values:
                out[f"{size}/{variant}_speed_vs_trl"] = {"median": statistics.median(values), "min": min(values),
                                                         "max": max(values), "reps": len(values)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="small,large")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                   help="runs per repetition, FRAMEWORK[:fp32|bf16] each, e.g. trl:fp32,trl:bf16,rlreason:bf16; "
                        "each rlreason run is compared with the fastest TRL run of its repetition")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", default="1", help="torch threads per process: N, or per framework, e.g. "
                   "trl=2,rlreason=2,rlreason-pipelined=1")
    p.add_argument("--rollout-workers", default="1", help="rlreason's rollout actors, for all or per framework "
                   "(e.g. rlreason=2); each gets --threads / workers torch threads")
    p.add_argument("--learner-ranks", default="1", help="rlreason's learner ranks (data parallel), for all or per "
                   "framework (e.g. rlreason=2); each gets --threads / ranks torch threads")
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)  # a worker's: from its variant
    p.add_argument("--attn", default="sdpa", help="the training forward's attention (sdpa or eager), for all or per "
                   "framework (TRL: the model's; rlreason: learner.attn_implementation, rollouts keep sdpa)")
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "rlreason-bench-step"))
    p.add_argument("--timeout-s", type=float, default=1800)
    p.add_argument("--smoke", action="store_true", help="the tiny model, 2 steps, one repetition")
    p.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--launched", type=float, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.threads, args.rollout_workers = int(args.threads), int(args.rollout_workers)
        args.learner_ranks = int(args.learner_ranks)
        return worker(args)
    if args.smoke:
        args.sizes, args.steps, args.reps = "tiny", 2, 1
    os.makedirs(args.cache, exist_ok=True)
    frameworks = args.frameworks.split(",")
    for variant in frameworks:
        split_variant(variant)  # fail before any run
    runs = []
    for size in args.sizes.split(","):
        model, data = prepare(args.cache, size)
        for rep in range(args.reps):
            order = frameworks[rep % len(frameworks):] + frameworks[:rep % len(frameworks)]
            for variant in order:
                framework, precision = split_variant(variant)
                result = {"size": size, "rep": rep, "variant": variant, "framework": framework,
                          "threads": count_for(args.threads, framework), "precision": precision,
                          "rollout_workers": count_for(args.rollout_workers, framework),
                          "learner_ranks": count_for(args.learner_ranks, framework),
                          "attn": setting_for(args.attn, framework, "sdpa"), **launch(variant, model, data, args)}
                print(json.dumps(result), flush=True)
                runs.append(result)
    print(json.dumps({"summary": ratios(runs, args.reps), "threads": args.threads, "attn": args.attn,
                      "steps": args.steps}), flush=True)


if __name__ == "__main__":
    main()
