"""The C-FIND SCP of a real `dicomaccel serve` process (PS3.4 C.4.1, Patient Root and Study
Root FIND), loaded over STOW-RS, queried by DCMTK findscu and pynetdicom."""

from __future__ import annotations

import subprocess
import time
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from dicomaccel.testing import multipart, post, start_server
from dicomaccel.testing import files as dicomgen
from dicomaccel.testing.files import retag

# The index matters here: every test on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = [pytest.mark.timeout(120), pytest.mark.indexes("sqlite", "postgresql")]

FINDSCU = "/usr/bin/findscu"  # DCMTK's; pynetdicom installs a Python script of the same name
STUDY_ROOT = StudyRootQueryRetrieveInformationModelFind
PATIENT_ROOT = PatientRootQueryRetrieveInformationModelFind


def _ct(study, series, number, **attrs) -> bytes:
    return retag(dicomgen.ct_instance(study, series, number, 8, 8), **attrs)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, index_backend):
    data = tmp_path_factory.mktemp("cfind") / "data"
    server = start_server(data, *index_backend.args(data))
    k = {n: generate_uid() for n in ("S1", "S1a", "S1b", "S2", "S2a", "S3", "S3a")}
    doe = dict(PatientName="Doe^John", PatientID="FIND-1", StudyDate="20250110", AccessionNumber="F-1")
    files = [_ct(k["S1"], k["S1a"], i, Modality="CT", **doe) for i in (1, 2, 3)]
    files += [_ct(k["S1"], k["S1b"], 1, Modality="MR", **doe)]
    files += [_ct(k["S2"], k["S2a"], 1, PatientName="Roe^Rita", PatientID="FIND-2", StudyDate="20250615")]
    # 120 instances of one series: enough responses for a cancel to land among them.
    files += [_ct(k["S3"], k["S3a"], i, PatientName="Many^Images", PatientID="FIND-3", StudyDate="20240101")
              for i in range(1, 121)]
    status, _, body = post(server, multipart(files))
    assert status == 200, body[:300]
    yield server, k
    server.stop()


def _find(server, model, ident: Dataset, syntax=ExplicitVRLittleEndian):
    ae = AE(ae_title="FINDTEST")
    ae.add_requested_context(model, [syntax])
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="DICOMACCEL")
    assert assoc.is_established
    try:
        responses = list(assoc.send_c_find(ident, model))
    finally:
        assoc.release()
    return responses


