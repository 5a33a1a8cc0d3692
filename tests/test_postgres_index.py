"""The PostgreSQL index (archive/postgres_index.py) on a real, throwaway PostgreSQL cluster
(dicomaccel.testing.postgres): the archive on it, and several ``dicomaccel serve`` nodes sharing
one database and one data directory (PS3.18 STOW-RS and WADO-RS, PS3.4 C-GET)."""

from __future__ import annotations

import http.client
import io
import itertools
import json
import signal
import threading
import time
from pathlib import Path

import pydicom
import pytest
import requests

from dicomaccel.archive import Archive
from dicomaccel.archive.ingest import StoreFailure
from dicomaccel.testing import files as dicomgen
from dicomaccel.testing import multipart, post, wait_until
from dicomaccel.testing.files import generate_uid
from dicomaccel.testing.scu import assert_counts, c_get, identifier
from dicomaccel.testing.stow import CONTENT_TYPE

psycopg = pytest.importorskip("psycopg", reason="psycopg 3 is not installed (pip install 'psycopg[binary]' psycopg_pool)")

from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402
from pynetdicom import AE  # noqa: E402
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelGet  # noqa: E402


@pytest.fixture(scope="module")
def cluster(postgres_cluster):
    """The session's throwaway cluster (tests/conftest.py); these tests restart and stop it,
    and leave it running with its settings."""
    return postgres_cluster


@pytest.fixture
def pg_url(cluster) -> str:
    """A new, empty database."""
    return cluster.create_database()


def _stored(body: bytes) -> dict:
    doc = json.loads(body)
    return {
        "stored": [i["00081155"]["Value"][0] for i in doc.get("00081199", {}).get("Value", [])],
        "failed": [(i["00081155"]["Value"][0], i["00081197"]["Value"][0])
                   for i in doc.get("00081198", {}).get("Value", [])],
    }


def _files(root: Path) -> list[Path]:
    return [p for p in (root / "instances").rglob("*.dcm")]


