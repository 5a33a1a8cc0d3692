"""The C-GET SCP of a real `dicomaccel serve` process, loaded over STOW-RS, driven by pynetdicom."""

from __future__ import annotations

import io
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.sop_class import (
    CompositeInstanceRetrieveWithoutBulkDataGet,
    CompositeInstanceRootRetrieveGet,
    EnhancedMRImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelGet,
    SecondaryCaptureImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)

from dicomaccel.archive.index import RecordList
from dicomaccel.testing import files as dicomgen
from dicomaccel.testing import multipart, post, wait_until, warnings_only
from dicomaccel.testing.files import dataset_part, retag, sop_of
from dicomaccel.testing.scu import assert_counts, c_get, failed_list, identifier

# The index matters here: every test on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = [pytest.mark.timeout(120), pytest.mark.indexes("sqlite", "postgresql")]

PATIENT_ROOT = PatientRootQueryRetrieveInformationModelGet
STUDY_ROOT = StudyRootQueryRetrieveInformationModelGet
INSTANCE_ROOT = CompositeInstanceRootRetrieveGet
WITHOUT_BULK = CompositeInstanceRetrieveWithoutBulkDataGet
MULTIFRAME = dicomgen.MULTIFRAME_CLASS
EXPLICIT_ONLY = (ExplicitVRLittleEndian,)
JPEG_FILES = ["SC_rgb_jpeg_dcmtk.dcm", "JPEG-LL.dcm", "MR_small_jpeg_ls_lossless.dcm",
              "emri_small_jpeg_2k_lossless.dcm"]
UNDECODABLE = "JPEG-lossy.dcm"  # 12-bit JPEG Extended: no installed decoder reads it


# ------------------------------------------------------------------------- data


def ct(study: str, series: str, number: int, patient: str, **attrs) -> bytes:
    data = dicomgen.ct_instance(study, series, number, 64, 64)
    return retag(data, PatientID=patient, **attrs)


@dataclass
class Corpus:
    files: dict[str, bytes] = field(default_factory=dict)  # SOP Instance UID -> stored bytes
    uids: dict[str, list[str]] = field(default_factory=dict)  # name -> SOP Instance UIDs
    keys: dict[str, str] = field(default_factory=dict)  # name -> Study/Series UID or Patient ID

    def add(self, name: str, *instances: bytes) -> None:
        for data in instances:
            uid = sop_of(data)
            assert uid not in self.files
            self.files[uid] = data
            self.uids.setdefault(name, []).append(uid)


