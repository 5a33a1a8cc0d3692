"""The archive (dicomaccel.archive): files + SQLite index on a real disk, real threads."""

from __future__ import annotations

import io
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

from dicomaccel.archive import Archive, FrameIndex, InstanceRecord, StoreFailure
from dicomaccel.archive import store as store_module
from dicomaccel.archive.index import Index
from dicomaccel.config import ConfigError
from dicomaccel.policy.rules import compile_rules
from dicomaccel.policy.store import StorePolicy
from dicomaccel.status import FailureReason, WarningReason
from dicomaccel.testing import files as dicomgen
from dicomaccel.testing.files import (
    base_dataset,
    complete_iod,
    compressed_file,
    ct_file,
    image_dataset,
    reencapsulated_file,
    to_bytes,
)
from helpers import assert_matches_pydicom

# The index matters here: tests using index_backend run on SQLite and on PostgreSQL
# (tests/conftest.py).
pytestmark = pytest.mark.indexes("sqlite", "postgresql")


@pytest.fixture
def archive(tmp_path, index_backend):
    a = Archive(tmp_path / "data", fsync=True, index=index_backend.url(tmp_path / "data"))
    yield a
    a.close()


def stored_files(root) -> list[str]:
    out = []
    for d, _, names in os.walk(os.path.join(root, "instances")):
        out += [os.path.join(d, n) for n in names]
    return sorted(out)


def tmp_files(root) -> list[str]:
    return sorted(os.listdir(os.path.join(root, "tmp")))


def expect_failure(archive, data, status, **kw) -> StoreFailure:
    before = stored_files(archive.root)
    with pytest.raises(StoreFailure) as err:
        archive.store_bytes(data, **kw)
    assert err.value.status == status, err.value.comment
    # Nothing published, nothing left behind.
    assert stored_files(archive.root) == before
    assert tmp_files(archive.root) == []
    return err.value


def test_a_failure_shared_by_a_batch_names_each_instance(tmp_path):
    """An index that fails a whole batch hands every store of it the same failure
    (postgres_index: one IndexUnavailable per batch): each store must report its own UIDs,
    not the first one's."""
    from dicomaccel.archive.index import IndexUnavailable

    with Archive(tmp_path / "a", fsync=False) as a:
        study, series = generate_uid(), generate_uid()
        datas = [dicomgen.ct_instance(study, series, n, 8, 8) for n in (1, 2)]
        incoming = [a.begin() for _ in datas]
        for inc, data in zip(incoming, datas):
            inc.write(data)
        shared = IndexUnavailable()
        named = [inc.named(shared) for inc in incoming]
        assert [f.sop_instance_uid for f in named] == [pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID for d in datas]
        assert all(type(f) is IndexUnavailable and f.status == shared.status and f.comment == shared.comment
                   for f in named)
        assert shared.sop_instance_uid is None
        for inc in incoming:
            inc.abort()


# --- layout, index rows, stored bytes ------------------------------------------------------
@pytest.mark.indexes("sqlite")  # the SQLite file and its flush after the commit
def test_layout_and_wal(archive):
    root = archive.root
    assert {"index.sqlite3", "instances", "tmp"} <= set(os.listdir(root))
    conn = sqlite3.connect(os.path.join(root, "index.sqlite3"))
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


@pytest.mark.indexes("sqlite")
def test_wal_checkpointed_off_the_committer(tmp_path, monkeypatch):
    """The committer's connection never checkpoints; the index's own thread copies the WAL
    into the database file every CHECKPOINT_EVERY commits."""
    from dicomaccel.archive import index as index_module

    monkeypatch.setattr(index_module, "CHECKPOINT_EVERY", 4)
    with Archive(tmp_path / "data", fsync=False) as a:
        db = os.path.join(a.root, "index.sqlite3")
        assert a.index._writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        empty = os.path.getsize(db)
        study, series = generate_uid(), generate_uid()
        for n in range(1, 9):  # 8 commits: two checkpoints due
            a.store_bytes(dicomgen.ct_instance(study, series, n, 8, 8))
        deadline = time.monotonic() + 10
        while os.path.getsize(db) == empty and time.monotonic() < deadline:
            time.sleep(0.02)  # the checkpoint runs on its own thread
        assert os.path.getsize(db) > empty


def test_store_ct_row_and_bytes(archive):
    data = ct_file()
    outcome = archive.store_bytes(data)
    rec = outcome.record
    assert not outcome.already_stored and outcome.warning is None
    h, fi, ds = assert_matches_pydicom(data)
    assert (rec.patient_id, rec.patient_name) == ("PID-1", "Müller^Jörg")
    assert (rec.study_uid, rec.series_uid, rec.sop_instance_uid, rec.sop_class_uid) == (
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID)
    assert rec.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert (rec.number_of_frames, rec.rows, rec.columns, rec.bits_allocated) == (1, 512, 512, 16)
    assert (rec.instance_number, rec.photometric_interpretation) == (7, "MONOCHROME2")
    assert (rec.size, rec.dataset_offset) == (len(data), h.dataset_offset)
    assert (rec.pixel_offset, rec.pixel_value_offset, rec.pixel_length) == (
        h.pixel_offset, h.pixel_value_offset, 512 * 512 * 2)
    assert rec.pixel_tag == 0x7FE00010 and rec.frame_index == fi
    # Stored as received, under instances/<study>/<series>/, named from validated UIDs only.
    assert os.path.isabs(rec.path)
    with open(rec.path, "rb") as f:
        assert f.read() == data
    rel = os.path.relpath(rec.path, archive.root).split(os.sep)
    assert rel[:3] == ["instances", rec.study_uid, rec.series_uid]
    assert rel[3].startswith(rec.sop_instance_uid + ".") and rel[3].endswith(".dcm")
    assert archive.get(rec.sop_instance_uid) == rec
    assert archive.get("1.2.3.4") is None
    assert tmp_files(archive.root) == []


def test_index_survives_reopen(tmp_path):
    data = compressed_file(RLELossless)
    with Archive(tmp_path / "a", fsync=False) as a:
        rec = a.store_bytes(data).record
    with Archive(tmp_path / "a") as b:
        again = b.get(rec.sop_instance_uid)
        assert again == rec and isinstance(again.frame_index, FrameIndex)


@pytest.mark.parametrize("make", [
    lambda: ct_file(frames=4, rows=16, columns=8),
    lambda: ct_file(frames=3, rows=5, columns=3, bits=1),
    lambda: ct_file(frames=2, rows=6, columns=5, samples=3, bits=8),
    lambda: compressed_file(RLELossless, frames=3),
    lambda: compressed_file(JPEG2000Lossless, frames=2),
    lambda: reencapsulated_file([b"ab" * 5, b"cd" * 7, b"ef" * 9], eot=True),
    lambda: reencapsulated_file([b"ab" * 5, b"cd" * 7], bot=True, fragments_per_frame=2),
], ids=["native", "1bit", "rgb", "rle", "j2k", "eot", "bot-fragments"])
def test_frame_index_reads_frames_from_the_stored_file(archive, make):
    data = make()
    rec = archive.store_bytes(data).record
    _, _, ds = assert_matches_pydicom(data)  # frame_ranges vs pydicom, on the input bytes
    fi = archive.get(rec.sop_instance_uid).frame_index
    assert fi.number_of_frames == rec.number_of_frames == int(ds.get("NumberOfFrames", 1))
    with open(rec.path, "rb") as f:
        stored = f.read()
    for k in range(fi.number_of_frames):
        got = b"".join(stored[a:b] for a, b in fi.frame_ranges(k))
        want = b"".join(data[a:b] for a, b in fi.frame_ranges(k))
        assert got == want and got
        if fi.encapsulated or fi.byte_aligned:
            assert fi.frame_ranges(k)[0][0] >= rec.pixel_value_offset


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_bigendian.dcm", "emri_small_RLE.dcm",
                                  "SC_rgb_rle_2frame.dcm", "image_dfl.dcm"])