def _changed(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PatientName = "Other^Name"
    return dicomgen.to_bytes(ds)


def test_the_archive_on_postgresql(tmp_path, pg_url):
    """Rows, frame index, studies and series upkeep and the duplicate rule, as on SQLite."""
    study, series = generate_uid(), generate_uid()
    data = [dicomgen.ct_instance(study, series, n, 16, 16) for n in (2, 1, 3)]
    with Archive(tmp_path / "data", index=pg_url, node_id="n1") as archive:
        outcomes = [archive.store_bytes(d) for d in data]
        assert not any(o.already_stored for o in outcomes)
        sops = [o.record.sop_instance_uid for o in outcomes]
        # Ordered by Instance Number; the frame index survives the round trip (bytea).
        found = archive.find(study_uids=[study])
        assert [r.instance_number for r in found] == [1, 2, 3]
        lazy = archive.find(series_uids=series, lazy=True)
        assert len(lazy) == 3 and lazy[0].frame_index == found[0].frame_index is not None
        assert archive.get(sops[0]) == outcomes[0].record
        assert archive.find(patient_id=outcomes[0].record.patient_id, sop_instance_uids=[sops[1]])[0].sop_instance_uid == sops[1]
        path, size, crc, sop_class, _ = archive.index.lookup(sops[0])
        assert Path(path).read_bytes() == data[0] and size == len(data[0])
        assert archive.index.read("SELECT n_instances FROM series WHERE series_uid = %s", (series,)) == [(3,)]
        # Same bytes: idempotent; different bytes: 0111; the UID under another SOP Class: 0119.
        assert archive.store_bytes(data[0]).already_stored
        with pytest.raises(StoreFailure) as failure:
            archive.store_bytes(_changed(data[0]))
        assert failure.value.status == 0x0111
        ds = pydicom.dcmread(io.BytesIO(data[1]))
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # SC
        with pytest.raises(StoreFailure) as failure:
            archive.store_bytes(dicomgen.to_bytes(ds))
        assert failure.value.status == 0x0119
        assert len(_files(tmp_path / "data")) == 3
    # An overwrite moves the instance to another series: the counts follow.
    with Archive(tmp_path / "data", index=pg_url, node_id="n1", overwrite=True) as archive:
        moved = pydicom.dcmread(io.BytesIO(data[0]))
        moved.SeriesInstanceUID = other = generate_uid()
        archive.store_bytes(dicomgen.to_bytes(moved))
        counts = dict(archive.index.read("SELECT series_uid, n_instances FROM series"))
        assert counts == {series: 2, other: 1}
        assert len(_files(tmp_path / "data")) == 3


def test_a_nul_in_a_text_value_is_stored_and_left_out_of_the_index(tmp_path, pg_url):
    """PostgreSQL text cannot hold NUL, which no text VR allows (PS3.5 §6.1.2.3): the file is
    stored as received, the index row holds the value without it."""
    ds = pydicom.dcmread(io.BytesIO(dicomgen.ct_instance(generate_uid(), generate_uid(), 1, 16, 16)))
    ds.PatientName = "Doe\x00^John"
    data = dicomgen.to_bytes(ds)
    with Archive(tmp_path / "data", index=pg_url, node_id="n1") as archive:
        record = archive.store_bytes(data).record
        assert Path(record.path).read_bytes() == data
        assert archive.get(record.sop_instance_uid).patient_name == "Doe^John"
        assert archive.index.read("SELECT patient_name_folded FROM studies") == [("doe^john",)]


def test_an_sqlite_index_is_migrated_and_both_are_verified(tmp_path, pg_url, capsys):
    """dicomaccel index migrate copies every row (the files stay); verify finds a missing file
    and an orphan on either backend."""
    from dicomaccel.cli import main

    data = tmp_path / "data"
    study, series = generate_uid(), generate_uid()
    with Archive(data) as archive:
        for n in range(5):
            archive.store_bytes(dicomgen.ct_instance(study, generate_uid() if n == 4 else series, n, 16, 16))
        before = sorted(archive.find(), key=lambda r: r.sop_instance_uid)
        counts = sorted(archive.index.read("SELECT series_uid, n_instances FROM series"))
    assert main(["index", "migrate", "--from", f"sqlite:{data / 'index.sqlite3'}", "--to", pg_url]) == 0
    assert "5 row(s) copied, 0 already there" in capsys.readouterr().out
    assert main(["index", "migrate", "--from", f"sqlite:{data / 'index.sqlite3'}", "--to", pg_url]) == 0
    assert "0 row(s) copied, 5 already there" in capsys.readouterr().out
    with Archive(data, index=pg_url, node_id="n1") as archive:
        assert sorted(archive.find(), key=lambda r: r.sop_instance_uid) == before
        assert sorted(archive.index.read("SELECT series_uid, n_instances FROM series")) == counts
    for index in ([], ["--index", pg_url]):
        assert main(["index", "verify", "--data", str(data), "--checksums", *index]) == 0
        assert "5 row(s), 5 file(s): 0 missing, 0 differing, 0 orphan(s)" in capsys.readouterr().out
    Path(before[0].path).unlink()
    orphan = data / "instances" / "1.2.3" / "4.5.6" / "7.8.9.0123456789abcdef.dcm"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"stray")
    for index in ([], ["--index", pg_url]):
        assert main(["index", "verify", "--data", str(data), *index]) == 1
        out = capsys.readouterr().out
        assert f"missing file: {Path(before[0].path).relative_to(data)}" in out
        assert "orphan (no row): instances/1.2.3/4.5.6/7.8.9.0123456789abcdef.dcm" in out


def test_studies_and_series_follow_stores_and_overwrites_as_on_sqlite(tmp_path, pg_url):
    """The same stores, overwrites and batches (of instances that agree) on an SQLite archive
    and a PostgreSQL one leave the same studies and series rows (attributes, last write wins, instance counts; a series
    or study goes with its last instance)."""
    from concurrent.futures import ThreadPoolExecutor

    archives = [Archive(tmp_path / "sqlite", overwrite=True),
                Archive(tmp_path / "pg", index=pg_url, node_id="n1", overwrite=True)]
    study, series, new_study, new_series, third_study = (generate_uid() for _ in range(5))

    def ct(study_uid, series_uid, number, **attrs):
        return dicomgen.retag(dicomgen.ct_instance(study_uid, series_uid, number, 8, 8), **attrs)

    first = ct(study, series, 1, PatientName="First^Name", StudyDescription="Before")
    second = ct(study, series, 2, PatientName="First^Name", StudyDescription="Before")
    changed = dicomgen.retag(second, PatientName="Second^Name", StudyDescription="After")
    steps = [[first], [second], [changed],
             [dicomgen.retag(first, StudyInstanceUID=new_study, SeriesInstanceUID=new_series)],
             [dicomgen.retag(changed, StudyInstanceUID=new_study, SeriesInstanceUID=new_series)],
             # One at a time: which of two instances that disagree comes last decides the study.
             [dicomgen.retag(first, StudyInstanceUID=third_study, SeriesInstanceUID=new_series)],
             [dicomgen.retag(changed, StudyInstanceUID=third_study, SeriesInstanceUID=new_series)],
             [ct(study, series, n, Modality="MR") for n in range(3, 9)] + [ct(new_study, generate_uid(), n) for n in range(4)]]
    try:
        for step in steps:
            tables = []
            for archive in archives:
                with ThreadPoolExecutor(4) as pool:  # several stores at once: batches of several
                    list(pool.map(archive.store_bytes, step))
                tables.append([archive.index.read(f"SELECT * FROM {t} ORDER BY 1") for t in ("studies", "series")])
            assert tables[1] == tables[0]
        assert len(tables[0][1]) == 6  # new_series, series again, four new ones
    finally:
        for archive in archives:
            archive.close()


