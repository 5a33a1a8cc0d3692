"""dicomaccel.multipart: both implementations (fixture ``multipart_impl``), examples, every split
point, one byte at a time, errors with their offsets, and Hypothesis differential tests against the
stdlib ``email`` parser and between the compiled module and its twin."""

from __future__ import annotations

import array
import email
import importlib
import pickle
import random

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dicomaccel import multipart
from dicomaccel.errors import LimitExceeded, ParseError
from dicomaccel.testing import implementations

PART_BEGIN, PART_DATA, PART_END, CLOSE = 1, 2, 3, 4

_py = implementations("multipart")["py"]
_c = implementations("multipart").get("c")  # None when the compiled module is not in use

# multipart_impl is a module: nothing to reset between examples.
HYPOTHESIS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)


# --- helpers -------------------------------------------------------------------------------------


def scan(impl, pieces, boundary, finish=True, **limits):
    """Feed ``pieces`` and return the events, consecutive PART_DATA joined into one bytes."""
    scanner = impl.MultipartScanner(boundary, **limits)
    events = []
    for piece in pieces:
        for kind, value in scanner.feed(piece):
            if kind == PART_DATA:
                assert isinstance(value, (memoryview, bytes)) and len(value) > 0
                value = bytes(value)
                if events and events[-1][0] == PART_DATA:
                    events[-1] = (PART_DATA, events[-1][1] + value)
                    continue
            events.append((kind, value))
    if finish:
        scanner.finish()
    return events


def parts_of(events):
    """[(headers, data)] from an event list, checking the event grammar on the way."""
    parts, current, closed = [], None, False
    for kind, value in events:
        assert not closed, "event after CLOSE"
        if kind == PART_BEGIN:
            assert current is None
            current = (value, b"")
        elif kind == PART_DATA:
            assert current is not None
            current = (current[0], current[1] + value)
        elif kind == PART_END:
            assert current is not None
            parts.append(current)
            current = None
        else:
            assert kind == CLOSE and current is None
            closed = True
    assert closed
    return parts


def splits(body):
    """Every two-chunk split of ``body``."""
    for i in range(len(body) + 1):
        yield [body[:i], body[i:]]


def error_of(impl, pieces, boundary, kind=ParseError, **limits):
    """(message, offset) of the error scanning ``pieces`` raises, which must be exactly ``kind``."""
    with pytest.raises(ParseError) as info:
        scan(impl, pieces, boundary, **limits)
    assert type(info.value) is kind
    return info.value.message, info.value.offset


def build(boundary, parts, preamble=b"", epilogue=b"\r\n", padding=b""):
    """A body of ``parts`` = [(header lines, data)] in RFC 2046 form."""
    b = boundary.encode() if isinstance(boundary, str) else boundary
    out = [preamble + b"\r\n" if preamble else b""]
    for i, (headers, data) in enumerate(parts):
        out.append((b"--" if i == 0 else b"\r\n--") + b + padding + b"\r\n")
        out.append(b"".join(h + b"\r\n" for h in headers) + b"\r\n" + data)
    out.append(b"\r\n--" + b + b"--" + epilogue)
    return b"".join(out)


# --- examples -------------------------------------------------------------------------------------

BOUNDARY = "8f14e45fceea167a5a36dedd4bea2543"
PART1 = ([b"Content-Type: application/dicom", b"Content-Location: cid:1"], b"DICM\x00\x01\r\n--8f14e45fceea\r\n")
PART2 = ([b"content-type:application/dicom+json "], b"[]")
EXPECTED = [
    ([("content-type", "application/dicom"), ("content-location", "cid:1")], PART1[1]),
    ([("content-type", "application/dicom+json")], b"[]"),
]

EXAMPLE_BODIES = {
    "plain": build(BOUNDARY, [PART1, PART2]),
    "preamble+epilogue": build(BOUNDARY, [PART1, PART2], preamble=b"This is a preamble.\r\n", epilogue=b"\r\nbye\r\n"),
    "padding": build(BOUNDARY, [PART1, PART2], padding=b" \t "),
    "no final CRLF": build(BOUNDARY, [PART1, PART2], epilogue=b""),
}


