"""The HTTP/1.1 front end of `dicomaccel serve` against slow, large and many connections, and
the protocol details clients rely on (keep-alive, Expect: 100-continue, chunked bodies).

Every limit here is a documented default (README, `dicomaccel serve --help`) lowered by its
flag so the test runs in seconds; the server is real, the clients are plain sockets and
``http.client``.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
from urllib.parse import urlsplit

import pytest

from dicomaccel.testing import at_once, connections_held, memory_kib, multipart, post, wait_until, worker_pids
from dicomaccel.testing.files import ct_file

REQUEST_HEAD = "POST /dicomweb/studies HTTP/1.1\r\nHost: test\r\n"
CONTENT_TYPE = 'Content-Type: multipart/related; type="application/dicom"; boundary=BOUNDARY\r\n'


def _connect(server) -> socket.socket:
    url = urlsplit(server.http_url)
    return socket.create_connection((url.hostname, url.port), timeout=30)


def _read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


@pytest.fixture
def limited(server_factory):
    return server_factory("--header-timeout", "1", "--max-header-size", "8K", "--max-connections", "4",
                          "--keepalive-timeout", "1")


def test_slow_header_lines_get_408_and_the_connection_closed(limited):
    sock = _connect(limited)
    sock.sendall(REQUEST_HEAD.encode())
    started = time.monotonic()
    try:
        for i in range(10):  # one header line every 0.4 s: never complete within 1 s
            time.sleep(0.4)
            sock.sendall(f"X-Slow-{i}: 1\r\n".encode())
    except (BrokenPipeError, ConnectionResetError):
        pass
    answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert time.monotonic() - started < 5
    sock.close()


def test_header_section_over_the_limit_gets_431(limited):
    sock = _connect(limited)
    sock.sendall((REQUEST_HEAD + "X-Big: " + "a" * 10_000 + "\r\n\r\n").encode())
    assert _read_all(sock).startswith(b"HTTP/1.1 431 ")
    sock.close()
    # One endless header line (no CRLF): refused without buffering it all.
    sock = _connect(limited)
    try:
        sock.sendall((REQUEST_HEAD + "X-Endless: ").encode() + b"a" * (4 << 20))
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert _read_all(sock).startswith(b"HTTP/1.1 431 ")
    sock.close()


def test_connections_beyond_the_cap_get_503_and_the_others_still_work(limited):
    held = [_connect(limited) for _ in range(4)]
    try:
        wait_until(lambda: True)  # let the server accept them
        time.sleep(0.2)
        extra = _connect(limited)
        answer = _read_all(extra)
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503 ") and b"Too many connections" in answer
    finally:
        for sock in held:
            sock.close()
    # The held ones gone, a store works again.
    assert wait_until(lambda: post(limited, multipart([ct_file(rows=4, columns=4)]))[0] == 200, timeout=10)


def test_idle_keep_alive_connection_is_closed(limited):
    sock = _connect(limited)
    time.sleep(1.5)
    assert _read_all(sock) == b""  # closed by the server, nothing sent
    sock.close()


def test_keep_alive_carries_several_requests_and_expect_100_continue(server_factory):
    server = server_factory()
    url = urlsplit(server.http_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    for n in range(3):
        body = multipart([ct_file(rows=4, columns=4, seed=n)])
        conn.request("POST", "/dicomweb/studies", body=body, headers={
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=BOUNDARY'})
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["00081199"]
    conn.close()
    # Expect: 100-continue (curl sends it for large bodies): the interim response comes
    # before the body is sent.
    body = multipart([ct_file(rows=4, columns=4, seed=9)])
    sock = _connect(server)
    sock.sendall((REQUEST_HEAD + CONTENT_TYPE + f"Content-Length: {len(body)}\r\n"
                  "Expect: 100-continue\r\n\r\n").encode())
    assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    sock.sendall(body + b"")
    head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 200 ")
    sock.close()


def test_malformed_request_line_is_400(server_factory):
    server = server_factory()
    sock = _connect(server)
    sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
    assert _read_all(sock).startswith(b"HTTP/1.1 400 ")
    sock.close()


def test_many_large_header_sections_do_not_keep_memory(server_factory):
    # 200 connections, each sending 1 MiB of header lines: each is refused (431) at 64 KiB,
    # and the server's resident memory returns near where it was.
    server = server_factory()
    pid = server.process.pid
    before = memory_kib(pid, "VmRSS")
    line = ("X-Pad: " + "a" * 1000 + "\r\n").encode()
    for _ in range(200):
        sock = _connect(server)
        try:
            sock.sendall(REQUEST_HEAD.encode() + line * 1024)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _read_all(sock)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 431 ")
    assert memory_kib(pid, "VmRSS") - before < 16 << 10


def test_bodies_that_trickle_in_hold_little_memory(server_factory):
    # 100 uploads announce 512 MiB each and send one byte: each connection reads it into a
    # body buffer of BODY_FIRST_READ (64 KiB), kept whole by the view of that byte; buffers of
    # BODY_READ (1 MiB) would hold ~68 MiB.
    server = server_factory()
    pid = server.process.pid
    port = urlsplit(server.http_url).port
    head = (REQUEST_HEAD + CONTENT_TYPE + f"Content-Length: {512 << 20}\r\n\r\n").encode()
    socks = [_connect(server) for _ in range(100)]
    try:
        wait_until(lambda: connections_held(pid, port) >= 100)
        for sock in socks:
            sock.sendall(head)
        time.sleep(0.5)  # the header sections read alone: the bodies go past the parser
        before = memory_kib(pid, "VmRSS")
        for sock in socks:
            sock.sendall(b"-")
        time.sleep(1)  # every connection has read its byte into its body buffer
        grown = memory_kib(pid, "VmRSS") - before
        assert grown < 16 << 10, f"{grown} KiB"
    finally:
        for sock in socks:
            sock.close()
    assert post(server, multipart([ct_file(rows=4, columns=4)]))[0] == 200  # still serving


def test_post_without_length_gets_411(server_factory):
    # HTTP/1.0 without Content-Length: a request body has no length then (RFC 9112 §6.3), so
    # the server says what is missing instead of reading the body as the next request.
    server = server_factory()
    body = multipart([ct_file(rows=4, columns=4)])
    sock = _connect(server)
    sock.sendall(b"POST /dicomweb/studies HTTP/1.0\r\n" + CONTENT_TYPE.encode() + b"\r\n" + body)
    sock.shutdown(socket.SHUT_WR)
    answer = _read_all(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 411 "), answer[:300]
    assert not list((server.data / "instances").rglob("*.dcm"))


# ------------------------------------------------ file bodies: the ASGI Zero Copy Send extension

def _serve_in_thread(app, loop_factory, ssl_context=None, **options):
    """HTTPServer(app, **options) on an ephemeral port, its loop in a thread; (port, stop, server)."""
    import asyncio
    import threading

    from dicomaccel.http_server import HTTPServer

    ready = threading.Event()
    state = {}

    def run():
        loop = loop_factory()
        asyncio.set_event_loop(loop)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = HTTPServer(app, **options)
        loop.run_until_complete(server.start(sock, ssl=ssl_context))
        state.update(port=sock.getsockname()[1], loop=loop, server=server)
        ready.set()
        loop.run_forever()
        loop.run_until_complete(server.stop(1))
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)

    def stop():
        state["loop"].call_soon_threadsafe(state["loop"].stop)
        thread.join(10)

    return state["port"], stop, state["server"]


def _file_app(path, chunked: bool, seen: list):
    """Head, a slice of ``path`` by offset/count, the rest from the file's position, tail."""
    size = path.stat().st_size

    async def app(scope, receive, send):
        seen.append(scope.get("extensions", {}))
        headers = [(b"content-type", b"application/octet-stream")]
        if not chunked:
            headers.append((b"content-length", str(size + 2).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"<", "more_body": True})
        with open(path, "rb") as f:
            await send({"type": "http.response.zerocopysend", "file": f, "offset": 0, "count": 1000,
                        "more_body": True})
            f.seek(1000)
            await send({"type": "http.response.zerocopysend", "file": f, "more_body": True})
            assert f.tell() == size  # sent from its position, which moved past what was sent
        await send({"type": "http.response.body", "body": b">"})

    return app


