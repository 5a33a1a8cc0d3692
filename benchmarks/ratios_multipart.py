"""Multipart scanning: dicomaccel.multipart against its baselines, measured in this run.

Workload: a STOW-RS body of 200 CT-sized parts (a DICOM-like header, then 512 x 512 16-bit
pixels of 12-bit noise: about 105 MB), fed in 64 KiB chunks, as an ASGI server hands it over.
Baselines: a ``bytes.find`` loop over the whole body held in memory (the speed of finding the
delimiters with no streaming at all), and python-multipart's ``MultipartParser`` with callbacks
fed the same chunks. Also: 5000 parts of 2 KiB (per-part cost), 100 MB of ``\\r\\n--`` + boundary
near misses (floor: 500 MB/s), and one 64 KiB chunk from inside a part, fed again and again
(cache-hot, as a chunk just read from a socket is). Timings are best-of-N with
time.perf_counter.

    python -m benchmarks.ratios_multipart
"""

from __future__ import annotations

import gc
import struct
from collections.abc import Callable

import numpy as np

from benchmarks._timing import best, implementations

BOUNDARY = b"8f14e45fceea167a5a36dedd4bea2543"  # uuid4().hex, as DICOMweb clients send
PARTS = 200
ROWS = COLUMNS = 512
CHUNK = 64 * 1024
SMALL_PARTS = 5000
SMALL_PART_BYTES = 2048
ADVERSARIAL_BYTES = 100_000_000
ADVERSARIAL_FLOOR = 500e6  # bytes per second


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0" if vr == b"UI" else b" "
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHI", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def dicom_header(index: int) -> bytes:
    """Preamble, DICM, File Meta and a CT data set up to the Pixel Data element's header."""
    uid = f"1.2.826.0.1.3680043.10.1234.{index}".encode()
    meta = b"".join([
        _element(0x0002, 0x0001, b"OB", b"\0\1"),
        _element(0x0002, 0x0002, b"UI", b"1.2.840.10008.5.1.4.1.1.2"),
        _element(0x0002, 0x0003, b"UI", uid),
        _element(0x0002, 0x0010, b"UI", b"1.2.840.10008.1.2.1"),
    ])
    dataset = b"".join([
        _element(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.2"),
        _element(0x0008, 0x0018, b"UI", uid),
        _element(0x0008, 0x0060, b"CS", b"CT"),
        _element(0x0010, 0x0010, b"PN", b"BENCH^MULTIPART"),
        _element(0x0020, 0x000D, b"UI", b"1.2.826.0.1.3680043.10.1234.1"),
        _element(0x0020, 0x000E, b"UI", b"1.2.826.0.1.3680043.10.1234.2"),
        _element(0x0020, 0x0013, b"IS", str(index).encode()),
        _element(0x0028, 0x0002, b"US", struct.pack("<H", 1)),
        _element(0x0028, 0x0004, b"CS", b"MONOCHROME2"),
        _element(0x0028, 0x0010, b"US", struct.pack("<H", ROWS)),
        _element(0x0028, 0x0011, b"US", struct.pack("<H", COLUMNS)),
        _element(0x0028, 0x0100, b"US", struct.pack("<H", 16)),
        _element(0x0028, 0x0101, b"US", struct.pack("<H", 12)),
        _element(0x0028, 0x0102, b"US", struct.pack("<H", 11)),
        _element(0x0028, 0x0103, b"US", struct.pack("<H", 0)),
        struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, ROWS * COLUMNS * 2),
    ])
    return b"\0" * 128 + b"DICM" + _element(0x0002, 0x0000, b"UL", struct.pack("<I", len(meta))) + meta + dataset


def build_body(parts: int = PARTS, seed: int = 0) -> tuple[bytes, list[int]]:
    """The workload body and each part's data length."""
    rng = np.random.default_rng(seed)
    out, sizes = [], []
    for i in range(parts):
        pixels = np.clip(rng.normal(1000, 400, ROWS * COLUMNS), 0, 4095).astype("<u2").tobytes()
        data = dicom_header(i) + pixels
        sizes.append(len(data))
        out += [b"\r\n--" if i else b"--", BOUNDARY, b"\r\nContent-Type: application/dicom\r\n\r\n", data]
    out += [b"\r\n--", BOUNDARY, b"--\r\n"]
    return b"".join(out), sizes


