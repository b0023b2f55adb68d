"""DeepSpeed's op builds go to a cache of this environment, and a build lock left by a killed process is
removed (it would block every later build on the machine)."""

import os
import sys
import time

from rlreason.workers.extensions import STALE_AFTER_S, clear_stale_locks, extensions_dir, prepare_extensions_dir


def test_the_cache_is_this_environments_unless_the_user_names_one(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    assert extensions_dir() == os.path.join(sys.prefix, "var", "rlreason", "torch_extensions")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert extensions_dir() == str(tmp_path)


def test_a_stale_lock_is_removed_and_said_and_a_live_one_is_kept(monkeypatch, tmp_path):
    stale, live = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock", tmp_path / "py311_cpu" / "cpu_adam" / "lock"
    for lock in (stale, live):
        lock.parent.mkdir(parents=True)
        lock.write_text("")
    old = time.time() - 2 * STALE_AFTER_S
    os.utime(stale, (old, old))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    notes = prepare_extensions_dir()
    assert len(notes) == 1 and str(stale) in notes[0] and "stale build lock" in notes[0]
    assert not stale.exists() and live.exists() and os.environ["TORCH_EXTENSIONS_DIR"] == str(tmp_path)
    assert clear_stale_locks(str(tmp_path / "missing")) == []
