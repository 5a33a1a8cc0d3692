"""FRAME-level extraction (PS3.4 Y.3.2, Y.3.3): Frame Lists and the new instance, no network.

Sources are real PS3.10 files: made with pydicom (native, RLE and JPEG 2000 via pylibjpeg,
re-encapsulated with several fragments per frame, with and without a Basic Offset Table,
with an Extended Offset Table) and taken from pydicom-data. Each result is read back with
pydicom; its decoded frames must equal the source's selected frames, decoded by pydicom.
"""

from __future__ import annotations

import io
import os
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.pixels import pixel_array
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from dicomaccel.retrieve.extraction import ExtractedInstance, extract_frames
from dicomaccel.retrieve.framelist import (
    FrameExtractionError,
    FrameTiming,
    build_frame_list,
    frame_timing,
)
from dicomaccel.status import Status
from dicomaccel.testing.files import (
    MULTIFRAME_BYTE_CLASS,
    MULTIFRAME_CLASS,
    MULTIFRAME_TRUECOLOR_CLASS,
    SC_SINGLE_BIT_CLASS,
    compressed_source,
    make_source,
    native_source,
    write_file,
)
from helpers import CALC_EXAMPLE, check_fragments

XA = "1.2.840.10008.5.1.4.1.1.12.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MPEG2 = "1.2.840.10008.1.2.4.100"
J2K_PART2 = "1.2.840.10008.1.2.4.92"
DEFLATED = "1.2.840.10008.1.2.1.99"
NOW = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=timezone.utc)

try:
    from dicomaccel.archive import Archive
except ImportError:  # pragma: no cover - the archive is another helper's work in progress
    Archive = None


# --- sources ------------------------------------------------------------------------


def source_ref(path: str, kind: str, tmp_path):
    """The file path itself, or an archive record of it (offsets + frame index)."""
    if kind == "path":
        return path
    if Archive is None:
        pytest.skip("dicomaccel.archive is not importable")
    with open(path, "rb") as f:
        data = f.read()
    archive = Archive(tmp_path / "archive", fsync=False, min_free_bytes=0)
    record = archive.store_bytes(data).record
    archive.close()
    assert record.frame_index is not None
    return record


# --- checking results -------------------------------------------------------------------


def _walk(ds: Dataset):
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk(item)


