"""Worker processes sharing one listening socket, each taking its share of the connections.

With ``dicomaccel serve --workers N`` every worker waits on the same HTTP socket. Left to the
kernel and the event loop, a new connection wakes every worker, and the first to run accepts
it *and every other connection waiting*: four clients connecting together landed 3 + 1 on two
workers in four tries out of five (``ss -tnp`` on the development machine). As each worker's
Python runs on one core at a time, the worker holding three clients was then the bottleneck
while the other idled.

So each worker publishes how many connections it holds on a :class:`LoadBoard`: one slot per
worker in an anonymous shared mapping that the supervisor makes before it forks. An
:class:`Acceptor` takes one connection at a time, and only while no other worker holds
fewer; otherwise it stops watching the socket for :data:`DECLINE_PAUSE` seconds and looks
again. A less-loaded worker may be stuck in a long request, so a connection is never left
waiting longer than :data:`MAX_DEFER`: past that, whoever sees it takes it. The HTTP socket
and the DIMSE sockets have a board each: a worker holding many keep-alive HTTP connections
must still get its share of associations.

Where a limit must hold across all workers (``--max-associations``), each worker also keeps its
counts on a :class:`Ledger`, and takes one more only by :meth:`Account.claim`, which sums every
worker's count and adds to its own under one lock.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import mmap
import socket
import tempfile
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger("dicomaccel.accept")
R = TypeVar("R")

# A worker with more connections than another looks at the socket again after this long ...
DECLINE_PAUSE = 0.001
# ... and takes a connection that has waited this long whatever the board says.
MAX_DEFER = 0.05
# After accept(2) fails for want of file descriptors or memory, the next try waits this long
# (the connection stays queued in the backlog; a tight retry would spin the loop).
RESOURCE_PAUSE = 0.1
# A slot whose worker is not accepting (not yet started, stopping, or exited: the supervisor
# writes it then): never the least loaded.
ABSENT = (1 << 63) - 1


class LoadBoard:
    """Connection counts of ``workers`` processes, in memory that survives ``fork``: make it
    before forking, and give worker ``n`` its :meth:`seat`."""

    def __init__(self, workers: int) -> None:
        self._map = mmap.mmap(-1, 8 * workers)  # anonymous and MAP_SHARED: shared with children
        self._counts = memoryview(self._map).cast("q")  # aligned 8-byte stores: never torn
        for n in range(workers):
            self._counts[n] = ABSENT

    def seat(self, number: int) -> "Seat":
        """Worker ``number``'s place on the board. It stays :data:`ABSENT` until the worker
        starts accepting (:meth:`Acceptor.start`): a worker still starting up must not make
        the others defer to it."""
        return Seat(self._counts, number)

    def vacate(self, number: int) -> None:
        """Worker ``number`` has exited (the supervisor calls this): others stop deferring to it."""
        self._counts[number] = ABSENT


class Seat:
    """One worker's slot on a :class:`LoadBoard`; only that worker writes it."""

    __slots__ = ("_counts", "_number")

    def __init__(self, counts: memoryview, number: int) -> None:
        self._counts = counts
        self._number = number

    def publish(self, count: int) -> None:
        self._counts[self._number] = count

    def least_loaded(self) -> bool:
        """No other worker holds fewer connections than this one."""
        return self._counts[self._number] <= min(self._counts)


class Acceptor:
    """Accept on a listening socket shared with other workers, taking a connection only when
    :meth:`Seat.least_loaded` (or after :data:`MAX_DEFER`); each accepted socket goes to
    ``on_accept``, which must publish the new count on the seat before it returns."""

    def __init__(self, sock: socket.socket, seat: Seat, on_accept: Callable[[socket.socket], None]) -> None:
        self._sock = sock
        self._seat = seat
        self._on_accept = on_accept
        self._loop = asyncio.get_running_loop()
        self._declined_since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._watching = False
        sock.setblocking(False)

    def start(self) -> None:
        self._seat.publish(0)
        self._watch()

    def close(self) -> None:
        """Stop accepting (the socket stays open: the other workers still use it)."""
        self._seat.publish(ABSENT)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._watching:
            self._loop.remove_reader(self._sock.fileno())
            self._watching = False

    def _watch(self) -> None:
        self._timer = None
        if not self._watching:
            self._loop.add_reader(self._sock.fileno(), self._ready)
            self._watching = True

    def _pause(self, seconds: float) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._watching = False
        self._timer = self._loop.call_later(seconds, self._watch)

    def _ready(self) -> None:
        if not self._seat.least_loaded():
            now = self._loop.time()
            if self._declined_since is None:
                self._declined_since = now
            if now - self._declined_since < MAX_DEFER:
                self._pause(DECLINE_PAUSE)
                return
        self._declined_since = None
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # another worker took it, or the peer gave up while queued
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                raise
            log.warning("cannot accept a connection: %s; retrying in %.1f s", exc, RESOURCE_PAUSE)
            self._pause(RESOURCE_PAUSE)
            return
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._on_accept(conn)