def test_pydicom_files(archive, name):
    with open(get_testdata_file(name), "rb") as f:
        data = f.read()
    rec = archive.store_bytes(data).record
    h, fi, ds = assert_matches_pydicom(data)
    assert rec.frame_index == fi
    with open(rec.path, "rb") as f:
        assert f.read() == data


def test_instance_without_pixel_data(archive):
    ds = base_dataset("1.2.840.10008.5.1.4.1.1.88.11")  # Basic Text SR
    rec = archive.store_bytes(to_bytes(ds)).record
    assert (rec.number_of_frames, rec.pixel_tag, rec.frame_index) == (0, 0, None)
    assert (rec.pixel_offset, rec.pixel_value_offset, rec.pixel_length) == (-1, -1, -1)


def test_deflated_stored_without_frame_index(archive):
    data = to_bytes(image_dataset(rows=16, columns=16), DeflatedExplicitVRLittleEndian)
    rec = archive.store_bytes(data).record
    assert rec.frame_index is None and rec.pixel_tag == 0x7FE00010
    assert (rec.pixel_offset, rec.pixel_value_offset) == (-1, -1)


# --- find ------------------------------------------------------------------------------------
def test_find(archive):
    study_a, study_b, series_a1, series_a2 = (generate_uid() for _ in range(4))
    recs = {}
    for n, (study, series) in enumerate([(study_a, series_a1)] * 3 + [(study_a, series_a2),
                                                                      (study_b, generate_uid())]):
        ds = image_dataset(rows=2, columns=2, study=study, series=series)
        ds.InstanceNumber = 10 - n
        if n == 4:
            ds.PatientID = "OTHER"
        recs[n] = archive.store_bytes(to_bytes(ds)).record
    uids = lambda rs: [r.sop_instance_uid for r in rs]  # noqa: E731
    # Ordered by study, series, instance number (10, 9, 8 -> reversed insertion).
    expected_a1 = uids(sorted((recs[0], recs[1], recs[2]), key=lambda r: r.instance_number))
    assert uids(archive.find(series_uids=[series_a1])) == expected_a1
    assert len(archive.find()) == 5
    assert len(archive.find(study_uids=[study_a])) == 4
    assert len(archive.find(study_uids=[study_a, study_b])) == 5
    assert len(archive.find(patient_id="PID-1")) == 4
    assert uids(archive.find(patient_id="OTHER")) == [recs[4].sop_instance_uid]
    assert archive.find(patient_id="OTHER", study_uids=[study_a]) == []  # AND
    assert archive.find(study_uids=[]) == []
    picked = archive.find(study_uids=[study_a], sop_instance_uids=[recs[3].sop_instance_uid,
                                                                   recs[4].sop_instance_uid])
    assert uids(picked) == [recs[3].sop_instance_uid]
    many = [generate_uid() for _ in range(40000)] + [recs[0].sop_instance_uid]
    assert uids(archive.find(sop_instance_uids=many)) == [recs[0].sop_instance_uid]


def test_read_quickly_answers_a_short_read_and_gives_up_a_long_one(archive):
    """Index.read_quickly, what the event loop tries before a worker thread (C-FIND's first
    page, QIDO-RS): an embedded index answers a short read and abandons one of more than
    QUICK_READ_STEPS steps, leaving its connection without a limit; a database server is
    never read that way."""
    archive.store_bytes(to_bytes(image_dataset(rows=2, columns=2)))
    index = archive.index
    count = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) SELECT count(*) FROM c"
    short = lambda: index.read("SELECT count(*) FROM instances")  # noqa: E731
    if index.remote:
        assert index.read_quickly(short) is None
        return
    assert index.read_quickly(short) == [(1,)]
    assert index.read_quickly(lambda: index.read(count.format(n=10_000_000))) is None

    def swallowing():  # a reader that catches the interruption answers nothing either
        try:
            return index.read(count.format(n=10_000_000))
        except sqlite3.OperationalError:
            return []
    assert index.read_quickly(swallowing) is None
    # The same (this thread's) connection reads on past the budget outside read_quickly.
    assert index.read(count.format(n=30_000)) == [(30_000,)]
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        index.read_quickly(lambda: index.read("SELECT * FROM no_such_table"))


# --- failure reasons ---------------------------------------------------------------------------
def test_cannot_understand(archive):
    err = expect_failure(archive, b"\0" * 200, FailureReason.CANNOT_UNDERSTAND)
    assert "DICM" in err.comment
    data = ct_file(rows=4, columns=4)
    expect_failure(archive, data[:-10], FailureReason.CANNOT_UNDERSTAND)
    expect_failure(archive, b"", FailureReason.CANNOT_UNDERSTAND)


def test_transfer_syntax_not_supported(archive):
    data = ct_file(rows=4, columns=4).replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.9.9.9\0", 1)
    expect_failure(archive, data, FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED)


def patch_meta(data: bytes, old: str, new: str) -> bytes:
    """Replace a UID in the File Meta group only (same length keeps every offset valid)."""
    assert len(old) == len(new)
    end = assert_matches_pydicom(data)[0].dataset_offset
    assert old.encode() in data[:end]
    return data[:end].replace(old.encode(), new.encode(), 1) + data[end:]