@pytest.mark.parametrize("body", EXAMPLE_BODIES.values(), ids=EXAMPLE_BODIES.keys())
def test_examples_every_split(multipart_impl, body):
    assert parts_of(scan(multipart_impl, [body], BOUNDARY)) == EXPECTED
    for pieces in splits(body):
        assert parts_of(scan(multipart_impl, pieces, BOUNDARY)) == EXPECTED
    assert parts_of(scan(multipart_impl, [body[i : i + 1] for i in range(len(body))], BOUNDARY)) == EXPECTED


def test_chooser_exports(multipart_impl):
    impl = multipart_impl
    assert (impl.PART_BEGIN, impl.PART_DATA, impl.PART_END, impl.CLOSE) == (1, 2, 3, 4)
    assert multipart.IMPLEMENTATION.startswith("dicomaccel._multipart_")
    for name in multipart.__all__:
        source = multipart._impl if name != "LimitExceeded" else importlib.import_module("dicomaccel.errors")
        assert getattr(multipart, name) is getattr(source, name)
    assert issubclass(multipart.LimitExceeded, ParseError)


def test_event_sequence_and_attributes(multipart_impl):
    body = build("b", [([b"A: 1"], b"x"), ([], b"")], preamble=b"pre", epilogue=b"\r\nepilogue")
    scanner = multipart_impl.MultipartScanner(b"b")
    assert (scanner.offset, scanner.closed, scanner.part_count) == (0, False, 0)
    events = [(k, bytes(v) if k == PART_DATA else v) for k, v in scanner.feed(body)]
    assert events == [
        (PART_BEGIN, [("a", "1")]),
        (PART_DATA, b"x"),
        (PART_END, None),
        (PART_BEGIN, []),
        (PART_END, None),
        (CLOSE, None),
    ]
    assert (scanner.offset, scanner.closed, scanner.part_count) == (len(body), True, 2)
    assert scanner.feed(b"\r\n--b\r\nanything at all") == []  # epilogue
    assert scanner.offset == len(body) + 22
    assert scanner.finish() is None


def test_body_may_start_with_boundary(multipart_impl):
    body = b"--b\r\nA: 1\r\n\r\nx\r\n--b--"
    assert parts_of(scan(multipart_impl, [body], "b")) == [([("a", "1")], b"x")]
    # ... but only at offset 0 or after CRLF: these are preamble.
    body = b"x--b\r\n\n--b\r\n--b\r\n\r\ny\r\n--b--"
    assert parts_of(scan(multipart_impl, [body], "b")) == [([], b"y")]


def test_empty_parts(multipart_impl):
    cases = {
        b"--b\r\n\r\n\r\n--b--": [([], b"")],  # no headers, empty data
        b"--b\r\nA: 1\r\n\r\n\r\n--b--": [([("a", "1")], b"")],  # headers, empty data
        b"--b\r\nA: 1\r\n\r\n--b--": [([("a", "1")], b"")],  # data absent (RFC 2046 body-part grammar)
        b"--b\r\n\r\n--b\r\n\r\n--b--": [([], b""), ([], b"")],
        b"--b--": [],
    }
    for body, expected in cases.items():
        for pieces in splits(body):
            assert parts_of(scan(multipart_impl, pieces, "b")) == expected, pieces


def test_crlf_belongs_to_delimiter(multipart_impl):
    for data in (b"\r\n", b"\r", b"\n", b"x\r\n\r\n", b"\r\n\r\n", b"\r\r\n\n"):
        body = build("b", [([b"A: 1"], data)])
        for pieces in splits(body):
            assert parts_of(scan(multipart_impl, pieces, "b")) == [([("a", "1")], data)]


NEAR_MISSES = [
    b"\r\n--bound",  # prefix of the delimiter at the very end of the data
    b"\r\n--boun\r\n--boun\r\n--bou",
    b"\r\n--boundarz\r\n-",
    b"\r\n--Boundary",  # case matters
    b"x--boundary",  # not after CRLF
    b"\n--boundary",  # LF only: not a delimiter (RFC 2046 requires CRLF)
    b"\r--boundary",
    b"\r\r\n--boundar",
    b"\r\n-\r\n--\r\n--b\r\n--bo",
]


