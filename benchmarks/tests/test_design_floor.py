"""``benchmarks/design_floor.c``, the STOW-RS design floor: built, prepared by dicomaccel's own
archive, driven by the benchmark's STOW-RS client, and checked for doing what it claims to
measure (files published and durable, one index row each, no marker left)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess

import pytest

from benchmarks import machine
from benchmarks.clients import stow_body, stow_run
from benchmarks.peers import build_c
from dicomaccel.testing import files as dicomgen

pytestmark = pytest.mark.skipif(not (shutil.which("gcc") or shutil.which("cc")), reason="no C compiler")


@pytest.fixture
def ct_files(tmp_path):
    study, series = "1.2.3.4", "1.2.3.4.5"
    out = []
    for i in range(4):
        path = tmp_path / f"ct{i}.dcm"
        path.write_bytes(dicomgen.ct_instance(study, series, i + 1))
        out.append(path)
    return out


def test_the_template_holds_the_statements_the_index_ran_for_one_instance(tmp_path, ct_files):
    root = machine.design_template(tmp_path / "template", ct_files)
    series_dir, *statements = (root / "design.sql").read_text().splitlines()
    assert series_dir == "instances/1.2.3.4/1.2.3.4.5" and (root / series_dir).is_dir()
    # The instance row names its UID and path as parameters; the series count is updated.
    assert any(s.startswith("INSERT INTO instances") and "?1" in s and "?2" in s for s in statements)
    assert any("series" in s for s in statements)
    with sqlite3.connect(root / "index.sqlite3") as conn:
        assert conn.execute("SELECT count(*) FROM instances").fetchone()[0] == 2


def test_design_floor_publishes_indexes_and_answers_each_request(tmp_path, ct_files):
    try:
        binary = build_c("design_floor.c", tmp_path, libs=("-lsqlite3",))
    except subprocess.CalledProcessError:
        pytest.fail("design_floor.c did not build: is libsqlite3-dev installed (scripts/test.sh)?")
    root = machine.design_template(tmp_path / "template", ct_files[:2])
    proc = subprocess.Popen([str(binary), str(root)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().split()[1])
        bodies = [(stow_body([f]), 0) for f in ct_files]
        stow_run(port, "/", bodies, 2)
    finally:
        proc.kill()
        proc.wait()
    with sqlite3.connect(root / "index.sqlite3") as conn:
        rows = conn.execute("SELECT path, sop_instance_uid FROM instances").fetchall()
        (count,) = conn.execute("SELECT n_instances FROM series").fetchone()
    assert len(rows) == 2 + len(bodies) and count == 2 + len(bodies)
    published = sorted(p for p in (root / "instances/1.2.3.4/1.2.3.4.5").iterdir())
    assert sorted(root / path for path, _ in rows) == published
    # Each new file holds a request's body (the design floor stores bodies unparsed).
    stored = {p.read_bytes() for p in published}
    assert all(body in stored for body, _ in bodies)
    assert os.listdir(root / "tmp") == []  # every marker dropped after its flush


def test_design_floor_runs_check_the_index(tmp_path, ct_files):
    bodies = [(stow_body([f]), 0) for f in ct_files]
    out = machine.design_floor(tmp_path, ct_files[:2], bodies, clients=(1,), runs=1)
    assert set(out) == {"1"} and out["1"]["per_s"] > 0 and len(out["1"]["runs"]) == 1