def test_dataset_does_not_match_sop_class(archive):
    ds = image_dataset(rows=4, columns=4)
    data = patch_meta(to_bytes(ds), ds.SOPClassUID, ds.SOPClassUID[:-1] + "4")
    err = expect_failure(archive, data, FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS)
    assert "(0002,0002)" in err.comment and err.sop_instance_uid == ds.SOPInstanceUID
    uid = ds.SOPInstanceUID
    data = patch_meta(to_bytes(ds), uid, uid[:-1] + ("1" if uid[-1] != "1" else "2"))
    assert "(0002,0003)" in expect_failure(
        archive, data, FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS).comment
    # pydicom's rtplan.dcm is a real file whose (0002,0003) differs from (0008,0018).
    with open(get_testdata_file("rtplan.dcm"), "rb") as f:
        expect_failure(archive, f.read(), FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS)
    ds = image_dataset(rows=4, columns=4)
    data = to_bytes(ds)
    # Rename (0008,0016) to a private tag: the data set no longer has a SOP Class UID.
    sop_class_el = b"\x08\x00\x16\x00UI"
    assert data.count(sop_class_el) == 1
    err = expect_failure(archive, data.replace(sop_class_el, b"\x08\x00\x17\x00UI"),
                         FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS)
    assert "SOP Class UID (0008,0016) is missing" in err.comment
    assert err.sop_class_uid == ds.SOPClassUID  # taken from the File Meta
    del ds.SeriesInstanceUID
    expect_failure(archive, to_bytes(ds), FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_sop_class_policy(tmp_path):
    ct = "1.2.840.10008.5.1.4.1.1.2"
    data = ct_file(rows=4, columns=4)
    with Archive(tmp_path / "a", policy=StorePolicy(reject_sop_classes={ct})) as a:
        err = expect_failure(a, data, FailureReason.SOP_CLASS_NOT_SUPPORTED)
        assert err.sop_class_uid == ct
    with Archive(tmp_path / "b") as b:  # default: the Storage SOP Classes, and only those
        assert b.store_bytes(data).record.sop_class_uid == ct
        for not_storage in ("1.2.840.10008.1.1", "1.2.3.999.1", "CT"):  # Verification, invented, garbage
            ds = image_dataset(rows=4, columns=4)
            ds.SOPClassUID = not_storage
            err = expect_failure(b, to_bytes(ds), FailureReason.SOP_CLASS_NOT_SUPPORTED)
            assert err.sop_instance_uid == ds.SOPInstanceUID
    with Archive(tmp_path / "c", policy=StorePolicy(validation="off",
                                                    accept_sop_classes={"1.2.3.999.1"})) as c:
        ds = image_dataset(rows=4, columns=4)
        ds.SOPClassUID = "1.2.3.999.1"
        assert c.store_bytes(to_bytes(ds)).record.sop_class_uid == "1.2.3.999.1"


def test_same_instance_uid_with_another_sop_class_is_0119(archive):
    ds = image_dataset(rows=4, columns=4)
    archive.store_bytes(to_bytes(ds))
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    complete_iod(ds)
    err = expect_failure(archive, to_bytes(ds), FailureReason.CLASS_INSTANCE_CONFLICT)
    assert (err.sop_class_uid, err.sop_instance_uid) == (ds.SOPClassUID, ds.SOPInstanceUID)
    assert archive.get(ds.SOPInstanceUID).sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize("validation", ["warn", "reject", "off"])
def test_iod_validation_policy(tmp_path, validation):
    ds = image_dataset(rows=4, columns=4)
    del ds.ImageType  # Type 1, CT Image Module
    del ds.PatientSex  # Type 2, Patient Module
    with Archive(tmp_path, policy=StorePolicy(validation=validation)) as a:
        if validation == "reject":
            err = expect_failure(a, to_bytes(ds), FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS)
            assert [p.keyword for p in err.problems] == ["ImageType", "PatientSex"]
            assert a.get(ds.SOPInstanceUID) is None
            return
        outcome = a.store_bytes(to_bytes(ds))
        if validation == "off":
            assert outcome.warning is None and outcome.problems == ()
        else:
            assert outcome.warning == WarningReason.DATASET_DOES_NOT_MATCH_SOP_CLASS
            assert [(p.keyword, p.kind) for p in outcome.problems] == [("ImageType", "missing"),
                                                                       ("PatientSex", "missing")]
        assert a.get(ds.SOPInstanceUID) is not None


def test_a_complete_iod_is_stored_without_warning(archive):
    outcome = archive.store_bytes(ct_file(rows=4, columns=4))
    assert outcome.warning is None and outcome.problems == ()


def test_failure_after_the_header_names_the_instance(tmp_path):
    # A710 while receiving: the header had arrived, so the report says which instance failed.
    data = ct_file(rows=256, columns=256)
    sop = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID
    with Archive(tmp_path) as a:
        incoming = a.begin()
        incoming.write(data[:4096])
        a.min_free_bytes = 1 << 62  # no disk has this much free: the next check fails
        with pytest.raises(StoreFailure) as info:
            incoming.write(data[4096:] + bytes(2 << 20))  # past the next space check
        assert info.value.status == FailureReason.OUT_OF_STORAGE
        assert (info.value.sop_class_uid, info.value.sop_instance_uid) == ("1.2.840.10008.5.1.4.1.1.2", sop)


def test_study_uid_mismatch(archive):
    data = ct_file(rows=4, columns=4)
    err = expect_failure(archive, data, FailureReason.STUDY_UID_MISMATCH,
                         expected_study_uid="1.2.3")
    assert err.sop_instance_uid is not None
    study = archive.store_bytes(data).record.study_uid
    assert archive.store_bytes(data, expected_study_uid=study).already_stored


def test_out_of_storage(tmp_path):
    huge = 1 << 62
    with Archive(tmp_path / "a", min_free_bytes=huge) as a:
        assert not a.writable()
        expect_failure(a, ct_file(rows=4, columns=4), FailureReason.OUT_OF_STORAGE)
        with pytest.raises(StoreFailure) as err:
            a.begin()
        assert err.value.status == FailureReason.OUT_OF_STORAGE
    # Free space runs out while receiving: the temp file is removed at once.
    with Archive(tmp_path / "b", min_free_bytes=0) as b:
        assert b.writable()
        incoming = b.begin()
        incoming.write(b"\0" * 1000)
        assert len(tmp_files(b.root)) == 1
        b.min_free_bytes = huge
        with pytest.raises(StoreFailure) as err:
            incoming.write(bytearray(2 << 20))
        assert err.value.status == FailureReason.OUT_OF_STORAGE
        assert tmp_files(b.root) == [] and stored_files(b.root) == []
        with pytest.raises(RuntimeError):
            incoming.commit()


def test_processing_failure_on_io_error(archive):
    ds = image_dataset(rows=4, columns=4)
    # A plain file where the study directory must go: publishing fails with an OSError.
    os.makedirs(os.path.join(archive.root, "instances"), exist_ok=True)
    with open(os.path.join(archive.root, "instances", ds.StudyInstanceUID), "w") as f:
        f.write("in the way")
    err = expect_failure(archive, to_bytes(ds), FailureReason.PROCESSING_FAILURE)
    assert archive.get(ds.SOPInstanceUID) is None
    assert "in the way" not in err.comment and archive.root not in err.comment


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length")
@pytest.mark.parametrize("field,value", [
    ("SOPInstanceUID", "../../../../etc/passwd"),
    ("SOPInstanceUID", "1.2/../../x"),
    ("StudyInstanceUID", ".."),
    ("SeriesInstanceUID", "1.2.3\\..\\x"),
    ("SOPInstanceUID", "1." + "2" * 70),
])
def test_path_traversal_uids_rejected(archive, field, value):
    ds = image_dataset(rows=4, columns=4)
    setattr(ds, field, value)
    err = expect_failure(archive, to_bytes(ds), FailureReason.CANNOT_UNDERSTAND)
    assert "not a valid UID" in err.comment
    assert not os.path.exists(os.path.join(archive.root, "..", "x"))


# --- duplicates, overwrite, concurrency ----------------------------------------------------------
def test_idempotent_and_duplicate(archive):
    ds = image_dataset(rows=8, columns=8)
    data = to_bytes(ds)
    first = archive.store_bytes(data)
    again = archive.store_bytes(data)
    assert again.already_stored and again.record == first.record
    ds.PatientID = "CHANGED"
    err = expect_failure(archive, to_bytes(ds), FailureReason.DUPLICATE_SOP_INSTANCE)
    assert err.sop_instance_uid == ds.SOPInstanceUID
    assert archive.get(ds.SOPInstanceUID).patient_id == "PID-1"
    assert stored_files(archive.root) == [first.record.path]


def test_overwrite_policy(tmp_path):
    with Archive(tmp_path / "a", overwrite=True) as a:
        ds = image_dataset(rows=8, columns=8)
        old = a.store_bytes(to_bytes(ds)).record
        ds.PatientID = "NEW"
        ds.SeriesInstanceUID = generate_uid()  # moves to another directory too
        new_data = to_bytes(ds)
        out = a.store_bytes(new_data)
        assert not out.already_stored and out.record.patient_id == "NEW"
        assert a.get(ds.SOPInstanceUID) == out.record
        assert stored_files(a.root) == [out.record.path] and out.record.path != old.path
        assert tmp_files(a.root) == []
        with open(out.record.path, "rb") as f:
            assert f.read() == new_data


def test_index_rows_and_records_round_trip(archive):
    """record_of fills an InstanceRecord field by field from the row (past the dataclass's
    __init__): every field must have its column, and a record must survive the trip."""
    from dataclasses import fields

    from dicomaccel.archive.index import _FIELDS, record_of, row_of

    assert sorted(_FIELDS) == sorted(f.name for f in fields(InstanceRecord))
    for data in (dicomgen.ct_instance(generate_uid(), generate_uid(), 7, 16, 16),
                 compressed_file(RLELossless, frames=3)):
        stored = archive.store_bytes(data).record
        assert stored.frame_index is not None
        # The archive makes its records past __init__ too (ingest.filled): every field its own.
        assert set(vars(stored)) == {f.name for f in fields(InstanceRecord)}
        again = record_of(row_of(stored, archive.root), archive.root)
        assert again == stored and hash(again) == hash(stored)
        assert archive.get(stored.sop_instance_uid) == stored


def test_lazy_find_reads_a_page_at_a_time(archive):
    """A C-GET's match reads two columns per row; the records come a page at a time as they
    are reached, and a row gone meanwhile reads as Vanished (a failed sub-operation)."""
    from dicomaccel.archive.index import RecordList, Vanished

    study, series = generate_uid(), generate_uid()
    stored = [archive.store_bytes(dicomgen.ct_instance(study, series, n, 8, 8)).record for n in range(1, 11)]
    records = archive.find(study_uids=[study], lazy=True)
    assert records.uids == [r.sop_instance_uid for r in stored] and not records.has_alternates
    assert not any(records.loaded(i) for i in range(len(records)))
    assert records[0] == stored[0]
    assert [records.loaded(i) for i in range(len(records))] == [i < RecordList.FIRST_PAGE for i in range(10)]
    gone = stored[RecordList.FIRST_PAGE + 2].sop_instance_uid
    archive.index.drop_unconfirmed([gone])
    assert list(records) == [Vanished(gone) if r.sop_instance_uid == gone else r for r in stored]
    assert records[-3:] == stored[-3:] and all(records.loaded(i) for i in range(len(records)))


@pytest.mark.indexes("sqlite")
def test_an_index_that_contradicts_itself_fails_the_store(tmp_path, monkeypatch):
    """An index that refuses a row as a duplicate but, asked, holds no such UID (seen with an
    archive directory deleted and made again under a running server) fails the store with
    0110 after a few tries: the committer used to send it back to the queue for ever, one
    core at 100%."""
    from dicomaccel.archive.commit import MAX_REFUSALS
    from dicomaccel.archive.index import DuplicateRow

    with Archive(tmp_path / "data", fsync=True) as a:
        calls = []

        def refusing(records, replace_existing):
            calls.append(len(records))
            return [DuplicateRow() for _ in records]

        monkeypatch.setattr(a.index, "put_batch", refusing)
        with ThreadPoolExecutor(1) as pool:
            store = pool.submit(expect_failure, a, to_bytes(image_dataset(rows=8, columns=8)),
                                FailureReason.PROCESSING_FAILURE)
            failure = store.result(timeout=120)  # never answered before: the test hung here
        assert "holds no instance" in failure.comment
        assert len(calls) == MAX_REFUSALS + 1
        monkeypatch.undo()
        assert stored_files(a.root) == []
        ok = a.store_bytes(dicomgen.ct_instance(generate_uid(), generate_uid(), 1, 8, 8))
        assert stored_files(a.root) == [ok.record.path]


@pytest.mark.parametrize("identical", [True, False], ids=["identical", "different"])
def test_concurrent_stores_of_one_uid(archive, identical):
    ds = image_dataset(rows=64, columns=64)
    payloads = []
    for n in range(8):
        if not identical:
            ds.PatientID = f"P{n}"
        payloads.append(to_bytes(ds))
    barrier = threading.Barrier(len(payloads))

    def store(data):
        incoming = archive.begin()
        for pos in range(0, len(data), 4096):
            incoming.write(memoryview(data)[pos:pos + 4096])
        barrier.wait()
        try:
            return incoming.commit()
        except StoreFailure as exc:
            return exc

    with ThreadPoolExecutor(len(payloads)) as pool:
        results = list(pool.map(store, payloads))
    won = [r for r in results if not isinstance(r, StoreFailure) and not r.already_stored]
    assert len(won) == 1
    rest = [r for r in results if r is not won[0]]
    if identical:
        assert all(r.already_stored and r.record == won[0].record for r in rest)
    else:
        assert all(r.status == FailureReason.DUPLICATE_SOP_INSTANCE for r in rest)
    assert stored_files(archive.root) == [won[0].record.path]
    assert tmp_files(archive.root) == []
    with open(won[0].record.path, "rb") as f:
        assert f.read() == payloads[results.index(won[0])]


def test_concurrent_stores_of_many_uids(archive):
    payloads = [ct_file(rows=32, columns=32, seed=n) for n in range(24)]

    def store(data):
        incoming = archive.begin()
        incoming.write(data)
        return incoming.commit().record

    with ThreadPoolExecutor(6) as pool:
        records = list(pool.map(store, payloads))
        # Readers in other threads while writes go on.
        found = list(pool.map(lambda r: archive.get(r.sop_instance_uid), records))
    assert found == records
    assert len(archive.find()) == 24


def test_streamed_write_and_abort(archive):
    data = compressed_file(RLELossless)
    incoming = archive.begin()
    for pos in range(0, len(data), 1000):
        incoming.write(bytearray(data[pos:pos + 1000]))
    assert incoming.bytes_written == len(data)
    rec = incoming.commit().record
    with open(rec.path, "rb") as f:
        assert f.read() == data
    with pytest.raises(RuntimeError):
        incoming.write(b"more")
    aborted = archive.begin()
    aborted.write(b"partial")
    aborted.abort()
    aborted.abort()
    assert tmp_files(archive.root) == []


# --- crash recovery ----------------------------------------------------------------------------
def test_start_up_cleans_leftovers(tmp_path):
    root = tmp_path / "data"
    kept_data, lost_data, replaced_data = (ct_file(rows=4, columns=4, seed=n) for n in range(3))
    a = Archive(root)
    kept = a.store_bytes(kept_data).record
    replaced = a.store_bytes(replaced_data).record
    a.close()

    files = store_module.LocalFileStore(str(root))
    # 1. A temp file still being received when the process died.
    fd, part = files.create_temp()
    os.write(fd, lost_data[:100])
    os.close(fd)
    # 2. Crash after the file was linked into place but before the index commit.
    fd, temp = files.create_temp()
    os.write(fd, lost_data)
    os.close(fd)
    h_lost = assert_matches_pydicom(lost_data)[0]
    orphan = files.publish(temp, h_lost.study_uid, h_lost.series_uid, h_lost.sop_instance_uid)
    # 3. Crash after an overwrite's index commit, before the old file was removed: the
    #    obsolete marker names a file no row points to any more.
    obsolete_copy = os.path.join(os.path.dirname(replaced.path), "1.2.3.0123456789abcdef.dcm")
    os.link(replaced.path, obsolete_copy)
    stale_marker = files.retire(obsolete_copy)
    # 4. Crash before an overwrite's commit: the marker names a file the index still uses.
    live_marker = files.retire(kept.path)
    # 5. A file we know nothing about (no marker): not ours to delete.
    foreign = os.path.join(root, "instances", "foreign.dcm")
    with open(foreign, "wb") as f:
        f.write(b"x")
    assert len(tmp_files(root)) == 4

    b = Archive(root)
    try:
        assert tmp_files(root) == []
        assert not os.path.exists(part) and not os.path.exists(orphan.path)
        assert not os.path.exists(obsolete_copy)
        assert os.path.exists(kept.path) and os.path.exists(replaced.path)
        assert os.path.exists(foreign)
        assert not os.path.exists(stale_marker) and not os.path.exists(live_marker)
        assert b.get(h_lost.sop_instance_uid) is None
        assert b.get(kept.sop_instance_uid) == kept
        # The interrupted instance can be stored again.
        assert not b.store_bytes(lost_data).already_stored
    finally:
        b.close()


def test_no_index_row_without_its_complete_file(archive):
    records = [archive.store_bytes(ct_file(rows=8, columns=8, seed=n)).record for n in range(5)]
    for rec in archive.find():
        assert os.path.getsize(rec.path) == rec.size
    assert {r.sop_instance_uid for r in records} == {r.sop_instance_uid for r in archive.find()}
    assert isinstance(records[0], InstanceRecord)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.1", DeflatedExplicitVRLittleEndian])
def test_alternate_representation_is_indexed(archive, syntax):
    import io

    import pydicom
    from pydicom.dataset import Dataset

    plain = pydicom.dcmread(io.BytesIO(dicomgen.ct_instance(generate_uid(), generate_uid(), 1, 8, 8)))
    other = Dataset()
    other.ReferencedSOPClassUID = plain.SOPClassUID
    other.ReferencedSOPInstanceUID = generate_uid()
    with_alt = pydicom.dcmread(io.BytesIO(dicomgen.ct_instance(generate_uid(), generate_uid(), 2, 8, 8)))
    with_alt.AlternateRepresentationSequence = [other]
    assert not archive.store_bytes(dicomgen.to_bytes(plain, syntax)).record.has_alternates
    record = archive.store_bytes(dicomgen.to_bytes(with_alt, syntax)).record
    assert record.has_alternates
    assert archive.get(record.sop_instance_uid).has_alternates


# A process that stores instances and dies without closing the archive: its last batch was
# flushed, but no later batch confirmed it, exactly as if power had failed during that flush.
_DIE_AFTER_STORING = """
import os, sys
from dicomaccel.archive import Archive
archive = Archive(sys.argv[1])
for name in sys.argv[2:]:
    with open(name, "rb") as f:
        record = archive.store_bytes(f.read()).record
    print(record.sop_instance_uid, record.path, flush=True)
os._exit(0)
"""


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "missing"])
def test_start_up_checks_the_rows_of_an_unconfirmed_batch(tmp_path, damage):
    import subprocess
    import sys

    root = tmp_path / "data"
    payloads = [ct_file(rows=16, columns=16, seed=n) for n in range(3)]
    names = []
    for n, data in enumerate(payloads):
        names.append(str(tmp_path / f"{n}.dcm"))
        with open(names[-1], "wb") as f:
            f.write(data)
    out = subprocess.run([sys.executable, "-c", _DIE_AFTER_STORING, str(root), *names],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    stored = [line.split(" ", 1) for line in out.splitlines()]
    assert len(stored) == 3
    with sqlite3.connect(root / "index.sqlite3") as db:
        unconfirmed = [r[0] for r in db.execute("SELECT sop_instance_uid FROM unconfirmed")]
    assert unconfirmed == [stored[-1][0]]  # earlier batches were confirmed by later ones

    # What a power loss during the last flush may leave: the row reached the disk, the
    # file's bytes did not (all of them, or some).
    (sop, path), (kept_sop, kept_path) = stored[-1], stored[0]
    if damage == "truncated":
        os.truncate(path, os.path.getsize(path) // 2)
    elif damage == "flipped byte":
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) - 1)
            last = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([last[0] ^ 0xFF]))
    else:
        os.unlink(path)

    with Archive(root) as a:
        assert a.get(sop) is None  # never acknowledged, never half-indexed
        assert not os.path.exists(path)
        assert a.get(kept_sop) is not None and os.path.exists(kept_path)
        assert len(a.find()) == 2 and tmp_files(a.root) == []
        assert not a.store_bytes(payloads[-1]).already_stored  # it can be sent again
    with sqlite3.connect(root / "index.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM unconfirmed").fetchone()[0] == 0


