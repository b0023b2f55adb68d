"""``rlreason plot RUN_DIR [RUN_DIR ...] -o out.png``: a run's curves on one page, runs overlaid.

Panels: reward, accuracy (train correct/mean, and eval pass@1 as markers), response length, KL
to the reference, policy entropy, rollout tokens/s, the supervised warm-up's loss (warmup.jsonl),
and seconds per step split by phase (stacked for one run; one bar per run and phase when
comparing). Noisy curves are drawn faint with a
moving average on top. Panels whose metric no run logged say so instead of staying blank.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

PANELS = [  # (title, metric, y label)
    ("Reward", "reward/mean", "mean reward"),
    ("Accuracy", "correct/mean", "fraction correct"),
    ("Response length", "response_length/mean", "tokens"),
    ("KL to reference", "kl", "KL (token mean)"),
    ("Entropy", "entropy", "nats / token"),
    ("Rollout speed", "rollout/tokens_per_s", "tokens / s"),
]
STYLES = ["-", "--", ":", "-."]
PHASES = ["wait", "sample", "generate", "score", "shape", "filter", "release", "logprobs", "advantages", "update",
          "observe", "sync", "drafter", "log", "eval", "checkpoint"]


def phase_colors(n: int) -> list:
    """``n`` distinct colours: tab20's ten strong hues first, then their light partners."""
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab20")
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return [cmap(order[i % 20]) for i in range(n)]


