"""Drafter adaptation while RL moves the policy: a frozen drafter vs the online-trained one, step by step.

Runs the real quickstart (``rlreason train recipe=quickstart``) with speculative decoding on, the
drafter warm-started on the SFT demonstrations against the warmed-up policy (version 0), then trained
online after every RL step. ``rollout.spec.train.track_frozen=true`` keeps a copy of version 0, so
at every step both drafters are measured on the same rollouts against the same (just updated) policy:

    online   drafter/accept_before: the drafter trained through the previous step, on rows it has not seen
    frozen   drafter/accept_frozen: the version-0 drafter (what a never-retrained drafter would give)

Both are offline acceptance rates of a one-token draft at the rollout temperature, Σ min(p′, q)
(= 1 − TV, speculative.md §2.1), over every response position. The engine's own measured
acceptance of the online drafter in the rollouts (spec/accept_rate, spec/accept_len, K chosen by
the selector; ``engine_accept_pos1`` is its first-position rate, the one comparable with the offline
numbers) is reported beside them. Prints JSON and writes it with a PNG next to the run.

    python scripts/drafter_adaptation.py --out runs/drafter_adaptation [--steps 30] [override ...]
    python scripts/drafter_adaptation.py --from-run RUN_DIR        # re-read an existing run

Not here: a second policy trajectory. Both drafters see one run's policy, which is what makes the
comparison paired; SD is lossless, so that policy is distributed as it would be without SD.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys


def run_training(out: str, steps: int, overrides: list[str]) -> str:
    from rlreason.config import load_config
    from rlreason.config.validate import validate
    from rlreason.modes import train

    cfg = load_config(["recipe=quickstart", "rollout.spec.enable=true", "rollout.spec.train.track_frozen=true",
                       f"trainer.total_steps={steps}", f"trainer.output_dir={out}", "trainer.progress=false",
                       *overrides])
    validate(cfg)
    return train(cfg, out)


def summarise(run_dir: str, horizon: int = 20) -> dict:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    keys = {"online": "drafter/accept_before", "frozen": "drafter/accept_frozen",
            "engine_accept_pos1": "spec/accept_pos1", "engine_accept_rate": "spec/accept_rate",
            "engine_accept_len": "spec/accept_len",
            "sd_frac": "spec/sd_frac", "correct": "correct/mean", "drafter_loss": "drafter/loss",
            "tokens_per_s": "rollout/tokens_per_s"}
    per_step = [{"step": r["step"], **{name: r.get(key) for name, key in keys.items()}} for r in rows]
    first = per_step[0]
    last = next((p for p in per_step if p["step"] == first["step"] + horizon), per_step[-1])
    ratio = lambda name: last[name] / first[name] if first[name] else math.nan  # noqa: E731
    return {"run_dir": os.path.abspath(run_dir), "updates": last["step"] - first["step"],
            "initial": {"online": first["online"], "frozen": first["frozen"]},
            "final": {"online": last["online"], "frozen": last["frozen"]},
            "held_fraction": {"online": ratio("online"), "frozen": ratio("frozen")},
            "aim_online_holds_90pct": ratio("online") >= 0.9, "per_step": per_step}


def plot(summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p["step"] for p in summary["per_step"]]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, style in (("online", "-o"), ("frozen", "--s"), ("engine_accept_pos1", ":^")):
        ys = [p[name] if p[name] is not None else math.nan for p in summary["per_step"]]
        ax.plot(steps, ys, style, label={"online": "online drafter (held-out rows)",
                                         "frozen": "frozen drafter (version 0)",
                                         "engine_accept_pos1": "online, in the engine (draft position 1)"}[name],
                ms=4)
    ax.set_xlabel("RL step (policy updates)")
    ax.set_ylabel("acceptance rate")
    ax.set_title("Drafter acceptance while RL moves the policy")
    ax.legend()
    ax.grid(alpha=0.3)
    ax2.plot(steps, [p["correct"] for p in summary["per_step"]], "-o", ms=4, color="tab:green")
    ax2.set_xlabel("RL step")
    ax2.set_ylabel("correct/mean (rollouts)")
    ax2.set_title("The policy is learning")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/drafter_adaptation", help="run directory to create")
    ap.add_argument("--from-run", default=None, help="summarise an existing run instead of training")
    ap.add_argument("--steps", type=int, default=30, help="RL steps (the quickstart's 30)")
    ap.add_argument("--horizon", type=int, default=20, help="compare step 1 with step 1 + horizon")
    ap.add_argument("overrides", nargs="*", help="extra config overrides (key=value)")
    a = ap.parse_args(argv)
    run_dir = a.from_run or run_training(a.out, a.steps, a.overrides)
    summary = summarise(run_dir, horizon=a.horizon)
    with open(os.path.join(run_dir, "drafter_adaptation.json"), "w") as f:
        json.dump(summary, f, indent=1)
    plot(summary, os.path.join(run_dir, "drafter_adaptation.png"))
    json.dump({k: v for k, v in summary.items() if k != "per_step"}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
