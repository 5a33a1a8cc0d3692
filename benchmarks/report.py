"""The report of :mod:`benchmarks.compare`: Markdown, PNG bar charts (matplotlib, Agg) and JSON.

:func:`write` takes the harness's results (a JSON-able dict; ``rows`` hold one entry per
workload, method and peer with the raw figures of every run) and writes ``results.json``,
``report.md`` and the charts into a directory. :func:`summary` turns one row into medians with
their spread; everything the Markdown shows is computed from ``results.json`` alone, so a report
can be rebuilt from it (``python -m benchmarks.report results.json OUTDIR``).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

SECTIONS = (("ingest", "Ingest"), ("retrieve", "Retrieve (C-GET)"), ("frame", "Retrieve at FRAME level"))
PEER_ORDER = ("dicomaccel", "orthanc", "dcmqrscp", "pynetdicom")
SHORT = {"ct": "CT", "multiframe": "multi-frame", "j2k": "JPEG 2000", "pydicom-data": "pydicom-data"}
COLOURS = {"dicomaccel": "#1b7837", "orthanc": "#2166ac", "dcmqrscp": "#b2182b", "pynetdicom": "#8073ac"}


def fig(x: float) -> str:
    """Three significant figures below 100, integers above."""
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def _spread(values: list[float]) -> str:
    med = fig(statistics.median(values))
    return med if len(values) == 1 else f"{med} ({fig(min(values))}-{fig(max(values))})"


def summary(row: dict) -> dict | None:
    """Medians and spreads of one row's runs, or None when it has no successful run."""
    runs = row["runs"]
    if not runs:
        return None
    rate = [row["instances"] / r["seconds"] for r in runs]
    mbps = [r["bytes"] / r["seconds"] / 1e6 for r in runs]
    first = [r["first"] * 1e3 for r in runs if r.get("first") is not None]
    peak = [r["peak_mib"] for r in runs]
    return {"rate": statistics.median(rate), "rate_cell": _spread(rate),
            "mbps": statistics.median(mbps), "mbps_min": min(mbps), "mbps_max": max(mbps), "mbps_cell": _spread(mbps),
            "first_cell": _spread(first) if first else "-",
            "peak": statistics.median(peak), "peak_max": max(peak), "peak_cell": _spread(peak),
            "accepted": min(r["accepted"] for r in runs)}


def _groups(data: dict, section: str) -> list[tuple[str, str, list[dict]]]:
    """(corpus label, method, rows in peer order) in the order measured."""
    out: dict[tuple[str, str], list[dict]] = {}
    for row in data["rows"]:
        if row["section"] == section:
            out.setdefault((row["label"], row["method"]), []).append(row)
    return [(label, method, sorted(rows, key=lambda r: _peer_rank(r["peer"])))
            for (label, method), rows in out.items()]


def _peer_rank(name: str) -> int:
    return PEER_ORDER.index(name) if name in PEER_ORDER else len(PEER_ORDER)


def ratios(data: dict) -> list[dict]:
    """Per workload (corpus and method) where dicomaccel and another peer both have figures:
    dicomaccel's median instances/s over the best other peer's, and their peak memory."""
    out = []
    for section, _ in SECTIONS:
        for label, method, rows in _groups(data, section):
            stats = {r["peer"]: summary(r) for r in rows}
            ours = stats.get("dicomaccel")
            others = {p: s for p, s in stats.items() if p != "dicomaccel" and s}
            if not ours or not others:
                continue
            best = max(others, key=lambda p: others[p]["rate"])
            out.append({"section": section, "workload": label, "method": method,
                        "dicomaccel": ours["rate"], "best_peer": best, "best": others[best]["rate"],
                        "ratio": ours["rate"] / others[best]["rate"],
                        "dicomaccel_peak": ours["peak"], "best_peak": others[best]["peak"]})
    return out


