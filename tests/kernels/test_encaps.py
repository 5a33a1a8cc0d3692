"""dicomaccel.encaps kernels (PS3.5 A.4): both implementations, checked against pydicom.

Values are built here with test-local helpers (or pydicom's own itemizer), never with the
module under test, except in the explicit round-trip tests.
"""

from __future__ import annotations

import mmap
import struct
import warnings
from array import array

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.encaps import (
    encapsulate as pd_encapsulate,
    encapsulate_extended as pd_encapsulate_extended,
    fragment_frame,
    generate_fragments,
    generate_frames,
    get_frame,
    itemize_fragment,
    parse_basic_offsets,
)

from dicomaccel.errors import ParseError
from dicomaccel.testing import implementations

ITEM = b"\xfe\xff\x00\xe0"
SDI = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
PIXEL_DATA_HEADER = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"
PREFIX = b"\x99" * 6  # puts the value at a non-zero absolute offset
HYPOTHESIS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def item(value: bytes = b"", length: int | None = None, tag: bytes = ITEM) -> bytes:
    return tag + struct.pack("<I", len(value) if length is None else length) + value


def bot_for(frames: list[list[bytes]]) -> list[int]:
    """BOT values: offset of each frame's first item tag from the first item after the BOT."""
    offsets, pos = [], 0
    for fragments in frames:
        offsets.append(pos)
        pos += sum(8 + len(f) for f in fragments)
    return offsets


def value_of(fragments: list[bytes], bot: list[int] = ()) -> bytes:
    return item(struct.pack(f"<{len(bot)}I", *bot)) + b"".join(map(item, fragments)) + SDI


def frames_of(ef) -> list[bytes]:
    return [bytes(ef.frame(k)) for k in range(ef.number_of_frames)]


def eot_for(frames: list[bytes]) -> tuple[bytes, bytes]:
    starts = bot_for([[f] for f in frames])
    return (
        struct.pack(f"<{len(frames)}Q", *starts),
        struct.pack(f"<{len(frames)}Q", *map(len, frames)),
    )


def outcome(call):
    """Result (as plain lists) or (exception type, message, offset) of ``call()``."""
    try:
        result = call()
    except Exception as exc:  # noqa: BLE001 - comparing exact exception identity
        return type(exc).__name__, str(exc), getattr(exc, "offset", None)
    return result


def compiled_module():
    module = implementations("encaps").get("c")
    if module is None:
        pytest.skip("dicomaccel._encaps_c is not in use")
    return module


# --------------------------------------------------------------------------- parse_items


def test_parse_items_absolute_offsets(encaps_impl):
    value = value_of([b"abcd", b"", b"\x01\x02"], bot=[0, 20])
    buffer = PREFIX + value + b"trailing junk"
    basic, offsets, lengths, end = encaps_impl.parse_items(buffer, len(PREFIX), len(PREFIX) + len(value))
    assert basic == array("Q", [0, 20]) and basic.typecode == "Q"
    assert offsets.typecode == "q" and lengths.typecode == "q"
    first = len(PREFIX) + 16 + 8  # BOT item (8 + 8 bytes), then the first item header
    assert list(offsets) == [first, first + 12, first + 20]
    assert list(lengths) == [4, 0, 2]
    assert end == len(PREFIX) + len(value)
    assert buffer[offsets[0] : offsets[0] + lengths[0]] == b"abcd"


def test_parse_items_accepts_buffers(encaps_impl):
    value = value_of([b"ab" * 3])
    expected = encaps_impl.parse_items(value)
    assert encaps_impl.parse_items(bytearray(value)) == expected
    assert encaps_impl.parse_items(memoryview(value)) == expected
    assert encaps_impl.parse_items(array("B", value)) == expected
    # Non-byte formats are read as their bytes.
    assert encaps_impl.parse_items(memoryview(value).cast("H")) == expected
    with pytest.raises(TypeError, match="C-contiguous"):
        encaps_impl.parse_items(memoryview(value + value)[::2])


def test_parse_items_zero_fragments_allowed(encaps_impl):
    basic, offsets, lengths, end = encaps_impl.parse_items(item() + SDI)
    assert (len(basic), len(offsets), len(lengths), end) == (0, 0, 0, 16)


