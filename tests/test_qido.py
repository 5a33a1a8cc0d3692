"""QIDO-RS (PS3.18 §10.6) on a real `dicomaccel serve` process, loaded over STOW-RS: searches by
dicomweb-client, error cases and content negotiation by `requests`; and the index migration
that makes an older archive searchable."""

from __future__ import annotations

import io
import sqlite3

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from dicomaccel.archive.index import QUERY_FIELDS, SCHEMA_VERSION, fold_case
from dicomaccel.testing import multipart, post, start_server
from dicomaccel.testing import files as dicomgen
from dicomaccel.testing.files import retag

# The index matters here: every test on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = [pytest.mark.timeout(120), pytest.mark.indexes("sqlite", "postgresql")]


def _ct(study, series, number, **attrs) -> bytes:
    return retag(dicomgen.ct_instance(study, series, number, 8, 8), **attrs)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, index_backend):
    """One server with three patients' studies (the UIDs are in the returned dict)."""
    data = tmp_path_factory.mktemp("qido") / "data"
    server = start_server(data, *index_backend.args(data))
    k = {n: generate_uid() for n in ("S1", "S1a", "S1b", "S2", "S2a", "S3", "S3a")}
    doe = dict(PatientName="Doe^John", PatientID="QIDO-1", StudyDate="20250110", StudyTime="083000",
               AccessionNumber="ACC-1", ReferringPhysicianName="Smith^Ann", StudyDescription="Chest")
    files = [_ct(k["S1"], k["S1a"], i, Modality="CT", SeriesNumber=1, **doe) for i in (1, 2, 3)]
    files += [_ct(k["S1"], k["S1b"], 1, Modality="MR", SeriesNumber=2, SeriesDescription="T1", **doe)]
    files += [_ct(k["S2"], k["S2a"], i, SpecificCharacterSet="ISO_IR 192", PatientName="Müller^Jörg",
                  PatientID="QIDO-2", StudyDate="20250615", StudyTime="141500", AccessionNumber="ACC-2")
              for i in (1, 2)]
    files += [_ct(k["S3"], k["S3a"], 1, PatientName="DOE^JANE", PatientID="QIDO-3", StudyDate="20240301",
                  StudyTime="235959", AccessionNumber="ACC-3")]
    status, _, body = post(server, multipart(files))
    assert status == 200, body[:300]
    k["files"] = files
    yield server, k
    server.stop()


def _uids(results, tag="0020000D"):
    return sorted(r[tag]["Value"][0] for r in results)


def test_search_for_studies_all_and_by_filters(loaded):
    server, k = loaded
    client = DICOMwebClient(url=server.stow_url)
    assert _uids(client.search_for_studies()) == sorted([k["S1"], k["S2"], k["S3"]])
    # Person Name wild card, case-insensitive (PS3.4 C.2.2.2.4, C.2.2.2.1).
    found = client.search_for_studies(search_filters={"PatientName": "doe*"})
    assert _uids(found) == sorted([k["S1"], k["S3"]])
    study = next(r for r in found if r["0020000D"]["Value"][0] == k["S1"])
    assert study["00100010"]["Value"] == [{"Alphabetic": "Doe^John"}]
    assert study["00201206"]["Value"] == [2] and study["00201208"]["Value"] == [4]
    assert study["00080061"]["Value"] == ["CT", "MR"]
    # dicomweb-client sends a Host header without the port; the URL is made from it.
    assert study["00081190"]["Value"][0].endswith(f"/dicomweb/studies/{k['S1']}")
    assert study["00080056"]["Value"] == ["ONLINE"]
    # ? matches one character; a tag works as well as a keyword.
    assert _uids(client.search_for_studies(search_filters={"00100010": "DOE^JAN?"})) == [k["S3"]]
    # Exact Person Name ignores case too.
    assert _uids(client.search_for_studies(search_filters={"PatientName": "doe^john"})) == [k["S1"]]
    # Date range, open ranges, single date (PS3.4 C.2.2.2.5).
    assert _uids(client.search_for_studies(search_filters={"StudyDate": "20250101-20251231"})) == \
        sorted([k["S1"], k["S2"]])
    assert _uids(client.search_for_studies(search_filters={"StudyDate": "-20250110"})) == sorted([k["S1"], k["S3"]])
    assert _uids(client.search_for_studies(search_filters={"StudyDate": "20250615"})) == [k["S2"]]
    assert _uids(client.search_for_studies(search_filters={"StudyTime": "14-23"})) == sorted([k["S2"], k["S3"]])
    # Accession Number, Patient ID, Referring Physician, Modalities in Study, UID lists.
    assert _uids(client.search_for_studies(search_filters={"AccessionNumber": "ACC-2"})) == [k["S2"]]
    assert _uids(client.search_for_studies(search_filters={"PatientID": "QIDO-3"})) == [k["S3"]]
    assert _uids(client.search_for_studies(search_filters={"ReferringPhysicianName": "SMITH*"})) == [k["S1"]]
    assert _uids(client.search_for_studies(search_filters={"ModalitiesInStudy": "MR"})) == [k["S1"]]
    assert _uids(client.search_for_studies(search_filters={"StudyInstanceUID": [k["S2"], k["S3"]]})) == \
        sorted([k["S2"], k["S3"]])
    uid_list = requests.get(f"{server.stow_url}/studies", params={"StudyInstanceUID": f"{k['S1']},{k['S3']}"},
                            timeout=30).json()
    assert _uids(uid_list) == sorted([k["S1"], k["S3"]])
    # Non-ASCII names match and come back as UTF-8.
    found = client.search_for_studies(search_filters={"PatientName": "müller*"}, fuzzymatching=False)
    assert _uids(found) == [k["S2"]] and found[0]["00100010"]["Value"] == [{"Alphabetic": "Müller^Jörg"}]
    assert found[0]["00080005"]["Value"] == ["ISO_IR 192"]
    # includefield adds attributes.
    found = client.search_for_studies(search_filters={"PatientID": "QIDO-1"}, fields=["StudyDescription"])
    assert found[0]["00081030"]["Value"] == ["Chest"]
    assert client.search_for_studies(search_filters={"PatientName": "Nobody*"}) == []


