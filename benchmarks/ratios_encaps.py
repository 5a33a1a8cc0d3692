"""Encapsulated Pixel Data: dicomaccel.encaps against pydicom.encaps, measured in this run.

Workload: an encapsulated Pixel Data value of 100,000 fragments of 100 bytes, one fragment
per frame (the shape of a long ultrasound or XA cine), once with a Basic Offset Table and
once with an empty one. Building the fragment table (``parse_items`` or the
``EncapsulatedFrames`` constructor) is compared with what pydicom does to find fragments:
``parse_basic_offsets`` then ``list(generate_fragments(...))`` over the same bytes. "frame N"
is one frame from the already-built table, against ``pydicom.encaps.get_frame``.
Timings are best-of-N with time.perf_counter.

    python -m benchmarks.ratios_encaps
"""

from __future__ import annotations

import struct
from io import BytesIO

from pydicom.encaps import generate_fragments, get_frame, parse_basic_offsets

from benchmarks._timing import best, implementations

FRAMES = 100_000
FRAGMENT_SIZE = 100
INDEX = 73_137
TABLE_TARGET = ">= 20x"
FRAME_TARGET = "<= 5 µs"
_ITEM = b"\xfe\xff\x00\xe0"
_SEQ_DELIM = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def workload(*, with_bot: bool) -> bytes:
    """The 100,000-fragment value, with the Sequence Delimitation Item (PS3.5 A.4)."""
    header = _ITEM + struct.pack("<I", FRAGMENT_SIZE)
    fragments = [header + k.to_bytes(4, "little") * (FRAGMENT_SIZE // 4) for k in range(FRAMES)]
    if with_bot:
        step = 8 + FRAGMENT_SIZE
        bot = _ITEM + struct.pack(f"<I{FRAMES}I", 4 * FRAMES, *range(0, FRAMES * step, step))
    else:
        bot = _ITEM + b"\x00\x00\x00\x00"
    return bot + b"".join(fragments) + _SEQ_DELIM


def pydicom_fragments(value: bytes) -> list[bytes]:
    """pydicom's way to the fragment list: read the BOT, then walk the items."""
    fp = BytesIO(value)
    parse_basic_offsets(fp)
    return list(generate_fragments(fp))


def measure() -> list[dict]:
    """Return one row per (benchmark, layout, implementation); ratio = baseline_s / ours_s."""
    rows = []
    walk_name = "pydicom parse_basic_offsets + list(generate_fragments)"
    frame_name = "pydicom.encaps.get_frame(value, N, number_of_frames=...)"
    for with_bot in (True, False):
        layout = "BOT" if with_bot else "empty BOT"
        value = workload(with_bot=with_bot)
        base_walk = best(lambda: pydicom_fragments(value), number=1, repeat=5)
        base_frame = best(
            lambda: get_frame(value, INDEX, number_of_frames=FRAMES), number=1, repeat=5
        )
        reference = get_frame(value, INDEX, number_of_frames=FRAMES)
        for module in implementations("encaps"):
            impl = module.__name__.rsplit("_", 1)[-1]
            slow = impl == "py"
            ef = module.EncapsulatedFrames(value, FRAMES)
            assert len(ef.fragment_offsets) == FRAMES and bytes(ef.frame(INDEX)) == reference
            cases = [
                ("parse_items", best(lambda: module.parse_items(value), number=1 if slow else 20,
                                     repeat=5), walk_name, base_walk, TABLE_TARGET),
                ("EncapsulatedFrames()",
                 best(lambda: module.EncapsulatedFrames(value, FRAMES), number=1 if slow else 20,
                      repeat=5), walk_name, base_walk, TABLE_TARGET),
                ("frame N from the table", best(lambda: ef.frame(INDEX), number=20_000, repeat=7),
                 frame_name, base_frame, FRAME_TARGET),
            ]
            for name, ours, base_name, base, target in cases:
                rows.append({
                    "name": f"encaps: {name}, {FRAMES:,} fragments, {layout} ({impl})",
                    "ours_s": ours,
                    "baseline_name": base_name,
                    "baseline_s": base,
                    "ratio": base / ours,
                    # The targets are the compiled kernel's; the twin is the specification.
                    "target": "n/a (twin)" if slow else target,
                })
            del ef
    return rows


def main() -> None:
    for r in measure():
        print(
            f"{r['name']:<62} ours {r['ours_s'] * 1e6:12.2f} µs   {r['baseline_name']}: "
            f"{r['baseline_s'] * 1e6:12.2f} µs   ratio {r['ratio']:9.1f}x (target {r['target']})"
        )


if __name__ == "__main__":
    main()
