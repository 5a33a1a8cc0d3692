"""dicomaccel's handlers in a real pynetdicom AE (dicomaccel.integrations.pynetdicom), driven
by DCMTK storescu/getscu and by pynetdicom as SCU."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, RLELossless, generate_uid
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import (
    CompositeInstanceRootRetrieveGet,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
)

from dicomaccel.archive import Archive
from dicomaccel.integrations.pynetdicom import (
    ArchiveGetHandler,
    ArchiveStoreHandler,
    StorageGetHandler,
    add_presentation_contexts,
    handlers,
)
from dicomaccel.integrations.pynetdicom import store as store_module
from dicomaccel.policy.store import StorePolicy
from dicomaccel.retrieve.extraction import file_meta_bytes
from dicomaccel.testing import files as dicomgen
from dicomaccel.testing.files import dataset_part, retag, sop_of
from dicomaccel.testing.scu import assert_counts, c_get, failed_list, identifier
from dicomaccel.testing.server import dcmtk_program

pytestmark = pytest.mark.timeout(120)

STORESCU = dcmtk_program("storescu")
GETSCU = dcmtk_program("getscu")
needs_dcmtk = pytest.mark.skipif(STORESCU is None or GETSCU is None, reason="DCMTK not installed")

PATIENT_ROOT = PatientRootQueryRetrieveInformationModelGet
STUDY_ROOT = StudyRootQueryRetrieveInformationModelGet
INSTANCE_ROOT = CompositeInstanceRootRetrieveGet
MULTIFRAME = dicomgen.MULTIFRAME_CLASS
EXPLICIT = (ExplicitVRLittleEndian,)


def start(ae: AE, evt_handlers) -> tuple[object, int]:
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=evt_handlers)
    return server, server.server_address[1]


@pytest.fixture
def chunked():
    """The data sets of received C-STOREs go to a file (event.dataset_path), never decoded.
    A process-wide pynetdicom setting, so only for the C-STORE tests: our pynetdicom SCUs
    read what they receive from memory."""
    old = _config.STORE_RECV_CHUNKED_DATASET
    _config.STORE_RECV_CHUNKED_DATASET = True
    yield
    _config.STORE_RECV_CHUNKED_DATASET = old


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """An archive refusing MR Image Storage, behind a pynetdicom AE with our handlers."""
    archive = Archive(tmp_path_factory.mktemp("pn") / "data", fsync=False,
                      policy=StorePolicy(reject_sop_classes=frozenset({MRImageStorage})))
    ae = AE(ae_title="ACCEL")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    add_presentation_contexts(ae)
    server, port = start(ae, handlers(archive))
    yield archive, port
    server.shutdown()
    archive.close()


def store_scu(port: int, datasets: list[bytes]) -> list[pydicom.Dataset]:
    """C-STORE each file over one pynetdicom association; the response status data sets."""
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class in {pydicom.dcmread(io.BytesIO(d), stop_before_pixels=True).SOPClassUID for d in datasets}:
        for syntax in (ExplicitVRLittleEndian, RLELossless):  # one context each: one is accepted
            ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="ACCEL")
    assert assoc.is_established
    try:
        return [assoc.send_c_store(pydicom.dcmread(io.BytesIO(d))) for d in datasets]
    finally:
        assoc.release()


def stored_bytes(archive: Archive, uid: str) -> bytes:
    return Path(archive.get(uid).path).read_bytes()


# ------------------------------------------------------------------------------ C-STORE


@needs_dcmtk
@pytest.mark.parametrize("to_file", [True, False], ids=["chunked", "in-memory"])
def test_storescu_into_the_archive(node, tmp_path, to_file, monkeypatch):
    archive, port = node
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", to_file)
    study, files = dicomgen.ct_series(3, 64, 64)
    paths = []
    for i, data in enumerate(files):
        paths.append(tmp_path / f"{i}.dcm")
        paths[-1].write_bytes(data)
    out = subprocess.run([STORESCU, "-aec", "ACCEL", "127.0.0.1", str(port), *map(str, paths)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for data in files:
        # The data set exactly as sent; the File Meta is ours.
        assert dataset_part(stored_bytes(archive, sop_of(data))) == dataset_part(data)
    assert len(archive.find(study_uids=[study])) == 3


@pytest.mark.parametrize("to_file", [True, False], ids=["chunked", "in-memory"])
def test_store_statuses(node, to_file, monkeypatch):
    archive, port = node
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", to_file)
    study, series = generate_uid(), generate_uid()
    ct = dicomgen.ct_instance(study, series, 1, 32, 32)
    other = dicomgen.ct_instance(study, series, 2, 32, 32)
    same_uid_other_bytes = retag(other, SOPInstanceUID=sop_of(ct))
    mr = retag(dicomgen.ct_instance(study, series, 3, 32, 32), SOPClassUID=MRImageStorage)
    rle = dicomgen.multiframe_instance(4, 16, 16, transfer_syntax=RLELossless, study_uid=study)
    statuses = store_scu(port, [ct, ct, same_uid_other_bytes, mr, rle])
    assert [s.Status for s in statuses] == [0x0000, 0x0000, 0x0111, 0x0122, 0x0000]
    assert "not supported" in statuses[3].ErrorComment
    assert dataset_part(stored_bytes(archive, sop_of(ct))) == dataset_part(ct)
    # Compressed data sets are stored as received too.
    assert dataset_part(stored_bytes(archive, sop_of(rle))) == dataset_part(rle)
    assert archive.get(sop_of(mr)) is None


def test_store_iod_warning(node, chunked):
    archive, port = node
    ds = pydicom.dcmread(io.BytesIO(dicomgen.ct_instance(generate_uid(), generate_uid(), 1, 16, 16)))
    del ds.ImageType  # Type 1 in the CT Image Module (PS3.3 C.8.2.1)
    (status,) = store_scu(port, [dicomgen.to_bytes(ds)])
    assert status.Status == 0xB007
    assert archive.get(ds.SOPInstanceUID) is not None


def test_chunked_file_is_copied_then_emptied(tmp_path, chunked, monkeypatch):
    """pynetdicom's temporary file is copied in reads of CHUNK bytes (a few KiB here, so an
    instance takes several) and emptied before the archive's flush, which would otherwise
    write it to disk just before pynetdicom deletes it; what is stored is our File Meta and
    the data set as received."""
    monkeypatch.setattr(store_module, "CHUNK", 4096)
    data = dicomgen.ct_instance(generate_uid(), generate_uid(), 1, 64, 64)  # ~8 KiB of pixels
    with Archive(tmp_path / "data", fsync=False) as archive:
        inner, left = ArchiveStoreHandler(archive), []

        def handler(event):
            status = inner(event)
            left.append(Path(event.dataset_path).stat().st_size)
            return status

        ae = AE(ae_title="ACCEL")
        add_presentation_contexts(ae, get=False, sop_classes=[CTImageStorage])
        server, port = start(ae, [(evt.EVT_C_STORE, handler)])
        try:
            (status,) = store_scu(port, [data])
        finally:
            server.shutdown()
        assert status.Status == 0x0000 and left == [0]
        assert stored_bytes(archive, sop_of(data)) == \
            file_meta_bytes(CTImageStorage, sop_of(data), ExplicitVRLittleEndian) + dataset_part(data)


# ------------------------------------------------------------------------------ C-GET


@pytest.fixture(scope="module")
def loaded(node):
    """Two patients: P1 with a two-series CT study, P2 with a native and an RLE multi-frame."""
    archive, port = node
    study, s1, s2 = generate_uid(), generate_uid(), generate_uid()
    cts = [retag(dicomgen.ct_instance(study, s, i + 1, 32, 32), PatientID="P1")
           for i, s in enumerate([s1, s1, s2])]
    native = retag(dicomgen.multiframe_instance(12, 16, 16), PatientID="P2")
    rle = retag(dicomgen.multiframe_instance(6, 16, 16, transfer_syntax=RLELossless), PatientID="P2")
    files = {sop_of(d): d for d in [*cts, native, rle]}
    for data in files.values():
        archive.store_bytes(data)
    return {"study": study, "series": (s1, s2), "cts": cts, "native": native, "rle": rle, "files": files}


def received_map(result) -> dict[str, bytes]:
    return {r.sop_instance_uid: r.raw for r in result.received}


def test_cget_every_level(node, loaded):
    _, port = node
    cts = loaded["cts"]
    expected = {sop_of(d): dataset_part(d) for d in cts}
    result = c_get(port, PATIENT_ROOT, identifier("PATIENT", PatientID="P1"))
    assert result.final.Status == 0x0000 and received_map(result) == expected
    assert_counts(result.final, 3)
    result = c_get(port, STUDY_ROOT, identifier("STUDY", StudyInstanceUID=loaded["study"]))
    assert received_map(result) == expected
    result = c_get(port, STUDY_ROOT, identifier("SERIES", StudyInstanceUID=loaded["study"],
                                                SeriesInstanceUID=loaded["series"][1]))
    assert list(received_map(result)) == [sop_of(cts[2])]
    result = c_get(port, INSTANCE_ROOT, identifier("IMAGE", SOPInstanceUID=[sop_of(cts[0]), sop_of(cts[2])]))
    assert received_map(result) == {sop_of(cts[0]): dataset_part(cts[0]), sop_of(cts[2]): dataset_part(cts[2])}


def test_cget_transcodes_when_the_stored_syntax_was_not_accepted(node, loaded):
    _, port = node
    rle = loaded["rle"]
    result = c_get(port, INSTANCE_ROOT, identifier("IMAGE", SOPInstanceUID=sop_of(rle)),
                   storage=((MULTIFRAME, EXPLICIT),))
    assert result.final.Status == 0x0000
    (got,) = result.received
    assert got.transfer_syntax == ExplicitVRLittleEndian
    assert np.array_equal(got.dataset().pixel_array, pydicom.dcmread(io.BytesIO(rle)).pixel_array)


def test_cget_without_a_storage_context_fails_the_suboperation(node, loaded):
    _, port = node
    result = c_get(port, STUDY_ROOT, identifier("STUDY", StudyInstanceUID=loaded["study"]),
                   storage=((MULTIFRAME, EXPLICIT),))  # no CT context
    assert result.final.Status == 0xA702
    assert sorted(failed_list(result)) == sorted(sop_of(d) for d in loaded["cts"])


def test_cget_identifier_errors(node):
    _, port = node
    result = c_get(port, STUDY_ROOT, identifier("STUDY"))
    assert result.final.Status == 0xA900
    assert result.final.OffendingElement == 0x0020000D
    assert "StudyInstanceUID" in result.final.ErrorComment


@pytest.mark.parametrize("name", ["native", "rle"])
def test_frame_level_equals_pydicom_frames(node, loaded, name):
    _, port = node
    source = loaded[name]
    syntax = pydicom.dcmread(io.BytesIO(source), stop_before_pixels=True).file_meta.TransferSyntaxUID
    ident = identifier("FRAME", SOPInstanceUID=sop_of(source), SimpleFrameList=[2, 4, 5])
    result = c_get(port, INSTANCE_ROOT, ident, storage=((MULTIFRAME, (syntax,)),))
    assert result.final.Status == 0x0000
    assert_counts(result.final, 1)
    (got,) = result.received
    assert got.transfer_syntax == syntax  # PS3.4 Y.3.3: the source's transfer syntax
    new = got.dataset()
    assert new.NumberOfFrames == 3 and new.SOPInstanceUID != sop_of(source)
    assert new.FrameExtractionSequence[-1].MultiFrameSourceSOPInstanceUID == sop_of(source)
    frames = pydicom.dcmread(io.BytesIO(source)).pixel_array
    assert np.array_equal(new.pixel_array, frames[[1, 3, 4]])


def test_frame_level_failures(node, loaded):
    _, port = node
    result = c_get(port, INSTANCE_ROOT, identifier("FRAME", SOPInstanceUID="1.2.3.4", SimpleFrameList=[1]),
                   storage=((MULTIFRAME, EXPLICIT),))
    assert result.final.Status == 0xC000 and failed_list(result) == ["1.2.3.4"]
    native = sop_of(loaded["native"])
    result = c_get(port, INSTANCE_ROOT, identifier("FRAME", SOPInstanceUID=native, SimpleFrameList=[99]),
                   storage=((MULTIFRAME, EXPLICIT),))
    assert result.final.Status == 0xAA00 and failed_list(result) == [native]


def test_cancel_stops_starting_suboperations(node, tmp_path):
    archive, port = node
    study, files = dicomgen.ct_series(6, 16, 16)
    for data in files:
        archive.store_bytes(data)
    msg_id = 11

    # pynetdicom's SCU sends C-CANCEL-RQ on the C-GET's context: find it from the association.
    def cancel(event, received):
        if len(received) == 1:
            get_cx = next(cx for cx in event.assoc.accepted_contexts if cx.abstract_syntax == STUDY_ROOT)
            event.assoc.send_c_cancel(msg_id, get_cx.context_id)
        return 0x0000

    result = c_get(port, STUDY_ROOT, identifier("STUDY", StudyInstanceUID=study), on_store=cancel, msg_id=msg_id)
    assert result.final.Status == 0xFE00
    assert 1 <= len(result.received) < 6
    assert result.final.NumberOfRemainingSuboperations == 6 - len(result.received)


@needs_dcmtk
def test_getscu_study(node, loaded, tmp_path):
    _, port = node
    out = subprocess.run([GETSCU, "-aec", "ACCEL", "-S", "-k", "QueryRetrieveLevel=STUDY",
                          "-k", f"StudyInstanceUID={loaded['study']}", "-od", str(tmp_path),
                          "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = {sop_of(p.read_bytes()): dataset_part(p.read_bytes()) for p in tmp_path.iterdir()}
    assert got == {sop_of(d): dataset_part(d) for d in loaded["cts"]}


# ----------------------------------------------------------------- the server's own storage


def test_own_storage_handler(tmp_path):
    native = dicomgen.multiframe_instance(8, 16, 16)
    ct = dicomgen.ct_instance(generate_uid(), generate_uid(), 1, 32, 32)
    path = tmp_path / "native.dcm"
    path.write_bytes(native)
    storage = {sop_of(native): path, sop_of(ct): ct}  # a path and a buffer
    ae = AE(ae_title="ACCEL")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    add_presentation_contexts(ae, store=False)
    server, port = start(ae, [(evt.EVT_C_GET, StorageGetHandler(storage.get))])
    try:
        storage_cx = ((MULTIFRAME, EXPLICIT), (CTImageStorage, EXPLICIT))
        result = c_get(port, INSTANCE_ROOT, identifier("IMAGE", SOPInstanceUID=[sop_of(ct), sop_of(native)]),
                       storage=storage_cx)
        assert received_map(result) == {sop_of(ct): dataset_part(ct), sop_of(native): dataset_part(native)}
        ident = identifier("FRAME", SOPInstanceUID=sop_of(native), CalculatedFrameList=[1, 0xFFFFFFFF, 3])
        result = c_get(port, INSTANCE_ROOT, ident, storage=storage_cx)
        (got,) = result.received
        frames = pydicom.dcmread(io.BytesIO(native)).pixel_array
        assert np.array_equal(got.dataset().pixel_array, frames[[0, 3, 6]])
        # No match callback: a STUDY-level request cannot be served.
        result = c_get(port, STUDY_ROOT, identifier("STUDY", StudyInstanceUID="1.2.3"), storage=storage_cx)
        assert result.final.Status == 0xC000
    finally:
        server.shutdown()


def test_archive_handler_alone(tmp_path):
    """ArchiveGetHandler on an AE of its own (no C-STORE), over an archive filled elsewhere."""
    with Archive(tmp_path / "data", fsync=False) as archive:
        data = dicomgen.ct_instance(generate_uid(), generate_uid(), 1, 16, 16)
        archive.store_bytes(data)
        ae = AE(ae_title="ACCEL")
        add_presentation_contexts(ae, store=False, sop_classes=[CTImageStorage])
        server, port = start(ae, [(evt.EVT_C_GET, ArchiveGetHandler(archive))])
        try:
            result = c_get(port, INSTANCE_ROOT, identifier("IMAGE", SOPInstanceUID=sop_of(data)))
            assert received_map(result) == {sop_of(data): dataset_part(data)}
        finally:
            server.shutdown()