def check(out: ExtractedInstance, src_path: str, keyword: str, values) -> Dataset:
    """Every Y.3.3 rule that holds for any source, and the pixels against pydicom."""
    src = dcmread(src_path)
    raw = out.to_file_bytes()
    new = dcmread(io.BytesIO(raw))
    frames = out.frames
    assert frames == sorted(set(frames)) and frames[0] >= 1
    # The buffers are the data set a C-STORE carries, in the source transfer syntax.
    ts = src.file_meta.TransferSyntaxUID
    assert out.transfer_syntax_uid == ts == new.file_meta.TransferSyntaxUID
    dataset_bytes = b"".join(bytes(b) for b in out.dataset)
    assert raw.endswith(dataset_bytes)
    again = read_dataset(DicomBytesIO(dataset_bytes), ts.is_implicit_VR, True)
    assert again.SOPInstanceUID == out.sop_instance_uid
    # Y.3.3: same SOP Class, new UID everywhere, same Patient/Study/Series.
    assert new.SOPClassUID == src.SOPClassUID == out.sop_class_uid
    assert new.file_meta.MediaStorageSOPClassUID == src.SOPClassUID
    assert new.SOPInstanceUID == out.sop_instance_uid == new.file_meta.MediaStorageSOPInstanceUID
    assert new.SOPInstanceUID != src.SOPInstanceUID and len(new.SOPInstanceUID) <= 64
    assert out.source_sop_instance_uid == src.SOPInstanceUID
    for kw in ("PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID",
               "InstanceNumber", "Modality", "Rows", "Columns", "BitsAllocated"):
        assert new.get(kw) == src.get(kw), kw
    assert int(new.NumberOfFrames) == len(frames)
    # Frame Extraction Sequence: source items, then ours with the key as requested.
    old_items = list(src.get("FrameExtractionSequence") or [])
    items = new.FrameExtractionSequence
    assert len(items) == len(old_items) + 1
    for a, b in zip(items, old_items):
        assert a == b
    ours = items[-1]
    assert ours.MultiFrameSourceSOPInstanceUID == src.SOPInstanceUID
    got = ours[keyword].value
    got = list(got) if isinstance(got, (list, tuple)) or hasattr(got, "__iter__") else [got]
    assert [float(v) for v in got] == [float(v) for v in values]
    assert {"SimpleFrameList", "CalculatedFrameList", "TimeRange"} & set(ours.dir()) == {keyword}
    # Contributing Equipment: source items, then the Frame Extracting Equipment.
    old_eq = list(src.get("ContributingEquipmentSequence") or [])
    eq = new.ContributingEquipmentSequence
    assert len(eq) == len(old_eq) + 1
    assert eq[-1].Manufacturer == "dicomaccel"
    code = eq[-1].PurposeOfReferenceCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
        "109105", "DCM", "Frame Extracting Equipment")
    assert eq[-1].ContributionDateTime and eq[-1].SoftwareVersions
    # Removed everywhere: private, signatures, concatenation, provider URL.
    for elem in _walk(new):
        assert elem.tag.group % 2 == 0, elem.tag
        assert elem.tag not in (0xFFFAFFFA, 0x4FFE0001)
    for tag in (0x00209161, 0x00209162, 0x00209163, 0x00209228, 0x00200242, 0x00287FE0):
        assert tag not in new
    # Per-frame functional groups in lock step.
    if "PerFrameFunctionalGroupsSequence" in src:
        got_items = new.PerFrameFunctionalGroupsSequence
        assert len(got_items) == len(frames)
        for item, f in zip(got_items, frames):
            want = src.PerFrameFunctionalGroupsSequence[f - 1].FrameContentSequence[0]
            have = item.FrameContentSequence[0]
            assert have.get("FrameReferenceDateTime") == want.get("FrameReferenceDateTime")
    # Pixels: decode both with pydicom; the new frames are the selected source frames.
    want = np.stack([pixel_array(src, index=f - 1) for f in frames])
    have = new.pixel_array
    if len(frames) == 1:
        have = have[np.newaxis]
    np.testing.assert_array_equal(have, want)
    if ts.is_encapsulated:
        check_fragments(src, new, frames)
    return new


# --- Frame List construction (Y.3.2) -----------------------------------------------------


def test_calculated_frame_list_standard_example():
    assert build_frame_list("CalculatedFrameList", CALC_EXAMPLE, 25, None) == [2, 5, 8, 12, 17, 22]


@pytest.mark.parametrize(("values", "n", "expected"), [
    ([1, 10, 1], 4, [1, 2, 3, 4]),                     # last > N in the last triplet: to the end
    ([1, 3, 2, 5, 5, 1, 40, 50, 1], 10, [1, 3, 5]),    # a triplet starting past the end: ignored
    ([1, 7, 3], 10, [1, 4, 7]),                            # last included when on the stride
    ([1, 8, 3], 10, [1, 4, 7]),                            # and not otherwise
    ([3, 3, 1], 3, [3]),
])
def test_calculated_frame_list(values, n, expected):
    assert build_frame_list("CalculatedFrameList", values, n, None) == expected


def test_simple_frame_list_keeps_found_subset():
    assert build_frame_list("SimpleFrameList", [2, 5, 11, 12], 10, None) == [2, 5]
    assert build_frame_list("SimpleFrameList", 3, 10, None) == [3]