def adversarial_body(size: int = ADVERSARIAL_BYTES) -> bytes:
    """One part whose data is nothing but near misses of the delimiter, each one byte short."""
    near = b"\r\n--" + BOUNDARY[:-1] + b"X"
    data = near * (size // len(near))
    return b"--" + BOUNDARY + b"\r\n\r\n" + data + b"\r\n--" + BOUNDARY + b"--"


def small_parts_body(parts: int = SMALL_PARTS, size: int = SMALL_PART_BYTES) -> bytes:
    """Many small parts, as bulk-data STOW (one part per compressed frame) sends them."""
    rng = np.random.default_rng(1)
    out = []
    for i in range(parts):
        out += [b"\r\n--" if i else b"--", BOUNDARY,
                b"\r\nContent-Type: application/octet-stream\r\nContent-Location: http://example.com/bulk/%d\r\n\r\n" % i,
                rng.bytes(size)]
    out += [b"\r\n--", BOUNDARY, b"--\r\n"]
    return b"".join(out)


def chunked(body: bytes, size: int = CHUNK) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def scan(module, chunks: list) -> int:
    """Feed every chunk, touch every event; return the data bytes seen."""
    scanner = module.MultipartScanner(BOUNDARY)
    total = 0
    for chunk in chunks:
        for kind, value in scanner.feed(chunk):
            if kind == 2:
                total += len(value)
    scanner.finish()
    return total


def find_loop(body: bytes) -> int:
    """Baseline: every delimiter of the whole body, held in memory, with bytes.find."""
    delimiter = b"\r\n--" + BOUNDARY
    count, pos = 0, body.find(b"--" + BOUNDARY)
    while pos >= 0:
        pos = body.find(delimiter, pos + 1)
        count += 1
    return count


def python_multipart(chunks: list) -> int:
    """Baseline: python-multipart's streaming parser, callbacks that only count."""
    from python_multipart.multipart import MultipartParser

    total = 0

    def on_part_data(data: bytes, start: int, end: int) -> None:
        nonlocal total
        total += end - start

    parser = MultipartParser(BOUNDARY, callbacks={"on_part_data": on_part_data})
    for chunk in chunks:
        parser.write(chunk)
    parser.finalize()
    return total


PART_HEAD = b"--" + BOUNDARY + b"\r\nContent-Type: application/dicom\r\n\r\n"


def mid_part_feed(module, chunk: bytes) -> Callable[[], object]:
    """A scanner inside a part, and a call feeding it `chunk` (which must hold no delimiter)."""
    scanner = module.MultipartScanner(BOUNDARY)
    scanner.feed(PART_HEAD)
    return lambda: scanner.feed(chunk)


def mid_part_write(chunk: bytes) -> Callable[[], object]:
    """The same for python-multipart."""
    from python_multipart.multipart import MultipartParser

    parser = MultipartParser(BOUNDARY, callbacks={"on_part_data": lambda data, start, end: None})
    parser.write(PART_HEAD)
    return lambda: parser.write(chunk)


def measure() -> list[dict]:
    """One row per (benchmark, implementation); ratio = baseline_s / ours_s."""
    body, sizes = build_body()
    chunks = chunked(body)
    small = chunked(small_parts_body())
    adversarial = adversarial_body()
    adversarial_chunks = chunked(adversarial)
    gc.collect()

    assert find_loop(body) == PARTS + 1
    assert python_multipart(chunks) == sum(sizes)
    t_find = best(lambda: find_loop(body), repeat=15)
    t_pm = best(lambda: python_multipart(chunks), repeat=3)
    assert python_multipart(small) == SMALL_PARTS * SMALL_PART_BYTES
    t_pm_small = best(lambda: python_multipart(small), repeat=3)
    mb = len(body) / 1e6
    # A chunk from the middle of a part: mostly pixel noise, no delimiter.
    mid = body[len(body) // 2 : len(body) // 2 + CHUNK]
    assert b"\r\n--" + BOUNDARY not in mid
    t_find_mid = best(lambda: mid.find(b"\r\n--" + BOUNDARY), repeat=7, number=2000)
    t_pm_mid = best(mid_part_write(mid), repeat=7, number=2000)

    rows = []
    for module in implementations("multipart"):
        impl = module.__name__.rsplit("_", 1)[-1]
        assert scan(module, chunks) == sum(sizes)
        ours = best(lambda: scan(module, chunks), repeat=15 if impl == "c" else 5)
        rows.append(_row(f"multipart: {mb:.0f} MB, 200 CT parts, 64 KiB chunks ({impl}) {mb / ours / 1e3:.1f} GB/s",
                         ours, "bytes.find loop over the whole body in memory", t_find,
                         ">= 1x" if impl == "c" else "-"))
        rows.append(_row(f"multipart: {mb:.0f} MB, 200 CT parts, 64 KiB chunks ({impl})",
                         ours, "python-multipart MultipartParser, same chunks", t_pm, ">= 8x" if impl == "c" else "-"))
        assert scan(module, small) == SMALL_PARTS * SMALL_PART_BYTES
        ours = best(lambda: scan(module, small), repeat=7 if impl == "c" else 3)
        rows.append(_row(f"multipart: {SMALL_PARTS} parts of 2 KiB, 64 KiB chunks ({impl})",
                         ours, "python-multipart MultipartParser, same chunks", t_pm_small, "-"))
        ours = best(lambda: scan(module, adversarial_chunks), repeat=7 if impl == "c" else 3)
        rate = len(adversarial) / ours
        rows.append(_row(f"multipart: 100 MB of near-miss delimiters ({impl}) {rate / 1e6:.0f} MB/s",
                         ours, "500 MB/s floor", len(adversarial) / ADVERSARIAL_FLOOR,
                         ">= 1x (500 MB/s)" if impl == "c" else "-"))
        ours = best(mid_part_feed(module, mid), repeat=7, number=2000)
        rows.append(_row(f"multipart: one 64 KiB feed inside a part, cache-hot ({impl})",
                         ours, "bytes.find of the delimiter in the same 64 KiB", t_find_mid,
                         ">= 1x (µs per feed)" if impl == "c" else "-"))
        rows.append(_row(f"multipart: one 64 KiB feed inside a part, cache-hot ({impl})",
                         ours, "python-multipart MultipartParser.write, same chunk", t_pm_mid, "-"))
    return rows


def _row(name: str, ours: float, baseline_name: str, baseline: float, target: str) -> dict:
    return {"name": name, "ours_s": ours, "baseline_name": baseline_name, "baseline_s": baseline,
            "ratio": baseline / ours, "target": target}


def _t(seconds: float) -> str:
    return f"{seconds * 1e3:8.3f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:8.3f} µs"


def main() -> None:
    for r in measure():
        print(f"{r['name']:<72} ours {_t(r['ours_s'])}   {r['baseline_name']}: {_t(r['baseline_s'])}"
              f"   ratio {r['ratio']:6.2f}x (target {r['target']})")


if __name__ == "__main__":
    main()