def hand_over(conn: socket.socket, protocol: asyncio.BaseProtocol, ssl, handshaking: set, tasks: set,
              publish: Callable[[], None]) -> None:
    """Connect the accepted socket ``conn`` to ``protocol`` on the running loop (with ``ssl``,
    after the TLS handshake), in a task kept in ``tasks`` while it runs.

    Until the protocol's ``connection_made`` moves it to its server's connections, it is in
    ``handshaking``, which the server counts on its board (``publish``): in one set or the other,
    never both, so no other worker sees one connection twice. A hand-over that fails (a TLS
    handshake that does not complete) closes the socket and takes the protocol out again."""
    handshaking.add(protocol)
    publish()
    task = asyncio.ensure_future(_connect(conn, protocol, ssl, handshaking, publish))
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def _connect(conn: socket.socket, protocol: asyncio.BaseProtocol, ssl, handshaking: set,
                   publish: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    try:
        await loop.connect_accepted_socket(lambda: protocol, conn, ssl=ssl)
    except (OSError, asyncio.TimeoutError) as exc:  # e.g. a failed TLS handshake
        log.debug("connection dropped while being handed over: %s", exc)
        conn.close()
    finally:
        if protocol in handshaking:  # never connected (failed, or cancelled)
            handshaking.discard(protocol)
            publish()


class Ledger:
    """What each of ``workers`` processes holds of ``kinds`` things limited across all of them,
    in memory that survives ``fork``: make it before forking, and give worker ``n`` its
    :meth:`account`.

    A claim reads every worker's count and then raises its own; two workers doing that at the
    same moment could both see room for one and both take it. So a claim holds an exclusive
    ``lockf`` lock on a file the supervisor opened: POSIX record locks belong to a process and
    are not inherited over ``fork``, so they exclude the workers from each other (within a
    worker only its event loop claims), and the kernel drops the lock of a process that dies,
    so a worker killed inside a claim cannot stop the others (a semaphore would stay taken);
    one stopped inside a claim (SIGSTOP) holds them up until it continues, but a claim holds
    the lock only to add a few integers.
    A release lowers only the worker's own count, without the lock: a claim that reads the
    count just before it drops refuses one too many, never admits one too many.
    """

    def __init__(self, workers: int, kinds: int) -> None:
        self._kinds = kinds
        self._map = mmap.mmap(-1, 8 * workers * kinds)  # anonymous and MAP_SHARED, like LoadBoard
        self._counts = memoryview(self._map).cast("q")  # aligned 8-byte stores: never torn
        # One process alone needs no lock: its claims run one at a time on its event loop.
        self._lock = tempfile.TemporaryFile() if workers > 1 else None

    def account(self, number: int) -> "Account":
        """Worker ``number``'s counts."""
        return Account(self._counts, self._kinds, number, self._lock)

    def vacate(self, number: int) -> None:
        """Worker ``number`` has exited (the supervisor calls this): the kernel closed its
        connections, so nothing it counted is held any more."""
        for kind in range(self._kinds):
            self._counts[number * self._kinds + kind] = 0


class Account:
    """One worker's counts on a :class:`Ledger`; only that worker writes them."""

    __slots__ = ("_counts", "_kinds", "_base", "_lock")

    def __init__(self, counts: memoryview, kinds: int, number: int, lock) -> None:
        self._counts = counts
        self._kinds = kinds
        self._base = number * kinds
        self._lock = lock

    def claim(self, kind: int, refusal: Callable[[int], R]) -> R:
        """Take one more of ``kind`` unless ``refusal``, given how many all workers hold
        together, returns a reason not to (a true value, returned)."""
        if self._lock is not None:
            fcntl.lockf(self._lock, fcntl.LOCK_EX)
        try:
            reason = refusal(sum(self._counts[kind::self._kinds]))
            if not reason:
                self._counts[self._base + kind] += 1
            return reason
        finally:
            if self._lock is not None:
                fcntl.lockf(self._lock, fcntl.LOCK_UN)

    def release(self, kind: int) -> None:
        """Give back one of ``kind`` taken by :meth:`claim`."""
        self._counts[self._base + kind] -= 1
