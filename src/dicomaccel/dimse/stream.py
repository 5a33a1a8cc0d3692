"""``DataSetStream``: a request's data set handed up fragment by fragment as P-DATA arrives.

PS3.8 Annex E sends a DIMSE message's data set as PDV fragments, possibly across many
P-DATA-TF PDUs. For most requests the upper layer joins them into one ``bytes`` (C-GET and
C-FIND Identifiers are small). For the Command Fields a server lists in
``stream_commands`` (C-STORE-RQ, whose data set may be gigabytes) the request is handed to
its handler as soon as its command set is complete, and the data set follows through this
object: the PDV payloads, as read-only memoryview slices of the buffers the kernel read them
into (the connection never writes a buffer twice, so they may be held without copying).

Flow control: once more than :data:`HIGH_WATER` bytes wait unread, the connection stops
reading (``transport.pause_reading``) until the handler takes them, so a fast sender and a
slow disk hold at most a few MiB per association.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable

__all__ = ["DataSetStream", "HIGH_WATER"]

# Unread bytes beyond which the connection stops reading.
HIGH_WATER = 4 << 20
# The reader is woken when this much is held (or at the end): one event-loop turn per
# 256 KiB rather than one per PDV.
WAKE_BYTES = 256 << 10


class DataSetStream:
    """The data set of one streamed request (see the module docstring).

    The protocol calls :meth:`put` and :meth:`close`; the handler calls :meth:`read` until it
    returns an empty list, or :meth:`discard`.

    Attributes
    ----------
    received : int
        Data set bytes received so far.
    complete : bool
        The last fragment arrived (PS3.8 E.2: the Message Control Header's last bit).
    """

    __slots__ = ("_fragments", "_held", "_waiter", "_error", "_discarding", "_paused",
                 "_pause", "_resume", "received", "complete")

    def __init__(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        self._fragments: deque = deque()
        self._held = 0
        self._waiter: asyncio.Future | None = None
        self._error: BaseException | None = None
        self._discarding = False
        self._paused = False
        self._pause = pause
        self._resume = resume
        self.received = 0
        self.complete = False

    @property
    def paused(self) -> bool:
        """True while the connection is not read because the handler is behind."""
        return self._paused

    # ------------------------------------------------------------------ protocol side

    def put(self, fragment: memoryview, last: bool) -> None:
        """One PDV's payload of the data set (``last``: the message's final fragment)."""
        n = len(fragment)
        self.received += n
        if not self._discarding and n:
            self._fragments.append(fragment)
            self._held += n
        if last:
            self.complete = True
        if self._held >= HIGH_WATER and not self._paused:
            self._paused = True
            self._pause()
        if last or self._held >= WAKE_BYTES or self._discarding:
            self._wake()

    def close(self, error: BaseException) -> None:
        """The association ended: a reader waiting for more gets ``error``."""
        if self._error is None:
            self._error = error
        self._wake()

    # ------------------------------------------------------------------ handler side

    async def read(self) -> list[memoryview]:
        """The fragments received since the last call (waiting for some); ``[]`` once the
        whole data set was read.

        Raises
        ------
        BaseException
            The error given to :meth:`close` (an ``AssociationClosedError``) if the
            association ended before the data set was complete.
        """
        while not self._fragments and not self.complete:
            if self._error is not None:
                raise self._error
            await self._wait()
        fragments = list(self._fragments)
        self._fragments.clear()
        self._held = 0
        self._unpause()
        return fragments

    async def discard(self) -> None:
        """Drop what is held and what still arrives; return once the data set ended.

        Raises
        ------
        BaseException
            As :meth:`read`.
        """
        self._discarding = True
        self._fragments.clear()
        self._held = 0
        self._unpause()
        while not self.complete:
            if self._error is not None:
                raise self._error
            await self._wait()

    # ------------------------------------------------------------------ internals

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _unpause(self) -> None:
        if self._paused:
            self._paused = False
            self._resume()