def test_start_up_keeps_intact_rows_of_an_unconfirmed_batch(tmp_path):
    import subprocess
    import sys

    root = tmp_path / "data"
    name = str(tmp_path / "one.dcm")
    with open(name, "wb") as f:
        f.write(ct_file(rows=16, columns=16, seed=9))
    out = subprocess.run([sys.executable, "-c", _DIE_AFTER_STORING, str(root), name],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    sop, path = out.split()
    with Archive(root) as a:
        assert a.get(sop).crc32 is not None and os.path.exists(path)


def _unconfirmed(root) -> set[str]:
    with sqlite3.connect(os.path.join(root, "index.sqlite3")) as db:
        return {r[0] for r in db.execute("SELECT sop_instance_uid FROM unconfirmed")}


@pytest.mark.indexes("sqlite")  # the SQLite file and its flush after the commit
def test_a_failed_flush_acknowledges_nothing_and_confirms_nothing(archive):
    """The batch's rows are committed when its flush fails: the store is answered with a
    failure, the row keeps naming the whole file, and it stays unconfirmed (checked at
    start-up) until a later flush succeeds."""
    first, second, third = (ct_file(rows=8, columns=8, seed=n) for n in range(3))
    real_flush = archive.files.flush

    def failing_flush():
        raise OSError(5, "Input/output error")

    archive.files.flush = failing_flush
    with pytest.raises(StoreFailure) as err:
        archive.store_bytes(first)
    archive.files.flush = real_flush
    assert err.value.status == FailureReason.PROCESSING_FAILURE
    sop = assert_matches_pydicom(first)[0].sop_instance_uid
    record = archive.get(sop)
    with open(record.path, "rb") as f:
        assert f.read() == first
    assert tmp_files(archive.root) == []
    assert sop in _unconfirmed(archive.root)
    second_sop = archive.store_bytes(second).record.sop_instance_uid
    assert {sop, second_sop} <= _unconfirmed(archive.root)  # nothing confirmed by a failed flush
    archive.store_bytes(third)
    assert sop not in _unconfirmed(archive.root)  # a successful flush covered both
    assert archive.store_bytes(first).already_stored  # the client sends again


@pytest.mark.indexes("sqlite")
def test_a_flush_confirms_only_the_batches_committed_before_it_started(archive, monkeypatch):
    """With several committer threads, a batch can commit while another batch's flush runs:
    that flush says nothing of it, so it stays unconfirmed until a flush that started after
    its commit completes."""
    index = archive.index
    report = index.flushed
    monkeypatch.setattr(index, "flushed", lambda mark: None)  # the flushes are reported below
    early = {archive.store_bytes(ct_file(rows=8, columns=8, seed=40 + n)).record.sop_instance_uid
             for n in range(2)}
    assert early <= _unconfirmed(archive.root)  # no flush reported yet
    mark = index.committed()  # a flush starts here ...
    late = archive.store_bytes(ct_file(rows=8, columns=8, seed=42)).record.sop_instance_uid
    report(mark)  # ... and completes: the late batch may not be in it
    report(mark - 1)  # an older flush completing afterwards takes nothing back
    last = archive.store_bytes(ct_file(rows=8, columns=8, seed=43)).record.sop_instance_uid
    assert _unconfirmed(archive.root) == {late, last}  # the last transaction confirmed the rest
    report(index.committed())
    index.confirm()
    assert _unconfirmed(archive.root) == set()


def test_a_batch_does_not_wait_for_the_flush_of_another(archive, monkeypatch):
    """Two committer threads: while the first store's flush hangs, a second store is
    published, indexed, flushed and answered; the first is answered once its own flush
    returns."""
    from dicomaccel.archive import commit

    assert commit.COMMIT_THREADS >= 2
    first_flush, release = threading.Event(), threading.Event()
    real_flush = archive.files.flush
    calls = []

    def flush():
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            first_flush.set()
            assert release.wait(30)
        real_flush()

    monkeypatch.setattr(archive.files, "flush", flush)
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(archive.store_bytes, ct_file(rows=8, columns=8, seed=50))
        assert first_flush.wait(30)
        quick = archive.store_bytes(ct_file(rows=8, columns=8, seed=51))
        assert not slow.done()
        release.set()
        assert slow.result(30).record.sop_instance_uid != quick.record.sop_instance_uid
    assert len(calls) == 2 and len(archive.find()) == 2


def test_flushes_at_once_use_descriptors_of_their_own(tmp_path, monkeypatch):
    """A write-back error is reported once per open file: two flushes running at once (two
    committer threads) must not share the descriptor syncfs(2) reports through, or one of
    them could miss the error. After closing, a flush fails instead of waiting."""
    files = store_module.LocalFileStore(str(tmp_path), fsync=True)
    both, seen = threading.Barrier(2), []

    def syncfs(fd):
        seen.append(fd)
        both.wait(10)  # both flushes are in syncfs at once
        return 0

    monkeypatch.setattr(store_module, "_syncfs", syncfs)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: files.flush(), range(2)))
    assert len(seen) == 2 and len(set(seen)) == 2 and -1 not in seen
    files.close()
    monkeypatch.undo()
    with pytest.raises(OSError):
        files.flush()


