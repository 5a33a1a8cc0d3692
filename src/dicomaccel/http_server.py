"""A lean HTTP/1.1 server (RFC 9112) for one ASGI application: where STOW-RS bytes enter.

``dicomaccel serve`` runs the STOW-RS ASGI app on this instead of a general-purpose ASGI
server. It does less, so each request costs less of the one event-loop thread (the GIL), and
it bounds what a hostile or broken client can hold:

- a request's header section must arrive within ``header_timeout`` seconds of its first byte
  (a trickle of header lines gets 408 and the connection closed);
- a header section over ``max_header_bytes`` gets 431; a keep-alive connection idle for
  ``keepalive_timeout`` seconds is closed;
- at most ``max_connections`` connections are open; one more gets 503 and is closed.

A request body of known length (``Content-Length``, RFC 9112 §6.2) is read past the parser
(httptools, llhttp, whose callbacks copy every body chunk) once its header section is read:
the connection reads it into buffers of its own (a ``BufferedProtocol``: the event loop's
transport would otherwise copy each read into a new ``bytes``; with the parser's copy, that
was 16% of the event loop's samples in a multi-frame STOW-RS, all of it ``memmove``), not
zeroed first, never more than the body's remaining length, and a new parser reads from the
next request on. Each read reaches the application as one ASGI ``http.request`` message: its
``body`` is a read-only ``memoryview`` of that buffer if the server was made with
``body_views=True`` (``dicomaccel serve``'s applications take any bytes-like body; the
buffer is never written again, and what no read wrote of it, the tail of a body cut short,
is never handed on: an application must not reach past its views through ``.obj``), else
``bytes``, as ASGI says. Header sections, and chunked bodies (RFC 9112 §7.1), go through the
parser: they are read into a buffer shared by the server's connections (:data:`HEAD_READ`
bytes at a time for a header section, :data:`PARSED_READ` for a chunked body) and copied
out. Reading from the socket pauses while more than :data:`HIGH_WATER` bytes wait for the
application (back-pressure to the sender), and a streamed response waits while more than
:data:`WRITE_HIGH_WATER` bytes wait for the client. ``Expect: 100-continue`` is answered
when the application first asks for the body. A response the application ends before reading
the whole body closes the connection.

Response bodies may also be files: the scope offers the ASGI *Zero Copy Send* extension
(``scope["extensions"]["http.response.zerocopysend"]``; asgi.readthedocs.io, Extensions), and
a ``{"type": "http.response.zerocopysend", "file": f, "offset": o, "count": n, "more_body":
b}`` message sends ``n`` bytes of ``f`` from ``o`` (absent: from its position, to its end).
On plain TCP the kernel copies them from the page cache to the socket (``os.sendfile``), no
byte passing through Python; what the socket cannot take at once is handed to the transport
in reads of at most :data:`SENDFILE_STEP` bytes, and sending resumes once the transport has
written them, so a slow reader holds no more than that. Under TLS (the bytes must be
encrypted here) and where ``sendfile`` fails, the file is read in :data:`FILE_READ` steps
under the usual write back-pressure. ``send`` returns once the bytes are with the kernel or
the transport: the application may close the file then.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus

import httptools

from ._compat import WRITELINES_SAFE
from .accept import Acceptor, Seat, hand_over
from .config import DEFAULTS
from .multipart import body_buffer

__all__ = ["HTTPLimits", "HTTPServer", "ClientDisconnected"]

log = logging.getLogger("dicomaccel.http")

HIGH_WATER = 4 << 20  # body bytes buffered for the application before reading pauses
WRITE_HIGH_WATER = 4 << 20  # response bytes the transport holds before a streaming send waits
LOW_WATER = 1 << 20  # ... and resumes
# Zero-copy file bodies: what the socket does not take at once goes to the transport in a
# read of this size, which also has it report when the socket is writable again ...
SENDFILE_STEP = 64 << 10
# ... and a file body that cannot be sent by sendfile (TLS) is read in steps of this size.
FILE_READ = 1 << 20
_SENDFILE = hasattr(os, "sendfile")
# A read while a header section is expected takes at most this many bytes, so that it holds
# little of the body that may follow: that body is read past the parser, without a copy ...
HEAD_READ = 16 << 10
# ... into buffers of the connection's own: the first of BODY_FIRST_READ bytes, the next ones
# of BODY_READ once a read has filled a buffer (the client sends faster than we read), never
# more than the body's remaining length. A view handed on keeps its whole buffer: a client
# that sends a byte at a time pins BODY_FIRST_READ, not BODY_READ (100 such uploads: ~6.5 MiB
# instead of ~68, measured with buffers zeroed, so resident). Doubling from 64 KiB instead
# cost 0.1-0.2 ms more CPU per CT request (more, smaller reads). A chunked body goes through
# the parser in reads of at most PARSED_READ bytes.
BODY_FIRST_READ = 64 << 10
BODY_READ = 1 << 20
PARSED_READ = 256 << 10
# Bytes received while the header section is incomplete, body bytes in the same reads
# included: bounds what one endless header line can make the parser hold.
MAX_PENDING_HEAD = 1 << 20
# Closing on a request body not read to its end (an early refusal): keep reading and
# dropping it this long, or this much, after the response, so that the client, still
# sending, reads the response instead of a connection reset (RFC 9112 §9.6).
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 << 20
# Seconds a connection's timer may fire before its deadline and still count as on time.
TIMER_SLACK = 0.005


@dataclass(frozen=True)
class HTTPLimits:
    """The bounds on every connection (defaults: :data:`dicomaccel.config.DEFAULTS`)."""

    header_timeout: float = DEFAULTS.header_timeout
    max_header_bytes: int = DEFAULTS.max_header_bytes
    keepalive_timeout: float = DEFAULTS.keepalive_timeout
    max_connections: int = DEFAULTS.max_connections


_PHRASES = {status.value: status.phrase for status in HTTPStatus}


def _phrase(status: int) -> str:
    return _PHRASES.get(status, "")


def _framing(headers: list[tuple[bytes, bytes]]) -> tuple[bool, int, bool]:
    """What a request's header section says of its body, in one pass: ``(framed, length,
    expect_continue)``. ``framed``: Content-Length or Transfer-Encoding is present; ``length``
    the body length (RFC 9112 §6.3): its one Content-Length, else 0 (no body, or a chunked one:
    the parser reads that); ``expect_continue``: ``Expect: 100-continue``."""
    lengths, chunked, expect = [], False, False
    for name, value in headers:
        if name == b"content-length":
            lengths.append(value)
        elif name == b"transfer-encoding":
            chunked = True
        elif name == b"expect" and value.lower() == b"100-continue":
            expect = True
    framed = chunked or bool(lengths)
    if len(lengths) != 1 or chunked:
        return framed, 0, expect
    try:
        return framed, max(0, int(lengths[0])), expect
    except ValueError:
        return framed, 0, expect


def _simple_response(status: int, text: str) -> bytes:
    body = (text + "\n").encode()
    return (f"HTTP/1.1 {status} {_phrase(status)}\r\ncontent-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


class _Request:
    """One request's body on its way to the application."""

    __slots__ = ("chunks", "buffered", "received", "length", "complete", "event", "disconnected",
                 "expect_continue")

    def __init__(self, expect_continue: bool, length: int) -> None:
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.received = 0  # body bytes so far
        self.length = length  # the Content-Length; 0 when none (no body, or chunked)
        self.complete = False
        self.disconnected = False
        self.event = asyncio.Event()
        self.expect_continue = expect_continue


