"""Fuzzing of the PS3.10 header scanner and frame indexer (``archive.ingest``), with the IOD
check on: any input must give a Header (and a frame index) or a ``StoreFailure``; nothing
else may escape, since the archive answers every input with a Failure Reason. The scan of a
file's first bytes (``scan_head``, what the archive tries first) must answer as the scan of
the whole file, or not at all (None)."""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from common import main

    from dicomaccel.archive.ingest import StoreFailure, build_frame_index, scan, scan_head


def _answer(call):
    try:
        return call()
    except StoreFailure as failure:
        return failure.status, failure.comment


def test_one_input(data: bytes) -> None:
    whole = _answer(lambda: scan(data, validate=True))
    if not isinstance(whole, tuple):
        try:
            build_frame_index(data, whole)
        except StoreFailure:
            pass
    # A cut taken from the input itself, so the fuzzer steers it too.
    cut = int.from_bytes(data[-2:], "little") % (len(data) + 1) if data else 0
    head = _answer(lambda: scan_head(data[:cut], len(data), validate=True))
    assert head is None or head == whole, (cut, head, whole)


if __name__ == "__main__":
    main(test_one_input)
