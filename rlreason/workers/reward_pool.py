"""Run reward functions in worker processes, each call under a wall-clock timeout.

Why not ``concurrent.futures.ProcessPoolExecutor``: it cannot stop a hung call, and a crashed worker
breaks the whole executor. Here each of ``num_processes`` long-lived processes takes one call at a
time over its own pipe; a call that overruns is ended by killing its process, which is then
replaced, and the other processes carry on. Processes are started with "spawn": the pool is created
inside Ray actors, where forking a multi-threaded process is unsafe. Spawned children inherit the
parent's ``sys.path``, so modules importable here are importable there.

Not thread-safe: one ``run`` at a time per pool.
"""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing as mp
import numbers
import os
import signal
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any


@dataclass
class RewardCall:
    fn: str  # registry name ("math_verify"), "module:function" or "path/to/file.py:function"
    kwargs: dict  # keyword arguments (prompt, response, ground_truth, columns..., recipe kwargs)
    sample_id: int  # for error reports


@dataclass
class RewardOutcome:
    value: float | dict | None  # what the function returned (None = not applicable, or it failed)
    error: str | None = None  # "<fn> on sample <id>: <ExcType>: <msg>\n<traceback>", or timeout/death text
    timed_out: bool = False
    elapsed_s: float = 0.0


# ----------------------------------------------------------------------------- worker process


def _worker_main(conn, parent_pid: int) -> None:
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # If the parent is SIGKILLed (e.g. its Ray actor is killed) while we run a hung call, nobody
    # would ever kill us: exit when we are orphaned.
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    from rlreason.rewards import REWARDS  # slow (sympy): done once, before reporting ready

    fns: dict[str, Any] = {}
    loop = asyncio.new_event_loop()  # one loop per worker, so async clients can be reused
    conn.send(("ready", None))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        spec, kwargs, sample_id = msg
        where = f"{spec} on sample {sample_id}"
        try:
            if spec not in fns:
                fns[spec] = REWARDS.get(spec)
                conn.send(("loaded", spec))  # importing user code does not count against the timeout
            value = fns[spec](**kwargs)
            if inspect.isawaitable(value):
                value = loop.run_until_complete(value)
            reply = ("ok", _checked(value))
        # BaseException: sys.exit() or math-verify's TimeoutException are failures of this call too.
        except BaseException as e:  # noqa: BLE001
            timeout = isinstance(e, TimeoutError) or type(e).__name__ == "TimeoutException"
            text = f"{where}: {type(e).__name__}: {e}\n{traceback.format_exc()}"
            reply = ("timeout" if timeout else "error", text)
        try:
            conn.send(reply)
        except Exception as e:  # e.g. a metric value that cannot be pickled
            conn.send(("error", f"{where}: result could not be sent back: {type(e).__name__}: {e}"))


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(1)


def _checked(value: Any) -> float | dict | None:
    """Plain, picklable values only: a float, None, or a dict with a numeric "score"."""
    if value is None:
        return None
    if isinstance(value, numbers.Real):  # bool, int, float and numpy scalars
        return float(value)
    if isinstance(value, dict) and isinstance(value.get("score"), numbers.Real):
        return {k: float(v) if isinstance(v, numbers.Real) else v for k, v in value.items()}
    raise TypeError(f"returned {type(value).__name__} {value!r:.200}; expected a float, None, or a dict "
                    "with a numeric 'score'")


# ----------------------------------------------------------------------------- parent side


@dataclass
class _Slot:
    process: Any
    conn: Any
    started: float  # when the process was started (startup deadline)
    ready: bool = False
    loaded: set = field(default_factory=set)  # fn specs this process has already resolved
    call: int | None = None  # index of the call it is running
    call_start: float = 0.0
    deadline: float = 0.0


