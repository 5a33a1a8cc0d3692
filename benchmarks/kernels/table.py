"""The kernel ratio table, from a pytest-benchmark JSON of this package's benchmarks.

    python -m benchmarks.kernels --from-json PATH

One Markdown table per implementation (compiled, then the twins): each row is one of our
benchmarks against its baseline measured in the same run, ratio = baseline time / our time.
Times are each benchmark's best round (pytest-benchmark's ``min``, per call): the least
disturbed by other load on the machine, for ours and the baselines alike. The first rows and
their targets are the README's; targets are the compiled kernel's (the twin is the
specification, "-" there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath

STAT = "min"
NEAR_MISS_FLOOR = 500e6  # bytes per second: the slowest a scanner may get on adversarial data
IMPLS = ("compiled", "twin")


@dataclass(frozen=True)
class Row:
    label: str  # str.format'ed with the ours benchmark's extra_info, ``size`` and ``rate``
    ours: str  # "module::test[params]", ``{impl}`` replaced by "compiled" or "twin"
    baseline_label: str
    baseline: str | None  # None: a fixed rate, NEAR_MISS_FLOOR, instead of a benchmark
    target: str = "-"


ROWS = [
    # The README's rows, with its targets.
    Row("multipart: {size} body, {parts} CT parts, 64 KiB chunks ({rate})",
        "test_multipart::test_ct_body[{impl}]",
        "`bytes.find` loop over the whole body in memory", "test_multipart::test_ct_body_find_loop", ">= 1x"),
    Row("same body", "test_multipart::test_ct_body[{impl}]",
        "python-multipart `MultipartParser`, same chunks", "test_multipart::test_ct_body_python_multipart",
        ">= 8x"),
    Row("multipart: {size} of `\\r\\n--` near-misses ({rate})", "test_multipart::test_near_miss[{impl}]",
        "500 MB/s floor", None, ">= 1x"),
    Row("frames: frame N of a {size}, {frames}-frame instance in an mmap, zero-copy view",
        "test_frames::test_frame_view[{impl}]",
        "`pydicom.pixels.pixel_array(path, index=N)`", "test_frames::test_frame_pydicom", ">= 50x"),
    Row("frames: same, copied to bytes", "test_frames::test_frame_copy[{impl}]",
        "same", "test_frames::test_frame_pydicom", ">= 50x"),
    Row("encaps: fragment table (`parse_items`), {fragments:,} fragments, {layout}",
        "test_encaps::test_parse_items[bot-{impl}]",
        "pydicom `parse_basic_offsets` + `generate_fragments`", "test_encaps::test_pydicom_fragments[bot]",
        ">= 20x"),
    Row("encaps: frame N from the table, {layout}", "test_encaps::test_frame[bot-{impl}]",
        "`pydicom.encaps.get_frame`", "test_encaps::test_pydicom_get_frame[bot]", "<= 5 µs"),
    # The rest of the suite.
    Row("ingest: header scan + IOD check of a CT (every stored instance)", "test_ingest::test_scan_and_validate",
        "`pydicom.dcmread(stop_before_pixels=True)`", "test_ingest::test_pydicom_header", ">= 1x"),
    Row("ingest: header scan alone", "test_ingest::test_scan",
        "`pydicom.dcmread(stop_before_pixels=True)`", "test_ingest::test_pydicom_header", ">= 1x"),
    Row("walk: the 257 top-level elements of pydicom's CT_small.dcm", "test_walk::test_walk[{impl}]",
        "`pydicom.dcmread(stop_before_pixels=True)`, same file", "test_walk::test_pydicom_walk", ">= 1x"),
    Row("multipart: same near-misses", "test_multipart::test_near_miss[{impl}]",
        "python-multipart `MultipartParser`, same chunks", "test_multipart::test_near_miss_python_multipart"),
    Row("multipart: {parts} parts of 2 KiB, 64 KiB chunks", "test_multipart::test_small_parts[{impl}]",
        "python-multipart `MultipartParser`, same chunks", "test_multipart::test_small_parts_python_multipart"),
    Row("multipart: one 64 KiB feed inside a part, cache-hot", "test_multipart::test_mid_part_feed[{impl}]",
        "`bytes.find` of the delimiter in the same 64 KiB", "test_multipart::test_mid_part_find", ">= 1x"),
    Row("same feed", "test_multipart::test_mid_part_feed[{impl}]",
        "python-multipart `MultipartParser.write`, same chunk",
        "test_multipart::test_mid_part_write_python_multipart"),
    Row("frames: `NativeFrames()` + frame N view", "test_frames::test_construct_and_view[{impl}]",
        "`pixel_array(path, index=N)`", "test_frames::test_frame_pydicom", ">= 50x"),
    Row("frames: mmap + `NativeFrames()` + frame copy, new frame each call", "test_frames::test_cold_copy[{impl}]",
        "`pixel_array(path, index=N)`", "test_frames::test_frame_pydicom", ">= 50x"),
    Row("frames: gather 10 frames", "test_frames::test_gather[{impl}]",
        "10 x `pixel_array(index=i)`, joined", "test_frames::test_gather_pydicom", ">= 50x"),
    Row("frames: 1-bit frame N, {rows} x {columns}, not byte-aligned", "test_frames::test_one_bit_frame[{impl}]",
        "`pixel_array(path, index=N)` + `pack_bits`", "test_frames::test_one_bit_frame_pydicom"),
    Row("frames: 1-bit gather 10 frames", "test_frames::test_one_bit_gather[{impl}]",
        "10 x `pixel_array(index=i)` + `pack_bits`", "test_frames::test_one_bit_gather_pydicom"),
    Row("encaps: `EncapsulatedFrames()`, {fragments:,} fragments, {layout}", "test_encaps::test_construct[bot-{impl}]",
        "pydicom `parse_basic_offsets` + `generate_fragments`", "test_encaps::test_pydicom_fragments[bot]",
        ">= 20x"),
    Row("encaps: fragment table (`parse_items`), {fragments:,} fragments, {layout}",
        "test_encaps::test_parse_items[empty-bot-{impl}]",
        "pydicom `parse_basic_offsets` + `generate_fragments`", "test_encaps::test_pydicom_fragments[empty-bot]",
        ">= 20x"),
    Row("encaps: `EncapsulatedFrames()`, {fragments:,} fragments, {layout}",
        "test_encaps::test_construct[empty-bot-{impl}]",
        "pydicom `parse_basic_offsets` + `generate_fragments`", "test_encaps::test_pydicom_fragments[empty-bot]",
        ">= 20x"),
    Row("encaps: frame N from the table, {layout}", "test_encaps::test_frame[empty-bot-{impl}]",
        "`pydicom.encaps.get_frame`", "test_encaps::test_pydicom_get_frame[empty-bot]", "<= 5 µs"),
    Row("encaps: `EncapsulatedFrames()`, {frames:,} frames of 3 fragments, EOI markers",
        "test_encaps::test_construct_markers[{impl}]",
        "`list(generate_frames(...))`", "test_encaps::test_pydicom_generate_frames_markers"),
    Row("encaps: last frame of those, 3 fragments joined", "test_encaps::test_frame_joined[{impl}]",
        "`pydicom.encaps.get_frame`", "test_encaps::test_pydicom_get_frame_markers"),
    Row("encaps: `parse_items`, {fragments:,} 2-byte fragments", "test_encaps::test_parse_tiny_fragments[{impl}]",
        "pydicom `parse_basic_offsets` + `generate_fragments`", "test_encaps::test_pydicom_tiny_fragments"),
    Row("encaps: `encapsulate`, {frames:,} frames, BOT", "test_encaps::test_encapsulate[{impl}]",
        "`pydicom.encaps.encapsulate`", "test_encaps::test_pydicom_encapsulate"),
    Row("encaps: `encapsulate(extended=True)`, {frames:,} frames", "test_encaps::test_encapsulate_extended[{impl}]",
        "`pydicom.encaps.encapsulate_extended`", "test_encaps::test_pydicom_encapsulate_extended"),
]


def key(bench: dict) -> str:
    """``module::name``, e.g. ``test_multipart::test_ct_body[compiled]``."""
    return f"{PurePath(bench['fullname'].split('::')[0]).stem}::{bench['name']}"


def fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.2f} µs"


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e6:.0f} MB" if nbytes >= 10e6 else f"{nbytes / 1e6:.2f} MB"


def _rate(nbytes: int, seconds: float) -> str:
    rate = nbytes / seconds
    return f"{rate / 1e9:.1f} GB/s" if rate >= 1e9 else f"{rate / 1e6:.0f} MB/s"


def _verdict(target: str, ratio: float, ours: float) -> str:
    """The target, marked met or missed when it can be read."""
    if m := re.match(r">= ([\d.]+)x", target):
        met = ratio >= float(m.group(1))
    elif m := re.match(r"<= ([\d.]+) µs", target):
        met = ours <= float(m.group(1)) * 1e-6
    else:
        return target
    return f"{target} ({'met' if met else 'missed'})"


def rows(json_data: dict, impl: str | None) -> list[dict]:
    """The table rows of `impl` whose ours benchmark is in `json_data` (None: the rows of code
    that has no twin)."""
    found = {key(b): b for b in json_data.get("benchmarks", [])}
    out = []
    for spec in ROWS:
        if ("{impl}" in spec.ours) != (impl is not None):
            continue  # kernel rows go in a per-implementation table, the others in their own
        ours_b = found.get(spec.ours.format(impl=impl))
        if ours_b is None:
            continue
        info = dict(ours_b.get("extra_info", {}))
        ours = ours_b["stats"][STAT]
        if spec.baseline is None:
            baseline = info["bytes"] / NEAR_MISS_FLOOR
        else:
            baseline_b = found.get(spec.baseline)
            if baseline_b is None:
                continue
            baseline = baseline_b["stats"][STAT]
        if "bytes" in info:
            info.update(size=_size(info["bytes"]), rate=_rate(info["bytes"], ours))
        ratio = baseline / ours
        out.append({
            "benchmark": spec.label.format(**info),
            "ours": ours,
            "baseline": spec.baseline_label,
            "baseline_time": baseline,
            "ratio": ratio,
            "target": _verdict(spec.target, ratio, ours) if impl in ("compiled", None) else "-",
        })
    return out


def table(json_data: dict) -> str:
    """The Markdown ratio tables (compiled, then twin) of a pytest-benchmark JSON."""
    machine = json_data.get("machine_info", {})
    lines = [f"# Kernels on {machine.get('machine', '?')} / {machine.get('python_implementation', 'Python')} "
             f"{machine.get('python_version', '?')}, {json_data.get('datetime', '')}"]
    if json_data.get("kernels", {}).get("quick"):
        lines.append("\nQuick mode: workloads and rounds cut down; the numbers check the plumbing, "
                     "not the speed.")
    used = set()
    for impl in (*IMPLS, None):
        found = rows(json_data, impl)
        if not found:
            continue
        what = {"compiled": "compiled kernels", "twin": "pure-Python twins",
                None: "code around the kernels (the ingest scan, with the walk kernel in use)"}[impl]
        lines += [
            "",
            f"## {what}: best round ({STAT}) per call; ratio = baseline {STAT} / ours {STAT}",
            "",
            "| benchmark | ours | baseline | baseline time | ratio | target |",
            "|---|---|---|---|---|---|",
        ]
        for r in found:
            lines.append(f"| {r['benchmark']} | {fmt_time(r['ours'])} | {r['baseline']} | "
                         f"{fmt_time(r['baseline_time'])} | {r['ratio']:.1f}x | {r['target']} |")
        used |= {spec.ours.format(impl=impl) for spec in ROWS} | {spec.baseline for spec in ROWS}
    left = sorted(set(map(key, json_data.get("benchmarks", []))) - used)
    if left:
        lines += ["", "Benchmarks in no row: " + ", ".join(left)]
    return "\n".join(lines)
