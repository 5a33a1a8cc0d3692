"""Streaming multipart/related scanner, pure-Python twin (the specification of ``_multipart_c``).

RFC 2046 §5.1.1 as profiled by PS3.18 §8.6.1.2.1::

    body = [preamble CRLF] dash-boundary padding CRLF body-part
           *(delimiter padding CRLF body-part) close-delimiter padding [CRLF epilogue]
    dash-boundary = "--" boundary      delimiter = CRLF dash-boundary
    close-delimiter = delimiter "--"   padding = *(SP / HTAB)
    body-part = headers CRLF octets    (headers: CRLF-terminated lines)

Choices where the RFC leaves room (both implementations make the same ones):

- The body may start with ``--boundary`` at offset 0: the scan starts as if a CRLF had been
  seen just before the first byte. For the same reason a part whose blank line is followed at
  once by ``--boundary`` (``headers CRLF CRLF --boundary``) is an empty part: the RFC grammar
  allows the body to be absent, and a line starting with the boundary can never be data.
- Header lines end with CRLF only; a bare CR or LF inside the header block is a ParseError.
  Folded lines (starting with SP/HTAB, RFC 5322 §3.2.2) are unfolded with one space.
- A missing CRLF after the close delimiter is accepted; nothing after ``--boundary--`` is read.
- A delimiter line is ``--boundary``, optional SP/HTAB, then CRLF (next part) or ``--`` (close);
  anything else there is a ParseError. A body that stops before the close delimiter is a
  ParseError from :meth:`MultipartScanner.finish`.

Errors: every error raised by :meth:`MultipartScanner.feed` and :meth:`MultipartScanner.finish`
is a ParseError with the absolute offset; the two size limits (``max_parts``, ``max_header_size``)
raise its subclass LimitExceeded, so a server can answer them as limits rather than as bad syntax.
The error carries ``events``: what that call had produced before the error, so a part that was
complete before the bad bytes is not lost with them.

Data events are zero-copy ``memoryview`` slices of the chunk passed to ``feed``: the caller must
use (or copy) them before it mutates or reuses that buffer. The scanner holds back at most
``len(delimiter) - 1`` bytes at the end of a chunk (the start of a possible delimiter); if they
turn out to be data they are emitted as a small ``bytes`` at the start of the next ``feed``.
"""

from __future__ import annotations

import re
from operator import index
from typing import Dict, List, Tuple, Union

from .errors import LimitExceeded, ParseError

__all__ = ["PART_BEGIN", "PART_DATA", "PART_END", "CLOSE", "MultipartScanner", "parse_content_type",
           "body_buffer"]

PART_BEGIN = 1
PART_DATA = 2
PART_END = 3
CLOSE = 4

# Scanner states; _multipart_c uses the same numbers.
MP_PREAMBLE = 0  # looking for the first delimiter; bytes are discarded
MP_AFTER_DELIM = 1  # just after "--boundary": "--", padding or CRLF
MP_DASH = 2  # after "--boundary-": the second "-"
MP_PADDING = 3  # after "--boundary" SP/HTAB: more padding or CRLF
MP_CR = 4  # after "--boundary"[padding] CR: the LF
MP_HEADERS = 5  # collecting a part's header block up to CRLF CRLF
MP_BODY = 6  # part data, looking for the next delimiter
MP_CLOSED = 7  # after the close delimiter: the epilogue is ignored

_CR, _LF, _SP, _HTAB, _DASH = 0x0D, 0x0A, 0x20, 0x09, 0x2D
_OWS = b" \t"
_BARE = ((b"\r", "CR"), (b"\n", "LF"))

_BCHARS = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ")
_TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# A run of tchars (RFC 9110 §5.6.2), the whole check in one match.
_TOKEN_RUN = re.compile("[" + re.escape(_TCHARS) + "]*")

Headers = List[Tuple[str, str]]