@pytest.fixture(scope="module")
def corpus(shared_server) -> Corpus:
    c = Corpus()
    k = c.keys
    for name in ("P1", "P2", "P3"):
        k[name] = f"CGET-{name}-{generate_uid()[-8:]}"
    for name in ("S1", "A", "B", "S2", "C", "S3", "D", "S3b", "E", "S5", "F", "S6", "G", "S8", "H", "S9", "S10", "I"):
        k[name] = generate_uid()
    # P1: study S1 (series A: 3 CT, series B: 2 CT); study S2 (series C: compressed multi-frame).
    c.add("A", *(ct(k["S1"], k["A"], i, k["P1"]) for i in range(1, 4)))
    c.add("B", *(ct(k["S1"], k["B"], i, k["P1"]) for i in range(4, 6)))
    for syntax in (JPEG2000Lossless, RLELossless):
        c.add("C", retag(dicomgen.multiframe_instance(3, 32, 32, transfer_syntax=syntax),
                         PatientID=k["P1"], StudyInstanceUID=k["S2"], SeriesInstanceUID=k["C"]))
    # P2: two studies, three CT.
    c.add("D", *(ct(k["S3"], k["D"], i, k["P2"]) for i in range(1, 3)))
    c.add("E", ct(k["S3b"], k["E"], 1, k["P2"]))
    # S5: 200 small CT for cancellation.
    c.add("F", *(ct(k["S5"], k["F"], i, k["P3"]) for i in range(1, 201)))
    # S6: one image in two encodings (each names the other) plus an unrelated image.
    native = dicomgen.multiframe_dataset(2, 32, 32, study_uid=k["S6"])
    native.SeriesInstanceUID = k["G"]
    rle = dicomgen.multiframe_dataset(2, 32, 32, study_uid=k["S6"])
    rle.SeriesInstanceUID = k["G"]
    for a, b in ((native, rle), (rle, native)):
        item = Dataset()
        item.ReferencedSOPClassUID = b.SOPClassUID
        item.ReferencedSOPInstanceUID = b.SOPInstanceUID
        a.AlternateRepresentationSequence = Sequence([item])
    rle.file_meta = FileMetaDataset()
    rle.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    rle.compress(RLELossless)
    c.add("G_native", dicomgen.to_bytes(native))
    c.add("G_rle", dicomgen.to_bytes(rle, RLELossless))
    c.add("G_other", ct(k["S6"], k["G"], 9, k["P3"]))
    # S8: CT plus a Secondary Capture the SCUs below do not offer; S9: the undecodable JPEG.
    c.add("H_ct", *(ct(k["S8"], k["H"], i, k["P3"]) for i in range(1, 3)))
    c.add("H_sc", retag(dicomgen.multiframe_instance(2, 16, 16), StudyInstanceUID=k["S8"], SeriesInstanceUID=k["H"]))
    c.add("S9", retag(Path(get_testdata_file(UNDECODABLE)).read_bytes(), StudyInstanceUID=k["S9"]))
    # Without Bulk Data: overlay data and an icon (whose pixels stay).
    with_bulk = pydicom.dcmread(io.BytesIO(ct(k["S10"], k["I"], 1, k["P3"])))
    with_bulk.add_new(0x60000010, "US", 64)
    with_bulk.add_new(0x60000011, "US", 64)
    with_bulk.add_new(0x60000100, "US", 1)
    with_bulk.add_new(0x60003000, "OW", b"\xff" * 512)
    icon = Dataset()
    icon.Rows = icon.Columns = 4
    icon.SamplesPerPixel, icon.PhotometricInterpretation = 1, "MONOCHROME2"
    icon.BitsAllocated, icon.BitsStored, icon.HighBit, icon.PixelRepresentation = 8, 8, 7, 0
    icon.PixelData = bytes(range(16))
    with_bulk.IconImageSequence = Sequence([icon])
    c.add("W", dicomgen.to_bytes(with_bulk))
    for name in JPEG_FILES:
        c.add(name, Path(get_testdata_file(name)).read_bytes())

    instances = list(c.files.values())
    for i in range(0, len(instances), 60):
        status, _, body = post(shared_server, multipart(instances[i:i + 60]))
        assert warnings_only(status, body), body[:500]  # pydicom's files may not match their IOD
    return c


# ------------------------------------------------------------------------- checks


def pixels(data_or_ds) -> np.ndarray:
    ds = data_or_ds if isinstance(data_or_ds, Dataset) else pydicom.dcmread(io.BytesIO(data_or_ds))
    return ds.pixel_array


# ------------------------------------------------------------------------- tests


def test_c_echo(shared_server):
    ae = AE()
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", shared_server.dimse_port)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