@pytest.mark.parametrize(
    ("offset", "end", "message"),
    [
        (0, 100, "end 100 outside the buffer (0..24)"),
        (0, -2, "end -2 outside the buffer (0..24)"),
        (-1, -1, "offset -1 outside 0..24"),
        (10, 5, "offset 10 outside 0..5"),
        (2**70, -1, f"offset {2**70} outside 0..24"),
    ],
)
def test_parse_items_bounds(encaps_impl, offset, end, message):
    with pytest.raises(ValueError) as info:
        encaps_impl.parse_items(value_of([]) + SDI, offset, end)
    assert str(info.value) == message
    assert not isinstance(info.value, ParseError)


MALFORMED = [
    # (value after PREFIX, message, offset relative to the value)
    (b"", "truncated item header: expected 8 bytes, found 0", 0),
    (ITEM + b"\x00\x00", "truncated item header: expected 8 bytes, found 6", 0),
    (
        PIXEL_DATA_HEADER,
        "expected Basic Offset Table item tag (FFFE,E000), found (7FE0,0010)",
        0,
    ),
    (SDI, "expected Basic Offset Table item tag (FFFE,E000), found (FFFE,E0DD)", 0),
    (
        item(length=0xFFFFFFFF) + SDI,
        "undefined item length (0xFFFFFFFF); encapsulated items must have a defined length",
        0,
    ),
    (item(length=16) + b"\x00" * 4, "item length 16 exceeds the 4 bytes remaining", 0),
    (item(b"\x00" * 6) + SDI, "Basic Offset Table length 6 is not a multiple of 4", 0),
    (
        item() + PIXEL_DATA_HEADER,
        "expected item tag (FFFE,E000) or Sequence Delimitation Item (FFFE,E0DD), found (7FE0,0010)",
        8,
    ),
    (
        item() + item(b"ab") + item(length=0xFFFFFFFF) + SDI,
        "undefined item length (0xFFFFFFFF); encapsulated items must have a defined length",
        18,
    ),
    (item() + item(length=0x80000000) + SDI, "item length 2147483648 exceeds the 8 bytes remaining", 8),
    (item() + item(b"abc") + SDI, "odd fragment length 3; fragment items have even length", 8),
    (item() + item(b"ab") + SDI[:5], "truncated item header: expected 8 bytes, found 5", 18),
    (
        item() + item(b"ab"),
        "no Sequence Delimitation Item (FFFE,E0DD) before the end of the data",
        18,
    ),
    (item() + item(b"ab") + SDI[:4] + b"\x02\x00\x00\x00", "Sequence Delimitation Item has length 2, expected 0", 18),
]


@pytest.mark.parametrize(("value", "message", "offset"), MALFORMED)
def test_parse_items_malformed(encaps_impl, value, message, offset):
    for call in (
        lambda: encaps_impl.parse_items(PREFIX + value, len(PREFIX)),
        lambda: encaps_impl.EncapsulatedFrames(PREFIX + value, 1, offset=len(PREFIX)),
    ):
        with pytest.raises(ParseError) as info:
            call()
        assert info.value.message == message
        assert info.value.offset == len(PREFIX) + offset
        assert str(info.value) == f"{message} (at byte {len(PREFIX) + offset})"


def test_parse_items_end_limits_the_walk(encaps_impl):
    value = value_of([b"ab", b"cd"])
    # The delimiter lies past `end`: the walk must not read it.
    with pytest.raises(ParseError, match="no Sequence Delimitation Item") as info:
        encaps_impl.parse_items(value, 0, len(value) - 8)
    assert info.value.offset == len(value) - 8
    with pytest.raises(ParseError, match="item length 2 exceeds the 1 bytes remaining"):
        encaps_impl.parse_items(value, 0, 8 + 8 + 1)


# ------------------------------------------------------------- parse_extended_offset_table


def test_parse_extended_offset_table(encaps_impl):
    offsets, lengths = encaps_impl.parse_extended_offset_table(
        struct.pack("<3Q", 0, 10, 2**63 + 5), bytearray(struct.pack("<3Q", 2, 4, 6))
    )
    assert offsets == array("Q", [0, 10, 2**63 + 5]) and offsets.typecode == "Q"
    assert lengths == array("Q", [2, 4, 6]) and lengths.typecode == "Q"
    assert encaps_impl.parse_extended_offset_table(b"", b"") == (array("Q"), array("Q"))


