"""``benchmarks/front_end.py``, the STOW-RS front end alone: what ``dicomaccel serve`` answers
HTTP with answers the benchmark's STOW-RS client as the server would, and keeps nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import requests

from benchmarks import machine
from benchmarks.clients import STOW_CTYPE, stow_body
from benchmarks.front_end import PATH
from benchmarks.peers import REPO
from dicomaccel.testing import files as dicomgen


def _bodies(tmp_path, n):
    out = []
    for i in range(n):
        path = tmp_path / f"ct{i}.dcm"
        path.write_bytes(dicomgen.ct_instance("1.2.3.4", "1.2.3.4.5", i + 1, 16, 16))
        out.append((stow_body([path]), 0))
    return out


def test_the_front_end_answers_a_store_instances_response_and_writes_nothing(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.front_end", str(tmp_path / "unused")],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().split()[1])
        body, _ = _bodies(tmp_path, 1)[0]
        resp = requests.post(f"http://127.0.0.1:{port}{PATH}", data=body, timeout=30,
                             headers={"Content-Type": STOW_CTYPE, "Accept": "application/dicom+json"})
        assert resp.status_code == 200
        stored = json.loads(resp.content)["00081199"]["Value"]
        assert len(stored) == 1 and stored[0]["00081155"]["Value"] == ["2.25.1"]
        # The application's own checks still run: a body that is not multipart is refused.
        bad = requests.post(f"http://127.0.0.1:{port}{PATH}", data=b"x", timeout=30,
                            headers={"Content-Type": "application/dicom"})
        assert bad.status_code == 415
        # What serve composes is in front of it: the operations routes answer.
        health = requests.get(f"http://127.0.0.1:{port}/health", timeout=30)
        assert health.status_code == 200 and health.json() == {"status": "ok"}
    finally:
        proc.kill()
        proc.wait()
    assert not (tmp_path / "unused").exists()


def test_front_end_runs_give_a_rate_and_cpu_per_client_count(tmp_path):
    out = machine.front_end(tmp_path, _bodies(tmp_path, 20), clients=(1, 2), runs=1)
    assert set(out) == {"1", "2"}
    # Every run stored every instance (machine.front_end checks each response), once per run.
    assert all(len(v["runs"]) == 1 for v in out.values())
