"""pytest-benchmark: dicomaccel.multipart, both implementations, against python-multipart.

    pytest benchmarks/bench_multipart.py --benchmark-group-by=group

Workloads are benchmarks.ratios_multipart's: 200 CT-sized parts (about 105 MB) in 64 KiB
chunks; 5000 parts of 2 KiB; 100 MB of ``\\r\\n--`` + boundary near misses; one 64 KiB chunk
from inside a part, fed again and again.
"""

from __future__ import annotations

import pytest

from benchmarks._timing import implementations
from benchmarks.ratios_multipart import (
    BOUNDARY,
    SMALL_PART_BYTES,
    SMALL_PARTS,
    adversarial_body,
    build_body,
    chunked,
    find_loop,
    mid_part_feed,
    mid_part_write,
    python_multipart,
    scan,
    small_parts_body,
)


@pytest.fixture(params=implementations("multipart"), ids=lambda m: m.__name__.rsplit("_", 1)[1])
def impl(request):
    return request.param


@pytest.fixture(scope="module")
def ct_body():
    body, sizes = build_body()
    return body, chunked(body), sum(sizes)


@pytest.fixture(scope="module")
def small_chunks():
    return chunked(small_parts_body())


@pytest.fixture(scope="module")
def adversarial_chunks():
    return chunked(adversarial_body())


@pytest.fixture(scope="module")
def mid_chunk(ct_body):
    body = ct_body[0]
    chunk = body[len(body) // 2 : len(body) // 2 + 64 * 1024]
    assert b"\r\n--" + BOUNDARY not in chunk
    return chunk


@pytest.mark.benchmark(group="multipart: 200 CT parts, 105 MB, 64 KiB chunks")
def test_ct_body(benchmark, impl, ct_body):
    assert benchmark(scan, impl, ct_body[1]) == ct_body[2]


@pytest.mark.benchmark(group="multipart: 200 CT parts, 105 MB, 64 KiB chunks")
def test_ct_body_python_multipart(benchmark, ct_body):
    assert benchmark(python_multipart, ct_body[1]) == ct_body[2]


@pytest.mark.benchmark(group="multipart: 200 CT parts, 105 MB, 64 KiB chunks")
def test_ct_body_find_loop_in_memory(benchmark, ct_body):
    assert benchmark(find_loop, ct_body[0]) == 201


@pytest.mark.benchmark(group="multipart: 5000 parts of 2 KiB")
def test_small_parts(benchmark, impl, small_chunks):
    assert benchmark(scan, impl, small_chunks) == SMALL_PARTS * SMALL_PART_BYTES


@pytest.mark.benchmark(group="multipart: 5000 parts of 2 KiB")
def test_small_parts_python_multipart(benchmark, small_chunks):
    assert benchmark(python_multipart, small_chunks) == SMALL_PARTS * SMALL_PART_BYTES


@pytest.mark.benchmark(group="multipart: 100 MB of near-miss delimiters")
def test_adversarial(benchmark, impl, adversarial_chunks):
    assert benchmark(scan, impl, adversarial_chunks) > 0


@pytest.mark.benchmark(group="multipart: 100 MB of near-miss delimiters")
def test_adversarial_python_multipart(benchmark, adversarial_chunks):
    assert benchmark(python_multipart, adversarial_chunks) > 0


@pytest.mark.benchmark(group="multipart: one 64 KiB feed inside a part")
def test_mid_part_feed(benchmark, impl, mid_chunk):
    events = benchmark(mid_part_feed(impl, mid_chunk))
    assert events and all(kind == 2 for kind, _ in events)


@pytest.mark.benchmark(group="multipart: one 64 KiB feed inside a part")
def test_mid_part_write_python_multipart(benchmark, mid_chunk):
    benchmark(mid_part_write(mid_chunk))


@pytest.mark.benchmark(group="multipart: one 64 KiB feed inside a part")
def test_mid_part_find(benchmark, mid_chunk):
    assert benchmark(mid_chunk.find, b"\r\n--" + BOUNDARY) == -1