@pytest.mark.parametrize(
    ("offsets", "lengths", "message"),
    [
        (b"\x00" * 12, b"\x00" * 8, "Extended Offset Table length 12 is not a multiple of 8"),
        (b"\x00" * 8, b"\x00" * 7, "Extended Offset Table Lengths length 7 is not a multiple of 8"),
        (
            b"\x00" * 16,
            b"\x00" * 8,
            "Extended Offset Table has 2 entries but Extended Offset Table Lengths has 1",
        ),
    ],
)
def test_parse_extended_offset_table_errors(encaps_impl, offsets, lengths, message):
    with pytest.raises(ParseError) as info:
        encaps_impl.parse_extended_offset_table(offsets, lengths)
    assert (info.value.message, info.value.offset) == (message, 0)


# ------------------------------------------------------------------------- frame mapping


def test_mapping_basic(encaps_impl):
    frames = [[b"a0", b"a1a1"], [b"b0"], [b"c0", b"c1", b"c2"]]
    value = value_of([f for fr in frames for f in fr], bot=bot_for(frames))
    ef = encaps_impl.EncapsulatedFrames(PREFIX + value, 3, offset=len(PREFIX))
    assert ef.mapping == "basic"
    assert ef.number_of_frames == 3
    assert list(ef.basic_offsets) == [0, 22, 32]
    assert ef.frame_fragments == array("q", [0, 2, 3, 6])
    assert frames_of(ef) == [b"a0a1a1", b"b0", b"c0c1c2"]
    start = len(PREFIX) + 8 + 12 + 8
    assert ef.fragment_ranges(0) == [(start, start + 2), (start + 10, start + 14)]
    assert ef.end_offset == len(PREFIX) + len(value)


def test_mapping_one_to_one(encaps_impl):
    ef = encaps_impl.EncapsulatedFrames(value_of([b"aa", b"bbbb", b"cc"]), 3)
    assert ef.mapping == "one-to-one"
    assert ef.frame_fragments == array("q", [0, 1, 2, 3])
    assert frames_of(ef) == [b"aa", b"bbbb", b"cc"]


def test_mapping_single_frame(encaps_impl):
    ef = encaps_impl.EncapsulatedFrames(value_of([b"aa", b"bb", b"cc"]), 1)
    assert ef.mapping == "single-frame"
    assert ef.frame_fragments == array("q", [0, 3])
    assert frames_of(ef) == [b"aabbcc"]


def test_mapping_single_fragment_single_frame(encaps_impl):
    ef = encaps_impl.EncapsulatedFrames(value_of([b"aa"]), 1)
    assert ef.mapping == "one-to-one"
    assert frames_of(ef) == [b"aa"]


def test_mapping_markers(encaps_impl):
    # JPEG EOI, JPEG 2000 EOC with 00 padding, and a lone FF D9 fragment.
    fragments = [b"\xff\xd8..", b"..\xff\xd9", b"\xffO\xffQ\xff\xd9\x00\x00", b"xx", b"\xff\xd9"]
    ef = encaps_impl.EncapsulatedFrames(value_of(fragments), 3)
    assert ef.mapping == "markers"
    assert ef.frame_fragments == array("q", [0, 2, 3, 5])
    assert frames_of(ef) == [b"\xff\xd8....\xff\xd9", fragments[2], b"xx\xff\xd9"]


def test_mapping_extended(encaps_impl):
    frames = [b"aaaa", b"bb", b"cccccc"]
    value = value_of(frames)
    raw_offsets, raw_lengths = eot_for(frames)
    decoded = encaps_impl.parse_extended_offset_table(raw_offsets, raw_lengths)
    for offsets, lengths in [
        (raw_offsets, raw_lengths),
        decoded,
        (list(decoded[0]), tuple(decoded[1])),
        (memoryview(raw_offsets), bytearray(raw_lengths)),
    ]:
        ef = encaps_impl.EncapsulatedFrames(
            PREFIX + value, 3, offset=len(PREFIX), extended_offsets=offsets, extended_lengths=lengths
        )
        assert ef.mapping == "extended"
        assert ef.frame_fragments == array("q", [0, 1, 2, 3])
        assert frames_of(ef) == frames


def test_extended_wins_over_one_to_one_and_basic(encaps_impl):
    # A BOT should be empty next to an EOT (PS3.3 C.7.6.3.1.8); the EOT is still preferred.
    frames = [b"aa", b"bb"]
    value = value_of(frames, bot=[0, 10])
    offsets, lengths = eot_for(frames)
    ef = encaps_impl.EncapsulatedFrames(value, 2, extended_offsets=offsets, extended_lengths=lengths)
    assert ef.mapping == "extended"
    assert frames_of(ef) == frames


