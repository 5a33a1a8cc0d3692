"""Header scan, validation and frame index (dicomaccel.archive.ingest) on real files.

Every accepted file is checked against pydicom: the UIDs and keys the scanner reads, the
Pixel Data offsets (the bytes there are pydicom's PixelData) and each frame's bytes (pydicom's
``generate_frames`` for encapsulated data, slices of PixelData for native data).
Run with ``DICOMACCEL_NO_EXTENSIONS=1`` to build frame indexes with the pure-Python kernels.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import fields

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from dicomaccel.archive.ingest import (
    QUERY_KEYS,
    FrameIndex,
    Header,
    StoreFailure,
    build_frame_index,
    fillable,
    filled,
    is_valid_uid,
    scan,
    scan_head,
)
from dicomaccel.status import FailureReason
from dicomaccel.walk import MAX_SEQUENCE_DEPTH
from dicomaccel.testing.files import (
    compressed_file,
    ct_file,
    image_dataset,
    reencapsulated_file,
    to_bytes,
)
from helpers import assert_matches_pydicom

def set_bytes(data: bytes, pos: int, new: bytes) -> bytes:
    return data[:pos] + new + data[pos + len(new):]


# --- pydicom's bundled files ---------------------------------------------------------------
ACCEPTED = [
    "CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
    "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "JPEG-LL.dcm",
    "JPGExtended.dcm", "emri_small.dcm", "emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm",
    "emri_small_big_endian.dcm", "SC_rgb.dcm", "SC_rgb_2frame.dcm", "SC_rgb_rle_2frame.dcm",
    "SC_rgb_small_odd.dcm", "SC_rgb_small_odd_big_endian.dcm", "SC_ybr_full_422_uncompressed.dcm",
    "examples_ybr_color.dcm", "liver.dcm", "rtplan.dcm", "image_dfl.dcm", "UN_sequence.dcm",
    "ExplVR_BigEnd.dcm", "color3d_jpeg_baseline.dcm",
    "SC_rgb_jpeg_dcmtk.dcm", "OBXXXX1A.dcm", "JPEG-lossy.dcm", "J2K_pixelrep_mismatch.dcm",
]
REJECTED = {
    "no_meta.dcm": "no 'DICM' prefix at byte 128",
    "meta_missing_tsyntax.dcm": "lacks (0002,0010) Transfer Syntax UID",
    "MR_truncated.dcm": "truncated: Pixel Data value at byte 1500",
    "rtplan_truncated.dcm": "truncated: value of (300A,00B0)",
    "emri_small_jpeg_2k_lossless_too_short.dcm": "no Sequence Delimitation Item",
    "SC_rgb_jpeg.dcm": "unknown VR",  # implicit VR data set under an explicit VR syntax
}


@pytest.mark.parametrize("name", ACCEPTED)
def test_pydicom_files_match_pydicom(name):
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not available from pydicom-data")
    with open(path, "rb") as f:
        assert_matches_pydicom(f.read())


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_pydicom_broken_files_are_cannot_understand(name):
    with open(get_testdata_file(name), "rb") as f:
        data = f.read()
    with pytest.raises(StoreFailure) as err:
        build_frame_index(data, scan(data))
    assert err.value.status == FailureReason.CANNOT_UNDERSTAND
    assert REJECTED[name] in err.value.comment


def _scanned(data: bytes):
    """scan() of the whole file: its Header, or the (status, comment) it fails with."""
    try:
        return scan(data, validate=True)
    except StoreFailure as err:
        return err.status, err.comment


@pytest.mark.parametrize("name", ACCEPTED + sorted(REJECTED))
def test_scan_head_is_the_whole_file_scan_or_none(name):
    """From any prefix of a file, scan_head() gives what scan() of the whole file gives, or
    None (the prefix does not hold the header); never another answer."""
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not available from pydicom-data")
    with open(path, "rb") as f:
        data = f.read()
    whole = _scanned(data)
    cuts = sorted({*range(0, min(len(data), 2048), 7), *range(2048, len(data), 997), len(data)})
    answered = 0
    for cut in cuts:
        try:
            got = scan_head(data[:cut], len(data), validate=True)
        except StoreFailure as err:
            got = err.status, err.comment
        if got is not None:
            answered += 1
            assert got == whole, cut
    assert answered  # the whole file at least


@pytest.mark.parametrize("name", ACCEPTED)
def test_headers_hold_every_field(name):
    """The scan builds its Header past the dataclass's __init__ (ingest.filled): every field
    must be the header's own, the query keys a file lacks included (with their defaults)."""
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not available from pydicom-data")
    with open(path, "rb") as f:
        header = scan(f.read(), validate=True)
    assert set(vars(header)) == {f.name for f in fields(Header)}
    # A query key the data set lacks holds its default, as __init__ would have set it.
    ds = dcmread(path, stop_before_pixels=True)
    defaults = {f.name: f.default for f in fields(Header)}
    for name, tag, _ in QUERY_KEYS:
        if tag not in ds:
            assert getattr(header, name) == defaults[name], name