@pytest.mark.parametrize("data", NEAR_MISSES)
def test_near_misses_are_data(multipart_impl, data):
    body = build("boundary", [([b"A: 1"], data), ([b"A: 2"], data + b"tail")])
    expected = [([("a", "1")], data), ([("a", "2")], data + b"tail")]
    for pieces in splits(body):
        assert parts_of(scan(multipart_impl, pieces, "boundary")) == expected
    assert parts_of(scan(multipart_impl, [body[i : i + 1] for i in range(len(body))], "boundary")) == expected


def test_boundary_like_data_at_part_start(multipart_impl):
    # "--boundary" right after the blank line would end the part; a near miss there is data.
    body = b"--b\r\nA: 1\r\n\r\n--c\r\n--b\r\n\r\n-\r\n--b--"
    assert parts_of(scan(multipart_impl, [body], "b")) == [([("a", "1")], b"--c"), ([], b"-")]


def test_quoted_boundary_from_content_type(multipart_impl):
    media, params = multipart_impl.parse_content_type(
        'Multipart/Related ; TYPE = "application/dicom";boundary="gc0p4Jq0M:2Yt08 j(34)=d?"'
    )
    assert media == "multipart/related"
    assert params == {"type": "application/dicom", "boundary": "gc0p4Jq0M:2Yt08 j(34)=d?"}
    body = build(params["boundary"], [PART1, PART2])
    for pieces in splits(body):
        assert parts_of(scan(multipart_impl, pieces, params["boundary"])) == EXPECTED


def test_headers(multipart_impl):
    block = b"Content-Type:  application/dicom ;\r\n transfer-syntax=1.2.840.10008.1.2.1\r\n" b"X-Name: J\xf6rg\r\nEMPTY:\r\n"
    body = b"--b\r\n" + block + b"\r\n\r\n--b--"
    assert parts_of(scan(multipart_impl, [body], "b")) == [
        (
            [
                ("content-type", "application/dicom ; transfer-syntax=1.2.840.10008.1.2.1"),
                ("x-name", "J\xf6rg"),
                ("empty", ""),
            ],
            b"",
        )
    ]


def test_data_is_zero_copy_view_of_chunk(multipart_impl):
    payload = bytes(range(256)) * 1024
    head = b"--b\r\nContent-Type: application/octet-stream\r\n\r\n"
    for chunk_type in (bytes, bytearray):
        scanner = multipart_impl.MultipartScanner("b")
        first = chunk_type(head + payload[:1000])
        events = scanner.feed(first)
        assert events[1][0] == PART_DATA
        view = events[1][1]
        assert isinstance(view, memoryview) and view.obj is first and bytes(view) == payload[:1000]
        second = chunk_type(payload[1000:] + b"\r\n--b--")
        events = scanner.feed(second)
        assert [k for k, _ in events] == [PART_DATA, PART_END, CLOSE]
        assert isinstance(events[0][1], memoryview) and events[0][1].obj is second
        assert bytes(events[0][1]) == payload[1000:]


def test_held_back_bytes(multipart_impl):
    scanner = multipart_impl.MultipartScanner("boundary")
    scanner.feed(b"--boundary\r\n\r\nabc\r\n--bound")
    events = scanner.feed(b"Xyz" * 100)
    held = events[0][1]
    assert type(held) is bytes and held == b"\r\n--bound"
    assert len(held) <= len(b"\r\n--boundary") - 1
    assert isinstance(events[1][1], memoryview) and bytes(events[1][1]) == b"Xyz" * 100


def test_any_contiguous_buffer(multipart_impl):
    body = build("b", [([b"A: 1"], b"0123456789")])
    words = array.array("H", body + (b"\0" if len(body) % 2 else b""))
    pieces = [memoryview(body)[:7], bytearray(body[7:20]), memoryview(body[20:]).cast("c")]
    assert parts_of(scan(multipart_impl, pieces, "b")) == [([("a", "1")], b"0123456789")]
    scanner = multipart_impl.MultipartScanner("b")
    events = scanner.feed(words)
    assert (PART_DATA, b"0123456789") in [(k, bytes(v) if k == PART_DATA else v) for k, v in events]
    with pytest.raises(TypeError):
        multipart_impl.MultipartScanner("b").feed(memoryview(body)[::2])
    with pytest.raises(TypeError):
        multipart_impl.MultipartScanner("b").feed("--b\r\n")