def test_search_for_series_and_instances(loaded):
    server, k = loaded
    client = DICOMwebClient(url=server.stow_url)
    series = client.search_for_series(k["S1"])
    assert _uids(series, "0020000E") == sorted([k["S1a"], k["S1b"]])
    ct = next(s for s in series if s["0020000E"]["Value"][0] == k["S1a"])
    assert ct["00080060"]["Value"] == ["CT"] and ct["00201209"]["Value"] == [3]
    assert ct["00081190"]["Value"][0].endswith(f"/dicomweb/studies/{k['S1']}/series/{k['S1a']}")
    assert _uids(client.search_for_series(k["S1"], search_filters={"Modality": "MR"}), "0020000E") == [k["S1b"]]
    # All series of the archive, with Study attributes (PS3.18 Table 10.6.3-3).
    every = client.search_for_series(search_filters={"PatientName": "*jane"})
    assert _uids(every, "0020000E") == [k["S3a"]] and every[0]["00100020"]["Value"] == ["QIDO-3"]
    instances = client.search_for_instances(k["S1"], k["S1a"])
    assert len(instances) == 3
    assert [i["00200013"]["Value"][0] for i in instances] == [1, 2, 3]
    first = instances[0]
    assert first["00280010"]["Value"] == [8] and first["00080016"]["Value"] == ["1.2.840.10008.5.1.4.1.1.2"]
    sop = first["00080018"]["Value"][0]
    url = first["00081190"]["Value"][0]
    assert url.endswith(f"/dicomweb/studies/{k['S1']}/series/{k['S1a']}/instances/{sop}")
    assert len(client.search_for_instances(k["S1"])) == 4
    assert len(client.search_for_instances(search_filters={"PatientID": "QIDO-2"})) == 2
    assert len(client.search_for_instances(search_filters={"InstanceNumber": "2"})) == 2
    stored = pydicom.dcmread(io.BytesIO(k["files"][0]))
    one = client.search_for_instances(search_filters={"SOPInstanceUID": stored.SOPInstanceUID})
    assert _uids(one, "00080018") == [stored.SOPInstanceUID]


def test_limit_offset_and_warning(loaded):
    server, k = loaded
    client = DICOMwebClient(url=server.stow_url)
    page1 = client.search_for_instances(limit=2)
    page2 = client.search_for_instances(limit=2, offset=2)
    rest = client.search_for_instances(offset=4)
    everything = client.search_for_instances()
    assert len(page1) == 2 and len(page2) == 2 and len(everything) == 7
    assert _uids(page1 + page2 + rest, "00080018") == _uids(everything, "00080018")
    # The Retrieve URL of a match answers (WADO-RS on the same port; Host with its port here).
    study = requests.get(f"{server.stow_url}/studies", params={"PatientID": "QIDO-3"}, timeout=30).json()[0]
    assert study["00081190"]["Value"][0] == f"{server.stow_url}/studies/{k['S3']}"
    resp = requests.get(f"{server.stow_url}/studies", params={"limit": 1}, timeout=30)
    assert resp.status_code == 200 and len(resp.json()) == 1
    assert resp.headers["Warning"].startswith("299 ")
    resp = requests.get(f"{server.stow_url}/studies", params={"limit": 10}, timeout=30)
    assert "Warning" not in resp.headers
    resp = requests.get(f"{server.stow_url}/studies", params={"fuzzymatching": "true"}, timeout=30)
    assert resp.status_code == 200 and "fuzzymatching" in resp.headers["Warning"]


