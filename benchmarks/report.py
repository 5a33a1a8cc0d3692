"""The report of :mod:`benchmarks.run`: Markdown, PNG bar charts (matplotlib, Agg) and JSON.

:func:`write` takes the harness's results (a JSON-able dict; ``rows`` hold one entry per
workload, method and peer with the raw figures of every run) and writes ``results.json``,
``report.md`` and the charts into a directory. :func:`summary` turns one row into medians with
their spread; everything the Markdown shows is computed from ``results.json`` alone, so a report
can be rebuilt from it (``python -m benchmarks report results.json OUTDIR``).
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

SECTIONS = (("ingest", "Ingest"), ("retrieve", "Retrieve (C-GET)"), ("move", "Retrieve (C-MOVE)"),
            ("frame", "Retrieve at FRAME level"),
            ("latency", "Time to one instance: FRAME level against the whole instance"),
            ("wado", "Retrieve (WADO-RS)"), ("requests", "Requests: WADO-RS frames, C-FIND, QIDO-RS"),
            ("embed", "Embedded in a pynetdicom AE: dicomaccel's handlers, the usual ones, pynetdicom's floor"))
PEER_ORDER = ("dicomaccel", "dicomaccel-pg", "orthanc", "dcmqrscp", "pynetdicom", "cstore-floor", "storescp-ignore")
OURS = ("dicomaccel", "dicomaccel-pg")  # never "another peer" in a ratio
# Receivers that bound a workload (benchmarks.run.CEILINGS), as the tables name them: rows like
# a peer's, but never a peer in a ratio; and what the limits call them.
CEILINGS = {"storescp-ignore": "storescp --ignore (ceiling: discards)",
            "cstore-floor": "cstore_floor.c (durable floor: write, fdatasync, directory fsync)"}
CEILING_NAMES = {"storescp-ignore": "storescu into storescp --ignore",
                 "cstore-floor": "the durable C-STORE floor"}
CEILING_SHARES = ("dicomaccel", "dcmqrscp")  # the C-STORE rows the limits give as a share of it
SHORT = {"ct": "CT", "multiframe": "multi-frame", "j2k": "JPEG 2000", "pydicom-data": "pydicom-data",
         "large": "large", "archive": "archive", "qido-shared": "QIDO-RS", "qido-index": "QIDO-RS"}
COLOURS = {"dicomaccel": "#1b7837", "orthanc": "#2166ac", "dcmqrscp": "#b2182b", "pynetdicom": "#8073ac",
           "storescp-ignore": "#999999"}


def fig(x: float) -> str:
    """Three significant figures below 100, integers above."""
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def _spread(values: list[float]) -> str:
    med = fig(statistics.median(values))
    return med if len(values) == 1 else f"{med} ({fig(min(values))}-{fig(max(values))})"


def count(row: dict, run: dict) -> int:
    """What one run of ``row`` moved: its requests (a row of unit ``requests``); for ingest, the
    instances the server holds afterwards (a store it refused or lost is not ingest: with four
    storescu at once dcmqrscp keeps 60-85% of them); else the row's instances."""
    if row.get("unit") == "requests":
        return run["requests"]
    if row["section"] == "ingest" and "accepted" in run:
        return min(run["accepted"], row["instances"])
    return row["instances"]


def summary(row: dict) -> dict | None:
    """Medians and spreads of one row's runs, or None when it has no successful run."""
    runs = row["runs"]
    if not runs:
        return None
    rate = [count(row, r) / r["seconds"] for r in runs]
    mbps = [r["bytes"] / r["seconds"] / 1e6 for r in runs]
    first = [r["first"] * 1e3 for r in runs if r.get("first") is not None]
    peak = [r["peak_mib"] for r in runs]
    cpu = {side: [1e3 * r[f"{side}_cpu_s"] / count(row, r) for r in runs
                  if f"{side}_cpu_s" in r and count(row, r)]
           for side in ("server", "client")}
    latency = {q: [r[f"{q}_ms"] for r in runs if f"{q}_ms" in r] for q in ("p50", "p99")}
    matches = [r["matches"] for r in runs if "matches" in r]
    return {**{f"{side}_cpu": statistics.median(v) if v else None for side, v in cpu.items()},
            **{q: statistics.median(v) if v else None for q, v in latency.items()},
            **{f"{q}_cell": _spread(v) if v else "-" for q, v in latency.items()},
            "matches_cell": fig(statistics.median(matches)) if matches else "-",
            "requests": sum(r.get("requests", 0) for r in runs), "ok": sum(r.get("ok", r["accepted"]) for r in runs),
            **{f"{side}_cpu_cell": _spread(v) if v else "-" for side, v in cpu.items()},
            "rate": statistics.median(rate), "rate_cell": _spread(rate),
            "mbps": statistics.median(mbps), "mbps_min": min(mbps), "mbps_max": max(mbps), "mbps_cell": _spread(mbps),
            "first": statistics.median(first) if first else None, "first_cell": _spread(first) if first else "-",
            "peak": statistics.median(peak), "peak_max": max(peak), "peak_cell": _spread(peak),
            "cores_cell": _cores(runs),
            "accepted": min(r["accepted"] for r in runs)}


def _cores(runs: list[dict]) -> str:
    """Median busy share of each core over the runs, e.g. ``93 / 61 %``."""
    per_run = [r["core_busy"] for r in runs if r.get("core_busy")]
    if not per_run:
        return "-"
    cores = zip(*per_run)
    return " / ".join(f"{100 * statistics.median(c):.0f}" for c in cores) + " %"


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


