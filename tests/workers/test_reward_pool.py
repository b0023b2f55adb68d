"""RewardPool: user rewards in worker processes, per-call timeouts, crashes, clean shutdown."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import textwrap
import time

import pytest

from rlreason.workers.reward_pool import RewardCall, RewardOutcome, RewardPool

USER_FILE = """
import asyncio, os, pathlib, time

def length(*, response, **_):
    return len(response)

def stamp(**_):
    return {"score": 1.0, "t": time.time()}

def hang(*, dir, sample, **_):
    pathlib.Path(dir, f"hang_{sample}").write_text(repr(time.time()))
    time.sleep(60)

def crash(**_):
    os._exit(1)

def broken(*, response, **_):
    return 1 / 0

def wrong_type(**_):
    return "seventeen"

def unpicklable_metric(**_):
    return {"score": 1.0, "callback": lambda: 0}

def exits(**_):
    raise SystemExit(3)

def slow_timeout(**_):
    raise TimeoutError("judge did not answer")

def sometimes_hangs(*, hang=False, **_):
    if hang:
        time.sleep(60)
    return 1.0

def batched(*, response, **_):
    return [1.0, {"score": 3.0, "n": len(response)}, None]

def hog(*, mb, **_):
    block = bytearray(mb * 2**20)  # zero-filled: really allocated
    return float(len(block) > 0)

async def async_reward(*, response, **_):
    await asyncio.sleep(0.01)
    return {"score": float(len(response)), "async": True}
"""

USER_MODULE = """
def double(*, response, **_):
    return 2.0 * len(response)
