"""Smoke test of the end-to-end C-GET benchmark (benchmarks/cget.py) on a three-instance study.

Runs the real harness, with real servers and receivers, once; checks that the report has a row
per receiver and peer with figures, that the ratios are computed from those figures, and that
no server outlives the harness, also when it is interrupted. No timing is asserted.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

if importlib.util.find_spec("pynetdicom") is None:
    pytest.skip("pynetdicom is not installed: the harness needs it as receiver and baseline peer",
                allow_module_level=True)

from benchmarks import cget, peers  # noqa: E402

_REASONS = {name: cls.unavailable() for name, cls in peers.PEERS.items()}
AVAILABLE = [name for name, reason in _REASONS.items() if reason is None]
RECEIVERS = ["getscu", "pynetdicom"] if peers.dcmtk_program("getscu") else ["pynetdicom"]
_LISTENING = re.compile(r"^(\w+): listening on 127\.0\.0\.1:(\d+)", re.M)


def _harness(*extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "benchmarks.cget", "--ct", "3", "--multiframe", "0", "--runs", "1",
           "--peers", ",".join(AVAILABLE), *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _table(stdout: str) -> dict[tuple[str, str], dict[str, str]]:
    lines = [line for line in stdout.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        rows[cells["receiver"], cells["peer"]] = cells
    return rows


def _median(cell: str) -> float:
    return float(cell.split()[0])


@pytest.fixture(scope="module")
def run():
    done = _harness()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.parametrize("peer", list(peers.PEERS))
def test_report_has_a_row_per_receiver_for_peer(run, peer):
    if _REASONS[peer]:
        pytest.skip(f"peer {peer} unavailable: {_REASONS[peer]}")
    table = _table(run.stdout)
    for receiver in RECEIVERS:
        row = table[receiver, peer]
        assert row["workload"].startswith("CT 3 x")
        assert _median(row["instances/s"]) > 0
        assert _median(row["MB/s"]) > 0
        assert _median(row["first instance ms"]) > 0
        assert float(row["peak RSS MiB"]) > 0


def test_ratios_are_computed_from_the_medians(run):
    table = _table(run.stdout)
    baselines = [b for b in cget.BASELINES if b in AVAILABLE]
    for (receiver, peer), row in table.items():
        for base in baselines:
            expected = _median(row["instances/s"]) / _median(table[receiver, base]["instances/s"])
            shown = float(row[f"x {base}"].rstrip("x"))
            # The table rounds instances/s (3 significant figures at least); ratios use unrounded medians.
            assert shown == pytest.approx(expected, rel=0.05, abs=0.02), (receiver, peer, base)
            if peer == base:
                assert row[f"x {base}"] == "1.00x"


def test_report_ends_with_the_exact_command_line(run):
    assert run.stdout.rstrip().splitlines()[-1] == (
        f"command: python -m benchmarks.cget --ct 3 --multiframe 0 --runs 1 --peers {','.join(AVAILABLE)}")
    if "dicomaccel" in AVAILABLE and "getscu" in RECEIVERS and len(AVAILABLE) > 1:
        assert "Targets (instances/s, medians, received by getscu):" in run.stdout


def test_no_server_outlives_the_harness(run):
    started = _LISTENING.findall(run.stdout)
    assert sorted(name for name, _ in started) == sorted(AVAILABLE)
    for name, port in started:
        assert not peers.listening(int(port)), f"{name} still listens on {port}"


def test_interrupted_harness_stops_its_servers():
    cmd = [sys.executable, "-m", "benchmarks.cget", "--ct", "3", "--multiframe", "0", "--runs", "50",
           "--peers", ",".join(AVAILABLE), "--clients", "pynetdicom"]
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
    started = _LISTENING.findall(text)
    assert started, text[-2000:]
    for name, port in started:
        assert not peers.listening(int(port)), f"{name} still listens on {port} after SIGINT"


def test_parse_getscu_log_times_the_request_to_the_final_response():
    log = "\n".join([
        "23:59:59.990.000 INFO: Sending C-GET Request (MsgID 1)",
        "23:59:59.995.000 INFO: Received C-STORE Request (MsgID 1)",
        "23:59:59.998.500 INFO: Sending C-STORE Response (Success)",
        "23:59:59.999.000 INFO: Received C-GET Response (Pending)",
        "00:00:00.001.000 INFO: Received C-STORE Request (MsgID 2)",
        "00:00:00.002.000 INFO: Sending C-STORE Response (Success)",
        "00:00:00.010.250 INFO: Received C-GET Response (Success)",
        "00:00:00.010.300 INFO: Final status report from last C-GET message:",
        "00:00:00.010.310 INFO:   Number of Completed Suboperations : 2",
    ])
    seconds, first, stored, completed = cget.parse_getscu_log(log)
    assert seconds == pytest.approx(0.02025)
    assert first == pytest.approx(0.0085)
    assert (stored, completed) == (2, 2)


def test_parse_getscu_log_rejects_a_log_without_a_final_response():
    with pytest.raises(RuntimeError, match="final response"):
        cget.parse_getscu_log("10:00:00.000.000 INFO: Sending C-GET Request (MsgID 1)\n")
