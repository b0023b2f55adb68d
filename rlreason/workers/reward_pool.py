"""Run reward functions in worker processes, each call under a wall-clock timeout.

Why not ``concurrent.futures.ProcessPoolExecutor``: it cannot stop a hung call, and a crashed worker
breaks the whole executor. Here each of ``num_processes`` long-lived processes takes one call at a
time over its own pipe; a call that overruns is ended by killing its process, and a process that
dies is replaced, while the others carry on.

Hanging calls overlap instead of queueing. A call running far longer than its function usually
takes is *stalled*: it keeps its process until it finishes or times out, and the pool starts an
extra process (at most ``extra_processes``) so pending work continues. A step in which 5% of the
calls hang therefore loses about one timeout, not (hangs / processes) timeouts; extras are closed
when the run ends.

Processes come from a "forkserver" with the reward modules preloaded (a new one is ready in tens
of milliseconds, and forking a single-threaded server is safe inside multi-threaded Ray actors);
"spawn" where there is no forkserver. A child gets the parent's current ``sys.path``, working
directory and environment, and the source of file rewards (``rewards/base.py: read_sources``).

Not thread-safe: one ``run`` at a time per pool.
"""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing as mp
import numbers
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any, Optional, Union


@dataclass
class RewardCall:
    fn: str  # registry name ("math_verify"), "module:function", "path/to/file.py:function" or an URL
    kwargs: dict  # keyword arguments (prompt, response, ground_truth, columns..., recipe kwargs); lists when batched
    sample_id: Union[int, list[int]]  # for error reports; a list for a batched call
    timeout_s: Optional[float] = None  # this call's limit (None = the pool's)


@dataclass
class RewardOutcome:
    value: Any  # what the function returned: float, dict, None, or a list of those (batched)
    error: Optional[str] = None  # "<fn> on sample <id>: <ExcType>: <msg>\n<traceback>", or timeout/death text
    timed_out: bool = False
    elapsed_s: float = 0.0


def where(fn: str, sample_id: Union[int, list[int]]) -> str:
    """'<fn> on sample 7' or '<fn> on samples [7, 8, 9]' (error reports)."""
    if isinstance(sample_id, list):
        ids = ", ".join(map(str, sample_id[:8])) + (f", … ({len(sample_id)} in all)" if len(sample_id) > 8 else "")
        return f"{fn} on samples [{ids}]"
    return f"{fn} on sample {sample_id}"


# ----------------------------------------------------------------------------- worker process


def _worker_main(conn, setup: dict) -> None:
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A forkserver child starts with the server's path, directory and environment, not ours.
    sys.path[:] = setup["sys_path"]
    os.chdir(setup["cwd"])
    os.environ.update(setup["env"])
    # If the pool's process is SIGKILLed (e.g. its Ray actor is killed) while we run a hung call, nobody
    # would ever kill us: exit when we are orphaned (our parent — the pool or its forkserver — is gone).
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    limit_mb = setup.get("max_memory_mb") or 0
    if limit_mb:  # a reward that allocates past it fails with MemoryError instead of taking the machine's memory
        import resource

        resource.setrlimit(resource.RLIMIT_DATA, (limit_mb * 2**20, limit_mb * 2**20))
    from rlreason.rewards.base import resolve  # slow (sympy) under spawn: done before reporting ready

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
        try:
            if spec not in fns:
                fn = resolve(spec, setup["sources"]).fn
                if callable(getattr(fn, "warmup", None)):  # e.g. load an embedding model
                    fn.warmup(**kwargs)
                fns[spec] = fn
                conn.send(("loaded", spec))  # importing / warming up does not count against the timeout
            value = fns[spec](**kwargs)
            if inspect.isawaitable(value):
                value = loop.run_until_complete(value)
            reply = ("ok", check_value(value))
        # BaseException: sys.exit() or math-verify's TimeoutException are failures of this call too.
        except BaseException as e:  # noqa: BLE001
            timeout = isinstance(e, TimeoutError) or type(e).__name__ == "TimeoutException"
            text = f"{where(spec, sample_id)}: {type(e).__name__}: {e}\n{traceback.format_exc()}"
            if limit_mb and (isinstance(e, MemoryError) or "can't allocate memory" in str(e)):
                text = f"{where(spec, sample_id)}: out of memory: over reward.max_memory_mb={limit_mb} MB\n{text}"
            reply = ("timeout" if timeout else "error", text)
        try:
            conn.send(reply)
        except Exception as e:  # e.g. a metric value that cannot be pickled
            conn.send(("error", f"{where(spec, sample_id)}: result could not be sent back: {type(e).__name__}: {e}"))


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(1)


def check_value(value: Any) -> Any:
    """Plain, picklable values only: a float, None, a dict with a numeric "score", or a list of those."""
    if isinstance(value, (list, tuple)):
        return [_check_one(v) for v in value]
    return _check_one(value)


