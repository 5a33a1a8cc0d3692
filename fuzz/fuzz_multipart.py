"""Differential fuzzing of the multipart/related scanner (``MultipartScanner``).

The input is split by the fuzzer's first bytes into a boundary, a chunking and a body; both
implementations scan the same chunks and must emit the same events (part headers, data
bytes, part ends, close) and fail the same way, at the same byte offset.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from common import main, same


def scan(module, boundary: bytes, chunks: list[bytes]):
    scanner = module.MultipartScanner(boundary, max_header_size=512, max_parts=64)
    events = []
    for chunk in chunks:
        events += [(kind, value if kind != module.PART_DATA else bytes(value))
                   for kind, value in scanner.feed(chunk)]
    scanner.finish()
    return events


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    boundary = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 12)) or b"b"
    cut = fdp.ConsumeIntInRange(1, 64)
    body = fdp.ConsumeBytes(fdp.remaining_bytes())
    chunks = [body[i:i + cut] for i in range(0, len(body), cut)]
    same("multipart", lambda m: scan(m, boundary, chunks))


if __name__ == "__main__":
    main(test_one_input)