class RewardPool:
    """``num_processes`` reward worker processes; ``run`` scores calls in parallel, in order."""

    def __init__(self, num_processes: int = 2, timeout_s: float = 10.0, load_timeout_s: float = 120.0):
        if num_processes < 1 or timeout_s <= 0:
            raise ValueError("RewardPool needs num_processes >= 1 and timeout_s > 0")
        self.timeout_s = timeout_s
        self.load_timeout_s = load_timeout_s  # process start-up and first import of a reward module
        self._ctx = mp.get_context("spawn")
        self._slots = [self._start() for _ in range(num_processes)]

    def _start(self) -> _Slot:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_worker_main, args=(child, os.getpid()), daemon=True,
                                 name="rlreason-reward")
        proc.start()
        child.close()  # only the worker holds it now, so its death shows as EOF here
        return _Slot(proc, parent, time.monotonic())

    def _replace(self, i: int) -> None:
        slot = self._slots[i]
        if slot.process.is_alive():
            slot.process.kill()  # SIGKILL: a hung call may ignore SIGTERM
        slot.process.join()
        slot.conn.close()
        self._slots[i] = self._start()

    def run(self, calls: list[RewardCall]) -> list[RewardOutcome]:
        """One outcome per call, in the order of ``calls``; never raises for a failing reward."""
        if not self._slots:
            raise RuntimeError("RewardPool is closed")
        for i, slot in enumerate(self._slots):
            if slot.call is not None:  # left running by a run() that was interrupted (Ctrl-C)
                self._replace(i)
        outcomes: list[RewardOutcome | None] = [None] * len(calls)
        pending = deque(range(len(calls)))
        while pending or any(s.call is not None for s in self._slots):
            for i in range(len(self._slots)):
                if self._slots[i].ready and self._slots[i].call is None and pending:
                    self._dispatch(i, pending, calls, outcomes)
            self._collect(calls, outcomes)
        return outcomes  # type: ignore[return-value]

    def _dispatch(self, s: int, pending: deque, calls: list[RewardCall], outcomes: list) -> None:
        slot, i = self._slots[s], pending.popleft()
        call = calls[i]
        try:
            slot.conn.send((call.fn, call.kwargs, call.sample_id))
        except (OSError, EOFError):  # the idle worker died: replace it, the call waits for the next one
            pending.appendleft(i)
            self._replace(s)
            return
        except Exception as e:  # arguments that cannot be pickled: the pipe is untouched
            outcomes[i] = RewardOutcome(None, f"{call.fn} on sample {call.sample_id}: arguments cannot be "
                                              f"sent to a worker process: {type(e).__name__}: {e}")
            return
        now = time.monotonic()
        slot.call, slot.call_start = i, now
        slot.deadline = now + self.timeout_s + (0.0 if call.fn in slot.loaded else self.load_timeout_s)

    def _collect(self, calls: list[RewardCall], outcomes: list) -> None:
        """Wait for the next message, death or deadline, and handle everything that happened."""
        live = [s for s in self._slots if s.call is not None or not s.ready]
        if not live:  # nothing running (e.g. the last call's arguments could not be sent)
            return
        deadline = min(s.deadline if s.ready else s.started + self.load_timeout_s for s in live)
        handles = [x for s in live for x in (s.conn, s.process.sentinel)]
        wait(handles, timeout=max(0.0, deadline - time.monotonic()))
        now = time.monotonic()
        for i, slot in enumerate(self._slots):
            # Liveness first, then drain: whatever a dead process sent before dying is read, not lost.
            died = not slot.process.is_alive()
            try:
                while slot.conn.poll():
                    self._on_message(slot, slot.conn.recv(), calls, outcomes, now)
            except (EOFError, OSError):
                died = True
            if died:
                slot.process.join()
                code = slot.process.exitcode
                if not slot.ready:
                    raise RuntimeError(f"reward worker process failed to start (exit code {code})")
                if slot.call is not None:
                    self._finish(slot, calls, outcomes, now, None, f"worker process died (exit code {code})")
                self._replace(i)
            elif slot.call is not None and now >= slot.deadline:
                what = (f"timeout after {self.timeout_s:g}s" if calls[slot.call].fn in slot.loaded else
                        f"timeout after {now - slot.call_start:.3g}s while importing the reward function")
                self._finish(slot, calls, outcomes, now, None, f"{what} (worker process killed and replaced)",
                             timed_out=True)
                self._replace(i)
            elif not slot.ready and now >= slot.started + self.load_timeout_s:
                raise RuntimeError(f"reward worker process did not start within {self.load_timeout_s:g}s")

    def _on_message(self, slot: _Slot, msg: tuple, calls: list, outcomes: list, now: float) -> None:
        kind, payload = msg
        if kind == "ready":
            slot.ready = True
        elif kind == "loaded":  # the timeout counts from here
            slot.loaded.add(payload)
            slot.deadline = time.monotonic() + self.timeout_s
        elif kind == "ok":
            self._finish(slot, calls, outcomes, now, payload, None)
        else:  # "error" / "timeout": the worker already named function and sample
            self._finish(slot, calls, outcomes, now, None, payload, timed_out=kind == "timeout", named=True)

    def _finish(self, slot, calls, outcomes, now, value, error, timed_out=False, named=False) -> None:
        call = calls[slot.call]
        if error is not None and not named:
            error = f"{call.fn} on sample {call.sample_id}: {error}"
        outcomes[slot.call] = RewardOutcome(value, error, timed_out, now - slot.call_start)
        slot.call = None

    def close(self) -> None:
        """Stop every worker process (politely, then by force); safe to call twice."""
        slots, self._slots = self._slots, []
        for slot in slots:
            try:
                slot.process.kill() if slot.call is not None else slot.conn.send(None)  # busy: maybe hung
            except Exception:
                pass
        end = time.monotonic() + 2.0
        for slot in slots:
            slot.process.join(max(0.0, end - time.monotonic()))
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join()
            slot.conn.close()

    def __enter__(self) -> "RewardPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
