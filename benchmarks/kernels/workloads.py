"""The inputs of the kernel benchmarks, and the baseline code paths run on them.

Full sizes (the ones the README's table quotes):

* multipart: a STOW-RS body (PS3.18 §10.5: ``multipart/related``, one DICOM instance per part)
  of 200 CT-sized parts, about 105 MB, fed in 64 KiB chunks as an ASGI server hands it over;
  100 MB of near misses of the delimiter; 5000 parts of 2 KiB; one 64 KiB chunk from inside a
  part.
* frames: one 131 MB instance, 250 frames of 512 x 512 16-bit MONOCHROME2, written with pydicom
  to a temporary file and memory-mapped; a 1-bit instance whose frames do not start on byte
  boundaries.
* encaps: an encapsulated Pixel Data value of 100,000 fragments of 100 bytes, one per frame,
  with and without a Basic Offset Table; 20,000 three-fragment frames delimited only by JPEG
  EOI markers; 200,000 2-byte fragments.

With ``DICOMACCEL_KERNEL_BENCH_QUICK=1`` every count is cut down (see ``QUICK``) so the suite
runs in seconds; the table then labels rows with the sizes actually used.
"""

from __future__ import annotations

import mmap
import random
import struct
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np

from dicomaccel._compat import env_flag


@dataclass(frozen=True)
class Sizes:
    parts: int  # CT parts in the STOW-RS body
    near_miss_bytes: int
    small_parts: int
    frames: int  # frames in the native instance
    frame_rows: int
    one_bit_frames: int
    fragments: int  # fragments (= frames) in the encapsulated value
    marker_frames: int
    tiny_fragments: int


FULL = Sizes(parts=200, near_miss_bytes=100_000_000, small_parts=5000, frames=250, frame_rows=512,
             one_bit_frames=40, fragments=100_000, marker_frames=20_000, tiny_fragments=200_000)
QUICK = Sizes(parts=4, near_miss_bytes=1_000_000, small_parts=100, frames=8, frame_rows=64,
              one_bit_frames=24, fragments=1_000, marker_frames=200, tiny_fragments=2_000)

IS_QUICK = env_flag("DICOMACCEL_KERNEL_BENCH_QUICK")
SIZES = QUICK if IS_QUICK else FULL

# --- multipart --------------------------------------------------------------------------------

BOUNDARY = b"8f14e45fceea167a5a36dedd4bea2543"  # uuid4().hex, as DICOMweb clients send
CHUNK = 64 * 1024
CT_ROWS = CT_COLUMNS = 512
SMALL_PART_BYTES = 2048
DELIMITER = b"\r\n--" + BOUNDARY  # RFC 2046 §5.1.1: CRLF, "--", boundary
PART_HEAD = b"--" + BOUNDARY + b"\r\nContent-Type: application/dicom\r\n\r\n"


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element (PS3.5 §7.1.2), value padded to even length."""
    if len(value) % 2:
        value += b"\0" if vr == b"UI" else b" "  # PS3.5 §6.2: UI pads with NUL, text with space
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHI", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def ct_header(index: int) -> bytes:
    """Preamble, "DICM", File Meta (PS3.10 §7.1) and a CT data set up to Pixel Data's header."""
    uid = f"1.2.826.0.1.3680043.10.1234.{index}".encode()
    meta = b"".join([
        _element(0x0002, 0x0001, b"OB", b"\0\1"),
        _element(0x0002, 0x0002, b"UI", b"1.2.840.10008.5.1.4.1.1.2"),  # CT Image Storage
        _element(0x0002, 0x0003, b"UI", uid),
        _element(0x0002, 0x0010, b"UI", b"1.2.840.10008.1.2.1"),  # Explicit VR Little Endian
    ])
    dataset = b"".join([
        _element(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.2"),
        _element(0x0008, 0x0018, b"UI", uid),
        _element(0x0008, 0x0060, b"CS", b"CT"),
        _element(0x0010, 0x0010, b"PN", b"BENCH^MULTIPART"),
        _element(0x0020, 0x000D, b"UI", b"1.2.826.0.1.3680043.10.1234.1"),
        _element(0x0020, 0x000E, b"UI", b"1.2.826.0.1.3680043.10.1234.2"),
        _element(0x0020, 0x0013, b"IS", str(index).encode()),
        _element(0x0028, 0x0002, b"US", struct.pack("<H", 1)),
        _element(0x0028, 0x0004, b"CS", b"MONOCHROME2"),
        _element(0x0028, 0x0010, b"US", struct.pack("<H", CT_ROWS)),
        _element(0x0028, 0x0011, b"US", struct.pack("<H", CT_COLUMNS)),
        _element(0x0028, 0x0100, b"US", struct.pack("<H", 16)),
        _element(0x0028, 0x0101, b"US", struct.pack("<H", 12)),
        _element(0x0028, 0x0102, b"US", struct.pack("<H", 11)),
        _element(0x0028, 0x0103, b"US", struct.pack("<H", 0)),
        struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, CT_ROWS * CT_COLUMNS * 2),
    ])
    group_length = _element(0x0002, 0x0000, b"UL", struct.pack("<I", len(meta)))
    return b"\0" * 128 + b"DICM" + group_length + meta + dataset