MAPPING_ERRORS = [
    # (fragments, bot, number_of_frames, eot (offsets, lengths) or None, message, offset)
    ([b"aa"], [], 2, None, "fewer fragments (1) than frames (2)", 8),
    ([], [], 1, None, "fewer fragments (0) than frames (1)", 8),
    ([b"aa", b"bb"], [0, 10], 3, None, "Basic Offset Table has 2 entries, expected 3 (Number of Frames)", 0),
    ([b"aa", b"bb"], [0, 10], 1, None, "Basic Offset Table has 2 entries, expected 1 (Number of Frames)", 0),
    ([b"aa", b"bb"], [2, 10], 2, None, "Basic Offset Table entry 0 is 2, expected 0", 8),
    ([b"aa", b"bb"], [0, 0], 2, None, "Basic Offset Table entry 1 (0) is not greater than entry 0 (0)", 12),
    ([b"aa", b"bb"], [0, 4], 2, None, "Basic Offset Table entry 1 (4) does not point at a fragment item tag", 12),
    ([b"aa", b"bb"], [0, 20], 2, None, "Basic Offset Table entry 1 (20) does not point at a fragment item tag", 12),
    ([], [0], 1, None, "Basic Offset Table entry 0 (0) does not point at a fragment item tag", 8),
    (
        [b"aa", b"bb", b"cc"],
        [],
        2,
        None,
        "end-of-image markers (FF D9) delimit 0 frames, expected 2, with 3 fragments left over",
        8,
    ),
    (
        [b"\xff\xd9", b"aa", b"bb"],
        [],
        2,
        None,
        "end-of-image markers (FF D9) delimit 1 frames, expected 2, with 2 fragments left over",
        18,
    ),
    (
        [b"\xff\xd9", b"\xff\xd9", b"aa"],
        [],
        2,
        None,
        "end-of-image markers (FF D9) delimit 2 frames, expected 2, with 1 fragments left over",
        28,
    ),
    (
        [b"\xff\xd9", b"\xff\xd9", b"\xff\xd9"],
        [],
        2,
        None,
        "end-of-image markers (FF D9) delimit more than 2 frames",
        28,
    ),
    (
        [b"aa", b"bb"],
        [],
        2,
        ([0], [2]),
        "Extended Offset Table has 1 entries, expected 2 (Number of Frames)",
        8,
    ),
    (
        [b"aa", b"bb"],
        [],
        2,
        ([0, 10], [2]),
        "Extended Offset Table has 2 entries but Extended Offset Table Lengths has 1",
        8,
    ),
    (
        [b"aa", b"bb", b"cc"],
        [],
        2,
        ([0, 10], [2, 2]),
        "Extended Offset Table needs one fragment per frame: 2 frames, 3 fragments",
        8,
    ),
    (
        [b"aa", b"bb"],
        [],
        2,
        ([0, 12], [2, 2]),
        "Extended Offset Table entry 1 (12) does not point at the item tag of fragment 1 (expected 10)",
        8,
    ),
    (
        [b"aa", b"bb"],
        [],
        2,
        ([0, 2**64 - 1], [2, 2]),
        f"Extended Offset Table entry 1 ({2**64 - 1}) does not point at the item tag of fragment 1 "
        "(expected 10)",
        8,
    ),
    (
        [b"aa", b"bbbb"],
        [],
        2,
        ([0, 10], [2, 3]),
        "Extended Offset Table Lengths entry 1 (3) differs from the fragment length 4",
        18,
    ),
]


@pytest.mark.parametrize(("fragments", "bot", "nframes", "eot", "message", "offset"), MAPPING_ERRORS)
def test_mapping_errors(encaps_impl, fragments, bot, nframes, eot, message, offset):
    kwargs = {}
    if eot is not None:
        kwargs = {"extended_offsets": eot[0], "extended_lengths": eot[1]}
    buffer = PREFIX + value_of(fragments, bot)
    with pytest.raises(ParseError) as info:
        encaps_impl.EncapsulatedFrames(buffer, nframes, offset=len(PREFIX), **kwargs)
    assert info.value.message == message
    assert info.value.offset == len(PREFIX) + offset  # expected offsets count from the BOT item


def test_mapping_error_offsets_follow_bot_size(encaps_impl):
    # With a non-empty BOT the origin moves: the fragments follow the BOT entries.
    value = value_of([b"aa", b"bb"], bot=[0, 10])
    offsets, lengths = eot_for([b"aa", b"bb"])
    with pytest.raises(ParseError) as info:
        encaps_impl.EncapsulatedFrames(
            value, 2, extended_offsets=offsets, extended_lengths=struct.pack("<2Q", 2, 4)
        )
    assert info.value.message.startswith("Extended Offset Table Lengths entry 1 (4)")
    assert info.value.offset == 16 + 10  # second fragment item: after the 16-byte BOT item


