"""dicomaccel.encaps, both implementations, against pydicom.encaps.

What is measured: finding the fragments and frames of an encapsulated Pixel Data value
(PS3.5 A.4), which a frame-level retrieve of a compressed instance needs before it can send
any frame, and building such a value. Building the fragment table (``parse_items`` or the
``EncapsulatedFrames`` constructor) is compared with pydicom's way to the fragments,
``parse_basic_offsets`` then ``list(generate_fragments(...))`` over the same bytes; "frame N"
from a built table with ``pydicom.encaps.get_frame``; ``encapsulate`` with pydicom's. Every
benchmark checks its result against the value as built (fragment k holds k, four bytes
little endian, repeated), so a broken kernel fails instead of looking fast.
"""

from __future__ import annotations

import pytest
from pydicom.encaps import encapsulate as pydicom_encapsulate
from pydicom.encaps import encapsulate_extended as pydicom_encapsulate_extended
from pydicom.encaps import generate_frames, get_frame

from . import workloads as w

KERNEL = "encaps"

N = w.SIZES.fragments
INDEX = w.encaps_index(N)
# Where fragment k's value starts: after the Basic Offset Table item (8-byte header + 4 bytes
# per frame, or just the header when empty) and k fragment items of 8 + 100 bytes.
STEP = 8 + w.FRAGMENT_SIZE


def _layout(value: bytes) -> str:
    return "BOT" if value[4:8] != b"\0\0\0\0" else "empty BOT"


