"""Smoke test of the benchmark runner (``python -m benchmarks run``) on a tiny corpus.

Runs the real command against dicomaccel alone (real server, real STOW-RS, getscu, pynetdicom
and raw clients, real FRAME-level C-GET, a streamed large upload, WADO-RS frames and study,
QIDO-RS on a stored and on a prebuilt index, findscu) with one run per measurement, then checks the report, the JSON and the charts it writes, and that no server
outlives it. The runner is only ever run as a command: tests/ and benchmarks/ do not import
each other (the runner's own unit tests are in benchmarks/tests/). No timing is asserted.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.machine import page_reporting
from dicomaccel.testing import dcmtk_program

REPO = Path(__file__).resolve().parent.parent

if importlib.util.find_spec("pynetdicom") is None:
    pytest.skip("pynetdicom is not installed: the harness needs it as a client", allow_module_level=True)

CHARTS = importlib.util.find_spec("matplotlib") is not None
ARGS = ["--peers", "dicomaccel", "--ct", "3", "--multiframe", "1", "--j2k", "1", "--j2k-frames", "12",
        "--pydicom-data", "6", "--runs", "1", "--stow-batch", "1,20", "--stow-clients", "1,4",
        "--large-size", "40M",
        # every workload, the DICOMweb and C-FIND ones (not in the default list) at tiny sizes
        "--workloads", "stow,cstore,cget,frame,large-upload,wado-frame,wado-study,qido,cfind",
        "--http-seconds", "0.2", "--qido-index", "400", "--qido-shared", "80", "--qido-queries", "5",
        "--cfind-requests", "3"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    cache = tmp_path_factory.mktemp("cache")
    # A 1-instance multi-frame corpus of the real size would take seconds to write; the harness
    # cycles the frame counts, so --multiframe 1 is one 170-frame (89 MB) instance.
    cmd = [sys.executable, "-m", "benchmarks", "run", *ARGS, "--out", str(out), "--cache-dir", str(cache),
           *([] if CHARTS else ["--no-charts"])]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, out, json.loads((out / "results.json").read_text())


def test_every_workload_has_a_measured_row_for_dicomaccel(run):
    _, _, data = run
    methods = {(r["corpus"], r["method"]) for r in data["rows"]}
    # CT of 3: batches of 1 (1 and 3 clients) and of 3 (1 client); storescu is not for dicomaccel.
    assert {m for c, m in methods if c == "ct" and m.startswith("STOW")} == {
        "STOW-RS 1/request, 1 client", "STOW-RS 1/request, 3 clients", "STOW-RS 3/request, 1 client"}
    clients = ["getscu", "pynetdicom", "drain"] if dcmtk_program("getscu") else ["pynetdicom", "drain"]
    for corpus in ("ct", "multiframe", "j2k"):
        for level in ("STUDY", "SERIES"):
            for client in clients:
                assert (corpus, f"C-GET {level}, {client}") in methods
    assert ("large", "STOW-RS 1 instance streamed (chunked)") in methods
    if dcmtk_program("storescu"):
        assert ("large", "C-STORE storescu, 1 association") in methods
    for row in data["rows"]:
        # and, beside the C-STORE rows, the durable floor (a C program: it needs no namespace)
        assert row["peer"] == "dicomaccel" or (row["peer"] == "cstore-floor" and row["method"].startswith("C-STORE"))
        if row["corpus"] == "pydicom-data":
            continue  # real files: some are refused, which the accepted count records
        assert row["error"] is None, row
        (measured,) = row["runs"]
        assert measured["seconds"] > 0 and measured["peak_mib"] > 0
        assert measured["server_cpu_s"] >= 0 and measured["client_cpu_s"] >= 0
        if row["unit"] == "requests":
            assert measured["requests"] > 0 and measured["accepted"] == measured["requests"], row
        else:
            assert measured["accepted"] == row["instances"], row


def test_dicomweb_and_cfind_workloads_have_rows(run):
    _, _, data = run
    methods = {(r["section"], r["corpus"], r["method"].split(",")[0]) for r in data["rows"]}
    assert ("wado", "ct", "WADO-RS study") in methods
    # the multi-frame corpus of 1 instance has 170 frames: frame 1 and the middle one
    assert {m for s, c, m in methods if c == "multiframe" and m.startswith("WADO")} == {
        "WADO-RS frame 1 of 170", "WADO-RS frame 86 of 170"}
    assert ("requests", "j2k", "WADO-RS frame 1 of 12") in methods
    for corpus in ("qido-shared", "qido-index"):  # 80 instances stored over STOW-RS; 400 rows built directly
        searches = [r for r in data["rows"] if r["corpus"] == corpus]
        assert [r["method"].split(" (")[1].split(")")[0] for r in searches] == ["prefix", "leading wildcard"]
        for row in searches:
            (measured,) = row["runs"]
            assert measured["requests"] == 5 and 0 < measured["p50_ms"] <= measured["p99_ms"]
    frame = next(r for r in data["rows"] if r["method"].startswith("WADO-RS frame 1 of 170"))
    assert frame["runs"][0]["bytes"] >= 512 * 512 * 2 * frame["runs"][0]["requests"]
    if dcmtk_program("findscu"):
        (cfind,) = [r for r in data["rows"] if r["method"].startswith("C-FIND STUDY")]
        assert cfind["runs"][0]["requests"] == 3 and cfind["runs"][0]["matches"] == 3  # CT, multi-frame, J2K
    else:
        assert "cfind" in data["skipped"]


def test_pydicom_data_accepted_counts_are_recorded(run):
    _, _, data = run
    rows = [r for r in data["rows"] if r["corpus"] == "pydicom-data"]
    assert rows and all(r["instances"] == 6 for r in rows)
    for row in rows:
        assert 0 < row["runs"][0]["accepted"] <= 6


def test_frame_level_outcome_is_recorded(run):
    _, _, data = run
    outcome = data["frame_probe"]["dicomaccel"]
    assert outcome["outcome"]
    assert outcome["supported"], outcome
    frame_rows = [r for r in data["rows"] if r["section"] == "frame"]
    assert {r["corpus"] for r in frame_rows} == {"multiframe", "j2k"}
    # every 10th frame of 170 frames and of 12 frames: one new instance per source instance
    assert all(r["runs"][0]["accepted"] == 1 for r in frame_rows)
    latency = {(r["corpus"], r["method"].split(" of ")[0]) for r in data["rows"] if r["section"] == "latency"}
    assert latency == {(c, m) for c in ("multiframe", "j2k")
                       for m in ("FRAME 1 frame", "FRAME 10 frames", "IMAGE whole instance")}


def test_report_has_machine_versions_corpus_and_every_table(run):
    _, out, data = run
    md = (out / "report.md").read_text()
    for heading in ("## Machine", "## Versions", "## Limits of this machine", "## Corpus", "## Ingest",
                    "## Retrieve (C-GET)", "## How it was measured"):
        assert heading in md
    assert data["limits"]["seq_write_mbps"] > 0 and data["limits"]["tcp_mbps"] > 0
    assert "of sequential write + fdatasync" in md  # the multi-frame STOW-RS rows
    assert data["command"].startswith("python -m benchmarks run --peers dicomaccel")
    assert data["command"] in md
    assert "TCP_NODELAY=1" in md
    # Where the guest hands free memory back to its host, how much each run did is shown.
    if page_reporting() is not None:
        assert all("reported_mib" in r for row in data["rows"] for r in row["runs"])
        assert "| free page reporting (virtio-balloon) |" in md and "MiB reported per run" in md
    assert "### FRAME level against whole-instance retrieval" in md
    assert "## Requests: WADO-RS frames, C-FIND, QIDO-RS" in md and "## Retrieve (WADO-RS)" in md
    assert "## Targets of issue 11" in md and "of loopback TCP." in md
    # One table line per row of the JSON (plus headers), each showing its one run's rate: for
    # ingest, of the instances the server holds (pydicom-data has one it refuses).
    for row in data["rows"]:
        run = row["runs"][0]
        moved = run["requests"] if row["unit"] == "requests" else \
            min(run["accepted"], row["instances"]) if row["section"] == "ingest" else row["instances"]
        rate = moved / run["seconds"]
        shown_as = {"cstore-floor": "cstore_floor.c (durable floor"}.get(row["peer"], f"{row['peer']} | ")
        line = next(line for line in md.splitlines()
                    if line.startswith(f"| {row['label']} | {row['method']} | {shown_as}"))
        shown = float(line.split(" | ")[3])
        assert shown == pytest.approx(rate, rel=0.01, abs=0.01), (line, rate)
    if CHARTS:
        pngs = sorted(p.name for p in out.glob("*.png"))
        assert "ingest-throughput.png" in pngs and "retrieve-memory.png" in pngs
        for png in out.glob("*.png"):
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"]({png.name})" in md


_SERVER = re.compile(r"^(\w+): C-GET SCP on 127\.0\.0\.1:(\d+) \(pid (\d+)\)", re.M)
_INDEX_SERVER = re.compile(r"^(dicomaccel) \(index of \d+ rows\): HTTP on 127\.0\.0\.1:(\d+) \(pid (\d+)\)", re.M)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie is gone too; the harness reaps its children, so this should not be needed.
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"


def test_no_server_outlives_the_harness(run):
    done, _, _ = run
    started = _SERVER.findall(done.stdout)
    assert [name for name, _, _ in started] == ["dicomaccel"]
    prefilled = _INDEX_SERVER.findall(done.stdout)  # the QIDO-RS server on the index built directly
    assert len(prefilled) == 1
    for name, port, pid in started + prefilled:
        assert _gone(int(pid)), f"{name} (pid {pid}) still runs"
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", int(port)), timeout=2).close()


def test_interrupted_harness_stops_its_servers(tmp_path):
    cmd = [sys.executable, "-m", "benchmarks", "run", "--peers", "dicomaccel", "--ct", "3", "--multiframe", "0",
           "--j2k", "0", "--pydicom-data", "0", "--workloads", "cget", "--clients", "pynetdicom", "--runs", "500",
           "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    out = []
    try:
        for line in proc.stdout:
            out.append(line)
            if " run 1: " in line:
                break
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(out) + rest
    assert proc.returncode != 0
    started = _SERVER.findall(text)
    assert started, text[-2000:]
    for name, port, pid in started:
        assert _gone(int(pid)), f"{name} (pid {pid}) still runs after SIGINT"
    assert not (tmp_path / "out" / "report.md").exists()
