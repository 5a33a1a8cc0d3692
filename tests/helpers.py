"""Assertions shared by several test modules (test modules never import each other)."""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragmented_frames, generate_frames, parse_basic_offsets
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from dicomaccel.archive.ingest import build_frame_index, scan

# The Calculated Frame List example of PS3.4 Y.3.2: frames 2-9 every 3rd, 12 to the end every 5th.
CALC_EXAMPLE = [2, 9, 3, 12, 0xFFFFFFFF, 5]


def assert_matches_pydicom(data: bytes) -> tuple:
    """Scan ``data``, build its frame index and compare everything with pydicom."""
    h = scan(data)
    fi = build_frame_index(data, h)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(io.BytesIO(data))
    assert h.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
    assert h.sop_class_uid == ds.get("SOPClassUID")
    assert h.sop_instance_uid == ds.get("SOPInstanceUID")
    assert h.study_uid == ds.get("StudyInstanceUID")
    assert h.series_uid == ds.get("SeriesInstanceUID")
    assert h.patient_id == str(ds.get("PatientID", "")).strip()
    assert h.patient_name == str(ds.get("PatientName", ""))
    assert h.number_of_frames == int(ds.get("NumberOfFrames") or 1)
    assert h.rows == ds.get("Rows") and h.columns == ds.get("Columns")
    assert h.bits_allocated == ds.get("BitsAllocated")
    pixel_tag = next((t for t in (0x7FE00010, 0x7FE00008, 0x7FE00009) if t in ds), 0)
    assert h.pixel_tag == pixel_tag
    if not pixel_tag or h.transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
        assert fi is None
        return h, fi, ds
    value = ds[pixel_tag].value
    header_len = 12 if h.transfer_syntax_uid != ImplicitVRLittleEndian else 8
    assert h.pixel_value_offset == h.pixel_offset + header_len
    assert struct.unpack_from("<HH" if h.transfer_syntax_uid != ExplicitVRBigEndian else ">HH",
                              data, h.pixel_offset) == (pixel_tag >> 16, pixel_tag & 0xFFFF)
    if h.pixel_length >= 0:
        assert data[h.pixel_value_offset:h.pixel_value_offset + h.pixel_length] == value
        assert not fi.encapsulated
        all_bits = np.unpackbits(np.frombuffer(value, np.uint8), bitorder="little")
        nbits = fi.frame_bits
        for k in range(fi.number_of_frames):
            ((start, end),) = fi.frame_ranges(k)
            if fi.byte_aligned:
                assert data[start:end] == value[k * nbits // 8:(k + 1) * nbits // 8]
            else:  # the covering bytes hold the frame's bits at bit (k * nbits) % 8
                first = k * nbits - (start - h.pixel_value_offset) * 8
                got = np.unpackbits(np.frombuffer(data[start:end], np.uint8), bitorder="little")
                assert (got[first:first + nbits] == all_bits[k * nbits:(k + 1) * nbits]).all()
    elif fi is not None:
        eot = None
        if "ExtendedOffsetTable" in ds:
            eot = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        expected = list(generate_frames(value, number_of_frames=h.number_of_frames,
                                        extended_offsets=eot))
        assert fi.number_of_frames == len(expected)
        for k, frame in enumerate(expected):
            assert b"".join(data[a:b] for a, b in fi.frame_ranges(k)) == frame
    return h, fi, ds


def check_fragments(src: Dataset, new: Dataset, frames: list[int]) -> None:
    """Encapsulated frames are copied byte for byte; the offset table matches the frames."""
    def fragments(ds):
        eot = None
        if "ExtendedOffsetTable" in ds:
            eot = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        return list(generate_fragmented_frames(
            ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1)), extended_offsets=eot))

    old, got = fragments(src), fragments(new)
    assert got == [old[f - 1] for f in frames]
    bot = parse_basic_offsets(new.PixelData)
    if "ExtendedOffsetTable" in new:
        assert bot == []
        table = np.frombuffer(new.ExtendedOffsetTable, "<u8")
        assert len(table) == len(frames)
    else:
        assert len(bot) == len(frames) and bot[0] == 0
