"""End-to-end C-GET benchmark: dicomaccel against DCMTK's dcmqrscp and a pynetdicom SCP, same run.

    python -m benchmarks.cget [--ct 200] [--multiframe 4] [--runs 3]
                              [--peers dicomaccel,dcmqrscp,pynetdicom] [--clients getscu,pynetdicom]

Workloads (each one study, retrieved with one Study Root C-GET at STUDY level):

- ``ct``: ``--ct`` CT instances, 512x512x16 bit (``dicomgen.ct_series``), about 0.5 MB each;
- ``multiframe``: ``--multiframe`` native multi-frame instances, 512x512x16 bit with 325, 350, 400
  and 500 frames (``dicomgen.multiframe_instance``), 170 to 262 MB each.

Every peer holds both studies (see :mod:`benchmarks.peers` for how each is started and loaded).
Two receivers, each run once per peer per repetition, peers interleaved (A B C A B C ...) so
machine drift hits all of them:

- ``getscu``: DCMTK ``getscu --ignore`` with ``TCP_NODELAY=1``. Its own log, with microsecond
  timestamps (``--log-config``), times the C-GET: from "Sending C-GET Request" to the final
  (non-Pending) "Received C-GET Response"; time to first instance ends at the first "Sending
  C-STORE Response", which getscu logs once the whole first data set has arrived.
- ``pynetdicom``: an SCU in this process proposing the studies' storage SOP classes with the SCP
  role (PS3.4 C.5.3) and an EVT_C_STORE handler that returns 0x0000 without decoding. The C-GET
  is timed from ``send_c_get`` to its final response; time to first instance ends at the first
  handler call (also after the whole data set has arrived).

Association set-up and release are outside both timings. instances/s and MB/s (10^6 bytes of
the PS3.10 files served) come from that time; peak RSS is the largest VmHWM of the server's
processes during the C-GET, reset through ``/proc/PID/clear_refs`` before each one. Each figure
is the median over ``--runs`` with the spread (min-max). The report ends with a Markdown table:
a row per workload, receiver and peer, with ratios of instances/s against the baselines
measured in this run, and the exact command line.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pynetdicom
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

from benchmarks.peers import (
    PEERS,
    Peer,
    PeerUnavailable,
    RssSampler,
    dcmtk_env,
    dcmtk_program,
    install_signal_handlers,
)

from dicomaccel.testing import files as dicomgen  # noqa: E402

MULTIFRAME_FRAMES = (325, 350, 400, 500)
BASELINES = ("dcmqrscp", "pynetdicom")
TARGETS = {"dcmqrscp": 1.5, "pynetdicom": 8.0}  # dicomaccel's instances/s must reach these ratios
CLIENTS = ("getscu", "pynetdicom")
GETSCU_TITLE = "GETSCU"
SCU_TITLE = "PYNETDICOM"
RUN_TIMEOUT = 1800


@dataclass
class Workload:
    """One study on disk: the thing a C-GET retrieves."""

    name: str
    label: str
    study_uid: str
    files: list[Path]
    sop_classes: list[str]

    @property
    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)


@dataclass
class Run:
    """One C-GET: seconds from request to final response, seconds to first instance, peak MiB."""

    seconds: float
    first: float
    peak_mib: float


@dataclass
class Series:
    """The runs of one (workload, client, peer) cell, or why it failed."""

    runs: list[Run] = field(default_factory=list)
    error: str | None = None


def make_workloads(root: Path, ct: int, multiframe: int) -> list[Workload]:
    """Write the CT study and the multi-frame study under ``root``; return the non-empty ones."""
    workloads = []
    if ct:
        study, instances = dicomgen.ct_series(ct)
        files = _write(root / "ct", instances)
        workloads.append(Workload("ct", f"CT {ct} x 512x512x16", study, files, [_sop_class(files[0])]))
    if multiframe:
        study = generate_uid()
        frames = [MULTIFRAME_FRAMES[i % len(MULTIFRAME_FRAMES)] for i in range(multiframe)]
        # One instance at a time: each is up to 262 MB in memory.
        files = [_write(root / "multiframe", [dicomgen.multiframe_instance(n, 512, 512, study_uid=study)], i)[0]
                 for i, n in enumerate(frames)]
        label = f"multi-frame {multiframe} x 512x512x16 ({min(frames)}-{max(frames)} frames)"
        workloads.append(Workload("multiframe", label, study, files, sorted({_sop_class(f) for f in files})))
    return workloads


def _write(directory: Path, instances: list[bytes], start: int = 0) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, data in enumerate(instances, start):
        path = directory / f"{i:05d}.dcm"
        path.write_bytes(data)
        paths.append(path)
    return paths


def _sop_class(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).SOPClassUID)


# DCMTK's logger (log4cplus) pattern: %Q is milliseconds with a microsecond fraction.
GETSCU_LOG_CONFIG = """\
log4cplus.rootLogger = INFO, console
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = %D{%H:%M:%S.%Q} %p: %m%n
"""
_STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3})\.(\d{3}) (\w+): (.*)$")


def parse_getscu_log(text: str) -> tuple[float, float, int, int]:
    """From a getscu log made with :data:`GETSCU_LOG_CONFIG`: (seconds from C-GET request to final
    response, seconds to the first complete instance, C-STORE sub-operations answered Success,
    Number of Completed Sub-operations in the final response)."""
    sent = first = final = None
    stored = completed = 0
    day = 0.0
    previous = None
    for line in text.splitlines():
        m = _STAMP.match(line)
        if not m:
            continue
        h, mi, s, ms, us = (int(g) for g in m.groups()[:5])
        t = h * 3600 + mi * 60 + s + ms / 1e3 + us / 1e6 + day
        if previous is not None and t < previous:  # the log crossed midnight
            day += 86400
            t += 86400
        previous = t
        message = m.group(7)
        if message.startswith("Sending C-GET Request"):
            sent = t
        elif message.startswith("Sending C-STORE Response (Success)"):
            stored += 1
            first = t if first is None else first
        elif message.startswith("Received C-GET Response") and "(Pending)" not in message:
            final = t
        elif message.strip().startswith("Number of Completed Suboperations"):
            completed = int(message.rsplit(":", 1)[1])
    if sent is None or final is None or first is None:
        raise RuntimeError(f"getscu log lacks the C-GET request, a stored instance or the final response:\n"
                           f"{text[-1500:]}")
    return final - sent, first - sent, stored, completed


def get_with_getscu(peer: Peer, workload: Workload, max_pdu: int, log_config: Path) -> tuple[float, float]:
    """One C-GET of the study by DCMTK getscu; (seconds, seconds to first instance)."""
    cmd = [dcmtk_program("getscu"), "--log-config", str(log_config), "-S", "-aet", GETSCU_TITLE,
           "-aec", peer.ae_title, "-pdu", str(max_pdu), "--ignore",
           "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={workload.study_uid}",
           "127.0.0.1", str(peer.port)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=dcmtk_env(), timeout=RUN_TIMEOUT)
    log = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"getscu exited with {done.returncode}: {log[-1500:]}")
    seconds, first, stored, completed = parse_getscu_log(log)
    expected = len(workload.files)
    if stored != expected or completed != expected:
        raise RuntimeError(f"getscu received {stored}, final response reports {completed} completed, "
                           f"expected {expected}")
    return seconds, first


def get_with_pynetdicom(peer: Peer, workload: Workload, max_pdu: int) -> tuple[float, float]:
    """One C-GET of the study by a pynetdicom SCU; (seconds, seconds to first instance)."""
    received: list[float] = []

    def on_open(event) -> None:
        # As TCP_NODELAY=1 does for getscu: the C-GET-RQ goes out as two small P-DATA PDUs
        # (command, identifier), and with Nagle's algorithm on the second waits for the
        # server's delayed ACK (about 40 ms on Linux).
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_store(event) -> int:
        # The dataset is left undecoded: event.dataset would parse it.
        received.append(time.perf_counter())
        return 0x0000

    ae = AE(ae_title=SCU_TITLE)
    ae.dimse_timeout = ae.network_timeout = ae.acse_timeout = RUN_TIMEOUT
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for uid in workload.sop_classes:
        ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    roles = [build_role(uid, scp_role=True) for uid in workload.sop_classes]
    assoc = ae.associate("127.0.0.1", peer.port, ae_title=peer.ae_title, ext_neg=roles, max_pdu=max_pdu,
                         evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_CONN_OPEN, on_open)])
    if not assoc.is_established:
        raise RuntimeError(f"pynetdicom could not associate with {peer.name}")
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = workload.study_uid
    final = None
    try:
        start = time.perf_counter()
        for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
            if status is None or "Status" not in status:
                raise RuntimeError("pynetdicom: no valid C-GET response (timeout or abort)")
            if status.Status not in (0xFF00, 0xFF01):
                final = status
        seconds = time.perf_counter() - start
    finally:
        if assoc.is_established:
            assoc.release()
    expected = len(workload.files)
    if final is None or final.Status != 0x0000 or len(received) != expected:
        code = "none" if final is None else f"0x{final.Status:04X}"
        raise RuntimeError(f"pynetdicom received {len(received)} of {expected}, final status {code}")
    return seconds, received[0] - start


def _figure(x: float) -> str:
    """Three significant figures for small values (a few multi-frame instances/s), integers above."""
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def median_spread(values: list[float]) -> str:
    """``median (min-max)``, or just the value for a single run."""
    med = _figure(statistics.median(values))
    return med if len(values) == 1 else f"{med} ({_figure(min(values))}-{_figure(max(values))})"


def report(results: dict, workloads: list[Workload], clients: list[str], peers: list[str], argv: list[str]) -> str:
    """The Markdown table, the target check and the exact command line."""
    baselines = [b for b in BASELINES if b in peers]
    head = ["workload", "receiver", "peer", "instances/s", "MB/s", "first instance ms", "peak RSS MiB"]
    head += [f"x {b}" for b in baselines]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    verdicts = []
    for w in workloads:
        for client in clients:
            rate = {}
            for name in peers:
                series = results[w.name, client, name]
                if series.runs:
                    rate[name] = statistics.median(len(w.files) / r.seconds for r in series.runs)
            for name in peers:
                series = results[w.name, client, name]
                if not series.runs:
                    cells = [f"failed: {series.error}"] + ["-"] * (len(head) - 4)
                else:
                    runs = series.runs
                    cells = [median_spread([len(w.files) / r.seconds for r in runs]),
                             median_spread([w.nbytes / r.seconds / 1e6 for r in runs]),
                             median_spread([r.first * 1e3 for r in runs]),
                             f"{max(r.peak_mib for r in runs):.0f}"]
                    cells += [f"{rate[name] / rate[b]:.2f}x" if b in rate else "-" for b in baselines]
                lines.append("| " + " | ".join([w.label, client, name, *cells]) + " |")
            # The targets are set against getscu; the pynetdicom receiver is itself the bottleneck.
            if client == "getscu" and "dicomaccel" in rate:
                for b in baselines:
                    if b in rate:
                        ratio = rate["dicomaccel"] / rate[b]
                        verdicts.append(f"- {w.name} / {client}: dicomaccel {ratio:.2f}x {b} "
                                        f"(target >= {TARGETS[b]}x: {'met' if ratio >= TARGETS[b] else 'NOT met'})")
    out = ["", *lines, ""]
    if verdicts:
        out += ["Targets (instances/s, medians, received by getscu):", *verdicts, ""]
    out.append(f"command: {shlex.join(['python', '-m', 'benchmarks.cget', *argv])}")
    return "\n".join(out)


def _csv(choices: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        unknown = [t for t in items if t not in choices]
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)} (got {text!r})")
        return items
    return parse


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct", type=int, default=200, help="CT instances in the CT study (0: skip; default 200)")
    parser.add_argument("--multiframe", type=int, default=4,
                        help="instances in the multi-frame study (0: skip; default 4)")
    parser.add_argument("--runs", type=int, default=3, help="C-GETs per workload, receiver and peer (default 3)")
    parser.add_argument("--peers", type=_csv(tuple(PEERS)), default=list(PEERS),
                        help="comma-separated servers (default: dicomaccel,dcmqrscp,pynetdicom)")
    parser.add_argument("--clients", type=_csv(CLIENTS), default=list(CLIENTS),
                        help="comma-separated receivers (default: getscu,pynetdicom)")
    parser.add_argument("--max-pdu", type=int, default=16384,
                        help="receivers' Maximum Length (PS3.8 D.1); default 16384, getscu's own default")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where corpora and archives go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.ct < 0 or args.multiframe < 0 or args.ct + args.multiframe == 0:
        parser.error("need --runs >= 1 and at least one of --ct, --multiframe")

    install_signal_handlers()
    getscu = dcmtk_program("getscu")
    version = subprocess.run([getscu, "--version"], capture_output=True, text=True).stdout if getscu else ""
    dcmtk = version.split("\n")[0]
    print(f"{os.cpu_count()} CPUs; pydicom {pydicom.__version__}; pynetdicom {pynetdicom.__version__}; "
          f"DCMTK: {dcmtk.strip('$ ') or 'absent'}; receivers' max PDU {args.max_pdu}", flush=True)
    clients = list(args.clients)
    if "getscu" in clients and getscu is None:
        print("skipping receiver getscu: DCMTK getscu not installed", file=sys.stderr)
        clients.remove("getscu")
    if not clients:
        parser.error("no receiver available")

    work = Path(tempfile.mkdtemp(prefix="dicomaccel-cget-", dir=args.workdir))
    started: dict[str, Peer] = {}
    try:
        t0 = time.perf_counter()
        workloads = make_workloads(work / "corpus", args.ct, args.multiframe)
        for w in workloads:
            print(f"{w.name}: {len(w.files)} instances, {w.nbytes / 1e6:.1f} MB, study {w.study_uid}", flush=True)
        print(f"corpus written in {time.perf_counter() - t0:.1f} s", flush=True)

        files = [f for w in workloads for f in w.files]
        for name in args.peers:
            cls = PEERS[name]
            reason = cls.unavailable()
            if reason:
                print(f"skipping peer {name}: {reason}", file=sys.stderr, flush=True)
                continue
            t0 = time.perf_counter()
            peer = cls(work / "peers")
            try:
                peer.start(files)
            except PeerUnavailable as exc:
                print(f"skipping peer {name}: {exc}", file=sys.stderr, flush=True)
                continue
            started[name] = peer
            print(f"{name}: listening on 127.0.0.1:{peer.port} as {peer.ae_title}, "
                  f"loaded in {time.perf_counter() - t0:.1f} s", flush=True)
        if not started:
            print("no peer available", file=sys.stderr)
            return 1
        peers = list(started)

        log_config = work / "getscu-log.cfg"
        log_config.write_text(GETSCU_LOG_CONFIG)
        results = {(w.name, c, p): Series() for w in workloads for c in clients for p in peers}
        for w in workloads:
            for client in clients:
                for i in range(args.runs):
                    for name in peers:  # interleaved: A B C, A B C, ...
                        series = results[w.name, client, name]
                        if series.error:
                            continue
                        peer = started[name]
                        try:
                            with RssSampler(peer) as rss:
                                if client == "getscu":
                                    seconds, first = get_with_getscu(peer, w, args.max_pdu, log_config)
                                else:
                                    seconds, first = get_with_pynetdicom(peer, w, args.max_pdu)
                        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                            series.error = " ".join(str(exc).split())[:300]
                            print(f"{w.name} {client} {name} run {i + 1}: FAILED {series.error}", flush=True)
                            continue
                        series.runs.append(Run(seconds, first, rss.peak_mib))
                        print(f"{w.name} {client} {name} run {i + 1}: {_figure(len(w.files) / seconds)} inst/s "
                              f"{_figure(w.nbytes / seconds / 1e6)} MB/s first {first * 1e3:.1f} ms "
                              f"peak RSS {rss.peak_mib:.0f} MiB", flush=True)
        print(report(results, workloads, clients, peers, argv), flush=True)
        return 0 if all(s.runs for s in results.values()) else 1
    finally:
        for peer in started.values():
            peer.stop()
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        # main()'s finally has stopped the servers by now.
        print("interrupted", file=sys.stderr)
        sys.exit(130)