@pytest.mark.parametrize(("keyword", "values"), [
    ("SimpleFrameList", [3, 2]),
    ("SimpleFrameList", [2, 2]),
    ("SimpleFrameList", [0, 1]),
    ("SimpleFrameList", []),
    ("SimpleFrameList", [1.5]),
    ("CalculatedFrameList", [1, 5]),
    ("CalculatedFrameList", [1, 5, 0]),
    ("CalculatedFrameList", [5, 1, 1]),
    ("CalculatedFrameList", [0, 1, 1]),
    ("CalculatedFrameList", [1, 0xFFFFFFFF, 1, 5, 6, 1]),   # "to the end" not in the last triplet
    ("CalculatedFrameList", [1, 5, 1, 5, 8, 1]),            # overlapping sub-ranges
    ("CalculatedFrameList", [4, 6, 1, 1, 2, 1]),            # decreasing sub-ranges
    ("CalculatedFrameList", [1, 2, 1 << 32]),               # not a UL
    ("TimeRange", [1.0]),
    ("TimeRange", [2.0, 1.0]),
    ("TimeRange", [float("nan"), 1.0]),
    ("ReferencedFrameNumber", [1]),
])
def test_invalid_keys_are_aa04(keyword, values):
    timing = FrameTiming(tuple(40.0 * k for k in range(10)), 0.0, "FrameTime")
    with pytest.raises(FrameExtractionError) as info:
        build_frame_list(keyword, values, 10, timing)
    assert info.value.status == Status.INVALID_REQUEST == 0xAA04
    assert 0 < len(info.value.comment) <= 64


@pytest.mark.parametrize(("keyword", "values"), [
    ("SimpleFrameList", [11, 12]),
    ("CalculatedFrameList", [11, 20, 1]),
    ("TimeRange", [5.0, 6.0]),
    ("TimeRange", [0.001, 0.039]),     # between two frames
])
def test_nothing_found_is_aa00(keyword, values):
    timing = FrameTiming(tuple(40.0 * k for k in range(10)), 0.0, "FrameTime")
    with pytest.raises(FrameExtractionError) as info:
        build_frame_list(keyword, values, 10, timing)
    assert info.value.status == Status.NO_FRAMES_FOUND == 0xAA00


def test_time_range_without_timing_is_aa03():
    with pytest.raises(FrameExtractionError) as info:
        build_frame_list("TimeRange", [0, 1], 10, None)
    assert info.value.status == Status.TIME_BASED_REQUEST_ON_NON_TIME_BASED == 0xAA03


def test_timing_from_frame_time_endpoints_inclusive():
    ds = Dataset()
    ds.FrameTime = "33.333"
    timing = frame_timing(ds, 10)
    assert timing.source == "FrameTime" and timing.origin_ms == 0
    # Frames start at 0, 33.333, 66.666, 99.999 ms: both endpoints are hit exactly.
    assert build_frame_list("TimeRange", [0.033333, 0.099999], 10, timing) == [2, 3, 4]


def test_timing_from_vector_and_frame_delay():
    ds = Dataset()
    ds.FrameTime = "10"
    ds.FrameTimeVector = ["0", "10", "30", "5"]
    ds.FrameIncrementPointer = [0x00181065]
    ds.FrameDelay = "100"
    timing = frame_timing(ds, 4)
    assert timing.source == "FrameTimeVector"
    assert timing.offsets_ms == (0.0, 10.0, 40.0, 45.0) and timing.origin_ms == 100.0
    # Relative to Content Time: frames start at 100, 110, 140, 145 ms.
    assert build_frame_list("TimeRange", [0.105, 0.145], 4, timing) == [2, 3, 4]
    assert build_frame_list("TimeRange", [0.0, 0.1], 4, timing) == [1]
    ds.FrameIncrementPointer = [0x00181063]  # the pointer picks Frame Time
    assert frame_timing(ds, 4).offsets_ms == (0.0, 10.0, 20.0, 30.0)


def test_timing_from_frame_reference_datetime():
    ds, _ = make_source(frames=5)
    del ds.FrameTime
    ds.ContentTime = "115959.900000"  # first frame 100 ms after Content Time
    timing = frame_timing(ds, 5)
    assert timing.source == "FrameReferenceDateTime"
    assert timing.offsets_ms == pytest.approx((0, 40, 80, 120, 160))
    assert timing.origin_ms == pytest.approx(100)
    assert build_frame_list("TimeRange", [0.14, 0.22], 5, timing) == [2, 3, 4]  # 140..220 ms
    del ds.ContentDate  # no complete Content DateTime: times count from the first frame
    assert frame_timing(ds, 5).origin_ms == 0


