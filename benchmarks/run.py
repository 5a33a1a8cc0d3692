"""The benchmark runner: every workload against every peer, interleaved, into one report.

    python -m benchmarks run [--peers dicomaccel,orthanc,dcmqrscp,pynetdicom]
                             [--workloads stow,cstore,cget,frame,large-upload] [--runs 5] [--out DIR]
    python -m benchmarks run --workloads wado-frame,wado-study,qido,cfind,cmove [...]
    python -m benchmarks run --workloads embed [--embed-requests 20] [...]

Peers (:mod:`benchmarks.peers`), installed from Debian's packages (as root; ``--install-peers``
runs this when a package is missing):

    apt-get install -y orthanc orthanc-dicomweb dcmtk

- dicomaccel: ``dicomaccel serve`` of this checkout (STOW-RS, C-GET SCP incl. FRAME level), for
  ingest with ``--workers`` from ``--dicomaccel-workers`` (default: the CPU count);
- orthanc: Orthanc + DICOMweb plugin on a generated configuration (STOW-RS, C-STORE, C-GET SCP);
- dcmqrscp: DCMTK's Q/R SCP (C-STORE and C-GET SCP), loaded with ``storescu``;
- pynetdicom: the C-GET SCP of ``benchmarks/pynetdicom_scp.py`` (retrieve only; FRAME level done
  with pydicom, the way a pynetdicom server would add it);
- dicomaccel-pg (asked for by name): dicomaccel for the ``stow`` workload with its index on
  PostgreSQL (``--index``), a new database per run on a throwaway cluster of Debian's
  ``postgresql`` that the runner starts: the report compares it with ``dicomaccel`` (SQLite).

Network isolation: Orthanc 1.10 and dcmqrscp cannot bind to one address, so when either is
selected the runner re-runs itself, servers and clients alike, inside a private network
namespace with only loopback (``unshare --net``, then ``ip link set lo up``); that needs root. Not
root, or no ``unshare``: those two peers are skipped with a message. Every DCMTK process runs with
``TCP_NODELAY=1`` (Debian's DCMTK leaves Nagle's algorithm on without it).

Corpora (:mod:`benchmarks.corpus`, generated once, cached under ``--cache-dir``): a CT series
(``--ct``), native multi-frame instances (``--multiframe``), JPEG 2000 lossless multi-frame
instances (``--j2k`` of ``--j2k-frames`` frames), the files of pydicom-data (``--pydicom-data``;
ingest only, accepted counts recorded per peer) and one instance of ``--large-size`` bytes.

Workloads (clients in :mod:`benchmarks.clients`):

- ``stow``: STOW-RS (PS3.18 10.5) with ``--stow-batch`` instances per request and
  ``--stow-clients`` concurrent keep-alive clients (one process each), into a freshly started,
  empty server (dicomaccel with --fsync always, Orthanc with SyncStorageArea: both fsync before
  answering). Before the servers, the same clients measure, with the CT instances,
  limits rather than peers (:mod:`benchmarks.machine`): ``benchmarks/floor.c``, which makes each
  body a durable file and nothing more, and ``benchmarks/design_floor.c``, which does
  dicomaccel's own per-request work (temp file, publication, its index transaction's SQLite
  statements, one syncfs) without the interpreter; and, as ceilings, dicomaccel's HTTP server
  and STOW-RS application alone over an archive that keeps nothing (``benchmarks/front_end.py``)
  and its archive alone, storing the same instances without HTTP (``benchmarks/archive_alone.py``);
- ``cstore``: DCMTK ``storescu`` into a fresh dicomaccel (--fsync always), Orthanc or dcmqrscp,
  over each of ``--cstore-associations`` (default 1): N splits the corpus in order over N
  ``storescu`` processes started together, timed from the first Store Request to the last
  Store Response of any. Its client-bound ceiling is measured beside them, alternated with
  them like a peer: the same ``storescu`` into a fresh DCMTK ``storescp --ignore`` (``--fork``,
  every transfer syntax, its largest PDU), which receives each data set, discards it and
  answers Success; its *accepted* counts the requests it logged answering. It is not a peer
  (not in ``--peers``, never loaded for retrieval, never the "best peer" of the report) and
  comes by itself whenever ``cstore`` runs with DCMTK ``storescp`` installed, inside the
  loopback-only namespace: storescp binds every interface as dcmqrscp does, so a run without
  orthanc or dcmqrscp, which stays outside it, lists the ceiling as skipped. Its durable floor
  comes the same way, with a C compiler: the same ``storescu`` into ``benchmarks/cstore_floor.c``,
  which writes each data set to a file, fdatasyncs it and fsyncs its directory before answering
  (what a server that acknowledges durable instances cannot do without; on one association
  storescu waits for each answer, so the flush is on every instance's path);
- ``cget``: Study Root C-GET at ``--levels`` (STUDY, SERIES) received (``--clients``) by
  ``getscu --ignore``, by a pynetdicom SCU that does not decode what it receives and by
  ``drain``, a raw socket SCU that discards the data sets unparsed;
- ``frame``: a Composite Instance Root Retrieve C-GET at FRAME level (PS3.4 Annex Y) is offered
  to every peer and its outcome recorded. Peers that answer it are measured retrieving every
  10th frame of each multi-frame instance (pynetdicom SCU), and, with the raw SCU, one frame and
  ten frames of the first instance of each multi-frame corpus; every peer fetches that whole
  instance at IMAGE level with the raw SCU, the baseline a server without FRAME level leaves;
- ``large-upload``: one ``--large-size`` instance streamed in one STOW-RS request with chunked
  transfer coding, into a fresh server: time and peak memory; with ``cstore`` too, the same
  instance by storescu over one association (and into its ceiling and floor).

Asked for by name (not in the default ``--workloads``), on the servers loaded for retrieval:

- ``wado-frame``: WADO-RS ``.../instances/{sop}/frames/{n}`` (PS3.18 10.4) of the multi-frame
  instance with the most frames (frame 1 and the middle frame) and frame 1 of a JPEG 2000 one
  as stored (``transfer-syntax=*``), from dicomaccel (``/dicomweb``) and Orthanc
  (``/dicom-web``): one keep-alive ``http.client`` client in its own process, GETting for
  ``--http-seconds`` (at least 3 times); requests/s, p50/p99 latency, MB/s (also as a share of
  the loopback TCP limit measured in the same run);
- ``wado-study``: WADO-RS retrieval of the CT study as stored: instances/s and peak memory;
- ``cfind``: Study Root C-FIND at STUDY level by Patient Name prefix, ``--cfind-requests`` of
  them on one association by DCMTK ``findscu --repeat`` (timed from its log), against
  dicomaccel, Orthanc and dcmqrscp holding the same corpora: requests/s, server CPU per request;
- ``qido``: QIDO-RS study searches by Patient Name (prefix ``Smi*``, leading wildcard
  ``*anna*``), ``--qido-queries`` per run on one keep-alive client: p50/p99 latency. First
  over ``--qido-shared`` small instances (:func:`benchmarks.corpus.qido_corpus`) stored over
  STOW-RS into dicomaccel and Orthanc alike (Orthanc with ``QidoCaseSensitive`` off, as
  PS3.4 allows and dicomaccel does); then over an index of ``--qido-index`` rows built
  directly (:mod:`dicomaccel.testing.query_index`; storing 100,000 instances would take most
  of an hour), served by ``dicomaccel serve`` alone.
- ``cmove``: Study Root C-MOVE of the CT study by DCMTK ``movescu`` from dicomaccel and from
  dcmqrscp to one DCMTK ``storescp --ignore`` the harness starts (:mod:`benchmarks.cmove`; both
  servers are configured with it as a move destination);
- ``embed``: one pynetdicom AE (:mod:`benchmarks.pynetdicom_embed`) with dicomaccel's handlers
  (``pynetdicom+dicomaccel``), with the handlers a pynetdicom user writes (``pynetdicom-usual``:
  ``dcmread``, pydicom-built FRAME instance, ``ds.save_as``) and handing over data sets built
  beforehand (``pynetdicom-floor``): FRAME level, 1 frame of the instance with the most frames
  (``--embed-requests`` requests per run); Study Root C-GET of the CT study; C-STORE of it by
  ``storescu`` into a fresh server. Each run records the handlers' own time too
  (:mod:`benchmarks.embedded`); the report shows the ratios against the usual handlers and
  the floor, measured in the same run.

Runs are interleaved peer by peer (A B A B ...) so machine drift hits every side. Each figure is
the median of ``--runs`` runs, with the spread (min-max). Server memory is the peak resident set
(VmHWM, reset through /proc/PID/clear_refs before each run). Every run also records the CPU time
of the server's process tree and of the client side, and the share of each core busy. Before
the workloads, the runner measures the machine's limits (:func:`benchmarks.machine.limits`).
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from benchmarks import report
from dicomaccel.config import parse_size
from benchmarks.clients import (
    DCMTK_LOG_CONFIG,
    RETRIEVE_CLIENTS,
    RetrieveRefused,
    cstore_run,
    drain_run,
    findscu_run,
    forked,
    getscu_run,
    http_run,
    large_upload_run,
    pynetdicom_run,
    stow_body,
    stow_run,
    storescu,
    storescu_groups,
)
from benchmarks.embedded import EMBED_PEERS, frame_requests_run, with_handler_time
from benchmarks.cmove import DESTINATION_TITLE, MOVE_PEERS, MOVESCU_LOG_CONFIG, Destination, movescu_run
from benchmarks.corpus import (
    FRAME_STEP,
    Corpus,
    ct_corpus,
    frame_lists,
    j2k_corpus,
    large_corpus,
    multiframe_corpus,
    pydicom_data_corpus,
    qido_corpus,
    qido_index,
)
from dicomaccel.testing.postgres import postgres_bin, start_cluster
from dicomaccel.testing.query_index import FAMILY, GIVEN
from benchmarks.machine import (core_busy, core_times, harness_cpu_s, limits, loadavg, machine, reported_kib,
                                archive_alone, design_floor, front_end, release_files, stow_floor, versions)
from benchmarks.orthanc import OrthancPeer
from benchmarks.peers import (
    REPO,
    CStoreFloorPeer,
    DcmqrscpPeer,
    DicomaccelPeer,
    Peer,
    PeerUnavailable,
    PrefilledDicomaccel,
    PynetdicomPeer,
    RssSampler,
    StorescpIgnorePeer,
    dcmtk_program,
    install_signal_handlers,
    stow,
)

NETNS_MARK = "DICOMACCEL_BENCH_NETNS"
APT_PACKAGES = ("orthanc", "orthanc-dicomweb", "dcmtk")
INSTALL = "apt-get install -y " + " ".join(APT_PACKAGES)


class IngestDicomaccel(DicomaccelPeer):
    # Orthanc fsyncs each file before answering (SyncStorageArea); so does this side, unless
    # --dicomaccel-fsync never (what the server's CPU allows, the disk aside). Its ``workers``
    # are set from --dicomaccel-workers.
    fsync = "always"


class IngestDicomaccelPostgres(IngestDicomaccel):
    """dicomaccel for ingest with its index on PostgreSQL (``--index``): each run a new database
    on one throwaway cluster that the harness starts when first needed (durable: commits
    flushed, like the SQLite side's); the STOW-RS workload only, next to ``dicomaccel``."""

    name = "dicomaccel-pg"
    cluster = None

    @classmethod
    def unavailable(cls) -> str | None:
        return None if postgres_bin() else "PostgreSQL is not installed (apt-get install -y postgresql)"

    def start(self, files: list[Path]) -> None:
        if IngestDicomaccelPostgres.cluster is None:
            IngestDicomaccelPostgres.cluster = start_cluster(durable=True)
        cluster = IngestDicomaccelPostgres.cluster
        self.index_url = cluster.create_database()
        super().start(files)

    @classmethod
    def shut_down(cls) -> None:
        if cls.cluster is not None:
            cls.cluster.stop()
            cls.cluster = None


class Dcmqrscp(DcmqrscpPeer):
    # +xv: accept JPEG 2000 lossless besides the uncompressed syntaxes, so storescu can load the
    # JPEG 2000 corpus as is and a C-GET SCU that proposes it receives it as stored.
    options = ("+xv",)


PEERS: dict[str, type[Peer]] = {"dicomaccel": DicomaccelPeer, "orthanc": OrthancPeer,
                                "dcmqrscp": Dcmqrscp, "pynetdicom": PynetdicomPeer}
STOW_PEERS = {"dicomaccel": (IngestDicomaccel, "/dicomweb/studies"), "orthanc": (OrthancPeer, "/dicom-web/studies"),
              "dicomaccel-pg": (IngestDicomaccelPostgres, "/dicomweb/studies")}
CSTORE_PEERS = ("dicomaccel", "orthanc", "dcmqrscp")
# The cstore workload's client-bound ceiling (see the module docstring): measured beside
# CSTORE_PEERS whenever that workload runs; never chosen with --peers, never in ``available``.
CEILINGS: dict[str, type[Peer]] = {StorescpIgnorePeer.name: StorescpIgnorePeer, CStoreFloorPeer.name: CStoreFloorPeer}
INGEST_ONLY = ("dicomaccel-pg",)  # peers of the stow workload alone, never loaded for retrieval
NEEDS_NETNS = ("orthanc", "dcmqrscp", StorescpIgnorePeer.name)  # cannot bind to 127.0.0.1 only
WORKLOADS = ("stow", "cstore", "cget", "frame", "large-upload", "wado-frame", "wado-study", "qido", "cfind",
             "embed", "cmove")
# The four DICOMweb and C-FIND workloads are asked for by name (--workloads): with them the
# default run would outgrow half an hour on a 2-core machine.
DEFAULT_WORKLOADS = ("stow", "cstore", "cget", "frame", "large-upload")
WEB_PEERS = {"dicomaccel": "/dicomweb", "orthanc": "/dicom-web"}  # WADO-RS and QIDO-RS roots
FIND_PEERS = ("dicomaccel", "orthanc", "dcmqrscp")
# Accept headers (PS3.18 8.7.3): frames and instances as stored (no transcoding), native frames
# in the default form (application/octet-stream).
NATIVE_FRAMES = 'multipart/related; type="application/octet-stream"'
STORED_FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
STORED_INSTANCES = 'multipart/related; type="application/dicom"; transfer-syntax=*'
QIDO_KINDS = ("prefix", "leading wildcard")
CLIENTS = ("getscu", "pynetdicom", "drain")
LEVELS = ("STUDY", "SERIES")


@dataclass
class Method:
    """A row group of the report: a way of moving a corpus, and the peers that take part."""

    section: str  # ingest | retrieve | frame | latency
    corpus: Corpus
    label: str
    peers: list[str]
    run: object  # callable(peer) -> dict, peer started
    fresh: bool = False  # ingest: a new empty server per run
    unit: str = "instances"  # "requests": rates and CPU per request (the run says how many)


def load(peer: Peer, corpus: Corpus, log_config: Path) -> str | None:
    """Store ``corpus`` into a started peer the way it ingests (STOW-RS, else storescu); why not, or None."""
    try:
        if peer.name in STOW_PEERS:
            stow(peer.http_port, corpus.files, path=STOW_PEERS[peer.name][1])
            return None
        before = peer.instance_count()
        storescu(peer, corpus, log_config)
        stored = peer.instance_count() - before
        return None if stored == len(corpus.files) else f"storescu stored {stored} of {len(corpus.files)}"
    except (RuntimeError, OSError, http.client.HTTPException) as exc:
        return " ".join(str(exc).split())[:300]


class Progress:
    """A text bar per workload: ``[####......] 4/12 label: detail``."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done = label, total, 0
        print(f"== {label}", flush=True)

    def step(self, detail: str) -> None:
        self.done += 1
        width = 20
        filled = round(width * self.done / self.total)
        print(f"  [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {detail}", flush=True)


def measure(method: Method, runs: int, started: dict[str, Peer], work: Path,
            errors: dict[str, str] | None = None) -> list[dict]:
    """Run ``method`` ``runs`` times on each of its peers, interleaved; one result row per peer.
    ``errors`` names peers that cannot take part (their corpus did not load) and why."""
    rows = {name: {"section": method.section, "corpus": method.corpus.name, "label": method.corpus.label,
                   "method": method.label, "peer": name, "instances": len(method.corpus.files),
                   "bytes": method.corpus.nbytes, "unit": method.unit, "runs": [],
                   "error": (errors or {}).get(name)}
            for name in method.peers}
    bar = Progress(f"{method.corpus.name}: {method.label}", runs * len(method.peers))
    for i in range(runs):
        for name in method.peers:  # A B A B: drift hits every peer alike
            row = rows[name]
            if row["error"]:
                bar.step(f"{name} run {i + 1}: skipped after failure")
                continue
            peer = None
            try:
                if method.fresh:
                    # A new directory per run; the last run's files are emptied, not deleted
                    # (see release_files).
                    fresh = Path(tempfile.mkdtemp(prefix=f"ingest-{name}-", dir=work))
                    # Ingest into dicomaccel (STOW-RS or C-STORE) with --fsync always.
                    ingest = method.label.startswith(("STOW", "C-STORE")) and name in STOW_PEERS
                    peer = STOW_PEERS[name][0](fresh) if ingest else \
                        (PEERS.get(name) or CEILINGS.get(name) or EMBED_PEERS[name])(fresh)
                    peer.start([])
                else:
                    peer = started[name]
                load, reported = loadavg(), reported_kib()
                server_cpu, client_cpu, cores = peer.cpu_s(), harness_cpu_s(), core_times()
                with RssSampler(peer) as rss:
                    result = method.run(peer)
                result["core_busy"] = core_busy(cores)
                result.setdefault("bytes", method.corpus.nbytes)
                # Client CPU: what this process and the clients it ran (getscu, storescu, STOW-RS
                # processes) used, less the memory sampler's thread; STOW-RS clients count their own.
                result.setdefault("client_cpu_s", harness_cpu_s() - client_cpu - rss.cpu_s)
                result.update(peak_mib=rss.peak_mib, load1=load, server_cpu_s=peer.cpu_s() - server_cpu)
                if reported is not None:
                    result["reported_mib"] = (reported_kib() - reported) / 1024
                row["runs"].append(result)
                bar.step(f"{name} run {i + 1}: {progress_detail(row, result)}")
            except (RuntimeError, OSError, PeerUnavailable, subprocess.TimeoutExpired, ValueError) as exc:
                row["error"] = " ".join(f"{exc}{server_says(peer)}".split())[:400]
                bar.step(f"{name} run {i + 1}: FAILED {row['error']}")
            finally:
                if method.fresh and peer is not None:
                    peer.stop()
                    release_files(peer.workdir)
    return list(rows.values())


def progress_detail(row: dict, result: dict) -> str:
    """One run's figures for the progress bar: rate, MB/s, latency (requests), memory, CPU."""
    requests = row.get("unit") == "requests"
    n = result["requests"] if requests else row["instances"]
    unit = "req" if requests else "inst"
    latency = f"p50 {report.fig(result['p50_ms'])} ms p99 {report.fig(result['p99_ms'])} ms " \
        if "p50_ms" in result else ""
    return (f"{report.fig(n / result['seconds'])} {unit}/s {report.fig(result['bytes'] / result['seconds'] / 1e6)} "
            f"MB/s {latency}peak RSS {result['peak_mib']:.0f} MiB accepted {result['accepted']} CPU ms/{unit} "
            f"server {report.fig(1e3 * result['server_cpu_s'] / n)} client {report.fig(1e3 * result['client_cpu_s'] / n)}")


_SERVER_ERROR = re.compile(r"^(E\d{4} [\d:.]+ \S+\] |.*\bERROR\b:? ?)(.*)$")


def server_says(peer: Peer | None) -> str:
    """`` (server: <its last two error lines>)`` from the peer's log, or ''."""
    if peer is None:
        return ""
    lines = [m.group(2) for line in peer.log_tail(8000).splitlines() if (m := _SERVER_ERROR.match(line))]
    return f" (server: {' / '.join(dict.fromkeys(lines[-2:]))[:300]})" if lines else ""


def probe_frame(peer: Peer, corpus: Corpus, max_pdu: int) -> dict:
    """Offer a FRAME-level Composite Instance Root Retrieve GET; what the peer answered."""
    try:
        result = pynetdicom_run(peer, corpus.head(1), "FRAME", max_pdu, [[1, 2, 3]])
    except RetrieveRefused as exc:
        return {"supported": False, "outcome": str(exc)}
    except (RuntimeError, OSError, ValueError) as exc:
        return {"supported": False, "outcome": f"error: {' '.join(str(exc).split())[:200]}"}
    return {"supported": True, "outcome": f"0x0000 Success, {result['accepted']} instance of 3 frames"}



def install_peers() -> None:
    """Install the Debian packages of the peers when some are missing (root only)."""
    missing = [p for p in APT_PACKAGES
               if subprocess.run(["dpkg-query", "-W", "-f", "${Status}", p], capture_output=True,
                                 text=True).stdout.strip() != "install ok installed"]
    if not missing:
        return
    if os.geteuid() != 0:
        print(f"--install-peers: not root, cannot install {' '.join(missing)}; run as root: {INSTALL}",
              file=sys.stderr)
        return
    print(f"installing {' '.join(missing)} ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update"], env=env, check=False)
    subprocess.run(["apt-get", "install", "-y", *APT_PACKAGES], env=env, check=True)