@pytest.mark.parametrize("interval, store_seconds, pending", [
    ("3600", 0, 0),     # no sub-operation ends an hour after the request: none
    ("0.05", 0.08, 3),  # each sub-operation outlasts the interval: one after each but the last
], ids=["hour", "short"])
def test_pending_interval(server_factory, interval, store_seconds, pending):
    """--pending-interval: at most one Pending C-GET response per interval (PS3.4 C.4.3.3 makes
    them optional); the final response counts every sub-operation either way."""
    server = server_factory("--pending-interval", interval)
    study, series = generate_uid(), generate_uid()
    files = [ct(study, series, i, "PID-PENDING") for i in range(1, 5)]
    status, _, body = post(server, multipart(files))
    assert status == 200, body[:300]

    def slow_store(event, received):
        time.sleep(store_seconds)  # the requester answers each C-STORE this late
        return 0x0000

    result = c_get(server.dimse_port, STUDY_ROOT, identifier("STUDY", StudyInstanceUID=study),
                   on_store=slow_store)
    assert result.final.Status == 0x0000
    assert_counts(result.final, len(files))
    assert len(result.received) == len(files)
    assert [(s.Status, s.NumberOfRemainingSuboperations, s.NumberOfCompletedSuboperations)
            for s in result.pending] == [(0xFF00, len(files) - i, i) for i in range(1, pending + 1)]


LEVEL_CASES = {
    "patient-root PATIENT": (PATIENT_ROOT, "PATIENT", {"PatientID": "P2"}, ["D", "E"]),
    "patient-root STUDY": (PATIENT_ROOT, "STUDY", {"PatientID": "P1", "StudyInstanceUID": "S1"}, ["A", "B"]),
    "patient-root SERIES": (PATIENT_ROOT, "SERIES",
                            {"PatientID": "P1", "StudyInstanceUID": "S1", "SeriesInstanceUID": "A"}, ["A"]),
    "patient-root IMAGE list": (PATIENT_ROOT, "IMAGE", {"PatientID": "P1", "StudyInstanceUID": "S1",
                                                        "SeriesInstanceUID": "B", "SOPInstanceUID": "B*"}, ["B"]),
    "study-root STUDY list": (STUDY_ROOT, "STUDY", {"StudyInstanceUID": ["S1", "S3b"]}, ["A", "B", "E"]),
    "study-root SERIES list": (STUDY_ROOT, "SERIES", {"StudyInstanceUID": "S1", "SeriesInstanceUID": ["A", "B"]},
                               ["A", "B"]),
    "study-root IMAGE": (STUDY_ROOT, "IMAGE", {"StudyInstanceUID": "S1", "SeriesInstanceUID": "A",
                                               "SOPInstanceUID": "A1"}, ["A1"]),
    "instance-root IMAGE list": (INSTANCE_ROOT, "IMAGE", {"SOPInstanceUID": ["A0", "D1", "E0"]}, ["A0", "D1", "E0"]),
}


def _resolve(corpus: Corpus, value):
    """Test-case shorthand: "P1"/"S1" keys, "A" a series, "A1" its second instance, "B*" all of B."""
    if isinstance(value, list):
        return [v for item in value for v in ([_resolve(corpus, item)] if not item.endswith("*") else
                                              corpus.uids[item[:-1]])]
    if value.endswith("*"):
        return corpus.uids[value[:-1]]
    if value[-1].isdigit() and value[:-1] in corpus.uids:
        return corpus.uids[value[:-1]][int(value[-1])]
    return corpus.keys[value]


@pytest.mark.parametrize("case", LEVEL_CASES, ids=list(LEVEL_CASES))
def test_levels_and_models(shared_server, corpus, case):
    model, level, keys, expected_names = LEVEL_CASES[case]
    ident = identifier(level, **{k: _resolve(corpus, v) for k, v in keys.items()})
    expected = [u for name in expected_names
                for u in (corpus.uids[name] if name in corpus.uids else [_resolve(corpus, name)])]
    result = c_get(shared_server.dimse_port, model, ident, priority=1)
    assert result.final.Status == 0x0000
    assert_counts(result.final, len(expected))
    assert "NumberOfRemainingSuboperations" not in result.final
    assert sorted(result.uids()) == sorted(expected)
    # One Pending response after every sub-operation but the last, counters consistent.
    assert [(s.Status, s.NumberOfRemainingSuboperations, s.NumberOfCompletedSuboperations)
            for s in result.pending] == [(0xFF00, len(expected) - i, i) for i in range(1, len(expected))]
    for r in result.received:
        assert r.transfer_syntax == ExplicitVRLittleEndian
        assert r.priority == 1  # PS3.4 C.4.3.2: sub-operations carry the C-GET's priority
        assert r.raw == dataset_part(corpus.files[r.sop_instance_uid])  # sent as stored, no re-encoding