def test_a_lost_race_is_decided_by_the_primary_key(tmp_path, pg_url):
    """Two archives (two nodes) on one database. A batch is inserted without a lookup first:
    B's insert of a UID that A stored meets the primary key, and the store is decided again
    against A's row (only the refused UID is looked up). The same when B asks first (the
    archive does while duplicates keep coming) but before A's row exists. Either way same
    bytes are already stored, changed bytes get 0111."""
    root = tmp_path / "data"
    a = Archive(root, index=pg_url, node_id="a")
    b = Archive(root, index=pg_url, node_id="b")
    try:
        data = dicomgen.ct_instance(generate_uid(), generate_uid(), 1, 16, 16)
        changed = _changed(data)
        sop = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
        real = b.index.lookup_many
        asked = []

        def counted(uids):
            asked.append(sorted(uids))
            return real(uids)

        # 1. Insert first: B asks about nothing, its row is refused, then it asks about that UID.
        b.index.lookup_many = counted
        assert not b.store_bytes(dicomgen.ct_instance(generate_uid(), generate_uid(), 1, 16, 16)).already_stored
        assert asked == []
        a.store_bytes(data)
        assert b.store_bytes(data).already_stored and asked == [[sop]]
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("DELETE FROM instances WHERE sop_instance_uid = %s", (sop,))

        # 2. Ask first (after a duplicate), but before A commits.
        misses = []

        def stale_lookup(uids):  # B looks before A commits, then the normal lookup
            if sop in uids and not misses:
                misses.append(sop)
                a.store_bytes(data)
                return {}
            return real(uids)

        b.index.lookup_many = stale_lookup
        b._committer._ask_first = True
        assert b.store_bytes(data).already_stored and misses
        misses.clear()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("DELETE FROM instances")
        for f in _files(root):
            f.unlink()
        with pytest.raises(StoreFailure) as failure:
            b.store_bytes(changed)
        assert failure.value.status == 0x0111
        assert len(_files(root)) == 1 and Path(b.get(sop).path).read_bytes() == data
        assert not list((root / "tmp").iterdir())
    finally:
        b.close()
        a.close()


def _node(server_factory, data: Path, url: str, name: str):
    return server_factory("--index", url, "--node-id", name, data=data)


def test_stow_to_one_node_and_retrieve_from_another(server_factory, tmp_path, pg_url):
    data = tmp_path / "shared"
    a, b = _node(server_factory, data, pg_url, "a"), _node(server_factory, data, pg_url, "b")
    study, series = generate_uid(), generate_uid()
    instances = [dicomgen.ct_instance(study, series, n, 32, 32) for n in range(1, 4)]
    status, _, body = post(a, multipart(instances), headers={"Accept": "application/dicom+json"})
    assert status == 200, body
    # C-GET (PS3.4 C.4.3) from node B: every instance, byte for byte as stored.
    result = c_get(b.dimse_port, StudyRootQueryRetrieveInformationModelGet,
                   identifier("STUDY", StudyInstanceUID=study))
    assert_counts(result.final, 3)
    sent = {pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID: d for d in instances}
    assert sorted(result.uids()) == sorted(sent)
    # WADO-RS (PS3.18 §10.4) from node B, as stored.
    sop, raw = next(iter(sent.items()))
    resp = requests.get(f"{b.stow_url}/studies/{study}/series/{series}/instances/{sop}",
                        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
                        timeout=30)
    assert resp.status_code == 200 and raw in resp.content


def test_the_same_instance_sent_to_two_nodes_at_once(server_factory, tmp_path, pg_url):
    """Identical bytes to both nodes at once: both clients succeed, one file and one row.
    Changed bytes: one success and one 0111, whichever node wins."""
    data = tmp_path / "shared"
    nodes = [_node(server_factory, data, pg_url, name) for name in ("a", "b")]
    rounds = 8

    def race(bodies: list[bytes]) -> list[tuple[int, bytes]]:
        answers: list = [None, None]
        go = threading.Barrier(2)

        def send(i):
            go.wait()
            status, _, body = post(nodes[i], multipart([bodies[i]]), headers={"Accept": "application/dicom+json"})
            answers[i] = (status, body)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        return answers

    same = [dicomgen.ct_instance(generate_uid(), generate_uid(), n, 64, 64) for n in range(rounds)]
    for inst in same:
        answers = race([inst, inst])
        assert [status for status, _ in answers] == [200, 200], answers
    changed = [dicomgen.ct_instance(generate_uid(), generate_uid(), n, 64, 64) for n in range(rounds)]
    for inst in changed:
        answers = race([inst, _changed(inst)])
        assert sorted(status for status, _ in answers) == [200, 409], answers
        refused = next(body for status, body in answers if status == 409)
        assert [code for _, code in _stored(refused)["failed"]] == [0x0111]
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT sop_instance_uid) FROM instances").fetchone() == \
            (2 * rounds, 2 * rounds)
    assert len(_files(data)) == 2 * rounds
    assert wait_until(lambda: not list((data / "tmp").iterdir()), timeout=10), list((data / "tmp").iterdir())