def test_limits_at_the_edge(multipart_impl):
    block = b"A: 12345\r\n\r\n"
    body = b"--b\r\n" + block + b"x\r\n--b\r\n" + block + b"y\r\n--b--"
    ok = parts_of(scan(multipart_impl, [body], "b", max_header_size=len(block), max_parts=2))
    assert ok == [([("a", "12345")], b"x"), ([("a", "12345")], b"y")]
    for pieces in splits(body):
        assert error_of(multipart_impl, pieces, "b", LimitExceeded, max_header_size=len(block) - 1) == (
            f"part headers longer than {len(block) - 1} bytes",
            5 + len(block) - 1,
        )
        assert error_of(multipart_impl, pieces, "b", LimitExceeded, max_parts=1) == (
            "more than 1 parts",
            body.index(b"y") - len(block),
        )


# --- errors ---------------------------------------------------------------------------------------

ERRORS = [
    # (body, expected message, offset)
    (b"--bX\r\n", "expected '--', padding or CRLF after the boundary, found b'X'", 3),
    (b"--b -\r\n", "expected padding or CRLF after the boundary, found b'-'", 4),
    (b"--b-x", "expected '-' after '--boundary-', found b'x'", 4),
    (b"--b-\r\n", "expected '-' after '--boundary-', found b'\\r'", 4),
    (b"--b\rx", "expected LF after CR in a boundary line, found b'x'", 4),
    (b"--b\r\nA: 1\r\n\r\nx\r\n--bb\r\n", "expected '--', padding or CRLF after the boundary, found b'b'", 19),
    (b"--b\r\nA: 1\r\nnocolon\r\n\r\n", "header line without ':'", 11),
    (b"--b\r\n: 1\r\n\r\n", "empty header name", 5),
    (b"--b\r\nA: 1\nB: 2\r\n\r\n", "bare LF in part headers", 9),
    (b"--b\r\nA: 1\rB: 2\r\n\r\n", "bare CR in part headers", 9),
    (b"--b\r\n folded\r\n\r\n", "folded header line before any header", 5),
    (b"--b\r\nA: 1\r\n--b--\r\n\r\n", "boundary inside part headers (the headers never ended)", 11),
    (b"--b:c\r\nA: 1\r\n--b:c\r\n\r\n", "boundary inside part headers (the headers never ended)", 13),
]

FINISH_ERRORS = [
    (b"", "body ended before the first boundary"),
    (b"preamble\r\n--", "body ended before the first boundary"),
    (b"--b", "body ended inside a boundary line"),
    (b"--b \t", "body ended inside a boundary line"),
    (b"--b-", "body ended inside a boundary line"),
    (b"--b\r\nA: 1\r\n", "body ended inside part headers"),
    (b"--b\r\nA: 1\r\n--b--\r\n", "body ended inside part headers"),
    (b"--b\r\nA: 1\r\n\r\ndata", "body ended before the close delimiter"),
    (b"--b\r\nA: 1\r\n\r\ndata\r\n--b", "body ended inside a boundary line"),
    (b"--b\r\nA: 1\r\n\r\ndata\r\n--", "body ended before the close delimiter"),
]


@pytest.mark.parametrize("body, message, offset", ERRORS)
def test_errors(multipart_impl, body, message, offset):
    boundary = "b:c" if body.startswith(b"--b:c") else "b"
    for pieces in splits(body):
        assert error_of(multipart_impl, pieces, boundary) == (message, offset)
    assert error_of(multipart_impl, [body[i : i + 1] for i in range(len(body))], boundary) == (message, offset)


@pytest.mark.parametrize("body, message", FINISH_ERRORS)
def test_finish_errors(multipart_impl, body, message):
    for pieces in splits(body):
        assert error_of(multipart_impl, pieces, "b") == (message, len(body))


