"""HTTP plumbing shared by the WADO-RS resources: content negotiation, refusals, conditional
requests (ETag / Last-Modified, RFC 9110 §8.8 and §13), byte ranges (RFC 9110 §14) and gzip.

Nothing here knows DICOM; :mod:`.wado` and its resource modules use it.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import zlib
from collections.abc import Iterable
from urllib.parse import parse_qs

from .urls import base_url

__all__ = ["Refused", "Request", "MediaRange", "Validators", "validators", "not_modified",
           "parse_range", "text_response", "GzipSend", "part_head", "boundary_for"]


class Refused(Exception):
    """An error response: ``status`` and a readable plain-text ``text``."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


class MediaRange:
    """One entry of an Accept header (RFC 9110 §12.5.1): type, lower-cased parameters, q."""

    __slots__ = ("type", "params", "q")

    def __init__(self, text: str) -> None:
        parts = [p.strip() for p in text.split(";")]
        self.type = parts[0].lower()
        self.params = {k.strip().lower(): v.strip().strip('"') for k, _, v in (p.partition("=") for p in parts[1:])}
        try:
            self.q = float(self.params.pop("q", "1"))
        except ValueError:
            self.q = 1.0

    def matches(self, media: str) -> bool:
        """True if this range covers ``media`` (``*/*``, ``type/*`` or the type itself)."""
        if self.type in ("*/*", media):
            return True
        return self.type.endswith("/*") and media.startswith(self.type[:-1])


class Request:
    """What the WADO-RS resources read from an ASGI scope: headers and query parameters."""

    __slots__ = ("scope", "headers", "query", "path")

    def __init__(self, scope: dict) -> None:
        self.scope = scope
        self.path = scope.get("path", "")
        headers: dict[str, str] = {}
        for k, v in scope.get("headers", ()):
            name = k.decode("latin-1").lower()
            value = v.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self.headers = headers
        self.query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)

    def header(self, name: str) -> str:
        return self.headers.get(name, "")

    def param(self, name: str) -> str | None:
        """The last value of query parameter ``name``, or None."""
        values = self.query.get(name)
        return values[-1] if values else None

    def accept(self) -> list[MediaRange]:
        """The Accept header's media ranges with q > 0, best first (stable), or ``*/*``."""
        text = self.header("accept").strip()
        ranges = [MediaRange(item) for item in text.split(",") if item.strip()] if text else []
        ranges = [r for r in ranges if r.q > 0] if ranges else [MediaRange("*/*")]
        return sorted(ranges, key=lambda r: -r.q)

    def accepts_gzip(self) -> bool:
        for item in self.header("accept-encoding").split(","):
            coding = MediaRange(item)
            if coding.type in ("gzip", "x-gzip", "*") and coding.q > 0:
                return True
        return False

    def base_url(self, public_url: str | None = None) -> str:
        """``scheme://host[:port]{root_path}`` as the client addressed us, or ``public_url``
        (:func:`dicomaccel.urls.base_url`)."""
        return base_url(self.scope, self.headers, public_url)


class Validators:
    """A representation's ``ETag`` and ``Last-Modified`` (RFC 9110 §8.8)."""

    __slots__ = ("etag", "mtime")

    def __init__(self, etag: str, mtime: float) -> None:
        self.etag, self.mtime = etag, mtime

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"etag", self.etag.encode()),
                (b"last-modified", email.utils.formatdate(int(self.mtime), usegmt=True).encode())]


