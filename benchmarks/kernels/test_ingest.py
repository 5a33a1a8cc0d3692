"""The ingest header scan (``dicomaccel.archive.ingest.scan``) with and without the IOD check,
against pydicom reading the same header.

What is measured: what the archive does with every stored instance before indexing it, on one
CT of 512 x 512 x 16 bit (0.5 MB) held in memory: walk the File Meta and top-level data set to
the Pixel Data header, and, with ``validate=True``, check the top-level attributes against the
CT Image IOD (PS3.3 A.3). The difference of the two is the IOD check's cost per instance.
Baseline: ``pydicom.dcmread(stop_before_pixels=True)`` of the same bytes. The scan walks the
data set with the walk kernel in use (compiled, or the twin with ``DICOMACCEL_NO_EXTENSIONS=1``);
the rest of it is plain Python (test_walk.py measures the walk of a larger header alone).
"""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomaccel.archive.ingest import scan
from dicomaccel.testing.files import ct_instance

from . import workloads as w


@pytest.fixture(scope="module")
def ct() -> bytes:
    rows = 64 if w.IS_QUICK else 512
    return ct_instance(generate_uid(), generate_uid(), 1, rows, rows)


def test_scan(benchmark, ct):
    header = benchmark(scan, ct)
    assert header.rows and not header.problems


def test_scan_and_validate(benchmark, ct):
    header = benchmark(scan, ct, validate=True)
    assert header.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2" and header.problems == ()


def test_pydicom_header(benchmark, ct):
    ds = benchmark(lambda: pydicom.dcmread(io.BytesIO(ct), stop_before_pixels=True))
    assert ds.Rows == (64 if w.IS_QUICK else 512)