@pytest.mark.parametrize(
    "body, limits, kind, message, offset",
    [
        (b"--bX", {}, ParseError, "expected '--', padding or CRLF after the boundary, found b'X'", 3),
        (b"--b\r\n\r\nx\r\n--b\r\n", {"max_parts": 1}, LimitExceeded, "more than 1 parts", 15),
    ],
)
def test_errors_are_sticky(multipart_impl, body, limits, kind, message, offset):
    scanner = multipart_impl.MultipartScanner("b", **limits)
    with pytest.raises(ParseError) as first:
        scanner.feed(body)
    for call in (lambda: scanner.feed(b"\r\n"), scanner.finish, scanner.finish):
        with pytest.raises(ParseError) as again:
            call()
        assert type(again.value) is type(first.value) is kind
        assert (again.value.message, again.value.offset) == (first.value.message, first.value.offset) == (message, offset)
        assert again.value.events == []  # the repeats produce nothing
    assert isinstance(first.value, ValueError) and f"(at byte {offset})" in str(first.value)
    assert scanner.offset == 0  # the failing chunk is not counted as consumed


def test_limit_exceeded_pickles():
    err = pickle.loads(pickle.dumps(LimitExceeded("more than 1 parts", 15)))
    assert type(err) is LimitExceeded and (err.message, err.offset) == ("more than 1 parts", 15)


def test_finish_error_has_no_events(multipart_impl):
    scanner = multipart_impl.MultipartScanner("b")
    assert [k for k, _ in scanner.feed(b"--b\r\n\r\nxyz")] == [PART_BEGIN, PART_DATA]
    with pytest.raises(ParseError) as info:
        scanner.finish()
    assert type(info.value) is ParseError and info.value.events == []


# --- errors keep the events produced before them ----------------------------------------------------

# Two complete parts, the second empty; its PART_END comes when the final "\r\n--b" is read.
GOOD = b"--b\r\nA: 1\r\n\r\nxyz\r\n--b\r\nA: 2\r\n\r\n\r\n--b"
GOOD_EVENTS = [
    (PART_BEGIN, [("a", "1")]),
    (PART_DATA, b"xyz"),
    (PART_END, None),
    (PART_BEGIN, [("a", "2")]),
    (PART_END, None),
]
# (bad tail after GOOD, scanner limits, error type, message, offset from the end of GOOD)
BAD_TAILS = {
    "delimiter": (b"X\r\n\r\n", {}, ParseError, "expected '--', padding or CRLF after the boundary, found b'X'", 0),
    "header": (b"\r\nno colon\r\n\r\n", {}, ParseError, "header line without ':'", 2),
    "max_parts": (b"\r\nA: 3\r\n\r\nz\r\n--b--", {"max_parts": 2}, LimitExceeded, "more than 2 parts", 2),
    "max_header_size": (
        b"\r\nA: 33333\r\n\r\nz\r\n--b--",
        {"max_header_size": 9},  # the blocks of GOOD are 8 bytes, this one 12
        LimitExceeded,
        "part headers longer than 9 bytes",
        2 + 9,
    ),
}


def _norm(events):
    return [(kind, bytes(value) if kind == PART_DATA else value) for kind, value in events]


def trace(impl, pieces, boundary, **limits):
    """Each call's outcome: ("ok", events) per feed, then ("raised", type, message, offset, events) at
    the first error (from feed or finish). Data as bytes, not joined."""
    scanner = impl.MultipartScanner(boundary, **limits)
    calls = []
    try:
        for piece in pieces:
            calls.append(("ok", _norm(scanner.feed(piece))))
        scanner.finish()
    except ParseError as exc:
        calls.append(("raised", type(exc), exc.message, exc.offset, _norm(exc.events)))
    return calls


def _outcome(impl, pieces, boundary, **limits):
    """What does not depend on chunking: all events (data joined), those an error carries included,
    and the error."""
    events, error = [], None
    for call in trace(impl, pieces, boundary, **limits):
        if call[0] == "raised":
            error = call[1:4]
        for kind, value in call[-1]:
            if kind == PART_DATA and events and events[-1][0] == PART_DATA:
                events[-1] = (PART_DATA, events[-1][1] + value)
            else:
                events.append((kind, value))
    return events, error