def _fragment(k: int) -> bytes:
    return k.to_bytes(4, "little") * (w.FRAGMENT_SIZE // 4)


def _check_table(value: bytes, offsets, lengths) -> None:
    first = 8 + int.from_bytes(value[4:8], "little") + 8
    assert len(offsets) == len(lengths) == N
    assert set(lengths) == {w.FRAGMENT_SIZE}
    assert offsets[0] == first and offsets[-1] == first + (N - 1) * STEP
    assert value[offsets[INDEX] : offsets[INDEX] + w.FRAGMENT_SIZE] == _fragment(INDEX)


def _info(benchmark, value: bytes, **more) -> None:
    benchmark.group = f"encaps: {benchmark.group}, {_layout(value)}"
    benchmark.extra_info.update(bytes=len(value), fragments=N, layout=_layout(value), **more)


@pytest.mark.benchmark(group="fragment table")
def test_parse_items(benchmark, impl, encapsulated):
    """The item walk alone: Basic Offset Table values, fragment offsets and lengths."""
    _info(benchmark, encapsulated)
    _, offsets, lengths, end = benchmark(impl.parse_items, encapsulated)
    _check_table(encapsulated, offsets, lengths)
    assert end == len(encapsulated)


@pytest.mark.benchmark(group="fragment table")
def test_construct(benchmark, impl, encapsulated):
    """The item walk plus the frame mapping (BOT, or one fragment per frame without one)."""
    _info(benchmark, encapsulated)
    ef = benchmark(impl.EncapsulatedFrames, encapsulated, N)
    assert ef.mapping == ("basic" if _layout(encapsulated) == "BOT" else "one-to-one")
    _check_table(encapsulated, ef.fragment_offsets, ef.fragment_lengths)


@pytest.mark.benchmark(group="fragment table")
def test_pydicom_fragments(benchmark, encapsulated):
    """Baseline: ``parse_basic_offsets`` + ``list(generate_fragments(...))``."""
    _info(benchmark, encapsulated)
    fragments = benchmark(w.pydicom_fragments, encapsulated)
    assert len(fragments) == N and fragments[INDEX] == _fragment(INDEX)


@pytest.mark.benchmark(group="frame N")
def test_frame(benchmark, impl, encapsulated):
    """Frame N from a table built beforehand (an archive builds it once per instance)."""
    _info(benchmark, encapsulated, index=INDEX)
    ef = impl.EncapsulatedFrames(encapsulated, N)
    assert bytes(benchmark(ef.frame, INDEX)) == _fragment(INDEX)


@pytest.mark.benchmark(group="frame N")
def test_pydicom_get_frame(benchmark, encapsulated):
    """Baseline: ``pydicom.encaps.get_frame(value, N, number_of_frames=...)``, which has no
    table to keep, so it walks (or, with a BOT, seeks) every call."""
    _info(benchmark, encapsulated, index=INDEX)
    assert benchmark(get_frame, encapsulated, INDEX, number_of_frames=N) == _fragment(INDEX)


MARKERS = "encaps: EOI markers, 3 fragments per frame, empty BOT"


@pytest.mark.benchmark(group=MARKERS)
def test_construct_markers(benchmark, impl, marker_value):
    """Frames found by the JPEG EOI marker (FFD9) ending each frame's last fragment."""
    frames = w.SIZES.marker_frames
    benchmark.extra_info.update(bytes=len(marker_value), frames=frames)
    ef = benchmark(impl.EncapsulatedFrames, marker_value, frames)
    assert ef.mapping == "markers"
    last = bytes(ef.frame(frames - 1))
    assert last.startswith(b"\xff\xd8") and last.endswith(b"\xff\xd9") and len(last) == 96


@pytest.mark.benchmark(group=MARKERS)
def test_frame_joined(benchmark, impl, marker_value):
    """The last frame's three fragments joined into one ``bytes``."""
    frames = w.SIZES.marker_frames
    benchmark.extra_info.update(bytes=len(marker_value), frames=frames)
    ef = impl.EncapsulatedFrames(marker_value, frames)
    data = benchmark(ef.frame, frames - 1)
    body = (frames - 1).to_bytes(4, "little") * 8
    assert data == b"\xff\xd8" + body[:30] + body + body[:30] + b"\xff\xd9"


@pytest.mark.benchmark(group=MARKERS)
def test_pydicom_generate_frames_markers(benchmark, marker_value):
    """Baseline: ``list(generate_frames(value, number_of_frames=...))``."""
    frames = w.SIZES.marker_frames
    benchmark.extra_info.update(bytes=len(marker_value), frames=frames)
    out = benchmark(lambda: list(generate_frames(marker_value, number_of_frames=frames)))
    assert len(out) == frames and out[-1].endswith(b"\xff\xd9") and len(out[-1]) == 96


@pytest.mark.benchmark(group=MARKERS)
def test_pydicom_get_frame_markers(benchmark, marker_value):
    """Baseline of the joined frame: ``get_frame(value, N, number_of_frames=...)``, which
    finds the frame by the same markers, walking from the start every call."""
    frames = w.SIZES.marker_frames
    benchmark.extra_info.update(bytes=len(marker_value), frames=frames)
    data = benchmark(get_frame, marker_value, frames - 1, number_of_frames=frames)
    body = (frames - 1).to_bytes(4, "little") * 8
    assert data == b"\xff\xd8" + body[:30] + body + body[:30] + b"\xff\xd9"


TINY = "encaps: 2-byte fragments"


@pytest.mark.benchmark(group=TINY)
def test_parse_tiny_fragments(benchmark, impl, tiny_value):
    """The adversarial item walk: an item header every 10 bytes."""
    benchmark.extra_info.update(bytes=len(tiny_value), fragments=w.SIZES.tiny_fragments)
    _, offsets, lengths, _ = benchmark(impl.parse_items, tiny_value)
    assert len(offsets) == w.SIZES.tiny_fragments and set(lengths) == {2}


@pytest.mark.benchmark(group=TINY)
def test_pydicom_tiny_fragments(benchmark, tiny_value):
    benchmark.extra_info.update(bytes=len(tiny_value), fragments=w.SIZES.tiny_fragments)
    fragments = benchmark(w.pydicom_fragments, tiny_value)
    assert len(fragments) == w.SIZES.tiny_fragments and set(fragments) == {b"ab"}


ENCAPSULATE = "encaps: encapsulate, one fragment per frame"


@pytest.fixture(scope="module")
def frames_to_encapsulate() -> list[bytes]:
    return w.frames_to_encapsulate()


@pytest.fixture(scope="module")
def pydicom_value(frames_to_encapsulate) -> bytes:
    # pydicom leaves out the Sequence Delimitation Item (PS3.5 A.4), which we write.
    return pydicom_encapsulate(frames_to_encapsulate) + w.SEQUENCE_DELIMITER


@pytest.mark.benchmark(group=ENCAPSULATE)
def test_encapsulate(benchmark, impl, frames_to_encapsulate, pydicom_value):
    """The value with a Basic Offset Table, byte for byte what pydicom builds."""
    benchmark.extra_info.update(frames=len(frames_to_encapsulate))
    fragments = [[f] for f in frames_to_encapsulate]
    assert benchmark(impl.encapsulate, fragments) == pydicom_value


@pytest.mark.benchmark(group=ENCAPSULATE)
def test_encapsulate_extended(benchmark, impl, frames_to_encapsulate):
    """With an Extended Offset Table and its Lengths instead (PS3.3 C.7.6.3.1.8)."""
    benchmark.extra_info.update(frames=len(frames_to_encapsulate))
    fragments = [[f] for f in frames_to_encapsulate]
    value, offsets, lengths = benchmark(impl.encapsulate, fragments, extended=True)
    pydicom_value, pydicom_offsets, pydicom_lengths = pydicom_encapsulate_extended(frames_to_encapsulate)
    assert (offsets, lengths) == (pydicom_offsets, pydicom_lengths)
    assert value == pydicom_value + w.SEQUENCE_DELIMITER
    ef = impl.EncapsulatedFrames(value, len(fragments), extended_offsets=offsets, extended_lengths=lengths)
    assert bytes(ef.frame(INDEX)) == _fragment(INDEX)


@pytest.mark.benchmark(group=ENCAPSULATE)
def test_pydicom_encapsulate(benchmark, frames_to_encapsulate, pydicom_value):
    """Baseline: ``pydicom.encaps.encapsulate(frames)``."""
    benchmark.extra_info.update(frames=len(frames_to_encapsulate))
    assert benchmark(pydicom_encapsulate, frames_to_encapsulate) + w.SEQUENCE_DELIMITER == pydicom_value


@pytest.mark.benchmark(group=ENCAPSULATE)
def test_pydicom_encapsulate_extended(benchmark, frames_to_encapsulate):
    """Baseline: ``pydicom.encaps.encapsulate_extended(frames)``."""
    benchmark.extra_info.update(frames=len(frames_to_encapsulate))
    value, offsets, lengths = benchmark(pydicom_encapsulate_extended, frames_to_encapsulate)
    assert len(offsets) == len(lengths) == 8 * len(frames_to_encapsulate)
    assert get_frame(value, INDEX, number_of_frames=len(frames_to_encapsulate),
                     extended_offsets=(offsets, lengths)) == _fragment(INDEX)
