"""dicomaccel.frames: native Pixel Data frame geometry, zero-copy views and gathering.

Every test runs on both implementations (``frames_impl``: ids ``py`` and ``c``). Expected
values come from the standard (PS3.5 §8.1.1), from NumPy's ``unpackbits`` for 1-bit data and
from pydicom for frame lengths and pixel contents, never from our own code.
"""

from __future__ import annotations

import array
import gc
import mmap
import os
import random

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pixel_array
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import ExplicitVRLittleEndian

from dicomaccel.errors import ParseError

HYPOTHESIS = settings(
    deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _bits(data) -> np.ndarray:
    """Bits of `data`, bit j of the stream = bit (j % 8) of byte j // 8 (PS3.5 §8.1.1)."""
    return np.unpackbits(np.frombuffer(bytes(data), dtype=np.uint8), bitorder="little")


def _dataset(rows, columns, spp, bits_allocated, frames, pi, pixel_data) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = spp
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_allocated
    ds.HighBit = bits_allocated - 1
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = pi
    if spp > 1:
        ds.PlanarConfiguration = 0
    ds.NumberOfFrames = frames
    ds.PixelData = pixel_data
    return ds


# ---------------------------------------------------------------------------------------------
# Geometry


@pytest.mark.parametrize(
    "rows, columns, spp, bits_allocated, pi, expected",
    [
        (512, 512, 1, 16, "MONOCHROME2", 512 * 512 * 16),
        (100, 100, 3, 8, "RGB", 100 * 100 * 3 * 8),
        # PS3.3 C.7.6.3.1.2: two Y per Cb/Cr pair, so 2 samples per pixel, 2/3 of RGB.
        (100, 100, 3, 8, "YBR_FULL_422", 100 * 100 * 2 * 8),
        (100, 100, 3, 16, "YBR_FULL_422 ", 100 * 100 * 2 * 16),  # CS padding ignored
        (100, 100, 3, 8, "YBR_FULL", 100 * 100 * 3 * 8),
        (3, 5, 1, 1, "MONOCHROME2", 15),
        (8, 8, 1, 1, "MONOCHROME2", 64),
        (7, 3, 3, 1, "RGB", 63),
        (10, 10, 1, 32, "MONOCHROME2", 3200),
        (10, 10, 1, 64, "MONOCHROME2", 6400),
        (4, 4, 4, 8, "ARGB", 512),  # retired, still accepted
        (1, 1, 1, 24, "", 24),
        # Python ints: no overflow whatever the size.
        (65535, 65535, 3, 64, "RGB", 65535 * 65535 * 3 * 64),
        (2**40, 2**40, 3, 64, "RGB", 2**80 * 3 * 64),
    ],
)
def test_frame_bits(frames_impl, rows, columns, spp, bits_allocated, pi, expected):
    assert frames_impl.frame_bits(rows, columns, spp, bits_allocated, pi) == expected


@pytest.mark.parametrize(
    "rows, columns, spp, bits_allocated, frames, frame_length, byte_aligned",
    [
        (64, 64, 1, 16, 10, 8192, True),
        (100, 100, 3, 8, 2, 30000, True),
        (10, 10, 1, 32, 15, 400, True),
        (10, 10, 1, 64, 3, 800, True),
        (512, 512, 1, 1, 3, 32768, True),  # 1-bit, R*C a multiple of 8: aligned
        (3, 5, 1, 1, 7, 2, False),  # 15 bits: frames start mid-byte
        (7, 3, 3, 1, 4, 8, False),  # 63 bits
    ],
)
def test_geometry_attributes(
    frames_impl, rows, columns, spp, bits_allocated, frames, frame_length, byte_aligned
):
    bits = rows * columns * spp * bits_allocated
    needed = (bits * frames + 7) // 8
    buf = bytes(needed + 1)
    nf = frames_impl.NativeFrames(
        buf, rows=rows, columns=columns, samples_per_pixel=spp,
        bits_allocated=bits_allocated, number_of_frames=frames, offset=1,
    )
    assert nf.frame_bits == bits
    assert nf.frame_length == frame_length
    assert nf.byte_aligned is byte_aligned
    assert nf.number_of_frames == frames
    assert nf.offset == 1
    assert nf.length == needed  # -1 resolved to the rest of the buffer


def test_attributes_are_read_only(frames_impl):
    nf = frames_impl.NativeFrames(bytes(8), rows=2, columns=2, bits_allocated=16)
    names = (
        "frame_bits", "frame_length", "byte_aligned", "number_of_frames", "offset", "length"
    )
    for name in names:
        with pytest.raises(AttributeError):
            setattr(nf, name, 0)


def test_cannot_be_reinitialised(frames_impl):
    nf = frames_impl.NativeFrames(bytes(100), rows=10, columns=10, bits_allocated=8)
    with pytest.raises(TypeError) as info:
        nf.__init__(bytes(1), rows=1, columns=1, bits_allocated=8)
    assert str(info.value) == "NativeFrames is already initialised"
    assert nf.frame_length == 100 and len(nf.frame(0)) == 100


def test_frame_range_aligned(frames_impl):
    nf = frames_impl.NativeFrames(
        bytes(1000), rows=4, columns=5, bits_allocated=16, number_of_frames=10, offset=100,
        length=401,
    )
    assert [nf.frame_range(i) for i in (0, 1, 9)] == [(100, 140), (140, 180), (460, 500)]


def test_frame_range_unaligned_covers_touched_bytes(frames_impl):
    # 15-bit frames: frame 1 is bits 15..29 -> bytes 1..3; frame 7 bits 105..119 -> 13..14.
    nf = frames_impl.NativeFrames(
        bytes(40), rows=3, columns=5, bits_allocated=1, number_of_frames=8, offset=10
    )
    assert nf.frame_range(0) == (10, 12)
    assert nf.frame_range(1) == (11, 14)
    assert nf.frame_range(7) == (23, 25)


def test_planar_configuration_does_not_change_frames(frames_impl):
    # PS3.3 C.7.6.3.1.3: planar configuration only orders the samples inside a frame.
    rng = np.random.default_rng(1)
    planes = rng.integers(0, 256, size=(3, 3, 4, 5), dtype=np.uint8)  # frame, sample, r, c
    ds = _dataset(4, 5, 3, 8, 3, "RGB", planes.tobytes())
    ds.PlanarConfiguration = 1
    expected = pixel_array(ds)  # (frame, r, c, sample)
    nf = frames_impl.NativeFrames(
        ds.PixelData, rows=4, columns=5, samples_per_pixel=3, bits_allocated=8,
        number_of_frames=3, photometric_interpretation="RGB",
    )
    assert nf.frame_length * 8 == frames_impl.frame_bits(4, 5, 3, 8, "RGB")
    for i in range(3):
        assert bytes(nf.frame(i)) == expected[i].transpose(2, 0, 1).tobytes()


# ---------------------------------------------------------------------------------------------
# Validation: same exception type, message and offset in both implementations


@pytest.mark.parametrize(
    "args, exc, message",
    [
        ((0, 1, 1, 8), ValueError, "Rows must be >= 1, got 0"),
        ((1, -3, 1, 8), ValueError, "Columns must be >= 1, got -3"),
        ((1, 1, 2, 8), ValueError, "Samples per Pixel must be 1, 3 or 4, got 2"),
        ((1, 1, 1, 12), ValueError, "Bits Allocated must be 1 or a multiple of 8 up to 64, got 12"),
        ((1, 1, 1, 0), ValueError, "Bits Allocated must be 1 or a multiple of 8 up to 64, got 0"),
        ((1, 1, 1, 72), ValueError, "Bits Allocated must be 1 or a multiple of 8 up to 64, got 72"),
        ((1, 1, 1, 8, b"RGB"), TypeError, "photometric_interpretation must be str, not bytes"),
        ((2, 2, 1, 8, "YBR_FULL_422"), ValueError, "YBR_FULL_422 needs Samples per Pixel 3, got 1"),
        ((1.0, 1, 1, 8), TypeError, "'float' object cannot be interpreted as an integer"),
    ],
)
def test_frame_bits_errors(frames_impl, args, exc, message):
    with pytest.raises(exc) as info:
        frames_impl.frame_bits(*args)
    assert type(info.value) is exc
    assert str(info.value) == message


GEOMETRY = dict(rows=2, columns=3, bits_allocated=16)  # 12-byte frames


@pytest.mark.parametrize(
    "buffer, kwargs, exc, message, offset",
    [
        (bytes(12), dict(number_of_frames=0), ValueError,
         "Number of Frames must be >= 1, got 0", None),
        (bytes(12), dict(offset=-1), ValueError, "offset must be >= 0, got -1", None),
        (bytes(12), dict(length=-2), ValueError,
         "length must be >= 0, or -1 for the rest of the buffer, got -2", None),
        (bytes(12), dict(offset=13), ParseError,
         "Pixel Data offset 13 is past the end of the 12-byte buffer (at byte 13)", 13),
        (bytes(12), dict(offset=2**70), ParseError,
         f"Pixel Data offset {2**70} is past the end of the 12-byte buffer (at byte {2**70})",
         2**70),
        (bytes(30), dict(offset=10, length=21), ParseError,
         "Pixel Data value of 21 bytes runs past the end of the 30-byte buffer "
         "(20 bytes available) (at byte 10)", 10),
        (bytes(30), dict(offset=10, length=2**64), ParseError,
         f"Pixel Data value of {2**64} bytes runs past the end of the 30-byte buffer "
         "(20 bytes available) (at byte 10)", 10),
        (bytes(30), dict(offset=7, number_of_frames=2), ParseError,
         "native Pixel Data too short: 2 frame(s) of 96 bits need 24 bytes, "
         "the value has 23 (at byte 7)", 7),
        (bytes(100), dict(number_of_frames=2**62), ParseError,
         f"native Pixel Data too short: {2**62} frame(s) of 96 bits need {12 * 2**62} bytes, "
         "the value has 100 (at byte 0)", 0),
        (bytes(100), dict(offset=4, length=11), ParseError,
         "native Pixel Data too short: 1 frame(s) of 96 bits need 12 bytes, "
         "the value has 11 (at byte 4)", 4),
        (np.zeros((4, 8), np.uint8)[:, ::2], {}, TypeError, "buffer must be C-contiguous", None),
        ("not a buffer", {}, TypeError, "memoryview: a bytes-like object is required, not 'str'",
         None),
    ],
    ids=["no-frames", "negative-offset", "negative-length", "offset-past-end", "offset-huge",
         "value-past-end", "value-huge", "too-short", "frames-huge", "too-short-length",
         "strided", "not-a-buffer"],
)
def test_native_frames_errors(frames_impl, buffer, kwargs, exc, message, offset):
    with pytest.raises(exc) as info:
        frames_impl.NativeFrames(buffer, **{**GEOMETRY, **kwargs})
    assert type(info.value) is exc
    assert str(info.value) == message
    if offset is not None:
        assert info.value.offset == offset


def test_one_bit_needs_only_the_partial_last_byte(frames_impl):
    # 3 frames of 15 bits = 45 bits -> 6 bytes, not 3 * 2.
    frames_impl.NativeFrames(bytes(6), rows=3, columns=5, bits_allocated=1, number_of_frames=3)
    with pytest.raises(ParseError, match="need 6 bytes, the value has 5"):
        frames_impl.NativeFrames(bytes(5), rows=3, columns=5, bits_allocated=1, number_of_frames=3)


def test_geometry_errors_come_through_the_constructor(frames_impl):
    with pytest.raises(ValueError) as info:
        frames_impl.NativeFrames(bytes(100), rows=2, columns=2, bits_allocated=10)
    assert str(info.value) == "Bits Allocated must be 1 or a multiple of 8 up to 64, got 10"


@pytest.mark.parametrize("bad", [-1, 3, 2**64, -(2**70)])
def test_index_errors(frames_impl, bad):
    for bits in (8, 1):  # aligned and unaligned paths
        nf = frames_impl.NativeFrames(bytes(30), rows=1, columns=5, bits_allocated=bits,
                                      number_of_frames=3)
        message = f"frame index {bad} out of range for 3 frame(s)"
        for call in (nf.frame, nf.frame_range, lambda i: nf.gather([0, i])):
            with pytest.raises(IndexError) as info:
                call(bad)
            assert str(info.value) == message


def test_index_type_errors(frames_impl):
    nf = frames_impl.NativeFrames(bytes(30), rows=1, columns=5, bits_allocated=8)
    for call in (nf.frame, nf.frame_range, lambda i: nf.gather([i])):
        with pytest.raises(TypeError) as info:
            call("0")
        assert str(info.value) == "'str' object cannot be interpreted as an integer"
    with pytest.raises(TypeError) as info:
        nf.gather(0)
    assert str(info.value) == "'int' object is not iterable"


def test_index_accepts_integer_like(frames_impl):
    nf = frames_impl.NativeFrames(bytes(range(10)), rows=1, columns=5, bits_allocated=8,
                                  number_of_frames=2)
    assert bytes(nf.frame(np.int64(1))) == bytes(range(5, 10))
    assert nf.frame_range(True) == (5, 10)


# ---------------------------------------------------------------------------------------------
# Zero-copy views


def test_frame_is_read_only_view_of_bytes(frames_impl):
    buf = bytes(range(256)) * 4
    nf = frames_impl.NativeFrames(buf, rows=10, columns=10, bits_allocated=8,
                                  number_of_frames=10, offset=3)
    view = nf.frame(4)
    assert isinstance(view, memoryview)
    assert view.readonly
    assert view.obj is buf
    assert view.format == "B" and view.nbytes == 100
    assert bytes(view) == buf[403:503]


def test_frame_shares_memory_with_bytearray(frames_impl):
    buf = bytearray(64)
    nf = frames_impl.NativeFrames(buf, rows=4, columns=4, bits_allocated=16, number_of_frames=2)
    view = nf.frame(1)
    assert view.obj is buf
    buf[32] = 0xAB
    buf[63] = 0xCD
    assert view[0] == 0xAB and view[-1] == 0xCD
    with pytest.raises(TypeError):
        view[0] = 1  # read-only even though the buffer is writable


def test_frame_of_typed_and_multidimensional_buffers(frames_impl):
    words = array.array("H", range(40))  # itemsize 2: cast to bytes, not rejected
    nf = frames_impl.NativeFrames(words, rows=4, columns=5, bits_allocated=16, number_of_frames=2)
    assert nf.frame(1).obj is words
    assert np.frombuffer(nf.frame(1), dtype="<u2").tolist() == list(range(20, 40))
    grid = np.arange(48, dtype=np.uint8).reshape(6, 8)
    nf = frames_impl.NativeFrames(grid, rows=4, columns=4, bits_allocated=8, number_of_frames=3)
    assert np.shares_memory(np.frombuffer(nf.frame(2), np.uint8), grid)
    assert bytes(nf.frame(2)) == bytes(range(32, 48))


def test_frames_of_mmap(frames_impl, tmp_path):
    header = b"\x00" * 131  # odd, so frame views start at unaligned addresses
    frames = np.random.default_rng(7).integers(0, 2**16, size=(5, 16, 12), dtype="<u2")
    path = tmp_path / "pixels.bin"
    path.write_bytes(header + frames.tobytes() + b"\x00")
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    nf = frames_impl.NativeFrames(mm, rows=16, columns=12, bits_allocated=16, number_of_frames=5,
                                  offset=len(header))
    assert nf.length == frames.nbytes + 1
    view = nf.frame(3)
    assert view.obj is mm
    assert bytes(view) == frames[3].tobytes()
    assert bytes(nf.gather([4, 0])) == frames[4].tobytes() + frames[0].tobytes()
    # The mapping stays exported while a view or the NativeFrames lives: no use after unmap.
    with pytest.raises(BufferError):
        mm.close()
    del view, nf
    gc.collect()
    mm.close()


# ---------------------------------------------------------------------------------------------
# gather


def test_gather_order_duplicates_and_padding(frames_impl):
    value = bytes(range(15))  # 5 frames of 3 bytes
    nf = frames_impl.NativeFrames(value, rows=1, columns=3, bits_allocated=8, number_of_frames=5)
    out = nf.gather([4, 0, 4])
    assert isinstance(out, bytearray)
    assert out == value[12:15] + value[0:3] + value[12:15] + b"\x00"  # 9 bytes + pad
    assert nf.gather([1, 2]) == value[3:9]  # already even: no pad
    assert nf.gather(iter([3])) == value[9:12] + b"\x00"
    assert nf.gather([]) == bytearray()


def test_gather_copies(frames_impl):
    buf = bytearray(range(8))
    nf = frames_impl.NativeFrames(buf, rows=2, columns=2, bits_allocated=8, number_of_frames=2)
    out = nf.gather([1])
    buf[4] = 99
    assert out == bytearray([4, 5, 6, 7])


def test_one_bit_by_hand(frames_impl):
    # 0xD6 0x01 = bits (LSB first) 0 1 1 | 0 1 0 | 1 1 1: three 3-bit frames (1 x 3 pixels).
    nf = frames_impl.NativeFrames(b"\xd6\x01", rows=1, columns=3, bits_allocated=1,
                                  number_of_frames=3)
    assert [nf.frame(i) for i in range(3)] == [b"\x06", b"\x02", b"\x07"]
    assert all(type(nf.frame(i)) is bytes for i in range(3))
    # frame 2 then frame 0: bits 1 1 1 0 1 1 -> 0b110111, then the even-length pad byte.
    assert nf.gather([2, 0]) == b"\x37\x00"
    assert nf.gather([1, 1, 1]) == b"\x92\x00"  # 010 010 010 -> 0b010010010 = 0x092


def test_one_bit_aligned_frames_are_views(frames_impl):
    buf = os.urandom(24)
    nf = frames_impl.NativeFrames(buf, rows=4, columns=4, bits_allocated=1, number_of_frames=12)
    assert nf.byte_aligned
    assert nf.frame(5).obj is buf
    assert bytes(nf.frame(5)) == buf[10:12]
    assert nf.gather([11, 0, 3]) == buf[22:24] + buf[0:2] + buf[6:8]


@pytest.mark.parametrize("rows, columns, frames", [(1023, 1023, 3), (257, 255, 12)])
def test_large_unaligned_one_bit(frames_impl, rows, columns, frames):
    # Large enough for the compiled module's GIL-free paths (>= 64 KiB outputs).
    bits = rows * columns
    rng = random.Random(rows)
    value = rng.randbytes((bits * frames + 7) // 8)
    nf = frames_impl.NativeFrames(value, rows=rows, columns=columns, bits_allocated=1,
                                  number_of_frames=frames)
    stream = _bits(value)
    last = frames - 1
    got = _bits(nf.frame(last))
    assert np.array_equal(got[:bits], stream[last * bits:frames * bits])
    assert not got[bits:].any()
    order = [rng.randrange(frames) for _ in range(frames)]
    out = nf.gather(order)
    assert len(out) % 2 == 0
    got = _bits(out)
    expected = np.concatenate([stream[i * bits:(i + 1) * bits] for i in order])
    assert np.array_equal(got[: len(expected)], expected)
    assert not got[len(expected):].any()


def test_large_aligned_gather(frames_impl):
    frames = np.random.default_rng(3).integers(0, 2**16, size=(6, 256, 257), dtype="<u2")
    value = frames.tobytes()
    nf = frames_impl.NativeFrames(value, rows=256, columns=257, bits_allocated=16,
                                  number_of_frames=6)
    out = nf.gather([5, 1, 1, 0])
    assert out == b"".join(frames[i].tobytes() for i in (5, 1, 1, 0))


def test_gather_from_threads(frames_impl):
    # The compiled module copies large gathers without the GIL; results must not interleave.
    from concurrent.futures import ThreadPoolExecutor

    frames = np.random.default_rng(5).integers(0, 256, size=(8, 300, 301), dtype=np.uint8)
    nf = frames_impl.NativeFrames(frames.tobytes(), rows=300, columns=301, bits_allocated=8,
                                  number_of_frames=8)
    orders = [[(k + j) % 8 for j in range(5)] for k in range(16)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(nf.gather, orders))
    for order, out in zip(orders, results):
        assert out == b"".join(frames[i].tobytes() for i in order)  # even: no pad


# ---------------------------------------------------------------------------------------------
# Hypothesis: differential against NumPy and pydicom


@st.composite
def _layouts(draw, bits_allocated):
    rows = draw(st.integers(1, 12))
    columns = draw(st.integers(1, 12))
    spp = draw(st.sampled_from([1, 3]))
    frames = draw(st.integers(1, 10))
    bits = rows * columns * spp * bits_allocated
    needed = (bits * frames + 7) // 8
    offset = draw(st.integers(0, 5))
    extra = draw(st.integers(0, 3))
    data = draw(st.binary(min_size=offset + needed + extra, max_size=offset + needed + extra))
    indices = draw(st.lists(st.integers(0, frames - 1), max_size=12))
    return rows, columns, spp, frames, offset, data, indices


@HYPOTHESIS
@given(layout=_layouts(1))
def test_one_bit_against_unpackbits(frames_impl, layout):
    rows, columns, spp, frames, offset, data, indices = layout
    bits = rows * columns * spp
    nf = frames_impl.NativeFrames(
        data, rows=rows, columns=columns, samples_per_pixel=spp, bits_allocated=1,
        number_of_frames=frames, offset=offset,
    )
    stream = _bits(data[offset:])
    for i in range(frames):
        frame = bytes(nf.frame(i))
        assert len(frame) == (bits + 7) // 8 == nf.frame_length
        got = _bits(frame)
        assert np.array_equal(got[:bits], stream[i * bits:(i + 1) * bits])
        assert not got[bits:].any()
        start, end = nf.frame_range(i)
        assert start - offset == i * bits // 8
        assert end - offset == -(-(i + 1) * bits // 8)
    out = nf.gather(indices)
    assert len(out) == (lambda n: n + n % 2)(-(-len(indices) * bits // 8))
    got = _bits(out)
    expected = np.concatenate([stream[i * bits:(i + 1) * bits] for i in indices] + [got[:0]])
    assert np.array_equal(got[: len(expected)], expected)
    assert not got[len(expected):].any()


@HYPOTHESIS
@given(bits_allocated=st.sampled_from([8, 16, 32, 64]), data=st.data())
def test_aligned_against_numpy(frames_impl, bits_allocated, data):
    rows, columns, spp, frames, offset, value, indices = data.draw(_layouts(bits_allocated))
    nf = frames_impl.NativeFrames(
        value, rows=rows, columns=columns, samples_per_pixel=spp,
        bits_allocated=bits_allocated, number_of_frames=frames, offset=offset,
    )
    per_frame = rows * columns * spp * bits_allocated // 8
    table = np.frombuffer(value, np.uint8, count=frames * per_frame, offset=offset)
    table = table.reshape(frames, per_frame)
    for i in range(frames):
        view = nf.frame(i)
        assert view.obj is value
        assert bytes(view) == table[i].tobytes()
        assert nf.frame_range(i) == (offset + i * per_frame, offset + (i + 1) * per_frame)
    out = nf.gather(indices)
    joined = b"".join(table[i].tobytes() for i in indices)
    assert out == joined + b"\x00" * (len(joined) % 2)


@HYPOTHESIS
@given(
    rows=st.integers(1, 600),
    columns=st.integers(1, 600),
    spp=st.sampled_from([1, 3]),
    bits_allocated=st.sampled_from([1, 8, 16, 32, 64]),
    frames=st.integers(1, 50),
    pi=st.sampled_from(["MONOCHROME2", "RGB", "YBR_FULL_422"]),
)
def test_expected_length_against_pydicom(
    frames_impl, rows, columns, spp, bits_allocated, frames, pi
):
    if pi == "YBR_FULL_422":
        spp = 3
        bits_allocated = max(bits_allocated, 8)  # pydicom's 2/3 rule is for whole bytes
    ds = _dataset(rows, columns, spp, bits_allocated, frames, pi, b"")
    expected = get_expected_length(ds, "bytes")
    value = bytes(expected)
    nf = frames_impl.NativeFrames(
        value, rows=rows, columns=columns, samples_per_pixel=spp, bits_allocated=bits_allocated,
        number_of_frames=frames, photometric_interpretation=pi,
    )
    assert (nf.frame_bits * frames + 7) // 8 == expected
    with pytest.raises(ParseError):
        frames_impl.NativeFrames(
            value[:-1], rows=rows, columns=columns, samples_per_pixel=spp,
            bits_allocated=bits_allocated, number_of_frames=frames, photometric_interpretation=pi,
        )


@settings(deadline=None, max_examples=40,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.integers(1, 9),
    columns=st.integers(1, 9),
    spp=st.sampled_from([1, 3]),
    bits_allocated=st.sampled_from([1, 8, 16, 32]),
    frames=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_frames_against_pydicom_pixels(
    frames_impl, rows, columns, spp, bits_allocated, frames, seed
):
    pi = "RGB" if spp == 3 else "MONOCHROME2"
    length = (rows * columns * spp * bits_allocated * frames + 7) // 8
    value = random.Random(seed).randbytes(length) + b"\x00" * (length % 2)
    ds = _dataset(rows, columns, spp, bits_allocated, frames, pi, value)
    nf = frames_impl.NativeFrames(
        value, rows=rows, columns=columns, samples_per_pixel=spp,
        bits_allocated=bits_allocated, number_of_frames=frames, photometric_interpretation=pi,
    )
    bits = nf.frame_bits
    # The whole array, not index=i: pydicom 3.0's single-frame path fails on some unaligned
    # 1-bit frames ("cannot reshape array of size 2 into shape (1,3)").
    pixels = pixel_array(ds, raw=True).reshape(frames, -1)
    for i in range(frames):
        expected = pixels[i]
        frame = nf.frame(i)
        if bits_allocated == 1:
            assert np.array_equal(_bits(frame)[:bits], expected)
        else:
            assert bytes(frame) == expected.astype(expected.dtype.newbyteorder("<")).tobytes()


# ---------------------------------------------------------------------------------------------
# Real files (pydicom test data, pydicom-data)

REAL_FILES = [
    "emri_small.dcm",  # 10 frames 64x64 16-bit
    "emri_small_big_endian.dcm",
    "eCT_Supplemental.dcm",  # 2 frames 512x512 16-bit
    "SC_rgb_2frame.dcm",
    "SC_rgb_16bit_2frame.dcm",
    "SC_rgb_32bit_2frame.dcm",
    "SC_rgb_expb_32bit_2frame.dcm",
    "OBXXXX1A_2frame.dcm",  # palette colour indices
    "rtdose.dcm",  # 15 frames 32-bit, implicit VR
    "liver.dcm",  # 3 frames 512x512 1-bit
    "liver_1frame.dcm",
]


def _check_real(frames_impl, name, check):
    """Run ``check(ds, mm, nf)`` on a memory-mapped test file, then prove the map is released."""
    path = get_testdata_file(name)
    ds = pydicom.dcmread(path)
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    # Pixel Data is the last element in these files; its value ends the file.
    start = len(mm) - len(ds.PixelData)
    assert mm[start:] == ds.PixelData
    nf = frames_impl.NativeFrames(
        mm, rows=ds.Rows, columns=ds.Columns, samples_per_pixel=ds.SamplesPerPixel,
        bits_allocated=ds.BitsAllocated, number_of_frames=int(ds.get("NumberOfFrames", 1)),
        photometric_interpretation=ds.PhotometricInterpretation, offset=start,
        length=len(ds.PixelData),
    )
    check(ds, mm, nf)
    del nf
    mm.close()  # BufferError if any view outlived its user


def _matches_pydicom(ds, mm, nf):
    frames = nf.number_of_frames
    assert -(-nf.frame_bits * frames // 8) == get_expected_length(ds, "bytes")
    pixels = ds.pixel_array.reshape(frames, -1)
    stored = ">" if ds.original_encoding[1] is False else "<"  # big- or little-endian file
    for i in range(frames):
        frame = nf.frame(i)
        if ds.BitsAllocated == 1:
            assert np.array_equal(_bits(frame)[: nf.frame_bits], pixels[i])
        else:
            assert frame.obj is mm
            dtype = pixels.dtype.newbyteorder(stored)
            assert bytes(frame) == pixels[i].astype(dtype).tobytes()
    last = frames - 1
    gathered = nf.gather([last, 0])
    assert gathered[: 2 * nf.frame_length] == bytes(nf.frame(last)) + bytes(nf.frame(0))


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_files_match_pydicom(frames_impl, name):
    _check_real(frames_impl, name, _matches_pydicom)


def _ybr_full_422(ds, mm, nf):
    assert nf.frame_length == get_expected_length(ds, "bytes") == 100 * 100 * 2
    assert bytes(nf.frame(0)) == ds.PixelData[: nf.frame_length]


def test_real_ybr_full_422(frames_impl):
    _check_real(frames_impl, "SC_ybr_full_422_uncompressed.dcm", _ybr_full_422)