def peer_label(name: str) -> str:
    """A peer as the tables and charts name it: a ceiling says what it is."""
    return CEILINGS.get(name, name)


def _versus(section: str, workload: str, method: str, ours: dict, best_peer: str, best: dict) -> dict:
    """One headline row: dicomaccel's summary ``ours`` against ``best`` (of ``best_peer``)."""
    out = {"section": section, "workload": workload, "method": method, "unit": ours.get("unit", "inst"),
           "dicomaccel": ours["rate"],
           "best_peer": best_peer, "best": best["rate"], "ratio": ours["rate"] / best["rate"],
           "dicomaccel_peak": ours["peak"], "best_peak": best["peak"]}
    for side in ("server", "client"):
        out[f"dicomaccel_{side}_cpu"], out[f"best_{side}_cpu"] = ours[f"{side}_cpu"], best[f"{side}_cpu"]
    return out


def ratios(data: dict) -> list[dict]:
    """Per workload (corpus and method) where dicomaccel and another peer both have figures:
    dicomaccel's median instances/s over the best other peer's, their peak memory and CPU. A
    ceiling is no peer: it does less than any server can."""
    out = []
    for section, _ in SECTIONS:
        for label, method, rows in _groups(data, section):
            stats = {r["peer"]: summary(r) for r in rows}
            ours = stats.get("dicomaccel")
            others = {p: s for p, s in stats.items() if p not in OURS and p not in CEILINGS and s and s["rate"]}
            if ours:
                ours["unit"] = "req" if rows[0].get("unit") == "requests" else "inst"
            if not ours or not others:
                continue
            best = max(others, key=lambda p: others[p]["rate"])
            out.append(_versus(section, label, method, ours, best, others[best]))
    return out


def best_ingest(data: dict) -> list[dict]:
    """Per corpus: dicomaccel's fastest ingest configuration against the fastest of any other peer
    by any method (STOW-RS or C-STORE), by median instances/s; ceilings are no peer."""
    best: dict[str, dict[str, tuple[dict, str]]] = {}
    for row in data["rows"]:
        s = summary(row) if row["section"] == "ingest" and row["peer"] not in ("dicomaccel-pg", *CEILINGS) else None
        if not s or not s["rate"]:
            continue
        side = "ours" if row["peer"] == "dicomaccel" else "theirs"
        cell = best.setdefault(row["label"], {})
        if side not in cell or s["rate"] > cell[side][0]["rate"]:
            cell[side] = (s, f"{row['peer']}, {row['method']}")
    return [_versus("ingest", label, f"fastest ingest: {c['ours'][1].split(', ', 1)[1]}", c["ours"][0],
                    c["theirs"][1], c["theirs"][0])
            for label, c in best.items() if "ours" in c and "theirs" in c]


def _pair(a: float | None, b: float | None) -> str:
    return f"{fig(a)} / {fig(b)}" if a is not None and b is not None else "-"


def headline(data: dict) -> str:
    """The Markdown table of :func:`ratios`, then :func:`best_ingest`."""
    lines = ["| workload | method | dicomaccel /s | best peer | its /s | dicomaccel / best | "
             "peak RSS MiB dicomaccel / best peer | server CPU ms/inst (or /req) dicomaccel / best peer | server CPU "
             "dicomaccel / best | client CPU ms/inst (or /req) dicomaccel / best peer |", "|---" * 10 + "|"]
    for r in ratios(data) + best_ingest(data):
        ours, theirs = r["dicomaccel_server_cpu"], r["best_server_cpu"]
        cpu_ratio = f"{fig(ours / theirs)}x" if ours is not None and theirs else "-"
        unit = r.get("unit", "inst")
        lines.append(f"| {r['workload']} | {r['method']} | {fig(r['dicomaccel'])} {unit}/s | {r['best_peer']} | "
                     f"{fig(r['best'])} {unit}/s | **{r['ratio']:.2f}x** | {r['dicomaccel_peak']:.0f} / {r['best_peak']:.0f} | "
                     f"{_pair(ours, theirs)} | {cpu_ratio} | "
                     f"{_pair(r['dicomaccel_client_cpu'], r['best_client_cpu'])} |")
    return "\n".join(lines)


def _request_table(data: dict) -> list[str]:
    """The ``requests`` section: per request, not per instance; latency, and MB/s as a share of
    the loopback TCP limit measured in the same run."""
    tcp = (data.get("limits") or {}).get("tcp_mbps")
    lines = ["| workload | method | peer | requests/s | p50 ms | p99 ms | MB/s | of loopback TCP | results/request | "
             "peak RSS MiB | answered | server CPU ms/req | client CPU ms/req | cores busy |", "|---" * 14 + "|"]
    for label, method, rows in _groups(data, "requests"):
        for row in rows:
            s = summary(row)
            if s is None:
                cells = [f"failed: {row['error']}", *["-"] * 10]
            else:
                share = f"{s['mbps'] / tcp:.1%}" if tcp and method.startswith("WADO-RS") else "-"
                cells = [s["rate_cell"], s["p50_cell"], s["p99_cell"], s["mbps_cell"], share, s["matches_cell"],
                         s["peak_cell"], f"{s['ok']}/{s['requests']}", s["server_cpu_cell"], s["client_cpu_cell"],
                         s["cores_cell"]]
            lines.append("| " + " | ".join([label, method, row["peer"], *cells]) + " |")
    return lines


