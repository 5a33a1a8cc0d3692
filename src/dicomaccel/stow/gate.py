"""At most N stores at once; later requests wait in a bounded FIFO queue.

This is the behaviour of the seed conformance statement (PS3.2 Annex J.4): requests beyond the
limit are accepted on their connection and wait until an earlier one completes. A full queue
or a wait past the limit is answered 503 with Retry-After by the caller.
"""

from __future__ import annotations

import asyncio
from collections import deque

from ..config import DEFAULTS


class GateBusy(Exception):
    """The queue is full or the wait limit passed; ``retry_after`` is a hint in seconds."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class StoreGate:
    def __init__(self, limit: int, *, queue_limit: int = DEFAULTS.store_queue_limit,
                 wait_timeout: float = DEFAULTS.store_queue_wait) -> None:
        if limit < 1:
            raise ValueError("the store limit must be at least 1")
        self.limit = limit
        self.queue_limit = queue_limit
        self.wait_timeout = wait_timeout
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a free slot now if there is one and nobody waits (True), else nothing."""
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return True
        return False

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        if len(self._waiters) >= self.queue_limit:
            raise GateBusy(f"{self.queue_limit} requests are already waiting", retry_after=5)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.wait_timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed over just as we gave up: pass it on.
                self.release()
            else:
                waiter.cancel()
                self._waiters.remove(waiter)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise GateBusy(f"waited {self.wait_timeout:g} s for a free store slot", retry_after=5) from None

    def release(self) -> None:
        # Hand the slot straight to the oldest waiter so arrivals cannot overtake the queue.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.active -= 1