class _Connection(asyncio.BufferedProtocol):
    def __init__(self, server: "HTTPServer") -> None:
        self.server = server
        self.limits = server.limits
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = None  # the client's address, the scope's "client"
        self.parser = httptools.HttpRequestParser(self)
        self.timer: asyncio.TimerHandle | None = None
        self.deadline = 0.0  # when ``due`` is to be called (see _arm)
        self.due = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.header_bytes = 0
        self.pending_head = 0
        self.in_head = False
        self.request: _Request | None = None
        self.body_left = 0  # bytes of a Content-Length body still to come, read past the parser
        self.body_buffer: bytearray | None = None  # where they are read (never written twice)
        self.body_pos = 0  # bytes of body_buffer read so far
        self.body_next = BODY_FIRST_READ  # the size of the next body buffer
        self.into_body = False  # the last get_buffer() gave part of body_buffer
        self.task: asyncio.Task | None = None
        self.paused = False
        self.closed = False
        self.lingering = 0  # > 0: closing, bytes still accepted and dropped
        self.drained: asyncio.Future | None = None  # set while the peer reads slower than we write

    # --- transport events ---------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.server.opening.discard(self)  # now counted as a connection, or gone
        if len(self.server.connections) >= self.limits.max_connections:
            transport.write(_simple_response(503, f"Too many connections (at most {self.limits.max_connections})"))
            transport.close()
            self.closed = True
            return
        self.server.connections.add(self)
        self.server.publish()
        self._arm(self.limits.keepalive_timeout, self._idle)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.body_left and not self.lingering and not self.closed:
            buf = self.body_buffer
            if buf is None:
                # Not zeroed: only the bytes a read wrote are ever handed on (buffer_updated).
                buf = self.body_buffer = body_buffer(min(self.body_left, self.body_next))
                self.body_pos = 0
            self.into_body = True
            return memoryview(buf)[self.body_pos:self.body_pos + self.body_left]
        self.into_body = False
        request = self.request
        if request is not None and not self.in_head and not request.complete:
            return self.server.parsed_read  # a chunked body
        return self.server.parsed_read[:HEAD_READ]

    def buffer_updated(self, nbytes: int) -> None:
        if self.into_body:
            start = self.body_pos
            self.body_pos += nbytes
            data = memoryview(self.body_buffer)[start:self.body_pos].toreadonly()
            if self.body_pos == len(self.body_buffer):
                self.body_buffer = None
                self.body_next = BODY_READ
            if not self.server.body_views:
                data = data.tobytes()
        else:
            data = self.server.parsed_read[:nbytes].tobytes()
        self._received(data)

    def _received(self, data) -> None:
        if self.lingering:
            self.lingering -= min(len(data), self.lingering)
            if not self.lingering:
                self._close()
            return
        if self.closed:
            return
        if self.body_left:  # get_buffer() read no more than the rest of the body
            self.body_left -= len(data)
            self.on_body(data)
            if not self.body_left:
                # The parser never saw this body: a new one reads from the next request on.
                self.parser = httptools.HttpRequestParser(self)
                self.on_message_complete()
            return
        if self.request is None or self.in_head:
            self.pending_head += len(data)
            if self.pending_head > MAX_PENDING_HEAD + self.limits.max_header_bytes:
                self._refuse(431, "Request header section too large")
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "Protocol upgrade is not supported")
            return
        except httptools.HttpParserError as exc:
            self._refuse(400, f"Malformed HTTP request: {exc}")
            return
        request = self.request
        if request is not None and not request.complete and not self.in_head and not self.closed:
            # The header section is read and a body of known length is still to come: its
            # bytes go past the parser from the next read on.
            self.body_left = max(0, request.length - request.received)
            self.body_next = BODY_FIRST_READ

    def connection_lost(self, exc) -> None:
        self.resume_writing()  # a sender waiting to write wakes and sees the connection gone
        self.closed = True
        self.server.forget(self)
        self._stop_timer()
        if self.request is not None and not self.request.complete:
            self.request.disconnected = True
            self.request.event.set()

    def pause_writing(self) -> None:
        """The transport holds more than its high-water mark unsent: ``send`` now waits."""
        if self.drained is None:
            self.drained = self.loop.create_future()

    def resume_writing(self) -> None:
        waiter, self.drained = self.drained, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- parser callbacks (httptools) ---------------------------------------------------
    def on_message_begin(self) -> None:
        self.url, self.headers, self.header_bytes, self.in_head = b"", [], 0, True
        self._arm(self.limits.header_timeout, self._header_timeout)

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))
        self._count(len(name) + len(value) + 4)

    def on_headers_complete(self) -> None:
        if self.closed:
            return
        self.in_head = False
        self.pending_head = 0
        self._disarm()
        method = self.parser.get_method()
        framed, length, expect = _framing(self.headers)
        if method in (b"POST", b"PUT") and not framed:
            # RFC 9112 §6.3: a request without Content-Length or chunked coding has no body;
            # what such a client sends after its headers would be read as the next request.
            self._refuse(411, "Length Required: send Content-Length or Transfer-Encoding: chunked")
        parsed = httptools.parse_url(self.url)
        self.request = _Request(expect, length)
        if self.peer is None:  # once per connection: the address does not change
            self.peer = self.transport.get_extra_info("peername")
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": self.parser.get_http_version(), "method": method.decode(),
            "scheme": self.server.scheme, "path": parsed.path.decode("utf-8", "replace"), "raw_path": parsed.path,
            "query_string": parsed.query or b"", "root_path": "", "headers": self.headers,
            "server": self.server.address, "client": self.peer,
            "extensions": {"http.response.zerocopysend": {}},
        }
        self.task = self.loop.create_task(self._run(scope, self.request, self.parser.should_keep_alive()))
        self.server.tasks.add(self.task)
        self.task.add_done_callback(self.server.tasks.discard)

    def on_body(self, body: bytes) -> None:
        request = self.request
        request.received += len(body)
        request.chunks.append(body)
        request.buffered += len(body)
        request.event.set()
        if request.buffered > HIGH_WATER and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        self.request.complete = True
        self.request.event.set()
        # One request at a time: a pipelined next request waits in the socket.
        if not self.paused:
            self.paused = True
            self.transport.pause_reading()

    # --- the application ------------------------------------------------------------------
    async def _run(self, scope: dict, request: _Request, keep_alive: bool) -> None:
        started = finished = False
        chunked = False
        head: bytes | None = None  # the response head, not yet written (see send())

        async def receive() -> dict:
            if request.expect_continue:
                request.expect_continue = False
                if not request.chunks and not request.complete:
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            while not request.chunks and not request.complete and not request.disconnected:
                request.event.clear()
                await request.event.wait()
            if request.disconnected:
                return {"type": "http.disconnect"}
            body = request.chunks.popleft() if request.chunks else b""
            request.buffered -= len(body)
            if self.paused and not request.complete and request.buffered < LOW_WATER:
                self.paused = False
                self.transport.resume_reading()
            return {"type": "http.request", "body": body,
                    "more_body": bool(request.chunks) or not request.complete}

        async def send(message: dict) -> None:
            nonlocal started, finished, chunked, keep_alive, head
            if finished:
                return
            if self.closed:
                # Stops an application streaming a response nobody reads any more.
                raise ClientDisconnected("the client closed the connection")
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                lines = [f"HTTP/1.1 {status} {_phrase(status)}".encode()]
                names = set()
                for name, value in message.get("headers", ()):
                    names.add(name.lower())
                    lines.append(name + b": " + value)
                if b"content-length" not in names:
                    chunked = True
                    lines.append(b"transfer-encoding: chunked")
                if not request.complete:
                    keep_alive = False  # the rest of the body would be read as a request
                if not keep_alive:
                    lines.append(b"connection: close")
                # Held until the first body bytes: head and body leave in one write, one TCP
                # segment for a small response (QIDO-RS on an empty archive, 5 alternated
                # runs: 2246 -> 2312 requests/s, 0.316 -> 0.307 ms of server CPU each).
                head = b"\r\n".join(lines) + b"\r\n\r\n"
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                more = message.get("more_body", False)
                parts = [head] if head else []
                head = None
                if chunked:
                    if body:
                        parts += (b"%x\r\n" % len(body), body, b"\r\n")
                    if not more:
                        parts.append(b"0\r\n\r\n")
                elif body:
                    parts.append(body)
                if len(parts) == 1:
                    self.transport.write(parts[0])
                elif parts:
                    if WRITELINES_SAFE:
                        self.transport.writelines(parts)
                    else:
                        self.transport.write(b"".join(parts))
                if not more:
                    finished = True
                elif self.drained is not None:
                    # Write-side back-pressure: a response streamed to a slow reader holds at
                    # most the transport's high-water mark (WRITE_HIGH_WATER), not the file.
                    await self.drained
            elif message["type"] == "http.response.zerocopysend":
                if head:
                    self.transport.write(head)
                    head = None
                more = message.get("more_body", False)
                fd = message["file"].fileno()
                offset = message.get("offset")
                from_position = offset is None
                if from_position:
                    offset = os.lseek(fd, 0, os.SEEK_CUR)
                count = message.get("count")
                if count is None:
                    count = max(0, os.fstat(fd).st_size - offset)
                if count:
                    if chunked:
                        self.transport.write(b"%x\r\n" % count)
                    await self._send_file(fd, offset, count)
                    if chunked:
                        self.transport.write(b"\r\n")
                    if from_position:
                        os.lseek(fd, offset + count, os.SEEK_SET)
                if not more:
                    if chunked:
                        self.transport.write(b"0\r\n\r\n")
                    finished = True
                elif self.drained is not None:
                    await self.drained

        try:
            await self.server.app(scope, receive, send)
        except ClientDisconnected:
            keep_alive = False
        except Exception:
            log.exception("HTTP request failed")
            if (not started or head) and not self.closed:  # nothing of the response went out
                self.transport.write(_simple_response(500, "Internal server error"))
            keep_alive = False
        if not finished and started:
            keep_alive = False
        self._next(keep_alive and finished)

    async def _send_file(self, fd: int, offset: int, count: int) -> None:
        """Write ``count`` bytes of file ``fd`` from ``offset``, after what the transport holds.

        Plain TCP: ``os.sendfile`` while the transport holds nothing (bytes stay in order);
        when the socket is full, the next :data:`SENDFILE_STEP` bytes are read into the
        transport, which writes them once the socket is writable, and sendfile resumes when
        the transport is empty again. TLS or a sendfile error: reads under the write
        back-pressure."""
        sock = None if self.server.scheme == "https" or not _SENDFILE else self.transport.get_extra_info("socket")
        while count:
            if self.closed:
                raise ClientDisconnected("the client closed the connection")
            if sock is not None:
                if self.transport.get_write_buffer_size():
                    await self._emptied()
                    continue
                try:
                    sent = os.sendfile(sock.fileno(), fd, offset, count)
                except BlockingIOError:
                    sent = None  # the socket is full
                except OSError as exc:
                    if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                        raise ClientDisconnected("the client closed the connection") from exc
                    sock = None  # this file or socket cannot be sendfile'd: read it
                    continue
                if sent == 0:
                    raise OSError(errno.EIO, f"file ended {count} bytes short of the body")
                if sent is not None:
                    offset += sent
                    count -= sent
                    continue
                step = SENDFILE_STEP
            else:
                step = FILE_READ
            data = os.pread(fd, min(step, count), offset)
            if not data:
                raise OSError(errno.EIO, f"file ended {count} bytes short of the body")
            self.transport.write(data)
            offset += len(data)
            count -= len(data)
            if self.drained is not None:
                await self.drained

    async def _emptied(self) -> None:
        """Wait until the transport has written all it holds: write-buffer limits of zero make
        it call ``pause_writing`` now and ``resume_writing`` once empty; then the usual limits."""
        self.transport.set_write_buffer_limits(high=0, low=0)
        try:
            if self.drained is not None:
                await self.drained
        finally:
            if not self.closed:
                self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def _next(self, keep_alive: bool) -> None:
        unread = self.request is not None and not self.request.complete
        self.request = None
        self.task = None
        if self.closed:
            return
        if unread and not self.server.stopping:
            self._linger()
            return
        if not keep_alive or self.server.stopping:
            self._close()
            return
        self._arm(self.limits.keepalive_timeout, self._idle)
        if self.paused:
            self.paused = False
            self.transport.resume_reading()

    # --- limits ---------------------------------------------------------------------------
    def _count(self, n: int) -> None:
        self.header_bytes += n
        if self.header_bytes > self.limits.max_header_bytes:
            self._refuse(431, f"Request header section larger than {self.limits.max_header_bytes} bytes")

    def _header_timeout(self) -> None:
        self._refuse(408, f"Request header section not received within {self.limits.header_timeout:g} s")

    def _idle(self) -> None:
        if self.request is None:
            self._close()

    def _refuse(self, status: int, text: str) -> None:
        if self.closed or self.lingering:
            return
        if self.request is None:  # no response under way: say why
            self.transport.write(_simple_response(status, text))
        self._linger()
        # The parser raises on what follows; nothing more is read.
        raise _Stop

    def _arm(self, delay: float, callback) -> None:
        """Call ``callback`` in ``delay`` seconds unless re-armed or disarmed first.

        One timer per connection, moved only when a deadline comes *earlier* than the one it
        is set for: a timer that fires early finds the current deadline and sets itself for
        it. Each request arms twice (header section, then keep-alive) and disarms once; with
        a uvloop timer made and cancelled each time that was ~4.5 us a step."""
        self.deadline = self.loop.time() + delay
        self.due = callback
        timer = self.timer
        if timer is not None:
            if timer.when() <= self.deadline:
                return
            timer.cancel()
        self.timer = self.loop.call_at(self.deadline, self._fire)

    def _fire(self) -> None:
        self.timer = None
        callback = self.due
        if callback is None or self.closed:
            return
        # (A timer may fire up to a millisecond early: the loop's clock has that resolution.)
        if self.loop.time() < self.deadline - TIMER_SLACK:
            self.timer = self.loop.call_at(self.deadline, self._fire)
            return
        self.due = None
        try:
            callback()
        except _Stop:
            pass

    def _disarm(self) -> None:
        self.due = None  # the timer, if set, finds nothing due when it fires

    def _stop_timer(self) -> None:
        self.due = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _linger(self) -> None:
        """Close after the response, reading and dropping what the client still sends."""
        self._disarm()
        self.lingering = LINGER_BYTES
        self.server.forget(self)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        self._arm(LINGER_SECONDS, self._close)

    def _close(self) -> None:
        self.lingering = 0
        if not self.closed:
            self.closed = True
            self._stop_timer()
            self.server.forget(self)
            self.transport.close()


