"""pytest-benchmark: dicomaccel.frames, both implementations, against pydicom.

    pytest benchmarks/bench_frames.py --benchmark-group-by=group

The workload is benchmarks.ratios_frames' 131 MB, 250-frame instance (memory-mapped), plus an
unaligned 1-bit case (511 x 511 pixels per frame: every frame starts mid-byte) for the bit
re-packing paths.
"""

from __future__ import annotations

import random

import pytest
from pydicom.pixels import pixel_array

from benchmarks._timing import implementations
from benchmarks.ratios_frames import (
    COLUMNS,
    FRAMES,
    GATHER,
    INDEX,
    ROWS,
    open_frames,
    write_instance,
)


@pytest.fixture(params=implementations("frames"), ids=lambda m: m.__name__.rsplit("_", 1)[1])
def impl(request):
    return request.param


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    path = tmp_path_factory.mktemp("frames") / "frames_250.dcm"
    return path, write_instance(path)


@pytest.fixture
def native(impl, instance):
    # The mapping is unmapped when the last view goes; pytest holds the fixture value past
    # teardown, so an explicit close() would find exports still alive.
    return open_frames(impl, *instance)[1]


ONE_BIT = dict(rows=511, columns=511, bits_allocated=1, number_of_frames=40)


@pytest.fixture
def one_bit(impl):
    bits = ONE_BIT["rows"] * ONE_BIT["columns"] * ONE_BIT["number_of_frames"]
    value = random.Random(0).randbytes((bits + 7) // 8)
    return impl.NativeFrames(value, **ONE_BIT)


@pytest.mark.benchmark(group="frame N")
def test_frame_view(benchmark, native):
    view = benchmark(native.frame, INDEX)
    assert view.nbytes == ROWS * COLUMNS * 2


@pytest.mark.benchmark(group="frame N")
def test_frame_copy(benchmark, native):
    data = benchmark(lambda: bytes(native.frame(INDEX)))
    assert len(data) == ROWS * COLUMNS * 2


@pytest.mark.benchmark(group="frame N")
def test_frame_pydicom(benchmark, instance):
    arr = benchmark(lambda: pixel_array(instance[0], index=INDEX).tobytes())
    assert len(arr) == ROWS * COLUMNS * 2


@pytest.mark.benchmark(group="construct")
def test_construct(benchmark, impl, instance):
    mm, nf = open_frames(impl, *instance)
    try:
        result = benchmark(lambda: impl.NativeFrames(
            mm, rows=ROWS, columns=COLUMNS, bits_allocated=16, number_of_frames=FRAMES,
            offset=instance[1],
        ))
        assert result.number_of_frames == FRAMES
        del result, nf
    finally:
        mm.close()


@pytest.mark.benchmark(group="gather 10 frames")
def test_gather(benchmark, native):
    out = benchmark(native.gather, GATHER)
    assert len(out) == len(GATHER) * ROWS * COLUMNS * 2


@pytest.mark.benchmark(group="gather 10 frames")
def test_gather_pydicom(benchmark, instance):
    out = benchmark(lambda: b"".join(pixel_array(instance[0], index=i).tobytes() for i in GATHER))
    assert len(out) == len(GATHER) * ROWS * COLUMNS * 2


@pytest.mark.benchmark(group="1-bit unaligned")
def test_one_bit_frame(benchmark, one_bit):
    assert not one_bit.byte_aligned
    out = benchmark(one_bit.frame, 17)
    assert len(out) == one_bit.frame_length


@pytest.mark.benchmark(group="1-bit unaligned")
def test_one_bit_gather(benchmark, one_bit):
    out = benchmark(one_bit.gather, range(1, 40, 4))
    assert len(out) == 326402  # ceil(10 frames * 261121 bits / 8), already even