def test_zero_matches_is_success_with_zero_counts(shared_server, corpus):
    for model, ident in (
        (STUDY_ROOT, identifier("STUDY", StudyInstanceUID=generate_uid())),
        # The study exists, but not under this patient.
        (PATIENT_ROOT, identifier("STUDY", PatientID=corpus.keys["P2"], StudyInstanceUID=corpus.keys["S1"])),
    ):
        result = c_get(shared_server.dimse_port, model, ident)
        assert [s.Status for s, _ in result.responses] == [0x0000]
        assert_counts(result.final, 0)
        assert result.received == []


@pytest.mark.parametrize("storage, syntax", [
    (EXPLICIT_ONLY, ExplicitVRLittleEndian),
    ((ImplicitVRLittleEndian,), ImplicitVRLittleEndian),
])
def test_compressed_instances_transcoded_for_uncompressed_scu(shared_server, corpus, storage, syntax):
    # JPEG lossless and JPEG-LS need pylibjpeg-libjpeg (a dependency); JPEG 2000 and RLE
    # pylibjpeg-openjpeg and pylibjpeg-rle.
    names = ["C", *JPEG_FILES]
    uids = [u for n in names for u in corpus.uids[n]]
    classes = (MULTIFRAME, SecondaryCaptureImageStorage, MRImageStorage, EnhancedMRImageStorage)
    result = c_get(shared_server.dimse_port, INSTANCE_ROOT, identifier("IMAGE", SOPInstanceUID=uids),
                   storage=[(c, storage) for c in classes], priority=2)
    assert result.final.Status == 0x0000, result.identifier
    assert_counts(result.final, len(uids))
    assert sorted(result.uids()) == sorted(uids)
    for r in result.received:
        assert (r.transfer_syntax, r.priority) == (syntax, 2)
        ds = r.dataset()
        original = corpus.files[r.sop_instance_uid]
        assert ds.SOPInstanceUID == r.sop_instance_uid
        assert np.array_equal(pixels(ds), pixels(original)), r.sop_instance_uid