def _check_one(value: Any) -> Union[float, dict, None]:
    if value is None:
        return None
    if isinstance(value, numbers.Real):  # bool, int, float and numpy scalars
        return float(value)
    if isinstance(value, dict) and isinstance(value.get("score"), numbers.Real):
        return {k: float(v) if isinstance(v, numbers.Real) else v for k, v in value.items()}
    raise TypeError(f"returned {type(value).__name__} {value!r:.200}; expected a float, None, or a dict "
                    "with a numeric 'score' (a list of those from a batched reward)")


def _context():
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # "__main__" too (multiprocessing's default): children then skip re-running the main script,
        # e.g. Ray's default_worker.py (~0.6 s each). No effect once this process's server runs.
        ctx.set_forkserver_preload(["__main__", "rlreason.rewards"])
        return ctx
    return mp.get_context("spawn")


# ----------------------------------------------------------------------------- parent side


@dataclass
class _Slot:
    process: Any
    conn: Any
    started: float  # when the process was started (startup deadline)
    ready: bool = False
    loaded: set = field(default_factory=set)  # fn specs this process has already resolved
    call: Optional[int] = None  # index of the call it is running
    call_start: float = 0.0
    run_start: float = 0.0  # when the function itself started (after any import / warm-up)
    deadline: float = 0.0