@dataclass(frozen=True)
class Body:
    """A multipart body, its 64 KiB chunks, and what a correct parse of it must report."""

    body: bytes
    chunks: list[bytes]
    parts: int
    data_bytes: int  # the sum of the parts' data lengths


def chunked(body: bytes, size: int = CHUNK) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def ct_body(parts: int = SIZES.parts, seed: int = 0) -> Body:
    """The STOW-RS body: each part a CT header and 512 x 512 16-bit pixels of 12-bit noise (so
    the data is not compressible and holds stray ``\\r`` and ``-`` bytes, as real pixels do)."""
    rng = np.random.default_rng(seed)
    out, total = [], 0
    for i in range(parts):
        pixels = np.clip(rng.normal(1000, 400, CT_ROWS * CT_COLUMNS), 0, 4095).astype("<u2").tobytes()
        data = ct_header(i) + pixels
        total += len(data)
        out += [b"\r\n--" if i else b"--", BOUNDARY, b"\r\nContent-Type: application/dicom\r\n\r\n", data]
    out += [DELIMITER, b"--\r\n"]
    body = b"".join(out)
    return Body(body, chunked(body), parts, total)


def near_miss_body(size: int = SIZES.near_miss_bytes) -> Body:
    """One part whose data is nothing but near misses of the delimiter, each one byte short:
    the worst case for a scanner that checks every ``\\r\\n--`` it finds."""
    near = DELIMITER[:-1] + b"X"
    data = near * (size // len(near))
    body = b"--" + BOUNDARY + b"\r\n\r\n" + data + DELIMITER + b"--"
    return Body(body, chunked(body), 1, len(data))


def small_parts_body(parts: int = SIZES.small_parts, size: int = SMALL_PART_BYTES) -> Body:
    """Many small parts, as bulk-data STOW-RS (one part per compressed frame) sends them."""
    rng = np.random.default_rng(1)
    out = []
    for i in range(parts):
        out += [b"\r\n--" if i else b"--", BOUNDARY,
                b"\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Location: http://example.com/bulk/%d\r\n\r\n" % i,
                rng.bytes(size)]
    out += [DELIMITER, b"--\r\n"]
    body = b"".join(out)
    return Body(body, chunked(body), parts, parts * size)


def mid_part_chunk(body: Body) -> bytes:
    """64 KiB from the middle of the CT body: pixel noise, no delimiter."""
    middle = len(body.body) // 2
    chunk = body.body[middle : middle + CHUNK]
    if DELIMITER in chunk:
        raise RuntimeError("the mid-part chunk holds a delimiter")
    return chunk


def scan(module, chunks: list[bytes]) -> tuple[int, int]:
    """Ours: feed every chunk, touch every event; return (parts, data bytes)."""
    scanner = module.MultipartScanner(BOUNDARY)
    total = 0
    for chunk in chunks:
        for kind, value in scanner.feed(chunk):
            if kind == 2:  # part data
                total += len(value)
    scanner.finish()
    return scanner.part_count, total


def find_loop(body: bytes) -> int:
    """Baseline: every delimiter of the whole body, held in memory, found with ``bytes.find``
    (the speed of finding the delimiters with no streaming at all); returns their count."""
    count, pos = 0, body.find(b"--" + BOUNDARY)
    while pos >= 0:
        pos = body.find(DELIMITER, pos + 1)
        count += 1
    return count


def python_multipart(chunks: list[bytes]) -> tuple[int, int]:
    """Baseline: python-multipart's streaming ``MultipartParser``, fed the same chunks, with
    callbacks that only count; returns (parts, data bytes)."""
    from python_multipart.multipart import MultipartParser

    parts = total = 0

    def on_part_begin() -> None:
        nonlocal parts
        parts += 1

    def on_part_data(data: bytes, start: int, end: int) -> None:
        nonlocal total
        total += end - start

    parser = MultipartParser(BOUNDARY, callbacks={"on_part_begin": on_part_begin, "on_part_data": on_part_data})
    for chunk in chunks:
        parser.write(chunk)
    parser.finalize()
    return parts, total


def scanner_inside_a_part(module):
    """Ours, positioned inside a part's data (headers done), ready to be fed data chunks."""
    scanner = module.MultipartScanner(BOUNDARY)
    scanner.feed(PART_HEAD)
    return scanner


def python_multipart_inside_a_part(seen: list[int]):
    """python-multipart's parser in the same state; data lengths are appended to `seen`."""
    from python_multipart.multipart import MultipartParser

    parser = MultipartParser(BOUNDARY, callbacks={"on_part_data": lambda d, s, e: seen.append(e - s)})
    parser.write(PART_HEAD)
    return parser


# --- frames -----------------------------------------------------------------------------------

MF_GRAYSCALE_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word SC Image Storage
MF_SINGLE_BIT_SC = "1.2.840.10008.5.1.4.1.1.7.1"  # Multi-frame Single Bit SC Image Storage
ONE_BIT_SIDE = 511  # 511 x 511 bits per frame: every frame after the first starts mid-byte


def frame_index(frames: int) -> int:
    """The frame read by "frame N": 137 of 250, somewhere past the middle."""
    return frames * 137 // 250


def gather_indices(frames: int) -> list[int]:
    """Ten frames in no particular order, as a FRAME-level retrieve or WADO frame list asks."""
    return [(k * frames) // 250 % frames for k in (3, 249, 17, 100, 101, 102, 200, 5, 64, 128)]


@dataclass(frozen=True)
class Instance:
    """A DICOM file on disk whose Pixel Data is its last element, and where that value starts."""

    path: Path
    offset: int
    length: int
    rows: int
    columns: int
    bits_allocated: int
    frames: int

    def geometry(self) -> dict:
        return dict(rows=self.rows, columns=self.columns, bits_allocated=self.bits_allocated,
                    number_of_frames=self.frames, photometric_interpretation="MONOCHROME2",
                    offset=self.offset)


def _save(path: Path, sop_class: str, rows: int, columns: int, frames: int, bits: int, pixel_data: bytes) -> Instance:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Rows = rows
    ds.Columns = columns
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixel_data
    ds["PixelData"].VR = "OB" if bits == 1 else "OW"
    ds.save_as(path, enforce_file_format=True)
    # Pixel Data is the last element: its value ends the file, after a 12-byte explicit VR
    # header (PS3.5 §7.1.2: tag, VR, 2 reserved bytes, 32-bit length).
    length = len(pixel_data)
    offset = path.stat().st_size - length
    with open(path, "rb") as fh:
        fh.seek(offset - 12)
        tag, _, _, found = struct.unpack("<I2sHI", fh.read(12))
    if tag != 0x00107FE0 or found != length:
        raise RuntimeError(f"{path}: Pixel Data is not the last element")
    return Instance(path, offset, length, rows, columns, bits, frames)


def write_native_instance(path: Path, frames: int = SIZES.frames, side: int = SIZES.frame_rows) -> Instance:
    """The 16-bit multi-frame instance (250 x 512 x 512 x 2 bytes = 131,072,000 bytes of Pixel
    Data at full size); frames differ so a wrong frame index cannot go unnoticed."""
    pixels = np.arange(side * side, dtype="<u2").reshape(1, side, side)
    value = (pixels + np.arange(frames, dtype="<u2").reshape(frames, 1, 1)).tobytes()
    return _save(path, MF_GRAYSCALE_WORD_SC, side, side, frames, 16, value)


def write_one_bit_instance(path: Path, frames: int = SIZES.one_bit_frames) -> Instance:
    """A 1-bit instance: frames are packed back to back with no padding (PS3.5 §8.1.1), so with
    511 x 511 bits a frame starts mid-byte and must be shifted out; the value is padded to even
    length (PS3.5 §7.1.1)."""
    bits = ONE_BIT_SIDE * ONE_BIT_SIDE * frames
    value = random.Random(0).randbytes((bits + 7) // 8)
    if len(value) % 2:
        value += b"\0"
    return _save(path, MF_SINGLE_BIT_SC, ONE_BIT_SIDE, ONE_BIT_SIDE, frames, 1, value)


def map_file(path: Path) -> mmap.mmap:
    with open(path, "rb") as fh:
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)


def pydicom_frame(path: Path, index: int) -> bytes:
    """Baseline: one native frame's bytes the pydicom way, ``pixel_array(path, index=N)``."""
    from pydicom.pixels import pixel_array

    return pixel_array(path, index=index).tobytes()


def pydicom_one_bit_frame(path: Path, index: int) -> bytes:
    """Baseline: one 1-bit frame re-packed from bit 0, the pydicom way: ``pixel_array`` unpacks
    it to one byte per pixel, ``pack_bits`` packs it back (least significant bit first)."""
    from pydicom.pixels import pack_bits, pixel_array

    return pack_bits(pixel_array(path, index=index), pad=False)


# --- encaps -----------------------------------------------------------------------------------

FRAGMENT_SIZE = 100
ITEM = b"\xfe\xff\x00\xe0"  # Item tag (FFFE,E000), PS3.5 §7.5 / A.4
SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # (FFFE,E0DD), length 0


def encaps_index(fragments: int) -> int:
    return fragments * 73_137 // 100_000


def encapsulated_value(fragments: int = SIZES.fragments, *, with_bot: bool) -> bytes:
    """The encapsulated value (PS3.5 A.4): the Basic Offset Table item (full, or empty), one
    100-byte fragment per frame (the shape of a long ultrasound or XA cine), then the Sequence
    Delimitation Item."""
    header = ITEM + struct.pack("<I", FRAGMENT_SIZE)
    body = [header + k.to_bytes(4, "little") * (FRAGMENT_SIZE // 4) for k in range(fragments)]
    if with_bot:
        step = 8 + FRAGMENT_SIZE
        bot = ITEM + struct.pack(f"<I{fragments}I", 4 * fragments, *range(0, fragments * step, step))
    else:
        bot = ITEM + b"\x00\x00\x00\x00"
    return bot + b"".join(body) + SEQUENCE_DELIMITER


def marker_value(frames: int = SIZES.marker_frames) -> bytes:
    """Three fragments per frame and an empty Basic Offset Table, so only the JPEG EOI marker
    ending a frame's last fragment tells where frames end (PS3.5 A.4: the slowest mapping)."""
    parts = [ITEM + b"\x00\x00\x00\x00"]
    for k in range(frames):
        body = k.to_bytes(4, "little") * 8
        for fragment in (b"\xff\xd8" + body[:30], body, body[:30] + b"\xff\xd9"):
            parts.append(ITEM + len(fragment).to_bytes(4, "little") + fragment)
    parts.append(SEQUENCE_DELIMITER)
    return b"".join(parts)


def tiny_value(fragments: int = SIZES.tiny_fragments) -> bytes:
    """The smallest legal items (even length, PS3.5 A.4): the most item headers per byte."""
    item = ITEM + b"\x02\x00\x00\x00ab"
    return ITEM + b"\x00\x00\x00\x00" + item * fragments + SEQUENCE_DELIMITER


def frames_to_encapsulate(frames: int = SIZES.fragments) -> list[bytes]:
    return [k.to_bytes(4, "little") * 25 for k in range(frames)]


def pydicom_fragments(value: bytes) -> list[bytes]:
    """Baseline: pydicom's way to the fragment list, read the Basic Offset Table then walk the
    items with ``parse_basic_offsets`` + ``list(generate_fragments(...))``."""
    from pydicom.encaps import generate_fragments, parse_basic_offsets

    fp = BytesIO(value)
    parse_basic_offsets(fp)
    return list(generate_fragments(fp))