def test_no_match_is_204(loaded):
    server, _ = loaded
    resp = requests.get(f"{server.stow_url}/studies", params={"PatientID": "nobody"}, timeout=30)
    assert resp.status_code == 204 and resp.content == b""


@pytest.mark.parametrize("params, words", [
    ({"StudyDate": "2025-01-01"}, "StudyDate"),
    ({"StudyDate": "20251301x"}, "not a date"),
    ({"NoSuchKeyword": "x"}, "NoSuchKeyword"),
    ({"limit": "ten"}, "limit"),
    ({"offset": "-1"}, "offset"),
    ({"fuzzymatching": "maybe"}, "fuzzymatching"),
    ({"includefield": "NotAnAttribute"}, "includefield"),
    ({"PatientBirthDate": "1970"}, "not a date"),
    ({"StudyInstanceUID": "1.2.*"}, "wild cards"),
    ({"Modality": "CT"}, "series-level"),
])
def test_bad_parameters_answer_400_with_a_reason(loaded, params, words):
    server, _ = loaded
    resp = requests.get(f"{server.stow_url}/studies", params=params, timeout=30)
    assert resp.status_code == 400
    assert resp.headers["Content-Type"].startswith("text/plain") and words in resp.text


def test_integer_keys_take_integers(loaded):
    server, _ = loaded
    resp = requests.get(f"{server.stow_url}/instances", params={"InstanceNumber": "abc"}, timeout=30)
    assert resp.status_code == 400 and "not an integer" in resp.text


def test_xml_on_request_and_406(loaded):
    server, k = loaded
    resp = requests.get(f"{server.stow_url}/studies", params={"PatientID": "QIDO-1"},
                        headers={"Accept": 'multipart/related; type="application/dicom+xml"'}, timeout=30)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith('multipart/related; type="application/dicom+xml"')
    assert b"<NativeDicomModel" in resp.content and k["S1"].encode() in resp.content
    assert b"<FamilyName>Doe</FamilyName>" in resp.content
    resp = requests.get(f"{server.stow_url}/studies", headers={"Accept": "image/png"}, timeout=30)
    assert resp.status_code == 406


def _schema_5(db: sqlite3.Connection) -> None:
    """Turn a schema-6 index back into schema 5: the query keys and their indexes on the
    instance rows (Person Names case-folded there), no studies or series tables."""
    db.execute("DROP TABLE studies")
    db.execute("DROP TABLE series")
    for column in ("patient_name_folded", "referring_physician_name_folded"):
        db.execute(f"ALTER TABLE instances ADD COLUMN {column} TEXT NOT NULL DEFAULT ''")
    db.create_function("fold_case", 1, fold_case)
    db.execute("UPDATE instances SET patient_name_folded = fold_case(patient_name),"
               " referring_physician_name_folded = fold_case(referring_physician_name)")
    db.executescript("""
        CREATE INDEX instances_patient ON instances (patient_id);
        CREATE INDEX instances_series ON instances (series_uid);
        CREATE INDEX instances_patient_name ON instances (patient_name_folded, study_uid);
        CREATE INDEX instances_study_date ON instances (study_date, study_uid);
        CREATE INDEX instances_accession ON instances (accession_number);
        CREATE INDEX instances_modality ON instances (modality, study_uid);
        ALTER TABLE unconfirmed RENAME TO unconfirmed_6;
        CREATE TABLE unconfirmed (sop_instance_uid TEXT PRIMARY KEY, writer TEXT NOT NULL);
        INSERT INTO unconfirmed SELECT * FROM unconfirmed_6;
        DROP TABLE unconfirmed_6;
        PRAGMA user_version = 5;
    """)