def test_compressed_instance_sent_as_stored_when_accepted(shared_server, corpus):
    uids = corpus.uids["C"]
    result = c_get(shared_server.dimse_port, STUDY_ROOT,
                   identifier("SERIES", StudyInstanceUID=corpus.keys["S2"], SeriesInstanceUID=corpus.keys["C"]),
                   storage=[(MULTIFRAME, (ExplicitVRLittleEndian,)), (MULTIFRAME, (JPEG2000Lossless,)),
                            (MULTIFRAME, (RLELossless,))])
    assert result.final.Status == 0x0000
    assert sorted(result.uids()) == sorted(uids)
    for r in result.received:
        stored = corpus.files[r.sop_instance_uid]
        assert r.transfer_syntax == pydicom.dcmread(io.BytesIO(stored), stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert r.raw == dataset_part(stored)


def test_no_context_for_one_sop_class_fails_that_sub_operation(shared_server, corpus):
    result = c_get(shared_server.dimse_port, STUDY_ROOT, identifier("STUDY", StudyInstanceUID=corpus.keys["S8"]))
    assert result.final.Status == 0xB000
    assert_counts(result.final, completed=2, failed=1)
    assert sorted(result.uids()) == sorted(corpus.uids["H_ct"])
    assert failed_list(result) == corpus.uids["H_sc"]


def _stored_study(server, patient: str, count: int = 10) -> tuple[str, list[str]]:
    """``count`` CT instances of one new study stored over STOW-RS: (Study UID, SOP UIDs in
    the order a C-GET of the study sends them)."""
    study, series = generate_uid(), generate_uid()
    files = [ct(study, series, i, patient) for i in range(1, count + 1)]
    status, _, body = post(server, multipart(files))
    assert status == 200, body[:300]
    return study, [sop_of(f) for f in files]


@pytest.mark.indexes("sqlite")  # deletes a row behind the server's back, in its SQLite file
def test_instance_deleted_during_the_retrieve_fails_its_sub_operation(server_factory):
    """A C-GET reads its records from the index a page at a time as the sub-operations reach
    them (RecordList): an instance whose row goes after the match is a failed sub-operation,
    named in the Failed SOP Instance UID List, and the others are sent."""
    server = server_factory()
    study, uids = _stored_study(server, "PID-VANISH")
    gone = uids[RecordList.FIRST_PAGE + 3]  # on the second page, read after the first stores

    def delete_on_first(event, received):
        if len(received) == 1:
            with sqlite3.connect(server.data / "index.sqlite3", timeout=30) as db:
                db.execute("DELETE FROM instances WHERE sop_instance_uid = ?", (gone,))
        return 0x0000

    result = c_get(server.dimse_port, STUDY_ROOT, identifier("STUDY", StudyInstanceUID=study),
                   on_store=delete_on_first)
    assert result.final.Status == 0xB000
    assert_counts(result.final, completed=len(uids) - 1, failed=1)
    assert failed_list(result) == [gone]
    assert [r.sop_instance_uid for r in result.received] == [u for u in uids if u != gone]


@pytest.mark.indexes("sqlite")  # makes the server's SQLite index unreadable from outside
def test_index_lost_during_the_retrieve_fails_the_rest_and_keeps_serving(server_factory):
    """The index failing while a retrieve reads its next page of records: the instances
    already read are sent, the rest fail (named in the list), the C-GET is answered and the
    server goes on serving once the index is back."""
    server = server_factory()
    study, uids = _stored_study(server, "PID-INDEXLOST")
    index = server.data / "index.sqlite3"

    def lose_index_on_first(event, received):
        if len(received) == 1:  # the first page (RecordList.FIRST_PAGE records) is read already
            with sqlite3.connect(index, timeout=30) as db:
                db.execute("ALTER TABLE instances RENAME TO instances_away")
        return 0x0000

    result = c_get(server.dimse_port, STUDY_ROOT, identifier("STUDY", StudyInstanceUID=study),
                   on_store=lose_index_on_first)
    sent = RecordList.FIRST_PAGE
    assert result.final.Status == 0xB000
    assert_counts(result.final, completed=sent, failed=len(uids) - sent)
    assert failed_list(result) == uids[sent:]
    assert result.uids() == uids[:sent]
    with sqlite3.connect(index, timeout=30) as db:
        db.execute("ALTER TABLE instances_away RENAME TO instances")
    again = c_get(server.dimse_port, STUDY_ROOT, identifier("STUDY", StudyInstanceUID=study))
    assert again.final.Status == 0x0000 and again.uids() == uids


def test_all_failed_is_a702_with_the_list(shared_server, corpus):
    # Nothing offered for CT: every sub-operation of study S1 fails.
    result = c_get(shared_server.dimse_port, STUDY_ROOT, identifier("STUDY", StudyInstanceUID=corpus.keys["S1"]),
                   storage=[(MRImageStorage, EXPLICIT_ONLY)])
    assert result.final.Status == 0xA702
    assert_counts(result.final, completed=0, failed=5)
    assert sorted(failed_list(result)) == sorted(corpus.uids["A"] + corpus.uids["B"])
    assert result.received == []


def test_undecodable_instance_fails_when_transcoding_is_needed(shared_server, corpus):
    uid = corpus.uids["S9"][0]
    result = c_get(shared_server.dimse_port, STUDY_ROOT, identifier("STUDY", StudyInstanceUID=corpus.keys["S9"]),
                   storage=[(SecondaryCaptureImageStorage, EXPLICIT_ONLY)])
    assert result.final.Status == 0xA702
    assert_counts(result.final, completed=0, failed=1)
    assert failed_list(result) == [uid]
    # Offered in its stored syntax, the same instance goes out untouched.
    stored_syntax = "1.2.840.10008.1.2.4.51"
    result = c_get(shared_server.dimse_port, INSTANCE_ROOT, identifier("IMAGE", SOPInstanceUID=uid),
                   storage=[(SecondaryCaptureImageStorage, (stored_syntax,))])
    assert result.final.Status == 0x0000
    assert [r.raw for r in result.received] == [dataset_part(corpus.files[uid])]


def test_scu_store_failures_and_warnings_are_counted(shared_server, corpus):
    uids = corpus.uids["A"] + corpus.uids["B"]

    def answer(event, received):
        return {1: 0xA700, 2: 0xB000}.get(len(received), 0x0000)

    result = c_get(shared_server.dimse_port, STUDY_ROOT, identifier("STUDY", StudyInstanceUID=corpus.keys["S1"]),
                   on_store=answer)
    assert result.final.Status == 0xB000
    assert_counts(result.final, completed=3, failed=1, warning=1)
    assert failed_list(result) == result.uids()[:1]
    assert sorted(result.uids()) == sorted(uids)


UID_KEYS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
BAD_IDENTIFIERS = {
    "no level": (STUDY_ROOT, {"StudyInstanceUID": "S1"}, "Query/Retrieve Level"),
    "level not in model": (STUDY_ROOT, {"QueryRetrieveLevel": "PATIENT", "PatientID": "P1"}, "level"),
    "unknown level": (PATIENT_ROOT, {"QueryRetrieveLevel": "WARD", "PatientID": "P1"}, "level"),
    "missing higher key": (STUDY_ROOT, {"QueryRetrieveLevel": "SERIES", "SeriesInstanceUID": "A"},
                           "StudyInstanceUID"),
    "missing patient id": (PATIENT_ROOT, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "S1"}, "PatientID"),
    "empty unique key": (STUDY_ROOT, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""}, "StudyInstanceUID"),
    "list above level": (STUDY_ROOT, {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": "S1",
                                      "SeriesInstanceUID": ["A", "B"], "SOPInstanceUID": "A0"}, "SeriesInstanceUID"),
    "instance root STUDY": (INSTANCE_ROOT, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "S1"}, "level"),
    "without bulk SERIES": (WITHOUT_BULK, {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "S1",
                                           "SeriesInstanceUID": "A"}, "level"),
    "view not negotiated": (STUDY_ROOT, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "S1",
                                         "QueryRetrieveView": "CLASSIC"}, "Query/Retrieve View"),
}