def best_ingest(data: dict) -> list[dict]:
    """Per corpus: dicomaccel's fastest ingest configuration against the fastest of any other peer
    by any method (STOW-RS or C-STORE), by median instances/s."""
    best: dict[str, dict[str, tuple[float, str, float]]] = {}
    for row in data["rows"]:
        s = summary(row) if row["section"] == "ingest" else None
        if s is None:
            continue
        side = "ours" if row["peer"] == "dicomaccel" else "theirs"
        cell = best.setdefault(row["label"], {})
        if side not in cell or s["rate"] > cell[side][0]:
            cell[side] = (s["rate"], f"{row['peer']}, {row['method']}", s["peak"])
    return [{"section": "ingest", "workload": label, "method": f"fastest ingest: {c['ours'][1].split(', ', 1)[1]}",
             "dicomaccel": c["ours"][0], "best_peer": c["theirs"][1], "best": c["theirs"][0],
             "ratio": c["ours"][0] / c["theirs"][0], "dicomaccel_peak": c["ours"][2], "best_peak": c["theirs"][2]}
            for label, c in best.items() if "ours" in c and "theirs" in c]


def headline(data: dict) -> str:
    """The Markdown table of :func:`ratios`, then :func:`best_ingest`."""
    lines = ["| workload | method | dicomaccel inst/s | best peer | its inst/s | dicomaccel / best | "
             "peak RSS MiB dicomaccel / best peer |", "|---|---|---|---|---|---|---|"]
    for r in ratios(data) + best_ingest(data):
        lines.append(f"| {r['workload']} | {r['method']} | {fig(r['dicomaccel'])} | {r['best_peer']} | "
                     f"{fig(r['best'])} | **{r['ratio']:.2f}x** | {r['dicomaccel_peak']:.0f} / {r['best_peak']:.0f} |")
    return "\n".join(lines)


def _table(data: dict, section: str) -> list[str]:
    lines = ["| workload | method | peer | instances/s | MB/s | first instance ms | peak RSS MiB | accepted |",
             "|---|---|---|---|---|---|---|---|"]
    for label, method, rows in _groups(data, section):
        for row in rows:
            s = summary(row)
            if s is None:
                cells = [f"failed: {row['error']}", "-", "-", "-", "-"]
            else:
                cells = [s["rate_cell"], s["mbps_cell"], s["first_cell"], s["peak_cell"],
                         f"{s['accepted']}/{row['instances']}"]
            lines.append("| " + " | ".join([label, method, row["peer"], *cells]) + " |")
    return lines


def _refusals(data: dict) -> list[str]:
    merged: dict[tuple[str, str], tuple[int, int, dict[str, int]]] = {}
    for row in data["rows"]:
        for r in row["runs"]:
            if r.get("failure_reasons"):
                key = (row["label"], row["peer"])
                _, _, counts = merged.get(key, (0, 0, {}))
                for code, n in r["failure_reasons"].items():
                    counts[code] = counts.get(code, 0) + n
                merged[key] = (row["instances"], r["accepted"], counts)
    return [f"| {label} | {peer} | {offered} | {stored} | "
            f"{', '.join(f'{c}: {n}' for c, n in sorted(counts.items()))} |"
            for (label, peer), (offered, stored, counts) in merged.items()]


def _load_range(data: dict) -> str:
    loads = [r["load1"] for row in data["rows"] for r in row["runs"]]
    if not loads:
        return "-"
    return f"min {min(loads):.2f}, median {statistics.median(loads):.2f}, max {max(loads):.2f}"


