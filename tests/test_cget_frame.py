"""FRAME-level C-GET (PS3.4 Annex Y) from a real `dicomaccel serve`, loaded over STOW-RS,
driven by a pynetdicom SCU (and, for a cancel that must beat the server, raw PS3.8 bytes).

Every new instance that arrives is read with pydicom: its identity (new SOP Instance UID in
the data set and in the C-STORE-RQ), the Y.3.3 attributes, and its pixels against the
source's selected frames, decoded by pydicom from the file that was stored.
"""

from __future__ import annotations

import io
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.pixels import pixel_array
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)
from pynetdicom.sop_class import (
    CompositeInstanceRootRetrieveGet,
    SecondaryCaptureImageStorage,
)

from dicomaccel.testing import files as dicomgen
from dicomaccel.testing import multipart, post, warnings_only
from dicomaccel.testing.files import (
    MULTIFRAME_BYTE_CLASS,
    MULTIFRAME_CLASS,
    MULTIFRAME_TRUECOLOR_CLASS,
    SC_SINGLE_BIT_CLASS,
    compressed_source,
    dataset_part,
    make_source,
    native_source,
    retag,
    write_file,
)
from dicomaccel.testing.pdu import associate_rq, command_set, p_data, recv_pdu
from dicomaccel.testing.scu import assert_counts, c_get, failed_list, identifier
from helpers import CALC_EXAMPLE, check_fragments

pytestmark = pytest.mark.timeout(120)

INSTANCE_ROOT = CompositeInstanceRootRetrieveGet
# Frames each key selects from the generated 10-frame sources (Frame Time 40 ms).
KEYS = {
    "SimpleFrameList": ([2, 5, 9], [2, 5, 9]),
    "CalculatedFrameList": ([1, 0xFFFFFFFF, 3], [1, 4, 7, 10]),
    "TimeRange": ([0.04, 0.12], [2, 3, 4]),
}
GENERATED = {
    "native-16bit": dict(bits=16),
    "native-8bit": dict(bits=8, sop_class=MULTIFRAME_BYTE_CLASS),
    "native-rgb": dict(bits=8, spp=3, sop_class=MULTIFRAME_TRUECOLOR_CLASS),
    "native-1bit": dict(bits=1, rows=5, cols=5, sop_class=SC_SINGLE_BIT_CLASS),
    "rle": dict(ts=RLELossless),
    "j2k": dict(ts=JPEG2000Lossless),
    "j2k-3-fragments": dict(ts=JPEG2000Lossless, fragments=3),
    "j2k-3-fragments-no-bot": dict(ts=JPEG2000Lossless, fragments=3, bot=False),
    "j2k-no-bot": dict(ts=JPEG2000Lossless, bot=False),
    "j2k-eot": dict(ts=JPEG2000Lossless, eot=True),
}
# pydicom-data sources: (file, key, values, frames selected).
PYDICOM_DATA = [
    ("emri_small.dcm", "SimpleFrameList", [1, 4, 10], [1, 4, 10]),             # Enhanced MR, native
    ("emri_small_RLE.dcm", "CalculatedFrameList", [2, 0xFFFFFFFF, 4], [2, 6, 10]),
    ("emri_small_jpeg_2k_lossless.dcm", "SimpleFrameList", [3], [3]),
    ("SC_rgb_rle_2frame.dcm", "SimpleFrameList", [2], [2]),
    ("color3d_jpeg_baseline.dcm", "CalculatedFrameList", [1, 3, 1, 118, 0xFFFFFFFF, 1], [1, 2, 3, 118, 119, 120]),
    # Frame Time 33.333 ms: frames 17-19 start at 533.3, 566.7 and 600.0 (within 1 ns) ms.
    ("color3d_jpeg_baseline.dcm", "TimeRange", [0.5, 0.6], [17, 18, 19]),
    ("liver.dcm", "SimpleFrameList", [1, 3], [1, 3]),                             # Segmentation, 1-bit
]


@dataclass
class Source:
    data: bytes
    uid: str
    sop_class: str
    transfer_syntax: str


