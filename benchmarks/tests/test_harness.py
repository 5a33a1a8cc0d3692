"""Unit tests of the runner's own arithmetic and parsers (no server needed).

The runner as a whole is exercised end to end by tests/test_benchmark_runner.py, as a command.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks import machine, report, run
from benchmarks.clients import (PartCounter, identifiers, multipart_boundary, parse_findscu_log, parse_getscu_log,
                                parse_storescu_log, percentile, storescu_groups)
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


def test_stow_rows_are_a_share_of_the_floors_measured_beside_them():
    def row(peer, method, seconds):
        return {"section": "ingest", "corpus": "ct", "label": "CT", "method": method, "peer": peer,
                "instances": 100, "bytes": 1, "runs": [{"seconds": s, "bytes": 1, "peak_mib": 50, "accepted": 100,
                                                        "server_cpu_s": 0.15} for s in seconds]}
    lim = {"filesystem": "/x", "seq_write_mbps": 1000.0, "seq_write_runs": [1000.0], "file_bytes": 1,
           "files_per_s": {"1": {"write + fdatasync + close": 900.0}}, "tcp_mbps": 3000.0,
           "stow_floor": {"1": {"per_s": 800.0, "runs": [790.0, 800.0, 810.0], "cpu_ms": 0.4}},
           "design_floor": {"1": {"per_s": 1000.0, "runs": [1000.0], "cpu_ms": 0.45}},
           "front_end": {"1": {"per_s": 2000.0, "runs": [2000.0], "cpu_ms": 0.3}}}
    data = {"limits": lim, "rows": [row("dicomaccel", "STOW-RS 1/request, 1 client", [0.25, 0.2, 0.3]),
                                    row("orthanc", "STOW-RS 1/request, 1 client", [0.5]),
                                    row("dicomaccel", "STOW-RS 1/request, 4 clients", [0.1])]}
    text = "\n".join(report._limits(data))
    assert "| 800 requests/s, server CPU 0.4 ms/request |" in text
    assert "- CT, STOW-RS 1/request, 1 client: dicomaccel 400 inst/s = 50% of the STOW-RS floor." in text
    assert "orthanc 200 inst/s = 25% of the STOW-RS floor." in text
    assert "| 1000 requests/s, server CPU 0.45 ms/request |" in text
    # The design floor is dicomaccel's own design: only its rows are a share of it.
    assert "- CT, STOW-RS 1/request, 1 client: dicomaccel 400 inst/s = 40% of its own design in C (design floor)." in text
    assert "orthanc 200 inst/s = 20%" not in text
    # The front end alone is dicomaccel's too: a ceiling, its CPU a share of ours.
    assert "| 2000 requests/s, server CPU 0.3 ms/request |" in text and "front end alone, a ceiling" in text
    assert "- CT, STOW-RS 1/request, 1 client: dicomaccel 1.5 ms of server CPU per instance, of which its " \
           "front end alone takes 0.3 (20%)." in text
    assert text.count("front end alone takes") == 1  # not the orthanc row
    assert "4 clients" not in text  # no floor measured for 4 clients
    # With the archive alone measured too (runs before it have none), the line splits the CPU.
    lim["archive_alone"] = {"1": {"per_s": 900.0, "runs": [900.0], "cpu_ms": 0.9, "processes": 1}}
    text = "\n".join(report._limits(data))
    assert "1 client as threads of 1 process, CT (median of 1; 900) | 900 instances/s, process CPU 0.9 " \
           "ms/instance |" in text and "archive alone, a ceiling" in text
    assert "- CT, STOW-RS 1/request, 1 client: dicomaccel 1.5 ms of server CPU per instance, of which its " \
           "front end alone takes 0.3 (20%) and its archive alone takes 0.9 (60%), together 80%." in text


def test_cget_cpu_rows_are_a_multiple_of_the_framed_send(tmp_path):
    data = {"limits": {"filesystem": "/x", "seq_write_mbps": 1000.0, "seq_write_runs": [1000.0],
                       "file_bytes": 1, "files_per_s": {"1": {"write + fdatasync + close": 900.0}},
                       "tcp_mbps": 3000.0, "send_pdu": 16384, "send_cpu_ms": {"framed": 0.2, "whole": 0.1}},
            "rows": [{"section": "retrieve", "corpus": "ct", "label": "CT", "method": "C-GET STUDY, getscu",
                      "peer": "dicomaccel", "instances": 100, "bytes": 1,
                      "runs": [{"seconds": 0.1, "bytes": 1, "peak_mib": 50, "accepted": 100, "server_cpu_s": 0.03}]}]}
    text = "\n".join(report._limits(data))
    assert "as 16384 B P-DATA-TF PDUs" in text and "| 0.2 ms |" in text and "| 0.1 ms |" in text
    assert "- CT, C-GET STUDY, getscu: dicomaccel server CPU 0.3 ms/sub-operation = 1.5x the framed send's." in text
    # The measurement itself runs (a file of an odd size: the last PDU is short).
    instances = [tmp_path / "x.dcm", tmp_path / "y.dcm"]
    instances[0].write_bytes(bytes(100_001))
    instances[1].write_bytes(bytes(16372))  # exactly one PDU's fragment
    cpu = machine.send_cpu_ms(instances, 16384, rounds=3)
    assert set(cpu) == {"framed", "whole"} and all(v >= 0 for v in cpu.values())


# --- DICOMweb and C-FIND workloads ------------------------------------------------------------


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(200, 0, -1)]  # any order
    assert percentile(values, 50) == 100.0
    assert percentile(values, 99) == 198.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0, 3.0], 100) == 3.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_multipart_boundary_quoted_or_not():
    assert multipart_boundary('multipart/related; type="application/dicom"; boundary=abc123') == "abc123"
    assert multipart_boundary('multipart/related; boundary="a b;c"; type="image/jp2"') == "a b;c"
    assert multipart_boundary("application/dicom+json") is None


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_part_counter_counts_parts_across_any_chunking(size):
    body = b"".join(b"--XyZ\r\nContent-Type: application/dicom\r\n\r\n" + bytes(50) + b"\r\n" for _ in range(4))
    body += b"--XyZ--\r\n"
    counter = PartCounter("XyZ")
    for i in range(0, len(body), size):
        counter.feed(body[i:i + size])
    assert counter.closed and counter.parts == 4


def test_part_counter_without_close_delimiter_counts_what_began():
    counter = PartCounter("b")
    counter.feed(b"--b\r\n\r\nx\r\n--b\r\n\r\ny")  # cut short
    assert not counter.closed and counter.parts == 2


def test_findscu_log_is_timed_from_first_request_to_last_final_response():
    log = "\n".join([
        "10:00:00.000.000 INFO: Requesting Association",
        "10:00:00.010.000 INFO: Sending Find Request (MsgID 1)",
        "10:00:00.010.000 INFO: (0010,0010) PN [Tes*]",
        "10:00:00.011.000 INFO: Find Response: 1 (Pending)",
        "10:00:00.011.500 INFO: Find Response: 2 (Pending)",
        "10:00:00.012.000 INFO: Received Final Find Response (Success)",
        "10:00:00.012.100 INFO: Sending Find Request (MsgID 2)",
        "10:00:00.013.000 INFO: Find Response: 3 (Pending)",
        "10:00:00.014.000 INFO: Received Final Find Response (Success)",
        "10:00:00.015.000 INFO: Releasing Association",
    ])
    parsed = parse_findscu_log(log)
    assert parsed["seconds"] == pytest.approx(0.004)
    assert (parsed["requests"], parsed["finals"], parsed["success"], parsed["pending"]) == (2, 2, 2, 3)
    with pytest.raises(RuntimeError, match="Find Request"):
        parse_findscu_log("10:00:00.000.000 INFO: Requesting Association\n")


def test_qido_queries_are_fixed_ascii_and_keep_the_wildcards_literal():
    prefix = run.qido_queries("prefix", 50)
    assert prefix == run.qido_queries("prefix", 50)  # every peer and run gets the same
    assert all(q.isascii() and q.endswith("*&limit=100") and "%" not in q for q in prefix)
    leading = run.qido_queries("leading wildcard", 5)
    assert all(q.startswith("PatientName=*") and q.count("*") == 2 for q in leading)


def test_largest_instance_of_a_multiframe_corpus(tmp_path):
    files = []
    for name, size in (("a", 1), ("b", 2_000_000), ("c", 3)):
        (tmp_path / name).write_bytes(bytes(size))
        files.append(tmp_path / name)
    corpus = Corpus("multiframe", "mf", files, sop_uids=["1", "2", "3"], frames=[170, 250, 195],
                    study_uid="9", series_uid="8")
    one = run.largest(corpus)
    assert (one.files, one.sop_uids, one.frames) == ([files[1]], ["2"], [250])
    assert one.label == "multi-frame: 1 instance of 250 frames (2 MB)"
    assert run.instance_path("/dicomweb", one) == "/dicomweb/studies/9/series/8/instances/2"


def _request_row(peer, corpus, method, runs):
    return {"section": "requests", "corpus": corpus, "label": corpus, "method": method, "peer": peer,
            "instances": 0, "bytes": 0, "unit": "requests", "error": None,
            "runs": [{"peak_mib": 50, "accepted": n, "ok": n, **r} for n, r in runs]}


def test_request_rows_are_per_request_with_latency_and_share_of_loopback():
    def frames(seconds, n):
        return (n, {"seconds": seconds, "requests": n, "bytes": n * 500_000, "p50_ms": 1000 * seconds / n,
                    "p99_ms": 2000 * seconds / n, "server_cpu_s": 0.5 * seconds, "client_cpu_s": 0.1 * seconds})
    ours = _request_row("dicomaccel", "multiframe", "WADO-RS frame 1 of 250, 1 keep-alive client",
                        [frames(2.0, 2000), frames(2.0, 1000), frames(2.0, 3000)])
    theirs = _request_row("orthanc", "multiframe", "WADO-RS frame 1 of 250, 1 keep-alive client",
                          [frames(3.0, 6), frames(3.0, 3), frames(3.0, 4)])
    s = report.summary(ours)
    assert s["rate"] == pytest.approx(1000.0)  # median of 1000, 500, 1500 requests/s
    assert s["server_cpu"] == pytest.approx(1e3 * 1.0 / 2000)  # ms per request, median
    assert s["p50"] == pytest.approx(1.0) and s["p50_cell"] == "1 (0.667-2)"
    assert (s["ok"], s["requests"]) == (6000, 6000)
    data = {"rows": [ours, theirs], "limits": {"tcp_mbps": 2000.0}}
    line = next(x for x in report._request_table(data) if "| dicomaccel |" in x)
    assert "| 1000 (500-1500) | 1 (0.667-2) | 2 (1.33-4) | 500 (250-750) | 25.0% | - |" in line
    (r,) = report.ratios(data)
    assert r["ratio"] == pytest.approx(1000 / (4 / 3)) and r["unit"] == "req"
    assert "req/s" in report.headline(data)
    goals = "\n".join(report.targets(data))
    assert "| WADO-RS frame 1, native multi-frame: >= 100x Orthanc |" in goals and "750.00x" in goals
    assert "25% (500 of 2000 MB/s) | yes |" in goals


def test_qido_targets_are_latency_bounds():
    def queries(p50, p99):
        return (200, {"seconds": 1.0, "requests": 200, "bytes": 1, "p50_ms": p50, "p99_ms": p99, "matches": 40})
    data = {"rows": [
        _request_row("dicomaccel", "qido-index", "QIDO-RS studies PatientName=Smi* (prefix), limit=100, 200 searches",
                     [queries(3.0, 9.0), queries(4.0, 60.0), queries(5.0, 12.0)]),
        _request_row("dicomaccel", "qido-index", "QIDO-RS studies PatientName=*anna* (leading wildcard), limit=100, "
                     "200 searches", [queries(12.0, 40.0)])]}
    goals = report.targets(data)[2:]
    assert [g.rsplit("|", 2)[-2].strip() for g in goals] == ["yes", "yes", "**no**", "yes"]
    assert "| 12 ms |" in goals[2]
    line = next(x for x in report._request_table(data) if "Smi*" in x)
    assert "| 4 (3-5) | 12 (9-60) |" in line and "| 40 |" in line  # results per request


def test_part_counter_reads_a_reused_buffer():
    body = b"".join(b"--XyZ\r\n\r\n" + bytes(50) + b"\r\n" for _ in range(3)) + b"--XyZ--\r\n"
    counter, buffer = PartCounter("XyZ"), bytearray(16)
    for i in range(0, len(body), 7):
        piece = body[i:i + 7]
        buffer[:len(piece)] = piece
        counter.feed(buffer, len(piece))  # what follows the first n bytes is stale
    assert counter.closed and counter.parts == 3


def test_embed_rows_compare_with_the_usual_handlers_and_the_floor_of_the_same_run():
    def row(peer, method, unit, runs):
        return {"section": "embed", "label": "w", "method": method, "peer": peer, "instances": 1 if unit else 10,
                "bytes": 1, "unit": unit or "instances",
                "runs": [dict(seconds=s, handler_s=h, bytes=1, peak_mib=50, accepted=10, **({"requests": 10} if unit
                                                                                            else {}))
                         for s, h in runs]}
    frame = "C-GET FRAME 1 frame of 250, 10 requests, pynetdicom SCU"
    data = {"rows": [
        row("pynetdicom+dicomaccel", frame, "requests", [(0.2, 0.01), (0.3, 0.02), (0.25, 0.015)]),
        row("pynetdicom-usual", frame, "requests", [(1.5, 1.2), (2.0, 1.5), (1.8, 1.3)]),
        row("pynetdicom-floor", frame, "requests", [(0.2, 0.001), (0.22, 0.001), (0.21, 0.001)]),
        row("pynetdicom+dicomaccel", "C-GET STUDY, pynetdicom SCU", None, [(1.0, 0.1)]),
        row("pynetdicom-usual", "C-GET STUDY, pynetdicom SCU", None, [(1.5, 0.2)]),
    ]}
    lines = report.embed(data)
    ours = next(x for x in lines if "| pynetdicom+dicomaccel |" in x and "FRAME" in x)
    # Medians per request: 25 ms end to end, 1.5 ms in the handler; usual 180 and 130; floor 21.
    assert "| 25 | 1.5 | 50 (50-50) | 7.20x | 86.7x | 1.19 |" in ours
    text = "\n".join(lines)
    assert "| FRAME level, 1 frame: handler's own time >= 20x faster than the usual | 86.7x | yes |" in text
    assert "| FRAME level, 1 frame: end to end within 25% of pynetdicom's floor | 1.19 of the floor's time | yes |" in text
    assert "| C-GET of the CT study: >= 2x the usual handler | 1.5x (peak RSS 50 against 50 MiB) | **no** |" in text
    assert "C-STORE" not in text  # not measured: no target line


def test_postgresql_index_is_a_share_of_sqlite_and_never_the_best_peer():
    def row(peer, seconds, cpu):
        return {"section": "ingest", "corpus": "ct", "label": "CT", "method": "STOW-RS 1/request, 4 clients",
                "peer": peer, "instances": 200, "bytes": 10**8,
                "runs": [{"seconds": s, "bytes": 10**8, "peak_mib": 60, "accepted": 200, "server_cpu_s": cpu}
                         for s in seconds]}
    data = {"rows": [row("dicomaccel", [0.40, 0.40, 0.50], 0.3), row("dicomaccel-pg", [0.50, 0.50, 0.45], 0.36),
                     row("orthanc", [0.8, 0.8, 0.9], 0.6)]}
    lines = report.targets(data, report.ISSUE13_TARGETS)
    assert len(lines) == 3 and "80% (400 against 500/s" in lines[2] and lines[2].endswith("| **no** |")
    (r,) = report.ratios(data)  # against Orthanc, not against ourselves on another index
    assert r["best_peer"] == "orthanc"
    assert all(b["best_peer"].startswith("orthanc,") for b in report.best_ingest(data))


def test_cstore_associations_target_compares_with_our_one_association():
    def row(method, seconds, cpu):
        return {"section": "ingest", "corpus": "ct", "label": "CT", "method": method, "peer": "dicomaccel",
                "instances": 200, "bytes": 10**8,
                "runs": [{"seconds": s, "bytes": 10**8, "peak_mib": 60, "accepted": 200, "server_cpu_s": cpu}
                         for s in seconds]}
    data = {"rows": [row("C-STORE storescu, 1 association", [2.0, 2.0, 2.2], 0.6),
                     row("C-STORE storescu, 4 associations at once", [1.0, 1.1, 1.0], 0.7)]}
    lines = report.targets(data, report.ISSUE12_TARGETS)
    assert len(lines) == 3 and "2.00x (200 against 100/s" in lines[2] and lines[2].endswith("| yes |")


def test_ingest_rates_count_what_the_server_holds_and_a_peer_that_kept_nothing_is_no_best():
    def row(peer, method, accepted, seconds=0.1):
        return {"section": "ingest", "corpus": "ct", "label": "CT", "method": method, "peer": peer,
                "instances": 200, "bytes": 1,
                "runs": [{"seconds": seconds, "bytes": 1, "peak_mib": 50, "accepted": a, "server_cpu_s": 0.1}
                         for a in accepted]}
    data = {"rows": [row("dicomaccel", "C-STORE storescu, 4 associations at once", [200, 200, 200]),
                     row("dcmqrscp", "C-STORE storescu, 4 associations at once", [150, 160, 170], 0.05),
                     row("dicomaccel", "C-STORE storescu, 1 association", [200]),
                     row("dcmqrscp", "C-STORE storescu, 1 association", [0], 0.01)]}
    s = report.summary(data["rows"][1])
    assert s["rate"] == 3200.0  # 160 kept in 0.05 s, not the 200 sent
    assert s["server_cpu"] == 0.625  # 100 ms over 160 instances
    nothing = report.summary(data["rows"][3])
    assert nothing["rate"] == 0 and nothing["server_cpu"] is None
    versus = {r["method"]: r for r in report.ratios(data)}
    assert versus["C-STORE storescu, 4 associations at once"]["best"] == 3200.0
    assert "C-STORE storescu, 1 association" not in versus  # no peer stored anything


def test_issue9_targets_read_cpu_disk_first_and_mbps():
    def row(corpus, method, peer, seconds, cpu_s, first=None, nbytes=1):
        return {"section": "ingest" if "STOW" in method else "retrieve", "corpus": corpus, "label": corpus,
                "method": method, "peer": peer, "instances": 100, "bytes": nbytes,
                "runs": [{"seconds": seconds, "bytes": nbytes, "peak_mib": 50, "accepted": 100,
                          "server_cpu_s": cpu_s, **({"first": first} if first else {})}]}
    data = {"limits": {"seq_write_mbps": 1000.0},
            "rows": [row("ct", "STOW-RS 1/request, 1 client", "dicomaccel", 0.2, 0.1),
                     row("ct", "STOW-RS 1/request, 1 client", "orthanc", 0.5, 0.4),
                     row("multiframe", "STOW-RS 1/request, 1 client", "dicomaccel", 1.0, 1.0, nbytes=900_000_000),
                     row("ct", "C-GET STUDY, getscu", "dicomaccel", 0.05, 0.01, first=0.0025),
                     row("ct", "C-GET STUDY, getscu", "dcmqrscp", 0.1, 0.08),
                     row("multiframe", "C-GET STUDY, drain", "dicomaccel", 0.5, 1.0, nbytes=1_000_000_000)]}
    lines = {line.split(" | ")[0].lstrip("| "): line for line in report.targets(data, report.ISSUE9_TARGETS)[2:]}
    assert "| 2.50x (500 against 200/s" in lines["STOW-RS CT, 1 client: >= 3x Orthanc"]
    assert lines["STOW-RS CT, 1 client: >= 3x Orthanc"].endswith("| **no** |")
    assert "| 0.25x (1 against 4 ms) | **no** |" in lines["server CPU per CT instance stored: <= 0.15x Orthanc's"]
    assert "| 90% (900 of 1000 MB/s) | yes |" in lines["STOW-RS multi-frame: >= 80% of sequential write + fdatasync"]
    assert "| 0.12x (0.1 against 0.8 ms) | yes |" in lines["server CPU per C-GET sub-operation: <= 0.15x dcmqrscp's"]
    assert "| 2.5 ms | yes |" in lines["first instance of a C-GET: <= 3 ms"]
    assert "| 2000 MB/s (runs 2000-2000) | yes |" in lines["C-GET multi-frame to a raw draining SCU: >= 2 GB/s"]
    assert "STOW-RS CT, 4 clients: >= 3x Orthanc" not in lines  # not measured: no row


def test_descendants_follow_new_and_ended_processes():
    """The process table read once per sample finds a child and grandchild started after it
    was first read, and forgets them once they end (RssSampler relies on both)."""
    import subprocess
    import sys

    from benchmarks.peers import descendants

    me = os.getpid()
    before = descendants(me)  # reads the table: what follows starts after that
    # The child starts a grandchild, prints its PID, and both wait for stdin to close.
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys; g = subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()'],"
         " stdin=subprocess.PIPE); print(g.pid, flush=True); sys.stdin.read(); g.stdin.close(); g.wait()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        grandchild = int(child.stdout.readline())
        found = descendants(me)
        assert child.pid in found and grandchild in found
        assert descendants(child.pid) == [grandchild]
    finally:
        child.stdin.close()
        child.wait()
    after = descendants(me)
    assert child.pid not in after and grandchild not in after
    assert set(after) <= set(before)