"""


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("user_rewards")
    (d / "user_rewards.py").write_text(textwrap.dedent(USER_FILE))
    (d / "rlreason_test_user_mod.py").write_text(textwrap.dedent(USER_MODULE))
    return d


@pytest.fixture(scope="module")
def pool(user_dir):
    # Spawned workers inherit the parent's sys.path (multiprocessing sends it), so putting the
    # directory on sys.path before the pool starts makes `rlreason_test_user_mod` importable there.
    with pytest.MonkeyPatch.context() as mp_:
        mp_.syspath_prepend(str(user_dir))
        with RewardPool(num_processes=2, timeout_s=5.0) as p:
            yield p


def fn(user_dir, name):
    return f"{user_dir / 'user_rewards.py'}:{name}"


def test_order_preserved_and_builtin_math_verify(pool, user_dir):
    calls = [RewardCall(fn(user_dir, "length"), {"response": "x" * i}, sample_id=i) for i in range(20)]
    calls.insert(7, RewardCall("math_verify", {"response": r"\boxed{\frac{1}{2}}", "ground_truth": "0.5"}, 100))
    outcomes = pool.run(calls)
    assert len(outcomes) == 21 and all(isinstance(o, RewardOutcome) and o.error is None for o in outcomes)
    assert outcomes[7].value == {"score": 1.0, "correct": 1.0, "parsed": 1.0}
    del outcomes[7]
    assert [o.value for o in outcomes] == [float(i) for i in range(20)]
    assert pool.run([]) == []


def test_module_function_and_async(pool):
    outcomes = pool.run(
        [
            RewardCall("rlreason_test_user_mod:double", {"response": "abc"}, 0),
            RewardCall("math_verify", {"response": "no box", "ground_truth": "1"}, 1),
        ]
    )
    assert outcomes[0].value == 6.0 and outcomes[0].error is None
    assert outcomes[1].value["correct"] == 0.0


def test_async_reward(pool, user_dir):
    outcomes = pool.run([RewardCall(fn(user_dir, "async_reward"), {"response": "ab" * i}, i) for i in range(4)])
    assert [o.value for o in outcomes] == [{"score": 2.0 * i, "async": True} for i in range(4)]


def test_errors_name_function_and_sample(pool, user_dir):
    calls = [
        RewardCall(fn(user_dir, "broken"), {"response": "x"}, 7),
        RewardCall(fn(user_dir, "wrong_type"), {}, 8),
        RewardCall(fn(user_dir, "no_such_fn"), {}, 9),
        RewardCall("no_such_reward", {}, 10),
        RewardCall(fn(user_dir, "length"), {"response": "xy", "bad": lambda: 0}, 11),  # not picklable
        RewardCall(fn(user_dir, "slow_timeout"), {}, 12),
        RewardCall(fn(user_dir, "unpicklable_metric"), {}, 13),
        RewardCall(fn(user_dir, "exits"), {}, 14),
        RewardCall(fn(user_dir, "length"), {"response": "abc"}, 15),
    ]
    broken, wrong, missing, unknown, unpicklable, timeout, bad_result, exits, fine = pool.run(calls)
    assert broken.value is None and not broken.timed_out
    assert broken.error.startswith(f"{calls[0].fn} on sample 7: ZeroDivisionError")
    assert "Traceback" in broken.error and "return 1 / 0" in broken.error
    assert "on sample 8: TypeError" in wrong.error and "expected a float" in wrong.error
    assert "no_such_fn" in missing.error and "sample 9" in missing.error
    assert "unknown reward 'no_such_reward'" in unknown.error and "sample 10" in unknown.error
    assert "sample 11" in unpicklable.error and "cannot be sent" in unpicklable.error
    # a reward raising TimeoutError (e.g. math_verify's RewardTimeout) counts as a timeout
    assert timeout.timed_out and "sample 12: TimeoutError: judge did not answer" in timeout.error
    assert "sample 13: result could not be sent back" in bad_result.error
    assert "sample 14: SystemExit: 3" in exits.error  # the worker survives sys.exit() in a reward
    assert fine.value == 3.0 and fine.error is None


def test_hanging_calls_cost_one_timeout_and_do_not_block_others(user_dir, tmp_path):
    with RewardPool(num_processes=2, timeout_s=1.0) as pool:
        pool.run([RewardCall(fn(user_dir, "length"), {"response": ""}, i) for i in range(2)])  # both started
        hang = lambda i: RewardCall(fn(user_dir, "hang"), {"dir": str(tmp_path), "sample": i}, i)  # noqa: E731
        stamp = lambda i: RewardCall(fn(user_dir, "stamp"), {}, i)  # noqa: E731
        # Worker A takes hang 0; worker B scores stamps 1-10 meanwhile, then takes hang 11, so both hangs
        # run at once. Their processes are killed, replaced, and the new ones score stamps 12-15.
        calls = [hang(0)] + [stamp(i) for i in range(1, 11)] + [hang(11)] + [stamp(i) for i in range(12, 16)]
        t0 = time.time()
        outcomes = pool.run(calls)
        total = time.time() - t0
        hung = [outcomes[0], outcomes[11]]
        stamps = [o for i, o in enumerate(outcomes) if i not in (0, 11)]
        for i, o in zip((0, 11), hung):
            assert o.timed_out and o.value is None
            assert f"hang on sample {i}: timeout after 1s" in o.error
            assert 1.0 <= o.elapsed_s < 2.5
        assert all(o.error is None and o.value["score"] == 1.0 for o in stamps)
        started = [float((tmp_path / f"hang_{i}").read_text()) for i in (0, 11)]
        # The stamps before hang 11 were scored while hang 0 was still running (not blocked by it) ...
        assert all(o.value["t"] < started[0] + 1.0 for o in stamps[:10])
        # ... and the two hangs overlapped, so the batch paid about one timeout, not two, plus the
        # start of the replacement processes (~1 s); 60-second hangs run in turn would take minutes.
        assert started[1] < started[0] + 1.0
        assert total < 5.0, f"batch with two hanging calls took {total:.1f}s"
        # the replacement processes work
        assert pool.run([RewardCall(fn(user_dir, "length"), {"response": "ok"}, 99)])[0].value == 2.0


def test_crashing_reward_is_reported_and_pool_recovers(user_dir):
    with RewardPool(num_processes=2, timeout_s=5.0) as pool:
        calls = [RewardCall(fn(user_dir, "length"), {"response": "a"}, 0),
                 RewardCall(fn(user_dir, "crash"), {}, 1)]
        calls += [RewardCall(fn(user_dir, "length"), {"response": "a" * i}, i) for i in range(2, 8)]
        outcomes = pool.run(calls)
        crashed = outcomes[1]
        assert crashed.value is None and not crashed.timed_out
        assert crashed.error == f"{calls[1].fn} on sample 1: worker process died (exit code 1)"
        assert [o.value for i, o in enumerate(outcomes) if i != 1] == [1.0] + [float(i) for i in range(2, 8)]
        later = pool.run([RewardCall(fn(user_dir, "length"), {"response": "abc"}, i) for i in range(4)])
        assert all(o.value == 3.0 for o in later)


class _Interrupt(Exception):
    pass


def test_run_interrupted_midway_leaves_pool_usable(user_dir, tmp_path):
    def interrupt(signum, frame):
        raise _Interrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    with RewardPool(num_processes=1, timeout_s=30.0) as pool:
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.3)  # like Ctrl-C while a call hangs
            with pytest.raises(_Interrupt):
                pool.run([RewardCall(fn(user_dir, "hang"), {"dir": str(tmp_path), "sample": 0}, 0)])
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        # the stale hung call must neither block the next run nor land in its outcomes
        t0 = time.time()
        outcomes = pool.run([RewardCall(fn(user_dir, "length"), {"response": "abcd"}, 1)])
        assert outcomes[0].value == 4.0 and time.time() - t0 < 10


def test_close_leaves_no_processes(user_dir):
    before = {p.pid for p in mp.active_children()}
    pool = RewardPool(num_processes=2, timeout_s=5.0)
    pool.run([RewardCall(fn(user_dir, "crash"), {}, 0), RewardCall(fn(user_dir, "length"), {"response": ""}, 1)])
    pids = {p.pid for p in mp.active_children()} - before
    assert len(pids) == 2  # one original worker plus the crashed one's replacement
    pool.close()
    pool.close()  # idempotent
    assert not ({p.pid for p in mp.active_children()} & pids)
    for pid in pids:  # reaped, not zombies
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(RuntimeError, match="closed"):
        pool.run([RewardCall("math_verify", {}, 0)])


def test_many_hangs_overlap_so_a_batch_loses_about_one_timeout(user_dir, tmp_path):
    """8 hanging calls among 80 on 2 processes: extra processes take over, so the batch pays ~1 timeout, not 4."""
    with RewardPool(num_processes=2, timeout_s=2.0, extra_processes=8) as pool:
        slow = fn(user_dir, "sometimes_hangs")
        pool.run([RewardCall(slow, {}, i) for i in range(4)])  # loaded, and known to be fast
        calls = [RewardCall(slow, {"hang": i % 10 == 3}, i) for i in range(80)]
        t0 = time.time()
        outcomes = pool.run(calls)
        total = time.time() - t0
        hung = [o for i, o in enumerate(outcomes) if i % 10 == 3]
        assert all(o.timed_out for o in hung) and all(o.value == 1.0 for i, o in enumerate(outcomes) if i % 10 != 3)
        assert total < 2.0 + 3.0, f"{total:.1f}s: hangs queued instead of overlapping (a fixed pool: 8 s)"
        assert len(pool._slots) == 2  # extras closed when the run ended
        assert pool.run([RewardCall(fn(user_dir, "length"), {"response": "ok"}, 0)])[0].value == 2.0


def test_per_call_timeout_and_batched_values(pool, user_dir, tmp_path):
    calls = [RewardCall(fn(user_dir, "hang"), {"dir": str(tmp_path), "sample": 0}, [1, 2], timeout_s=0.5),
             RewardCall(fn(user_dir, "batched"), {"response": ["a", "bcd"]}, [3, 4])]
    hung, batched = pool.run(calls)
    assert hung.timed_out and "hang on samples [1, 2]: timeout after 0.5s" in hung.error
    assert batched.value == [1.0, {"score": 3.0, "n": 2.0}, None] and batched.error is None


def test_a_reward_over_the_memory_limit_fails_like_a_bad_call_and_the_pool_goes_on(user_dir):
    with RewardPool(num_processes=1, timeout_s=20.0, max_memory_mb=512) as pool:
        outcomes = pool.run([RewardCall(fn(user_dir, "hog"), {"mb": 2048}, 0),
                             RewardCall(fn(user_dir, "hog"), {"mb": 16}, 1)])
        assert outcomes[0].value is None and not outcomes[0].timed_out
        assert "on sample 0: out of memory: over reward.max_memory_mb=512 MB" in outcomes[0].error
        assert outcomes[1].value == 1.0 and outcomes[1].error is None
    with RewardPool(num_processes=1, timeout_s=20.0) as unlimited:  # 0: no limit
        assert unlimited.run([RewardCall(fn(user_dir, "hog"), {"mb": 600}, 0)])[0].value == 1.0