def test_a_flush_running_when_the_store_closes_closes_its_descriptor(tmp_path, monkeypatch):
    """Closing the store while a flush runs (a Storage Commitment check at shutdown): the
    descriptor that flush holds is closed when it returns, not put back into a closed pool."""
    files = store_module.LocalFileStore(str(tmp_path), fsync=True)
    inside, release, held = threading.Event(), threading.Event(), []

    def syncfs(fd):
        held.append(fd)
        inside.set()
        release.wait(10)
        return 0

    monkeypatch.setattr(store_module, "_syncfs", syncfs)
    with ThreadPoolExecutor(1) as pool:
        flush = pool.submit(files.flush)
        assert inside.wait(10)
        files.close()
        os.fstat(held[0])  # still open: the flush is using it
        release.set()
        flush.result(10)
    with pytest.raises(OSError):
        os.fstat(held[0])
    monkeypatch.undo()
    with pytest.raises(OSError):
        files.flush()


@pytest.mark.indexes("sqlite")  # the flush comes after the commit
def test_already_stored_is_answered_after_a_flush(archive, monkeypatch):
    """The same bytes again are answered "already stored" only after a flush that started once
    the stored row was found (it may belong to another worker's batch still flushing); when
    that flush fails, the store fails."""
    data = ct_file(rows=8, columns=8, seed=60)
    first = archive.store_bytes(data)
    flushes = []
    real_flush = archive.files.flush
    monkeypatch.setattr(archive.files, "flush", lambda: (flushes.append(1), real_flush()))
    again = archive.store_bytes(data)
    assert again.already_stored and again.record == first.record and flushes == [1]

    def failing_flush():
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(archive.files, "flush", failing_flush)
    with pytest.raises(StoreFailure) as err:
        archive.store_bytes(data)
    assert err.value.status == FailureReason.PROCESSING_FAILURE
    assert err.value.sop_instance_uid == first.record.sop_instance_uid

    def broken_flush():  # not an I/O error: the committer's own failure path
        raise RuntimeError("unexpected")

    monkeypatch.setattr(archive.files, "flush", broken_flush)
    with pytest.raises(StoreFailure) as err:
        archive.store_bytes(data)
    assert err.value.status == FailureReason.PROCESSING_FAILURE