@pytest.mark.parametrize("case", BAD_IDENTIFIERS, ids=list(BAD_IDENTIFIERS))
def test_bad_identifier_is_a900_with_error_comment(shared_server, corpus, case):
    model, keys, mentioned = BAD_IDENTIFIERS[case]
    ident = Dataset()
    for keyword, value in keys.items():
        setattr(ident, keyword, _resolve(corpus, value) if keyword in UID_KEYS and value else value)
    result = c_get(shared_server.dimse_port, model, ident)
    assert [s.Status for s, _ in result.responses] == [0xA900]
    assert mentioned in result.final.ErrorComment
    assert result.received == []


def test_without_bulk_data(shared_server, corpus):
    uids = corpus.uids["W"] + corpus.uids["C"][:1]
    result = c_get(shared_server.dimse_port, WITHOUT_BULK, identifier("IMAGE", SOPInstanceUID=uids),
                   storage=[(CTImageStorage, EXPLICIT_ONLY), (MULTIFRAME, (JPEG2000Lossless,)),
                            (MULTIFRAME, (ImplicitVRLittleEndian,))])
    assert result.final.Status == 0x0000
    assert sorted(result.uids()) == sorted(uids)
    for r in result.received:
        ds = r.dataset()
        original = pydicom.dcmread(io.BytesIO(corpus.files[r.sop_instance_uid]))
        assert "PixelData" not in ds and 0x60003000 not in ds
        assert r.transfer_syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)  # never a codec syntax
        assert (ds.SOPInstanceUID, ds.Rows, ds.PatientID) == (original.SOPInstanceUID, original.Rows,
                                                              original.PatientID)
    with_icon = next(r.dataset() for r in result.received if r.sop_instance_uid == corpus.uids["W"][0])
    assert with_icon.IconImageSequence[0].PixelData == bytes(range(16))
    assert with_icon[0x60000010].value == 64  # overlay attributes stay, only Overlay Data goes