def markdown(data: dict, charts: list[Path]) -> str:
    m, v = data["machine"], data["versions"]
    out = [
        "# dicomaccel side by side with Orthanc, DCMTK dcmqrscp and pynetdicom", "",
        f"Measured {data['started']} in {data['seconds'] / 60:.1f} min with", "",
        f"    {data['command']}", "",
        "## Machine", "",
        "| | |", "|---|---|",
        f"| CPU | {m['cpu']}, {m['cores']} cores |", f"| memory | {m['memory_gib']} GiB |",
        f"| OS | {m['os']}, Linux {m['kernel']} |", f"| Python | {m['python']} |",
        f"| load average (1 min) | before {data['load_before'][0]}, after {data['load_after'][0]}; "
        f"at the start of each run: {_load_range(data)} |",
        f"| network | {'private network namespace with only loopback (unshare --net)' if data['netns'] else 'host loopback'} |",
        "",
        "The machine is shared: other work ran on it during the measurement, which the load averages "
        "above show. Every figure is the median of "
        f"{data['runs']} runs with the spread (min-max); runs alternate between peers (A B A B) so "
        "drift hits every peer alike.", "",
        "## Versions", "", "| | |", "|---|---|",
        *[f"| {k} | {val} |" for k, val in v.items()], "",
    ]
    if data["skipped"]:
        out += ["Peers skipped:", "", *[f"- {k}: {val}" for k, val in data["skipped"].items()], ""]
    out += ["## Corpus", "", "| corpus | instances | MB | transfer syntax | SOP classes |", "|---|---|---|---|---|"]
    for c in data["corpora"]:
        out.append(f"| {c['label']} | {c['instances']} | {c['bytes'] / 1e6:.1f} | {c['transfer_syntax']} | "
                   f"{len(c['sop_classes'])} |")
    out += ["", "## Headline: dicomaccel / best peer", "",
            "Median instances/s of dicomaccel divided by that of the fastest other peer on the same workload, "
            "method and client. The *fastest ingest* rows compare each side's fastest way in, whatever the "
            "protocol (C-STORE included).", "", headline(data), ""]
    refused = _refusals(data)
    if refused:
        out += ["### Instances refused over STOW-RS", "",
                "Failure Reason (0008,1197) codes of the Failed SOP Sequence, over all runs of a peer "
                "(PS3.18 Table 10.5.3-1; 'none': the item had no reason).", "",
                "| corpus | peer | offered per run | stored per run | failure reasons (count, all runs) |",
                "|---|---|---|---|---|", *refused, ""]
    for section, title in SECTIONS:
        if any(r["section"] == section for r in data["rows"]):
            out += [f"## {title}", "", *_table(data, section), ""]
    if data["frame_probe"]:
        out += ["## FRAME-level C-GET: what each peer answered", "",
                "A Composite Instance Root Retrieve GET (1.2.840.10008.5.1.4.1.2.4.3) at FRAME level "
                "(PS3.4 Annex Y) for frames 1-3 of one multi-frame instance, from a pynetdicom SCU.", "",
                "| peer | outcome |", "|---|---|",
                *[f"| {p} | {r['outcome']} |" for p, r in data["frame_probe"].items()], ""]
    if charts:
        out += ["## Charts", "", *[f"![{p.stem}]({p.name})" for p in charts], ""]
    out += ["## How it was measured", "", *METHOD_NOTES, ""]
    return "\n".join(out)


METHOD_NOTES = [
    "- Servers and clients ran on one machine over loopback. Orthanc 1.10 and dcmqrscp cannot bind "
    "one address, so the whole measurement ran in a private network namespace with only loopback.",
    "- Ingest: every run starts the server empty. STOW-RS bodies are built in memory before the clock "
    "starts; N clients are N threads with one keep-alive HTTP connection each. dicomaccel runs with "
    "`--fsync always` and Orthanc with `SyncStorageArea: true`: both fsync each file before answering; "
    "dcmqrscp does not fsync. Time to first instance: the first response that reports a stored instance "
    "(STOW-RS), the first successful C-STORE response (storescu). *accepted* counts the instances the "
    "server reports stored (STOW-RS response, Orthanc's index, dcmqrscp's storage area).",
    "- C-STORE is DCMTK `storescu -R -nh` over one association, timed from its own log with "
    "microsecond stamps: first Store Request to last Store Response.",
    "- Retrieve: one Study Root C-GET of the whole corpus. `getscu --ignore` is timed from its log "
    "(C-GET request to final response; first instance when its first C-STORE response is sent); the "
    "pynetdicom SCU from `send_c_get` to the final response, counting data sets without decoding them. "
    "Association set-up and release are outside both timings. MB/s counts the PS3.10 files served "
    "(FRAME level: the bytes received).",
    "- Every DCMTK process (dcmqrscp, storescu, getscu) runs with `TCP_NODELAY=1` in its environment: "
    "Debian's DCMTK leaves Nagle's algorithm on without it. The pynetdicom SCP and SCU set TCP_NODELAY "
    "on their sockets; dicomaccel and Orthanc set it themselves.",
    "- Peak RSS: VmHWM of the server's processes, reset through /proc/PID/clear_refs before each run "
    "and sampled every 5 ms during it (dcmqrscp serves each association in a forked child).",
    "- Receivers' maximum PDU length: getscu's default of 16384 bytes for both receivers.",
    "- JPEG 2000 corpus: both receivers propose JPEG 2000 Lossless first and the uncompressed syntaxes "
    "after it (getscu `+xv`); dcmqrscp runs with `+xv` so it accepts JPEG 2000 from storescu (`-xv`). "
    "The pynetdicom SCP accepts only the uncompressed syntaxes for storage, and Orthanc 1.10 without a "
    "JPEG 2000 codec plugin cannot transcode to them: their failures are reported as measured.",
    "- pydicom-data over storescu: one association per compressed transfer syntax (storescu proposes one "
    "compressed syntax per run), times summed.",
]