def body_buffer(size: int) -> bytearray:
    """A writable buffer of ``size`` bytes for body bytes to be read into. Its contents are
    unspecified until written: here zeros; the compiled kernel leaves them as the allocator
    gave them, since zeroing a buffer a read overwrites at once costs a server ~25 us of a
    0.5 MB body (memset, measured on the event-loop thread). A caller may expose only the
    bytes a read wrote.

    Raises
    ------
    ValueError
        ``size`` is negative.
    """
    if size < 0:
        raise ValueError(f"negative buffer size {size}")
    return bytearray(size)


def validate_boundary(boundary: Union[bytes, str]) -> bytes:
    """Return ``boundary`` as bytes, or raise ValueError if RFC 2046 §5.1.1 forbids it.

    1 to 70 characters from ``DIGIT ALPHA ' ( ) + _ , - . / : = ?`` and SPACE, not ending in SPACE.
    """
    if isinstance(boundary, str):
        try:
            raw = boundary.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"invalid multipart boundary {boundary!r}: not ASCII") from None
    elif isinstance(boundary, (bytes, bytearray, memoryview)):
        raw = bytes(boundary)
    else:
        raise TypeError(f"boundary must be bytes or str, not {type(boundary).__name__}")
    if not 1 <= len(raw) <= 70:
        raise ValueError(f"invalid multipart boundary {raw!r}: length {len(raw)} is not 1..70")
    bad = next((c for c in raw if c not in _BCHARS), None)
    if bad is not None:
        raise ValueError(f"invalid multipart boundary {raw!r}: character {bytes((bad,))!r} is not allowed")
    if raw[-1] == _SP:
        raise ValueError(f"invalid multipart boundary {raw!r}: ends with a space")
    return raw


def describe_byte(byte: int) -> str:
    """How error messages show an unexpected byte: ``b'x'``."""
    return repr(bytes((byte,)))


def parse_header_block(block: bytes, start: int, dash_boundary: bytes) -> Headers:
    """Parse one part's header block, which ends with its blank line (``b"\\r\\n"`` if empty).

    ``start`` is the block's absolute offset, for error offsets. Names are lowercased, values
    stripped of SP/HTAB; both decoded as latin-1.
    """
    headers: Headers = []
    if len(block) <= 2:  # just the blank line: a part without headers
        return headers
    offset = start
    for line in block[:-4].split(b"\r\n"):
        for bare, label in _BARE:
            i = line.find(bare)
            if i >= 0:
                raise ParseError(f"bare {label} in part headers", offset + i)
        if line[:1] in (b" ", b"\t"):
            if not headers:
                raise ParseError("folded header line before any header", offset)
            name, value = headers[-1]
            more = line.strip(_OWS).decode("latin-1")
            headers[-1] = (name, f"{value} {more}" if value else more)
        elif line.startswith(dash_boundary):
            raise ParseError("boundary inside part headers (the headers never ended)", offset)
        else:
            colon = line.find(b":")
            if colon < 0:
                raise ParseError("header line without ':'", offset)
            name = line[:colon].strip(_OWS)
            if not name:
                raise ParseError("empty header name", offset)
            headers.append((name.decode("latin-1").lower(), line[colon + 1 :].strip(_OWS).decode("latin-1")))
        offset += len(line) + 2
    return headers


def _skip_ows(value: str, pos: int) -> int:
    n = len(value)
    while pos < n and value[pos] in " \t":
        pos += 1
    return pos


def _check_token(value: str, start: int, stop: int, what: str) -> None:
    i = _TOKEN_RUN.match(value, start, stop).end()  # the first character past the tchars
    if i < stop:
        raise ParseError(f"invalid character {value[i]!r} in {what}", i)