def answered_as(data: dict) -> list[str]:
    """Per HTTP workload and peer: the Accept sent and the Content-Type of the answer."""
    out = []
    for row in data["rows"]:
        run = next((r for r in row["runs"] if r.get("accept")), None)
        if run:
            out.append(f"| {row['label']} | {row['method']} | {row['peer']} | `{run['accept']}` | "
                       f"`{run.get('content_type') or '-'}` |")
    if not out:
        return []
    return ["| workload | method | peer | Accept sent | Content-Type received |", "|---|---|---|---|---|", *out]


# The targets of the issue that asked for WADO-RS, QIDO-RS and C-FIND (issue 11), checked here.
TARGETS = (
    ("multiframe", "WADO-RS frame 1 of", "ratio", "orthanc", 100.0, "WADO-RS frame 1, native multi-frame: >= 100x Orthanc"),
    ("multiframe", "WADO-RS frame 1 of", "loopback", None, 0.25, "WADO-RS frame 1, native multi-frame: >= 25% of loopback TCP"),
    ("j2k", "WADO-RS frame 1 of", "ratio", "orthanc", 30.0, "WADO-RS frame 1, JPEG 2000, as stored: >= 30x Orthanc"),
    ("ct", "WADO-RS study", "ratio", "orthanc", 2.0, "WADO-RS study retrieval, CT: >= 2x Orthanc, memory bounded"),
    ("qido-index", "QIDO-RS studies PatientName=Smi*", "p50", None, 10.0, "QIDO-RS Patient Name prefix: p50 <= 10 ms"),
    ("qido-index", "QIDO-RS studies PatientName=Smi*", "p99", None, 50.0, "QIDO-RS Patient Name prefix: p99 <= 50 ms"),
    ("qido-index", "QIDO-RS studies PatientName=*anna*", "p50", None, 10.0,
     "QIDO-RS Patient Name leading wildcard: p50 <= 10 ms"),
    ("qido-index", "QIDO-RS studies PatientName=*anna*", "p99", None, 50.0,
     "QIDO-RS Patient Name leading wildcard: p99 <= 50 ms"),
    ("archive", "C-FIND STUDY", "ratio", "dcmqrscp", 3.0, "C-FIND STUDY, findscu: >= 3x dcmqrscp"),
)


# The targets of issue 12 (C-STORE and C-MOVE SCPs) this harness measures, read as TARGETS.
ISSUE12_TARGETS = (
    ("ct", "C-STORE storescu, 1 association", "ratio", "dcmqrscp", 1.0,
     "C-STORE ingest, CT, storescu 1 association, our fsync always: >= 1x dcmqrscp"),
    ("ct", "C-MOVE STUDY", "ratio", "dcmqrscp", 1.5, "C-MOVE of the CT study to storescp --ignore: >= 1.5x dcmqrscp"),
    # "scaling": ours over ours on the method named in place of a peer (--cstore-associations 1,4).
    ("ct", "C-STORE storescu, 4 associations", "scaling", "C-STORE storescu, 1 association", 1.5,
     "C-STORE ingest, CT, 4 storescu associations at once: >= 1.5x our 1-association figure"),
)


# The targets of issue 9 (the engine as fast as its kernels), read as TARGETS; besides its kinds:
# "cpu" is dicomaccel's server CPU per instance over the peer's (at most the goal), "disk" its
# MB/s as a share of the sequential write + fdatasync measured in the run, "first" its median time
# to the first instance in ms (at most), "mbps" its MB/s (at least).
ISSUE9_TARGETS = (
    ("ct", "STOW-RS 1/request, 1 client", "ratio", "orthanc", 3.0, "STOW-RS CT, 1 client: >= 3x Orthanc"),
    ("ct", "STOW-RS 1/request, 4 clients", "ratio", "orthanc", 3.0, "STOW-RS CT, 4 clients: >= 3x Orthanc"),
    ("ct", "STOW-RS 1/request, 4 clients", "scaling", "STOW-RS 1/request, 1 client", 1.8,
     "STOW-RS CT, 4 clients: >= 1.8x our 1-client figure"),
    ("ct", "STOW-RS 1/request, 1 client", "cpu", "orthanc", 0.15,
     "server CPU per CT instance stored: <= 0.15x Orthanc's"),
    ("multiframe", "STOW-RS 1/request, 1 client", "disk", None, 0.8,
     "STOW-RS multi-frame: >= 80% of sequential write + fdatasync"),
    ("ct", "C-GET STUDY, getscu", "ratio", "dcmqrscp", 1.5, "C-GET CT study, getscu: >= 1.5x dcmqrscp"),
    ("ct", "C-GET STUDY, getscu", "cpu", "dcmqrscp", 0.15, "server CPU per C-GET sub-operation: <= 0.15x dcmqrscp's"),
    ("ct", "C-GET STUDY, getscu", "first", None, 3.0, "first instance of a C-GET: <= 3 ms"),
    ("multiframe", "C-GET STUDY, drain", "mbps", None, 2000.0, "C-GET multi-frame to a raw draining SCU: >= 2 GB/s"),
)


# The target of issue 13 (PostgreSQL index) this harness measures: "share" is the named peer's
# rate over dicomaccel's (the PostgreSQL index against the embedded SQLite one).
ISSUE13_TARGETS = (
    ("ct", "STOW-RS 1/request, 4 clients", "share", "dicomaccel-pg", 0.9,
     "STOW-RS CT 1/request, 4 clients, PostgreSQL index: >= 90% of the SQLite figure"),
)


