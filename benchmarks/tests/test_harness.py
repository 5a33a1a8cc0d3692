"""Unit tests of the runner's own arithmetic and parsers (no server needed).

The runner as a whole is exercised end to end by tests/test_benchmark_runner.py, as a command.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import report, run
from benchmarks.clients import identifiers, parse_getscu_log, parse_storescu_log, storescu_groups
from benchmarks.corpus import Corpus


def test_ratio_is_against_the_fastest_other_peer():
    row = lambda peer, seconds: {"section": "retrieve", "label": "w", "method": "m", "peer": peer,  # noqa: E731
                                 "instances": 10, "bytes": 1000,
                                 "runs": [{"seconds": s, "bytes": 1000, "first": 0.1, "peak_mib": 50,
                                           "accepted": 10} for s in seconds]}
    data = {"rows": [row("dicomaccel", [1.0, 2.0, 1.0]), row("orthanc", [4.0, 4.0, 5.0]),
                     row("dcmqrscp", [2.0, 2.0, 8.0])]}
    (r,) = report.ratios(data)
    assert r["best_peer"] == "dcmqrscp"
    assert r["ratio"] == pytest.approx(10.0 / 5.0)  # median 10 inst/s over median 5 inst/s
    assert "**2.00x**" in report.headline(data)


def test_frame_latency_is_compared_with_each_peers_whole_instance():
    def row(method, peer, seconds):
        return {"section": "latency", "label": "mf", "method": method, "peer": peer, "instances": 1,
                "bytes": 1, "runs": [{"seconds": s} for s in seconds]}
    data = {"rows": [row("FRAME 1 frame of 9, raw SCU", "dicomaccel", [0.002, 0.004, 0.003]),
                     row("IMAGE whole instance of 9 frames, raw SCU", "dicomaccel", [0.03]),
                     row("IMAGE whole instance of 9 frames, raw SCU", "dcmqrscp", [0.09, 0.12, 0.3])]}
    (line,) = report.latency(data)[2:]
    assert line == "| mf | FRAME 1 frame of 9, raw SCU | 3 | 10.0x dicomaccel whole (30 ms), 40.0x dcmqrscp whole (120 ms) |"


def test_ingest_configs_collapse_what_the_corpus_size_makes_identical():
    assert run.ingest_configs(200, [1, 20], [1, 4]) == [(1, 1), (1, 4), (20, 1), (20, 4)]
    assert run.ingest_configs(4, [1, 20], [1, 4]) == [(1, 1), (1, 4), (4, 1)]


def test_storescu_log_is_timed_from_first_request_to_last_response():
    log = "\n".join([
        "23:59:59.900.000 INFO: Requesting Association",
        "23:59:59.990.000 INFO: Sending Store Request (MsgID 1, CT)",
        "23:59:59.995.500 INFO: Received Store Response (Success)",
        "00:00:00.001.000 INFO: Sending Store Request (MsgID 2, CT)",
        "00:00:00.010.000 INFO: Received Store Response (Failed: ...)",
    ])
    seconds, first = parse_storescu_log(log)
    assert seconds == pytest.approx(0.020)
    assert first == pytest.approx(0.0055)
    with pytest.raises(RuntimeError, match="no Store Request"):
        parse_storescu_log("10:00:00.000.000 INFO: Requesting Association\n")


def test_getscu_log_counts_stored_and_completed():
    log = "\n".join([
        "10:00:00.000.000 INFO: Sending C-GET Request (MsgID 1)",
        "10:00:00.002.000 INFO: Sending C-STORE Response (Success)",
        "10:00:00.003.000 INFO: Sending C-STORE Response (Success)",
        "10:00:00.004.000 INFO: Received C-GET Response (Pending)",
        "10:00:00.005.000 INFO: Received C-GET Response (Success)",
        "10:00:00.005.000 INFO:   Number of Completed Suboperations : 2",
    ])
    seconds, first, stored, completed = parse_getscu_log(log)
    assert (seconds, first, stored, completed) == (pytest.approx(0.005), pytest.approx(0.002), 2, 2)


def test_storescu_groups_by_compressed_transfer_syntax():
    corpus = Corpus("x", "x", [Path("a"), Path("b"), Path("c")],
                    syntaxes=["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2"])
    groups = storescu_groups(corpus)
    assert groups == [([], [Path("a"), Path("c")]), (["-xv"], [Path("b")])]


def test_identifiers_per_level():
    corpus = Corpus("x", "x", [Path("a"), Path("b")], sop_uids=["1.1", "1.2"], study_uid="9", series_uid="8")
    (study,) = identifiers(corpus, "STUDY")
    assert study.QueryRetrieveLevel == "STUDY" and "SeriesInstanceUID" not in study
    assert [q.SOPInstanceUID for q in identifiers(corpus, "IMAGE")] == ["1.1", "1.2"]
    frames = identifiers(corpus, "FRAME", [[1], [2, 3]])
    assert [q.SOPInstanceUID for q in frames] == ["1.1", "1.2"]
    assert list(frames[1].SimpleFrameList) == [2, 3]


def test_stow_rows_are_a_share_of_the_floor_measured_beside_them():
    def row(peer, method, seconds):
        return {"section": "ingest", "corpus": "ct", "label": "CT", "method": method, "peer": peer,
                "instances": 100, "bytes": 1, "runs": [{"seconds": s, "bytes": 1, "peak_mib": 50, "accepted": 100}
                                                       for s in seconds]}
    lim = {"filesystem": "/x", "seq_write_mbps": 1000.0, "seq_write_runs": [1000.0], "file_bytes": 1,
           "files_per_s": {"1": {"write + fdatasync + close": 900.0}}, "tcp_mbps": 3000.0,
           "stow_floor": {"1": {"per_s": 800.0, "runs": [790.0, 800.0, 810.0], "cpu_ms": 0.4}}}
    data = {"limits": lim, "rows": [row("dicomaccel", "STOW-RS 1/request, 1 client", [0.25, 0.2, 0.3]),
                                    row("orthanc", "STOW-RS 1/request, 1 client", [0.5]),
                                    row("dicomaccel", "STOW-RS 1/request, 4 clients", [0.1])]}
    text = "\n".join(report._limits(data))
    assert "| 800 requests/s, server CPU 0.4 ms/request |" in text
    assert "- CT, STOW-RS 1/request, 1 client: dicomaccel 400 inst/s = 50% of the STOW-RS floor." in text
    assert "orthanc 200 inst/s = 25% of the STOW-RS floor." in text
    assert "4 clients" not in text  # no floor measured for 4 clients
