"""dicomaccel.multipart (``MultipartScanner``), both implementations, against its baselines.

What is measured: scanning a STOW-RS request body (PS3.18 §10.5, ``multipart/related``) fed in
64 KiB chunks, every event touched, until ``finish()``. That is the per-request parsing cost
of a STOW-RS server, so it is compared with what a Python server would otherwise use:
python-multipart's ``MultipartParser`` over the same chunks, and, as the speed limit of
delimiter search with no streaming at all, a ``bytes.find`` loop over the whole body held in
memory. Every benchmark checks the parse (part count, data bytes) so that a broken kernel
fails instead of looking fast.
"""

from __future__ import annotations

import pytest

from . import workloads as w

KERNEL = "multipart"

CT = "multipart: CT parts, 64 KiB chunks"
NEAR_MISS = "multipart: near-miss delimiters"
SMALL = "multipart: 2 KiB parts"
MID = "multipart: one 64 KiB feed inside a part"


def _info(benchmark, body: w.Body) -> None:
    benchmark.extra_info.update(bytes=len(body.body), parts=body.parts)


@pytest.mark.benchmark(group=CT)
def test_ct_body(benchmark, impl, ct_body):
    _info(benchmark, ct_body)
    assert benchmark(w.scan, impl, ct_body.chunks) == (ct_body.parts, ct_body.data_bytes)


@pytest.mark.benchmark(group=CT)
def test_ct_body_python_multipart(benchmark, ct_body):
    _info(benchmark, ct_body)
    assert benchmark(w.python_multipart, ct_body.chunks) == (ct_body.parts, ct_body.data_bytes)


@pytest.mark.benchmark(group=CT)
def test_ct_body_find_loop(benchmark, ct_body):
    _info(benchmark, ct_body)
    # One dash-boundary to open, one delimiter after each part (the last one is the close).
    assert benchmark(w.find_loop, ct_body.body) == ct_body.parts + 1


@pytest.mark.benchmark(group=NEAR_MISS)
def test_near_miss(benchmark, impl, near_miss_body):
    """Ours on the adversarial body; its baseline is a fixed 500 MB/s floor (table.py)."""
    _info(benchmark, near_miss_body)
    assert benchmark(w.scan, impl, near_miss_body.chunks) == (1, near_miss_body.data_bytes)


@pytest.mark.benchmark(group=NEAR_MISS)
def test_near_miss_python_multipart(benchmark, near_miss_body):
    _info(benchmark, near_miss_body)
    assert benchmark(w.python_multipart, near_miss_body.chunks) == (1, near_miss_body.data_bytes)


@pytest.mark.benchmark(group=SMALL)
def test_small_parts(benchmark, impl, small_parts_body):
    """Per-part cost: headers and delimiters every 2 KiB."""
    _info(benchmark, small_parts_body)
    expected = (small_parts_body.parts, small_parts_body.data_bytes)
    assert benchmark(w.scan, impl, small_parts_body.chunks) == expected


@pytest.mark.benchmark(group=SMALL)
def test_small_parts_python_multipart(benchmark, small_parts_body):
    _info(benchmark, small_parts_body)
    expected = (small_parts_body.parts, small_parts_body.data_bytes)
    assert benchmark(w.python_multipart, small_parts_body.chunks) == expected


@pytest.mark.benchmark(group=MID)
def test_mid_part_feed(benchmark, impl, mid_chunk):
    """One chunk just read from a socket (cache-hot), fed to a scanner inside a part's data:
    the steady-state cost per chunk of a large instance."""
    scanner = w.scanner_inside_a_part(impl)
    events = benchmark(scanner.feed, mid_chunk)
    assert events and all(kind == 2 for kind, _ in events)
    # A scanner may hold back a tail that could start a delimiter; in steady state what it
    # releases per feed is one chunk's worth.
    assert abs(sum(len(data) for _, data in events) - len(mid_chunk)) < len(w.DELIMITER)


@pytest.mark.benchmark(group=MID)
def test_mid_part_write_python_multipart(benchmark, mid_chunk):
    seen: list[int] = []
    parser = w.python_multipart_inside_a_part(seen)
    benchmark(parser.write, mid_chunk)
    seen.clear()
    assert parser.write(mid_chunk) == len(mid_chunk)
    assert abs(sum(seen) - len(mid_chunk)) < len(w.DELIMITER) + 2


@pytest.mark.benchmark(group=MID)
def test_mid_part_find(benchmark, mid_chunk):
    """Baseline: searching the same 64 KiB for the delimiter, and nothing else."""
    assert benchmark(mid_chunk.find, w.DELIMITER) == -1
