"""The run directory and the metric sinks: console progress bar, metrics.jsonl, wandb, tensorboard.

Run directory layout: config.yaml (resolved), metrics.jsonl (one JSON object per RL step),
samples.jsonl (a few prompt/response/reward rows per step), warmup.jsonl (SFT warm-up losses).
wandb runs offline unless WANDB_MODE is set, so a run never needs the network.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from typing import Any, Iterator, Optional


class PhaseTimer:
    """Wall time of each named phase of a step: ``with timer("generate"): ...``."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        except Exception as e:
            # the innermost phase names where a fatal error happened (rlreason.faults.explain_failure)
            if not hasattr(e, "rlreason_phase"):
                try:
                    e.rlreason_phase = phase
                except AttributeError:  # exceptions with __slots__ cannot carry it
                    pass
            raise
        finally:
            self.times[phase] = self.times.get(phase, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        out = {f"time/{k}": v for k, v in self.times.items()}
        out["time/step"] = sum(self.times.values())
        return out


def _clean(value: Any) -> Any:
    """JSON-safe floats (NaN/inf become null)."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value


class RunLog:
    def __init__(self, run_dir: str, config_yaml: str, loggers: list[str], total_steps: int,
                 project: str = "rlreason", progress: bool = True):
        self.dir = run_dir
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "config.yaml"), "w") as f:
            f.write(config_yaml)
        self.loggers = loggers
        self.total_steps = total_steps
        self._files: dict[str, Any] = {}
        # Bars: warm-up and RL each get their own, made when that part starts, so neither's time estimate
        # counts set-up or the other part.
        self._progress = "console" in loggers and progress
        self._bar = None
        self._warmup_bar = None
        self._wandb = self._start_wandb(project, config_yaml) if "wandb" in loggers else None
        self._tb = self._start_tensorboard() if "tensorboard" in loggers else None

    def _append(self, name: str, row: dict[str, Any]) -> None:
        if name not in self._files:
            self._files[name] = open(os.path.join(self.dir, name), "a")
        f = self._files[name]
        f.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
        f.flush()

    def start_rl(self, first_step: int) -> None:
        """The RL loop starts at ``first_step`` (after set-up, warm-up or a resume): its bar starts here."""
        if self._progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total_steps, initial=first_step - 1, desc="rl", unit="step",
                             dynamic_ncols=True)

    def warmup_progress(self, k: int, total: int, loss: float) -> None:
        """Supervised warm-up step ``k`` of ``total`` done: its own bar, closed at the last step."""
        if not self._progress:
            return
        if self._warmup_bar is None:
            from tqdm.auto import tqdm

            self._warmup_bar = tqdm(total=total, desc="warm-up", unit="step", dynamic_ncols=True)
        self._warmup_bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        self._warmup_bar.update(1)
        if k == total:
            self._warmup_bar.close()
            self._warmup_bar = None

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **metrics}
        if "jsonl" in self.loggers:
            self._append("metrics.jsonl", row)
        if self._bar is not None:
            self._bar.set_postfix(reward=f"{metrics.get('reward/mean', float('nan')):.3f}",
                                  correct=f"{metrics.get('correct/mean', float('nan')):.3f}",
                                  s_per_step=f"{metrics.get('time/step', 0):.1f}", refresh=False)
            self._bar.update(1)
        elif "console" in self.loggers and not self._progress:
            keys = ("reward/mean", "correct/mean", "response_length/mean", "loss", "time/step")
            print(f"step {step}: " + " ".join(f"{k}={metrics[k]:.4g}" for k in keys if k in metrics), flush=True)
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not math.isnan(v):
                    self._tb.add_scalar(k, v, step)

    def log_samples(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self._append("samples.jsonl", row)

    def log_warmup(self, row: dict[str, Any]) -> None:
        self._append("warmup.jsonl", row)

    def log_reward_errors(self, step: int, errors: list[str]) -> None:
        """Every failed reward call of a step (function, sample, traceback) to reward_errors.jsonl, whatever the loggers."""
        for error in errors:
            self._append("reward_errors.jsonl", {"step": step, "error": error})

    def message(self, text: str) -> None:
        if "console" not in self.loggers:
            return
        bar = self._bar or self._warmup_bar
        if bar is not None:
            bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        for bar in (self._warmup_bar, self._bar):
            if bar is not None:
                bar.close()
        for f in self._files.values():
            f.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._tb is not None:
            self._tb.close()

    def _start_wandb(self, project: str, config_yaml: str):
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_DIR", self.dir)
        os.environ.setdefault("WANDB_DATA_DIR", self.dir)
        import wandb
        import yaml

        return wandb.init(project=project, dir=self.dir, config=yaml.safe_load(config_yaml),
                          name=os.path.basename(os.path.abspath(self.dir)))

    def _start_tensorboard(self):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=os.path.join(self.dir, "tensorboard"))


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
    path = os.path.join(run_dir, "metrics.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def default_run_dir(recipe: str, output_dir: Optional[str]) -> str:
    if output_dir:
        return output_dir
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = os.path.splitext(os.path.basename(recipe))[0] or "run"
    return os.path.join("runs", f"{name}-{stamp}")
