"""``benchmarks/archive_alone.py``, the archive alone: it stores every instance through the
blocking API, durably, into an archive that holds them afterwards, shares that archive among
its processes as serve's workers do, and fails a run it cannot complete."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks import machine
from benchmarks.archive_alone import store_all
from benchmarks.peers import REPO
from dicomaccel.archive import Archive
from dicomaccel.testing import files as dicomgen


def _files(tmp_path, n, first=1):
    out = []
    for i in range(first, first + n):
        path = tmp_path / f"ct{i}.dcm"
        path.write_bytes(dicomgen.ct_instance("1.2.3.4", "1.2.3.4.5", i, 16, 16))
        out.append(path)
    return out


def test_the_child_stores_its_share_when_told_and_reports_its_cpu(tmp_path):
    files = _files(tmp_path, 12)
    Archive(tmp_path / "a").close()
    child = subprocess.Popen([sys.executable, "-m", "benchmarks.archive_alone", str(tmp_path / "a"), "3",
                              *map(str, files)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    with Archive(tmp_path / "a", recover=False) as archive:  # recovering would take the child's files
        assert archive.find() == []  # nothing is stored before it is told to go
    out, _ = child.communicate("go\n", timeout=120)
    assert child.returncode == 0
    result = json.loads(out)
    assert result["stored"] == 12 and result["seconds"] > 0 and result["cpu_s"] > 0
    with Archive(tmp_path / "a") as archive:
        stored = archive.find()
        assert len(stored) == 12
        assert {open(r.path, "rb").read() for r in stored} == {f.read_bytes() for f in files}


def test_a_corpus_that_repeats_an_instance_is_refused(tmp_path):
    blob = _files(tmp_path, 1)[0].read_bytes()
    with Archive(tmp_path / "a") as archive, pytest.raises(RuntimeError, match="already stored"):
        store_all(archive, [blob, blob], 1)


def test_archive_alone_runs_give_a_rate_and_cpu_per_client_count(tmp_path):
    out = machine.archive_alone(tmp_path / "work", _files(tmp_path, 10), clients=(1, 3), runs=1, workers=2)
    assert set(out) == {"1", "3"}
    assert out["1"]["processes"] == 1 and out["3"]["processes"] == 2
    assert all(len(v["runs"]) == 1 and v["per_s"] > 0 and v["cpu_ms"] > 0 for v in out.values())


def test_a_run_that_cannot_store_everything_fails(tmp_path):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not DICOM")
    with pytest.raises(RuntimeError, match="archive alone failed"):
        machine.archive_alone(tmp_path / "work", [*_files(tmp_path, 3), bad], clients=(2,), runs=1, workers=2)
    # What the failed run wrote is emptied like every run's, not left behind.
    assert all(f.stat().st_size == 0 for f in (tmp_path / "work").rglob("*") if f.is_file())
