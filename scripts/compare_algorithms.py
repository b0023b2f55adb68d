"""Compare RL objectives on the verbose arithmetic task, from one shared warm-up and one seed.

    python scripts/compare_algorithms.py [--steps 20] [--methods grpo,kimi,...] [--out runs/compare]

The task is the quickstart's with ``verbose=0.5``: the SFT teacher pads half of its solutions with
"check a+b+c=total" restatements, so a right answer is reachable short or padded and length methods
have something to remove. The supervised warm-up runs once (``OUT/warmup/model``, reused when
present); every method then starts from that model with the same data, seed and step count, through
the real CLI (``rlreason train recipe=... model.path=OUT/warmup/model trainer.sft.steps=0``), and is
evaluated on the validation set after its last step (eval.k samples per prompt at the rollout
temperature). The warm-up model itself is evaluated too, as the row every method starts from.

Writes ``OUT/compare.json``, ``OUT/compare.md`` and ``OUT/compare.png``: accuracy (mean@k), mean
response length, tokens per correct answer (Σ length / Σ correct over the eval samples), the RL
phase wall time (Σ time/step) and the whole process's wall time. A method whose recipe is not
registered (``rlreason list``) is reported as missing, not run.
Not here: several seeds or confidence intervals (one seed on 2 cores is what fits in ~30 min).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# method -> (recipe, extra overrides); every method also gets VERBOSE and the shared settings below
METHODS = {
    "grpo": ("quickstart", []),
    "grpo+kimi": ("kimi_quickstart", []),
    "drpo": ("drpo_quickstart", []),
    "dot": ("dot_quickstart", []),
    "lgrpo": ("lgrpo_quickstart", []),
    "gdro": ("gdro_quickstart", []),
    "dr_grpo": ("dr_grpo_quickstart", []),
    "dapo_dynamic": ("dynamic_sampling_quickstart", []),
    "rollout_gdro": ("rollout_gdro_quickstart", []),
}
DEFAULT = "grpo,grpo+kimi,drpo,dot,lgrpo,gdro,dr_grpo"
VERBOSE = ["data.generator_kwargs.verbose=0.5", "rollout.max_new_tokens=96"]


def rlreason(args: list[str], log_path: str) -> tuple[int, float]:
    """Run ``python -m rlreason ARGS`` with its output in ``log_path``; (exit code, wall seconds)."""
    start = time.time()
    with open(log_path, "w") as log:
        code = subprocess.run([sys.executable, "-m", "rlreason", *args], stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
    return code, time.time() - start


def warm_up(out: str, a) -> str:
    """The shared starting model: the quickstart's SFT on the verbose data, saved as a model dir."""
    model_dir = os.path.join(out, "warmup", "model")
    if os.path.isfile(os.path.join(model_dir, "config.json")):
        print(f"warm-up: reusing {model_dir}", flush=True)
        return model_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlreason.config import load_config
    from rlreason.controller import Trainer

    cfg = load_config(["recipe=quickstart", *VERBOSE, f"trainer.sft.steps={a.sft_steps}", f"trainer.seed={a.seed}",
                       "trainer.total_steps=0", "trainer.progress=false"])
    start = time.time()
    trainer = Trainer(cfg, os.path.join(out, "warmup", "run"))
    try:
        trainer.setup()
        trainer.sft_warmup()
        state = trainer.learners.policy_weights()
    finally:
        trainer.close()
    model = AutoModelForCausalLM.from_pretrained(trainer.model_path)
    model.load_state_dict(state)
    model.save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(trainer.model_path).save_pretrained(model_dir)
    print(f"warm-up: {a.sft_steps} SFT steps in {time.time() - start:.0f}s -> {model_dir}", flush=True)
    return model_dir


def shared(a, model_dir: str) -> list[str]:
    """Overrides every run gets: the warm model, the verbose data, the same budget and evaluation."""
    return [*VERBOSE, f"model.path={model_dir}", "trainer.sft.steps=0", f"trainer.total_steps={a.steps}",
            f"trainer.seed={a.seed}", f"data.prompts_per_step={a.prompts}", f"eval.k={a.eval_k}",
            f"eval.max_prompts={a.eval_prompts}", "trainer.progress=false", "trainer.loggers=[jsonl]"]


def registered_recipes() -> set[str]:
    from rlreason.config import list_recipes

    return set(list_recipes())


def run_method(name: str, a, model_dir: str, out: str) -> dict:
    recipe, extra = METHODS[name]
    run_dir = os.path.join(out, name.replace("+", "_"))
    args = ["train", f"recipe={recipe}", *shared(a, model_dir), f"trainer.eval_every={a.steps}",
            f"trainer.output_dir={run_dir}", *extra]
    wall_file = os.path.join(run_dir, "wall_s.txt")
    rows = finished_rows(run_dir, a.steps) if os.path.isfile(wall_file) else None
    if rows is None:  # not run yet (a finished run is reused, so an interrupted comparison resumes)
        code, wall = rlreason(args, os.path.join(out, f"{name.replace('+', '_')}.log"))
        if code != 0:
            return {"method": name, "recipe": recipe, "status": f"failed (exit {code}, see its .log)", "wall_s": wall}
        rows = finished_rows(run_dir, a.steps)
        if rows is None:
            return {"method": name, "recipe": recipe, "status": "no final eval row", "wall_s": wall}
        with open(wall_file, "w") as f:
            f.write(f"{wall:.1f}\n")
    else:
        with open(wall_file) as f:
            wall = float(f.read())
    last = rows[-1]
    tail = rows[-3:]
    return {
        "method": name, "recipe": recipe, "status": "ok", "run_dir": run_dir,
        **eval_numbers({k[5:]: v for k, v in last.items() if k.startswith("eval/")}, a.eval_k),
        "train_correct_last3": sum(r.get("correct/mean", 0.0) for r in tail) / len(tail),
        "train_length_last3": sum(r.get("response_length/mean", 0.0) for r in tail) / len(tail),
        "rl_s": sum(r.get("time/step", 0.0) for r in rows), "wall_s": wall,
        "curves": {k: [r.get(k) for r in rows] for k in ("correct/mean", "response_length/mean")},
    }


