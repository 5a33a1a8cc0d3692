"""dicomaccel.walk (the top-level walk of a data set), both implementations, against pydicom.

What is measured: the walk the header scan makes of every stored instance, on pydicom's
``CT_small.dcm`` (a CT from a scanner: 257 top-level elements before its Pixel Data, private
ones and sequences included) held in memory, from the first element after its File Meta
Information to the Pixel Data header. Baseline: ``pydicom.dcmread(stop_before_pixels=True)``
of the same file, which reads those elements without decoding their values.
"""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicomaccel.archive.ingest import _WANTED, _scan_meta, _Scan

KERNEL = "walk"


@pytest.fixture(scope="module")
def ct_small() -> tuple[bytes, int]:
    data = open(get_testdata_file("CT_small.dcm"), "rb").read()
    return data, _scan_meta(_Scan(data, len(data)))[1]


def test_walk(benchmark, impl, ct_small):
    data, start = ct_small
    pixel = benchmark(lambda: impl.walk(data, start, len(data), True, True, _WANTED, {}))
    assert pixel[0] == 0x7FE00010


def test_pydicom_walk(benchmark, ct_small):
    ds = benchmark(lambda: pydicom.dcmread(io.BytesIO(ct_small[0]), stop_before_pixels=True))
    assert ds.Rows == 128