def test_alternate_encodings_send_one(shared_server, corpus):
    native, rle, other = corpus.uids["G_native"][0], corpus.uids["G_rle"][0], corpus.uids["G_other"][0]
    ident = identifier("SERIES", StudyInstanceUID=corpus.keys["S6"], SeriesInstanceUID=corpus.keys["G"])
    # The SCU takes RLE as is: the RLE encoding goes, untouched; the native one stays home.
    both = c_get(shared_server.dimse_port, STUDY_ROOT, ident,
                 storage=[(CTImageStorage, EXPLICIT_ONLY), (MULTIFRAME, (RLELossless,))])
    assert both.final.Status == 0x0000
    assert_counts(both.final, 2)
    assert sorted(both.uids()) == sorted([rle, other])
    # An SCU taking only Explicit VR gets the native encoding, not a transcoded RLE one.
    native_only = c_get(shared_server.dimse_port, STUDY_ROOT, ident,
                        storage=[(CTImageStorage, EXPLICIT_ONLY), (MULTIFRAME, EXPLICIT_ONLY)])
    assert sorted(native_only.uids()) == sorted([native, other])
    assert next(r.raw for r in native_only.received if r.sop_instance_uid == native) == \
        dataset_part(corpus.files[native])
    # Named at IMAGE level, both encodings are sent.
    named = c_get(shared_server.dimse_port, STUDY_ROOT,
                  identifier("IMAGE", StudyInstanceUID=corpus.keys["S6"], SeriesInstanceUID=corpus.keys["G"],
                             SOPInstanceUID=[native, rle]),
                  storage=[(MULTIFRAME, EXPLICIT_ONLY)])
    assert sorted(named.uids()) == sorted([native, rle])


def test_cancel_in_the_middle_of_200(shared_server, corpus):
    after = 5
    msg_id = 21
    uids = corpus.uids["F"]

    def cancel_at(event, received):
        if len(received) == after:
            context_id = next(cx.context_id for cx in event.assoc.accepted_contexts
                              if cx.abstract_syntax == STUDY_ROOT)
            event.assoc.send_c_cancel(msg_id, context_id)
        return 0x0000

    result = c_get(shared_server.dimse_port, STUDY_ROOT, identifier("STUDY", StudyInstanceUID=corpus.keys["S5"]),
                   on_store=cancel_at, msg_id=msg_id)
    final = result.final
    assert final.Status == 0xFE00
    # The sub-operation in flight when the cancel arrived finished; none started after it.
    assert_counts(final, completed=after)
    assert final.NumberOfRemainingSuboperations == len(uids) - after
    assert result.uids() == uids[:after]
    assert result.identifier is not None and failed_list(result) == []
    assert len(result.pending) == after - 1
    # Nothing of the archive stays mapped: not the file staged for the sub-operation the
    # cancel stopped (mapped while the one before it was stored).
    maps = Path(f"/proc/{shared_server.process.pid}/maps")
    assert wait_until(lambda: str(shared_server.data / "instances") not in maps.read_text()), maps.read_text()


