"""The archive's writer threads: where received bytes are written to temp files and instances
are scanned before their group commit.

A fixed set of threads reading one queue. :class:`concurrent.futures.ThreadPoolExecutor`
did the same job, but each ``submit`` made a Future (with its own Condition), a work item and
an idle-semaphore round, ~10 us of the event loop's time per instance, plus the matching work
on the writer. The commit of every instance goes through :meth:`WriterPool.call`, which makes
none of them; only the spill of a large instance's held bytes, which the event loop awaits,
uses a Future (:meth:`WriterPool.submit`).
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future

__all__ = ["WriterPool"]

log = logging.getLogger("dicomaccel.archive")

_STOP = object()


class WriterPool:
    """``threads`` daemon threads named ``<name>_<n>``, started at once, running what is
    queued in order of arrival (one queue: whichever thread is free takes the next job)."""

    def __init__(self, threads: int, name: str) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._threads = [threading.Thread(target=self._run, name=f"{name}_{n}", daemon=True)
                         for n in range(threads)]
        for thread in self._threads:
            thread.start()

    def call(self, fn, *args) -> None:
        """Run ``fn(*args)`` on a writer thread; nothing is returned: ``fn`` reports its own
        outcome (an exception it lets out is logged).

        Raises
        ------
        RuntimeError
            The pool was shut down.
        """
        with self._lock:  # nothing queued behind the threads' stop marks
            if self._closed:
                raise RuntimeError("the archive's writer threads were shut down")
            self._jobs.put((fn, args, None))

    def submit(self, fn, *args) -> Future:
        """Run ``fn(*args)`` on a writer thread; a Future of its result or exception."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the archive's writer threads were shut down")
            self._jobs.put((fn, args, future))
        return future

    def shutdown(self, wait: bool = True) -> None:
        """Run what is queued, then stop the threads (idempotent); ``wait``: until they have."""
        with self._lock:
            if not self._closed:
                self._closed = True
                for _ in self._threads:
                    self._jobs.put(_STOP)
        if wait:
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join()

    def _run(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is _STOP:
                return
            fn, args, future = job
            del job
            if future is None:
                try:
                    fn(*args)
                except BaseException:  # a writer thread must not die of one job
                    log.exception("a writer thread's job failed")
            elif future.set_running_or_notify_cancel():
                try:
                    result = fn(*args)
                except BaseException as exc:
                    future.set_exception(exc)
                    del exc
                else:
                    future.set_result(result)
            del fn, args, future