class RewardPool:
    """``num_processes`` reward worker processes; ``run`` scores calls in parallel, in order."""

    def __init__(self, num_processes: int = 2, timeout_s: float = 10.0, load_timeout_s: float = 120.0,
                 extra_processes: int = 32, sources: Optional[dict[str, str]] = None, min_stall_s: float = 0.2,
                 max_memory_mb: int = 0):
        if num_processes < 1 or timeout_s <= 0 or extra_processes < 0:
            raise ValueError("RewardPool needs num_processes >= 1, timeout_s > 0 and extra_processes >= 0")
        self.num_processes, self.extra_processes = num_processes, extra_processes
        self.timeout_s = timeout_s
        self.load_timeout_s = load_timeout_s  # process start-up and first import / warm-up of a reward
        self.min_stall_s = min_stall_s
        self.sources = dict(sources or {})
        self.max_memory_mb = max_memory_mb  # data-segment limit of each worker process (0 = none)
        self._typical: dict[str, float] = {}  # fn -> running mean of successful call durations
        self._ctx = _context()
        self._slots = [self._start() for _ in range(num_processes)]

    def _start(self) -> _Slot:
        parent, child = self._ctx.Pipe(duplex=True)
        setup = {"sys_path": list(sys.path), "cwd": os.getcwd(), "env": dict(os.environ), "sources": self.sources,
                 "max_memory_mb": self.max_memory_mb}
        proc = self._ctx.Process(target=_worker_main, args=(child, setup), daemon=True, name="rlreason-reward")
        proc.start()
        child.close()  # only the worker holds it now, so its death shows as EOF here
        return _Slot(proc, parent, time.monotonic())

    def _stop(self, slot: _Slot) -> None:
        if slot.process.is_alive():
            slot.process.kill()  # SIGKILL: a hung call may ignore SIGTERM
        slot.process.join()
        slot.conn.close()
        self._slots.remove(slot)

    # ---- scheduling ---------------------------------------------------------------------------

    def _stall_after(self, fn: str) -> float:
        """How long a call of ``fn`` may run before it counts as stalled (and an extra process starts)."""
        typical = self._typical.get(fn)
        if typical is None:  # nothing known yet: a slow first round must not spawn a crowd
            return self.timeout_s / 2
        return max(self.min_stall_s, 10.0 * typical)

    def _healthy(self, slot: _Slot, calls: list[RewardCall], now: float) -> bool:
        if slot.call is None or calls[slot.call].fn not in slot.loaded:
            return True  # idle, starting, or importing (slow but not hung)
        return now - slot.run_start < self._stall_after(calls[slot.call].fn)

    def _grow(self, calls: list[RewardCall], pending: deque, now: float) -> None:
        """Keep ``num_processes`` healthy processes while work is pending, up to the extra budget."""
        healthy = sum(self._healthy(s, calls, now) for s in self._slots)
        while pending and healthy < self.num_processes and len(self._slots) < self.num_processes + self.extra_processes:
            self._slots.append(self._start())
            healthy += 1

    def run(self, calls: list[RewardCall]) -> list[RewardOutcome]:
        """One outcome per call, in the order of ``calls``; never raises for a failing reward."""
        if not self._slots:
            raise RuntimeError("RewardPool is closed")
        for slot in [s for s in self._slots if s.call is not None]:  # left by an interrupted run (Ctrl-C)
            self._stop(slot)
        outcomes: list[Optional[RewardOutcome]] = [None] * len(calls)
        pending = deque(range(len(calls)))
        while pending or any(s.call is not None for s in self._slots):
            now = time.monotonic()
            self._grow(calls, pending, now)
            # At most num_processes calls that are not stalled run at once: an extra process only
            # stands in for a stalled one, so a slow machine (where calls merely look stalled) is
            # never flooded with work.
            working = sum(s.call is not None and self._healthy(s, calls, now) for s in self._slots)
            for slot in list(self._slots):
                if slot.ready and slot.call is None and pending and working < self.num_processes:
                    self._dispatch(slot, pending, calls, outcomes)
                    working += 1
            self._collect(calls, outcomes, bool(pending))
        self._settle()
        return outcomes  # type: ignore[return-value]

    def _settle(self) -> None:
        """Back to ``num_processes``: close idle extras, start replacements for processes that died."""
        for slot in self._slots[self.num_processes:]:
            try:
                slot.conn.send(None)
            except (OSError, EOFError):
                pass
            self._stop(slot)
        while len(self._slots) < self.num_processes:
            self._slots.append(self._start())

    def _dispatch(self, slot: _Slot, pending: deque, calls: list[RewardCall], outcomes: list) -> None:
        i = pending.popleft()
        call = calls[i]
        try:
            slot.conn.send((call.fn, call.kwargs, call.sample_id))
        except (OSError, EOFError):  # the idle worker died: drop it, the call waits for the next one
            pending.appendleft(i)
            self._stop(slot)
            return
        except Exception as e:  # arguments that cannot be pickled: the pipe is untouched
            outcomes[i] = RewardOutcome(None, f"{where(call.fn, call.sample_id)}: arguments cannot be sent to a "
                                              f"worker process: {type(e).__name__}: {e}")
            return
        now = time.monotonic()
        slot.call, slot.call_start, slot.run_start = i, now, now
        limit = call.timeout_s or self.timeout_s
        slot.deadline = now + limit + (0.0 if call.fn in slot.loaded else self.load_timeout_s)

    def _wake_at(self, calls: list[RewardCall], can_grow: bool) -> float:
        """The next moment something must happen: a deadline, a start-up limit, or a call turning stalled."""
        now, times = time.monotonic(), []
        for s in self._slots:
            if not s.ready:
                times.append(s.started + self.load_timeout_s)
            elif s.call is not None:
                times.append(s.deadline)
                stall = s.run_start + self._stall_after(calls[s.call].fn)
                if can_grow and calls[s.call].fn in s.loaded and stall > now:  # past ones were handled
                    times.append(stall)
        return min(times, default=now)

    def _collect(self, calls: list[RewardCall], outcomes: list, can_grow: bool) -> None:
        """Wait for the next message, death, deadline or stall, and handle everything that happened."""
        live = [s for s in self._slots if s.call is not None or not s.ready]
        if not live:  # nothing running (e.g. the last call's arguments could not be sent)
            return
        handles = [x for s in live for x in (s.conn, s.process.sentinel)]
        wait(handles, timeout=max(0.0, self._wake_at(calls, can_grow) - time.monotonic()))
        now = time.monotonic()
        for slot in list(self._slots):
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
                self._stop(slot)
            elif slot.call is not None and now >= slot.deadline:
                call = calls[slot.call]
                what = (f"timeout after {call.timeout_s or self.timeout_s:g}s" if call.fn in slot.loaded else
                        f"timeout after {now - slot.call_start:.3g}s while importing the reward function")
                self._finish(slot, calls, outcomes, now, None, f"{what} (worker process killed and replaced)",
                             timed_out=True)
                self._stop(slot)
            elif not slot.ready and now >= slot.started + self.load_timeout_s:
                raise RuntimeError(f"reward worker process did not start within {self.load_timeout_s:g}s")

    def _on_message(self, slot: _Slot, msg: tuple, calls: list, outcomes: list, now: float) -> None:
        kind, payload = msg
        if kind == "ready":
            slot.ready = True
        elif kind == "loaded":  # the timeout counts from here
            slot.loaded.add(payload)
            slot.run_start = time.monotonic()
            slot.deadline = slot.run_start + (calls[slot.call].timeout_s or self.timeout_s)
        elif kind == "ok":
            fn, took = calls[slot.call].fn, now - slot.run_start
            self._typical[fn] = took if fn not in self._typical else 0.8 * self._typical[fn] + 0.2 * took
            self._finish(slot, calls, outcomes, now, payload, None)
        else:  # "error" / "timeout": the worker already named function and sample
            self._finish(slot, calls, outcomes, now, None, payload, timed_out=kind == "timeout", named=True)

    def _finish(self, slot, calls, outcomes, now, value, error, timed_out=False, named=False) -> None:
        call = calls[slot.call]
        if error is not None and not named:
            error = f"{where(call.fn, call.sample_id)}: {error}"
        outcomes[slot.call] = RewardOutcome(value, error, timed_out, now - slot.call_start)
        slot.call = None

    # ---- shutdown -----------------------------------------------------------------------------

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