def test_no_timing_sources():
    ds = Dataset()
    ds.FrameTime = "0"  # not a usable frame time
    ds.FrameTimeVector = ["0", "1"]  # wrong VM for 3 frames
    assert frame_timing(ds, 3) is None


# --- the new instance (Y.3.3) ------------------------------------------------------------

NATIVE_CASES = {
    "16bit": dict(bits=16),
    "8bit": dict(bits=8, sop_class=MULTIFRAME_BYTE_CLASS),
    "rgb": dict(bits=8, spp=3, sop_class=MULTIFRAME_TRUECOLOR_CLASS),
    "1bit-5x5": dict(bits=1, rows=5, cols=5, sop_class=SC_SINGLE_BIT_CLASS),
}
KEYS = [
    ("SimpleFrameList", [2, 5, 9]),
    ("CalculatedFrameList", [1, 0xFFFFFFFF, 3]),
    ("TimeRange", [0.04, 0.12]),
]


@pytest.mark.parametrize("kind", ["path", "record"])
@pytest.mark.parametrize(("keyword", "values"), KEYS)
@pytest.mark.parametrize("case", NATIVE_CASES)
def test_native_sources(tmp_path, case, keyword, values, kind):
    path = native_source(tmp_path, **NATIVE_CASES[case])
    out = extract_frames(source_ref(path, kind, tmp_path), keyword, values, now=NOW)
    expected = {"SimpleFrameList": [2, 5, 9], "CalculatedFrameList": [1, 4, 7, 10],
                "TimeRange": [2, 3, 4]}[keyword]
    assert out.frames == expected
    check(out, path, keyword, values)
    assert len(out.dataset[2]) % 2 == 0


def test_native_implicit_vr(tmp_path):
    path = native_source(tmp_path, ts=ImplicitVRLittleEndian)
    out = extract_frames(path, "SimpleFrameList", [10], now=NOW)
    assert out.frames == [10]
    check(out, path, "SimpleFrameList", [10])


ENCAPSULATED_CASES = {
    "rle": dict(ts=RLELossless),
    "rle-rgb": dict(ts=RLELossless, bits=8, spp=3, sop_class=MULTIFRAME_TRUECOLOR_CLASS),
    "j2k": dict(ts=JPEG2000Lossless),
    "j2k-3-fragments": dict(ts=JPEG2000Lossless, fragments=3),
    "j2k-3-fragments-no-bot": dict(ts=JPEG2000Lossless, fragments=3, bot=False),
    "j2k-no-bot": dict(ts=JPEG2000Lossless, bot=False),
    "j2k-eot": dict(ts=JPEG2000Lossless, eot=True),
    "rle-eot": dict(ts=RLELossless, eot=True),
}


@pytest.mark.parametrize("kind", ["path", "record"])
@pytest.mark.parametrize(("keyword", "values"), KEYS)
@pytest.mark.parametrize("case", ENCAPSULATED_CASES)
def test_encapsulated_sources(tmp_path, case, keyword, values, kind):
    opts = dict(ENCAPSULATED_CASES[case])
    ts = opts.pop("ts")
    # 32 x 32: OpenJPEG's default 6 resolution levels need at least 32 pixels a side.
    path = compressed_source(tmp_path, ts, frames=10, rows=32, cols=32, **opts)
    out = extract_frames(source_ref(path, kind, tmp_path), keyword, values, now=NOW)
    new = check(out, path, keyword, values)
    assert ("ExtendedOffsetTable" in new) == bool(opts.get("eot"))


PYDICOM_DATA = [
    ("emri_small.dcm", "SimpleFrameList", [1, 4, 10]),               # Enhanced MR, native 16-bit
    ("emri_small_RLE.dcm", "CalculatedFrameList", [2, 0xFFFFFFFF, 4]),
    ("emri_small_jpeg_2k_lossless.dcm", "SimpleFrameList", [3]),
    ("SC_rgb_rle_2frame.dcm", "SimpleFrameList", [2]),
    ("SC_rgb_2frame.dcm", "CalculatedFrameList", [1, 1, 1]),
    ("color3d_jpeg_baseline.dcm", "CalculatedFrameList", CALC_EXAMPLE),  # US, YBR_FULL_422
    ("color3d_jpeg_baseline.dcm", "TimeRange", [0.5, 0.6]),
    ("liver.dcm", "SimpleFrameList", [1, 3]),                # Segmentation, 1-bit, per-frame
]