def parse_content_type(value: Union[str, bytes]) -> Tuple[str, Dict[str, str]]:
    """Split a Content-Type header into its media type and parameters (RFC 9110 §8.3.1).

    Returns ``(media_type, params)``: the media type lowercased, parameter names lowercased,
    values unquoted (quoted-string with backslash escapes) or taken as written (token; leniently
    anything up to the next ``;``, stripped, since clients send unquoted boundaries containing
    ``=`` or ``/``). Whitespace around ``;`` and ``=`` is allowed, as are empty parameters (``;;``,
    a trailing ``;``). ``bytes`` are decoded as latin-1.

    Raises
    ------
    ParseError
        With ``offset`` the character index in ``value``: empty or malformed media type,
        parameter without ``=``, empty or invalid name, empty unquoted value or one containing
        ``"``, unterminated quoted string, text after a quoted value, duplicate parameter.
    """
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("latin-1")
    elif not isinstance(value, str):
        raise TypeError(f"Content-Type must be str or bytes, not {type(value).__name__}")
    n = len(value)
    start = _skip_ows(value, 0)
    semi = value.find(";")
    end = n if semi < 0 else semi
    stop = end
    while stop > start and value[stop - 1] in " \t":
        stop -= 1
    if stop == start:
        raise ParseError("empty media type", start)
    slash = value.find("/", start, stop)
    if slash < 0:
        raise ParseError("expected a media type of the form type/subtype", start)
    if slash == start or slash == stop - 1:
        raise ParseError("empty type or subtype in media type", slash)
    _check_token(value, start, slash, "media type")
    _check_token(value, slash + 1, stop, "media type")
    media_type = value[start:stop].lower()

    params: Dict[str, str] = {}
    pos = end
    while pos < n:  # value[pos] == ";"
        pos = _skip_ows(value, pos + 1)
        if pos >= n or value[pos] == ";":
            continue
        name_start = pos
        while pos < n and value[pos] not in "=;":
            pos += 1
        if pos >= n or value[pos] == ";":
            raise ParseError("expected '=' after parameter name", pos)
        name_stop = pos
        while name_stop > name_start and value[name_stop - 1] in " \t":
            name_stop -= 1
        if name_stop == name_start:
            raise ParseError("empty parameter name", name_start)
        _check_token(value, name_start, name_stop, "parameter name")
        name = value[name_start:name_stop].lower()
        pos = _skip_ows(value, pos + 1)
        if pos < n and value[pos] == '"':
            quote = pos
            pos += 1
            chars = []
            close = value.find('"', pos)
            if close >= 0 and value.find("\\", pos, close) < 0:
                chars.append(value[pos:close])  # no quoted-pair: the value as written
                pos = close
            while True:
                if pos >= n:
                    raise ParseError("unterminated quoted string", quote)
                ch = value[pos]
                if ch == '"':
                    pos += 1
                    break
                if ch == "\\":
                    if pos + 1 >= n:
                        raise ParseError("unterminated quoted string", quote)
                    ch = value[pos + 1]
                    pos += 1
                chars.append(ch)
                pos += 1
            pos = _skip_ows(value, pos)
            if pos < n and value[pos] != ";":
                raise ParseError("expected ';' after quoted parameter value", pos)
            param = "".join(chars)
        else:
            semi = value.find(";", pos)
            stop = n if semi < 0 else semi
            quote = value.find('"', pos, stop)
            if quote >= 0:
                raise ParseError("unexpected '\"' in unquoted parameter value", quote)
            param = value[pos:stop].rstrip(" \t")
            if not param:
                raise ParseError("empty parameter value", pos)
            pos = stop
        if name in params:
            raise ParseError(f"duplicate parameter {name!r}", name_start)
        params[name] = param
    return media_type, params


def _byte_view(chunk: object) -> memoryview:
    mv = memoryview(chunk)  # type: ignore[arg-type]  # TypeError for non-buffers
    if not mv.c_contiguous:
        raise TypeError("chunk must be a contiguous buffer")
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    return mv


