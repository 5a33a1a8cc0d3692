"""Smoke test of the kernel benchmark suite (``python -m benchmarks.kernels``).

Runs the suite once in quick mode (small workloads, few rounds) in a subprocess from the
repository root, as a user would, with this process's environment (so with
``DICOMACCEL_NO_EXTENSIONS=1`` only the twins run). Checks that every benchmark passed its own
result check (exit status 0), that the ratio table has a row with figures and a ratio for
every benchmark of every implementation in use, and that ``--from-json`` prints the same table
from the saved JSON. Nothing is imported from ``benchmarks``, and no timing is asserted.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dicomaccel.testing.kernels import implementations

REPO = Path(__file__).resolve().parent.parent
KERNELS = ("multipart", "frames", "encaps", "walk")
SECTIONS = {"compiled": "## compiled kernels", "twin": "## pure-Python twins",
            "ingest": "## code around the kernels"}
TIME = re.compile(r"^\d+(\.\d+)? (s|ms|µs)$")
RATIO = re.compile(r"^\d+(\.\d+)?x$")


def _kernels(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.kernels", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def _tables(stdout: str) -> dict[str, list[dict[str, str]]]:
    """Each section's rows, as {column: cell}."""
    out: dict[str, list[dict[str, str]]] = {}
    rows = header = None
    for line in stdout.splitlines():
        for impl, heading in SECTIONS.items():
            if line.startswith(heading):
                rows = out.setdefault(impl, [])
                header = None
        if rows is None or not line.startswith("| "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set(line) <= set("|- "):
            rows.append(dict(zip(header, cells)))
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("kernels") / "kernels.json"
    done = _kernels("--quick", "-q", "--json", str(path))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done, json.loads(path.read_text()), path


def _in_use() -> list[str]:
    found = [implementations(k) for k in KERNELS]
    return [impl for impl, key in (("compiled", "c"), ("twin", "py")) if all(key in f for f in found)]


def test_one_row_per_benchmark_with_a_ratio(run):
    done, data, _ = run
    tables = _tables(done.stdout)
    assert sorted(tables) == sorted([*_in_use(), "ingest"]), done.stdout[-3000:]
    assert "Benchmarks in no row" not in done.stdout, done.stdout[-3000:]
    for impl, rows in tables.items():
        if impl == "ingest":
            ours = [b for b in data["benchmarks"] if b["name"].startswith("test_scan")]
        else:
            ours = [b for b in data["benchmarks"] if re.search(rf"[\[-]{impl}\]$", b["name"])]
        # Every benchmark of ours has its row (some have two: two baselines).
        assert ours and len(rows) >= len(ours)
        for row in rows:
            assert TIME.match(row["ours"]) and TIME.match(row["baseline time"]), row
            assert RATIO.match(row["ratio"]), row
            assert row["benchmark"] and row["baseline"] and row["target"], row
    if "compiled" in tables and "twin" in tables:  # the twins' table has the compiled table's rows
        assert len(tables["compiled"]) == len(tables["twin"])


def test_json_holds_ours_and_baselines(run):
    _, data, _ = run
    assert data["kernels"]["quick"] is True
    names = {b["name"] for b in data["benchmarks"]}
    assert "test_ct_body_python_multipart" in names and "test_frame_pydicom" in names
    assert all(b["stats"]["rounds"] >= 1 and b["stats"]["min"] > 0 for b in data["benchmarks"])


def test_table_from_saved_json_is_the_same(run):
    done, _, path = run
    again = _kernels("--from-json", str(path))
    assert again.returncode == 0, again.stderr
    assert _tables(again.stdout) == _tables(done.stdout)
