"""The STOW-RS floor, ``benchmarks/floor.c``: it answers each request once the body is durable,
and does with the stored file's pages what dicomaccel does (``peers.floor_page_cache``)."""

from __future__ import annotations

import http.client
import subprocess
from pathlib import Path

import pydicom.data
import pytest

from benchmarks.peers import build_c
from dicomaccel.testing import resident_pages


@pytest.mark.parametrize("mode", ["keep", "drop"])
def test_floor_stores_each_body_and_drops_its_pages_when_told(tmp_path, mode):
    binary = build_c("floor.c", tmp_path)
    if binary is None:
        pytest.skip("no C compiler to build benchmarks/floor.c")
    files = tmp_path / "files"
    files.mkdir()
    body = Path(pydicom.data.get_testdata_file("CT_small.dcm")).read_bytes()
    proc = subprocess.Popen([str(binary), str(files), mode], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().split()[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(2):  # keep-alive: the second request on the same connection
            conn.request("POST", "/", body, {"Content-Type": "application/dicom"})
            answer = conn.getresponse()
            assert answer.status == 200 and answer.read() == b"{}"
        conn.close()
    finally:
        proc.kill()
        proc.wait()
    stored = sorted(files.iterdir())
    for path in stored:  # before reading them back, which would cache them
        cached, pages = resident_pages(path)
        assert cached == (0 if mode == "drop" else pages)
    assert [p.read_bytes() for p in stored] == [body, body]


def test_floor_refuses_an_unknown_mode(tmp_path):
    binary = build_c("floor.c", tmp_path)
    if binary is None:
        pytest.skip("no C compiler to build benchmarks/floor.c")
    done = subprocess.run([str(binary), str(tmp_path), "evict"], capture_output=True, text=True, timeout=10)
    assert done.returncode == 2 and "usage: floor DIRECTORY [keep|drop]" in done.stderr
