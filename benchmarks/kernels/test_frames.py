"""dicomaccel.frames (``NativeFrames``), both implementations, against pydicom.

What is measured: getting the bytes of frame N of a native (uncompressed) multi-frame instance,
which FRAME-level C-GET and WADO-RS frame retrieval (PS3.18 §9.4.1.2.3) do per request. Ours
works on a memory-mapped file: the archive keeps the frame geometry in its index, so the usual
cost is one ``frame()`` on a ready ``NativeFrames`` (a zero-copy view, or a copy with
``bytes()``); building the geometry, and mapping the file, are measured too. The baseline is
pydicom's ``pixel_array(path, index=N)``, which reads that one frame from the file. Every result
is compared with the frame as written (frame k holds ``arange(rows * columns) + k``), so a wrong
offset fails instead of looking fast.
"""

from __future__ import annotations

import numpy as np
import pytest

from . import workloads as w

KERNEL = "frames"

FRAME_N = "frames: frame N"
GATHER = "frames: gather 10 frames"
ONE_BIT = "frames: 1-bit frame N, frames not byte-aligned"
ONE_BIT_GATHER = "frames: 1-bit gather 10 frames"


def expected_frame(instance: w.Instance, k: int) -> bytes:
    return (np.arange(instance.rows * instance.columns, dtype="<u2") + k).astype("<u2").tobytes()


def _info(benchmark, instance: w.Instance) -> None:
    benchmark.extra_info.update(bytes=instance.length, frames=instance.frames, rows=instance.rows,
                                columns=instance.columns, bits_allocated=instance.bits_allocated)


@pytest.fixture
def native(impl, native_instance):
    # No explicit mmap.close(): the mapping goes with the last view of it, and a benchmark's
    # result (a view) may outlive the fixture.
    return impl.NativeFrames(w.map_file(native_instance.path), **native_instance.geometry())


@pytest.fixture
def one_bit(impl, one_bit_instance):
    return impl.NativeFrames(w.map_file(one_bit_instance.path), **one_bit_instance.geometry())


@pytest.mark.benchmark(group=FRAME_N)
def test_frame_view(benchmark, native, native_instance):
    """The warm path: a zero-copy view of frame N from a ready NativeFrames."""
    _info(benchmark, native_instance)
    n = w.frame_index(native_instance.frames)
    view = benchmark(native.frame, n)
    assert bytes(view) == expected_frame(native_instance, n)


@pytest.mark.benchmark(group=FRAME_N)
def test_frame_copy(benchmark, native, native_instance):
    """The same, copied out to ``bytes`` (what a response body that outlives the map needs)."""
    _info(benchmark, native_instance)
    n = w.frame_index(native_instance.frames)
    assert benchmark(lambda: bytes(native.frame(n))) == expected_frame(native_instance, n)


@pytest.mark.benchmark(group=FRAME_N)
def test_construct_and_view(benchmark, impl, native_instance):
    """Geometry not cached: build NativeFrames over the mapping, then take the view."""
    _info(benchmark, native_instance)
    n = w.frame_index(native_instance.frames)
    buffer, geometry = w.map_file(native_instance.path), native_instance.geometry()
    view = benchmark(lambda: impl.NativeFrames(buffer, **geometry).frame(n))
    assert bytes(view) == expected_frame(native_instance, n)


@pytest.mark.benchmark(group=FRAME_N)
def test_cold_copy(benchmark, impl, native_instance):
    """Per request from scratch: map the file, build the geometry, copy one frame out. The
    frame changes on every call, so setting up the page tables for it is included; the file
    stays in the page cache, as it does for pydicom's reads."""
    _info(benchmark, native_instance)
    path, geometry, frames = native_instance.path, native_instance.geometry(), native_instance.frames
    counter = iter(range(10**9))

    def run() -> tuple[int, bytes]:
        k = next(counter) * 37 % frames
        with w.map_file(path) as mm:
            nf = impl.NativeFrames(mm, **geometry)
            data = bytes(nf.frame(k))
            del nf  # its view of the map must go before the map closes
        return k, data

    k, data = benchmark(run)
    assert data == expected_frame(native_instance, k)