def test_constructor_argument_errors(encaps_impl):
    value = value_of([b"aa"])
    with pytest.raises(ValueError, match=r"^number_of_frames must be at least 1, got 0$"):
        encaps_impl.EncapsulatedFrames(value, 0)
    with pytest.raises(ValueError, match="must be given together"):
        encaps_impl.EncapsulatedFrames(value, 1, extended_offsets=b"\x00" * 8)
    with pytest.raises(TypeError):
        encaps_impl.EncapsulatedFrames(value, 1.0)
    with pytest.raises(ParseError, match=r"fewer fragments \(1\) than frames \(" + str(2**80)):
        encaps_impl.EncapsulatedFrames(value, 2**80)
    with pytest.raises(ParseError, match="Basic Offset Table has 1 entries, expected " + str(2**80)):
        encaps_impl.EncapsulatedFrames(value_of([b"aa"], bot=[0]), 2**80)


def test_frame_index_errors(encaps_impl):
    ef = encaps_impl.EncapsulatedFrames(value_of([b"aa", b"bb"]), 2)
    for index in (-1, 2, 2**70):
        for method in (ef.frame, ef.fragment_ranges):
            with pytest.raises(IndexError) as info:
                method(index)
            assert str(info.value) == f"frame index {index} out of range 0..1"
    with pytest.raises(TypeError):
        ef.frame(1.0)
    assert bytes(ef.frame(True)) == b"bb"  # any __index__ object


def test_zero_copy(encaps_impl):
    buffer = bytearray(PREFIX + value_of([b"aa", b"bbbb", b"cc"], bot=[0, 10]))
    ef = encaps_impl.EncapsulatedFrames(buffer, 2, offset=len(PREFIX))
    one = ef.frame(0)
    assert isinstance(one, memoryview)
    assert one.obj is buffer
    start, end = ef.fragment_ranges(0)[0]
    buffer[start] = ord("Z")
    assert bytes(one) == b"Za"
    joined = ef.frame(1)
    assert type(joined) is bytes and joined == b"bbbbcc"
    # parse_items offsets point into the caller's buffer, nothing was copied out
    _, offsets, lengths, _ = encaps_impl.parse_items(buffer, len(PREFIX))
    assert buffer[offsets[1] : offsets[1] + lengths[1]] == b"bbbb"


# --------------------------------------------------------------------------- encapsulate


def test_encapsulate_layout(encaps_impl):
    value = encaps_impl.encapsulate([[b"ab", bytearray(b"cdef")], [memoryview(b"gh")]])
    expected = value_of([b"ab", b"cdef", b"gh"], bot=[0, 22])
    assert type(value) is bytes and value == expected


def test_encapsulate_extended_layout(encaps_impl):
    value, offsets, lengths = encaps_impl.encapsulate([[b"ab"], [b"cdef"], [b"gh"]], extended=True)
    assert value == value_of([b"ab", b"cdef", b"gh"])
    assert offsets == struct.pack("<3Q", 0, 10, 22)
    assert lengths == struct.pack("<3Q", 2, 4, 2)


def test_encapsulate_accepts_other_buffers(encaps_impl):
    value = encaps_impl.encapsulate([(array("H", [1, 2]),), iter([b"xy"])])
    assert value == value_of([b"\x01\x00\x02\x00", b"xy"], bot=[0, 12])


@pytest.mark.parametrize(
    ("frames", "extended", "error", "message"),
    [
        ([[b"ab"], [b"abc"]], False, ValueError, "fragment 0 of frame 1 has odd length 3; PS3.5 A.4 items have even length"),
        ([[b"ab"], []], False, ValueError, "frame 1 has no fragments"),
        ([], False, ValueError, "no frames to encapsulate"),
        ([], True, ValueError, "no frames to encapsulate"),
        ([[b"ab"], [b"ab", b"cd"]], True, ValueError, "frame 1 has 2 fragments; the Extended Offset Table needs exactly one fragment per frame"),
        ([b"abcd"], False, TypeError, "frame 0 is a bytes-like object; each frame must be a sequence of fragments"),
        ([[b"ab", memoryview(b"abcd")[::2]]], False, TypeError, "fragment 1 of frame 0 is not C-contiguous"),
    ],
)
def test_encapsulate_errors(encaps_impl, frames, extended, error, message):
    with pytest.raises(error) as info:
        encaps_impl.encapsulate(frames, extended=extended)
    assert str(info.value) == message