def test_nodes_starting_together_migrate_the_schema_once(server_factory, tmp_path, pg_url):
    data = tmp_path / "shared"
    started: list = []
    threads = [threading.Thread(target=lambda n=n: started.append(_node(server_factory, data, pg_url, n)))
               for n in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(started) == 3
    log = (tmp_path / "shared-server.log").read_text()
    assert log.count("schema migrated from version 0") == 1, log
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT version FROM dicomaccel_schema").fetchall() == [(1,)]
    inst = dicomgen.ct_instance(generate_uid(), generate_uid(), 1, 16, 16)
    assert all(post(node, multipart([inst]))[0] == 200 for node in started)


def test_sigkill_of_a_node_during_ingest_loses_nothing_acknowledged(server_factory, tmp_path, pg_url):
    """Node A killed while four clients store into it: every acknowledged instance is readable
    from node B, which serves on; A's restart cleans its own leftovers and no one else's."""
    data = tmp_path / "shared"
    a, b = _node(server_factory, data, pg_url, "a"), _node(server_factory, data, pg_url, "b")
    sent: dict[str, tuple[str, str, bytes]] = {}
    stop = threading.Event()
    lock = threading.Lock()

    def uploader(seed: int):
        for i in range(400):
            if stop.is_set():
                return
            study, series = generate_uid(), generate_uid()
            inst = dicomgen.ct_instance(study, series, seed * 1000 + i, 64, 64)
            try:
                status, _, body = post(a, multipart([inst]), headers={"Accept": "application/dicom+json"})
            except (OSError, http.client.HTTPException):
                return
            if status == 200:
                with lock:
                    for sop in _stored(body)["stored"]:
                        sent[sop] = (study, series, inst)

    threads = [threading.Thread(target=uploader, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    assert wait_until(lambda: len(sent) >= 12, timeout=60), "no upload completed"
    # B's own in-flight temp file, which A's recovery must leave alone.
    theirs = data / "tmp" / "b~inflight.part"
    theirs.write_bytes(b"partial")
    a.stop(signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join(30)
    for sop, (study, series, raw) in sent.items():
        resp = requests.get(f"{b.stow_url}/studies/{study}/series/{series}/instances/{sop}",
                            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
                            timeout=30)
        assert resp.status_code == 200 and raw in resp.content, sop
    # Node A again: its leftovers go, B's file stays; every row names a whole file.
    _node(server_factory, data, pg_url, "a")
    left = [p.name for p in (data / "tmp").iterdir()]
    assert left == ["b~inflight.part"], left
    with Archive(data, index=pg_url, node_id="check", recover=False) as archive:
        for record in archive.find():
            assert Path(record.path).stat().st_size == record.size
        indexed = {Path(r.path) for r in archive.find()}
    assert set(_files(data)) == indexed


def test_the_index_from_flag_environment_and_file(tmp_path, monkeypatch, capsys):
    """--index beats DICOMACCEL_INDEX, which beats the file's index =; check-config masks a
    password; a node ID must be usable in a file name."""
    from dicomaccel import server
    from dicomaccel.cli import main

    conf = tmp_path / "c.toml"
    conf.write_text('index = "postgresql://u:secret@db.example:5432/x"\nnode-id = "n-1"\n')
    assert main(["check-config", str(conf)]) == 0
    out = capsys.readouterr().out
    assert 'index = "postgresql://u:***@db.example:5432/x"' in out and "secret" not in out
    runs = []
    monkeypatch.setattr(server, "run", lambda config: runs.append(config) or 0)
    assert main(["serve", "--config", str(conf)]) == 0
    monkeypatch.setenv("DICOMACCEL_INDEX", "postgresql://env@h/y")
    assert main(["serve", "--config", str(conf)]) == 0
    assert main(["serve", "--config", str(conf), "--index", "postgres://flag@h/z", "--node-id", "n2"]) == 0
    assert [(c.index, c.node_id) for c in runs] == [
        ("postgresql://u:secret@db.example:5432/x", "n-1"), ("postgresql://env@h/y", "n-1"),
        ("postgres://flag@h/z", "n2")]
    monkeypatch.setenv("DICOMACCEL_INDEX", "mysql://nope")
    assert main(["serve", "--config", str(conf)]) == 2
    with pytest.raises(SystemExit):
        main(["serve", "--index", "sqlite:/x"])
    conf.write_text('node-id = "a/b"\n')
    assert main(["check-config", str(conf)]) == 2


def _stow(session: requests.Session, node, inst: bytes) -> tuple[int, dict, list]:
    """STOW-RS one instance with ``requests``: (HTTP status, headers, Failed SOP Sequence items)."""
    resp = session.post(f"{node.stow_url}/studies", data=multipart([inst]), timeout=120,
                        headers={"Content-Type": CONTENT_TYPE, "Accept": "application/dicom+json"})
    failed = resp.json().get("00081198", {}).get("Value", []) if resp.content else []
    return resp.status_code, resp.headers, failed


def _cstore_association(node):
    ae = AE(ae_title="PGRESTART")
    ae.dimse_timeout = 120
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.dimse_port)
    assert assoc.is_established
    return assoc


def _assert_index_refusal(kind: str, answer) -> str:
    """A store the index database failed: PS3.4 Table B.2-1 A7xx Refused: Out of Resources (A720)
    with an Error Comment; for STOW-RS (PS3.18 Table I.2-1) the same Failure Reason, HTTP 503
    with Retry-After when nothing of the request was stored."""
    if kind == "stow":
        status, headers, failed = answer
        assert status == 503 and headers.get("Retry-After"), answer
        assert [f["00081197"]["Value"] for f in failed] == [[0xA720]], answer
        comment = failed[0]["00000902"]["Value"][0]
        assert "index database" in comment, answer
        return comment
    status, comment = answer
    assert status == 0xA720 and "index database" in comment, answer
    return comment


def test_a_database_restart_under_load_fails_stores_in_flight_clearly_and_the_node_recovers(
        server_factory, tmp_path, cluster, pg_url):
    """PostgreSQL restarted (pg_ctl restart -m fast: every session ended) while three STOW-RS
    clients and a C-STORE client store in a loop: a store that met the restart is refused with
    A720 and an Error Comment naming the index database (STOW-RS: 503), never 0110 or 500, and
    never a lost acknowledgement; the node stores again without a restart of its own. A node
    that cannot reach the database does not start, with a one-line reason."""
    node = _node(server_factory, tmp_path / "shared", pg_url, "a")
    answers: list[tuple[str, object, str]] = []  # (kind, answer, SOP Instance UID)
    answered_at: list[float] = []  # when each answer came
    lock = threading.Lock()
    stop = threading.Event()

    def stow_client(seed: int):
        with requests.Session() as session:
            for n in itertools.count():
                if stop.is_set():
                    return
                inst = dicomgen.ct_instance(generate_uid(), generate_uid(), seed * 100000 + n, 16, 16)
                answer = _stow(session, node, inst)
                with lock:
                    answers.append(("stow", answer, dicomgen.sop_of(inst)))
                    answered_at.append(time.monotonic())

    def cstore_client():
        assoc = _cstore_association(node)
        try:
            for n in itertools.count():
                if stop.is_set():
                    return
                ds = pydicom.dcmread(io.BytesIO(dicomgen.ct_instance(generate_uid(), generate_uid(), n, 16, 16)))
                rsp = assoc.send_c_store(ds)
                with lock:
                    answers.append(("cstore", (rsp.Status, rsp.get("ErrorComment", "")), ds.SOPInstanceUID))
                    answered_at.append(time.monotonic())
        finally:
            assoc.release()

    threads = [threading.Thread(target=stow_client, args=(s,)) for s in range(3)]
    threads.append(threading.Thread(target=cstore_client))
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: len(answers) >= 40, timeout=60), answers
        restarted_at = len(answers)
        began = time.monotonic()
        cluster.restart()
        done = time.monotonic()
        # The node recovers by itself: stores succeed again, from every client.
        assert wait_until(lambda: len(answers) >= restarted_at + 80, timeout=120), len(answers)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    ok = lambda kind, answer: answer[0] == (200 if kind == "stow" else 0)  # noqa: E731
    refused = [(kind, answer) for kind, answer, _ in answers if not ok(kind, answer)]
    for kind, answer in refused:
        _assert_index_refusal(kind, answer)
    # The stores that met the restart, no more: a refusal is answered at once (the node does not
    # wait for the database), so their number depends on the restart's length, not their time.
    assert refused, answers
    assert all(began <= at <= done + 3 for (kind, answer, _), at in zip(answers, answered_at)
               if not ok(kind, answer)), (began, done, answered_at)
    assert all(ok(kind, answer) for kind, answer, _ in answers[-20:]), answers[-20:]
    assert {kind for kind, answer, _ in answers[restarted_at:] if ok(kind, answer)} == {"stow", "cstore"}
    # Every acknowledged instance is indexed and whole; nothing refused is.
    with Archive(tmp_path / "shared", index=pg_url, node_id="check", recover=False) as archive:
        for kind, answer, sop in answers:
            record = archive.get(sop)
            if ok(kind, answer):
                assert record is not None and Path(record.path).stat().st_size == record.size, sop
            else:
                assert record is None, sop
    unreachable = pg_url.replace(f":{cluster.port}/", ":1/")
    with pytest.raises(RuntimeError, match="cannot use the index database"):
        _node(server_factory, tmp_path / "other", unreachable, "b")


def _waiting(url: str, event: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        return bool(conn.execute("SELECT 1 FROM pg_stat_activity WHERE wait_event = %s", (event,)).fetchall())


def _no_standby(cluster) -> None:
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
        conn.execute("SELECT pg_reload_conf()")


def _pending_markers(data: Path) -> list[str]:
    return sorted(p.name for p in (data / "tmp").iterdir() if ".pending!" in p.name)


def test_a_commit_in_doubt_keeps_its_file_until_recovery_decides(server_factory, tmp_path, cluster, pg_url):
    """The database dies while a node waits for the answer to its commit, and cannot be asked
    afterwards whether the commit happened (PS3.4 B.2.3: the store is refused, A720; nothing
    acknowledged is lost). The node keeps the published file and its pending marker; its next
    start-up keeps the file if the row went in, else removes it. Both cases, on a real server:

    - committed, answer lost: with ``synchronous_standby_names`` naming a standby that never
      comes, the COMMIT is in the server's log but waits for the standby's answer, and the
      server is stopped (``-m immediate``) meanwhile;
    - not committed: the batch's statement waits for a table lock held by another session,
      and the server is stopped the same way.
    """
    try:
        _in_doubt(server_factory, tmp_path / "shared", cluster, pg_url)
    finally:  # the module's cluster serves the next tests: up, without the standby
        try:
            cluster.start()
        except Exception:
            pass  # already running
        _no_standby(cluster)


def _in_doubt(server_factory, data: Path, cluster, pg_url: str) -> None:
    node = _node(server_factory, data, pg_url, "a")
    study, series = generate_uid(), generate_uid()
    committed, lost = (dicomgen.ct_instance(study, series, n, 16, 16) for n in (1, 2))
    result: list = []

    # 1. Committed, the answer lost (STOW-RS: 503).
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'never_connects'")
        conn.execute("SELECT pg_reload_conf()")
    sender = threading.Thread(target=lambda: result.append(_stow(requests.Session(), node, committed)))
    sender.start()
    try:
        assert wait_until(lambda: _waiting(pg_url, "SyncRep"), timeout=60)
        cluster.halt("immediate")
    finally:
        sender.join(120)
    assert "during the commit" in _assert_index_refusal("stow", result.pop())
    cluster.start("-c synchronous_standby_names=''")  # beats postgresql.auto.conf
    _no_standby(cluster)
    markers = _pending_markers(data)
    assert len(markers) == 1 and markers[0].startswith("a~"), markers
    # The row is there (the server recovered the commit from its log); the node, not restarted,
    # answers the same bytes sent again as already stored.
    status, _, failed = _stow(requests.Session(), node, committed)
    assert status == 200 and not failed
    assert len(_files(data)) == 1

    # 2. Not committed (C-STORE: A720 with an Error Comment).
    assoc = _cstore_association(node)
    try:
        blocker = psycopg.connect(pg_url)
        blocker.execute("LOCK TABLE series IN SHARE MODE")  # the batch's series upsert waits
        sender = threading.Thread(target=lambda: result.append(
            assoc.send_c_store(pydicom.dcmread(io.BytesIO(lost)))))
        sender.start()
        try:
            assert wait_until(lambda: _waiting(pg_url, "relation"), timeout=60)
            cluster.halt("immediate")
        finally:
            sender.join(120)
            blocker.close()
        rsp = result.pop()
        assert "during the commit" in _assert_index_refusal("cstore", (rsp.Status, rsp.get("ErrorComment", "")))
    finally:
        assoc.abort()
    cluster.start()
    assert len(_pending_markers(data)) == 2 and len(_files(data)) == 2

    # 3. The node's next start-up decides: the committed row's file stays, the other goes.
    node.stop()
    node = _node(server_factory, data, pg_url, "a")
    assert _pending_markers(data) == []
    with Archive(data, index=pg_url, node_id="check", recover=False) as archive:
        assert {Path(r.path) for r in archive.find()} == set(_files(data))
        assert archive.get(dicomgen.sop_of(committed)) is not None
        assert archive.get(dicomgen.sop_of(lost)) is None
    resp = requests.get(f"{node.stow_url}/studies/{study}/series/{series}/instances/{dicomgen.sop_of(committed)}",
                        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
                        timeout=30)
    assert resp.status_code == 200 and committed in resp.content


# Searches across levels and every kind of condition (PS3.4 C.2.2.2): keyword -> value(s).
_SEARCHES = [
    ("STUDY", {}, None, 0),
    ("STUDY", {"PatientName": "lewis*"}, None, 0),
    ("STUDY", {"PatientName": "*son??^*"}, 7, 2),
    ("STUDY", {"PatientName": "LOPEZ3^Anna"}, None, 0),
    ("STUDY", {"StudyDate": "20150101-20201231"}, 10, 0),
    ("STUDY", {"StudyDate": "-20120101", "PatientSex": "O"}, None, 0),
    ("STUDY", {"StudyTime": "10-"}, None, 5),
    ("STUDY", {"AccessionNumber": "ACC000000*"}, None, 0),
    ("STUDY", {"ModalitiesInStudy": ["CT", "MR"]}, None, 0),
    ("STUDY", {"StudyInstanceUID": ["1.2.826.0.1.99.1", "1.2.826.0.1.99.3"]}, None, 0),
    ("STUDY", {"PatientID": "PID00000*", "StudyDescription": "Synth*"}, 3, 1),
    ("PATIENT", {}, None, 0),
    ("PATIENT", {"PatientName": "*a*"}, 4, 2),
    ("SERIES", {"Modality": "CT"}, None, 0),
    ("SERIES", {"SeriesNumber": "1", "StudyInstanceUID": "1.2.826.0.1.99.2"}, None, 0),
    ("SERIES", {"SeriesDescription": "Series ?"}, 6, 3),
    ("IMAGE", {"StudyInstanceUID": "1.2.826.0.1.99.4", "SeriesInstanceUID": "1.2.826.0.1.99.4.1"}, None, 0),
    ("IMAGE", {"InstanceNumber": "3"}, 20, 0),
    ("IMAGE", {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2", "PatientName": "*"}, 5, 40),
]


def test_searches_answer_the_same_on_both_indexes(tmp_path, pg_url):
    """The query engine (QIDO-RS, C-FIND) gives the same matches, in the same order, with the
    same computed attributes, on the SQLite index and on PostgreSQL."""
    from dicomaccel.archive.index import SQLiteIndex
    from dicomaccel.archive.postgres_index import PostgresIndex
    from dicomaccel.query import ATTRIBUTES, BY_KEYWORD, LEVELS, Query, condition, search
    from dicomaccel.testing.query_index import fill

    root = str(tmp_path)
    indexes = [SQLiteIndex(str(tmp_path / "index.sqlite3"), root, fsync=False), PostgresIndex(pg_url, root)]
    try:
        for index in indexes:
            fill(index, root, 1200, per_study=20, patients=25)
        for level, keys, limit, offset in _SEARCHES:
            conditions = tuple(c for c in (condition(BY_KEYWORD[k], v if isinstance(v, list) else [v])
                                           for k, v in keys.items()) if c is not None)
            returns = tuple(a.tag for a in ATTRIBUTES if LEVELS.index(a.level) <= LEVELS.index(level))
            query = Query(level, conditions, returns, limit, offset)
            on_sqlite, on_postgres = (search(index, query) for index in indexes)
            assert on_sqlite.matches, (level, keys)
            assert on_postgres == on_sqlite, (level, keys)
    finally:
        for index in indexes:
            index.close()


def test_qido_rs_answers_the_same_from_a_postgresql_node(server_factory, tmp_path, pg_url):
    """QIDO-RS (PS3.18 §10.6) from a node on PostgreSQL answers as one on SQLite, loaded alike."""
    nodes = [server_factory(data=tmp_path / "sqlite"), _node(server_factory, tmp_path / "pg", pg_url, "a")]
    study, ct, mr, other = (generate_uid() for _ in range(4))

    def ct_file(study_uid, series_uid, number, **attrs):
        return dicomgen.retag(dicomgen.ct_instance(study_uid, series_uid, number, 8, 8), **attrs)

    doe = dict(PatientName="Doe^John", PatientID="P1", StudyDate="20250110")
    files = [ct_file(study, ct, 1, Modality="CT", **doe), ct_file(study, ct, 2, Modality="CT", **doe),
             ct_file(study, mr, 1, Modality="MR", **doe),
             ct_file(other, generate_uid(), 1, PatientName="Roe^Jane", PatientID="P2", StudyDate="20240301")]
    for node in nodes:
        assert post(node, multipart(files))[0] == 200
    searches = ["/studies", "/studies?PatientName=doe*&includefield=all", "/studies?StudyDate=20250101-",
                "/studies?ModalitiesInStudy=MR", "/studies?limit=1&offset=1", f"/studies/{study}/series",
                "/series?Modality=CT", f"/studies/{study}/instances", "/instances?PatientName=*o*&offset=1"]
    for search in searches:
        answers = []
        for node in nodes:
            resp = requests.get(node.stow_url + search, headers={"Accept": "application/dicom+json"}, timeout=30)
            assert resp.status_code == 200, (search, resp.text[:300])
            # The Retrieve URLs name each node's own port.
            answers.append([{tag: v for tag, v in match.items() if tag != "00081190"} for match in resp.json()])
        assert answers[1] == answers[0] and answers[0], search
    # C-FIND (PS3.4 C.4.1) from the PostgreSQL node: the same engine.
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as find_model

    ae = AE(ae_title="FINDTEST")
    ae.add_requested_context(find_model)
    assoc = ae.associate("127.0.0.1", nodes[1].dimse_port)
    assert assoc.is_established
    try:
        found = [ident for status, ident in assoc.send_c_find(
            identifier("STUDY", PatientName="DOE*", StudyInstanceUID="", ModalitiesInStudy=""), find_model)
            if status.Status == 0xFF00]
    finally:
        assoc.release()
    assert [(f.StudyInstanceUID, list(f.ModalitiesInStudy)) for f in found] == [(study, ["CT", "MR"])]


def test_reads_while_the_database_is_down_are_refused_clearly_and_recover(server_factory, tmp_path, cluster, pg_url):
    """PostgreSQL stopped under a node: QIDO-RS and WADO-RS answer 503 with Retry-After and the
    reason (PS3.18 §8.5), C-FIND A700 Refused: Out of Resources (PS3.4 Table C.4-1) and C-GET
    A701 (Table C.4-3), each with an Error Comment naming the index database, and at once
    (no wait for the pool, no 500, no hung association). Started again, the same requests
    succeed on the same node, without a restart of its own."""
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as find_model

    node = _node(server_factory, tmp_path / "shared", pg_url, "a")
    study, series = generate_uid(), generate_uid()
    inst = dicomgen.ct_instance(study, series, 1, 16, 16)
    assert _stow(requests.Session(), node, inst)[0] == 200
    qido = f"{node.stow_url}/studies?StudyInstanceUID={study}"
    wado = f"{node.stow_url}/studies/{study}"
    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}

    def c_find():
        ae = AE(ae_title="FINDDOWN")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        ae.add_requested_context(find_model)
        assoc = ae.associate("127.0.0.1", node.dimse_port)
        assert assoc.is_established
        try:
            return [(status.Status, status.get("ErrorComment", ""), ident)
                    for status, ident in assoc.send_c_find(identifier("STUDY", StudyInstanceUID=study), find_model)]
        finally:
            assoc.release()

    def c_get_study():
        return c_get(node.dimse_port, StudyRootQueryRetrieveInformationModelGet,
                     identifier("STUDY", StudyInstanceUID=study))

    def answered():  # every read service, once
        started = time.monotonic()
        got = (requests.get(qido, headers={"Accept": "application/dicom+json"}, timeout=60),
               requests.get(wado, headers=accept, timeout=60), c_find(), c_get_study())
        return got, time.monotonic() - started

    (q, w, found, got), _ = answered()
    assert q.status_code == 200 and w.status_code == 200 and inst in w.content
    assert [s for s, _, _ in found] == [0xFF00, 0x0000] and got.responses[-1][0].Status == 0

    cluster.halt()
    try:
        for _ in range(2):  # the read that finds the server gone, and one after
            (q, w, found, got), took = answered()
            for resp in (q, w):
                assert resp.status_code == 503 and resp.headers.get("Retry-After"), (resp.status_code, resp.text)
                assert "index database" in resp.text, resp.text
            assert len(found) == 1 and found[0][0] == 0xA700 and "index database" in found[0][1], found
            final = got.responses[-1][0]
            assert final.Status == 0xA701 and "index database" in final.get("ErrorComment", ""), final
            assert not got.received
            assert took < 8, took  # four requests, none waited for the pool (10 s)
    finally:
        cluster.start()
    (q, w, found, got), _ = answered()
    assert q.status_code == 200 and q.json()[0]["0020000D"]["Value"] == [study]
    assert w.status_code == 200 and inst in w.content
    assert [s for s, _, _ in found] == [0xFF00, 0x0000]
    assert got.responses[-1][0].Status == 0 and [r.sop_instance_uid for r in got.received] == [dicomgen.sop_of(inst)]
    assert "Traceback" not in node.log.read_text()