def test_one_failing_store_in_a_batch_leaves_the_others_stored(archive):
    """An unexpected error deciding one store of a batch fails that store alone: the others
    are indexed and nothing of the failed one is left published."""
    from dicomaccel.archive.commit import PreparedInstance
    from dicomaccel.archive.ingest import build_frame_index, scan
    import mmap
    import zlib

    prepared, maps = [], []
    for n in range(2):
        data = ct_file(rows=8, columns=8, seed=10 + n)
        fd, path = archive.files.create_temp()
        os.write(fd, data)
        mm = mmap.mmap(fd, len(data), access=mmap.ACCESS_READ)
        os.close(fd)
        header = scan(mm, len(data))
        prepared.append(PreparedInstance(path, len(data), zlib.crc32(data), header,
                                         build_frame_index(mm, header), mm))
        maps.append(mm)
    bad = prepared[1].header.sop_instance_uid
    real_lookup = archive.index.lookup

    def lookup(sop):
        if sop == bad:
            raise sqlite3.OperationalError("disk I/O error")
        return real_lookup(sop)

    archive.index.lookup = lookup
    # An index that inserts first asks only about a store it refused before: say this one was.
    prepared[1].refused = True
    # The batch's question one UID at a time (what every index answers), so the error meets it.
    archive.index.lookup_many = lambda uids: Index.lookup_many(archive.index, uids)
    archive._committer._commit(prepared)
    archive.index.lookup = real_lookup
    del archive.index.lookup_many
    assert archive.get(prepared[0].header.sop_instance_uid) is not None
    assert isinstance(prepared[1].result, sqlite3.OperationalError)
    assert archive.get(bad) is None
    assert len(stored_files(archive.root)) == 1
    assert tmp_files(archive.root) == [os.path.basename(prepared[1].temp_path)]  # the caller's to remove
    for mm in maps:
        mm.close()


