"""Checkpoints that resume a run exactly, written so that a crash never leaves one that loads.

Layout of ``RUN_DIR/checkpoints/``::

    step_4/                  one complete checkpoint
        manifest.json        written last: the step and every file with its size
        state.pt             each registered component's state_dict(), plus the driver's RNG states
        learner/             directories of components that save themselves (DeepSpeed, every rank)
        model/               the model's config and tokenizer files (what `rlreason export` needs)
        config.yaml          the run's configuration
        metrics.jsonl        the run's rows up to and including step 4 (restored on resume)
        samples.jsonl
    latest                   the name of the newest complete checkpoint ("step_4"), replaced last
    .tmp-step_6-<pid>/       a save in progress; never loaded, removed by the next save

A save writes everything into ``.tmp-step_N-<pid>/``, then ``manifest.json``, then renames the
directory to ``step_N`` and only then replaces ``latest``. A checkpoint loads only if its manifest
exists and every file it lists has the recorded size, so a save killed at any point leaves
either the previous checkpoint or a complete new one. (Files are not fsync'ed one by one: after a
power cut the size check catches truncated files, not files with garbage of the right size.)

The stateful-component protocol
-------------------------------
Anything whose state must survive a restart registers itself with the run's Checkpointer under a
unique name, in ``Trainer.setup``::

    checkpointer.register("sampler", sampler)            # small state, kept in state.pt
    checkpointer.register("learner", learner_group)      # large state, saved by the component

A component implements one or both of:

* ``state_dict() -> dict`` and ``load_state_dict(state: dict) -> None`` — small state (counters,
  weights of a prompt sampler, statistics, torch tensors). It is pickled into ``state.pt`` with
  ``torch.save``; keep it to plain containers, numbers, strings and tensors (no live objects).
  State living on Ray actors (e.g. a speculative drafter on each rollout worker) is gathered by the
  *group* object: its ``state_dict()`` calls the actors, its ``load_state_dict()`` sends it back.
* ``save_checkpoint(path: str) -> None`` and ``load_checkpoint(path: str) -> None`` — large
  state written by the component itself into the directory ``path`` (``<checkpoint>/<name>``),
  possibly from Ray actors on other nodes: on more than one node ``trainer.output_dir`` must be on
  a filesystem every node sees.

Loading runs after every worker exists and before the first step, in registration order; the
controller then pushes the restored weights to the rollout workers. A component registered with
``optional=True`` may be absent from an older checkpoint (it keeps its fresh state, with a
warning); any other missing component is an error, because the resume would not be exact.

What "exact" means: on CPU, a resumed run writes the same metrics.jsonl rows as an uninterrupted
one, except the wall-clock fields in ``WALL_CLOCK_KEYS``. The row of the checkpoint's own step is
restored as it was when the checkpoint was taken, so it lacks ``time/checkpoint`` (and its
``time/step`` does not include that phase).

Not here: asynchronous saving, and uploading checkpoints to object storage.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import sys
from typing import Any, Optional, Protocol, runtime_checkable

from rlreason.tracking import _clean

MANIFEST = "manifest.json"
STATE_FILE = "state.pt"
LATEST = "latest"
# restored on resume: rows up to the checkpoint's step (warm-up rows have no step: all are kept)
LOG_FILES = ("metrics.jsonl", "samples.jsonl", "reward_errors.jsonl", "warmup.jsonl")
WALL_CLOCK_KEYS = ("time/", "rollout/tokens_per_s", "spec/time/")  # prefixes of metrics that measure time, not training
_STEP_DIR = re.compile(r"^step_(\d+)$")


@runtime_checkable
class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class DirStateful(Protocol):
    def save_checkpoint(self, path: str) -> None: ...

    def load_checkpoint(self, path: str) -> None: ...


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded; the message says why and what to do."""


def is_wall_clock(key: str) -> bool:
    return key.startswith(WALL_CLOCK_KEYS)


