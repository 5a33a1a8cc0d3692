"""Fuzzing of the Frame Range Keys (PS3.4 Y.3.2): Simple and Calculated Frame Lists and Time
Ranges against any Number of Frames and timing; the result must be a strictly increasing list
of existing frames, or a ``FrameExtractionError`` with one of the Table Y.4-2 statuses."""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from common import main

    from dicomaccel.retrieve.framelist import FrameExtractionError, FrameTiming, build_frame_list

KEYS = ("SimpleFrameList", "CalculatedFrameList", "TimeRange", "Other")


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    n = fdp.ConsumeIntInRange(1, 300)
    keyword = fdp.PickValueInList(list(KEYS))
    if keyword == "TimeRange":
        values = [fdp.ConsumeRegularFloat() for _ in range(fdp.ConsumeIntInRange(0, 3))]
    else:
        values = [fdp.ConsumeIntInRange(0, 2**32 + 1) for _ in range(fdp.ConsumeIntInRange(0, 9))]
    timing = None
    if fdp.ConsumeBool():
        step = fdp.ConsumeIntInRange(1, 100)
        timing = FrameTiming(tuple(float(k * step) for k in range(n)), 0.0, "FrameTime")
    try:
        frames = build_frame_list(keyword, values, n, timing)
    except FrameExtractionError as exc:
        assert exc.status in (0xAA00, 0xAA03, 0xAA04), hex(exc.status)
        return
    assert frames and all(1 <= f <= n for f in frames), frames
    assert all(a < b for a, b in zip(frames, frames[1:])), frames


if __name__ == "__main__":
    main(test_one_input)