def reexec_in_netns(argv: list[str]) -> int:
    """Run this command again inside a new network namespace holding only loopback; its exit code.

    The child runs in its own session, so a Ctrl-C reaches it once, forwarded from here; it stops
    its servers by PID before it exits.
    """
    env = dict(os.environ, **{NETNS_MARK: "1"})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    child = subprocess.Popen(["unshare", "--net", "--", sys.executable, "-m", "benchmarks", "run", *argv],
                             env=env, start_new_session=True)

    def forward(signum, frame) -> None:
        child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    return child.wait()


def _csv(choices: tuple[str, ...], cast=str):
    def parse(text: str) -> list:
        items = [t.strip() for t in text.split(",") if t.strip()]
        unknown = [t for t in items if str(t) not in choices] if choices else []
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)} (got {text!r})")
        return [cast(t) for t in items]
    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", type=_csv((*PEERS, *INGEST_ONLY)), default=list(PEERS),
                   help="comma-separated servers (default: the first four; dicomaccel-pg, dicomaccel "
                        "with a PostgreSQL index, takes part in the stow workload only)")
    p.add_argument("--workloads", type=_csv(WORKLOADS), default=list(DEFAULT_WORKLOADS),
                   help=f"comma-separated: {', '.join(WORKLOADS)} (default: {','.join(DEFAULT_WORKLOADS)})")
    p.add_argument("--clients", type=_csv(CLIENTS), default=list(CLIENTS),
                   help="C-GET receivers: getscu, pynetdicom, drain (default: all three)")
    p.add_argument("--levels", type=_csv(LEVELS), default=list(LEVELS), help="C-GET levels (default: STUDY,SERIES)")
    p.add_argument("--runs", type=int, default=5, help="repetitions of every measurement (default 5)")
    p.add_argument("--dicomaccel-workers", type=int, default=os.cpu_count() or 1,
                   help="`dicomaccel serve --workers` for ingest (default: the CPU count)")
    p.add_argument("--dicomaccel-fsync", choices=("always", "never"), default="always",
                   help="`dicomaccel serve --fsync` for ingest (default: always, as Orthanc's SyncStorageArea)")
    p.add_argument("--ct", type=int, default=200, help="CT instances (0: none; default 200)")
    p.add_argument("--multiframe", type=int, default=4, help="native multi-frame instances (default 4)")
    p.add_argument("--j2k", type=int, default=4, help="JPEG 2000 multi-frame instances (default 4)")
    p.add_argument("--j2k-frames", type=int, default=100, help="frames per JPEG 2000 instance (default 100)")
    p.add_argument("--pydicom-data", type=int, default=-1,
                   help="pydicom-data files to ingest (-1: all that qualify, the default; 0: none)")
    p.add_argument("--stow-batch", type=_csv((), int), default=[1, 20],
                   help="instances per STOW-RS request (default 1,20)")
    p.add_argument("--stow-clients", type=_csv((), int), default=[1, 2, 4],
                   help="concurrent STOW-RS clients (default 1,2,4)")
    p.add_argument("--cstore-associations", type=_csv((), int), default=[1],
                   help="cstore: storescu associations at once, the corpus split over them (default 1)")
    p.add_argument("--large-size", type=parse_size, default=parse_size("2G"),
                   help="size of the large-upload instance (default 2G)")
    p.add_argument("--max-pdu", type=int, default=16384, help="receivers' Maximum Length (default 16384)")
    p.add_argument("--http-seconds", type=float, default=3.0,
                   help="wado-frame: GET the frame for this long per run, at least 3 times (default 3)")
    p.add_argument("--qido-index", type=int, default=100_000,
                   help="qido: rows of the index built directly for dicomaccel alone (0: none; default 100000)")
    p.add_argument("--qido-shared", type=int, default=10_000,
                   help="qido: small instances stored over STOW-RS into dicomaccel and Orthanc alike "
                        "(0: none; default 10000)")
    p.add_argument("--qido-queries", type=int, default=200, help="qido: searches per run (default 200)")
    p.add_argument("--cfind-requests", type=int, default=200,
                   help="cfind: C-FINDs per run, on one association (findscu --repeat; default 200)")
    p.add_argument("--embed-requests", type=int, default=20,
                   help="embed: FRAME-level C-GETs of 1 frame per run, on one association (default 20)")
    p.add_argument("--out", type=Path, default=Path("bench-report"),
                   help="directory for report.md, results.json and the PNG charts (default ./bench-report)")
    p.add_argument("--cache-dir", type=Path,
                   default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dicomaccel-bench",
                   help="where generated corpora are kept between runs")
    p.add_argument("--workdir", type=Path, default=None, help="parent of the temporary server directories")
    p.add_argument("--install-peers", action="store_true", help=f"as root, run `{INSTALL}` if a package is missing")
    p.add_argument("--no-charts", action="store_true", help="skip the PNG charts (no matplotlib needed)")
    return p