def finished_rows(run_dir: str, steps: int):
    """The metrics rows of a run that reached its last step and evaluated there, else None."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    done = rows and rows[-1].get("step") == steps and any(k.startswith("eval/") for k in rows[-1])
    return rows if done else None


def eval_numbers(ev: dict, k: int) -> dict:
    """Accuracy (mean@k), mean length and tokens per correct answer (Σ length / Σ correct) of an eval."""
    acc, length = ev.get(f"mean@{k}"), ev.get("length")
    per_correct = length / acc if acc and length is not None else None
    return {"accuracy": acc, "length": length, "tokens_per_correct": per_correct, f"pass@{k}": ev.get(f"pass@{k}")}


def eval_warmup(a, model_dir: str, out: str) -> dict:
    """The starting point: the warm-up model evaluated exactly like the trained ones."""
    ev_dir = os.path.join(out, "warmup", "eval")
    args = ["eval", "recipe=quickstart", *shared(a, model_dir), f"checkpoint={model_dir}", f"eval.output_dir={ev_dir}"]
    wall = 0.0
    if not os.path.isfile(os.path.join(ev_dir, "eval.json")):
        code, wall = rlreason(args, os.path.join(out, "warmup_eval.log"))
        if code != 0:
            return {"method": "warm-up (start)", "status": f"failed (exit {code})", "wall_s": wall}
    with open(os.path.join(ev_dir, "eval.json")) as f:
        metrics = json.load(f)["metrics"]
    return {"method": "warm-up (start)", "recipe": "-", "status": "ok", "wall_s": wall, "rl_s": 0.0,
            **eval_numbers(metrics, a.eval_k)}


# ---------------------------------------------------------------------------------------------
# the table and the plot


def markdown(results: list[dict], a) -> str:
    def f(x, fmt):
        return "–" if x is None else format(x, fmt)

    lines = [f"| method | recipe | accuracy (mean@{a.eval_k}) | mean length | tokens per correct | "
             f"train correct (last 3) | train length (last 3) | RL time s | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.get("status") != "ok":
            lines.append(f"| {r['method']} | {r.get('recipe', '')} | {r['status']} | | | | | | |")
            continue
        cells = [f(r.get("accuracy"), ".3f"), f(r.get("length"), ".1f"), f(r.get("tokens_per_correct"), ".1f"),
                 f(r.get("train_correct_last3"), ".3f"), f(r.get("train_length_last3"), ".1f"),
                 f(r.get("rl_s"), ".0f"), f(r.get("wall_s"), ".0f")]
        lines.append(f"| {r['method']} | `{r['recipe']}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.get("status") == "ok" and r.get("accuracy") is not None]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    names = [r["method"] for r in ok]
    for ax, key, title in ((axes[0][0], "accuracy", "eval accuracy (mean@k)"),
                           (axes[0][1], "tokens_per_correct", "eval tokens per correct answer")):
        ax.bar(names, [r[key] or 0 for r in ok], color=[f"C{i}" for i in range(len(ok))])
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=30)
    for ax, key in ((axes[1][0], "correct/mean"), (axes[1][1], "response_length/mean")):
        for i, r in enumerate(ok):
            if "curves" in r:
                ax.plot(range(1, len(r["curves"][key]) + 1), r["curves"][key], label=r["method"], color=f"C{i}")
        ax.set_title(f"train {key} per step")
        ax.set_xlabel("RL step")
    axes[1][1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=DEFAULT, help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--steps", type=int, default=20, help="RL steps per method")
    p.add_argument("--prompts", type=int, default=32, help="prompts per step (rollout.n stays the recipe's 8)")
    p.add_argument("--sft-steps", type=int, default=600, help="supervised warm-up steps (the quickstart's)")
    p.add_argument("--eval-k", type=int, default=4)
    p.add_argument("--eval-prompts", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/compare")
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    unknown = [m for m in a.methods.split(",") if m not in METHODS]
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    model_dir = warm_up(a.out, a)
    results = [eval_warmup(a, model_dir, a.out)]
    recipes = registered_recipes()
    for name in a.methods.split(","):
        if METHODS[name][0] not in recipes:
            results.append({"method": name, "recipe": METHODS[name][0], "status": "recipe not registered"})
            continue
        print(f"{name}: running {METHODS[name][0]} for {a.steps} steps", flush=True)
        results.append(run_method(name, a, model_dir, a.out))
        r = results[-1]
        print(f"{name}: {r['status']}, accuracy {r.get('accuracy')}, length {r.get('length')}, "
              f"{r.get('wall_s', 0):.0f}s", flush=True)
    with open(os.path.join(a.out, "compare.json"), "w") as f:
        json.dump({"settings": vars(a), "results": results}, f, indent=1)
    with open(os.path.join(a.out, "compare.md"), "w") as f:
        f.write(markdown(results, a))
    plot(results, os.path.join(a.out, "compare.png"))
    print(markdown(results, a))
    print(f"wrote {a.out}/compare.json, compare.md, compare.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