@pytest.mark.benchmark(group=FRAME_N)
def test_frame_pydicom(benchmark, native_instance):
    """Baseline: ``pydicom.pixels.pixel_array(path, index=N).tobytes()``."""
    _info(benchmark, native_instance)
    n = w.frame_index(native_instance.frames)
    assert benchmark(w.pydicom_frame, native_instance.path, n) == expected_frame(native_instance, n)


@pytest.mark.benchmark(group=GATHER)
def test_gather(benchmark, native, native_instance):
    """Ten frames concatenated into a new Pixel Data value (a frame-level retrieve's output)."""
    _info(benchmark, native_instance)
    indices = w.gather_indices(native_instance.frames)
    out = benchmark(native.gather, indices)
    assert out == b"".join(expected_frame(native_instance, k) for k in indices)


@pytest.mark.benchmark(group=GATHER)
def test_gather_pydicom(benchmark, native_instance):
    """Baseline: ten ``pixel_array(path, index=i).tobytes()``, joined."""
    _info(benchmark, native_instance)
    indices = w.gather_indices(native_instance.frames)
    out = benchmark(lambda: b"".join(w.pydicom_frame(native_instance.path, i) for i in indices))
    assert out == b"".join(expected_frame(native_instance, k) for k in indices)


def expected_one_bit(instance: w.Instance, indices: list[int]) -> bytes:
    """Frames `indices` of the 1-bit instance, packed back to back from bit 0, least significant
    bit first (PS3.5 §8.1.1), computed with numpy as an independent reference."""
    with open(instance.path, "rb") as fh:
        fh.seek(instance.offset)
        bits = np.unpackbits(np.frombuffer(fh.read(instance.length), np.uint8), bitorder="little")
    size = instance.rows * instance.columns
    picked = np.concatenate([bits[k * size : (k + 1) * size] for k in indices])
    return np.packbits(picked, bitorder="little").tobytes()


def one_bit_index(instance: w.Instance) -> int:
    return instance.frames * 17 // 40


@pytest.mark.benchmark(group=ONE_BIT)
def test_one_bit_frame(benchmark, one_bit, one_bit_instance):
    """Frame N shifted out to start at bit 0 (a copy: no view can do that)."""
    _info(benchmark, one_bit_instance)
    assert not one_bit.byte_aligned
    n = one_bit_index(one_bit_instance)
    assert bytes(benchmark(one_bit.frame, n)) == expected_one_bit(one_bit_instance, [n])


@pytest.mark.benchmark(group=ONE_BIT)
def test_one_bit_frame_pydicom(benchmark, one_bit_instance):
    """Baseline: ``pixel_array(path, index=N)`` (one byte per pixel), then ``pack_bits``."""
    _info(benchmark, one_bit_instance)
    n = one_bit_index(one_bit_instance)
    out = benchmark(w.pydicom_one_bit_frame, one_bit_instance.path, n)
    assert out == expected_one_bit(one_bit_instance, [n])


@pytest.mark.benchmark(group=ONE_BIT_GATHER)
def test_one_bit_gather(benchmark, one_bit, one_bit_instance):
    _info(benchmark, one_bit_instance)
    indices = w.gather_indices(one_bit_instance.frames)
    out = benchmark(one_bit.gather, indices)
    expected = expected_one_bit(one_bit_instance, indices)
    assert out == expected + b"\0" * (len(expected) % 2)  # even length, PS3.5 §7.1.1


@pytest.mark.benchmark(group=ONE_BIT_GATHER)
def test_one_bit_gather_pydicom(benchmark, one_bit_instance):
    """Baseline: ten ``pixel_array(path, index=i)``, concatenated, then ``pack_bits`` (pads to
    even length, as ours does)."""
    from pydicom.pixels import pack_bits, pixel_array

    _info(benchmark, one_bit_instance)
    path, indices = one_bit_instance.path, w.gather_indices(one_bit_instance.frames)
    out = benchmark(lambda: pack_bits(np.concatenate([pixel_array(path, index=i) for i in indices])))
    expected = expected_one_bit(one_bit_instance, indices)
    assert out == expected + b"\0" * (len(expected) % 2)