def validators(records: Iterable, variant: str, sizes: list[int] | None = None) -> Validators:
    """Validators of a response built from ``records`` (stored instances) as ``variant`` (what
    distinguishes representations of one URL: transfer syntax, media type, parameters).

    A stored file never changes in place (a replacement is a new file with a new CRC-32), so
    the CRC-32 and size of each file identify the bytes; the newest file's mtime is
    Last-Modified. Files of rows without a CRC-32 (schema version 2) use size and mtime.
    ``sizes``, if given, receives each file's size from the same ``stat`` (a Content-Length
    needs them before the first byte).
    """
    digest = hashlib.blake2b(variant.encode(), digest_size=12)
    newest = 0.0
    count = 0
    for record in records:
        st = os.stat(record.path)
        newest = max(newest, st.st_mtime)
        crc = record.crc32 if record.crc32 is not None else st.st_mtime_ns
        digest.update(f"{record.sop_instance_uid}:{crc}:{record.size};".encode())
        if sizes is not None:
            sizes.append(st.st_size)
        count += 1
    if not count:
        raise Refused(404, "No such study, series or instance")
    return Validators(f'"{digest.hexdigest()}"', newest)


def not_modified(request: Request, v: Validators) -> bool:
    """True if the conditional request is answered by 304 (RFC 9110 §13.1.2, §13.1.3: a
    present If-None-Match decides alone; weak comparison)."""
    inm = request.header("if-none-match").strip()
    if inm:
        if inm == "*":
            return True
        ours = v.etag.removeprefix("W/")
        return any(tag.strip().removeprefix("W/") == ours for tag in inm.split(","))
    ims = request.header("if-modified-since").strip()
    if ims:
        try:
            since = email.utils.parsedate_to_datetime(ims).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return False
        return int(v.mtime) <= since
    return False


async def send_not_modified(send, v: Validators, extra: list[tuple[bytes, bytes]] = ()) -> None:
    # Content-Length 0 keeps the front end from chunk-framing a response that has no body.
    await send({"type": "http.response.start", "status": 304,
                "headers": [*v.headers(), *extra, (b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The one byte range ``bytes=a-b`` / ``a-`` / ``-n`` asks of a value of ``size`` bytes, as
    ``(start, end)`` with end exclusive; None when there is no usable Range (absent, another
    unit, several ranges, malformed: RFC 9110 §14.2 lets us ignore it and send the whole).

    Raises Refused(416) when the range starts beyond the end (RFC 9110 §15.5.17).
    """
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or not spec or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if not first:  # suffix: the last n bytes
            n = int(last)
            if n <= 0:
                raise Refused(416, f"Range not satisfiable: the value has {size} bytes")
            return max(0, size - n), size
        start = int(first)
        end = int(last) + 1 if last else max(size, start + 1)
    except ValueError:
        return None
    if start < 0 or end <= start:
        return None
    if start >= size:
        raise Refused(416, f"Range not satisfiable: the value has {size} bytes")
    return start, min(end, size)


def part_head(boundary: str, content_type: str, *extra: str) -> bytes:
    lines = [f"--{boundary}", f"Content-Type: {content_type}", *extra, "", ""]
    return "\r\n".join(lines).encode()


def boundary_for(v: Validators) -> str:
    """The multipart boundary of a representation: derived from its ETag, so that the same
    ETag always names the same bytes (a strong validator, RFC 9110 §8.8.1); 96 bits no
    stored byte sequence can aim at, since it changes with the content it would sit in."""
    return hashlib.blake2b(v.etag.encode(), digest_size=12, person=b"boundary").hexdigest()


async def text_response(send, status: int, text: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = (text + "\n").encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
        *headers]})
    await send({"type": "http.response.body", "body": body})


class GzipSend:
    """Wraps an ASGI ``send``: the response body goes out gzip-coded (RFC 9110 §8.4.1.3),
    compressed as it streams (the compressor holds a 32 KiB window, not the body)."""

    LEVEL = 6

    def __init__(self, send) -> None:
        self._send = send
        self._z = zlib.compressobj(self.LEVEL, zlib.DEFLATED, 31)

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"content-length"]
            headers.append((b"content-encoding", b"gzip"))
            await self._send({**message, "headers": headers})
            return
        body = self._z.compress(message.get("body", b""))
        more = message.get("more_body", False)
        if not more:
            body += self._z.flush()
        if body or not more:
            await self._send({"type": "http.response.body", "body": body, "more_body": more})