@pytest.mark.parametrize("tail, limits, kind, message, at", BAD_TAILS.values(), ids=BAD_TAILS.keys())
def test_error_keeps_complete_parts(multipart_impl, tail, limits, kind, message, at):
    body = GOOD + tail
    scanner = multipart_impl.MultipartScanner("b", **limits)
    with pytest.raises(kind) as info:
        scanner.feed(body)
    err = info.value
    assert (type(err), err.message, err.offset) == (kind, message, len(GOOD) + at)
    assert _norm(err.events) == GOOD_EVENTS  # one chunk: everything complete rides on the error
    assert all(v.obj is body for k, v in err.events if k == PART_DATA)  # zero-copy, still valid
    expected = (GOOD_EVENTS, (kind, message, len(GOOD) + at))
    # Every split point: what feed returned plus what the error carries is all that was complete.
    for i in range(len(body) + 1):
        assert _outcome(multipart_impl, [body[:i], body[i:]], "b", **limits) == expected, i
    assert _outcome(multipart_impl, [body[i : i + 1] for i in range(len(body))], "b", **limits) == expected


@pytest.mark.parametrize("tail, limits, kind, message, at", BAD_TAILS.values(), ids=BAD_TAILS.keys())
def test_error_events_compiled_matches_twin(tail, limits, kind, message, at):
    """Call by call, at every split point: the same events returned, the same error, the same events on it."""
    if _c is None:
        pytest.skip("compiled kernel not built")
    body = GOOD + tail
    for i in range(len(body) + 1):
        for pieces in ([body[:i], body[i:]], [body[:i], body[i : i + 5], body[i + 5 :]]):
            twin = trace(_py, pieces, "b", **limits)
            assert twin[-1][:4] == ("raised", kind, message, len(GOOD) + at)
            assert trace(_c, pieces, "b", **limits) == twin, pieces


@pytest.mark.parametrize(
    "boundary",
    ["", "x" * 71, "a b ", "a\tb", "caf\xe9", b"a\r\nb", b'"quoted"', "semi;colon", "back\\slash"],
)
def test_invalid_boundary(multipart_impl, boundary):
    with pytest.raises(ValueError):
        multipart_impl.MultipartScanner(boundary)


def test_boundary_types_and_limits(multipart_impl):
    for boundary in ("x" * 70, b"'()+_,-./:=? 0aZ", bytearray(b"a")):
        multipart_impl.MultipartScanner(boundary)
    with pytest.raises(TypeError):
        multipart_impl.MultipartScanner(1234)
    for limits in ({"max_header_size": 0}, {"max_parts": 0}):
        with pytest.raises(ValueError):
            multipart_impl.MultipartScanner("b", **limits)


CONTENT_TYPES = [
    ('multipart/related; type="application/dicom"; boundary=abc', ("multipart/related", {"type": "application/dicom", "boundary": "abc"})),
    ("  MULTIPART/RELATED\t;\tBoundary\t=\tabc\t", ("multipart/related", {"boundary": "abc"})),
    ('multipart/related;boundary="a\\"b\\\\c";type=application/dicom', ("multipart/related", {"boundary": 'a"b\\c', "type": "application/dicom"})),
    ("multipart/related; boundary=----=_Part_0_12.34", ("multipart/related", {"boundary": "----=_Part_0_12.34"})),
    ('application/dicom; transfer-syntax="1.2.840.10008.1.2.4.50" ;', ("application/dicom", {"transfer-syntax": "1.2.840.10008.1.2.4.50"})),
    ('a/b;; c="" ; ;', ("a/b", {"c": ""})),
    ("a/b", ("a/b", {})),
    (b"multipart/related; boundary=\xe9", ("multipart/related", {"boundary": "\xe9"})),
]

CONTENT_TYPE_ERRORS = [
    ("", "empty media type", 0),
    ("   ; boundary=x", "empty media type", 3),
    ("multipart", "expected a media type of the form type/subtype", 0),
    (" multipart/ ; a=b", "empty type or subtype in media type", 10),
    ("/related", "empty type or subtype in media type", 0),
    ("multi part/related", "invalid character ' ' in media type", 5),
    ("a/b; boundary", "expected '=' after parameter name", 13),
    ("a/b; boundary; type=x", "expected '=' after parameter name", 13),
    ("a/b; =x", "empty parameter name", 5),
    ("a/b; bo undary=x", "invalid character ' ' in parameter name", 7),
    ('a/b; boundary="abc', "unterminated quoted string", 14),
    ('a/b; boundary="abc\\', "unterminated quoted string", 14),
    ('a/b; boundary="abc"def', "expected ';' after quoted parameter value", 19),
    ("a/b; boundary=", "empty parameter value", 14),
    ("a/b; boundary= ; x=y", "empty parameter value", 15),
    ('a/b; boundary=ab"c"', "unexpected '\"' in unquoted parameter value", 16),
    ("a/b; boundary=x; BOUNDARY=y", "duplicate parameter 'boundary'", 17),
]


