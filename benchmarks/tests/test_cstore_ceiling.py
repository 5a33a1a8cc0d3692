"""The cstore workload's ceiling, storescu into DCMTK ``storescp --ignore``, and its durable floor,
storescu into ``benchmarks/cstore_floor.c``: how the runner plans them, how the report shows them
(rows like a peer's, never the best peer, the servers' C-STORE rates as a share of each) and,
with DCMTK installed, the receivers themselves taking what storescu sent."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pydicom.data
import pytest

from benchmarks import report, run
from benchmarks.clients import DCMTK_LOG_CONFIG, storescu
from benchmarks.corpus import Corpus
from benchmarks.peers import CStoreFloorPeer, PeerUnavailable, StorescpIgnorePeer, dcmtk_program

ONE = "C-STORE storescu, 1 association"
FOUR = "C-STORE storescu, 4 associations at once"


def row(peer: str, method: str, seconds: list[float], section: str = "ingest") -> dict:
    return {"section": section, "corpus": "ct", "label": "CT", "method": method, "peer": peer, "instances": 200,
            "bytes": 10**8, "runs": [{"seconds": s, "bytes": 10**8, "peak_mib": 20, "accepted": 200,
                                      "server_cpu_s": 0.1} for s in seconds]}


LIMITS = {"filesystem": "/x", "seq_write_mbps": 1000.0, "seq_write_runs": [1000.0], "file_bytes": 1,
          "files_per_s": {"1": {"write + fdatasync + close": 900.0}}, "tcp_mbps": 3000.0}


def test_limits_give_dicomaccel_and_dcmqrscp_as_a_share_of_the_ceiling():
    data = {"limits": LIMITS, "rows": [
        row("dicomaccel", ONE, [0.5, 0.4, 0.5]), row("orthanc", ONE, [2.0]), row("dcmqrscp", ONE, [0.8]),
        row("storescp-ignore", ONE, [0.25, 0.2, 0.3]),
        row("dicomaccel", FOUR, [0.25]), row("dcmqrscp", FOUR, [0.4]), row("storescp-ignore", FOUR, [0.1]),
        row("dicomaccel", "STOW-RS 1/request, 1 client", [0.4]),  # no ceiling for STOW-RS
        row("pynetdicom+dicomaccel", ONE, [0.1], section="embed")]}  # the embed workload's: no ceiling
    bullets = [line for line in report._limits(data) if "storescp --ignore" in line]
    assert bullets == [
        "- CT, C-STORE storescu, 1 association: dicomaccel 400 inst/s = 50% of storescu into storescp --ignore.",
        "- CT, C-STORE storescu, 1 association: dcmqrscp 250 inst/s = 31% of storescu into storescp --ignore.",
        "- CT, C-STORE storescu, 4 associations at once: dicomaccel 800 inst/s = 40% of storescu into "
        "storescp --ignore.",
        "- CT, C-STORE storescu, 4 associations at once: dcmqrscp 500 inst/s = 25% of storescu into "
        "storescp --ignore."]


def test_limits_give_the_c_store_rates_as_a_share_of_the_durable_floor_too():
    data = {"limits": LIMITS, "rows": [
        row("dicomaccel", ONE, [0.5, 0.4, 0.5]), row("dcmqrscp", ONE, [0.25]),
        row("cstore-floor", ONE, [0.3, 0.32, 0.34]), row("storescp-ignore", ONE, [0.1]),
        dict(row("dcmqrscp", FOUR, [0.4]), runs=[{"seconds": 0.4, "bytes": 10**8, "peak_mib": 20, "accepted": 0,
                                                 "server_cpu_s": 0.1}]),  # kept none: no share
        row("cstore-floor", FOUR, [0.2])]}
    bullets = [line for line in report._limits(data) if line.startswith("- CT")]
    assert bullets == [
        "- CT, C-STORE storescu, 1 association: dicomaccel 400 inst/s = 64% of the durable C-STORE floor.",
        "- CT, C-STORE storescu, 1 association: dicomaccel 400 inst/s = 20% of storescu into storescp --ignore.",
        "- CT, C-STORE storescu, 1 association: dcmqrscp 800 inst/s = 128% of the durable C-STORE floor.",
        "- CT, C-STORE storescu, 1 association: dcmqrscp 800 inst/s = 40% of storescu into storescp --ignore."]
    assert "cstore_floor.c (durable floor: write, fdatasync, directory fsync)" in "\n".join(report._table(data, "ingest"))


def test_a_failed_ceiling_gives_no_share():
    failed = dict(row("storescp-ignore", ONE, []), error="storescp did not listen")
    data = {"limits": LIMITS, "rows": [row("dicomaccel", ONE, [0.5]), failed]}
    assert not [line for line in report._limits(data) if "storescp --ignore" in line]
    assert "| CT | C-STORE storescu, 1 association | storescp --ignore (ceiling: discards) | failed: storescp did " \
           "not listen |" in "\n".join(report._table(data, "ingest"))


def test_the_ceiling_is_a_row_of_the_ingest_table_but_never_the_best_peer():
    data = {"rows": [row("dicomaccel", ONE, [0.5]), row("dcmqrscp", ONE, [0.8]),
                     row("storescp-ignore", ONE, [0.2]), row("orthanc", "STOW-RS 1/request, 1 client", [1.0])]}
    (ratio,) = report.ratios(data)
    assert ratio["best_peer"] == "dcmqrscp" and ratio["ratio"] == pytest.approx(1.6)
    (fastest,) = report.best_ingest(data)
    assert fastest["best_peer"] == f"dcmqrscp, {ONE}"
    assert "storescp" not in report.headline(data)
    table = report._table(data, "ingest")
    cstore = [line.split(" | ") for line in table[2:] if f"| {ONE} |" in line]
    assert [cells[2] for cells in cstore] == ["dicomaccel", "dcmqrscp", "storescp --ignore (ceiling: discards)"]
    assert cstore[-1][3] == "1000"  # 200 instances in 0.2 s


def test_the_ceiling_comes_with_every_cstore_method_and_never_with_another_workload():
    if dcmtk_program("storescu") is None:
        pytest.skip("DCMTK storescu is not installed")
    args = run.parser().parse_args(["--workloads", "stow,cstore,cget", "--cstore-associations", "1,4"])
    corpus = Corpus("ct", "CT", [Path("a.dcm")], study_uid="1.2", series_uid="1.2.3")
    ingest, retrieve = run.plan(args, [corpus], ["dicomaccel", "dcmqrscp"], Path("log.cfg"), ["storescp-ignore"])
    cstore = [m for m in ingest if m.label.startswith("C-STORE")]
    assert [m.label for m in cstore] == [ONE, FOUR]
    assert all(m.peers == ["dicomaccel", "dcmqrscp", "storescp-ignore"] and m.fresh for m in cstore)
    assert all("storescp-ignore" not in m.peers for m in ingest + retrieve if not m.label.startswith("C-STORE"))
    with pytest.raises(SystemExit):  # not a peer anyone chooses
        run.parser().parse_args(["--peers", "storescp-ignore"])


def test_the_large_instance_goes_by_c_store_too_over_one_association():
    if dcmtk_program("storescu") is None:
        pytest.skip("DCMTK storescu is not installed")
    large = Corpus("large", "large", [Path("large.dcm")], study_uid="1.2", series_uid="1.2.3")
    args = run.parser().parse_args(["--workloads", "large-upload,cstore", "--cstore-associations", "1,4"])
    ingest, _ = run.plan(args, [large], ["dicomaccel", "dcmqrscp"], Path("log.cfg"), ["cstore-floor"])
    assert [(m.label, m.peers) for m in ingest] == [
        ("STOW-RS 1 instance streamed (chunked)", ["dicomaccel"]),
        (ONE, ["dicomaccel", "dcmqrscp", "cstore-floor"])]
    args = run.parser().parse_args(["--workloads", "large-upload"])
    ingest, _ = run.plan(args, [large], ["dicomaccel", "dcmqrscp"], Path("log.cfg"), [])
    assert [m.label for m in ingest] == ["STOW-RS 1 instance streamed (chunked)"]


def test_the_ceiling_needs_the_loopback_namespace_like_dcmqrscp_and_the_floor_does_not(capsys):
    data = {"netns": False, "skipped": {}}
    floor = ["cstore-floor"] if shutil.which("gcc") or shutil.which("cc") else []
    assert run.available_peers(list(run.CEILINGS), data) == floor  # it binds 127.0.0.1 alone
    assert "network namespace" in data["skipped"]["storescp-ignore"]
    assert "orthanc or dcmqrscp among --peers" in data["skipped"]["storescp-ignore"]
    if dcmtk_program("storescp"):
        assert run.available_peers(list(run.CEILINGS), {"netns": True, "skipped": {}}) == ["storescp-ignore", *floor]


def test_its_count_is_what_it_logged_received_less_what_failed(tmp_path):
    peer = StorescpIgnorePeer(tmp_path)
    # Two forked children log at once: their messages interleave within lines.
    peer.log.write_text("INFOINFO: : Received Store Request (MsgID 1, CT)Received Store Request (MsgID 1, CT)\n\n"
                        "INFO: Received Store Request (MsgID 2, CT)\n"
                        "ERROR: Store SCP Failed: 0006:0207 DIMSE Read PDV failed\n")
    assert peer.instance_count() == 2


@pytest.mark.skipif(dcmtk_program("storescp") is None or dcmtk_program("storescu") is None,
                    reason="DCMTK storescp and storescu are not installed")
def test_storescp_ignore_acknowledges_what_storescu_sends(tmp_path):
    ct = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    corpus = Corpus("ct", "CT", [ct, ct, ct])
    log_config = tmp_path / "dcmtk-log.cfg"
    log_config.write_text(DCMTK_LOG_CONFIG)
    with StorescpIgnorePeer(tmp_path) as peer:
        with pytest.raises(PeerUnavailable):
            peer.start([ct])  # it keeps nothing, so it cannot be loaded
        t = time.perf_counter()
        peer.start([])
        # Two associations at once: storescp --fork serves them side by side.
        seconds, first = storescu(peer, corpus, log_config, associations=2)
        assert peer.instance_count() == 3
        assert 0 < first <= seconds and time.perf_counter() - t < 5
        proc = peer.proc
    assert peer.proc is None and proc.poll() is not None
    assert proc.stdout.read() == ""  # no progress dots: nothing written per PDU


@pytest.mark.skipif(dcmtk_program("storescu") is None or CStoreFloorPeer.unavailable() is not None,
                    reason="DCMTK storescu or a C compiler is missing")
def test_the_durable_floor_flushes_what_storescu_sends_and_answers_each(tmp_path):
    # Explicit VR Little Endian files, sent in that syntax (the floor accepts the first one
    # proposed; storescu would convert for another).
    files = [Path(pydicom.data.get_testdata_file(name)) for name in ("CT_small.dcm", "MR_small.dcm", "SC_rgb.dcm")]
    corpus = Corpus("ct", "CT", files)
    log_config = tmp_path / "dcmtk-log.cfg"
    log_config.write_text(DCMTK_LOG_CONFIG)
    with CStoreFloorPeer(tmp_path) as peer:
        with pytest.raises(PeerUnavailable):
            peer.start(files)  # it keeps no index, so it cannot be loaded
        peer.start([])
        seconds, first = storescu(peer, corpus, log_config, associations=2)
        assert 0 < first <= seconds
        assert peer.instance_count() == 3
        # Each file holds one whole data set as sent (storescu re-encodes: without the group
        # lengths some of these files have, so compared by content, not bytes).
        kept = {ds.SOPInstanceUID: ds for ds in map(_data_set, peer.files.iterdir())}
        sent = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, files)}
        assert kept.keys() == sent.keys()
        for uid, ds in sent.items():
            assert kept[uid].PixelData == ds.PixelData and kept[uid].PatientName == ds.PatientName


def _data_set(path: Path) -> pydicom.Dataset:
    """A file of the floor's: an Explicit VR Little Endian data set, no File Meta Information."""
    with open(path, "rb") as f:
        return pydicom.filereader.read_dataset(f, is_implicit_VR=False, is_little_endian=True)
