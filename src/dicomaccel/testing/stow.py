"""STOW-RS requests: multipart/related bodies (PS3.18 §10.5) and two ways to send them."""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

BOUNDARY = "BOUNDARY"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def multipart(parts: Iterable[bytes], boundary: str = BOUNDARY,
              part_headers: bytes = b"Content-Type: application/dicom\r\n", preamble: bytes = b"",
              epilogue: bytes = b"\r\n", padding: bytes = b"") -> bytes:
    """A multipart/related body (RFC 2046 §5.1.1) of ``parts``, each with ``part_headers``.

    ``padding`` goes after each delimiter (transport padding); with a ``preamble`` the first
    delimiter keeps its leading CRLF.
    """
    out = [preamble]
    for p in parts:
        out.append(b"\r\n--" + boundary.encode() + padding + b"\r\n" + part_headers + b"\r\n" + p)
    out.append(b"\r\n--" + boundary.encode() + b"--" + epilogue)
    body = b"".join(out)
    return body if preamble else body[2:]


def post(server, body: bytes, content_type: str = CONTENT_TYPE, path: str = "/dicomweb/studies",
         headers: dict | None = None, chunked: bool = False) -> tuple[int, dict[str, str], bytes]:
    """POST ``body`` to ``server.http_url`` + ``path``; (status, headers, body) of the answer."""
    url = urlsplit(server.http_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    hdrs = {"Content-Type": content_type, **(headers or {})}
    if chunked:
        def gen():
            for i in range(0, len(body), 7919):
                yield body[i:i + 7919]
        conn.request("POST", path, body=gen(), headers=hdrs, encode_chunked=True)
    else:
        conn.request("POST", path, body=body, headers=hdrs)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), data


def run_asgi(app, body_chunks: Iterable[bytes], on_chunk: Callable[[int], None] | None = None,
             content_type: str = CONTENT_TYPE, path: str = "/dicomweb/studies") -> tuple[int, bytes]:
    """POST ``body_chunks`` to the ASGI ``app`` in-process (a fresh event loop); (status, body).

    ``on_chunk(n)`` is called before each ``receive()`` with the number of chunks not yet
    delivered: the place to change the world between two chunks.
    """
    sent = []
    chunks = list(body_chunks)

    async def receive():
        if on_chunk is not None:
            on_chunk(len(chunks))
        if not chunks:
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": path, "scheme": "http", "root_path": "",
        "headers": [(b"host", b"test"), (b"content-type", content_type.encode())],
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body


def warnings_only(status: int, body: bytes) -> bool:
    """True if a STOW-RS JSON response says every instance was stored: 200, or 202 whose only
    cause is Warning Reasons (e.g. B007 for test files that do not match their IOD)."""
    if status == 200:
        return True
    if status != 202:
        return False
    doc = json.loads(body)
    return "00081198" not in doc and "0008119A" not in doc and "00081199" in doc
