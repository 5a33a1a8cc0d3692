"""The archive's writer threads (dicomaccel.archive.writers): jobs run, results and failures
reach their Futures, a failing job does not kill its thread, shutdown runs what was queued."""

from __future__ import annotations

import logging
import threading

import pytest

from dicomaccel.archive.writers import WriterPool


def test_call_runs_every_job_on_the_pool_threads():
    pool = WriterPool(3, "t-write")
    seen, lock, done = [], threading.Lock(), threading.Semaphore(0)

    def job(n):
        with lock:
            seen.append((n, threading.current_thread().name))
        done.release()

    for n in range(50):
        pool.call(job, n)
    for _ in range(50):
        assert done.acquire(timeout=10)
    pool.shutdown()
    assert sorted(n for n, _ in seen) == list(range(50))
    assert {name for _, name in seen} <= {"t-write_0", "t-write_1", "t-write_2"}


def test_submit_gives_the_result_or_the_exception():
    pool = WriterPool(2, "t-write")
    assert pool.submit(lambda a, b: a + b, 2, 3).result(10) == 5
    failing = pool.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(10)
    pool.shutdown()


def test_a_failing_call_is_logged_and_the_thread_goes_on(caplog):
    pool = WriterPool(1, "t-write")
    with caplog.at_level(logging.ERROR, logger="dicomaccel.archive"):
        pool.call(lambda: 1 / 0)
        assert pool.submit(lambda: "still here").result(10) == "still here"
    pool.shutdown()
    assert any("writer thread's job failed" in r.getMessage() and r.exc_info for r in caplog.records)


def test_shutdown_runs_what_was_queued_then_refuses_more():
    pool = WriterPool(1, "t-write")
    gate, ran = threading.Event(), []
    pool.call(gate.wait, 10)  # holds the one thread while more is queued
    for n in range(5):
        pool.call(ran.append, n)
    stopper = threading.Thread(target=pool.shutdown)
    stopper.start()
    gate.set()
    stopper.join(10)
    assert not stopper.is_alive() and ran == [0, 1, 2, 3, 4]
    assert not any(t.name.startswith("t-write") for t in threading.enumerate())
    with pytest.raises(RuntimeError, match="shut down"):
        pool.call(ran.append, 5)
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(ran.append, 5)
    pool.shutdown()  # again: nothing happens


def test_a_job_may_shut_its_own_pool_down():
    pool = WriterPool(2, "t-write")
    pool.submit(pool.shutdown).result(10)
    pool.shutdown()
    assert not any(t.name.startswith("t-write") for t in threading.enumerate())