def test_encapsulate_size_limits(encaps_impl):
    try:
        huge = mmap.mmap(-1, 2**32 + 2)  # virtual memory only: nothing is touched or copied
    except (OSError, OverflowError):
        pytest.skip("cannot map 4 GiB of address space")
    view = memoryview(huge)
    with pytest.raises(ValueError) as info:
        encaps_impl.encapsulate([[view[: 2**32 - 2]], [b"ab"]])
    assert str(info.value) == (
        "Basic Offset Table offset 4294967302 of frame 1 exceeds 4294967295; use extended=True"
    )
    with pytest.raises(ValueError) as info:
        encaps_impl.encapsulate([[view[: 2**32]]], extended=True)
    assert str(info.value) == "fragment 0 of frame 0 is 4294967296 bytes; an item holds at most 4294967294"


def test_round_trip(encaps_impl):
    frames = [[b"\x01\x02" * 40, b"\x03\x04"], [b"\x05\x06"], [b"x" * 70_000, b"y" * 70_000]]
    value = encaps_impl.encapsulate(frames)
    ef = encaps_impl.EncapsulatedFrames(value, 3)
    assert ef.mapping == "basic"
    assert frames_of(ef) == [b"".join(f) for f in frames]
    single = [[b"ab" * k] for k in range(1, 6)]
    value, offsets, lengths = encaps_impl.encapsulate(single, extended=True)
    ef = encaps_impl.EncapsulatedFrames(value, 5, extended_offsets=offsets, extended_lengths=lengths)
    assert ef.mapping == "extended" and frames_of(ef) == [f[0] for f in single]


# ------------------------------------------------------ Hypothesis differential vs pydicom

even_bytes = st.integers(0, 12).flatmap(lambda n: st.binary(min_size=2 * n, max_size=2 * n))
frame_lists = st.lists(st.lists(even_bytes, min_size=1, max_size=4), min_size=1, max_size=6)


@HYPOTHESIS
@given(fragments=st.lists(even_bytes, max_size=8), bot=st.lists(st.integers(0, 2**32 - 1), max_size=4))
def test_parse_items_matches_pydicom(encaps_impl, fragments, bot):
    value = item(struct.pack(f"<{len(bot)}I", *bot)) + b"".join(map(itemize_fragment, fragments)) + SDI
    basic, offsets, lengths, end = encaps_impl.parse_items(value)
    assert list(basic) == parse_basic_offsets(value)
    expected = list(generate_fragments(value[8 + 4 * len(bot) :]))
    assert [value[o : o + n] for o, n in zip(offsets, lengths)] == expected
    assert end == len(value)


@HYPOTHESIS
@given(frames=frame_lists, layout=st.sampled_from(["basic", "one-to-one", "extended"]), data=st.data())
def test_frames_match_pydicom(encaps_impl, frames, layout, data):
    n = len(frames)
    if layout != "basic":
        frames = [f[:1] for f in frames]
    fragments = [f for fr in frames for f in fr]
    value = value_of(fragments, bot_for(frames) if layout == "basic" else [])
    extended = eot_for(fragments) if layout == "extended" else None
    kwargs = {"extended_offsets": extended[0], "extended_lengths": extended[1]} if extended else {}
    ef = encaps_impl.EncapsulatedFrames(value, n, **kwargs)
    assert ef.mapping == layout
    ours = frames_of(ef)
    assert ours == list(generate_frames(value, number_of_frames=n, extended_offsets=extended))
    k = data.draw(st.integers(0, n - 1))
    assert ours[k] == get_frame(value, k, number_of_frames=n, extended_offsets=extended)


no_ff_even = st.integers(0, 8).flatmap(
    lambda n: st.lists(st.integers(0, 0xFE), min_size=2 * n, max_size=2 * n).map(bytes)
)