@pytest.mark.parametrize("value, expected", CONTENT_TYPES)
def test_parse_content_type(multipart_impl, value, expected):
    assert multipart_impl.parse_content_type(value) == expected


@pytest.mark.parametrize("value, message, offset", CONTENT_TYPE_ERRORS)
def test_parse_content_type_errors(multipart_impl, value, message, offset):
    with pytest.raises(ParseError) as info:
        multipart_impl.parse_content_type(value)
    assert (info.value.message, info.value.offset) == (message, offset)


@pytest.mark.parametrize("size", [0, 1, 65536, 1 << 20])
def test_body_buffer(multipart_impl, size):
    """A writable bytearray of the size asked for (its bytes are unspecified until written)."""
    buf = multipart_impl.body_buffer(size)
    assert type(buf) is bytearray and len(buf) == size
    view = memoryview(buf)
    view[:] = b"\xa5" * size
    assert buf == b"\xa5" * size


def test_body_buffer_negative(multipart_impl):
    with pytest.raises(ValueError, match="negative buffer size -1"):
        multipart_impl.body_buffer(-1)


# --- Hypothesis: against the stdlib email parser ---------------------------------------------------

BCHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? "
boundaries = st.text(BCHARS, min_size=1, max_size=70).filter(lambda b: not b.endswith(" "))
# Small alphabets make CR, LF, '-' and boundary characters collide often.
octets = st.binary(max_size=120) | st.lists(st.sampled_from([b"\r", b"\n", b"-", b"--", b"a", b"\r\n", b"\x00", b"\xff"]), max_size=40).map(b"".join)
tokens = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1, max_size=12)
header_values = st.text("abcdefghijklmnopqrstuvwxyz0123456789/.;=+ -\"", min_size=1, max_size=30).map(str.strip).filter(bool)
header_lists = st.lists(
    st.tuples(st.sampled_from(["Content-Type", "Content-Location", "Content-ID", "X-Custom"]), header_values),
    max_size=3,
)
parts_strategy = st.lists(st.tuples(header_lists, octets), min_size=1, max_size=4)


def _cuts(draw_list, size):
    return sorted({min(c, size) for c in draw_list})


def _pieces(body, cuts):
    edges = [0, *cuts, len(body)]
    return [body[a:b] for a, b in zip(edges, edges[1:])]


def _safe(data, boundary):
    """RFC 2046: no line of the encapsulated text may start with the boundary (email splits lines at CR or LF)."""
    dash = b"--" + boundary
    return not data.startswith(dash) and b"\r" + dash not in data and b"\n" + dash not in data


@HYPOTHESIS
@given(
    boundary=boundaries,
    parts=parts_strategy,
    preamble=octets,
    epilogue=st.sampled_from([b"", b"\r\n", b"\r\nsome epilogue\r\n", b"  \r\n--x"]),
    padding=st.sampled_from([b"", b" ", b"\t \t"]),
    cuts=st.lists(st.integers(0, 2000), max_size=6),
)
def test_against_email_parser(multipart_impl, boundary, parts, preamble, epilogue, padding, cuts):
    raw = boundary.encode()
    assume(all(_safe(data, raw) for _, data in parts) and _safe(preamble, raw))
    encoded = [([f"{n}: {v}".encode() for n, v in headers], data) for headers, data in parts]
    body = build(raw, encoded, preamble=preamble, epilogue=epilogue, padding=padding)
    message = email.message_from_bytes(b'Content-Type: multipart/related; boundary="' + raw + b'"\r\n\r\n' + body)
    reference = [
        ([(k.lower(), v) for k, v in sub.items()], sub.get_payload(decode=True)) for sub in message.get_payload()
    ]
    assert reference == [([(n.lower(), v) for n, v in headers], data) for headers, data in parts]  # the oracle agrees
    assert parts_of(scan(multipart_impl, _pieces(body, _cuts(cuts, len(body))), boundary)) == reference