def _ident(level: str, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _pending(responses):
    return [ds for status, ds in responses if status and status.Status == 0xFF00]


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_study_root_study_level_wildcard(loaded, syntax):
    server, k = loaded
    responses = _find(server, STUDY_ROOT, _ident("STUDY", PatientName="doe*", StudyInstanceUID="",
                                                 ModalitiesInStudy="", NumberOfStudyRelatedInstances="",
                                                 StudyDescription="", PatientBirthDate=""), syntax)
    assert responses[-1][0].Status == 0x0000
    found = _pending(responses)
    assert len(found) == 1
    ds = found[0]
    assert ds.StudyInstanceUID == k["S1"] and ds.PatientName == "Doe^John"
    assert ds.QueryRetrieveLevel == "STUDY"
    assert list(ds.ModalitiesInStudy) == ["CT", "MR"] and ds.NumberOfStudyRelatedInstances == 4
    assert ds.StudyDescription == "" and ds.PatientBirthDate == "19700101"


def test_levels_and_keys(loaded):
    server, k = loaded
    # Date range at STUDY level; every study matched once.
    got = _pending(_find(server, STUDY_ROOT, _ident("STUDY", StudyDate="20250101-", StudyInstanceUID="")))
    assert sorted(ds.StudyInstanceUID for ds in got) == sorted([k["S1"], k["S2"]])
    # SERIES under a study, with a Modality key.
    got = _pending(_find(server, STUDY_ROOT, _ident("SERIES", StudyInstanceUID=k["S1"], Modality="MR",
                                                    SeriesInstanceUID="", NumberOfSeriesRelatedInstances="")))
    assert [(ds.SeriesInstanceUID, ds.NumberOfSeriesRelatedInstances) for ds in got] == [(k["S1b"], 1)]
    # IMAGE level: the unique keys above, a list of nothing else.
    got = _pending(_find(server, STUDY_ROOT, _ident("IMAGE", StudyInstanceUID=k["S1"], SeriesInstanceUID=k["S1a"],
                                                    SOPInstanceUID="", InstanceNumber="")))
    assert [ds.InstanceNumber for ds in got] == [1, 2, 3]
    # Patient Root: PATIENT level with its counts; STUDY level under one patient.
    got = _pending(_find(server, PATIENT_ROOT, _ident("PATIENT", PatientID="FIND-*", PatientName="",
                                                      NumberOfPatientRelatedStudies="")))
    assert sorted((ds.PatientID, ds.NumberOfPatientRelatedStudies) for ds in got) == \
        [("FIND-1", 1), ("FIND-2", 1), ("FIND-3", 1)]
    got = _pending(_find(server, PATIENT_ROOT, _ident("STUDY", PatientID="FIND-2", StudyInstanceUID="")))
    assert [ds.StudyInstanceUID for ds in got] == [k["S2"]]


def test_bad_identifiers(loaded):
    server, k = loaded
    # No level; a level the model lacks; a unique key above the level missing (A900).
    for ident, offending in ((_ident("STUDY", PatientName="x"), None),
                             (_ident("PATIENT", PatientID=""), 0x00080052),
                             (_ident("SERIES", SeriesInstanceUID=""), 0x0020000D)):
        if offending is None:
            del ident.QueryRetrieveLevel
            offending = 0x00080052
        status, _ = _find(server, STUDY_ROOT, ident)[-1]
        tags = status.OffendingElement
        assert status.Status == 0xA900 and offending in (tags if isinstance(tags, list) else [tags])
    # A value its VR does not allow as a key.
    status, _ = _find(server, STUDY_ROOT, _ident("STUDY", StudyDate="last week"))[-1]
    assert status.Status == 0xA900
    # Bytes that are not a data set: C000 (sent raw through pynetdicom's DIMSE layer).
    status = _raw_find(server, b"\x08\x00\x52\x00\xff\xff\xff\x7fSTUDY")
    assert status == 0xC000


def _raw_find(server, identifier: bytes):
    """The final status of a C-FIND-RQ carrying ``identifier`` exactly as given (through
    pynetdicom's DIMSE layer, its reactor paused as its own send_c_find does)."""
    ae = AE(ae_title="FINDTEST")
    ae.add_requested_context(STUDY_ROOT, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="DICOMACCEL")
    assert assoc.is_established
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        context = assoc._get_valid_context(STUDY_ROOT, "", "scu")
        req = C_FIND()
        req.MessageID = 7
        req.AffectedSOPClassUID = STUDY_ROOT
        req.Priority = 2
        req.Identifier = BytesIO(identifier)
        assoc.dimse.send_msg(req, context.context_id)
        while True:
            _, rsp = assoc.dimse.get_msg(block=True)
            assert rsp is not None, "no final response"
            if rsp.Status != 0xFF00:
                return rsp.Status
    finally:
        assoc._reactor_checkpoint.set()
        assoc.release()


def test_cancel_ends_with_fe00(loaded):
    """pynetdicom sends the C-FIND-RQ when send_c_find is called; a C-CANCEL-RQ sent right
    behind it arrives while the search runs (PS3.4 C.4.1.3.1)."""
    server, k = loaded
    ident = _ident("IMAGE", StudyInstanceUID=k["S3"], SeriesInstanceUID=k["S3a"], SOPInstanceUID="")
    ae = AE(ae_title="FINDTEST")
    ae.add_requested_context(STUDY_ROOT, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="DICOMACCEL")
    try:
        responses = assoc.send_c_find(ident, STUDY_ROOT, msg_id=9)
        context = assoc._get_valid_context(STUDY_ROOT, "", "scu")
        assoc.send_c_cancel(9, context.context_id)
        statuses = [status.Status for status, _ in responses]
        assert statuses[-1] == 0xFE00 and statuses.count(0xFF00) < 120
        # The association goes on; without a cancel all 120 come back.
        assert len(_pending(list(assoc.send_c_find(ident, STUDY_ROOT)))) == 120
    finally:
        assoc.release()


def test_pynetdicom_cancel_after_first_response(loaded):
    server, k = loaded
    ae = AE(ae_title="FINDTEST")
    ae.add_requested_context(STUDY_ROOT, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="DICOMACCEL")
    try:
        ident = _ident("IMAGE", StudyInstanceUID=k["S3"], SeriesInstanceUID=k["S3a"], SOPInstanceUID="")
        statuses = []
        for status, _ in assoc.send_c_find(ident, STUDY_ROOT, msg_id=9):
            statuses.append(status.Status)
            if len(statuses) == 1:
                context = assoc._get_valid_context(STUDY_ROOT, "", "scu")
                assoc.send_c_cancel(9, context.context_id)
        # The responses already on their way arrive; the search ends with Cancel unless it
        # had already finished.
        assert statuses[-1] in (0xFE00, 0x0000) and statuses.count(0xFF00) <= 120
    finally:
        assoc.release()


def test_findscu(loaded, tmp_path: Path):
    server, k = loaded
    out = tmp_path / "rsp"
    out.mkdir()
    run = subprocess.run([FINDSCU, "-S", "-aec", "DICOMACCEL", "-X", "-od", str(out),
                          "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=ROE*", "-k", "StudyInstanceUID",
                          "-k", "StudyDate", "-k", "NumberOfStudyRelatedSeries",
                          "127.0.0.1", str(server.dimse_port)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    files = sorted(out.glob("rsp*.dcm"))
    assert len(files) == 1
    ds = pydicom.dcmread(files[0])
    assert ds.StudyInstanceUID == k["S2"] and ds.StudyDate == "20250615"
    assert ds.NumberOfStudyRelatedSeries == 1
    # Patient Root, IMAGE level.
    run = subprocess.run([FINDSCU, "-P", "-aec", "DICOMACCEL", "-X", "-od", str(out),
                          "-k", "QueryRetrieveLevel=IMAGE", "-k", "PatientID=FIND-1", "-k", f"StudyInstanceUID={k['S1']}",
                          "-k", f"SeriesInstanceUID={k['S1a']}", "-k", "SOPInstanceUID",
                          "127.0.0.1", str(server.dimse_port)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert len(list(out.glob("rsp*.dcm"))) == 3


def test_find_permission(tmp_path):
    """With [ae-permissions], an AE without "find" gets its FIND contexts refused."""
    config = tmp_path / "dicomaccel.toml"
    config.write_text('[ae-permissions]\nFINDTEST = ["find"]\nGETONLY = ["get"]\n')
    server = start_server(tmp_path / "data", "--config", str(config))
    try:
        for ae_title, ok in (("FINDTEST", True), ("GETONLY", False)):
            ae = AE(ae_title=ae_title)
            ae.add_requested_context(STUDY_ROOT, [ExplicitVRLittleEndian])
            assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="DICOMACCEL")
            try:
                accepted = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == STUDY_ROOT]
                assert bool(accepted) == ok
            finally:
                assoc.release()
    finally:
        server.stop()