def targets(data: dict, table: tuple = TARGETS) -> list[str]:
    """The targets of ``table`` measured in this run: what was measured and whether it is met."""
    found: dict[tuple[str, str], dict[str, dict]] = {}
    for row in data["rows"]:
        for corpus, prefix, *_ in table:
            if row["corpus"] == corpus and row["method"].startswith(prefix) and (s := summary(row)):
                found.setdefault((corpus, prefix), {})[row["peer"]] = s | {"method": row["method"],
                                                                             "label": row["label"]}
    tcp = (data.get("limits") or {}).get("tcp_mbps")
    out = []
    for corpus, prefix, kind, peer, goal, text in table:
        stats = found.get((corpus, prefix), {})
        ours = stats.get("dicomaccel")
        if ours is None:
            continue
        if kind in ("ratio", "share"):
            theirs = stats.get(peer)
            if theirs is None:
                continue
            # ratio: ours over the peer's; share: the peer's (ours on another index) over ours.
            top, bottom = (ours, theirs) if kind == "ratio" else (theirs, ours)
            value = top["rate"] / bottom["rate"]
            rates = f"{fig(top['rate'])} against {fig(bottom['rate'])}/s"
            shown = (f"{value:.2f}x ({rates}; peak RSS {ours['peak']:.0f} against {theirs['peak']:.0f} MiB)"
                     if kind == "ratio" else
                     f"{value:.0%} ({rates}; server CPU {_pair(top['server_cpu'], bottom['server_cpu'])} ms/inst)")
            met = value >= goal
        elif kind == "scaling":
            base = found.get((corpus, peer), {}).get("dicomaccel")
            if base is None:
                continue
            value = ours["rate"] / base["rate"]
            shown = (f"{value:.2f}x ({fig(ours['rate'])} against {fig(base['rate'])}/s; server CPU "
                     f"{_pair(ours['server_cpu'], base['server_cpu'])} ms/inst)")
            met = value >= goal
        elif kind == "cpu":
            theirs = stats.get(peer)
            if theirs is None or not ours["server_cpu"] or not theirs["server_cpu"]:
                continue
            value = ours["server_cpu"] / theirs["server_cpu"]
            shown = f"{value:.2f}x ({fig(ours['server_cpu'])} against {fig(theirs['server_cpu'])} ms)"
            met = value <= goal
        elif kind == "disk":
            seq = (data.get("limits") or {}).get("seq_write_mbps")
            if not seq:
                continue
            value = ours["mbps"] / seq
            shown, met = f"{value:.0%} ({fig(ours['mbps'])} of {fig(seq)} MB/s)", value >= goal
        elif kind == "mbps":
            shown = f"{fig(ours['mbps'])} MB/s (runs {fig(ours['mbps_min'])}-{fig(ours['mbps_max'])})"
            met = ours["mbps"] >= goal
        elif kind == "loopback":
            if not tcp:
                continue
            value = ours["mbps"] / tcp
            shown, met = f"{value:.0%} ({fig(ours['mbps'])} of {fig(tcp)} MB/s)", value >= goal
        else:  # p50, p99, first: ms, at most the goal
            value = ours[kind]
            if value is None:
                continue
            shown, met = f"{fig(value)} ms", value <= goal
        out.append(f"| {text} | {ours['label']}: {ours['method']} | {shown} | {'yes' if met else '**no**'} |")
    if not out:
        return []
    return ["| target | measured on | measured | met |", "|---|---|---|---|", *out]