def test_only_plain_frozen_dataclasses_are_fillable():
    """filled() skips __init__: a class whose __init__ would do more is refused up front."""
    from dataclasses import dataclass, field

    @dataclass(frozen=True)
    class Hooked:
        a: int

        def __post_init__(self):
            pass

    @dataclass(frozen=True)
    class Factory:
        a: list = field(default_factory=list)

    for cls in (Hooked, Factory):
        with pytest.raises(TypeError, match="filled"):
            fillable(cls)

    @fillable
    @dataclass(frozen=True)
    class Plain:
        a: int

    assert filled(Plain, {"a": 1}) == Plain(1)


def test_scan_head_needs_only_the_header():
    data = ct_file(rows=64, columns=64)
    h = scan(data)
    assert scan_head(data[:h.pixel_value_offset], len(data)) == h
    assert scan_head(data[:h.pixel_offset + 4], len(data)) is None  # inside the Pixel Data header
    # A file shorter than its Pixel Data value is refused by both, not read past its end.
    short = len(data) - 1
    assert scan_head(data[:h.pixel_value_offset], short) is None
    with pytest.raises(StoreFailure, match="truncated: Pixel Data value"):
        scan(data[:short])


# --- generated instances ------------------------------------------------------------------
@pytest.mark.parametrize(
    "ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_ct_native_syntaxes(ts):
    data = ct_file(ts)
    h, fi, ds = assert_matches_pydicom(data)
    assert h.patient_name == "Müller^Jörg" and h.instance_number == 7
    assert h.dataset_offset == 132 + 12 + len(to_file_meta_group_value(data))
    assert fi.frame_ranges(0) == [(h.pixel_value_offset, h.pixel_value_offset + 512 * 512 * 2)]
    assert h.pixel_value_offset + h.pixel_length == len(data)


def to_file_meta_group_value(data: bytes) -> bytes:
    (length,) = struct.unpack_from("<I", data, 140)
    return data[144:144 + length]


@pytest.mark.parametrize("kw", [
    dict(frames=5, rows=32, columns=24),
    dict(frames=4, rows=16, columns=16, bits=8),
    dict(frames=3, rows=10, columns=9, samples=3, bits=8),
    dict(frames=2, rows=4, columns=6, samples=3, bits=8, photometric="YBR_FULL_422"),
], ids=["word", "byte", "rgb", "ybr422"])
def test_multiframe_native(kw):
    h, fi, _ = assert_matches_pydicom(ct_file(**kw))
    assert fi.number_of_frames == kw["frames"]


def test_single_bit_frames_not_byte_aligned():
    ds = image_dataset(frames=5, rows=3, columns=5, bits=1)  # 15 bits per frame
    data = to_bytes(ds)
    h = scan(data)
    fi = build_frame_index(data, h)
    assert (fi.frame_bits, fi.byte_aligned) == (15, False)
    bits = np.unpackbits(np.frombuffer(ds.PixelData, np.uint8), bitorder="little")
    for k in range(5):
        ((start, end),) = fi.frame_ranges(k)
        first = k * 15 - (start - h.pixel_value_offset) * 8
        covered = np.unpackbits(np.frombuffer(data[start:end], np.uint8), bitorder="little")
        assert (covered[first:first + 15] == bits[k * 15:(k + 1) * 15]).all()
        frame = fi.native_frames(data).frame(k)
        got = np.unpackbits(np.frombuffer(bytes(frame), np.uint8), bitorder="little")[:15]
        assert (got == bits[k * 15:(k + 1) * 15]).all()


@pytest.mark.parametrize("ts", [RLELossless, JPEG2000Lossless])
def test_compressed_frames_match_pydicom(ts):
    h, fi, _ = assert_matches_pydicom(compressed_file(ts, frames=3))
    assert fi.encapsulated and fi.number_of_frames == 3
    assert len(fi.fragment_offsets) == 3


@pytest.mark.parametrize("tables", [dict(bot=True), dict(eot=True), dict(),
                                    dict(bot=True, fragments_per_frame=3)],
                         ids=["bot", "eot", "none", "bot-multifragment"])
def test_offset_tables(tables):
    frames = [bytes([k]) * (10 + 2 * k) for k in range(4)]
    data = reencapsulated_file(frames, **tables)
    h, fi, _ = assert_matches_pydicom(data)
    assert fi.has_basic_offset_table == tables.get("bot", False)
    assert fi.has_extended_offset_table == tables.get("eot", False)
    for k, frame in enumerate(frames):
        assert b"".join(data[a:b] for a, b in fi.frame_ranges(k)) == frame


def test_frame_index_blob_round_trip():
    for data in (compressed_file(RLELossless), ct_file(frames=2, rows=3, columns=3, bits=1)):
        fi = build_frame_index(data, scan(data))
        again = FrameIndex.from_blob(fi.to_blob())
        assert again == fi
        assert [again.frame_ranges(k) for k in range(fi.number_of_frames)] == \
               [fi.frame_ranges(k) for k in range(fi.number_of_frames)]
    with pytest.raises(IndexError):
        fi.frame_ranges(fi.number_of_frames)


def test_deflated_is_accepted_without_frame_index():
    data = to_bytes(image_dataset(rows=64, columns=64), DeflatedExplicitVRLittleEndian)
    h, fi, ds = assert_matches_pydicom(data)
    assert fi is None and h.pixel_tag == 0x7FE00010
    assert (h.pixel_offset, h.pixel_value_offset, h.pixel_length) == (-1, -1, 64 * 64 * 2)
    # Garbage instead of a deflate stream, and a stream cut short.
    with pytest.raises(StoreFailure, match="does not inflate") as err:
        scan(data[:h.dataset_offset] + b"\xff" * 64)
    assert err.value.status == FailureReason.CANNOT_UNDERSTAND
    with pytest.raises(StoreFailure, match="runs past|truncated"):
        scan(data[:h.dataset_offset + (len(data) - h.dataset_offset) // 2])


def test_undefined_length_sequences_are_walked():
    # Hand-built: nested undefined-length sequences and items, a UN sequence (implicit VR
    # inside, PS3.5 §6.2.2), all before the keys the scanner needs.
    ds = image_dataset(rows=4, columns=4)
    data = to_bytes(ds)
    h = scan(data)
    pos = h.dataset_offset

    def el(group, elem, vr, value):
        if vr in (b"SQ", b"UN", b"OB"):
            return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
        return struct.pack("<HH2sH", group, elem, vr, len(value)) + value

    item_undef = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    item_delim = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    seq_delim = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    inner = struct.pack("<HH2sHI", 0x0008, 0x1115, b"SQ", 0, 0xFFFFFFFF) + item_undef + \
        el(0x0008, 0x1150, b"UI", b"1.2\0") + item_delim + seq_delim
    implicit_item = item_undef + struct.pack("<HHI", 0x0008, 0x1155, 4) + b"1.3\0" + item_delim
    blob = struct.pack("<HH2sHI", 0x0008, 0x0006, b"SQ", 0, 0xFFFFFFFF) + item_undef + inner + \
        item_delim + b"\xfe\xff\x00\xe0" + struct.pack("<I", 0) + seq_delim + \
        struct.pack("<HH2sHI", 0x0009, 0x1001, b"UN", 0, 0xFFFFFFFF) + implicit_item + seq_delim
    patched = data[:pos] + blob + data[pos:]
    h2 = scan(patched)
    assert (h2.sop_instance_uid, h2.study_uid, h2.patient_id) == \
           (h.sop_instance_uid, h.study_uid, h.patient_id)
    assert h2.pixel_offset == h.pixel_offset + len(blob)
    assert_matches_pydicom(patched)
    # A missing Sequence Delimitation Item is a truncation, reported with its offset.
    cut = data[:pos] + blob[:-8]
    with pytest.raises(StoreFailure, match=r"truncated: .* at byte \d+"):
        scan(cut)


def test_sequence_depth_is_bounded():
    ds = image_dataset(rows=4, columns=4)
    data = to_bytes(ds)
    pos = scan(data).dataset_offset
    nest = MAX_SEQUENCE_DEPTH + 1
    head = (struct.pack("<HH2sHI", 0x0008, 0x0006, b"SQ", 0, 0xFFFFFFFF)
            + b"\xfe\xff\x00\xe0\xff\xff\xff\xff") * nest
    tail = (b"\xfe\xff\x0d\xe0\0\0\0\0" + b"\xfe\xff\xdd\xe0\0\0\0\0") * nest
    with pytest.raises(StoreFailure, match="nested deeper") as err:
        scan(data[:pos] + head + tail + data[pos:])
    assert err.value.status == FailureReason.CANNOT_UNDERSTAND


# --- failures ---------------------------------------------------------------------------------
def failure(data: bytes) -> StoreFailure:
    with pytest.raises(StoreFailure) as err:
        h = scan(data)
        build_frame_index(data, h)
    return err.value


def test_not_ps310():
    data = ct_file(rows=4, columns=4)
    for bad, text in (
        (b"", "shorter than preamble"),
        (data[:131], "shorter than preamble"),
        (set_bytes(data, 128, b"DICN"), "no 'DICM' prefix at byte 128"),
        (data[:132] + data[132 + 12 + len(to_file_meta_group_value(data)):],
         "no File Meta Information"),
        (data[:132] + b"\x02\x00\x10\x00\x00\x00\x00", "truncated: element header at byte 132"),
    ):
        err = failure(bad)
        assert err.status == FailureReason.CANNOT_UNDERSTAND
        assert text in err.comment


def test_every_truncation_point_fails_cleanly():
    data = ct_file(rows=4, columns=4)
    h = scan(data)
    refused = 0
    for cut in range(len(data)):
        try:
            got = scan(data[:cut])
        except StoreFailure as err:
            assert err.status == FailureReason.CANNOT_UNDERSTAND, cut
            refused += 1
        else:
            # A cut on an element boundary is a shorter, well-formed data set; anything
            # from the Pixel Data header on must be refused.
            assert got.pixel_tag == 0 and cut <= h.pixel_offset, cut
    assert refused > len(data) * 0.8


def test_truncated_comment_has_offset_and_uids():
    data = ct_file(rows=4, columns=4)
    h = scan(data)
    err = failure(data[:h.pixel_value_offset + 5])
    assert f"Pixel Data value at byte {h.pixel_value_offset}" in err.comment
    assert (err.sop_class_uid, err.sop_instance_uid) == (h.sop_class_uid, h.sop_instance_uid)


def test_unknown_transfer_syntax_is_c122():
    data = to_bytes(image_dataset(rows=4, columns=4), ExplicitVRLittleEndian)
    bad = data.replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.99999.1.2.1\0", 1)
    err = failure(bad)
    assert err.status == FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED
    assert err.sop_instance_uid == scan(data).sop_instance_uid


def test_unknown_vr_and_stray_delimiters():
    data = ct_file(rows=4, columns=4)
    pos = scan(data).dataset_offset
    bad_vr = b"\x08\x00\x05\x00zz\x02\x00ab"
    assert "unknown VR" in failure(data[:pos] + bad_vr + data[pos:]).comment
    assert "unexpected (FFFE,E00D)" in failure(
        data[:pos] + b"\xfe\xff\x0d\xe0\0\0\0\0" + data[pos:]).comment


def test_pixel_data_shorter_than_geometry():
    ds = image_dataset(frames=3, rows=8, columns=8)
    ds.PixelData = ds.PixelData[:-128]  # 3 frames of 8 x 8 x 2 bytes declared, 2 present
    err = failure(to_bytes(ds))
    assert err.status == FailureReason.CANNOT_UNDERSTAND
    assert "too short" in err.comment and err.sop_instance_uid == ds.SOPInstanceUID


def test_missing_geometry_is_a900_and_bad_geometry_c000():
    ds = image_dataset(rows=4, columns=4)
    del ds.Rows
    assert failure(to_bytes(ds)).status == FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS
    ds = image_dataset(rows=4, columns=4)
    ds.BitsAllocated = 12
    assert failure(to_bytes(ds)).status == FailureReason.CANNOT_UNDERSTAND


def test_number_of_frames_zero():
    ds = image_dataset(frames=2, rows=4, columns=4)
    ds.NumberOfFrames = 0
    err = failure(to_bytes(ds))
    assert err.status == FailureReason.CANNOT_UNDERSTAND and "Number of Frames is 0" in err.comment


def test_number_of_frames_not_an_integer():
    ds = image_dataset(frames=2, rows=4, columns=4)
    ds.NumberOfFrames = "2"
    data = to_bytes(ds).replace(b"2 \x28\x00\x10\x00", b"x \x28\x00\x10\x00")
    assert "Number of Frames" in failure(data).comment


def test_encapsulated_structure_errors():
    frames = [b"\x01" * 10, b"\x02" * 12]
    data = reencapsulated_file(frames)
    h = scan(data)
    # Native-length Pixel Data under an encapsulated syntax, and vice versa.
    defined = set_bytes(data, h.pixel_offset + 8, struct.pack("<I", 8))
    assert "requires encapsulation" in failure(defined).comment
    native = to_bytes(image_dataset(rows=4, columns=4))
    hn = scan(native)
    undefined = set_bytes(native, hn.pixel_offset + 8, b"\xff\xff\xff\xff")
    assert "undefined length" in failure(undefined).comment
    # An item tag smashed inside the fragments.
    smashed = set_bytes(data, h.pixel_value_offset + 8, b"\x00\x00\x00\x00")
    err = failure(smashed)
    assert err.status == FailureReason.CANNOT_UNDERSTAND and "Pixel Data at byte" in err.comment
    # Fewer fragments than frames.
    ds = dcmread(io.BytesIO(data))
    ds.NumberOfFrames = 3
    assert "fewer fragments" in failure(to_bytes(ds, RLELossless)).comment


def test_uid_syntax():
    assert is_valid_uid("1.2.840.10008.1.2")
    assert is_valid_uid("1.02.3")  # leading zero tolerated
    assert is_valid_uid("1." + "2" * 62)
    for bad in ("", "1..2", ".1", "1.", "1.2.a", "../../etc", "1/2", "1." + "2" * 63, None,
                "1.2\n", "１.２"):
        assert not is_valid_uid(bad), bad


def test_charset_decoding():
    ds = image_dataset(rows=2, columns=2)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "山田^太郎"
    h = scan(to_bytes(ds))
    assert h.patient_name == "山田^太郎"
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.PatientName = "Yamada^Tarou=山田^太郎"
    assert scan(to_bytes(ds)).patient_name == "Yamada^Tarou=山田^太郎"


def test_deflate_bomb_is_refused(monkeypatch):
    import dicomaccel.archive.ingest as ingest

    ds = image_dataset(rows=4, columns=4)
    del ds.PixelData
    data = to_bytes(ds, DeflatedExplicitVRLittleEndian)
    meta = data[:scan(data).dataset_offset]
    # The data set ends in a padding element (FFFC,FFFC) declared 1 GiB long, then 16 MiB
    # of zeros that deflate to almost nothing.
    body = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    plain = to_bytes(ds)
    plain = plain[scan(plain).dataset_offset:]
    padding = struct.pack("<HH2sHI", 0xFFFC, 0xFFFC, b"OB", 0, 0x40000000)
    stream = body.compress(plain + padding) + body.compress(b"\0" * (1 << 24)) + body.flush()
    assert len(stream) < 100_000
    monkeypatch.setattr(ingest, "MAX_INFLATED_SIZE", 1 << 20)
    assert "inflates to more than" in failure(meta + stream).comment
    monkeypatch.setattr(ingest, "MAX_INFLATED_SIZE", 1 << 30)
    assert "truncated: value of (FFFC,FFFC)" in failure(meta + stream).comment


def test_deflated_header_beyond_its_bound_is_refused(monkeypatch):
    # No Pixel Data: everything inflated is header, held in memory while scanned.
    import dicomaccel.archive.ingest as ingest

    ds = image_dataset(rows=4, columns=4)
    del ds.PixelData
    ds.add_new(0x00091010, "OB", b"\0" * (3 << 20))  # 3 MiB of a private value
    data = to_bytes(ds, DeflatedExplicitVRLittleEndian)
    monkeypatch.setattr(ingest, "MAX_INFLATED_HEADER", 1 << 20)
    assert "more than 1048576 bytes before its Pixel Data" in failure(data).comment
    monkeypatch.setattr(ingest, "MAX_INFLATED_HEADER", 4 << 20)
    assert scan(data).pixel_tag == 0


@pytest.mark.parametrize("raw", [b"99999999999999999999", b"1_0", b"+2147483648"])
def test_instance_number_outside_is_is_c000(raw):
    ds = image_dataset(rows=4, columns=4)
    ds.InstanceNumber = "7"
    data = to_bytes(ds)
    # (0020,0013) IS, length 2: "7 " -> the raw value, keeping the length field honest.
    element = b"\x20\x00\x13\x00IS" + struct.pack("<H", 2) + b"7 "
    padded = raw + (b" " if len(raw) % 2 else b"")
    data = data.replace(element, b"\x20\x00\x13\x00IS" + struct.pack("<H", len(padded)) + padded)
    err = failure(data)
    assert err.status == FailureReason.CANNOT_UNDERSTAND and "Instance Number" in err.comment


def test_photometric_interpretation_not_a_code_string_is_c000():
    ds = image_dataset(rows=4, columns=4)
    data = to_bytes(ds)
    pi = ds.PhotometricInterpretation.encode()
    data = data.replace(pi, b"MONOCHROM\xc92"[: len(pi)])
    err = failure(data)
    assert err.status == FailureReason.CANNOT_UNDERSTAND and "Photometric" in err.comment


def test_too_many_fragments_are_refused():
    # 100,000 empty fragments for 2 frames: a frame index of 2.4 MB for 800 KB of items.
    ds = image_dataset(rows=4, columns=4)
    ds.NumberOfFrames = 2
    data = to_bytes(ds)
    h = scan(data)
    items = b"\xfe\xff\x00\xe0\x00\x00\x00\x00" * 100_001  # an empty Basic Offset Table, then fragments
    pixel = (b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff" + items + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    meta_ts = b"1.2.840.10008.1.2.1\x00"
    data = data[:h.pixel_offset].replace(meta_ts, b"1.2.840.10008.1.2.5\x00", 1) + pixel  # RLE Lossless
    header = scan(data)
    with pytest.raises(StoreFailure) as err:
        build_frame_index(data, header)
    assert err.value.status == FailureReason.CANNOT_UNDERSTAND
    assert "100000 fragments" in err.value.comment


def test_nul_in_specific_character_set_is_c000():
    # Found by fuzz/fuzz_ingest.py: a NUL inside a character set name made the codec lookup
    # raise ValueError, which escaped the scan (the store would have been a 0110).
    ds = image_dataset(rows=4, columns=4)
    ds.SpecificCharacterSet = "ISO_IR 100"
    data = to_bytes(ds).replace(b"ISO_IR 100", b"ISO_IR\x00100", 1)
    err = failure(data)
    assert err.status == FailureReason.CANNOT_UNDERSTAND and "Specific Character Set" in err.comment
