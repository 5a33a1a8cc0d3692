"""``benchmarks/archive_alone.py``, the archive alone: it stores every instance through the
blocking API, durably, into an archive that holds them afterwards, and refuses a corpus it
cannot store whole."""

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


def _files(tmp_path, n):
    out = []
    for i in range(n):
        path = tmp_path / f"ct{i}.dcm"
        path.write_bytes(dicomgen.ct_instance("1.2.3.4", "1.2.3.4.5", i + 1, 16, 16))
        out.append(path)
    return out


def test_the_child_stores_every_instance_and_reports_its_cpu(tmp_path):
    files = _files(tmp_path, 12)
    done = subprocess.run([sys.executable, "-m", "benchmarks.archive_alone", str(tmp_path / "a"), "3",
                           *map(str, files)], cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(done.stdout)
    assert result["stored"] == 12 and result["seconds"] > 0 and result["cpu_s"] > 0
    with Archive(tmp_path / "a") as archive:
        stored = {r.sop_instance_uid for r in archive.find()}
        assert len(stored) == 12
        record = archive.find()[0]
        assert open(record.path, "rb").read() in {f.read_bytes() for f in files}


def test_a_corpus_that_repeats_an_instance_is_refused(tmp_path):
    blob = _files(tmp_path, 1)[0].read_bytes()
    with pytest.raises(RuntimeError, match="already stored"):
        store_all(str(tmp_path / "a"), [blob, blob], 1)


def test_archive_alone_runs_give_a_rate_and_cpu_per_client_count(tmp_path):
    out = machine.archive_alone(tmp_path / "work", _files(tmp_path, 10), clients=(1, 2), runs=1)
    assert set(out) == {"1", "2"}
    assert all(len(v["runs"]) == 1 and v["per_s"] > 0 and v["cpu_ms"] > 0 for v in out.values())
