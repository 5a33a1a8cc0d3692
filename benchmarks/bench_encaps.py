"""pytest-benchmark: dicomaccel.encaps, both implementations, against pydicom.encaps.

    pytest benchmarks/bench_encaps.py --benchmark-group-by=group

Workloads: benchmarks.ratios_encaps' 100,000 x 100-byte fragments, one per frame, with and
without a Basic Offset Table; 20,000 frames of 3 fragments each with no BOT, so only the JPEG
EOI markers delimit frames (the slowest mapping rule); and 200,000 2-byte fragments, the
smallest legal items (PS3.5 A.4), as the adversarial case for the item walk.
"""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.encaps import encapsulate as pd_encapsulate
from pydicom.encaps import generate_frames, get_frame

from benchmarks._timing import implementations
from benchmarks.ratios_encaps import FRAMES, INDEX, pydicom_fragments, workload

_ITEM = b"\xfe\xff\x00\xe0"
_SEQ_DELIM = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
MARKER_FRAMES = 20_000
TINY_FRAGMENTS = 200_000


@pytest.fixture(params=implementations("encaps"), ids=lambda m: m.__name__.rsplit("_", 1)[1])
def impl(request):
    return request.param


@pytest.fixture(scope="module", params=[True, False], ids=["bot", "empty-bot"])
def value(request):
    return workload(with_bot=request.param)


@pytest.fixture(scope="module")
def marker_value():
    # Each frame: SOI fragment, body fragment, body + EOI fragment; empty BOT.
    parts = [_ITEM + b"\x00\x00\x00\x00"]
    for k in range(MARKER_FRAMES):
        body = k.to_bytes(4, "little") * 8
        for fragment in (b"\xff\xd8" + body[:30], body, body[:30] + b"\xff\xd9"):
            parts.append(_ITEM + len(fragment).to_bytes(4, "little") + fragment)
    parts.append(_SEQ_DELIM)
    return b"".join(parts)


@pytest.fixture(scope="module")
def tiny_value():
    item = _ITEM + b"\x02\x00\x00\x00ab"
    return _ITEM + b"\x00\x00\x00\x00" + item * TINY_FRAGMENTS + _SEQ_DELIM


@pytest.mark.benchmark(group="fragment table, 100k fragments")
def test_parse_items(benchmark, impl, value):
    _, offsets, _, _ = benchmark(impl.parse_items, value)
    assert len(offsets) == FRAMES


@pytest.mark.benchmark(group="fragment table, 100k fragments")
def test_construct(benchmark, impl, value):
    ef = benchmark(impl.EncapsulatedFrames, value, FRAMES)
    assert ef.mapping in ("basic", "one-to-one")


@pytest.mark.benchmark(group="fragment table, 100k fragments")
def test_pydicom_generate_fragments(benchmark, value):
    assert len(benchmark(pydicom_fragments, value)) == FRAMES


@pytest.mark.benchmark(group="frame N")
def test_frame(benchmark, impl, value):
    ef = impl.EncapsulatedFrames(value, FRAMES)
    assert bytes(benchmark(ef.frame, INDEX)) == get_frame(value, INDEX, number_of_frames=FRAMES)


@pytest.mark.benchmark(group="frame N")
def test_pydicom_get_frame(benchmark, value):
    assert len(benchmark(get_frame, value, INDEX, number_of_frames=FRAMES)) == 100


@pytest.mark.benchmark(group="EOI markers, 20k frames x 3 fragments")
def test_construct_markers(benchmark, impl, marker_value):
    ef = benchmark(impl.EncapsulatedFrames, marker_value, MARKER_FRAMES)
    assert ef.mapping == "markers"


@pytest.mark.benchmark(group="EOI markers, 20k frames x 3 fragments")
def test_frame_joined(benchmark, impl, marker_value):
    ef = impl.EncapsulatedFrames(marker_value, MARKER_FRAMES)
    data = benchmark(ef.frame, MARKER_FRAMES - 1)
    assert type(data) is bytes and data.endswith(b"\xff\xd9")


@pytest.mark.benchmark(group="EOI markers, 20k frames x 3 fragments")
def test_pydicom_generate_frames_markers(benchmark, marker_value):
    frames = benchmark(lambda: list(generate_frames(marker_value, number_of_frames=MARKER_FRAMES)))
    assert len(frames) == MARKER_FRAMES


@pytest.mark.benchmark(group="200k 2-byte fragments")
def test_parse_tiny_fragments(benchmark, impl, tiny_value):
    _, offsets, _, _ = benchmark(impl.parse_items, tiny_value)
    assert len(offsets) == TINY_FRAGMENTS


@pytest.mark.benchmark(group="200k 2-byte fragments")
def test_pydicom_tiny_fragments(benchmark, tiny_value):
    assert len(benchmark(pydicom_fragments, tiny_value)) == TINY_FRAGMENTS


@pytest.fixture(scope="module")
def frames_to_encapsulate():
    return [k.to_bytes(4, "little") * 25 for k in range(FRAMES)]


@pytest.mark.benchmark(group="encapsulate 100k frames")
def test_encapsulate(benchmark, impl, frames_to_encapsulate):
    fragments = [[f] for f in frames_to_encapsulate]
    value = benchmark(impl.encapsulate, fragments)
    assert value == pd_encapsulate(frames_to_encapsulate) + _SEQ_DELIM


@pytest.mark.benchmark(group="encapsulate 100k frames")
def test_encapsulate_extended(benchmark, impl, frames_to_encapsulate):
    fragments = [[f] for f in frames_to_encapsulate]
    value, offsets, lengths = benchmark(impl.encapsulate, fragments, extended=True)
    assert len(offsets) == len(lengths) == 8 * FRAMES


@pytest.mark.benchmark(group="encapsulate 100k frames")
def test_pydicom_encapsulate(benchmark, frames_to_encapsulate):
    assert len(benchmark(pd_encapsulate, frames_to_encapsulate)) > 100 * FRAMES


def test_workload_is_well_formed(value):
    # The benchmark bytes parse the same way in pydicom: guards the numbers above.
    assert len(pydicom_fragments(value)) == FRAMES
    assert BytesIO(value).read(4) == _ITEM
