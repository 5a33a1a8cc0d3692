"""The HTTP/1.1 front end of `dicomaccel serve` against slow, large and many connections, and
the protocol details clients rely on (keep-alive, Expect: 100-continue, chunked bodies).

Every limit here is a documented default (README, `dicomaccel serve --help`) lowered by its
flag so the test runs in seconds; the server is real, the clients are plain sockets and
``http.client``.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from urllib.parse import urlsplit

import pytest

from dicomaccel.testing import memory_kib, multipart, post, wait_until
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