def _source(data: bytes) -> Source:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return Source(data, ds.SOPInstanceUID, ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)


@pytest.fixture(scope="module")
def sources(shared_server, tmp_path_factory) -> dict[str, Source]:
    tmp = tmp_path_factory.mktemp("frame-sources")
    files: dict[str, str] = {}
    for name, opts in GENERATED.items():
        opts = dict(opts)
        ts = opts.pop("ts", None)
        if ts is None:
            files[name] = native_source(tmp, name=f"{name}.dcm", **opts)
        else:
            # 32 x 32: OpenJPEG's default 6 resolution levels need at least 32 pixels a side.
            files[name] = compressed_source(tmp, ts, frames=10, rows=32, cols=32, name=f"{name}.dcm", **opts)
    files["native-25"] = native_source(tmp, name="native-25.dcm", frames=25, rows=4, cols=4)
    ds, arr = make_source(frames=4, rich=False)  # no Frame Time, Vector or Reference DateTime
    ds.PixelData = arr.tobytes()
    files["untimed"] = write_file(ds, ExplicitVRLittleEndian, tmp / "untimed.dcm")
    ds, arr = make_source(frames=3, rich=False)
    ds.PixelData = arr.tobytes()
    files["deflated"] = write_file(ds, DeflatedExplicitVRLittleEndian, tmp / "deflated.dcm")
    out = {name: _source(Path(path).read_bytes()) for name, path in files.items()}
    for name, *_ in PYDICOM_DATA:
        # The emri_small variants share one SOP Instance UID: each gets its own.
        out[name] = _source(retag(Path(get_testdata_file(name)).read_bytes(), SOPInstanceUID=generate_uid()))
    # A single-frame CT: no Number of Frames, so no multi-frame instance can be made of it.
    out["single-frame"] = _source(dicomgen.ct_instance(generate_uid(), generate_uid(), 1, 16, 16))
    status, _, body = post(shared_server, multipart([s.data for s in out.values()]))
    assert warnings_only(status, body), body[:500]  # pydicom's files may not match their IOD
    return out


def frame_get(server, source: Source, keyword: str, values, *, syntaxes=None, storage=None, **kw):
    ident = identifier("FRAME", SOPInstanceUID=source.uid)
    setattr(ident, keyword, values)
    if storage is None:
        storage = [(source.sop_class, syntaxes or (source.transfer_syntax,))]
    return c_get(server.dimse_port, INSTANCE_ROOT, ident, storage=storage, **kw)


def source_frames(source: Source, frames: list[int]) -> np.ndarray:
    ds = pydicom.dcmread(io.BytesIO(source.data))
    return np.stack([pixel_array(ds, index=f - 1) for f in frames])