def read_run(run_dir: str) -> list[dict[str, Any]]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl (is it a run directory?)")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_warmup(run_dir: str) -> list[dict[str, Any]]:
    """The supervised warm-up's rows (sft_step, loss), or none if the run had no warm-up."""
    path = os.path.join(run_dir, "warmup.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def series(rows: list[dict[str, Any]], key: str, x: str = "step") -> tuple[list[int], list[float]]:
    pts = [(r[x], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what exists so far)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v - (values[i - window] if i >= window else 0.0)
        out.append(acc / min(i + 1, window))
    return out


def _line(ax, xs: list[int], ys: list[float], color, label: str, style: str = "-") -> None:
    window = max(1, len(ys) // 15)
    if window > 1:
        ax.plot(xs, ys, color=color, alpha=0.25, linewidth=1)
        ax.plot(xs, smooth(ys, window), color=color, linewidth=2, linestyle=style, label=label)
    else:
        ax.plot(xs, ys, color=color, linewidth=2, linestyle=style, marker="o" if len(ys) < 30 else None,
                markersize=3, label=label)


def _panel(ax, runs: dict[str, list[dict]], colors: dict[str, Any], title: str, key: str, ylabel: str) -> None:
    drawn = False
    for i, (name, rows) in enumerate(runs.items()):
        xs, ys = series(rows, key)
        if xs:  # later runs dashed / dotted, so identical curves stay visible on top of each other
            _line(ax, xs, ys, colors[name], name, STYLES[i % len(STYLES)])
            drawn = True
        if key == "correct/mean":  # evaluation accuracy on the validation set, when the run had one
            ex, ey = series(rows, "eval/pass@1")
            if ex:
                ax.plot(ex, ey, color=colors[name], linestyle="--", marker="s", markersize=5, label=f"{name} eval pass@1")
                drawn = True
    ax.set_title(title, fontsize=12, fontweight="bold")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    _integer_steps(ax)
    if not drawn:
        ax.text(0.5, 0.5, f"'{key}' not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
    elif key == "correct/mean" and any(series(r, "eval/pass@1")[0] for r in runs.values()):
        ax.legend(fontsize=8, loc="best")


def _warmup_panel(ax, warmups: dict[str, list[dict]], colors: dict[str, Any]) -> None:
    drawn = False
    for i, (name, rows) in enumerate(warmups.items()):
        xs, ys = series(rows, "loss", x="sft_step")
        if xs:
            _line(ax, xs, ys, colors[name], name, STYLES[i % len(STYLES)])
            drawn = True
    ax.set_title("Supervised warm-up", fontsize=12, fontweight="bold")
    ax.set_xlabel("warm-up step")
    ax.set_ylabel("loss (nats / token)")
    ax.grid(alpha=0.3)
    if not drawn:
        ax.text(0.5, 0.5, "no warm-up (warmup.jsonl)", ha="center", va="center", transform=ax.transAxes, color="grey")


def _phase_panel(ax, runs: dict[str, list[dict]], colors: dict[str, Any]) -> None:
    phases = [p for p in PHASES if any(f"time/{p}" in r for rows in runs.values() for r in rows)]
    phases += sorted({k[5:] for rows in runs.values() for r in rows for k in r
                      if k.startswith("time/") and k[5:] not in phases and k != "time/step"})
    if len(runs) == 1:
        rows = next(iter(runs.values()))
        xs = [r["step"] for r in rows]
        stacks = [[r.get(f"time/{p}") or 0.0 for r in rows] for p in phases]
        ax.stackplot(xs, stacks, labels=phases, colors=phase_colors(len(phases)), alpha=0.85)
        ax.set_xlabel("step")
        _integer_steps(ax)
    else:  # mean seconds per phase, one bar per run
        width = 0.8 / len(runs)
        for j, (name, rows) in enumerate(runs.items()):
            means = [sum(r.get(f"time/{p}") or 0.0 for r in rows) / max(len(rows), 1) for p in phases]
            ax.bar([i + j * width for i in range(len(phases))], means, width, color=colors[name], label=name)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(phases))], phases, rotation=30, ha="right")
    ax.set_title("Seconds per step, by phase", fontsize=12, fontweight="bold")
    ax.set_ylabel("seconds")
    ax.grid(alpha=0.3, axis="y")


def plot_runs(run_dirs: list[str], out: str, names: Optional[list[str]] = None) -> str:
    """Draw every panel for ``run_dirs`` into ``out`` (png, pdf or svg); returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = names or _names(run_dirs)
    runs = {n: read_run(d) for n, d in zip(names, run_dirs)}
    warmups = {n: read_warmup(d) for n, d in zip(names, run_dirs)}
    colors = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(runs)}
    fig, axes = plt.subplots(3, 3, figsize=(19, 13.5))
    flat = axes.flatten()
    for ax, (title, key, ylabel) in zip(flat, PANELS):
        _panel(ax, runs, colors, title, key, ylabel)
    _warmup_panel(flat[len(PANELS)], warmups, colors)
    _phase_panel(flat[len(PANELS) + 1], runs, colors)
    _legend_panel(flat[-1], runs, colors, flat[len(PANELS) + 1])
    fig.suptitle("rlreason: " + ", ".join(runs), fontsize=15, fontweight="bold")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _integer_steps(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _legend_panel(ax, runs: dict[str, list[dict]], colors: dict[str, Any], phase_ax) -> None:
    """The last cell: which colour is which run, with its last values; and the phase colours."""
    ax.axis("off")
    if len(runs) == 1:  # the stacked phases' key lives here, off the data
        handles, labels = phase_ax.get_legend_handles_labels()
        ax.legend(handles, labels, loc="lower left", ncol=2, fontsize=10, title="phases (seconds per step)",
                  frameon=False)
    y = 0.95
    for name, rows in runs.items():
        last = rows[-1] if rows else {}
        ax.text(0.02, y, f"■ {name}", color=colors[name], fontsize=13, fontweight="bold", transform=ax.transAxes, va="top")
        facts = [f"steps: {last.get('step', 0)}"] + [f"{k}: {last[k]:.3g}" for k in
                                                     ("reward/mean", "correct/mean", "eval/pass@1")
                                                     if isinstance(last.get(k), (int, float))]
        times = series(rows, "time/step")[1]
        if times:  # the mean over the run: the last step alone may be a checkpoint or eval step
            facts.append(f"s/step (mean): {sum(times) / len(times):.3g}")
        ax.text(0.06, y - 0.07, "   ".join(facts[:3]) + "\n" + "   ".join(facts[3:]), fontsize=10,
                transform=ax.transAxes, va="top")
        y -= 0.25


def _names(run_dirs: list[str]) -> list[str]:
    base = [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    return base if len(set(base)) == len(base) else [os.path.normpath(d) for d in run_dirs]