class MultipartScanner:
    """Incremental scanner of a multipart/related body.

    Parameters
    ----------
    boundary : bytes or str
        The ``boundary`` parameter of the request's Content-Type, unquoted (see
        :func:`parse_content_type`). ValueError unless RFC 2046 allows it.
    max_header_size : int
        Largest header block of one part, in bytes, including its terminating blank line.
    max_parts : int
        Most parts one body may have.

    ``feed(chunk)`` returns the events that chunk completes, in order:
    ``(PART_BEGIN, [(name, value), ...])``, ``(PART_DATA, memoryview | bytes)``,
    ``(PART_END, None)`` and, once, ``(CLOSE, None)``.

    Raises
    ------
    LimitExceeded
        From ``feed``: a part beyond ``max_parts`` starts, or a header block grows past
        ``max_header_size`` without ending. A subclass of ParseError.
    ParseError
        From ``feed``: malformed syntax; from ``finish``: the body ended before the close
        delimiter. ``offset`` is absolute in the body. ``events`` is a list of the events the
        failing call produced before the error (same form as ``feed`` returns; its memoryviews
        slice that call's chunk), empty from ``finish`` and from repeats. After an error every
        call raises it again, as the same type with the same message and offset.
    """

    __slots__ = (
        "_dash_boundary",
        "_delim",
        "_max_header_size",
        "_max_parts",
        "_state",
        "_held",
        "_virtual",
        "_offset",
        "_part_count",
        "_header_start",
        "_hbuf",
        "_error",
    )

    def __init__(self, boundary: Union[bytes, str], *, max_header_size: int = 16384, max_parts: int = 10000) -> None:
        raw = validate_boundary(boundary)
        if max_header_size < 1:
            raise ValueError("max_header_size must be at least 1")
        if max_parts < 1:
            raise ValueError("max_parts must be at least 1")
        self._dash_boundary = b"--" + raw
        self._delim = b"\r\n--" + raw
        self._max_header_size = index(max_header_size)
        self._max_parts = index(max_parts)
        self._state = MP_PREAMBLE
        # The held-back tail of the data is always _delim[:_held]; its first _virtual bytes are the
        # CRLF we pretend precedes offset 0 and each part's data (so "--boundary" there is found).
        self._held = 2
        self._virtual = 2
        self._offset = 0
        self._part_count = 0
        self._header_start = 0
        self._hbuf = bytearray()
        self._error: Union[Tuple[type, str, int], None] = None

    @property
    def offset(self) -> int:
        """Bytes consumed so far (all bytes fed: held-back and epilogue bytes count)."""
        return self._offset

    @property
    def closed(self) -> bool:
        """True once the close delimiter has been seen."""
        return self._state == MP_CLOSED

    @property
    def part_count(self) -> int:
        """Parts whose PART_BEGIN has been emitted."""
        return self._part_count

    def feed(self, chunk: object) -> List[Tuple[int, object]]:
        """Scan the next chunk (any contiguous buffer) and return the events it completes."""
        if self._error is not None:
            raise self._again()
        mv = _byte_view(chunk)
        n = mv.nbytes
        events: List[Tuple[int, object]] = []
        if self._state != MP_CLOSED and n:
            hay = chunk if type(chunk) is bytes or type(chunk) is bytearray else mv.tobytes()
            try:
                self._run(hay, mv, n, events)  # type: ignore[arg-type]
            except ParseError as exc:
                self._fail(exc, events)
                raise
        self._offset += n
        return events

    def finish(self) -> None:
        """Declare the end of the body: ParseError unless the close delimiter was seen."""
        if self._error is not None:
            raise self._again()
        state = self._state
        if state == MP_CLOSED:
            return
        if state == MP_PREAMBLE:
            message = "body ended before the first boundary"
        elif state == MP_HEADERS:
            message = "body ended inside part headers"
        elif state == MP_BODY:
            message = "body ended before the close delimiter"
        else:
            message = "body ended inside a boundary line"
        raise self._fail(ParseError(message, self._offset), [])

    def _fail(self, exc: ParseError, events: list) -> ParseError:
        """Make ``exc`` the sticky error and attach the events produced before it."""
        self._error = (type(exc), exc.message, exc.offset)
        exc.events = events  # type: ignore[attr-defined]
        return exc

    def _again(self) -> ParseError:
        """A new instance of the sticky error, for the calls after it."""
        cls, message, offset = self._error  # type: ignore[misc]
        return self._fail(cls(message, offset), [])

    def _run(self, hay: bytes, mv: memoryview, n: int, events: list) -> None:
        base = self._offset
        pos = 0
        state = self._state
        try:
            while pos < n:
                if state == MP_BODY or state == MP_PREAMBLE:
                    pos = self._scan(hay, mv, pos, n, events, state == MP_BODY)
                    if pos < 0:
                        break
                    if state == MP_BODY:
                        events.append((PART_END, None))
                    state = MP_AFTER_DELIM
                elif state == MP_HEADERS:
                    pos = self._headers(hay, pos, n, base, events)
                    if pos < 0:
                        break
                    state = MP_BODY
                    self._held = self._virtual = 2
                elif state == MP_CLOSED:
                    break
                else:
                    c = hay[pos]
                    if state == MP_CR:
                        if c != _LF:
                            raise ParseError(f"expected LF after CR in a boundary line, found {describe_byte(c)}", base + pos)
                        pos += 1
                        if self._part_count >= self._max_parts:
                            raise LimitExceeded(f"more than {self._max_parts} parts", base + pos)
                        state = MP_HEADERS
                        self._header_start = base + pos
                        del self._hbuf[:]
                    elif state == MP_DASH:
                        if c != _DASH:
                            raise ParseError(f"expected '-' after '--boundary-', found {describe_byte(c)}", base + pos)
                        state = MP_CLOSED
                        events.append((CLOSE, None))
                        break
                    elif c == _CR:
                        state = MP_CR
                        pos += 1
                    elif c == _SP or c == _HTAB:
                        state = MP_PADDING
                        pos += 1
                    elif c == _DASH and state == MP_AFTER_DELIM:
                        state = MP_DASH
                        pos += 1
                    elif state == MP_PADDING:
                        raise ParseError(f"expected padding or CRLF after the boundary, found {describe_byte(c)}", base + pos)
                    else:
                        raise ParseError(
                            f"expected '--', padding or CRLF after the boundary, found {describe_byte(c)}", base + pos
                        )
        finally:
            self._state = state

    def _scan(self, hay: bytes, mv: memoryview, pos: int, n: int, events: list, emit: bool) -> int:
        """Find the next delimiter from ``pos``: the position just after it, or -1 at chunk end."""
        delim = self._delim
        size = len(delim)
        held = self._held
        if held:
            need = size - held
            avail = min(need, n - pos)
            if hay[pos : pos + avail] == delim[held : held + avail]:
                if avail == need:
                    self._held = self._virtual = 0
                    return pos + need
                self._held = held + avail
                return -1
            if emit and held > self._virtual:
                events.append((PART_DATA, delim[self._virtual : held]))
            self._held = self._virtual = 0
        found = hay.find(delim, pos)
        if found >= 0:
            if emit and found > pos:
                events.append((PART_DATA, mv[pos:found]))
            return found + size
        # The delimiter's only CR is its first byte, so only the last CR of the chunk's final
        # size - 1 bytes can start a delimiter that the next chunk completes.
        keep = 0
        cr = hay.rfind(b"\r", max(pos, n - size + 1), n)
        if cr >= 0 and hay[cr:n] == delim[: n - cr]:
            keep = n - cr
        if emit and n - keep > pos:
            events.append((PART_DATA, mv[pos : n - keep]))
        self._held = keep
        return -1

    def _headers(self, hay: bytes, pos: int, n: int, base: int, events: list) -> int:
        """Collect header bytes; at the blank line emit PART_BEGIN and return the position after it."""
        hbuf = self._hbuf
        old = len(hbuf)
        take = min(self._max_header_size - old, n - pos)
        hbuf += hay[pos : pos + take]
        if hbuf[:2] == b"\r\n":
            end = 2
        else:
            end = hbuf.find(b"\r\n\r\n", max(0, old - 3))
            end = -1 if end < 0 else end + 4
        if end < 0:
            if len(hbuf) >= self._max_header_size and pos + take < n:
                raise LimitExceeded(
                    f"part headers longer than {self._max_header_size} bytes", self._header_start + self._max_header_size
                )
            return -1
        block = bytes(hbuf[:end])
        del hbuf[:]
        headers = parse_header_block(block, self._header_start, self._dash_boundary)
        self._part_count += 1
        events.append((PART_BEGIN, headers))
        return pos + end - old