@HYPOTHESIS
@given(
    frames=st.lists(
        st.tuples(st.lists(no_ff_even, min_size=1, max_size=3), st.booleans()), min_size=2, max_size=6
    ).filter(lambda fs: any(len(parts) > 1 for parts, _ in fs))
)
def test_markers_match_pydicom(encaps_impl, frames):
    fragment_lists = []
    for parts, padded in frames:
        last = parts[-1] + b"\xff\xd9" + (b"\x00\x00" if padded else b"")
        fragment_lists.append(parts[:-1] + [last])
    value = value_of([f for fr in fragment_lists for f in fr])
    ef = encaps_impl.EncapsulatedFrames(value, len(frames))
    assert ef.mapping == "markers"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom warns when it has to guess
        expected = list(generate_frames(value, number_of_frames=len(frames)))
    assert frames_of(ef) == expected == [b"".join(fr) for fr in fragment_lists]


@HYPOTHESIS
@given(
    frames=st.lists(st.binary(min_size=6, max_size=40), min_size=1, max_size=6),
    per_frame=st.integers(1, 3),
)
def test_encapsulate_matches_pydicom(encaps_impl, frames, per_frame):
    fragments = [list(fragment_frame(f, per_frame)) for f in frames]
    assert encaps_impl.encapsulate(fragments) == pd_encapsulate(frames, per_frame, has_bot=True) + SDI
    padded = [[f + b"\x00" * (len(f) % 2)] for f in frames]
    value, offsets, lengths = encaps_impl.encapsulate(padded, extended=True)
    expected = pd_encapsulate_extended(frames)
    assert (value, offsets, lengths) == (expected[0] + SDI, expected[1], expected[2])


# -------------------------------------------------- compiled vs twin on arbitrary input


def _mutate(data, value: bytes) -> bytes:
    buffer = bytearray(value)
    for _ in range(data.draw(st.integers(0, 3))):
        kind = data.draw(st.sampled_from(["truncate", "byte", "u32", "insert"]))
        pos = data.draw(st.integers(0, max(len(buffer) - 1, 0)))
        if kind == "truncate":
            del buffer[pos:]
        elif kind == "byte" and buffer:
            buffer[pos] = data.draw(st.sampled_from([0x00, 0xFF, 0xD9, 0xFE, 0xE0, 0xDD, 0x01]))
        elif kind == "u32" and len(buffer) >= pos + 4:
            word = data.draw(st.sampled_from([0, 1, 2, 3, 4, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF]))
            buffer[pos : pos + 4] = struct.pack("<I", word)
        else:
            buffer[pos:pos] = data.draw(st.binary(max_size=9))
    return bytes(buffer)


def _summary(module, buffer, nframes, eot):
    def parse():
        basic, offsets, lengths, end = module.parse_items(buffer)
        return list(basic), list(offsets), list(lengths), end

    def frames():
        kwargs = {"extended_offsets": eot[0], "extended_lengths": eot[1]} if eot else {}
        ef = module.EncapsulatedFrames(buffer, nframes, **kwargs)
        return ef.mapping, list(ef.frame_fragments), frames_of(ef), ef.fragment_ranges(nframes - 1)

    return outcome(parse), outcome(frames)


@pytest.mark.c_extension
@settings(max_examples=400, deadline=None)
@given(frames=frame_lists, data=st.data())
def test_compiled_matches_twin_on_mutated_input(frames, data):
    compiled = compiled_module()
    twin = implementations("encaps")["py"]
    layout = data.draw(st.sampled_from(["basic", "empty", "extended", "markers"]))
    if layout == "markers":
        frames = [fr[:-1] + [fr[-1] + b"\xff\xd9"] for fr in frames]
    fragments = [f for fr in frames for f in fr]
    value = value_of(fragments, bot_for(frames) if layout == "basic" else [])
    eot = None
    if layout == "extended":
        eot = list(eot_for(fragments))
        if data.draw(st.booleans()):
            eot[data.draw(st.integers(0, 1))] = _mutate(data, eot[0])
    buffer = _mutate(data, value)
    nframes = data.draw(st.sampled_from([1, len(frames), len(fragments), len(frames) + 1]))
    assert _summary(compiled, buffer, nframes, eot) == _summary(twin, buffer, nframes, eot)


@pytest.mark.c_extension
@settings(max_examples=200, deadline=None)
@given(
    frames=st.lists(st.lists(st.binary(max_size=9), max_size=3), max_size=5),
    extended=st.booleans(),
)
def test_compiled_encapsulate_matches_twin(frames, extended):
    compiled = compiled_module()
    twin = implementations("encaps")["py"]
    # Odd lengths, empty frames and no frames at all are all drawn: errors must agree too.
    mixed = [[bytearray(f) if j % 2 else f for j, f in enumerate(fr)] for fr in frames]
    assert outcome(lambda: compiled.encapsulate(mixed, extended=extended)) == outcome(
        lambda: twin.encapsulate(mixed, extended=extended)
    )