class ClientDisconnected(OSError):
    """``send`` after the client closed the connection."""


class _Stop(Exception):
    """Raised out of a parser callback or timer once a connection is refused and closing."""


class HTTPServer:
    """Serve ``app`` (ASGI 3, http scope only) on an already bound listening socket."""

    def __init__(self, app, limits: HTTPLimits = HTTPLimits(), *, body_views: bool = False) -> None:
        self.app = app
        self.limits = limits
        self.body_views = body_views  # bodies as read-only memoryviews (see the module docstring)
        # One loop thread reads one connection at a time and copies out what it read here
        # before the next read (buffer_updated), so the connections share it.
        self.parsed_read = memoryview(bytearray(PARSED_READ))
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task] = set()
        self.stopping = False
        self.address: tuple | None = None
        self.scheme = "http"
        self._server: asyncio.AbstractServer | None = None
        self._acceptor: Acceptor | None = None
        self._seat: Seat | None = None
        # Accepted, not yet connected (TLS: handshaking). A connection is in this set or in
        # ``connections``, never both: connection_made moves it in one step, so the board
        # never shows one connection twice (which sent a connection to the other worker).
        self.opening: set[_Connection] = set()
        self._ssl = None

    async def start(self, sock, ssl=None, seat: Seat | None = None) -> None:
        """Accept on ``sock``; with an ``ssl`` context, HTTPS. A worker sharing ``sock`` with
        others passes its ``seat`` on their :class:`~.accept.LoadBoard`, so that each new
        connection goes to the worker holding fewest (:mod:`.accept`)."""
        self.address = sock.getsockname()[:2]
        self.scheme = "http" if ssl is None else "https"
        if seat is None:
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(lambda: _Guarded(self), sock=sock, backlog=1024, ssl=ssl)
        else:
            self._seat, self._ssl = seat, ssl
            self._acceptor = Acceptor(sock, seat, self._accepted)
            self._acceptor.start()

    def publish(self) -> None:
        """Tell the other workers how many connections this one holds."""
        if self._seat is not None and not self.stopping:  # stopping: the acceptor left the board
            self._seat.publish(len(self.connections) + len(self.opening))

    def forget(self, conn: "_Connection") -> None:
        self.connections.discard(conn)
        self.publish()

    def _accepted(self, conn) -> None:
        hand_over(conn, _Guarded(self), self._ssl, self.opening, self.tasks, self.publish)

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, close idle connections, give requests under way ``grace`` seconds."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        if self._acceptor is not None:
            self._acceptor.close()
        for conn in list(self.connections):
            if conn.request is None:
                conn._close()
        if self.tasks:
            done, pending = await asyncio.wait(set(self.tasks), timeout=grace)
            for task in pending:
                task.cancel()
        for conn in list(self.connections):
            conn._close()


class _Guarded(_Connection):
    """A connection whose parser callbacks may stop it (:class:`_Stop`) without the exception
    reaching the event loop."""

    def buffer_updated(self, nbytes: int) -> None:
        try:
            super().buffer_updated(nbytes)
        except _Stop:
            pass