@pytest.mark.parametrize("loop_name", ["uvloop", "asyncio"])
@pytest.mark.parametrize("chunked", [False, True])
def test_zerocopysend_file_bodies_with_and_without_content_length(tmp_path, loop_name, chunked):
    import asyncio
    import os

    import uvloop

    data = os.urandom(3 << 20)
    path = tmp_path / "blob"
    path.write_bytes(data)
    seen = []
    port, stop, _ = _serve_in_thread(_file_app(path, chunked, seen),
                                  uvloop.new_event_loop if loop_name == "uvloop" else asyncio.new_event_loop)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(2):  # keep-alive: the connection is reusable after a file body
            conn.request("GET", "/")
            resp = conn.getresponse()
            assert (resp.getheader("transfer-encoding") == "chunked") == chunked
            assert resp.read() == b"<" + data + b">"
        conn.close()
    finally:
        stop()
    assert "http.response.zerocopysend" in seen[0]


def test_zerocopysend_to_a_slow_reader_holds_little_and_delivers_all(tmp_path, monkeypatch):
    # 24 MB to a client with a small receive buffer that reads in small bites: sendfile keeps
    # meeting a full socket, the server holds at most SENDFILE_STEP bytes at a time (read into
    # the transport, which says when the socket is writable again), and every byte arrives in order.
    import os

    import uvloop

    from dicomaccel import http_server

    data = os.urandom(24 << 20)
    path = tmp_path / "blob"
    path.write_bytes(data)
    held, reads = [], []
    pread = os.pread
    monkeypatch.setattr(http_server.os, "pread", lambda *a: reads.append(a[1]) or pread(*a))

    async def app(scope, receive, send):
        size = len(data)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(size).encode())]})
        with open(path, "rb") as f:
            for start in range(0, size, 1 << 20):
                await send({"type": "http.response.zerocopysend", "file": f, "offset": start,
                            "count": min(1 << 20, size - start), "more_body": True})
                held.extend(c.transport.get_write_buffer_size() for c in server.connections)
        await send({"type": "http.response.body", "body": b""})

    port, stop, server = _serve_in_thread(app, uvloop.new_event_loop)
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        got = bytearray()
        while b"\r\n\r\n" not in got or len(got) - got.index(b"\r\n\r\n") - 4 < len(data):
            chunk = sock.recv(16 << 10)
            if not chunk:
                break
            got += chunk
            if len(got) < (4 << 20):
                time.sleep(0.0005)  # slow at first
        sock.close()
    finally:
        stop()
    head, _, body = bytes(got).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and body == data
    assert reads and max(reads) <= http_server.SENDFILE_STEP  # the socket was full, and met so
    assert max(held) <= http_server.SENDFILE_STEP, held