def ingest_configs(n: int, batches: list[int], clients: list[int]) -> list[tuple[int, int]]:
    """(instances per request, clients) pairs that differ for ``n`` instances: a batch is at most
    ``n``, and there are never more clients than requests."""
    out = []
    for b in batches:
        b = min(b, n)
        for c in clients:
            c = min(c, -(-n // b))
            if (b, c) not in out:
                out.append((b, c))
    return out


def cstore_methods(args, corpus: Corpus, available: list[str], log_config: Path, ceilings: list[str],
                   associations) -> list[Method]:
    """The cstore workload's methods for ``corpus``, one per number of ``associations``, with the
    ``ceilings`` beside the peers; none without the workload, a C-STORE peer or storescu."""
    cstore_peers = [p for p in available if p in CSTORE_PEERS]
    if "cstore" not in args.workloads or not cstore_peers or not dcmtk_program("storescu"):
        return []
    n = len(storescu_groups(corpus))
    out = []
    for k in associations:
        label = (f"C-STORE storescu, {n} association{'s' if n > 1 else ''}" if k == 1 else
                 f"C-STORE storescu, {k} associations at once" + (f", {n} groups in turn" if n > 1 else ""))
        # The ceilings last in each round, with the same storescu invocation.
        out.append(Method("ingest", corpus, label, cstore_peers + ceilings,
                          lambda peer, corpus=corpus, k=k: cstore_run(peer, corpus, log_config, k), fresh=True))
    return out


def plan(args, corpora: list[Corpus], available: list[str], log_config: Path,
         ceilings: list[str]) -> tuple[list[Method], list[Method]]:
    """The ingest methods (fresh servers) and the retrieve methods (loaded servers); the
    ``ceilings`` that can run here go with the cstore methods."""
    ingest, retrieve = [], []
    stow_peers = [p for p in available if p in STOW_PEERS]
    for corpus in corpora:
        if corpus.name == "large":
            if "large-upload" in args.workloads and stow_peers:
                ingest.append(Method("ingest", corpus, "STOW-RS 1 instance streamed (chunked)", stow_peers,
                                     lambda peer, corpus=corpus: large_upload_run(
                                         peer.http_port, STOW_PEERS[peer.name][1], corpus.files[0]), fresh=True))
                # The same instance over C-STORE (with cstore): what its peak RSS is for.
                ingest += cstore_methods(args, corpus, available, log_config, ceilings, (1,))
            continue
        if "stow" in args.workloads and stow_peers:
            for batch, clients in ingest_configs(len(corpus.files), args.stow_batch, args.stow_clients):
                cache: dict = {}

                def run(peer, corpus=corpus, batch=batch, clients=clients, cache=cache):
                    if "bodies" not in cache:  # built once, outside the timing, shared by peers and runs
                        cache["bodies"] = [(stow_body(corpus.files[i:i + batch]), 0)
                                           for i in range(0, len(corpus.files), batch)]
                    return stow_run(peer.http_port, STOW_PEERS[peer.name][1], cache["bodies"], clients)
                label = f"STOW-RS {batch}/request, {clients} client{'s' if clients > 1 else ''}"
                ingest.append(Method("ingest", corpus, label, stow_peers, run, fresh=True))
        ingest += cstore_methods(args, corpus, available, log_config, ceilings, args.cstore_associations)
        if not corpus.retrievable or "cget" not in args.workloads:
            continue
        for level in args.levels:
            for client in args.clients:
                if client == "getscu":
                    run = (lambda peer, corpus=corpus, level=level:
                           getscu_run(peer, corpus, level, args.max_pdu, log_config))
                else:
                    run = (lambda peer, corpus=corpus, level=level, scu=RETRIEVE_CLIENTS[client]:
                           scu(peer, corpus, level, args.max_pdu))
                retrieve.append(Method("retrieve", corpus, f"C-GET {level}, {client}", available, run))
    return ingest, retrieve


def frame_methods(corpora: list[Corpus], supported: list[str], started: list[str], max_pdu: int) -> list[Method]:
    """For each multi-frame corpus: every 10th frame of every instance by a pynetdicom SCU (peers
    answering FRAME level), then the time to one instance by the raw SCU: 1 and 10 frames of the
    first instance (FRAME level), and that whole instance (IMAGE level, every peer)."""
    out = []
    for corpus in (c for c in corpora if c.retrievable and c.frames):
        if supported:
            out.append(Method("frame", corpus, f"C-GET FRAME every {FRAME_STEP}th frame, pynetdicom", supported,
                              lambda peer, corpus=corpus, lists=frame_lists(corpus):
                              pynetdicom_run(peer, corpus, "FRAME", max_pdu, lists)))
        source, n = corpus.head(1), corpus.frames[0]
        for label, wanted in (("FRAME 1 frame", [n // 2 + 1]), ("FRAME 10 frames", [1 + k * n // 10 for k in range(10)])):
            if supported:
                out.append(Method("latency", source, f"{label} of {n}, raw SCU", supported,
                                  lambda peer, source=source, wanted=wanted:
                                  forked(drain_run, peer, source, "FRAME", max_pdu, [wanted])))
        out.append(Method("latency", source, f"IMAGE whole instance of {n} frames, raw SCU", started,
                          lambda peer, source=source: forked(drain_run, peer, source, "IMAGE", max_pdu)))
    return out


def embed_methods(args, corpora: list[Corpus], log_config: Path) -> tuple[list[Method], list[Method]]:
    """The ``embed`` workload (:mod:`benchmarks.embedded`): (C-STORE methods on fresh servers,
    C-GET methods on servers loaded with the CT study and the largest multi-frame instance)."""
    peers = list(EMBED_PEERS)
    ingest, retrieve = [], []
    mf = next((c for c in corpora if c.name == "multiframe" and c.frames), None)
    if mf is not None:
        source = largest(mf)
        n = source.frames[0]
        retrieve.append(Method("embed", source, f"C-GET FRAME 1 frame of {n}, {args.embed_requests} requests, "
                               "pynetdicom SCU", peers,
                               lambda peer, source=source, frame=n // 2 + 1: frame_requests_run(
                                   peer, source, frame, args.embed_requests, args.max_pdu),
                               unit="requests"))
    ct = next((c for c in corpora if c.name == "ct"), None)
    if ct is not None:
        retrieve.append(Method("embed", ct, "C-GET STUDY, pynetdicom SCU", peers,
                               lambda peer, ct=ct: with_handler_time(peer, pynetdicom_run, ct, "STUDY",
                                                                      args.max_pdu)))
        if dcmtk_program("storescu"):
            ingest.append(Method("embed", ct, "C-STORE storescu, 1 association (no fsync but the -fsync row)", peers,
                                 lambda peer, ct=ct: with_handler_time(peer, cstore_run, ct, log_config),
                                 fresh=True))
    return ingest, retrieve


def run_embed(args, corpora: list[Corpus], work: Path, log_config: Path, data: dict) -> None:
    """Measure :func:`embed_methods`: C-STORE into fresh servers, then the C-GETs from the
    three servers started once and loaded with what they serve."""
    ingest, retrieve = embed_methods(args, corpora, log_config)
    for method in ingest:
        data["rows"] += measure(method, args.runs, {}, work)
    if not retrieve:
        return
    files = list(dict.fromkeys(f for m in retrieve for f in m.corpus.files))
    started: dict[str, Peer] = {}
    try:
        for name, cls in EMBED_PEERS.items():
            peer = cls(work / "embed")
            try:
                peer.start(files)
            except PeerUnavailable as exc:
                data["skipped"][name] = " ".join(str(exc).split())[:300]
                print(f"peer {name} did not start: {exc}", file=sys.stderr, flush=True)
                continue
            started[name] = peer
        for method in retrieve:
            method.peers = [p for p in method.peers if p in started]
            if method.peers:
                data["rows"] += measure(method, args.runs, started, work)
    finally:
        for peer in started.values():
            peer.stop()


def largest(corpus: Corpus) -> Corpus:
    """The instance of a multi-frame ``corpus`` with the most frames, as a corpus of its own."""
    i = max(range(len(corpus.frames)), key=corpus.frames.__getitem__)
    one = replace(corpus, files=corpus.files[i:i + 1], sop_uids=corpus.sop_uids[i:i + 1],
                  frames=corpus.frames[i:i + 1], syntaxes=corpus.syntaxes[i:i + 1])
    return replace(one, label=f"{report.SHORT.get(corpus.name, corpus.name)}: 1 instance of {corpus.frames[i]} "
                              f"frames ({one.nbytes / 1e6:.0f} MB)")


def instance_path(root: str, corpus: Corpus, i: int = 0) -> str:
    """The WADO-RS path of instance ``i`` of ``corpus`` below the service root ``root``."""
    return f"{root}/studies/{corpus.study_uid}/series/{corpus.series_uid}/instances/{corpus.sop_uids[i]}"


def wado_study_run(peer: Peer, corpus: Corpus) -> dict:
    """One WADO-RS study retrieval of ``corpus`` as stored, read whole; every instance a part."""
    result = http_run(peer.http_port, [(f"{WEB_PEERS[peer.name]}/studies/{corpus.study_uid}",
                                        {"Accept": STORED_INSTANCES})], count_parts=True)
    if result["accepted"] != len(corpus.files):
        raise RuntimeError(f"WADO-RS study: {result['accepted']} parts for {len(corpus.files)} instances "
                           f"(HTTP {result['statuses']}, {result['content_type']})")
    return dict(result, accept=STORED_INSTANCES)


def frame_run(peer: Peer, source: Corpus, frame: int, accept: str, seconds: float, least: int) -> dict:
    """WADO-RS ``.../frames/{frame}`` of ``source``'s instance, again and again for ``seconds``;
    each answer must be a 200 of at least ``least`` bytes (the frame's size, if native)."""
    path = f"{instance_path(WEB_PEERS[peer.name], source)}/frames/{frame}"
    result = http_run(peer.http_port, [(path, {"Accept": accept})], min_seconds=seconds, min_requests=3)
    if result["ok"] != result["requests"] or result["bytes"] < least * result["requests"]:
        raise RuntimeError(f"WADO-RS frame: {result['ok']} of {result['requests']} answered 200, "
                           f"{result['bytes'] // result['requests']} bytes each (HTTP {result['statuses']}, "
                           f"{result['content_type']}; {' / '.join(result['errors'])[:200]})")
    return dict(result, accept=accept)


def web_methods(args, corpora: list[Corpus], peers: list[str]) -> list[Method]:
    """wado-study: the CT study, as stored; wado-frame: frame 1 and the middle frame of the
    largest native multi-frame instance, and frame 1 of a JPEG 2000 one as stored."""
    out = []
    by_name = {c.name: c for c in corpora}
    if "wado-study" in args.workloads and "ct" in by_name:
        out.append(Method("wado", by_name["ct"], "WADO-RS study, transfer-syntax=*, 1 client", peers,
                          lambda peer, ct=by_name["ct"]: wado_study_run(peer, ct)))
    if "wado-frame" in args.workloads:
        for name, accept in (("multiframe", NATIVE_FRAMES), ("j2k", STORED_FRAMES)):
            if name not in by_name or not by_name[name].frames:
                continue
            source = largest(by_name[name])
            n = source.frames[0]
            least = 512 * 512 * 2 if name == "multiframe" else 1
            for frame in ([1, n // 2 + 1] if name == "multiframe" else [1]):
                stored = ", as stored (transfer-syntax=*)" if accept == STORED_FRAMES else ""
                out.append(Method("requests", source, f"WADO-RS frame {frame} of {n}{stored}, 1 keep-alive client",
                                  peers, lambda peer, source=source, frame=frame, accept=accept, least=least:
                                  frame_run(peer, source, frame, accept, args.http_seconds, least),
                                  unit="requests"))
    return out


def cfind_methods(retrievable: list[Corpus], peers: list[str], repeat: int, log_config: Path) -> list[Method]:
    """C-FIND STUDY by Patient Name prefix (that of the loaded corpora: every study matches),
    ``repeat`` times on one association by findscu, over the archive the retrieve workloads loaded."""
    if not retrievable or not peers:
        return []
    from pydicom import dcmread
    name = str(dcmread(retrievable[0].files[0], stop_before_pixels=True).PatientName)
    prefix = name[:3] + "*"
    keys = ["QueryRetrieveLevel=STUDY", f"PatientName={prefix}", "PatientID", "StudyInstanceUID", "StudyDate",
            "StudyTime", "AccessionNumber", "StudyID"]
    archive = Corpus("archive", f"archive: the {', '.join(report.SHORT.get(c.name, c.name) for c in retrievable)} "
                     f"corpora ({len(retrievable)} stud{'ies' if len(retrievable) > 1 else 'y'})", [])
    return [Method("requests", archive, f"C-FIND STUDY PatientName={prefix}, findscu, {repeat} on 1 association",
                   peers, lambda peer: findscu_run(peer, keys, repeat, log_config), unit="requests")]


def qido_queries(kind: str, n: int, seed: int = 5) -> list[str]:
    """``n`` QIDO-RS study query strings by Patient Name: ``prefix`` (the first three letters of a
    family name, then ``*``) or ``leading wildcard`` (``*<given name in lower case>*``), limit=100;
    the same ``n`` for every peer and run. ASCII names only, with ``*`` as is: Orthanc 1.10 takes
    query values without percent-decoding them (``PatientName=Sco%2A`` finds nothing)."""
    rng = random.Random(seed)
    family = [f for f in FAMILY if f.isascii()]
    make = (lambda: rng.choice(family)[:3] + "*") if kind == "prefix" else (lambda: f"*{rng.choice(GIVEN).lower()}*")
    return [f"PatientName={quote(make(), safe='*^')}&limit=100" for _ in range(n)]


def qido_run(peer: Peer, queries: list[str]) -> dict:
    root = WEB_PEERS[peer.name]
    return http_run(peer.http_port, [(f"{root}/studies?{q}", {"Accept": "application/dicom+json"}) for q in queries],
                    count_token=b'"0020000D"')


def qido_methods(index: Corpus, peers: list[str], n: int) -> list[Method]:
    out = []
    for kind in QIDO_KINDS:
        example = "Smi*" if kind == "prefix" else "*anna*"
        out.append(Method("requests", index, f"QIDO-RS studies PatientName={example} ({kind}), limit=100, "
                          f"{n} searches", peers, lambda peer, queries=qido_queries(kind, n): qido_run(peer, queries),
                          unit="requests"))
    return out


def run_qido(args, started: dict[str, Peer], web_peers: list[str], work: Path, log_config: Path,
             data: dict) -> None:
    """qido: searches over the synthetic query corpus stored into every started DICOMweb peer
    (``--qido-shared``), then over a ``--qido-index``-row index built directly, dicomaccel alone."""
    if args.qido_shared and web_peers:
        corpus = qido_corpus(args.cache_dir, args.qido_shared)
        data["corpora"].append(corpus.describe())
        errors: dict[str, str] = {}
        for name in web_peers:
            t = time.perf_counter()
            if why := load(started[name], corpus, log_config):
                errors[name] = why
                print(f"{name}: {corpus.name} not loaded: {why}", file=sys.stderr, flush=True)
            took = time.perf_counter() - t
            data.setdefault("qido_load", {})[name] = {"instances": len(corpus.files), "seconds": round(took, 1)}
            print(f"{name}: {len(corpus.files)} query instances stored over STOW-RS in {took:.1f} s", flush=True)
        index = Corpus("qido-shared", f"{corpus.label}, stored over STOW-RS, beside the retrieve corpora", [])
        for method in qido_methods(index, web_peers, args.qido_queries):
            data["rows"] += measure(method, args.runs, started, work, errors)
    if args.qido_index and "dicomaccel" in started:
        t = time.perf_counter()
        path = qido_index(args.cache_dir, args.qido_index)
        print(f"index of {args.qido_index} rows ready in {time.perf_counter() - t:.1f} s ({path})", flush=True)
        peer = PrefilledDicomaccel(work / "qido-index")
        peer.index = path
        try:
            peer.start([])
            print(f"dicomaccel (index of {args.qido_index} rows): HTTP on 127.0.0.1:{peer.http_port} "
                  f"(pid {peer.proc.pid})", flush=True)
            index = Corpus("qido-index", f"index of {args.qido_index:,} instances ({args.qido_index // 40:,} "
                           "studies), rows built directly", [])
            for method in qido_methods(index, ["dicomaccel"], args.qido_queries):
                data["rows"] += measure(method, args.runs, {"dicomaccel": peer}, work)
        except (PeerUnavailable, RuntimeError) as exc:
            data["skipped"]["dicomaccel (qido index)"] = " ".join(str(exc).split())[:300]
            print(f"dicomaccel on the prebuilt index did not start: {exc}", file=sys.stderr, flush=True)
        finally:
            peer.stop()


MOVE_DESTINATIONS: list[Destination] = []  # the cmove workload's storescp once started, until the end


def cmove_methods(corpora: list[Corpus], available: list[str], work: Path, data: dict) -> list[Method]:
    """The ``cmove`` workload: its destination started and made known to the peers that will
    start for retrieval, and one method moving the CT study (:mod:`benchmarks.cmove`)."""
    ct = next((c for c in corpora if c.name == "ct" and c.retrievable), None)
    peers = [p for p in available if p in MOVE_PEERS]
    why = Destination.unavailable() or (None if ct else "needs the CT corpus (--ct)") or \
        (None if peers else "needs dicomaccel or dcmqrscp among --peers")
    if why:
        data["skipped"]["cmove"] = why
        print(f"skipping workload cmove: {why}", file=sys.stderr, flush=True)
        return []
    destination = Destination(work)
    destination.start([])
    MOVE_DESTINATIONS.append(destination)
    for peer in (DicomaccelPeer, DcmqrscpPeer):
        peer.move_destinations = {DESTINATION_TITLE: ("127.0.0.1", destination.port)}
    move_log = work / "dcmtk-move-log.cfg"
    move_log.write_text(MOVESCU_LOG_CONFIG)
    return [Method("move", ct, "C-MOVE STUDY, movescu to storescp --ignore", peers,
                   lambda peer: movescu_run(peer, ct, move_log))]


def build_corpora(args) -> list[Corpus]:
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    corpora = []
    if args.ct:
        corpora.append(ct_corpus(args.cache_dir, args.ct))
    if args.multiframe:
        corpora.append(multiframe_corpus(args.cache_dir, args.multiframe))
    if args.j2k:
        corpora.append(j2k_corpus(args.cache_dir, args.j2k, args.j2k_frames))
    if args.pydicom_data:
        corpora.append(pydicom_data_corpus(args.pydicom_data))
    if "large-upload" in args.workloads and args.large_size:
        corpora.append(large_corpus(args.cache_dir, args.large_size))
    for c in corpora:
        print(f"corpus {c.name}: {len(c.files)} instances, {c.nbytes / 1e6:.1f} MB", flush=True)
    print(f"corpora ready in {time.perf_counter() - t0:.1f} s (cache {args.cache_dir})", flush=True)
    return corpora


def start_loaded(available: list[str], retrievable: list[Corpus], work: Path, log_config: Path,
                 data: dict) -> tuple[dict[str, Peer], dict[str, dict[str, str]]]:
    """Every available peer started and loaded with ``retrievable``; (started peers, and per
    corpus the peers that could not load it, with why)."""
    started: dict[str, Peer] = {}
    not_loaded: dict[str, dict[str, str]] = {}
    for name in available:
        t = time.perf_counter()
        peer = PEERS[name](work / "retrieve")
        try:
            # The pynetdicom SCP indexes its directory at start-up: it gets the files first.
            peer.start([f for c in retrievable for f in c.files] if name == "pynetdicom" else [])
        except (PeerUnavailable, RuntimeError) as exc:
            peer.stop()
            data["skipped"][name + " (retrieve)"] = " ".join(str(exc).split())[:300]
            print(f"peer {name} did not start for retrieval: {exc}", file=sys.stderr, flush=True)
            continue
        started[name] = peer
        if name != "pynetdicom":
            for corpus in retrievable:
                if why := load(peer, corpus, log_config):
                    not_loaded.setdefault(corpus.name, {})[name] = why
                    print(f"{name}: {corpus.name} not loaded: {why}", file=sys.stderr, flush=True)
        print(f"{name}: C-GET SCP on 127.0.0.1:{peer.port} (pid {peer.proc.pid}), loaded for retrieval "
              f"in {time.perf_counter() - t:.1f} s", flush=True)
    return started, not_loaded


def available_peers(names: list[str], data: dict) -> list[str]:
    """Those of ``names`` that can run here; the others recorded in ``data["skipped"]`` with why."""
    available = []
    for name in names:
        reason = (PEERS.get(name) or CEILINGS.get(name) or STOW_PEERS[name][0]).unavailable()
        if name in NEEDS_NETNS and not data["netns"]:
            # main() enters the namespace for orthanc or dcmqrscp among --peers, not for a
            # ceiling: a run without them stays on the host, as it always did.
            reason = reason or ("binds every interface and cannot be limited to 127.0.0.1: needs root and "
                                "`unshare -n` to run in a loopback-only network namespace"
                                + (", entered only for orthanc or dcmqrscp among --peers" if name in CEILINGS else ""))
        if reason:
            data["skipped"][name] = reason
            print(f"skipping peer {name}: {reason}", file=sys.stderr, flush=True)
        else:
            available.append(name)
    return available


def run_harness(args, argv: list[str]) -> int:
    install_signal_handlers()
    began = time.time()
    data: dict = {"command": shlex.join(["python", "-m", "benchmarks", "run", *argv]),
                  "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "machine": machine(), "versions": versions(), "netns": os.environ.get(NETNS_MARK) == "1",
                  "load_before": Path("/proc/loadavg").read_text().split()[:3], "skipped": {}, "rows": [],
                  "frame_probe": {}, "runs": args.runs, "max_pdu": args.max_pdu,
                  "dicomaccel_workers": args.dicomaccel_workers, "dicomaccel_fsync": args.dicomaccel_fsync}
    IngestDicomaccel.workers, IngestDicomaccel.fsync = args.dicomaccel_workers, args.dicomaccel_fsync
    available = available_peers(args.peers, data)
    if not available:
        print("no peer available", file=sys.stderr)
        return 1
    ceilings = available_peers(list(CEILINGS), data) if "cstore" in args.workloads else []
    if "getscu" in args.clients and dcmtk_program("getscu") is None:
        print("skipping receiver getscu: DCMTK getscu not installed (apt-get install -y dcmtk)", file=sys.stderr)
        args.clients = [c for c in args.clients if c != "getscu"]

    corpora = build_corpora(args)
    data["corpora"] = [c.describe() for c in corpora]
    work = Path(tempfile.mkdtemp(prefix="dicomaccel-bench-", dir=args.workdir))
    started: dict[str, Peer] = {}
    try:
        ct = next((c for c in corpora if c.name == "ct"), None)
        data["limits"] = limits(work, ct.files[0].stat().st_size if ct else 1 << 19,
                                ct.files if ct else None, args.max_pdu)
        if ct is not None and "stow" in args.workloads:
            bodies = [(stow_body([f]), 0) for f in ct.files]
            data["limits"]["stow_floor"] = stow_floor(work, bodies, tuple(args.stow_clients))
            data["limits"]["design_floor"] = design_floor(work, ct.files, bodies, tuple(args.stow_clients))
            data["limits"]["front_end"] = front_end(work, bodies, tuple(args.stow_clients))
            data["limits"]["archive_alone"] = archive_alone(work, ct.files, tuple(args.stow_clients),
                                                           workers=args.dicomaccel_workers)
        log_config = work / "dcmtk-log.cfg"
        log_config.write_text(DCMTK_LOG_CONFIG)
        ingest, retrieve = plan(args, corpora, available, log_config, ceilings)
        if "cmove" in args.workloads:
            retrieve += cmove_methods(corpora, available, work, data)
        for method in ingest:
            data["rows"] += measure(method, args.runs, started, work)
        if "embed" in args.workloads:
            run_embed(args, corpora, work, log_config, data)

        retrievable = [c for c in corpora if c.retrievable]
        wants_frames = "frame" in args.workloads and any(c.frames for c in retrievable)
        wants_web = bool({"wado-frame", "wado-study", "qido"} & set(args.workloads))
        wants_find = "cfind" in args.workloads
        if wants_find and dcmtk_program("findscu") is None:
            data["skipped"]["cfind"] = "DCMTK findscu not installed (apt-get install -y dcmtk)"
            print("skipping workload cfind: DCMTK findscu not installed", file=sys.stderr, flush=True)
            wants_find = False
        if retrieve or wants_frames:
            needed = [p for p in available if p not in INGEST_ONLY]
        else:  # only the servers the DICOMweb and C-FIND workloads talk to
            needed = [p for p in available if (wants_web and p in WEB_PEERS) or (wants_find and p in FIND_PEERS)]
        if needed:
            started, not_loaded = start_loaded(needed, retrievable, work, log_config, data)
            supported = []
            if wants_frames:
                source = next(c for c in retrievable if c.frames)
                for name, peer in started.items():
                    if name not in not_loaded.get(source.name, {}):
                        data["frame_probe"][name] = probe_frame(peer, source, args.max_pdu)
                        print(f"FRAME-level C-GET to {name}: {data['frame_probe'][name]['outcome']}", flush=True)
                supported = [n for n, r in data["frame_probe"].items() if r["supported"]]
                retrieve += frame_methods(retrievable, supported, list(started), args.max_pdu)
            web_peers = [p for p in WEB_PEERS if p in started]
            retrieve += web_methods(args, retrievable, web_peers)
            if wants_find:
                retrieve += cfind_methods(retrievable, [p for p in FIND_PEERS if p in started],
                                          args.cfind_requests, log_config)
            for method in retrieve:
                method.peers = [p for p in method.peers if p in started]
                if method.peers:
                    data["rows"] += measure(method, args.runs, started, work, not_loaded.get(method.corpus.name))
            # Last: it stores the query corpus into the loaded servers, which C-FIND must not see.
            if "qido" in args.workloads:
                run_qido(args, started, web_peers, work, log_config, data)
    finally:
        for peer in started.values():
            peer.stop()
        while MOVE_DESTINATIONS:
            MOVE_DESTINATIONS.pop().stop()
        IngestDicomaccelPostgres.shut_down()
        shutil.rmtree(work, ignore_errors=True)

    data["seconds"] = round(time.time() - began, 1)
    data["load_after"] = Path("/proc/loadavg").read_text().split()[:3]
    written = report.write(data, args.out, charts=not args.no_charts)
    print(report.headline(data), flush=True)
    print(f"report: {', '.join(str(p) for p in written)}", flush=True)
    return 0 if all(r["runs"] for r in data["rows"]) else 1


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.runs < 1 or args.dicomaccel_workers < 1 or min(args.cstore_associations) < 1:
        parser().error("--runs, --dicomaccel-workers and --cstore-associations must be at least 1")
    if os.environ.get(NETNS_MARK) == "1":
        # Inside the namespace made by reexec_in_netns: loopback starts down.
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        return run_harness(args, argv)
    if args.install_peers:
        install_peers()
    wants_netns = [p for p in args.peers if p in NEEDS_NETNS and PEERS[p].unavailable() is None]
    if wants_netns:
        if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip"):
            print(f"running in a loopback-only network namespace (unshare --net) for {', '.join(wants_netns)}",
                  flush=True)
            return reexec_in_netns(argv)  # same working directory: relative paths still hold
        print(f"not root or no unshare/ip: cannot isolate {', '.join(wants_netns)} on loopback", file=sys.stderr)
    return run_harness(args, argv)