@pytest.mark.parametrize("kind", ["path", "record"])
@pytest.mark.parametrize(("name", "keyword", "values"), PYDICOM_DATA)
def test_pydicom_data_sources(tmp_path, name, keyword, values, kind):
    path = get_testdata_file(name)
    out = extract_frames(source_ref(path, kind, tmp_path), keyword, values, now=NOW)
    check(out, path, keyword, values)


def test_calculated_example_on_25_frames(tmp_path):
    path = native_source(tmp_path, frames=25, rows=4, cols=4)
    out = extract_frames(path, "CalculatedFrameList", CALC_EXAMPLE, now=NOW)
    assert out.frames == [2, 5, 8, 12, 17, 22]
    new = check(out, path, "CalculatedFrameList", CALC_EXAMPLE)
    # Irregular stride: Frame Time becomes a Frame Time Vector and the pointer follows.
    assert "FrameTime" not in new
    assert [float(v) for v in new.FrameTimeVector] == [0, 120, 120, 160, 200, 200]
    assert new.FrameIncrementPointer == 0x00181065


def test_frame_dependent_attributes(tmp_path):
    path = native_source(tmp_path)
    src = dcmread(path)
    out = extract_frames(path, "SimpleFrameList", [4, 6, 8, 25], now=NOW)
    assert out.frames == [4, 6, 8]  # 25 does not exist: the found subset is served
    new = check(out, path, "SimpleFrameList", [4, 6, 8, 25])
    assert float(new.FrameTime) == 80  # uniform stride 2
    assert new.FrameIncrementPointer == 0x00181063
    assert "CineRate" not in new and "EffectiveDuration" not in new
    assert new.RepresentativeFrameNumber == 1            # source frame 4
    assert new.FrameNumbersOfInterest == 1                # only frame 4 of 1, 4, 9
    assert new.FrameOfInterestDescription == "fourth"
    # Frame 1 not included: start times move by T(4) = 120 ms.
    assert new.ContentDate == "20260101" and new.ContentTime == "120000.120000"
    assert new.AcquisitionTime == "120000.620000"
    assert new.InstanceCreationDate == "20260304"
    assert new.ContributingEquipmentSequence[-1].ContributionDateTime.startswith(
        "20260304050607.89")
    assert src.ContentTime == "120000"


def test_alternate_representation_sequence_is_dropped(tmp_path):
    # The source's alternate encodings are of all its frames, not of the new subset.
    ds, arr = make_source()
    alt = Dataset()
    alt.ReferencedSOPClassUID, alt.ReferencedSOPInstanceUID = MULTIFRAME_CLASS, "1.2.3.4.5"
    ds.AlternateRepresentationSequence = [alt]
    ds.PixelData = arr.tobytes()
    path = write_file(ds, ExplicitVRLittleEndian, tmp_path / "with-alternates.dcm")
    out = extract_frames(path, "SimpleFrameList", [2, 4], now=NOW)
    new = check(out, path, "SimpleFrameList", [2, 4])
    assert "AlternateRepresentationSequence" not in new
    assert "AlternateRepresentationSequence" in dcmread(path, stop_before_pixels=True)


def test_contiguous_frames_keep_frame_time(tmp_path):
    path = native_source(tmp_path)
    out = extract_frames(path, "SimpleFrameList", [1, 2, 3], now=NOW)
    new = check(out, path, "SimpleFrameList", [1, 2, 3])
    assert float(new.FrameTime) == 40 and new.CineRate == 25
    assert new.ContentTime == "120000"  # frame 1 kept: no shift
    assert "RepresentativeFrameNumber" not in new  # source frame 4 is gone