def test_each_store_flushes_and_old_flush_counters_go(tmp_path):
    """A store is answered after a flush of its own batch (no process waits on another's);
    the flush counters an earlier version kept beside the index are removed at start-up."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "flush.seq").write_bytes(bytes(16))
    with Archive(root) as a:
        assert not (root / "flush.seq").exists()
        calls = []
        real = a.files._syncfs
        a.files._syncfs = lambda: (calls.append(1), real())
        a.store_bytes(ct_file(rows=4, columns=4, seed=77))
        assert calls == [1]
    with Archive(root, fsync=False) as a:
        a.files._syncfs = lambda: pytest.fail("flushed with fsync off")
        a.store_bytes(ct_file(rows=4, columns=4, seed=78))


def _rules(coerce=(), discard=()) -> StorePolicy:
    c, d = compile_rules(tuple(coerce), tuple(discard))
    return StorePolicy(coerce=c, discard=d)


def test_coercion_rewrites_the_header_and_records_the_previous_values(tmp_path):
    ds = image_dataset(rows=8, columns=8)
    ds.InstitutionName = "Old Name"
    data = to_bytes(ds)
    policy = _rules(coerce=[{"tag": "InstitutionName", "value": "General Hospital"},
                            {"tag": "(0010,0021)", "value": "HOSP-{PatientID}"},
                            {"tag": "PatientName", "value": "Never^Used", "only_if_empty": True}])
    with Archive(tmp_path, policy=policy) as a:
        outcome = a.store_bytes(data)
        assert outcome.warning == WarningReason.COERCION_OF_DATA_ELEMENTS
        assert [(c.keyword, c.action) for c in outcome.changes] == [
            ("InstitutionName", "coerced"), ("IssuerOfPatientID", "coerced")]
        stored = pydicom.dcmread(outcome.record.path)
        assert stored.InstitutionName == "General Hospital"
        assert stored.IssuerOfPatientID == f"HOSP-{ds.PatientID}"
        assert stored.PatientName == ds.PatientName  # the condition kept it
        (item,) = stored.OriginalAttributesSequence
        assert item.ReasonForTheAttributeModification == "COERCE"
        assert item.ModifyingSystem == "DICOMACCEL" and item.AttributeModificationDateTime
        previous = item.ModifiedAttributesSequence[0]
        assert previous.InstitutionName == "Old Name"
        assert "IssuerOfPatientID" in previous and not previous.IssuerOfPatientID  # was absent
        # Pixel Data untouched, the frame index built on the new file.
        assert stored.PixelData == ds.PixelData
        assert outcome.record.size == os.path.getsize(outcome.record.path)
        # Sending the same instance again is idempotent, though the rewrite stamped the time.
        again = a.store_bytes(data)
        assert again.already_stored and again.warning == WarningReason.COERCION_OF_DATA_ELEMENTS
        assert tmp_files(a.root) == []


def test_discard_rules_remove_private_blocks_tags_and_group_lengths(tmp_path):
    ds = image_dataset(rows=8, columns=8)
    ds.add_new(0x00090010, "LO", "ACME 1.1")
    ds.add_new(0x00091001, "LO", "secret")
    ds.add_new(0x00090011, "LO", "OTHER")
    ds.add_new(0x00091101, "LO", "kept")
    ds.OperatorsName = "Someone"
    data = to_bytes(ds)
    # A retired group length (PS3.5 7.2), which pydicom does not write: put it in by hand.
    at = data.index(b"\x18\x00\x50\x00DS")  # (0018,0050), the first element of group 0018
    data = data[:at] + b"\x18\x00\x00\x00UL\x04\x00" + bytes(4) + data[at:]
    policy = _rules(discard=[{"private_creator": "ACME 1.1"}, {"tag": "OperatorsName"},
                             {"group_length": True}])
    with Archive(tmp_path, policy=policy) as a:
        outcome = a.store_bytes(data)
        assert outcome.warning == WarningReason.ELEMENTS_DISCARDED
        assert {c.tag for c in outcome.changes} == {0x00090010, 0x00091001, 0x00081070, 0x00180000}
        stored = pydicom.dcmread(outcome.record.path)
        for tag in (0x00090010, 0x00091001, 0x00081070, 0x00180000):
            assert tag not in stored
        assert stored[0x00091101].value == "kept" and stored[0x00090011].value == "OTHER"
        previous = stored.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
        assert previous[0x00091001].value == "secret" and previous[0x00090010].value == "ACME 1.1"
        assert previous.OperatorsName == "Someone"


def test_rules_in_a_deflated_instance(tmp_path):
    ds = image_dataset(rows=8, columns=8)
    data = to_bytes(ds, DeflatedExplicitVRLittleEndian)
    with Archive(tmp_path, policy=_rules(coerce=[{"tag": "InstitutionName", "value": "X"}])) as a:
        outcome = a.store_bytes(data)
        stored = pydicom.dcmread(outcome.record.path)
        assert stored.InstitutionName == "X" and stored.PixelData == ds.PixelData
        assert stored.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian


@pytest.mark.parametrize(("coerce", "discard", "message"), [
    ([{"tag": "NoSuchKeyword", "value": "x"}], [], "keyword"),
    ([{"tag": "SOPInstanceUID", "value": "1.2"}], [], "cannot be coerced"),
    ([{"tag": "InstitutionName"}], [], "needs tag and value"),
    ([{"tag": "Rows", "value": "4"}], [], "not a text attribute"),
    ([{"tag": "(0009,1001)", "value": "x"}], [], "not a text attribute"),
    ([], [{"tag": "StudyInstanceUID"}], "cannot be discarded"),
    ([], [{"tag": "(0009,0010)", "private_creator": "X"}], "exactly one"),
])
def test_bad_rules_are_refused_with_the_reason(coerce, discard, message):
    with pytest.raises(ConfigError, match=message):
        compile_rules(tuple(coerce), tuple(discard))


# --- studies and series tables (index schema 6) ------------------------------------------------
def _entities(where) -> tuple[dict, dict]:
    """The series rows ``{series: (study, count)}`` and study rows ``{study: patient name}``
    of an index (an open Archive's, on either backend, or the SQLite file under a root),
    after checking them against the instance rows they summarise."""
    if isinstance(where, Archive):
        read = where.index.read
    else:
        def read(sql):
            with sqlite3.connect(os.path.join(where, "index.sqlite3")) as db:
                return db.execute(sql).fetchall()
    series = {s: (st, n) for s, st, n in read("SELECT series_uid, study_uid, n_instances FROM series")}
    studies = dict(read("SELECT study_uid, patient_name FROM studies"))
    counted = {s: (st, n) for s, st, n in read(
        "SELECT series_uid, study_uid, count(*) FROM instances GROUP BY series_uid, study_uid")}
    study_uids = {st for (st,) in read("SELECT DISTINCT study_uid FROM instances")}
    assert series == counted and set(studies) == study_uids
    return series, studies


def _study_search(archive, **keys) -> list[dict]:
    from dicomaccel.query import BY_KEYWORD, Query, condition, search

    conditions = tuple(condition(BY_KEYWORD[k], [v]) for k, v in keys.items())
    returns = tuple(BY_KEYWORD[k].tag for k in (
        "StudyInstanceUID", "PatientName", "PatientID", "StudyDescription", "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"))
    found = search(archive.index, Query("STUDY", conditions, returns)).matches
    return [{BY_KEYWORD[k].keyword: m[BY_KEYWORD[k].tag] for k in (
        "StudyInstanceUID", "PatientName", "PatientID", "StudyDescription", "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")} for m in found]


def _ct(study, series, number, **attrs) -> bytes:
    return dicomgen.retag(dicomgen.ct_instance(study, series, number, 8, 8), **attrs)


def test_counts_after_several_batches(archive):
    """Batches of one and of many instances, several studies and series in one batch: each
    series row counts its instances, each study's counts add up (PS3.4 C.6.1.1.4-5)."""
    s1, s2, a, b, c = (generate_uid() for _ in range(5))
    archive.store_bytes(_ct(s1, a, 1, Modality="CT"))
    archive.store_bytes(_ct(s1, a, 2, Modality="CT"))
    # Concurrent stores become batches of several instances (of both studies).
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(archive.store_bytes, [_ct(s1, a, n, Modality="CT") for n in range(3, 9)]
                      + [_ct(s1, b, n, Modality="MR") for n in range(1, 4)]
                      + [_ct(s2, c, n, PatientName="Other^Pat", PatientID="P2") for n in range(1, 6)]))
    series, studies = _entities(archive)
    assert series == {a: (s1, 8), b: (s1, 3), c: (s2, 5)} and set(studies) == {s1, s2}
    one = _study_search(archive, StudyInstanceUID=s1)
    assert one == [{"StudyInstanceUID": s1, "PatientName": "Test^Patient", "PatientID": "PID-0001",
                    "StudyDescription": None, "ModalitiesInStudy": ["CT", "MR"],
                    "NumberOfStudyRelatedSeries": 2, "NumberOfStudyRelatedInstances": 11}]
    assert [m["StudyInstanceUID"] for m in _study_search(archive, PatientName="other*")] == [s2]
    assert len(archive.find(series_uids=[b])) == 3 and len(archive.find(patient_id="P2")) == 5


def test_study_attributes_after_overwrite(tmp_path):
    """An overwrite with changed study attributes changes the study's row (the last write
    wins); one that moves the instance to another series and study takes it off the old
    ones, which go when their last instance does."""
    with Archive(tmp_path / "a", overwrite=True) as a:
        study, series = generate_uid(), generate_uid()
        first = _ct(study, series, 1, PatientName="First^Name", StudyDescription="Before")
        a.store_bytes(first)
        second = _ct(study, series, 2, PatientName="First^Name", StudyDescription="Before")
        a.store_bytes(second)
        changed = dicomgen.retag(second, PatientName="Second^Name", StudyDescription="After")
        assert not a.store_bytes(changed).already_stored
        found = _study_search(a, StudyInstanceUID=study)
        assert found[0]["PatientName"] == "Second^Name" and found[0]["StudyDescription"] == "After"
        assert found[0]["NumberOfStudyRelatedInstances"] == 2
        assert _study_search(a, PatientName="first*") == []
        assert [m["StudyInstanceUID"] for m in _study_search(a, PatientName="second*")] == [study]
        # Move the first instance to a new study and series: the old series keeps one.
        new_study, new_series = generate_uid(), generate_uid()
        a.store_bytes(dicomgen.retag(first, StudyInstanceUID=new_study, SeriesInstanceUID=new_series))
        series_rows, studies = _entities(a.root)
        assert series_rows == {series: (study, 1), new_series: (new_study, 1)}
        # ... then the second too: the old series and study are gone.
        a.store_bytes(dicomgen.retag(changed, StudyInstanceUID=new_study, SeriesInstanceUID=new_series))
        series_rows, studies = _entities(a.root)
        assert series_rows == {new_series: (new_study, 2)} and set(studies) == {new_study}
        assert [m["NumberOfStudyRelatedInstances"] for m in _study_search(a)] == [2]
        # A series that changes study (same Series Instance UID): the study it left goes.
        third_study = generate_uid()
        for data in (first, changed):
            a.store_bytes(dicomgen.retag(data, StudyInstanceUID=third_study, SeriesInstanceUID=new_series))
        series_rows, studies = _entities(a.root)
        assert series_rows == {new_series: (third_study, 2)} and set(studies) == {third_study}


