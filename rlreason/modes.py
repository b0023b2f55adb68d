"""The controllers a run can use (trainer.mode), and ``train``, which picks one and runs it."""

from __future__ import annotations

import os
from typing import Optional

from rlreason.config import RunConfig
from rlreason.controller import Trainer
from rlreason.pipeline import PipelinedTrainer

MODES = {"sync": Trainer, "pipelined": PipelinedTrainer}


def train(cfg: RunConfig, run_dir: Optional[str] = None) -> str:
    from rlreason.tracking import default_run_dir

    run_dir = run_dir or default_run_dir(cfg.recipe, cfg.trainer.output_dir)
    require_writable(run_dir)
    return MODES[cfg.trainer.mode](cfg, run_dir).fit()


def require_writable(run_dir: str) -> None:
    """Create the run dir and write a probe file there, so a read-only place fails now, in one line."""
    from rlreason.config import ConfigError

    probe = os.path.join(run_dir, f".write-probe-{os.getpid()}")
    try:
        os.makedirs(run_dir, exist_ok=True)
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"trainer.output_dir={run_dir}: cannot write there ({e.strerror}); "
                          "give a directory you can write to") from None