def test_old_index_is_migrated_and_backfilled(tmp_path):
    """An archive written before the query keys (schema 4) is searchable after a restart."""
    data = tmp_path / "data"
    server = start_server(data)
    study, series = generate_uid(), generate_uid()
    status, _, _ = post(server, multipart([_ct(study, series, 1, PatientName="Old^Archive",
                                               StudyDate="20200202", Modality="CT")]))
    assert status == 200
    server.stop()
    # Make it a schema-4 index: without the query key columns and their indexes.
    db = sqlite3.connect(data / "index.sqlite3")
    _schema_5(db)
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
                              " AND name NOT IN ('instances_study_series', 'instances_patient')").fetchall():
        db.execute(f"DROP INDEX {name}")
    for column in (*QUERY_FIELDS, "patient_name_folded", "referring_physician_name_folded"):
        db.execute(f"ALTER TABLE instances DROP COLUMN {column}")
    db.execute("PRAGMA user_version = 4")
    db.commit()
    db.close()
    server = start_server(data, "--log-level", "info")
    try:
        client = DICOMwebClient(url=server.stow_url)
        found = client.search_for_studies(search_filters={"PatientName": "old*", "StudyDate": "2020"
                                                          "0101-20201231"})
        assert _uids(found) == [study] and found[0]["00080061"]["Value"] == ["CT"]
    finally:
        server.stop()
    log = server.log.read_text()
    assert "migrating" in log and "schema version 4 to 6" in log and "1 studies and 1 series" in log


def test_schema_5_index_is_migrated_to_study_and_series_tables(tmp_path):
    """A schema-5 archive (query keys on the instance rows) gets its studies and series
    tables at start-up, filled from the instance rows; searches at every level still answer."""
    data = tmp_path / "data"
    server = start_server(data)
    k = {n: generate_uid() for n in ("A", "A1", "A2", "B", "B1")}
    files = [_ct(k["A"], k["A1"], i, PatientName="Five^Ann", PatientID="V5-1", StudyDate="20230303",
                 AccessionNumber="V5A", Modality="CT", SeriesNumber=1) for i in (1, 2, 3)]
    files += [_ct(k["A"], k["A2"], 1, PatientName="Five^Ann", PatientID="V5-1", StudyDate="20230303",
                  AccessionNumber="V5A", Modality="MR", SeriesNumber=2)]
    files += [_ct(k["B"], k["B1"], i, PatientName="Müller^Five", PatientID="V5-2", StudyDate="20240404",
                  SpecificCharacterSet="ISO_IR 192", Modality="CT") for i in (1, 2)]
    status, _, _ = post(server, multipart(files))
    assert status == 200
    server.stop()
    db = sqlite3.connect(data / "index.sqlite3")
    _schema_5(db)
    db.commit()
    db.close()
    server = start_server(data, "--log-level", "info")
    try:
        client = DICOMwebClient(url=server.stow_url)
        found = client.search_for_studies(search_filters={"PatientName": "*five*"})
        assert _uids(found) == sorted([k["A"], k["B"]])
        a = next(r for r in found if r["0020000D"]["Value"][0] == k["A"])
        assert a["00201206"]["Value"] == [2] and a["00201208"]["Value"] == [4]
        assert a["00080061"]["Value"] == ["CT", "MR"] and a["00080050"]["Value"] == ["V5A"]
        assert _uids(client.search_for_studies(search_filters={"PatientName": "MÜLLER*"})) == [k["B"]]
        assert _uids(client.search_for_studies(search_filters={"ModalitiesInStudy": "MR"})) == [k["A"]]
        series = client.search_for_series(k["A"])
        assert sorted((s["0020000E"]["Value"][0], s["00201209"]["Value"][0]) for s in series) == \
            sorted([(k["A1"], 3), (k["A2"], 1)])
        assert len(client.search_for_instances(search_filters={"PatientID": "V5-2"})) == 2
        # New instances go on counting from the back-filled rows.
        more = _ct(k["A"], k["A1"], 4, PatientName="Five^Ann", PatientID="V5-1", StudyDate="20230303",
                   AccessionNumber="V5A", Modality="CT")
        status, _, _ = post(server, multipart([more]))
        assert status == 200
        a = client.search_for_studies(search_filters={"AccessionNumber": "V5A"})[0]
        assert a["00201208"]["Value"] == [5]
    finally:
        server.stop()
    log = server.log.read_text()
    assert "schema version 5 to 6" in log and "2 studies and 3 series" in log
    db = sqlite3.connect(data / "index.sqlite3")
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        names = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'"
                                          " AND tbl_name = 'instances' AND sql IS NOT NULL")}
        assert names == {"instances_study_series"}
    finally:
        db.close()
