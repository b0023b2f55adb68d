"""Where DeepSpeed builds its C++ ops on a CPU machine, and stale build locks there.

DeepSpeed JIT-builds ``deepspeed_shm_comm`` (and CPU Adam) with torch's extension loader on first use.
The loader serialises builds with a ``lock`` file in the build directory; a process killed mid-build
leaves the file, and every later build on the machine then waits for it forever (our learners would
time out after cluster.init_timeout_s, blamed on placement). So rlreason builds into a cache of its
own environment (``<venv>/var/rlreason/torch_extensions``, unless TORCH_EXTENSIONS_DIR is set) and
removes a lock older than any build takes, saying so.
"""

from __future__ import annotations

import os
import sys
import time

STALE_AFTER_S = 900.0  # a build takes about a minute; a lock this old belongs to a killed process


def extensions_dir() -> str:
    """TORCH_EXTENSIONS_DIR if the user set it, else a cache inside this Python environment."""
    return os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(sys.prefix, "var", "rlreason", "torch_extensions")


def prepare_extensions_dir() -> list[str]:
    """Point torch's extension loader at ``extensions_dir()`` and remove stale build locks there.

    Returns one message per removed lock (empty when there was none)."""
    root = extensions_dir()
    os.environ["TORCH_EXTENSIONS_DIR"] = root
    return [f"removed a stale build lock {path}, left {age / 60:.0f} min ago by a process killed while DeepSpeed "
            "compiled an op (it would have blocked every build here)" for path, age in clear_stale_locks(root)]


def clear_stale_locks(root: str, stale_after_s: float = STALE_AFTER_S) -> list[tuple[str, float]]:
    """Delete ``lock`` files under ``root`` older than ``stale_after_s``; returns (path, age in s) of each."""
    removed = []
    if not os.path.isdir(root):
        return removed
    now = time.time()
    for dirpath, _, files in os.walk(root):
        if "lock" not in files:
            continue
        path = os.path.join(dirpath, "lock")
        try:
            age = now - os.path.getmtime(path)
            if age > stale_after_s:
                os.remove(path)
                removed.append((path, age))
        except OSError:  # another process removed it first: not stale after all
            continue
    return removed
