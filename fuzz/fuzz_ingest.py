"""Fuzzing of the PS3.10 header scanner and frame indexer (``archive.ingest``), with the IOD
check on: any input must give a Header (and a frame index) or a ``StoreFailure``; nothing
else may escape, since the archive answers every input with a Failure Reason."""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from common import main

    from dicomaccel.archive.ingest import StoreFailure, build_frame_index, scan


def test_one_input(data: bytes) -> None:
    try:
        header = scan(data, validate=True)
        build_frame_index(data, header)
    except StoreFailure:
        pass


if __name__ == "__main__":
    main(test_one_input)