def test_the_next_instance_is_mapped_while_the_scu_stores_the_current_one(shared_server, corpus):
    """While the SCU holds the first C-STORE-RQ unanswered, the server already maps the second
    instance's file (besides the first, still being answered): the next sub-operation's
    preparation is off the path between a C-STORE-RSP and the next C-STORE-RQ."""
    study = corpus.keys["S5"]
    maps = Path(f"/proc/{shared_server.process.pid}/maps")
    seen: list[int] = []

    def mapped_of_study() -> int:
        return len({line.split()[-1] for line in maps.read_text().splitlines() if f"/{study}/" in line})

    def first_held(event, received):
        if len(received) == 1:
            wait_until(lambda: mapped_of_study() >= 2, timeout=5)
            seen.append(mapped_of_study())
        return 0x0000

    result = c_get(shared_server.dimse_port, STUDY_ROOT, identifier("STUDY", StudyInstanceUID=study),
                   on_store=first_held)
    assert result.final.Status == 0x0000
    assert seen == [2]


def test_stalled_association_does_not_block_others(shared_server, corpus):
    release = threading.Event()
    first_store = threading.Event()
    outcome: dict = {}

    def stall(event, received):
        first_store.set()
        release.wait(60)
        return 0x0000

    def slow_get():
        outcome["slow"] = c_get(shared_server.dimse_port, STUDY_ROOT,
                                identifier("STUDY", StudyInstanceUID=corpus.keys["S5"]), on_store=stall)

    thread = threading.Thread(target=slow_get)
    thread.start()
    try:
        assert first_store.wait(30)
        # While the first SCU sits on a C-STORE-RSP, others retrieve, transcoding included.
        for _ in range(2):
            fast = c_get(shared_server.dimse_port, STUDY_ROOT,
                         identifier("STUDY", StudyInstanceUID=corpus.keys["S2"]),
                         storage=[(MULTIFRAME, EXPLICIT_ONLY)])
            assert fast.final.Status == 0x0000
            assert sorted(fast.uids()) == sorted(corpus.uids["C"])
        assert not outcome
    finally:
        release.set()
        thread.join(60)
    assert outcome["slow"].final.Status == 0x0000
    assert_counts(outcome["slow"].final, 200)


def test_garbage_identifier_is_c000(shared_server):
    # Random bytes that pydicom alone would read as elements of VR UN: not a data set
    # (elements out of order, values past the end), so C000 Unable to process, not A900.
    import random
    import socket
    import struct

    from dicomaccel.dimse import messages
    from dicomaccel.testing import pdu as raw

    model = b"1.2.840.10008.5.1.4.1.2.2.3"  # Study Root Query/Retrieve Information Model - GET
    sock = socket.create_connection(("127.0.0.1", shared_server.dimse_port), timeout=30)
    sock.sendall(raw.associate_rq(contexts=((1, model, (b"1.2.840.10008.1.2",)),)))
    assert raw.recv_pdu(sock)[0] == 0x02  # A-ASSOCIATE-AC
    command = messages.encode_command({"AffectedSOPClassUID": model.decode(), "CommandField": messages.C_GET_RQ,
                                       "MessageID": 1, "Priority": 0,
                                       "CommandDataSetType": messages.DATASET_PRESENT})
    garbage = random.Random(7).randbytes(64)
    sock.sendall(raw.p_data(1, 3, command) + raw.p_data(1, 2, garbage))
    kind, body = raw.recv_pdu(sock)
    assert kind == 0x04  # P-DATA-TF
    (length,) = struct.unpack(">L", body[:4])
    response = messages.decode_command(body[6:4 + length])
    sock.close()
    assert response["CommandField"] == messages.C_GET_RSP
    assert response["Status"] == 0xC000 and "Identifier" in response["ErrorComment"]