def check_new_instance(result, source: Source, keyword: str, values, frames: list[int],
                       transfer_syntax: str | None = None) -> Dataset:
    """One sub-operation, Success, and the instance that arrived obeys Y.3.3."""
    assert result.final.Status == 0x0000, (hex(result.final.Status), result.final.get("ErrorComment"))
    assert_counts(result.final, 1)
    assert result.pending == []
    (received,) = result.received
    assert received.transfer_syntax == (transfer_syntax or source.transfer_syntax)
    new = received.dataset()
    src = pydicom.dcmread(io.BytesIO(source.data), stop_before_pixels=True)
    # Y.3.3: a new SOP Instance UID, the same in the data set and in the C-STORE-RQ.
    assert received.sop_instance_uid == new.SOPInstanceUID != src.SOPInstanceUID
    for kw in ("SOPClassUID", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns"):
        assert new.get(kw) == src.get(kw), kw
    assert int(new.NumberOfFrames) == len(frames)
    extraction = new.FrameExtractionSequence[-1]
    assert extraction.MultiFrameSourceSOPInstanceUID == src.SOPInstanceUID
    got = extraction[keyword].value
    got = list(got) if isinstance(got, (list, tuple, pydicom.multival.MultiValue)) else [got]
    assert [float(v) for v in got] == [float(v) for v in values]
    code = new.ContributingEquipmentSequence[-1].PurposeOfReferenceCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("109105", "DCM")
    have = new.pixel_array
    if len(frames) == 1:
        have = have[np.newaxis]
    np.testing.assert_array_equal(have, source_frames(source, frames))
    return new


def check_failure(result, source_uid: str, status: int) -> None:
    assert [s.Status for s, _ in result.responses] == [status]
    assert result.final.ErrorComment
    assert_counts(result.final, completed=0, failed=1)
    assert "NumberOfRemainingSuboperations" not in result.final
    assert failed_list(result) == [source_uid]
    assert result.received == []


# ------------------------------------------------------------------------- new instances


@pytest.mark.parametrize("keyword", KEYS)
@pytest.mark.parametrize("name", GENERATED)
def test_each_key_on_generated_sources(shared_server, sources, name, keyword):
    values, frames = KEYS[keyword]
    source = sources[name]
    result = frame_get(shared_server, source, keyword, values, priority=2)
    new = check_new_instance(result, source, keyword, values, frames)
    assert result.received[0].priority == 2  # PS3.4 C.4.3.2: the C-GET's priority
    if source.transfer_syntax != ExplicitVRLittleEndian:
        # Encapsulated frames travel as their fragments, byte for byte, behind a new table.
        check_fragments(pydicom.dcmread(io.BytesIO(source.data)), new, frames)
        assert ("ExtendedOffsetTable" in new) == (name == "j2k-eot")


@pytest.mark.parametrize(("name", "keyword", "values", "frames"), PYDICOM_DATA,
                         ids=[f"{c[0]}-{c[1]}" for c in PYDICOM_DATA])
def test_pydicom_data_sources(shared_server, sources, name, keyword, values, frames):
    source = sources[name]
    result = frame_get(shared_server, source, keyword, values)
    new = check_new_instance(result, source, keyword, values, frames)
    if source.transfer_syntax == JPEGBaseline8Bit:
        check_fragments(pydicom.dcmread(io.BytesIO(source.data)), new, frames)


def test_standard_calculated_frame_list_example(shared_server, sources):
    source = sources["native-25"]
    result = frame_get(shared_server, source, "CalculatedFrameList", CALC_EXAMPLE)
    new = check_new_instance(result, source, "CalculatedFrameList", CALC_EXAMPLE, [2, 5, 8, 12, 17, 22])
    assert list(new.FrameExtractionSequence[-1].CalculatedFrameList) == CALC_EXAMPLE


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_transcoded_when_stored_syntax_not_accepted(shared_server, sources, syntax):
    source = sources["j2k-3-fragments"]
    result = frame_get(shared_server, source, "SimpleFrameList", [3, 4], syntaxes=(syntax,))
    new = check_new_instance(result, source, "SimpleFrameList", [3, 4], [3, 4], transfer_syntax=syntax)
    assert not new.file_meta.TransferSyntaxUID.is_compressed


def test_each_request_makes_a_new_instance(shared_server, sources):
    source = sources["native-16bit"]
    uids = {frame_get(shared_server, source, "SimpleFrameList", [1]).received[0].sop_instance_uid
            for _ in range(2)}
    assert len(uids) == 2 and source.uid not in uids


def test_image_level_on_the_same_sop_class_sends_the_whole_instance(shared_server, sources):
    source = sources["j2k-eot"]
    result = c_get(shared_server.dimse_port, INSTANCE_ROOT, identifier("IMAGE", SOPInstanceUID=source.uid),
                   storage=[(source.sop_class, (source.transfer_syntax,))])
    assert result.final.Status == 0x0000
    assert [(r.sop_instance_uid, r.raw) for r in result.received] == [(source.uid, dataset_part(source.data))]


# ------------------------------------------------------------------------- statuses


def test_aa00_none_of_the_frames_found(shared_server, sources):
    source = sources["native-16bit"]
    check_failure(frame_get(shared_server, source, "SimpleFrameList", [11, 20]), source.uid, 0xAA00)
    check_failure(frame_get(shared_server, source, "TimeRange", [10.0, 20.0]), source.uid, 0xAA00)


def test_aa01_single_frame_source(shared_server, sources):
    source = sources["single-frame"]
    assert source.sop_class == CTImageStorage
    check_failure(frame_get(shared_server, source, "SimpleFrameList", [1]), source.uid, 0xAA01)
    # A frame list that is malformed in itself is AA04 first, whatever the source.
    check_failure(frame_get(shared_server, source, "SimpleFrameList", [0]), source.uid, 0xAA04)


def test_aa02_frames_cannot_be_extracted(shared_server, sources):
    # Deflated: the data set would have to be inflated whole; refused, even though the SCU
    # accepts a syntax we could transcode to.
    source = sources["deflated"]
    result = frame_get(shared_server, source, "SimpleFrameList", [1],
                       syntaxes=(DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian))
    check_failure(result, source.uid, 0xAA02)


def test_aa03_time_range_on_untimed_source(shared_server, sources):
    source = sources["untimed"]
    check_failure(frame_get(shared_server, source, "TimeRange", [0.0, 1.0]), source.uid, 0xAA03)
    # The same source serves frame numbers.
    check_new_instance(frame_get(shared_server, source, "SimpleFrameList", [2]), source,
                       "SimpleFrameList", [2], [2])


def test_aa04_from_the_frame_list(shared_server, sources):
    source = sources["native-16bit"]
    check_failure(frame_get(shared_server, source, "SimpleFrameList", [3, 2]), source.uid, 0xAA04)
    check_failure(frame_get(shared_server, source, "CalculatedFrameList", [1, 5]), source.uid, 0xAA04)


@pytest.mark.parametrize("keys", [
    {"SOPInstanceUID": ["native-16bit", "native-8bit"], "SimpleFrameList": [1]},
    {"SOPInstanceUID": "native-16bit"},
    {"SOPInstanceUID": "native-16bit", "SimpleFrameList": [1], "TimeRange": [0.0, 1.0]},
], ids=["two-instances", "no-frame-key", "two-frame-keys"])
def test_aa04_from_the_identifier(shared_server, sources, keys):
    ident = identifier("FRAME")
    for keyword, value in keys.items():
        if keyword == "SOPInstanceUID":
            value = [sources[v].uid for v in value] if isinstance(value, list) else sources[value].uid
        setattr(ident, keyword, value)
    result = c_get(shared_server.dimse_port, INSTANCE_ROOT, ident, storage=[(MULTIFRAME_CLASS, (ExplicitVRLittleEndian,))])
    assert [s.Status for s, _ in result.responses] == [0xAA04]
    assert "FRAME level needs exactly one" in result.final.ErrorComment
    assert result.received == []


def test_unknown_source_is_c000(shared_server, sources):
    uid = generate_uid()
    result = c_get(shared_server.dimse_port, INSTANCE_ROOT, identifier("FRAME", SOPInstanceUID=uid,
                                                                        SimpleFrameList=[1]),
                   storage=[(MULTIFRAME_CLASS, (ExplicitVRLittleEndian,))])
    check_failure(result, uid, 0xC000)
    assert "not found" in result.final.ErrorComment


def test_source_sop_class_not_offered_is_a702(shared_server, sources):
    source = sources["native-16bit"]
    result = frame_get(shared_server, source, "SimpleFrameList", [1],
                       storage=[(SecondaryCaptureImageStorage, (ExplicitVRLittleEndian,))])
    check_failure(result, source.uid, 0xA702)


def test_scu_refusing_the_c_store_fails_the_sub_operation(shared_server, sources):
    source = sources["rle"]
    result = frame_get(shared_server, source, "SimpleFrameList", [1], on_store=lambda event, received: 0xA700)
    assert len(result.received) == 1
    assert result.final.Status == 0xA702
    assert_counts(result.final, completed=0, failed=1)
    assert failed_list(result) == [source.uid]  # the source, which is what the SCU asked for
    warned = frame_get(shared_server, source, "SimpleFrameList", [1], on_store=lambda event, received: 0xB000)
    assert warned.final.Status == 0xB000
    assert_counts(warned.final, completed=0, failed=0, warning=1)


# ------------------------------------------------------------------------- C-CANCEL


def test_cancel_during_the_sub_operation_lets_it_finish(shared_server, sources):
    source = sources["j2k"]
    msg_id = 31

    def cancel(event, received):
        context_id = next(cx.context_id for cx in event.assoc.accepted_contexts if cx.abstract_syntax == INSTANCE_ROOT)
        event.assoc.send_c_cancel(msg_id, context_id)
        return 0x0000

    result = frame_get(shared_server, source, "SimpleFrameList", [2], on_store=cancel, msg_id=msg_id)
    check_new_instance(result, source, "SimpleFrameList", [2], [2])


def _pdvs(body: bytes):
    pos = 0
    while pos < len(body):
        length, pcid, control = struct.unpack_from(">LBB", body, pos)
        yield pcid, control, body[pos + 6:pos + 4 + length]
        pos += 4 + length


def _uid(value: str) -> bytes:
    raw = value.encode()
    return raw + b"\0" * (len(raw) % 2)


def test_cancel_before_the_sub_operation_starts_is_fe00(shared_server, sources):
    source = sources["native-16bit"]
    get_uid, store_uid = str(INSTANCE_ROOT).encode(), MULTIFRAME_CLASS.encode()
    sock = socket.create_connection(("127.0.0.1", shared_server.dimse_port), timeout=30)
    try:
        sock.sendall(associate_rq(
            contexts=((1, get_uid, (ExplicitVRLittleEndian.encode(),)),
                      (3, store_uid, (ExplicitVRLittleEndian.encode(),))),
            roles=((store_uid, 0, 1),)))
        pdu_type, body = recv_pdu(sock)
        assert pdu_type == 0x02
        ident = identifier("FRAME", SOPInstanceUID=source.uid, SimpleFrameList=[1])
        buf = DicomBytesIO()
        buf.is_little_endian, buf.is_implicit_VR = True, False
        write_dataset(buf, ident)
        get_rq = command_set((0x0002, _uid(str(INSTANCE_ROOT))), (0x0100, struct.pack("<H", 0x0010)),
                             (0x0110, struct.pack("<H", 5)), (0x0700, struct.pack("<H", 0)),
                             (0x0800, struct.pack("<H", 0x0000)))
        cancel_rq = command_set((0x0100, struct.pack("<H", 0x0FFF)), (0x0120, struct.pack("<H", 5)),
                                (0x0800, struct.pack("<H", 0x0101)))
        # One write: the server reads the C-CANCEL-RQ together with the C-GET-RQ, so the
        # cancel is there before the sub-operation could start.
        sock.sendall(p_data(1, 0x03, get_rq) + p_data(1, 0x02, buf.getvalue()) + p_data(1, 0x03, cancel_rq))
        messages = []
        while True:
            pdu_type, body = recv_pdu(sock)
            assert pdu_type == 0x04, pdu_type
            messages += list(_pdvs(body))
            if messages[-1][1] & 0x02 and not messages[-1][1] & 0x01:
                break  # the final response's Identifier
        command = read_dataset(io.BytesIO(messages[0][2]), True, True)
        assert (command.CommandField, command.Status) == (0x8010, 0xFE00)  # no C-STORE-RQ came
        assert (command.NumberOfRemainingSuboperations, command.NumberOfCompletedSuboperations,
                command.NumberOfFailedSuboperations) == (1, 0, 0)
        response = read_dataset(io.BytesIO(messages[1][2]), False, True)
        assert not response.FailedSOPInstanceUIDList
        sock.sendall(struct.pack(">BxL", 0x05, 4) + b"\0\0\0\0")
        assert recv_pdu(sock)[0] == 0x06
    finally:
        sock.close()
    # The association's worker is still healthy for the next request.
    check_new_instance(frame_get(shared_server, source, "SimpleFrameList", [1]), source,
                       "SimpleFrameList", [1], [1])