class Checkpointer:
    def __init__(self, run_dir: str, keep: int = 0):
        self.run_dir = run_dir
        self.root = os.path.join(run_dir, "checkpoints")
        self.keep = keep  # complete checkpoints to keep (0 = all)
        self._components: dict[str, tuple[Any, bool]] = {}

    def register(self, name: str, obj: Any, optional: bool = False) -> None:
        if name in self._components or name in ("__rng__", "__step__"):
            raise ValueError(f"checkpoint component '{name}' is registered twice (or is a reserved name)")
        if not isinstance(obj, (Stateful, DirStateful)):
            raise TypeError(f"checkpoint component '{name}' ({type(obj).__name__}) implements neither "
                            "state_dict/load_state_dict nor save_checkpoint/load_checkpoint")
        self._components[name] = (obj, optional)

    # ---- saving ---------------------------------------------------------------------------------

    def save(self, step: int, pending_row: Optional[dict[str, Any]] = None) -> str:
        """Write checkpoint ``step_<step>`` atomically; ``pending_row`` is this step's metrics row,
        not yet in metrics.jsonl. Returns the checkpoint's directory. A full disk is said as such,
        and leaves no partial directory behind."""
        os.makedirs(self.root, exist_ok=True)
        self._remove_stale_tmp()
        tmp = os.path.join(self.root, f".tmp-step_{step}-{os.getpid()}")
        try:
            return self._save(step, tmp, pending_row)
        except (OSError, RuntimeError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            free_mb = shutil.disk_usage(self.root).free / 2**20
            if getattr(e, "errno", None) == errno.ENOSPC or "unexpected pos" in str(e) or free_mb < 1:
                raise CheckpointError(f"the disk holding {self.root} is full ({free_mb:.0f} MB free) while writing "
                                      f"checkpoint step_{step}; nothing partial was kept, the previous checkpoint "
                                      "stands. Free space (or keep fewer: trainer.keep_checkpoints) and resume with "
                                      "trainer.resume=auto") from None
            raise

    def _save(self, step: int, tmp: str, pending_row: Optional[dict[str, Any]]) -> str:
        final = os.path.join(self.root, f"step_{step}")
        os.makedirs(tmp)
        import torch

        state: dict[str, Any] = {"__step__": step, "__rng__": capture_rng()}
        for name, (obj, _) in self._components.items():
            if isinstance(obj, DirStateful):
                obj.save_checkpoint(os.path.join(tmp, name))
            if isinstance(obj, Stateful):
                state[name] = obj.state_dict()
        torch.save(state, os.path.join(tmp, STATE_FILE))
        self._copy_logs(tmp, step, pending_row)
        _write_manifest(tmp, step)
        stale = None
        if os.path.exists(final):  # an older save of the same step (a resumed run re-reaching it)
            stale = os.path.join(self.root, f".tmp-stale-step_{step}-{os.getpid()}")
            os.rename(final, stale)
        os.rename(tmp, final)
        _replace_file(os.path.join(self.root, LATEST), f"step_{step}\n")
        if stale:
            shutil.rmtree(stale, ignore_errors=True)
        self._prune(step)
        return final

    def _copy_logs(self, tmp: str, step: int, pending_row: Optional[dict[str, Any]]) -> None:
        src = os.path.join(self.run_dir, "config.yaml")
        if os.path.isfile(src):
            shutil.copy2(src, os.path.join(tmp, "config.yaml"))
        for name in LOG_FILES:
            rows = _read_rows(os.path.join(self.run_dir, name))
            if name == "metrics.jsonl" and pending_row is not None:
                # written exactly as RunLog writes rows (NaN/inf become null)
                rows = [r for r in rows if r.get("step", 0) < step]
                rows.append({"step": step, **{k: _clean(v) for k, v in pending_row.items()}})
            else:
                rows = [r for r in rows if r.get("step", 0) <= step]
            with open(os.path.join(tmp, name), "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)

    def _remove_stale_tmp(self) -> None:
        for name in os.listdir(self.root):
            if name.startswith(".tmp-"):
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)

    def _prune(self, step: int) -> None:
        """Keep the ``keep`` newest complete checkpoints up to ``step``; later ones (left by a run that was
        resumed from an earlier checkpoint) are not this run's history and are left alone."""
        if self.keep <= 0:
            return
        ours = [p for p in list_checkpoints(self.root)
                if _step_of(p) <= step and checkpoint_problem(p) is None]
        for path in ours[:-self.keep]:
            shutil.rmtree(path, ignore_errors=True)

    # ---- loading --------------------------------------------------------------------------------

    def load(self, path: str, log=print) -> int:
        """Restore every registered component, the RNG states and the run's logs; returns the step."""
        problem = checkpoint_problem(path)
        if problem:
            raise CheckpointError(f"checkpoint {path} cannot be loaded: {problem}")
        import torch

        state = load_small_state(os.path.join(path, STATE_FILE))
        for name, (obj, optional) in self._components.items():
            has_dir = os.path.isdir(os.path.join(path, name))
            if name not in state and not has_dir:
                if not optional:
                    raise CheckpointError(f"checkpoint {path} has no state for '{name}' (it was written before that "
                                          "component existed?); resuming would not be exact. Start a new run, or "
                                          "register the component with optional=True if a fresh state is acceptable.")
                log(f"checkpoint {path}: no state for '{name}'; it starts fresh")
                continue
            if isinstance(obj, DirStateful) and has_dir:
                obj.load_checkpoint(os.path.join(path, name))
            if isinstance(obj, Stateful) and name in state:
                obj.load_state_dict(state[name])
        restore_rng(state["__rng__"])
        if os.path.dirname(os.path.abspath(path)) == os.path.abspath(self.root):
            # resuming an earlier checkpoint of this run: later ones belong to the abandoned future
            _replace_file(os.path.join(self.root, LATEST), os.path.basename(os.path.abspath(path)) + "\n")
        step = int(state["__step__"])
        for name in LOG_FILES:
            src, dst = os.path.join(path, name), os.path.join(self.run_dir, name)
            if os.path.isfile(src):
                shutil.copyfile(src, dst)
            elif os.path.isfile(dst):  # a checkpoint without this log: drop the rows of the rolled-back steps
                kept = [r for r in _read_rows(dst) if r.get("step", 0) <= step]
                _replace_file(dst, "".join(json.dumps(r) + "\n" for r in kept))
        return step


def set_aside_logs(run_dir: str) -> Optional[str]:
    """A run starting at step 1 in a directory with logs of an earlier attempt: move those logs into
    ``abandoned-<time>/`` (nothing is deleted), so the new logs hold each step once. Returns that dir."""
    found = [n for n in LOG_FILES if os.path.isfile(os.path.join(run_dir, n))]
    if not found:
        return None
    import time

    aside = os.path.join(run_dir, f"abandoned-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(aside, exist_ok=True)
    for name in found:
        os.rename(os.path.join(run_dir, name), os.path.join(aside, name))
    return aside


def load_small_state(path: str) -> dict:
    """state.pt with ``weights_only=True``: tensors and plain values only, so a checkpoint from elsewhere
    cannot run code here. One that holds more (written by an older rlreason) loads only when the
    user says it is trusted, with RLREASON_TRUST_CHECKPOINTS=1."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if os.environ.get("RLREASON_TRUST_CHECKPOINTS") == "1":
            return torch.load(path, map_location="cpu", weights_only=False)
        first = str(e).strip().splitlines()[-1][:300]
        raise CheckpointError(f"{path} holds objects other than tensors and plain values ({first}); loading it "
                              "could run code from the file. If you trust where it came from, set "
                              "RLREASON_TRUST_CHECKPOINTS=1") from None


# ---- finding checkpoints ------------------------------------------------------------------------

def list_checkpoints(root: str) -> list[str]:
    """``step_N`` directories under ``root``, oldest first (complete or not)."""
    if not os.path.isdir(root):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(root) if (m := _STEP_DIR.match(name))]
    return [os.path.join(root, name) for _, name in sorted(found)]


def _step_of(path: str) -> int:
    return int(_STEP_DIR.match(os.path.basename(path)).group(1))


def checkpoint_problem(path: str) -> Optional[str]:
    """None if ``path`` is a complete checkpoint, else what is wrong with it."""
    manifest = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest):
        return f"no {MANIFEST} (the save did not finish, or this is not a checkpoint directory)"
    try:
        with open(manifest) as f:
            files = json.load(f)["files"]
    except (ValueError, KeyError) as e:
        return f"{MANIFEST} is unreadable ({e})"
    for rel, size in files.items():
        full = os.path.join(path, rel)
        if not os.path.isfile(full):
            return f"{rel} is missing"
        if os.path.getsize(full) != size:
            return f"{rel} has {os.path.getsize(full)} bytes, the manifest says {size} (truncated?)"
    return None


def latest_checkpoint(root: str, log=print) -> Optional[str]:
    """The checkpoint named by ``root/latest`` if complete, else the newest complete one."""
    pointer = os.path.join(root, LATEST)
    if os.path.isfile(pointer):
        with open(pointer) as f:
            named = os.path.join(root, f.read().strip())
        problem = checkpoint_problem(named)
        if problem is None:
            return named
        log(f"{pointer} names {named}, which cannot be loaded ({problem}); looking for an older checkpoint")
    for path in reversed(list_checkpoints(root)):
        if checkpoint_problem(path) is None:
            return path
    return None


def resolve_checkpoint(spec: str, log=print) -> str:
    """A complete checkpoint from a checkpoint dir, a ``checkpoints/`` dir or a run dir."""
    path = os.path.abspath(spec)
    if os.path.isfile(os.path.join(path, MANIFEST)) or _STEP_DIR.match(os.path.basename(path)):
        problem = checkpoint_problem(path)
        if problem:
            raise CheckpointError(f"checkpoint {spec} cannot be loaded: {problem}. Use an earlier step_N, "
                                  "or the run directory to take its latest complete checkpoint.")
        return path
    for root in (path, os.path.join(path, "checkpoints")):
        if os.path.isdir(root) and (os.path.isfile(os.path.join(root, LATEST)) or list_checkpoints(root)):
            found = latest_checkpoint(root, log)
            if found:
                return found
            raise CheckpointError(f"{spec} holds no complete checkpoint (every step_N is missing files)")
    saved_nothing = os.path.isfile(os.path.join(path, "metrics.jsonl"))
    hint = (" It is a run directory whose run saved no checkpoint: runs save their last step unless "
            "trainer.save_final=false, and every N steps with trainer.save_every=N.") if saved_nothing else ""
    raise CheckpointError(f"{spec} is not a checkpoint (no {MANIFEST}), a checkpoints/ directory or a run directory "
                          f"with checkpoints/.{hint}")


def resume_path(resume: Optional[str], run_dir: str, log=print) -> Optional[str]:
    """What ``trainer.resume`` asks for: null -> None; auto -> this run's latest, if any; else a path."""
    if not resume:
        return None
    if resume == "auto":
        return latest_checkpoint(os.path.join(run_dir, "checkpoints"), log)
    return resolve_checkpoint(resume, log)


# ---- random number generators -------------------------------------------------------------------

def capture_rng() -> dict[str, Any]:
    """The process-global RNG states (python, numpy if loaded, torch CPU and CUDA)."""
    import torch

    out: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if "numpy" in sys.modules:  # as a tensor and plain values, so state.pt loads with weights_only=True
        name, keys, pos, has_gauss, cached = sys.modules["numpy"].random.get_state()
        out["numpy"] = {"name": name, "keys": torch.from_numpy(keys.copy()), "pos": int(pos),
                        "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy

        np_state = state["numpy"]
        if isinstance(np_state, dict):
            np_state = (np_state["name"], np_state["keys"].numpy(), np_state["pos"], np_state["has_gauss"],
                        np_state["cached_gaussian"])
        numpy.random.set_state(np_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- files --------------------------------------------------------------------------------------

def _read_rows(path: str) -> list[dict[str, Any]]:
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_manifest(tmp: str, step: int) -> None:
    files = {}
    for dirpath, _, names in os.walk(tmp):
        for name in names:
            full = os.path.join(dirpath, name)
            files[os.path.relpath(full, tmp)] = os.path.getsize(full)
    _replace_file(os.path.join(tmp, MANIFEST), json.dumps({"step": step, "files": files}, indent=1))


def _replace_file(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a reader sees the old or the new file, never half)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        if os.path.exists(tmp):  # e.g. the disk filled up mid-write: leave no latest.tmp-* behind
            os.remove(tmp)
        raise