@pytest.mark.parametrize("last_of_its_study", [True, False], ids=["last of its study", "one of its series"])
def test_recovery_drops_study_and_series_rows_with_their_last_instance(tmp_path, last_of_its_study):
    """Start-up removes the rows of an unconfirmed batch whose file did not survive; the
    series and study rows go with their last instance, or count one fewer."""
    import subprocess
    import sys

    root = tmp_path / "data"
    kept_study, kept_series = generate_uid(), generate_uid()
    lost_study, lost_series = ((generate_uid(), generate_uid()) if last_of_its_study
                               else (kept_study, kept_series))
    payloads = [_ct(kept_study, kept_series, 1), _ct(kept_study, kept_series, 2),
                _ct(lost_study, lost_series, 3)]
    names = []
    for n, data in enumerate(payloads):
        names.append(str(tmp_path / f"{n}.dcm"))
        with open(names[-1], "wb") as f:
            f.write(data)
    out = subprocess.run([sys.executable, "-c", _DIE_AFTER_STORING, str(root), *names],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    lost_sop, lost_path = out.splitlines()[-1].split(" ", 1)
    assert _entities(root)[0][lost_series] == (lost_study, 1 if last_of_its_study else 3)
    os.truncate(lost_path, 100)  # the flush did not complete
    with Archive(root) as a:
        assert a.get(lost_sop) is None
        series, studies = _entities(root)
        assert series == {kept_series: (kept_study, 2)} and set(studies) == {kept_study}
        assert [m["NumberOfStudyRelatedInstances"] for m in _study_search(a)] == [2]


def test_an_insert_into_a_known_series_writes_no_query_key_index_page(tmp_path):
    """The one-instance commit into an existing study and series dirties the instance table,
    its three indexes, the unconfirmed list and the series row: no page of the studies table or of
    the query-key indexes (an upsert that changes nothing writes nothing)."""
    with Archive(tmp_path / "a") as a:
        study, series = generate_uid(), generate_uid()
        for n in range(1, 4):
            a.store_bytes(_ct(study, series, n))
        wal = os.path.join(a.root, "index.sqlite3-wal")
        before = os.path.getsize(wal)
        a.store_bytes(_ct(study, series, 4))
        with open(wal, "rb") as f:
            f.seek(before)
            frames = f.read()
        with sqlite3.connect(os.path.join(a.root, "index.sqlite3")) as db:
            try:
                names = dict(db.execute("SELECT pageno, name FROM dbstat"))
            except sqlite3.OperationalError:
                pytest.skip("SQLite without the dbstat table")
            frame = 24 + db.execute("PRAGMA page_size").fetchone()[0]  # header (page number first), page
    written = {names.get(int.from_bytes(frames[i:i + 4], "big"), "other")
               for i in range(0, len(frames), frame)}
    assert written and written <= {
        "instances", "sqlite_autoindex_instances_1", "sqlite_autoindex_instances_2",
        "instances_study_series", "unconfirmed", "series", "sqlite_schema"}, written


def test_every_byte_of_a_durable_store_has_its_writeback_started_before_the_flush(archive, monkeypatch):
    """With fsync, each write asks the kernel to start writing the pages back, the last one
    (written at commit, after the body arrived on the event loop) included: the flush then
    waits for less. Received on the event loop (feed, commit_async): the bytes held there
    are written by the writer thread."""
    import asyncio

    started: list[tuple[int, int]] = []
    real = archive.files.start_writeback

    def record(fd, offset, length):
        started.append((offset, length))
        real(fd, offset, length)

    monkeypatch.setattr(archive.files, "start_writeback", record)
    data = ct_file(rows=64, columns=64, seed=77)

    async def store():
        incoming = archive.begin()
        half = len(data) // 2
        await incoming.feed(data[:half])
        await incoming.feed(data[half:])
        return await incoming.commit_async()

    outcome = asyncio.run(store())
    assert not outcome.already_stored
    covered = sorted(started)
    assert covered[0][0] == 0 and sum(length for _, length in covered) == len(data)
    assert all(a + n == b for (a, n), (b, _) in zip(covered, covered[1:]))


def test_an_instance_refused_by_its_header_is_never_written(archive, monkeypatch):
    """Received on the event loop and refused by the header scan (here: an unknown transfer
    syntax, C122), an instance that fitted in one hand-off to the writer never reaches the
    disk: no temp file is made. One that passes is written as before."""
    import asyncio

    made = []
    real = archive.files.create_temp
    monkeypatch.setattr(archive.files, "create_temp", lambda: made.append(1) or real())
    good = ct_file(rows=64, columns=64, seed=78)
    bad = good.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.9.9.9\x00", 1)
    assert bad != good

    async def store(data):
        incoming = archive.begin()
        await incoming.feed(data)
        return await incoming.commit_async()

    with pytest.raises(StoreFailure) as refused:
        asyncio.run(store(bad))
    assert refused.value.status == FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED and made == []
    assert not asyncio.run(store(good)).already_stored and made == [1]
    assert tmp_files(archive.files.root) == []


class _CountingMmap:
    """dicomaccel.archive's ``mmap`` module, counting the files it maps."""

    def __init__(self):
        import mmap as real

        self.real, self.maps = real, 0
        self.ACCESS_READ = real.ACCESS_READ

    def mmap(self, *args, **kw):
        self.maps += 1
        return self.real.mmap(*args, **kw)


def test_only_what_needs_more_than_the_header_is_mapped(tmp_path, monkeypatch):
    """A native instance whose header lies in its first bytes is scanned from them (the file
    is never mapped); encapsulated Pixel Data (its fragments) and a large header are mapped."""
    import dicomaccel.archive as archive_module
    from dicomaccel.archive import HEAD_BYTES

    spy = _CountingMmap()
    monkeypatch.setattr(archive_module, "mmap", spy)
    with Archive(tmp_path / "data") as a:
        ct = ct_file(rows=256, columns=256)  # 128 KiB: more than the head
        native = a.store_bytes(ct)
        assert spy.maps == 0 and native.record.frame_index.frame_ranges(0)
        encapsulated = a.store_bytes(compressed_file(RLELossless, frames=2))
        assert spy.maps == 1 and len(encapsulated.record.frame_index.frame_fragments) == 3
        big = image_dataset(rows=8, columns=8)
        big.add_new(0x0040A160, "UT", "x" * HEAD_BYTES)  # Text Value: the header ends past the head
        assert a.store_bytes(to_bytes(big)).record.pixel_value_offset > HEAD_BYTES
        assert spy.maps == 2
        # The same bytes again: compared with the stored file, both read from their files.
        assert a.store_bytes(ct).already_stored and spy.maps == 2
        # No Pixel Data, the whole data set in the first bytes: not mapped either.
        assert a.store_bytes(to_bytes(base_dataset())).record.pixel_tag == 0
        assert spy.maps == 2