def draw_charts(data: dict, out: Path) -> list[Path]:
    """Grouped bar charts: MB/s per section with min-max error bars, and peak RSS per section."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for metric, ylabel, fname in (("mbps", "MB/s (median, min-max)", "throughput"),
                                  ("peak", "server peak RSS, MiB (median, max)", "memory")):
        for section, title in SECTIONS:
            groups = _groups(data, section)
            if not groups:
                continue
            peers = sorted({r["peer"] for _, _, rows in groups for r in rows}, key=_peer_rank)
            width = 0.8 / len(peers)
            figure, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) + 2), 4.8))
            for k, peer in enumerate(peers):
                xs, ys, lo, hi = [], [], [], []
                for i, (_, _, rows) in enumerate(groups):
                    row = next((r for r in rows if r["peer"] == peer), None)
                    s = summary(row) if row else None
                    if s is None:
                        continue
                    xs.append(i + (k - (len(peers) - 1) / 2) * width)
                    ys.append(s[metric])
                    low, high = (s["mbps_min"], s["mbps_max"]) if metric == "mbps" else (s["peak"], s["peak_max"])
                    lo.append(s[metric] - low)
                    hi.append(high - s[metric])
                ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=peer, color=COLOURS.get(peer))
            ax.set_xticks(range(len(groups)))
            ax.set_xticklabels([f"{SHORT.get(rows[0]['corpus'], rows[0]['corpus'])}\n{method}"
                                for _, method, rows in groups], rotation=60, ha="right", fontsize=7)
            for i, (_, _, rows) in enumerate(groups):
                for row in rows:
                    if not row["runs"]:  # say so where its bar would be
                        k = peers.index(row["peer"])
                        ax.annotate("failed", (i + (k - (len(peers) - 1) / 2) * width, 0), xycoords=("data", "axes fraction"),
                                    xytext=(0, 3), textcoords="offset points", rotation=90, fontsize=6,
                                    ha="center", va="bottom", color=COLOURS.get(row["peer"]))
            ax.set_ylabel(ylabel)
            ax.set_yscale("log")
            ax.set_title(f"{title}: {'throughput' if metric == 'mbps' else 'server memory'}")
            ax.legend(fontsize=8)
            ax.grid(axis="y", alpha=0.3, which="both")
            figure.tight_layout()
            path = out / f"{section}-{fname}.png"
            figure.savefig(path, dpi=110)
            plt.close(figure)
            written.append(path)
    return written


def write(data: dict, out: Path, charts: bool = True) -> list[Path]:
    """Write ``results.json``, the charts and ``report.md`` into ``out``; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "results.json"
    raw.write_text(json.dumps(data, indent=1, default=str))
    pngs = draw_charts(data, out) if charts else []
    md = out / "report.md"
    md.write_text(markdown(data, pngs))
    return [md, raw, *pngs]


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m benchmarks.report results.json OUTDIR")
    for path in write(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])):
        print(path)