# --- Hypothesis: compiled module against its twin ---------------------------------------------------


@HYPOTHESIS
@given(
    boundary=st.sampled_from(["b", "b:c", "8f14e45fceea167a5a36dedd4bea2543"]),
    parts=parts_strategy,
    mutations=st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from([b"", b"\r", b"\n", b"-", b"--", b" ", b":", b"b"])), max_size=3),
    cuts=st.lists(st.integers(0, 2000), max_size=6),
    limits=st.sampled_from([{}, {"max_header_size": 40}, {"max_parts": 2}]),
)
def test_compiled_matches_twin(boundary, parts, mutations, cuts, limits):
    if _c is None:
        pytest.skip("compiled kernel not built")
    encoded = [([f"{n}: {v}".encode() for n, v in headers], data) for headers, data in parts]
    body = bytearray(build(boundary.encode(), encoded))
    for where, insert in mutations:  # damage the body: errors must agree too
        where %= len(body) + 1
        body[where : where + (0 if insert else 1)] = insert
    body = bytes(body)
    pieces = _pieces(body, _cuts(cuts, len(body)))
    assert trace(_c, pieces, boundary, **limits) == trace(_py, pieces, boundary, **limits)
    twin = _outcome(_py, pieces, boundary, **limits)
    # Chunking changes neither the events (data joined) nor the error and its offset.
    assert _outcome(_py, [body], boundary, **limits) == twin
    assert _outcome(_c, [body[i : i + 1] for i in range(len(body))], boundary, **limits) == twin


@HYPOTHESIS
@given(
    text=st.lists(st.sampled_from([b"A", b"b", b":", b" ", b"\t", b"\r", b"\n", b"\r\n", b"--b", b"\xe9", b"X-Y"]), max_size=30).map(b"".join),
    cuts=st.lists(st.integers(0, 100), max_size=3),
)
def test_header_blocks_match_twin(text, cuts):
    """Header-block parsing is compiled separately from the twin's: same headers, same errors."""
    if _c is None:
        pytest.skip("compiled kernel not built")
    body = b"--b\r\n" + text + b"\r\n\r\nx\r\n--b--"
    pieces = _pieces(body, _cuts(cuts, len(body)))
    assert _outcome(_c, pieces, "b") == _outcome(_py, pieces, "b")


@settings(HYPOTHESIS, max_examples=40)
@given(seed=st.integers(0, 2**32 - 1), chunk=st.sampled_from([65536, 4096, 1000, 77]))
def test_large_bodies_with_near_misses(multipart_impl, seed, chunk):
    """Kilobyte-sized parts take the vectorised search path; near misses sit at every alignment."""
    rng = random.Random(seed)
    boundary = rng.choice(["a", "xyz", "8f14e45fceea167a5a36dedd4bea2543", "q" * 70])
    delim = b"\r\n--" + boundary.encode()
    parts = []
    for _ in range(rng.randint(1, 4)):
        data = bytearray(rng.randbytes(rng.randint(0, 5000)))
        for _ in range(rng.randint(0, 20)):
            where = rng.randint(0, len(data))
            data[where:where] = delim[: rng.randint(1, len(delim) - 1)] + rng.choice([b"", b"!", b"\r"])
        data = bytes(data)
        if not _safe(data, boundary.encode()) or delim in data:
            continue
        parts.append(([b"Content-Type: application/octet-stream"], data))
    assume(parts)
    body = build(boundary, parts, preamble=rng.randbytes(rng.randint(0, 100)).replace(b"\r", b"."))
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    expected = [([("content-type", "application/octet-stream")], data) for _, data in parts]
    set_level = getattr(multipart_impl, "_set_simd_level", None)
    if set_level is None:
        assert parts_of(scan(multipart_impl, pieces, boundary)) == expected
        return
    best = multipart_impl._simd_level()
    try:
        for level in range(best + 1):  # scalar, SSE2, AVX2: as far as this CPU goes
            assert set_level(level) == level
            assert parts_of(scan(multipart_impl, pieces, boundary)) == expected, level
    finally:
        set_level(best)