def _table(data: dict, section: str) -> list[str]:
    if section == "requests":
        return _request_table(data)
    lines = ["| workload | method | peer | instances/s | MB/s | first instance ms | peak RSS MiB | accepted | "
             "server CPU ms/inst | client CPU ms/inst | cores busy |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, method, rows in _groups(data, section):
        for row in rows:
            s = summary(row)
            if s is None:
                cells = [f"failed: {row['error']}", "-", "-", "-", "-", "-", "-", "-"]
            else:
                cells = [s["rate_cell"], s["mbps_cell"], s["first_cell"], s["peak_cell"],
                         f"{s['accepted']}/{row['instances']}", s["server_cpu_cell"], s["client_cpu_cell"],
                         s["cores_cell"]]
            lines.append("| " + " | ".join([label, method, peer_label(row["peer"]), *cells]) + " |")
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


def latency(data: dict) -> list[str]:
    """Per FRAME source: dicomaccel's median time to the new instance of 1 and 10 frames, and how
    many times faster that is than each peer sending the whole source instance."""
    rows = [r for r in data["rows"] if r["section"] == "latency" and r["runs"]]
    ms = {(r["label"], r["method"], r["peer"]): 1e3 * statistics.median(x["seconds"] for x in r["runs"])
          for r in rows}
    out = []
    for label in dict.fromkeys(r["label"] for r in rows):
        whole = {p: v for (lab, m, p), v in ms.items() if lab == label and m.startswith("IMAGE")}
        for (lab, method, peer), v in ms.items():
            if lab != label or peer != "dicomaccel" or not method.startswith("FRAME"):
                continue
            versus = ", ".join(f"{w / v:.1f}x {p} whole ({fig(w)} ms)" for p, w in whole.items())
            out.append(f"| {label} | {method} | {fig(v)} | {versus or '-'} |")
    if not out:
        return []
    return ["| source | request | dicomaccel ms | against the whole instance (IMAGE level) |",
            "|---|---|---|---|", *out]


# The embed workload (issue 16): (method prefix, what is compared, goal, text).
EMBED_TARGETS = (
    ("C-GET FRAME", "handler", 20.0, "FRAME level, 1 frame: handler's own time >= 20x faster than the usual"),
    ("C-GET FRAME", "floor", 1.25, "FRAME level, 1 frame: end to end within 25% of pynetdicom's floor"),
    ("C-GET STUDY", "usual", 2.0, "C-GET of the CT study: >= 2x the usual handler"),
    ("C-STORE", "usual", 2.0, "C-STORE of the CT study: >= 2x the usual handler"),
)
EMBED_OURS, EMBED_USUAL, EMBED_FLOOR = "pynetdicom+dicomaccel", "pynetdicom-usual", "pynetdicom-floor"


def embed(data: dict) -> list[str]:
    """The embed workload: per method, each handler set's median time per request (or per
    instance) end to end and in the handlers, and dicomaccel's handlers against the usual ones
    and against the floor in the same run; then the targets of issue 16."""
    def per_item(row: dict, key: str) -> float | None:
        values = [1e3 * r[key] / count(row, r) for r in row["runs"] if key in r]
        return statistics.median(values) if values else None

    lines = ["| workload | method | handlers | ms per request or instance (end to end) | handlers' own ms | "
             "peak RSS MiB | end to end: usual / this | handlers: usual / this | this / floor (end to end) |",
             "|---" * 9 + "|"]
    found: dict[str, dict[str, float]] = {}
    for label, method, rows in _groups(data, "embed"):
        ms = {r["peer"]: (per_item(r, "seconds"), per_item(r, "handler_s"), r) for r in rows if r["runs"]}
        usual, floor = ms.get(EMBED_USUAL), ms.get(EMBED_FLOOR)
        for peer, (total, own, row) in ms.items():
            s = summary(row)
            vs_usual = f"{usual[0] / total:.2f}x" if usual and total else "-"
            own_vs = f"{usual[1] / own:.1f}x" if usual and usual[1] and own else "-"
            vs_floor = f"{total / floor[0]:.2f}" if floor and total and floor[0] else "-"
            lines.append(f"| {label} | {method} | {peer} | {fig(total)} | {fig(own) if own is not None else '-'} | "
                         f"{s['peak_cell']} | {vs_usual} | {own_vs} | {vs_floor} |")
        ours = ms.get(EMBED_OURS)
        if ours:
            for prefix, *_ in EMBED_TARGETS:
                if method.startswith(prefix):
                    found[prefix] = {"usual": usual[0] / ours[0] if usual else None,
                                     "handler": usual[1] / ours[1] if usual and usual[1] and ours[1] else None,
                                     "floor": ours[0] / floor[0] if floor and floor[0] else None,
                                     "peak": summary(ours[2])["peak"],
                                     "usual_peak": summary(usual[2])["peak"] if usual else None}
    for row in data["rows"]:
        if row["section"] == "embed" and not row["runs"]:
            lines.append(f"| {row['label']} | {row['method']} | {row['peer']} | failed: {row['error']} | - | - | - | - | - |")
    goals = []
    for prefix, kind, goal, text in EMBED_TARGETS:
        value = found.get(prefix, {}).get(kind)
        if value is None:
            continue
        met = value <= goal if kind == "floor" else value >= goal
        shown = f"{value:.2f} of the floor's time" if kind == "floor" else f"{value:.1f}x"
        if kind == "usual" and found[prefix]["usual_peak"] is not None:
            shown += f" (peak RSS {found[prefix]['peak']:.0f} against {found[prefix]['usual_peak']:.0f} MiB)"
        goals.append(f"| {text} | {shown} | {'yes' if met else '**no**'} |")
    if goals:
        lines += ["", "| target (issue 16) | measured | met |", "|---|---|---|", *goals]
    return lines


def _load_range(data: dict) -> str:
    loads = [r["load1"] for row in data["rows"] for r in row["runs"]]
    if not loads:
        return "-"
    return f"min {min(loads):.2f}, median {statistics.median(loads):.2f}, max {max(loads):.2f}"


def _page_reporting(data: dict) -> list[str]:
    """The machine table's row on free page reporting, if the guest has it."""
    settings = data["machine"].get("page_reporting")
    if not settings:
        return []
    reported = sorted(r["reported_mib"] for row in data["rows"] for r in row["runs"] if "reported_mib" in r)
    during = (f"; MiB reported per run: min {fig(reported[0])}, median {fig(statistics.median(reported))}, "
              f"max {fig(reported[-1])}") if reported else ""
    return [f"| free page reporting (virtio-balloon) | free {settings['block_kib']} KiB blocks go back to the "
            f"host after {settings['min_free_ms']} ms; touching one again faults in the hypervisor "
            f"(development VM: 3.6 us per 4 KiB page){during} |"]


# The servers every stow run measures beside the peers (benchmarks.machine), as the limits
# table names them.
_STOW_FLOORS = {
    "stow_floor": "STOW-RS floor (benchmarks/floor.c: read, write, fdatasync, directory fsync; no parsing, "
                  "no index)",
    "design_floor": "STOW-RS design floor (benchmarks/design_floor.c: dicomaccel's per-request work in C — "
                    "temp file, early writeback, rename to a marker and link, its index transaction's own "
                    "SQLite statements, syncfs; no parsing, no Python)",
    "front_end": "STOW-RS front end alone, a ceiling (benchmarks/front_end.py: what dicomaccel serve answers "
                 "HTTP with, one process, over an archive that keeps nothing — the event loop's own work "
                 "per request; no file, no index, no flush, no hand-off)",
    "archive_alone": "STOW-RS archive alone, a ceiling (benchmarks/archive_alone.py: dicomaccel's archive "
                     "storing the same instances through its blocking API with serve's defaults, in as many "
                     "processes as serve has workers sharing one archive, a thread per client — its work "
                     "behind the event loop; no HTTP)",
}


def _floor_row(key: str, what: str, n: str, v: dict) -> str:
    """A limits-table row of one :data:`_STOW_FLOORS` server at ``n`` clients. The archive
    alone answers no requests: its clients are threads, its unit the instance."""
    runs = f"median of {len(v['runs'])}; {', '.join(fig(r) for r in v['runs'])}"
    clients = f"{n} client{'s' if n != '1' else ''}"
    if key == "archive_alone":
        procs = v.get("processes", 1)
        return (f"| {what}, {clients} as threads of {procs} process{'es' if procs != 1 else ''}, CT ({runs}) "
                f"| {fig(v['per_s'])} instances/s, process CPU {fig(v['cpu_ms'])} ms/instance |")
    return (f"| {what}, {clients}, CT 1/request ({runs}) | {fig(v['per_s'])} requests/s, server CPU "
            f"{fig(v['cpu_ms'])} ms/request |")


def _limits(data: dict) -> list[str]:
    """The disk and loopback limits measured before the workloads, and the multi-frame STOW-RS
    rate of dicomaccel as a share of the sequential write bandwidth; the C-STORE rates of
    :data:`CEILING_SHARES` as a share of each receiver of :data:`CEILINGS` measured beside them
    (storescu into storescp --ignore, into the durable floor)."""
    lim = data.get("limits")
    if not lim:
        return []
    ceiling: dict[tuple[str, str], dict[str, float]] = {}
    for r in data["rows"]:
        if r["section"] == "ingest" and r["peer"] in CEILINGS and (s := summary(r)) and s["rate"]:
            ceiling.setdefault((r["label"], r["method"]), {})[r["peer"]] = s["rate"]
    files = lim["files_per_s"]
    out = ["## Limits of this machine, measured in the same run", "",
           f"In the file system of the servers' work directory ({lim['filesystem']}), before the workloads.", "",
           "| limit | value |", "|---|---|",
           f"| sequential write + fdatasync, 256 MiB in 8 MiB writes (fastest of "
           f"{len(lim['seq_write_runs'])}; {', '.join(fig(v) for v in lim['seq_write_runs'])}) | "
           f"{fig(lim['seq_write_mbps'])} MB/s |",
           *[f"| {lim['file_bytes']} B files, {kind}, {n} thread{'s' if n != '1' else ''} | "
             f"{fig(files[n][kind])} files/s |" for kind in next(iter(files.values())) for n in files],
           f"| loopback TCP, one sender and one receiver process, 1 GiB in 1 MiB sends | {fig(lim['tcp_mbps'])} MB/s |",
           *[_floor_row(key, what, n, v) for key, what in _STOW_FLOORS.items() for n, v in lim.get(key, {}).items()],
           *([f"| sender CPU per CT instance ({lim['file_bytes']} B; the corpus in turn, each opened "
              f"per send) over loopback TCP as {lim['send_pdu']} B P-DATA-TF PDUs (12-byte headers around "
              f"slices of the file mapped for the send, 32 buffers per sendmsg; the least a C-GET "
              f"sub-operation costs its SCP) | "
              f"{fig(lim['send_cpu_ms']['framed'])} ms |",
              f"| the same instance unframed, one sendfile (no DIMSE sender can) | "
              f"{fig(lim['send_cpu_ms']['whole'])} ms |"] if "send_cpu_ms" in lim else []),
           ""]
    floor, design, front = lim.get("stow_floor", {}), lim.get("design_floor", {}), lim.get("front_end", {})
    alone = lim.get("archive_alone", {})
    for row in data["rows"]:
        s = summary(row)
        m = re.fullmatch(r"STOW-RS 1/request, (\d+) clients?", row["method"])
        if s and row["corpus"] == "ct" and m and m.group(1) in floor:
            out.append(f"- {row['label']}, {row['method']}: {row['peer']} {fig(s['rate'])} inst/s = "
                       f"{s['rate'] / floor[m.group(1)]['per_s']:.0%} of the STOW-RS floor.")
        if s and row["corpus"] == "ct" and m and m.group(1) in design and row["peer"] == "dicomaccel":
            out.append(f"- {row['label']}, {row['method']}: {row['peer']} {fig(s['rate'])} inst/s = "
                       f"{s['rate'] / design[m.group(1)]['per_s']:.0%} of its own design in C (design floor).")
        if s and row["corpus"] == "ct" and m and m.group(1) in front and row["peer"] == "dicomaccel" \
                and s.get("server_cpu"):
            # CPU, not rate: the front end runs in one process, the server in --workers.
            parts = [("its front end alone", front[m.group(1)]["cpu_ms"])]
            if m.group(1) in alone:
                parts.append(("its archive alone", alone[m.group(1)]["cpu_ms"]))
            together = sum(ms for _, ms in parts) / s["server_cpu"]
            out.append(f"- {row['label']}, {row['method']}: dicomaccel {fig(s['server_cpu'])} ms of server CPU "
                       f"per instance, of which " + " and ".join(
                           f"{what} takes {fig(ms)} ({ms / s['server_cpu']:.0%})" for what, ms in parts)
                       + (f", together {together:.0%}" if len(parts) > 1 else "") + ".")
        if s and row["section"] == "requests" and row["method"].startswith("WADO-RS frame"):
            out.append(f"- {row['label']}, {row['method']}: {row['peer']} {fig(s['mbps'])} MB/s = "
                       f"{s['mbps'] / lim['tcp_mbps']:.1%} of loopback TCP.")
        if s and row["corpus"] == "ct" and row["method"].startswith("C-GET") and "send_cpu_ms" in lim \
                and s.get("server_cpu"):
            out.append(f"- {row['label']}, {row['method']}: {row['peer']} server CPU {fig(s['server_cpu'])} "
                       f"ms/sub-operation = {s['server_cpu'] / lim['send_cpu_ms']['framed']:.1f}x the "
                       f"framed send's.")
        if s and s["rate"] and row["peer"] in CEILING_SHARES:  # none stored: no share to give
            for name, top in sorted(ceiling.get((row["label"], row["method"]), {}).items(),
                                    key=lambda item: _peer_rank(item[0])):
                out.append(f"- {row['label']}, {row['method']}: {row['peer']} {fig(s['rate'])} inst/s = "
                           f"{s['rate'] / top:.0%} of {CEILING_NAMES[name]}.")
        if s and row["peer"] == "dicomaccel" and row["corpus"] == "multiframe" and row["method"].startswith("STOW"):
            out.append(f"- {row['label']}, {row['method']}: dicomaccel {fig(s['mbps'])} MB/s = "
                       f"{s['mbps'] / lim['seq_write_mbps']:.0%} of sequential write + fdatasync.")
    return out + [""] if out[-1] else out


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
        *_page_reporting(data),
        f"| dicomaccel for ingest | `dicomaccel serve --workers {data.get('dicomaccel_workers', 1)} "
        f"--fsync {data.get('dicomaccel_fsync', 'always')}` |",
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
    out += _limits(data)
    out += ["## Corpus", "", "| corpus | instances | MB | transfer syntax | SOP classes |", "|---|---|---|---|---|"]
    for c in data["corpora"]:
        out.append(f"| {c['label']} | {c['instances']} | {c['bytes'] / 1e6:.1f} | {c['transfer_syntax']} | "
                   f"{len(c['sop_classes'])} |")
    if goals := targets(data):
        out += ["", "## Targets of issue 11 (WADO-RS, QIDO-RS, C-FIND)", "",
                "Medians of this run; ratios against the peer the issue names.", "", *goals]
    if goals := targets(data, ISSUE9_TARGETS):
        out += ["", "## Targets of issue 9 (the engine as fast as its kernels)", "",
                "Medians of this run; ratios against the peer the issue names. Peak RSS is in the "
                "tables below (every dicomaccel row).", "", *goals]
    if goals := targets(data, ISSUE12_TARGETS):
        out += ["", "## Targets of issue 12 (C-STORE and C-MOVE SCPs)", "",
                "Medians of this run; ratios against the peer the issue names.", "", *goals]
    if goals := targets(data, ISSUE13_TARGETS):
        out += ["", "## Target of issue 13 (PostgreSQL index)", "",
                "Medians of this run: dicomaccel with its index on PostgreSQL (dicomaccel-pg, "
                "the PostgreSQL server's own CPU not counted) against the embedded SQLite index.",
                "", *goals]
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
            if section == "embed":
                out += ["Per request (FRAME) or per instance, medians of the runs; the ratios are taken in "
                        "this run. Handlers' own time: inside the C-GET handler's generator (pynetdicom's "
                        "encoding and sending of what it yields is outside) or the C-STORE handler's call.",
                        "", *embed(data), ""]
    if answers := answered_as(data):
        out += ["### What each DICOMweb peer was asked and answered", "", *answers, ""]
    if data.get("qido_load"):
        out += ["The query corpus was stored over STOW-RS before the searches: " + "; ".join(
            f"{peer} {v['instances']} instances in {v['seconds']} s" for peer, v in data["qido_load"].items()) + ".", ""]
    if frame_latency := latency(data):
        out += ["### FRAME level against whole-instance retrieval", "",
                "Median time from the C-GET-RQ to the received new instance (raw SCU, one C-GET per run), "
                "against each peer sending the whole source instance to the same SCU.", "",
                *frame_latency, ""]
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
    "starts; N clients are N processes (forked, sharing the prebuilt bodies) with one keep-alive HTTP "
    "connection each, released together by a barrier. dicomaccel runs with `--workers` as the Machine table "
    "says and `--fsync always`, and Orthanc with `SyncStorageArea: true`: both fsync each file before answering; "
    "dcmqrscp does not fsync. Time to first instance: the first response that reports a stored instance "
    "(STOW-RS), the first successful C-STORE response (storescu). *accepted* counts the instances the "
    "server reports stored (STOW-RS response, Orthanc's index, dcmqrscp's storage area); an ingest "
    "row's instances/s and CPU per instance count only those (with four storescu at once dcmqrscp "
    "keeps 60-85% of the CT and none of the larger instances: its forked children refuse them with "
    "C000, \"Index database error\", after failing to open one another's files, all of one name "
    "in its log), its MB/s what the clients sent.",
    "- C-STORE is DCMTK `storescu -R -nh` over one association, or the corpus split in order over N "
    "storescu started together (`--cstore-associations`), timed from their own logs with "
    "microsecond stamps: first Store Request to last Store Response of any.",
    "- C-STORE ceiling: the same storescu runs, alternated with the servers', into DCMTK "
    "`storescp --ignore --fork +xa -pm -pdu 131072` (one process per association, every transfer "
    "syntax and SOP class, its largest PDU), which receives each data set, discards it and answers "
    "Success: what storescu can push into a receiver that does the least, on this machine. Its "
    "*accepted* is the requests storescp logged as received, less those it logged as failed. It is "
    "never the best peer of a ratio; the limits give the servers' C-STORE rates as a share of it.",
    "- C-STORE durable floor: the same storescu runs into `benchmarks/cstore_floor.c` (one thread per "
    "association, 131072-byte PDUs), which writes each data set to a new file as its PDVs arrive "
    "(starting each write's writeback at once, sync_file_range), fdatasyncs it and fsyncs the "
    "directory, then answers Success: the least a C-STORE SCP that "
    "answers only durable instances can do here (storescu waits for each answer, so on one "
    "association every instance waits for its own flush). Its *accepted* is the files it holds. "
    "Like the ceiling, never a peer in a ratio; the limits give the C-STORE rates as a share of it.",
    "- Retrieve: one Study Root C-GET of the whole corpus. `getscu --ignore` is timed from its log "
    "(C-GET request to final response; first instance when its first C-STORE response is sent); the "
    "pynetdicom SCU from `send_c_get` to the final response, counting data sets without decoding them. "
    "Association set-up and release are outside both timings. MB/s counts the PS3.10 files served "
    "(FRAME level: the bytes received).",
    "- C-MOVE: one Study Root C-MOVE of the CT study by DCMTK `movescu -S`, timed from its log (debug "
    "level, for the final response's counters): C-MOVE request to final response, which both SCPs send "
    "after the last sub-operation's C-STORE response; association set-up and release outside. The "
    "destination is one DCMTK `storescp --ignore` (started by the harness, `TCP_NODELAY=1`) that both "
    "servers know from their configuration; its CPU is in neither column. A run counts only with a "
    "final Success and every instance completed.",
    "- Every DCMTK process (dcmqrscp, storescu, getscu) runs with `TCP_NODELAY=1` in its environment: "
    "Debian's DCMTK leaves Nagle's algorithm on without it. The pynetdicom SCP and SCU set TCP_NODELAY "
    "on their sockets; dicomaccel and Orthanc set it themselves.",
    "- Peak RSS: VmHWM of the server's processes, reset through /proc/PID/clear_refs before each run "
    "and sampled every 5 ms during it (dcmqrscp serves each association in a forked child).",
    "- Server CPU ms/inst: the CPU time (utime + stime + cutime + cstime from /proc/PID/stat, 10 ms "
    "ticks) of the server process and all its descendants, read before and after each run, divided by "
    "the instances; cutime/cstime hold what reaped children used, so dcmqrscp's per-association "
    "processes and dicomaccel's workers count even when they ended during the run. The headline's CPU "
    "ratio is dicomaccel's median over the best peer's.",
    "- Client CPU ms/inst: STOW-RS, the client processes' own CPU (getrusage) from the barrier to their "
    "last response; otherwise the harness's CPU plus that of the clients it ran and waited for "
    "(getscu, storescu), over the run, less the memory sampler's thread.",
    "- `drain`: a C-GET SCU on raw sockets and this project's PDU and command-set encoders; it proposes "
    "Study Root GET and the corpus's storage SOP classes (SCP role), reads every PDU, parses only PDU and "
    "PDV headers and command sets, discards the data sets and answers each C-STORE-RQ with 0000. Its "
    "MB/s counts the data set bytes received.",
    "- Limits: one file per repetition written in 8 MiB writes then fdatasync'ed, the fastest of three "
    "the limit (a VM that hands free pages back to its host makes some repetitions fault them in "
    "again; see the machine table); files of the CT "
    "instance size written, fdatasync'ed and closed by 1 or 4 threads for 2 s (at most 1000 each), with "
    "and without an fsync of their directory after each; loopback TCP from a forked sender to the "
    "harness, timed by the receiver.",
    "- Receivers' maximum PDU length: getscu's default of 16384 bytes for both receivers.",
    "- JPEG 2000 corpus: both receivers propose JPEG 2000 Lossless first and the uncompressed syntaxes "
    "after it (getscu `+xv`); dcmqrscp runs with `+xv` so it accepts JPEG 2000 from storescu (`-xv`). "
    "The pynetdicom SCP accepts only the uncompressed syntaxes for storage, and Orthanc 1.10 without a "
    "JPEG 2000 codec plugin cannot transcode to them: their failures are reported as measured.",
    "- pydicom-data over storescu: one association per compressed transfer syntax (storescu proposes one "
    "compressed syntax per run), times summed.",
    "- WADO-RS and QIDO-RS: one `http.client` connection (keep-alive, TCP_NODELAY) in a forked process of "
    "its own, opened before the clock starts; requests one after another, each timed from sending it to "
    "the last byte of its answer (p50 and p99 by nearest rank over the run's requests; the cells show "
    "the median of the runs' percentiles). Frames: the same frame GET for `--http-seconds` per run, at "
    "least 3 times; every answer must be a 200 (native: at least the frame's bytes). *of loopback TCP*: "
    "MB/s of answer bytes over the loopback limit measured at the start of the same run. Study: one GET of "
    "the study as stored, its parts counted. Client CPU: the client process's own (getrusage).",
    "- QIDO-RS: study searches by Patient Name with limit=100, the same seeded list of queries for every "
    "peer and run; *results/request* counts the studies in the answers. Orthanc runs with "
    "`QidoCaseSensitive: false` (PS3.4 C.2.2.2.4 allows case-insensitive PN matching, and dicomaccel "
    "matches so), so both find the same studies. The large index is built directly as index rows "
    "(`dicomaccel.testing.query_index`), as storing that many instances would take most of an hour, "
    "and only dicomaccel can serve it; the side-by-side index is small instances stored over STOW-RS "
    "into both.",
    "- C-FIND: DCMTK `findscu -S --repeat N` on one association (STUDY level, Patient Name prefix "
    "matching every loaded study, 7 return keys), timed from its log: first Find Request to last final "
    "Find Response. Server CPU per request includes the association's set-up and release.",
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
            if not groups or section == "latency":  # one instance per run: the table says it all
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
                ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=peer_label(peer), color=COLOURS.get(peer))
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

