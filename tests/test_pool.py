"""The worker pool: concurrent.futures' contract, and work kept on the thread idle last."""

from __future__ import annotations

import threading
import time

import pytest

from scheduler.pool import WorkerPool


def current_thread_name() -> str:
    return threading.current_thread().name


def test_runs_in_sequence_stay_on_one_thread() -> None:
    pool = WorkerPool(4)
    try:
        # Grow the pool to four threads with work that overlaps ...
        release = threading.Event()
        overlapping = [pool.submit(release.wait, 5) for _ in range(4)]
        time.sleep(0.05)
        release.set()
        for future in overlapping:
            assert future.result(timeout=5)
        time.sleep(0.05)  # all four idle again

        # ... then one run at a time: each lands on the thread that just went idle.
        names = [pool.submit(current_thread_name).result(timeout=5) for _ in range(20)]
        assert len(set(names)) == 1, names
        assert names[0].startswith("scheduler-worker-")
    finally:
        pool.shutdown()


def test_runs_up_to_max_workers_at_once_and_queues_the_rest() -> None:
    pool = WorkerPool(3)
    try:
        barrier = threading.Barrier(3, timeout=5)
        gate = threading.Event()

        def meet() -> str:
            barrier.wait()  # fails unless three run at the same time
            gate.wait(5)
            return current_thread_name()

        futures = [pool.submit(meet) for _ in range(3)]
        queued = pool.submit(current_thread_name)
        time.sleep(0.1)
        assert not queued.done()  # a fourth waits for a free thread
        gate.set()
        names = {future.result(timeout=5) for future in futures}
        assert len(names) == 3
        assert queued.result(timeout=5) in names  # no fourth thread was started
    finally:
        pool.shutdown()


def test_a_call_that_raises_fails_its_future_and_the_pool_goes_on() -> None:
    pool = WorkerPool(1)
    try:

        def fail() -> None:
            raise ValueError("broken job")

        with pytest.raises(ValueError, match="broken job"):
            pool.submit(fail).result(timeout=5)
        assert pool.submit(lambda: 42).result(timeout=5) == 42
    finally:
        pool.shutdown()


def test_shutdown_cancels_queued_work_and_refuses_more() -> None:
    pool = WorkerPool(1)
    gate = threading.Event()
    running = pool.submit(gate.wait, 5)
    queued = pool.submit(current_thread_name)
    time.sleep(0.05)
    pool.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(current_thread_name)
    gate.set()
    assert running.result(timeout=5) is True  # work already running finishes


def test_shutdown_with_wait_ends_every_thread() -> None:
    pool = WorkerPool(3)
    futures = [pool.submit(time.sleep, 0.05) for _ in range(3)]
    pool.shutdown(wait=True)
    assert all(future.done() for future in futures)
    assert pool._threads
    assert not [thread for thread in pool._threads if thread.is_alive()]


def test_max_workers_below_one_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="max_workers must be at least 1, not 0"):
        WorkerPool(0)


def test_prestart_starts_every_worker_idle_and_the_work_uses_them() -> None:
    pool = WorkerPool(5, name="pre")
    try:
        before = set(threading.enumerate())
        pool.prestart()
        pool.prestart()  # twice: still five
        started = set(threading.enumerate()) - before
        assert sorted(t.name for t in started) == [f"pre-{i}" for i in range(1, 6)]
        # Five runs at once meet on the five threads started ahead: no sixth appears.
        barrier = threading.Barrier(5, timeout=5)

        def meet() -> str:
            barrier.wait()
            return current_thread_name()

        futures = [pool.submit(meet) for _ in range(5)]
        assert {future.result(timeout=5) for future in futures} == {t.name for t in started}
        assert set(threading.enumerate()) - before == started
    finally:
        pool.shutdown()
    assert not [t for t in threading.enumerate() if t.name.startswith("pre-")]


def test_prestart_after_shutdown_starts_nothing() -> None:
    pool = WorkerPool(3, name="late")
    pool.shutdown()
    pool.prestart()
    assert not [t for t in threading.enumerate() if t.name.startswith("late-")]