def test_all_frames_is_a_copy_with_new_identity(tmp_path):
    path = native_source(tmp_path)
    out = extract_frames(path, "CalculatedFrameList", [1, 0xFFFFFFFF, 1], now=NOW)
    new = check(out, path, "CalculatedFrameList", [1, 0xFFFFFFFF, 1])
    assert new.RepresentativeFrameNumber == 4 and new.CineRate == 25
    assert "EffectiveDuration" in new


def test_frame_time_vector_subset(tmp_path):
    ds, arr = make_source(frames=6, rich=False)
    ds.FrameTimeVector = ["0", "10", "20", "30", "40", "50"]
    ds.FrameIncrementPointer = [0x00181065]
    ds.FrameLabelVector = [f"L{k}" for k in range(1, 7)]
    ds.PixelData = arr.tobytes()
    path = write_file(ds, ExplicitVRLittleEndian, tmp_path / "ftv.dcm")
    out = extract_frames(path, "SimpleFrameList", [2, 3, 6], now=NOW)
    new = check(out, path, "SimpleFrameList", [2, 3, 6])
    assert [float(v) for v in new.FrameTimeVector] == [0, 20, 120]
    assert list(new.FrameLabelVector) == ["L2", "L3", "L6"]
    assert new.ContentTime == "120000.010000"  # T(2) = 10 ms


def test_nm_vectors_follow_frame_increment_pointer(tmp_path):
    ds, arr = make_source(frames=4, rich=False)
    ds.FrameIncrementPointer = [0x00540010, 0x00540020]
    ds.EnergyWindowVector = [1, 1, 2, 2]
    ds.DetectorVector = [1, 2, 1, 2]
    ds.PixelData = arr.tobytes()
    path = write_file(ds, ExplicitVRLittleEndian, tmp_path / "nm.dcm")
    out = extract_frames(path, "SimpleFrameList", [2, 3], now=NOW)
    new = check(out, path, "SimpleFrameList", [2, 3])
    assert list(new.EnergyWindowVector) == [1, 2] and list(new.DetectorVector) == [2, 1]


def test_mask_subtraction_renumbered(tmp_path):
    ds, arr = make_source(frames=10, rich=False, sop_class=XA)
    keep, drop, tid = Dataset(), Dataset(), Dataset()
    keep.MaskOperation, keep.MaskFrameNumbers, keep.ApplicableFrameRange = "AVG_SUB", [1], [2, 10]
    drop.MaskOperation, drop.MaskFrameNumbers = "AVG_SUB", [2]
    tid.MaskOperation, tid.TIDOffset = "TID", 2
    ds.MaskSubtractionSequence = [keep, drop, tid]
    ds.RecommendedViewingMode = "SUB"
    ds.PixelData = arr.tobytes()
    path = write_file(ds, ExplicitVRLittleEndian, tmp_path / "xa.dcm")
    new = check(extract_frames(path, "SimpleFrameList", [1, 4, 6], now=NOW), path,
                "SimpleFrameList", [1, 4, 6])
    assert len(new.MaskSubtractionSequence) == 1
    item = new.MaskSubtractionSequence[0]
    assert item.MaskFrameNumbers == 1 and list(item.ApplicableFrameRange) == [2, 3]
    assert new.RecommendedViewingMode == "SUB"
    new = check(extract_frames(path, "SimpleFrameList", [3, 4], now=NOW), path,
                "SimpleFrameList", [3, 4])
    assert "MaskSubtractionSequence" not in new and "RecommendedViewingMode" not in new


def test_start_time_shift_wraps_midnight(tmp_path):
    ds, arr = make_source(frames=3, rich=False)
    ds.ContentDate, ds.ContentTime = "20251231", "235959.990000"
    del ds.AcquisitionDate  # a time without its date wraps modulo 24 h
    ds.AcquisitionTime = "235959.995"
    ds.AcquisitionDateTime = "20251231235959.990000+0100"
    ds.ImageTriggerDelay = "5"
    ds.FrameTime = "20"
    ds.PixelData = arr.tobytes()
    path = write_file(ds, ExplicitVRLittleEndian, tmp_path / "midnight.dcm")
    new = check(extract_frames(path, "SimpleFrameList", [2, 3], now=NOW), path,
                "SimpleFrameList", [2, 3])
    assert (new.ContentDate, new.ContentTime) == ("20260101", "000000.010000")
    assert "AcquisitionDate" not in new and new.AcquisitionTime == "000000.015000"
    assert new.AcquisitionDateTime == "20260101000000.010000+0100"
    assert float(new.ImageTriggerDelay) == 25