# ------------------------------------------------------------------------ real DICOM files

REAL_FILES = [
    # (file, expected mapping)
    ("emri_small_jpeg_2k_lossless.dcm", "one-to-one"),  # JPEG 2000, 10 frames, empty BOT
    ("color3d_jpeg_baseline.dcm", "one-to-one"),  # JPEG baseline, 120 frames, empty BOT
    ("emri_small_jpeg_ls_lossless.dcm", "one-to-one"),
    ("rtdose_rle.dcm", "one-to-one"),  # RLE, 15 frames, empty BOT
    ("SC_rgb_rle_2frame.dcm", "basic"),  # RLE multi-frame with a BOT
    ("emri_small_RLE.dcm", "basic"),
    ("examples_ybr_color.dcm", "basic"),  # JPEG, 30 frames with a BOT
    ("MR_small_RLE.dcm", "basic"),
    ("JPEG2000.dcm", "one-to-one"),
    ("examples_jpeg2k.dcm", "single-frame"),  # several fragments for one frame
    ("JPEG-LL.dcm", "single-frame"),
    ("RG3_J2KR.dcm", "single-frame"),
]


def _load(name: str):
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not available")
    ds = pydicom.dcmread(path)
    with open(path, "rb") as f:
        raw = f.read()
    element = ds.get_item(0x7FE00010)
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    return ds, raw, element.value_tell, nframes


@pytest.mark.parametrize(("name", "mapping"), REAL_FILES)
def test_real_files_match_pydicom(encaps_impl, name, mapping):
    ds, raw, start, nframes = _load(name)
    ef = encaps_impl.EncapsulatedFrames(raw, nframes, offset=start)
    assert ef.mapping == mapping
    assert ef.end_offset == start + len(ds.PixelData) + 8
    assert frames_of(ef) == list(generate_frames(ds.PixelData, number_of_frames=nframes))
    # The value as pydicom returns it lacks the delimiter; with it, offsets are value-relative.
    ef2 = encaps_impl.EncapsulatedFrames(ds.PixelData + SDI, nframes)
    assert [r for k in range(nframes) for r in ef2.fragment_ranges(k)] == [
        (a - start, b - start) for k in range(nframes) for a, b in ef.fragment_ranges(k)
    ]


@pytest.mark.parametrize("name", ["SC_rgb_rle_2frame.dcm", "emri_small_RLE.dcm", "examples_ybr_color.dcm"])
def test_real_files_reencapsulate_identically(encaps_impl, name):
    ds, raw, start, nframes = _load(name)
    ef = encaps_impl.EncapsulatedFrames(raw, nframes, offset=start)
    frames = [[raw[a:b] for a, b in ef.fragment_ranges(k)] for k in range(nframes)]
    assert encaps_impl.encapsulate(frames) == raw[start : ef.end_offset]


def test_real_jpeg_frames_split_by_markers(encaps_impl):
    # Real JPEG baseline frames cut into 3 fragments each with no BOT: only EOI markers
    # tell the frames apart.
    ds, raw, start, nframes = _load("color3d_jpeg_baseline.dcm")
    originals = list(generate_frames(ds.PixelData, number_of_frames=nframes))[:12]
    value = value_of([f for frame in originals for f in fragment_frame(frame, 3)])
    ef = encaps_impl.EncapsulatedFrames(value, len(originals))
    assert ef.mapping == "markers"
    expected = list(generate_frames(value, number_of_frames=len(originals)))
    assert frames_of(ef) == expected
    assert [f.rstrip(b"\x00") for f in expected] == [f.rstrip(b"\x00") for f in originals]


def test_real_file_without_delimiter(encaps_impl):
    path = get_testdata_file("emri_small_jpeg_2k_lossless_too_short.dcm")
    if path is None:
        pytest.skip("test file not available")
    with open(path, "rb") as f:
        raw = f.read()
    # (7FE0,0010), 2-byte VR (this file says OW), 2 reserved bytes, undefined length.
    header = raw.index(b"\xe0\x7f\x10\x00")
    assert raw[header + 8 : header + 12] == b"\xff\xff\xff\xff"
    with pytest.raises(ParseError) as info:
        encaps_impl.EncapsulatedFrames(raw, 10, offset=header + 12)
    assert info.value.message == "no Sequence Delimitation Item (FFFE,E0DD) before the end of the data"
    assert info.value.offset == len(raw)