def test_zerocopysend_over_tls_is_read_and_encrypted(tmp_path):
    import os
    import ssl

    import uvloop

    from dicomaccel.testing.tls import make_certificates
    from dicomaccel.tls import server_context

    certs = make_certificates(tmp_path / "certs")
    data = os.urandom(3 << 20)
    path = tmp_path / "blob"
    path.write_bytes(data)
    port, stop, _ = _serve_in_thread(_file_app(path, False, []), uvloop.new_event_loop,
                                  server_context(str(certs.server_cert), str(certs.server_key)))
    try:
        ctx = ssl.create_default_context(cafile=str(certs.ca))
        conn = http.client.HTTPSConnection("localhost", port, timeout=30, context=ctx)
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"<" + data + b">"
        conn.close()
    finally:
        stop()


def _open_together(server, count: int) -> list[http.client.HTTPConnection]:
    """``count`` keep-alive connections opened at the same instant, each with one answered
    request (so each is held by the worker that accepted it)."""
    url = urlsplit(server.http_url)

    def one() -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        conn.request("GET", "/metrics")
        conn.getresponse().read()
        return conn

    return at_once(count, one)


def _both_accepting(server, workers: list[int], port: int) -> bool:
    """True once two connections opened together land one on each worker: both workers are
    accepting (a worker still starting up is not on the board, and the other takes all)."""
    conns = _open_together(server, 2)
    try:
        return sorted(connections_held(pid, port) for pid in workers) == [1, 1]
    finally:
        for conn in conns:
            conn.close()
        wait_until(lambda: sum(connections_held(pid, port) for pid in workers) == 0, timeout=10)


def test_workers_take_equal_shares_of_connections(server_factory):
    """Clients connecting together are spread over the workers: left to the kernel, the first
    worker to wake took most of them (3 + 1 of 4 in most tries), and served them on one core."""
    server = server_factory("--workers", "2")
    workers = worker_pids(server.process.pid)
    assert len(workers) == 2
    port = urlsplit(server.http_url).port
    assert wait_until(lambda: _both_accepting(server, workers, port), timeout=60)
    for _ in range(5):
        conns = _open_together(server, 4)
        assert sorted(connections_held(pid, port) for pid in workers) == [2, 2]
        for conn in conns:
            conn.close()
        assert wait_until(lambda: sum(connections_held(pid, port) for pid in workers) == 0, timeout=10)


def test_a_stopped_worker_does_not_hold_up_new_connections(server_factory):
    """A worker that does not accept (here: stopped with SIGSTOP; in life, a long request) only
    delays a new connection (accept.MAX_DEFER): the other worker takes it."""
    server = server_factory("--workers", "2")
    workers = worker_pids(server.process.pid)
    port = urlsplit(server.http_url).port
    # Both serving first: a worker stopped while still starting may hold the index's lock.
    assert wait_until(lambda: _both_accepting(server, workers, port), timeout=60)
    os.kill(workers[0], signal.SIGSTOP)
    try:
        conns = _open_together(server, 3)
        assert connections_held(workers[1], port) == 3
        for conn in conns:
            conn.close()
    finally:
        os.kill(workers[0], signal.SIGCONT)
    assert post(server, multipart([ct_file()]))[0] == 200