def test_whole_stream_syntax_all_frames_copied_verbatim(tmp_path):
    ds, _ = make_source(frames=3, rich=False, bits=8, sop_class=MULTIFRAME_BYTE_CLASS)
    stream = bytes(range(256)) * 3  # stands in for one MPEG-2 bitstream (PS3.5 8.2.5)
    ds.PixelData = encapsulate([stream], has_bot=False)
    ds["PixelData"].VR = "OB"
    path = write_file(ds, MPEG2, tmp_path / "video.dcm")
    out = extract_frames(path, "CalculatedFrameList", [1, 0xFFFFFFFF, 1], now=NOW)
    assert out.frames == [1, 2, 3]
    value = bytes(out.dataset[2])  # pydicom's value stops before the Sequence Delimitation Item
    assert value == dcmread(path).PixelData + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    new = dcmread(io.BytesIO(out.to_file_bytes()))
    assert new.SOPInstanceUID == out.sop_instance_uid and int(new.NumberOfFrames) == 3


# --- statuses from real cases -------------------------------------------------------------


def _status(source, keyword, values) -> FrameExtractionError:
    with pytest.raises(FrameExtractionError) as info:
        extract_frames(source, keyword, values, now=NOW)
    assert 0 < len(info.value.comment) <= 64
    return info.value


def test_aa00_no_frames_found(tmp_path):
    path = native_source(tmp_path)
    assert _status(path, "SimpleFrameList", [11, 20]).status == Status.NO_FRAMES_FOUND
    assert _status(path, "TimeRange", [10.0, 20.0]).status == Status.NO_FRAMES_FOUND


def test_aa01_cannot_create(tmp_path):
    ds, arr = make_source(frames=1, rich=False, sop_class=CT)
    del ds.NumberOfFrames  # a single-frame IOD: no Frame Extraction Module to fill
    ds.PixelData = arr.tobytes()
    single = write_file(ds, ExplicitVRLittleEndian, tmp_path / "ct.dcm")
    assert _status(single, "SimpleFrameList", [1]).status == Status.CANNOT_CREATE_NEW_OBJECT

    ds, arr = make_source(frames=4)
    del ds.PerFrameFunctionalGroupsSequence[3]
    ds.PixelData = arr.tobytes()
    short = write_file(ds, ExplicitVRLittleEndian, tmp_path / "short.dcm")
    assert _status(short, "SimpleFrameList", [1]).status == Status.CANNOT_CREATE_NEW_OBJECT

    ds, arr = make_source(frames=4, rich=False, sop_class=XA)
    ds.PositionerPrimaryAngleIncrement = ["0", "1", "2", "3"]
    ds.FrameIncrementPointer = [0x00181520]
    ds.PixelData = arr.tobytes()
    rotational = write_file(ds, ExplicitVRLittleEndian, tmp_path / "rot.dcm")
    assert _status(rotational, "SimpleFrameList", [2]).status == Status.CANNOT_CREATE_NEW_OBJECT
    out = extract_frames(rotational, "SimpleFrameList", [1, 2, 3, 4], now=NOW)  # all: fine
    assert out.frames == [1, 2, 3, 4]


def test_aa02_cannot_extract(tmp_path):
    ds, _ = make_source(frames=3, rich=False, bits=8, sop_class=MULTIFRAME_BYTE_CLASS)
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" * 16], has_bot=False)
    ds["PixelData"].VR = "OB"
    video = write_file(ds, MPEG2, tmp_path / "video.dcm")
    assert _status(video, "SimpleFrameList", [2]).status == Status.CANNOT_EXTRACT_FRAMES

    ds, _ = make_source(frames=2, rich=False)
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" * 8] * 2)
    ds["PixelData"].VR = "OB"
    part2 = write_file(ds, J2K_PART2, tmp_path / "j2k-part2.dcm")
    assert _status(part2, "SimpleFrameList", [1]).status == Status.CANNOT_EXTRACT_FRAMES

    ds, arr = make_source(frames=2, rich=False)
    ds.PixelData = arr.tobytes()
    deflated = write_file(ds, DEFLATED, tmp_path / "deflated.dcm")
    assert _status(deflated, "SimpleFrameList", [1]).status == Status.CANNOT_EXTRACT_FRAMES

    ds, arr = make_source(frames=4, rich=False)
    ds.PixelData = arr.tobytes()[: arr.nbytes // 2]  # half the frames are missing
    truncated = write_file(ds, ExplicitVRLittleEndian, tmp_path / "truncated.dcm")
    assert _status(truncated, "SimpleFrameList", [1]).status == Status.CANNOT_EXTRACT_FRAMES

    ds, _ = make_source(frames=2, rich=False)
    no_pixels = write_file(ds, ExplicitVRLittleEndian, tmp_path / "no-pixels.dcm")
    assert _status(no_pixels, "SimpleFrameList", [1]).status == Status.CANNOT_EXTRACT_FRAMES


def test_aa03_time_range_on_untimed_source():
    path = get_testdata_file("emri_small.dcm")
    err = _status(path, "TimeRange", [0.0, 1.0])
    assert err.status == Status.TIME_BASED_REQUEST_ON_NON_TIME_BASED


def test_aa04_invalid_request(tmp_path):
    path = native_source(tmp_path)
    assert _status(path, "SimpleFrameList", [5, 3]).status == Status.INVALID_REQUEST
    assert _status(path, "CalculatedFrameList", [1, 2]).status == Status.INVALID_REQUEST
    assert _status(path, "TimeRange", [1.0, 0.5]).status == Status.INVALID_REQUEST


def test_explicit_uid_and_write(tmp_path):
    path = native_source(tmp_path)
    uid = "2.25.12345678901234567890"
    out = extract_frames(path, "SimpleFrameList", [1], sop_instance_uid=uid, now=NOW)
    target = tmp_path / "out.dcm"
    out.write(target)
    assert target.read_bytes() == out.to_file_bytes()
    assert out.nbytes == os.path.getsize(target) - len(out.file_meta_bytes())
    new = dcmread(target)
    assert new.SOPInstanceUID == uid == new.file_meta.MediaStorageSOPInstanceUID
    assert new.ContributingEquipmentSequence[-1].ContributionDateTime == \
        (NOW).strftime("%Y%m%d%H%M%S.%f+0000")


def test_generated_uids_are_fresh_and_under_the_root(tmp_path):
    from dicomaccel.dimse.config import DICOMACCEL_UID_ROOT

    path = native_source(tmp_path)
    a = extract_frames(path, "SimpleFrameList", [1], now=NOW).sop_instance_uid
    later = NOW + timedelta(seconds=1)
    b = extract_frames(path, "SimpleFrameList", [1], now=later).sop_instance_uid
    assert a != b
    assert a.startswith(DICOMACCEL_UID_ROOT + ".") and len(a) <= 64


def test_float_pixel_data(tmp_path):
    ds, _ = make_source(frames=4, rich=False)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map: Float Pixel Data
    for kw in ("BitsStored", "HighBit", "PixelRepresentation"):
        delattr(ds, kw)  # not used with Float Pixel Data (PS3.3 C.7.6.24)
    ds.BitsAllocated = 32
    arr = np.arange(4 * 16 * 16, dtype="<f4").reshape(4, 16, 16) / 7
    ds.FloatPixelData = arr.tobytes()
    path = write_file(ds, ExplicitVRLittleEndian, tmp_path / "float.dcm")
    out = extract_frames(path, "SimpleFrameList", [2, 4], now=NOW)
    assert bytes(out.dataset[1])[:6] == b"\xe0\x7f\x08\x00OF"
    new = check(out, path, "SimpleFrameList", [2, 4])
    assert "PixelData" not in new


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        extract_frames(tmp_path / "absent.dcm", "SimpleFrameList", [1])