# ------------------------------------------------ request bodies of known length

def _echo_app(received: list, types: set, views: list):
    """Answers each request with the length and SHA-256 of its body, as read through receive();
    keeps every memoryview body with a copy of what it held then."""
    import hashlib

    async def app(scope, receive, send):
        digest, size, more = hashlib.sha256(), 0, True
        while more:
            message = await receive()
            types.add(type(message["body"]))
            if type(message["body"]) is memoryview:
                views.append((message["body"], message["body"].tobytes()))
            digest.update(message["body"])
            size += len(message["body"])
            more = message["more_body"]
        received.append(size)
        answer = f"{size} {digest.hexdigest()}".encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    return app


@pytest.mark.parametrize("body_views", [False, True])
@pytest.mark.parametrize("loop_name", ["uvloop", "asyncio"])
def test_bodies_of_known_length_go_past_the_parser_and_arrive_whole(monkeypatch, loop_name, body_views):
    # A Content-Length body is read into the connection's own buffers, past httptools (whose
    # callbacks copy every chunk): the parser sees little more than the header sections.
    # Bodies split across reads, followed in the same write by the next requests (pipelined),
    # empty, and chunked (through the parser) all arrive whole and in order: as bytes (ASGI),
    # or with body_views as read-only views of buffers that are never written again.
    import asyncio
    import hashlib

    import httptools
    import uvloop

    from dicomaccel import http_server

    parsed = []

    class CountingParser(httptools.HttpRequestParser):
        def feed_data(self, data):
            parsed.append(len(data))
            return super().feed_data(data)

    monkeypatch.setattr(http_server.httptools, "HttpRequestParser", CountingParser)
    received, types, views = [], set(), []
    port, stop, _ = _serve_in_thread(_echo_app(received, types, views),
                                  uvloop.new_event_loop if loop_name == "uvloop" else asyncio.new_event_loop,
                                  body_views=body_views)
    big, small = os.urandom(3 << 20), b"0123456789"

    def post(body: bytes) -> bytes:
        return f"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body

    def expect(sock, bodies) -> None:
        want = b"".join(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%d %s" % (
            len(b"%d %s" % (len(b), hashlib.sha256(b).hexdigest().encode())), len(b),
            hashlib.sha256(b).hexdigest().encode()) for b in bodies)
        got = b""
        while len(got) < len(want):
            chunk = sock.recv(65536)
            assert chunk, got
            got += chunk
        assert got == want

    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        # 3 MiB in 64 KiB writes, then a small body in one segment with its head.
        message = post(big)
        for i in range(0, len(message), 64 << 10):
            sock.sendall(message[i:i + (64 << 10)])
        expect(sock, [big])
        assert sum(parsed) < 2 << 20, parsed  # most of the 3 MiB went past the parser
        sock.sendall(post(small))
        expect(sock, [small])
        # The end of one body and the whole next request in one write; then an empty body.
        message = post(big[:100_000])
        sock.sendall(message[:50_000])
        time.sleep(0.2)
        sock.sendall(message[50_000:] + post(small) + post(b""))
        expect(sock, [big[:100_000], small, b""])
        # Chunked transfer coding goes through the parser.
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        expect(sock, [b"hello world"])
        sock.close()
    finally:
        stop()
    assert received == [len(big), len(small), 100_000, len(small), 0, 11]
    assert types == ({bytes, memoryview} if body_views else {bytes})
    # Later reads never wrote over a view handed on, and the application cannot write to one.
    assert all(view.readonly and view.tobytes() == then for view, then in views)


@pytest.mark.parametrize("loop_name", ["uvloop", "asyncio"])
def test_an_app_failing_after_the_response_start_gets_a_500_not_a_cut_response(loop_name):
    """The response head waits for the first body bytes (one write for head and body), so an
    application that fails between the two has sent nothing yet: the client gets a whole 500,
    not a head promising 5 bytes and a closed connection."""
    import asyncio

    import uvloop

    async def app(scope, receive, send):
        if scope["path"] == "/ok":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
            await send({"type": "http.response.body", "body": b"hello"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        raise RuntimeError("failed before the body")

    port, stop, _ = _serve_in_thread(app, uvloop.new_event_loop if loop_name == "uvloop" else asyncio.new_event_loop)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/ok")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b"hello")
        conn.request("GET", "/fails")  # the same keep-alive connection
        resp = conn.getresponse()
        assert resp.status == 500 and resp.read().startswith(b"Internal server error")
        assert resp.getheader("connection") == "close"
        conn.close()
    finally:
        stop()
