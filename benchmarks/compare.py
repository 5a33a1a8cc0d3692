"""Side-by-side benchmark: dicomaccel, Orthanc, DCMTK dcmqrscp and a pynetdicom SCP, same machine,
same data, same clients; writes a Markdown report, PNG charts and the raw numbers as JSON.

    python -m benchmarks.compare [--peers dicomaccel,orthanc,dcmqrscp,pynetdicom]
                                 [--workloads stow,cstore,cget,frame] [--runs 5] [--out DIR]

Peers, installed from Debian's packages (as root; ``--install-peers`` runs this when a package
is missing):

    apt-get install -y orthanc orthanc-dicomweb dcmtk

- dicomaccel: ``dicomaccel serve`` of this checkout (STOW-RS, C-GET SCP incl. FRAME level), for
  ingest with ``--workers`` from ``--dicomaccel-workers`` (default: the CPU count);
- orthanc: Orthanc + DICOMweb plugin on a generated configuration (STOW-RS, C-STORE, C-GET SCP);
- dcmqrscp: DCMTK's Q/R SCP (C-STORE and C-GET SCP), loaded with ``storescu``;
- pynetdicom: the C-GET SCP of ``benchmarks/pynetdicom_scp.py`` (retrieve only).

Network isolation: Orthanc 1.10 and dcmqrscp cannot bind to one address, so when either is
selected the harness re-runs itself, servers and clients alike, inside a private network
namespace with only loopback (``unshare --net``, then ``ip link set lo up``); that needs root. Not
root, or no ``unshare``: those two peers are skipped with a message. Every DCMTK process runs with
``TCP_NODELAY=1`` (Debian's DCMTK leaves Nagle's algorithm on without it).

Corpora (generated once, cached under ``--cache-dir``): a CT series (``--ct``, 512x512x16 bit),
native multi-frame instances (``--multiframe``; 512x512x16 bit, 170..250 frames, 89-131 MB),
JPEG 2000 lossless multi-frame instances (``--j2k`` of ``--j2k-frames`` frames, 512x512 12 bit,
encoded with pylibjpeg-openjpeg) and the files of pydicom-data that pydicom reads and that have a
SOP Class (``--pydicom-data``; ingest only, accepted counts recorded per peer).

Workloads:

- ``stow``: STOW-RS (PS3.18 10.5) with ``--stow-batch`` instances per request and
  ``--stow-clients`` concurrent keep-alive clients (one process each), into a freshly started, empty server
  (dicomaccel with --fsync always, Orthanc with SyncStorageArea: both fsync before answering);
- ``cstore``: DCMTK ``storescu`` over one association into a fresh Orthanc or dcmqrscp;
- ``cget``: Study Root C-GET at ``--levels`` (STUDY, SERIES) received (``--clients``) by
  ``getscu --ignore``, by a pynetdicom SCU that does not decode what it receives and by ``drain``,
  a raw socket SCU that discards the data sets unparsed (:func:`drain_run`);
- ``frame``: a Composite Instance Root Retrieve C-GET at FRAME level (PS3.4 Annex Y) is offered to
  every peer; its outcome (association, context, status) is recorded, and peers that answer
  it are measured retrieving every 10th frame of each multi-frame instance.

Runs are interleaved peer by peer (A B A B ...) so machine drift hits every side. Each figure is
the median of ``--runs`` runs, with the spread (min-max). Server memory is the peak resident set
(VmHWM, reset through /proc/PID/clear_refs before each run). Every run also records the CPU time of
the server's process tree and of the client side, per instance. Before the workloads, the harness
measures the disk (sequential write + fdatasync; small files with fdatasync, with and without a
directory fsync) in the work directory's file system, and loopback TCP bandwidth (:func:`limits`).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import multiprocessing
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pydicom
import pynetdicom
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import CompositeInstanceRootRetrieveGet, StudyRootQueryRetrieveInformationModelGet

from benchmarks import report
from benchmarks.cget import GETSCU_LOG_CONFIG, parse_getscu_log
from benchmarks.orthanc import OrthancPeer
from benchmarks.orthanc import version as orthanc_version
from benchmarks.peers import (
    DcmqrscpPeer,
    DicomaccelPeer,
    Peer,
    PeerUnavailable,
    PynetdicomPeer,
    RssSampler,
    dcmtk_env,
    dcmtk_program,
    install_signal_handlers,
    stow,
)
from dicomaccel.dimse import IMPLEMENTATION_CLASS_UID, messages, pdu

REPO = Path(__file__).resolve().parent.parent
from dicomaccel.testing import files as dicomgen  # noqa: E402

NETNS_MARK = "DICOMACCEL_COMPARE_NETNS"
APT_PACKAGES = ("orthanc", "orthanc-dicomweb", "dcmtk")
INSTALL = "apt-get install -y " + " ".join(APT_PACKAGES)
MULTIFRAME_FRAMES = (170, 195, 220, 250)  # 512x512x16 bit: 89, 102, 115 and 131 MB
CACHE_VERSION = 1
RUN_TIMEOUT = 1800
GETSCU_TITLE = "GETSCU"
STORESCU_TITLE = "STORESCU"
SCU_TITLE = "PYNETDICOM"
DRAIN_TITLE = GETSCU_TITLE  # Orthanc answers C-GET only to the titles it lists (benchmarks/orthanc.py)
FRAME_STEP = 10


class IngestDicomaccel(DicomaccelPeer):
    # Orthanc fsyncs each file before answering (SyncStorageArea); so does this side. Its
    # ``workers`` are set from --dicomaccel-workers.
    fsync = "always"


class Dcmqrscp(DcmqrscpPeer):
    # +xv: accept JPEG 2000 lossless besides the uncompressed syntaxes, so storescu can load the
    # JPEG 2000 corpus as is and a C-GET SCU that proposes it receives it as stored.
    options = ("+xv",)


PEERS: dict[str, type[Peer]] = {"dicomaccel": DicomaccelPeer, "orthanc": OrthancPeer,
                                "dcmqrscp": Dcmqrscp, "pynetdicom": PynetdicomPeer}
STOW_PEERS = {"dicomaccel": (IngestDicomaccel, "/dicomweb/studies"), "orthanc": (OrthancPeer, "/dicom-web/studies")}
CSTORE_PEERS = ("orthanc", "dcmqrscp")
NEEDS_NETNS = ("orthanc", "dcmqrscp")  # cannot bind to 127.0.0.1 only
WORKLOADS = ("stow", "cstore", "cget", "frame")
CLIENTS = ("getscu", "pynetdicom", "drain")
LEVELS = ("STUDY", "SERIES")


# --------------------------------------------------------------------------------------------
# Corpora


@dataclass
class Corpus:
    """Files on disk that one workload sends or retrieves."""

    name: str
    label: str
    files: list[Path]
    sop_uids: list[str] = field(default_factory=list)
    sop_classes: list[str] = field(default_factory=list)
    transfer_syntax: str = ExplicitVRLittleEndian
    study_uid: str = ""
    series_uid: str = ""
    frames: list[int] = field(default_factory=list)  # Number of Frames per file, multi-frame only
    syntaxes: list[str] = field(default_factory=list)  # per file, when they differ

    def syntax_of(self, i: int) -> str:
        return self.syntaxes[i] if self.syntaxes else self.transfer_syntax

    @property
    def retrievable(self) -> bool:
        """One study of one series: what a STUDY or SERIES level C-GET fetches whole."""
        return bool(self.study_uid)

    @property
    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    def describe(self) -> dict:
        return {"name": self.name, "label": self.label, "instances": len(self.files), "bytes": self.nbytes,
                "transfer_syntax": self.transfer_syntax, "sop_classes": self.sop_classes}


def _cached(cache: Path, key: str, build) -> Corpus:
    """The corpus ``key`` from ``cache``, built by ``build(directory)`` into it on a miss."""
    where = cache / key
    manifest = where / "manifest.json"
    if not manifest.exists():
        tmp = Path(tempfile.mkdtemp(prefix=key + ".", dir=cache))
        try:
            meta = build(tmp)
            (tmp / "manifest.json").write_text(json.dumps(meta, indent=1))
            shutil.rmtree(where, ignore_errors=True)
            tmp.rename(where)  # readers only ever see a complete corpus
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    meta = json.loads(manifest.read_text())
    meta["files"] = [where / f for f in meta["files"]]
    return Corpus(**meta)


def _save(directory: Path, datasets, name: str, label: str, ts: str) -> dict:
    files, sops, classes, frames = [], [], set(), []
    study = series = ""
    for i, ds in enumerate(datasets):
        data = dicomgen.to_bytes(ds, ts) if ts == ExplicitVRLittleEndian else _encoded(ds)
        (directory / f"{i:05d}.dcm").write_bytes(data)
        files.append(f"{i:05d}.dcm")
        sops.append(str(ds.SOPInstanceUID))
        classes.add(str(ds.SOPClassUID))
        study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        if "NumberOfFrames" in ds:
            frames.append(int(ds.NumberOfFrames))
    return {"name": name, "label": label, "files": files, "sop_uids": sops, "sop_classes": sorted(classes),
            "transfer_syntax": ts, "study_uid": study, "series_uid": series, "frames": frames}


def _encoded(ds: Dataset) -> bytes:
    """PS3.10 bytes of an already compressed dataset (its file meta names the transfer syntax)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def ct_corpus(cache: Path, n: int) -> Corpus:
    def build(directory: Path) -> dict:
        study, series = generate_uid(), generate_uid()
        datasets = (dcmread(io.BytesIO(dicomgen.ct_instance(study, series, i + 1))) for i in range(n))
        return _save(directory, datasets, "ct", f"CT {n} x 512x512x16", ExplicitVRLittleEndian)
    return _cached(cache, f"ct-{n}-v{CACHE_VERSION}", build)


def multiframe_corpus(cache: Path, n: int) -> Corpus:
    frames = [MULTIFRAME_FRAMES[i % len(MULTIFRAME_FRAMES)] for i in range(n)]

    def build(directory: Path) -> dict:
        study, series = generate_uid(), generate_uid()

        def datasets():
            for count in frames:  # one at a time: up to 131 MB each
                ds = dicomgen.multiframe_dataset(count, 512, 512, study_uid=study)
                ds.SeriesInstanceUID = series
                yield ds
        label = f"multi-frame {n} x 512x512x16 ({min(frames)}-{max(frames)} frames)"
        return _save(directory, datasets(), "multiframe", label, ExplicitVRLittleEndian)
    return _cached(cache, f"multiframe-{n}-v{CACHE_VERSION}", build)


def phantom(frames: int, rows: int = 512, columns: int = 512, seed: int = 0) -> np.ndarray:
    """12-bit frames a lossless codec compresses as it would an image: smooth structure plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    body = 1024 + 1400 * np.exp(-((x - columns / 2) ** 2 + (y - rows / 2) ** 2) / (2 * (rows / 4) ** 2))
    out = np.empty((frames, rows, columns), np.uint16)
    for f in range(frames):
        ripple = 300 * np.sin((x + 7 * f) / 23.0) * np.cos((y - 5 * f) / 31.0)
        noise = rng.normal(0, 12, (rows, columns))
        out[f] = np.clip(body + ripple + noise, 0, 4095).astype(np.uint16)
    return out


def j2k_corpus(cache: Path, n: int, frames: int) -> Corpus:
    def build(directory: Path) -> dict:
        study, series = generate_uid(), generate_uid()

        def datasets():
            for i in range(n):
                ds = dicomgen.multiframe_dataset(1, 512, 512, study_uid=study)  # 1 frame: header only
                ds.SeriesInstanceUID = series
                ds.NumberOfFrames = frames
                ds.BitsStored, ds.HighBit = 12, 11
                ds.file_meta = pydicom.dataset.FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                ds.compress(JPEG2000Lossless, phantom(frames, seed=i), encoding_plugin="pylibjpeg")
                ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.file_meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
                yield ds
        return _save(directory, datasets(), "j2k", f"JPEG 2000 lossless {n} x {frames} frames 512x512x12",
                     JPEG2000Lossless)
    return _cached(cache, f"j2k-{n}x{frames}-v{CACHE_VERSION}", build)


def pydicom_data_corpus(limit: int) -> Corpus:
    """pydicom-data's test files that pydicom reads and that have a SOP Class (used in place)."""
    import warnings
    from pydicom.data import get_testdata_files

    files, classes, syntaxes = [], set(), []
    for name in sorted(get_testdata_files()):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = dcmread(name, stop_before_pixels=True)
            sop_class = ds.get("SOPClassUID") or ds.get("file_meta", {}).get("MediaStorageSOPClassUID")
            syntax = str(ds.file_meta.get("TransferSyntaxUID", ImplicitVRLittleEndian))
        except Exception:  # any file pydicom cannot read is out of the corpus by definition
            continue
        if sop_class:
            files.append(Path(name))
            classes.add(str(sop_class))
            syntaxes.append(syntax)
        if 0 <= limit <= len(files):
            break
    return Corpus("pydicom-data", f"pydicom-data {len(files)} real files", files,
                  sop_classes=sorted(classes), transfer_syntax=f"{len(set(syntaxes))} different",
                  syntaxes=syntaxes)


# --------------------------------------------------------------------------------------------
# Measurements: each returns seconds, time to first instance, instances, bytes, accepted


@dataclass
class Method:
    """A row group of the report: a way of moving a corpus, and the peers that take part."""

    section: str  # ingest | retrieve | frame
    corpus: Corpus
    label: str
    peers: list[str]
    run: object  # callable(peer) -> dict, peer started
    fresh: bool = False  # ingest: a new empty server per run


def _multipart(paths: list[Path], boundary: str) -> bytes:
    out = []
    for p in paths:
        out += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), p.read_bytes(), b"\r\n"]
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out)


def _stow_counts(body: bytes) -> tuple[int, int]:
    """(stored, failed) from a STOW-RS response in JSON (PS3.18 Table 10.5.3-1)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return 0, 0
    if isinstance(doc, list):
        doc = doc[0] if doc else {}
    count = lambda tag: len((doc.get(tag) or {}).get("Value") or [])  # noqa: E731
    return count("00081199"), count("00081198")


STOW_BOUNDARY = "dicomaccel-compare"
STOW_CTYPE = f'multipart/related; type="application/dicom"; boundary={STOW_BOUNDARY}'


def _stow_client(port: int, path: str, mine: list[tuple[bytes, int]], barrier, results) -> None:
    """One STOW-RS client process: connect, wait for the others, POST ``mine`` on one keep-alive
    connection; put its counts, reasons, time stamps and own CPU seconds on ``results``."""
    out = {"stored": 0, "failed": 0, "errors": [], "reasons": {}, "first": None, "start": None, "end": None,
           "cpu": 0.0}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=RUN_TIMEOUT)
    try:
        conn.connect()
        barrier.wait(60)
        cpu = _cpu_s(resource.getrusage(resource.RUSAGE_SELF))
        out["start"] = time.perf_counter()
        for body, _ in mine:
            conn.request("POST", path, body=body, headers={"Content-Type": STOW_CTYPE,
                                                           "Accept": "application/dicom+json"})
            resp = conn.getresponse()
            text = resp.read()
            ok, bad = _stow_counts(text)
            for code in _failure_reasons(text):
                out["reasons"][code] = out["reasons"].get(code, 0) + 1
            if ok and out["first"] is None:
                out["first"] = time.perf_counter()
            out["stored"] += ok
            out["failed"] += bad
            if resp.status not in (200, 202, 409):
                out["errors"].append(f"HTTP {resp.status}")
        out["end"] = time.perf_counter()
        out["cpu"] = _cpu_s(resource.getrusage(resource.RUSAGE_SELF)) - cpu
    except (OSError, http.client.HTTPException, threading.BrokenBarrierError) as exc:
        barrier.abort()  # the others stop waiting for a client that will not come
        out["errors"].append(repr(exc))
    finally:
        conn.close()
        results.put(out)


def _cpu_s(usage: resource.struct_rusage) -> float:
    """User + system seconds of a ``resource.getrusage`` result."""
    return usage.ru_utime + usage.ru_stime


def stow_run(port: int, path: str, bodies: list[tuple[bytes, int]], clients: int) -> dict:
    """POST every body, round robin over ``clients`` client processes (forked: they share the
    prebuilt bodies), each with one keep-alive connection; all start at one barrier. Time runs
    from the first client's start to the last client's end; ``client_cpu_s`` sums the clients'
    own CPU over that span."""
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(clients), ctx.SimpleQueue()
    procs = [ctx.Process(target=_stow_client, args=(port, path, bodies[i::clients], barrier, results), daemon=True)
             for i in range(clients)]
    for proc in procs:
        proc.start()
    try:
        outs = [results.get() for _ in procs]
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    errors = [e for o in outs for e in o["errors"]]
    stored = sum(o["stored"] for o in outs)
    if errors and not stored:
        raise RuntimeError(f"STOW-RS failed: {errors[:3]}")
    start = min(o["start"] for o in outs if o["start"] is not None)
    firsts = [o["first"] for o in outs if o["first"] is not None]
    reasons: dict[str, int] = {}
    for o in outs:
        for code, n in o["reasons"].items():
            reasons[code] = reasons.get(code, 0) + n
    return {"seconds": max(o["end"] or time.perf_counter() for o in outs) - start,
            "first": min(firsts) - start if firsts else None, "accepted": stored, "http_errors": len(errors),
            "failure_reasons": reasons, "client_cpu_s": sum(o["cpu"] for o in outs)}


def _failure_reasons(body: bytes) -> list[str]:
    """Failure Reason (0008,1197) of each Failed SOP Sequence item, as 0xXXXX ('none' if absent)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return []
    if isinstance(doc, list):
        doc = doc[0] if doc else {}
    out = []
    for item in (doc.get("00081198") or {}).get("Value") or []:
        value = (item.get("00081197") or {}).get("Value") or []
        out.append(f"0x{int(value[0]):04X}" if value else "none")
    return out


STORESCU_LOG = GETSCU_LOG_CONFIG
_STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3})\.(\d{3}) (\w+): (.*)$")


def parse_storescu_log(text: str) -> tuple[float, float | None]:
    """(seconds from the first Store Request to the last Store Response, seconds to the first
    successful response) from a storescu log written with :data:`STORESCU_LOG`."""
    sent = last = first = None
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
        if message.startswith("Sending Store Request") and sent is None:
            sent = t
        elif message.startswith("Received Store Response"):
            last = t
            if first is None and "(Success" in message:
                first = t
    if sent is None or last is None:
        raise RuntimeError(f"storescu log has no Store Request and Response:\n{text[-1500:]}")
    return last - sent, None if first is None else first - sent


# storescu proposes uncompressed syntaxes unless told which compressed one to propose; it does
# not propose a file's own syntax by itself. Syntaxes missing here go with the default proposal.
STORESCU_SYNTAX = {
    "1.2.840.10008.1.2.2": "-xb", "1.2.840.10008.1.2.1.99": "-xd", "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx", "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw", "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.5": "-xr",
}


def storescu_groups(corpus: Corpus) -> list[tuple[list[str], list[Path]]]:
    """(storescu transfer syntax options, files) per association: one per compressed syntax."""
    groups: dict[str, list[Path]] = {}
    for i, path in enumerate(corpus.files):
        groups.setdefault(STORESCU_SYNTAX.get(corpus.syntax_of(i), ""), []).append(path)
    return [([opt] if opt else [], files) for opt, files in groups.items()]


def storescu(peer: Peer, corpus: Corpus, log_config: Path) -> tuple[float, float | None]:
    """Send ``corpus`` with DCMTK ``storescu``, one association per transfer syntax group; (seconds
    summed over the associations, seconds to the first success in the first association)."""
    seconds, first, failed = 0.0, None, []
    for options, files in storescu_groups(corpus):
        # -R: propose only the SOP classes of the files (fewer than 128 contexts even for
        # pydicom-data's mix); -nh: carry on past a refused file.
        cmd = [dcmtk_program("storescu"), "--log-config", str(log_config), "-R", "-nh", *options,
               "-aet", STORESCU_TITLE, "-aec", peer.ae_title, "127.0.0.1", str(peer.port), *map(str, files)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=dcmtk_env(), timeout=RUN_TIMEOUT)
        try:
            took, got = parse_storescu_log(done.stdout + done.stderr)
        except RuntimeError as exc:
            # storescu sent nothing in this association (it could not send the group's files):
            # they count as not stored, the other groups still do.
            failed.append(exc)
            continue
        if first is None and got is not None:
            first = seconds + got
        seconds += took
    if first is None and failed:
        raise failed[0]
    return seconds, first


def cstore_run(peer: Peer, corpus: Corpus, log_config: Path) -> dict:
    """``corpus`` into an empty server by :func:`storescu`; counts what the server then holds."""
    seconds, first = storescu(peer, corpus, log_config)
    return {"seconds": seconds, "first": first, "accepted": stored_count(peer)}


def stored_count(peer: Peer) -> int:
    """Instances a server holds, by its own account (Orthanc's index, dcmqrscp's storage area)."""
    if isinstance(peer, OrthancPeer):
        return peer.instance_count()
    storage = peer.workdir / "db"
    return sum(1 for p in storage.iterdir() if p.is_file() and p.name != "index.dat")


def getscu_run(peer: Peer, corpus: Corpus, level: str, max_pdu: int, log_config: Path) -> dict:
    """One C-GET by DCMTK ``getscu --ignore`` (timed from its log, see :mod:`benchmarks.cget`)."""
    keys = ["-k", f"QueryRetrieveLevel={level}", "-k", f"StudyInstanceUID={corpus.study_uid}"]
    if level == "SERIES":
        keys += ["-k", f"SeriesInstanceUID={corpus.series_uid}"]
    # +xv: accept JPEG 2000 lossless (besides uncompressed) so a compressed corpus can come as stored.
    syntax = ["+xv"] if corpus.transfer_syntax == JPEG2000Lossless else []
    cmd = [dcmtk_program("getscu"), "--log-config", str(log_config), "-S", "-aet", GETSCU_TITLE,
           "-aec", peer.ae_title, "-pdu", str(max_pdu), "--ignore", *syntax, *keys, "127.0.0.1", str(peer.port)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=dcmtk_env(), timeout=RUN_TIMEOUT)
    log = done.stdout + done.stderr
    failed = [line.split(": ", 1)[-1] for line in log.splitlines()
              if "ERROR:" in line or "(Failed" in line or "(Refused" in line]
    if done.returncode != 0 or failed:
        raise RuntimeError(f"getscu: {' / '.join(dict.fromkeys(failed)) or f'exit status {done.returncode}'}")
    seconds, first, stored, completed = parse_getscu_log(log)
    if stored != len(corpus.files) or completed != len(corpus.files):
        raise RuntimeError(f"getscu received {stored}, final response reports {completed} completed, "
                           f"expected {len(corpus.files)}")
    return {"seconds": seconds, "first": first, "accepted": stored}


class RetrieveRefused(RuntimeError):
    """The peer refused the retrieve: association, presentation context or C-GET status."""


def _pdata(pcid: int, control: int, data: bytes) -> bytes:
    """A P-DATA-TF PDU of one PDV; ``control`` bit 0: command, bit 1: last fragment (PS3.8 E.2)."""
    return pdu.PDATA_ONE_PDV_HEADER.pack(pdu.P_DATA_TF, len(data) + 6, len(data) + 2, pcid, control) + data


def _element(tag: int, value: str, pad: bytes = b" ") -> bytes:
    """One Implicit VR Little Endian element of a text value (UI: ``pad`` NUL, PS3.5 6.2)."""
    raw = value.encode("ascii")
    raw += pad * (len(raw) & 1)
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(raw)) + raw


def _associate_rq(called: str, contexts: list[tuple[int, str, list[str]]], scp_roles: list[str],
                  max_pdu: int) -> bytes:
    """An A-ASSOCIATE-RQ (PS3.8 9.3.2) proposing ``contexts`` (id, abstract syntax, transfer
    syntaxes) and the SCP role for the SOP classes ``scp_roles`` (PS3.7 D.3.3.4)."""
    items = [pdu.item(pdu.ITEM_APPLICATION_CONTEXT, pdu.DICOM_APPLICATION_CONTEXT.encode())]
    for pcid, abstract, syntaxes in contexts:
        subs = [pdu.item(pdu.ITEM_ABSTRACT_SYNTAX, abstract.encode()),
                *(pdu.item(pdu.ITEM_TRANSFER_SYNTAX, ts.encode()) for ts in syntaxes)]
        items.append(pdu.item(pdu.ITEM_PRESENTATION_CONTEXT_RQ, bytes((pcid, 0, 0, 0)) + b"".join(subs)))
    user = [pdu.sub_maximum_length(max_pdu), pdu.sub_uid(pdu.SUB_IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_CLASS_UID),
            *(pdu.sub_role_selection(uid, 0, 1) for uid in scp_roles)]
    items.append(pdu.item(pdu.ITEM_USER_INFORMATION, b"".join(user)))
    body = struct.pack(">H2x16s16s32x", 1, called.ljust(16).encode(), DRAIN_TITLE.ljust(16).encode()) + b"".join(items)
    return pdu.PDU_HEADER.pack(pdu.A_ASSOCIATE_RQ, len(body)) + body


def _accepted(ac: bytes) -> set[int]:
    """IDs of the presentation contexts an A-ASSOCIATE-AC body accepts (result 0, PS3.8 9.3.3.2)."""
    out, pos = set(), pdu.ASSOCIATE_FIXED_LENGTH
    while pos + pdu.ITEM_HEADER.size <= len(ac):
        kind, length = pdu.ITEM_HEADER.unpack_from(ac, pos)
        if kind == pdu.ITEM_PRESENTATION_CONTEXT_AC and ac[pos + 6] == pdu.PC_ACCEPTANCE:
            out.add(ac[pos + 4])
        pos += pdu.ITEM_HEADER.size + length
    return out


def drain_run(peer: Peer, corpus: Corpus, level: str, max_pdu: int) -> dict:
    """One Study Root C-GET by a raw draining SCU: sockets and this project's PDU and command
    encoders; it reads every PDU, keeps only PDV headers and command sets, throws the data set
    bytes away and answers each C-STORE-RQ with Success. Timed from sending the C-GET-RQ to the
    final C-GET-RSP; ``bytes`` are the data set bytes received."""
    get_model = StudyRootQueryRetrieveInformationModelGet
    syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    if corpus.transfer_syntax == JPEG2000Lossless:
        syntaxes.insert(0, JPEG2000Lossless)
    contexts = [(1, get_model, [ImplicitVRLittleEndian]),
                *((3 + 2 * i, uid, syntaxes) for i, uid in enumerate(corpus.sop_classes))]
    sock = socket.create_connection(("127.0.0.1", peer.port), timeout=RUN_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stream = sock.makefile("rb", buffering=1 << 20)
    scratch = memoryview(bytearray(1 << 20))

    def read(n: int) -> bytes:
        data = stream.read(n)
        if len(data) != n:
            raise RuntimeError("drain: the peer closed the connection")
        return data

    def skip(n: int) -> None:
        while n:
            got = stream.readinto(scratch[:min(n, len(scratch))])
            if not got:
                raise RuntimeError("drain: the peer closed the connection")
            n -= got

    try:
        sock.sendall(_associate_rq(peer.ae_title, contexts, corpus.sop_classes, max_pdu))
        kind, length = pdu.PDU_HEADER.unpack(read(6))
        body = read(length)
        if kind != pdu.A_ASSOCIATE_AC:
            raise RetrieveRefused("association rejected (A-ASSOCIATE-RJ)" if kind == pdu.A_ASSOCIATE_RJ
                                  else f"association answered with PDU type 0x{kind:02X}")
        if 1 not in _accepted(body):
            raise RetrieveRefused(f"presentation context {get_model.name} not accepted")
        identifier = _element(0x00080052, level) + _element(0x0020000D, corpus.study_uid, b"\0")
        if level == "SERIES":
            identifier += _element(0x0020000E, corpus.series_uid, b"\0")
        request = messages.encode_command({
            "AffectedSOPClassUID": get_model, "CommandField": messages.C_GET_RQ, "MessageID": 1,
            "Priority": messages.PRIORITY_MEDIUM, "CommandDataSetType": messages.DATASET_PRESENT})
        start = time.perf_counter()
        sock.sendall(_pdata(1, 3, request) + _pdata(1, 2, identifier))
        received = nbytes = 0
        first = final = None
        command, fragments = {}, []
        while final is None:
            kind, length = pdu.PDU_HEADER.unpack(read(6))
            if kind != pdu.P_DATA_TF:
                raise RetrieveRefused(f"PDU type 0x{kind:02X} during the C-GET (A-ABORT: 7)")
            while length:
                pdv_length, pcid, control = pdu.PDV_HEADER.unpack(read(6))
                length -= 4 + pdv_length
                if control & 1:
                    fragments.append(read(pdv_length - 2))
                    if not control & 2:
                        continue
                    command = messages.decode_command(b"".join(fragments))
                    fragments.clear()
                    if messages.has_dataset(command):
                        continue  # answered when its data set has arrived
                else:
                    skip(pdv_length - 2)
                    if command.get("CommandField") == messages.C_STORE_RQ:
                        nbytes += pdv_length - 2
                    if not control & 2:
                        continue
                if command["CommandField"] == messages.C_STORE_RQ:
                    sock.sendall(_pdata(pcid, 3, messages.encode_command({
                        "AffectedSOPClassUID": command["AffectedSOPClassUID"], "CommandField": messages.C_STORE_RSP,
                        "MessageIDBeingRespondedTo": command["MessageID"], "CommandDataSetType": messages.NO_DATASET,
                        "Status": 0x0000, "AffectedSOPInstanceUID": command["AffectedSOPInstanceUID"]})))
                    received += 1
                    first = first or time.perf_counter() - start
                elif command["CommandField"] == messages.C_GET_RSP and command["Status"] not in (0xFF00, 0xFF01):
                    final = command["Status"]
        seconds = time.perf_counter() - start
        if final != 0x0000:
            raise RetrieveRefused(f"C-GET final status 0x{final:04X} {command.get('ErrorComment', '')}".strip())
        sock.sendall(pdu.A_RELEASE_RQ_BYTES)
        while (reply := pdu.PDU_HEADER.unpack(read(6)))[0] != pdu.A_RELEASE_RP:
            skip(reply[1])
    except BaseException:
        with contextlib.suppress(OSError):
            sock.sendall(pdu.encode_abort(pdu.ABORT_SOURCE_USER, pdu.ABORT_REASON_NOT_SPECIFIED))
        raise
    finally:
        stream.close()
        sock.close()
    if received != len(corpus.files):
        raise RuntimeError(f"drain received {received} instances")
    return {"seconds": seconds, "first": first, "accepted": received, "bytes": nbytes}


def _scu(corpus: Corpus, model: str, max_pdu: int, on_store):
    ae = AE(ae_title=SCU_TITLE)
    ae.dimse_timeout = ae.network_timeout = ae.acse_timeout = RUN_TIMEOUT
    ae.add_requested_context(model)
    syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    if corpus.transfer_syntax == JPEG2000Lossless:
        syntaxes.insert(0, JPEG2000Lossless)
    for uid in corpus.sop_classes:
        ae.add_requested_context(uid, syntaxes)

    def on_open(event) -> None:
        # As TCP_NODELAY=1 does for DCMTK: no Nagle delay on the small command PDUs.
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    roles = [build_role(uid, scp_role=True) for uid in corpus.sop_classes]
    return ae, dict(ext_neg=roles, max_pdu=max_pdu,
                    evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_CONN_OPEN, on_open)])


def pynetdicom_run(peer: Peer, corpus: Corpus, level: str, max_pdu: int, frames: list[list[int]] | None = None) -> dict:
    """C-GETs by a pynetdicom SCU that counts what arrives without decoding it.

    STUDY or SERIES: one Study Root C-GET of the corpus. FRAME: a Composite Instance Root C-GET per
    instance asking for ``frames[i]`` (Simple Frame List, PS3.4 Y.6.1), all on one association.
    """
    received: list[float] = []
    nbytes = [0]

    def on_store(event) -> int:
        received.append(time.perf_counter())
        nbytes[0] += len(event.request.DataSet.getbuffer())
        return 0x0000

    model = CompositeInstanceRootRetrieveGet if level == "FRAME" else StudyRootQueryRetrieveInformationModelGet
    ae, kwargs = _scu(corpus, model, max_pdu, on_store)
    assoc = ae.associate("127.0.0.1", peer.port, ae_title=peer.ae_title, **kwargs)
    if assoc.is_rejected:
        raise RetrieveRefused("association rejected (A-ASSOCIATE-RJ)")
    if assoc.is_aborted or not assoc.is_established:
        raise RetrieveRefused("association aborted or not established")
    queries = []
    if level == "FRAME":
        for sop, wanted in zip(corpus.sop_uids, frames or []):
            q = Dataset()
            q.QueryRetrieveLevel = "FRAME"
            q.StudyInstanceUID, q.SeriesInstanceUID, q.SOPInstanceUID = corpus.study_uid, corpus.series_uid, sop
            q.SimpleFrameList = wanted
            queries.append(q)
    else:
        q = Dataset()
        q.QueryRetrieveLevel = level
        q.StudyInstanceUID = corpus.study_uid
        if level == "SERIES":
            q.SeriesInstanceUID = corpus.series_uid
        queries.append(q)
    try:
        if not any(cx.abstract_syntax == model for cx in assoc.accepted_contexts):
            raise RetrieveRefused(f"presentation context {model.name} not accepted")
        start = time.perf_counter()
        for q in queries:
            final = None
            for status, _ in assoc.send_c_get(q, model):
                if status is None or "Status" not in status:
                    raise RetrieveRefused("no C-GET response (timeout or abort)")
                if status.Status not in (0xFF00, 0xFF01):
                    final = status
            if final is None or final.Status != 0x0000:
                code = "none" if final is None else f"0x{final.Status:04X}"
                comment = final.get("ErrorComment", "") if final is not None else ""
                raise RetrieveRefused(f"C-GET final status {code} {comment}".strip())
        seconds = time.perf_counter() - start
    finally:
        if assoc.is_established:
            assoc.release()
    if len(received) != len(queries if level == "FRAME" else corpus.files):
        raise RuntimeError(f"pynetdicom received {len(received)} instances")
    return {"seconds": seconds, "first": received[0] - start, "accepted": len(received), "bytes": nbytes[0]}


def forked(fn, *args):
    """``fn(*args)`` in a forked process (its own interpreter lock; its CPU counts as a child's):
    what it returns, or what it raises raised here."""
    ctx = multiprocessing.get_context("fork")
    reader, writer = ctx.Pipe(duplex=False)

    def child() -> None:
        try:
            writer.send((True, fn(*args)))
        except BaseException as exc:  # noqa: BLE001 - handed to the parent as is
            writer.send((False, exc))

    proc = ctx.Process(target=child, daemon=True)
    proc.start()
    writer.close()
    try:
        ok, value = reader.recv()
    except EOFError:
        raise RuntimeError(f"{fn.__name__}: its process ended without an answer") from None
    finally:
        proc.join()
    if not ok:
        raise value
    return value


# Besides getscu, which needs its log configuration. The drain SCU runs in a process of its own.
RETRIEVE_CLIENTS = {"pynetdicom": pynetdicom_run, "drain": lambda *args: forked(drain_run, *args)}


def load(peer: Peer, corpus: Corpus, log_config: Path) -> str | None:
    """Store ``corpus`` into a started peer the way it ingests (STOW-RS, else storescu); why not, or None."""
    try:
        if peer.name in STOW_PEERS:
            stow(peer.http_port, corpus.files, path=STOW_PEERS[peer.name][1])
            return None
        before = stored_count(peer)
        storescu(peer, corpus, log_config)
        stored = stored_count(peer) - before
        return None if stored == len(corpus.files) else f"storescu stored {stored} of {len(corpus.files)}"
    except (RuntimeError, OSError, http.client.HTTPException) as exc:
        return " ".join(str(exc).split())[:300]


def frame_lists(corpus: Corpus) -> list[list[int]]:
    """Every ``FRAME_STEP``-th frame (1-based, PS3.4 Y.6.1.1) of each instance."""
    return [list(range(1, n + 1, FRAME_STEP)) for n in corpus.frames]


# --------------------------------------------------------------------------------------------
# Limits of this machine, measured in the same run


def _write_file(path: Path, data: bytes, chunk: int, directory: int | None = None) -> None:
    """Write ``data`` to a new file in ``chunk``-byte writes, fdatasync and close it; then fsync
    ``directory`` (an open descriptor) if given, as a store that makes the new name durable does."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        for i in range(0, len(view), chunk):
            os.write(fd, view[i:i + chunk])
        os.fdatasync(fd)
    finally:
        os.close(fd)
    if directory is not None:
        os.fsync(directory)


def seq_write_mbps(where: Path, total: int = 256 << 20, chunk: int = 8 << 20, reps: int = 3) -> list[float]:
    """MB/s of writing ``total`` bytes to one file in ``chunk``-byte writes plus one fdatasync."""
    data, out = os.urandom(chunk) * (total // chunk), []
    for _ in range(reps):
        t = time.perf_counter()
        _write_file(where / "seq.bin", data, chunk)
        out.append(total / (time.perf_counter() - t) / 1e6)
        os.unlink(where / "seq.bin")
    return out


def files_per_s(where: Path, size: int, threads: int, dir_sync: bool, seconds: float = 2.0,
                most: int = 1000) -> float:
    """Files/s of ``threads`` threads each writing ``size``-byte files (write, fdatasync, close,
    and with ``dir_sync`` an fsync of the directory) for ``seconds`` or ``most`` files each."""
    directory = where / f"files-{threads}-{int(dir_sync)}"
    directory.mkdir()
    data = os.urandom(size)
    dfd = os.open(directory, os.O_RDONLY)
    counts = [0] * threads

    def writer(k: int) -> None:
        deadline = time.perf_counter() + seconds
        while counts[k] < most and time.perf_counter() < deadline:
            _write_file(directory / f"{k}-{counts[k]}", data, size, dfd if dir_sync else None)
            counts[k] += 1

    t = time.perf_counter()
    pool = [threading.Thread(target=writer, args=(k,)) for k in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    rate = sum(counts) / (time.perf_counter() - t)
    os.close(dfd)
    shutil.rmtree(directory)
    return rate


def _tcp_send(port: int, total: int, chunk: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        block = b"\0" * chunk
        for _ in range(total // chunk):
            s.sendall(block)


def tcp_mbps(total: int = 1 << 30, chunk: int = 1 << 20) -> float:
    """MB/s of ``total`` bytes over loopback TCP from a sender process (``chunk``-byte sends) to
    this one, timed by the receiver from accepting the connection to the sender's close."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = multiprocessing.get_context("fork").Process(
            target=_tcp_send, args=(server.getsockname()[1], total, chunk), daemon=True)
        sender.start()
        conn, _ = server.accept()
        t, got, buf = time.perf_counter(), 0, bytearray(chunk)
        with conn:
            while n := conn.recv_into(buf):
                got += n
        seconds = time.perf_counter() - t
    sender.join()
    if got != total:
        raise RuntimeError(f"loopback TCP: received {got} of {total} bytes")
    return total / seconds / 1e6


def limits(where: Path, file_size: int) -> dict:
    """Disk and loopback limits of this machine in ``where``'s file system (see the report)."""
    print(f"measuring disk and loopback limits in {where} ...", flush=True)
    seq = seq_write_mbps(where)
    out = {"filesystem": str(where), "seq_write_mbps": statistics.median(seq), "seq_write_runs": seq,
           "file_bytes": file_size,
           "files_per_s": {str(n): {"write + fdatasync + close": files_per_s(where, file_size, n, False),
                                    "write + fdatasync + close + directory fsync":
                                        files_per_s(where, file_size, n, True)}
                           for n in (1, 4)},
           "tcp_mbps": tcp_mbps()}
    print(f"limits: sequential write+fdatasync {out['seq_write_mbps']:.0f} MB/s, loopback TCP "
          f"{out['tcp_mbps']:.0f} MB/s, {file_size} B files/s (1 and 4 threads) "
          f"{', '.join(f'{v:.0f}' for n in out['files_per_s'].values() for v in n.values())}", flush=True)
    return out


# --------------------------------------------------------------------------------------------
# Harness


def harness_cpu_s() -> float:
    """CPU seconds of this process and of its children that have ended (and been waited for)."""
    return sum(_cpu_s(resource.getrusage(who)) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def core_times() -> list[tuple[int, int]]:
    """(busy, total) jiffies of every core, from /proc/stat (proc(5))."""
    out = []
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks = [int(f) for f in fields[:8]]
            out.append((sum(ticks) - ticks[3] - ticks[4], sum(ticks)))  # idle, iowait
    return out


def core_busy(before: list[tuple[int, int]]) -> list[float]:
    """Share of each core busy since ``before`` (everything on the machine: server, clients,
    kernel threads flushing to disk)."""
    return [(b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
            for (b0, t0), (b1, t1) in zip(before, core_times())]


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


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
                   "bytes": method.corpus.nbytes, "runs": [], "error": (errors or {}).get(name)}
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
                    peer = STOW_PEERS[name][0](fresh) if method.label.startswith("STOW") \
                        else PEERS[name](fresh)
                    peer.start([])
                else:
                    peer = started[name]
                load = loadavg()
                server_cpu, client_cpu, cores = peer.cpu_s(), harness_cpu_s(), core_times()
                with RssSampler(peer) as rss:
                    result = method.run(peer)
                result["core_busy"] = core_busy(cores)
                result.setdefault("bytes", method.corpus.nbytes)
                # Client CPU: what this process and the clients it ran (getscu, storescu, STOW-RS
                # processes) used, less the memory sampler's thread; STOW-RS clients count their own.
                result.setdefault("client_cpu_s", harness_cpu_s() - client_cpu - rss.cpu_s)
                result.update(peak_mib=rss.peak_mib, load1=load, server_cpu_s=peer.cpu_s() - server_cpu)
                row["runs"].append(result)
                rate = len(method.corpus.files) / result["seconds"]
                bar.step(f"{name} run {i + 1}: {report.fig(rate)} inst/s "
                         f"{report.fig(result['bytes'] / result['seconds'] / 1e6)} MB/s "
                         f"peak RSS {rss.peak_mib:.0f} MiB accepted {result['accepted']} CPU ms/inst "
                         f"server {report.fig(1e3 * result['server_cpu_s'] / len(method.corpus.files))} "
                         f"client {report.fig(1e3 * result['client_cpu_s'] / len(method.corpus.files))}")
            except (RuntimeError, OSError, PeerUnavailable, subprocess.TimeoutExpired, ValueError) as exc:
                row["error"] = " ".join(f"{exc}{server_says(peer)}".split())[:400]
                bar.step(f"{name} run {i + 1}: FAILED {row['error']}")
            finally:
                if method.fresh and peer is not None:
                    peer.stop()
                    release_files(peer.workdir)
    return list(rows.values())


def release_files(directory: Path) -> None:
    """Empty every file of a finished run and keep the inodes until the harness ends.

    Both ways of cleaning up between runs bias the next run on a VM whose root file system is
    ext4 without a journal: deleting files makes every file creation of the next run scan past
    the recently deleted inodes (a third of a server's CPU in a measured case), and keeping the
    data makes the next run fill never-touched guest pages (new page-cache pages cost about
    1 ms per 0.5 MB cold, 0.16 ms recycled). Truncating frees the pages for reuse and deletes
    no inode."""
    for root, _, names in os.walk(directory):
        for name in names:
            try:
                os.truncate(os.path.join(root, name), 0)
            except OSError:
                pass


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
        result = pynetdicom_run(peer, _first(corpus), "FRAME", max_pdu, [[1, 2, 3]])
    except RetrieveRefused as exc:
        return {"supported": False, "outcome": str(exc)}
    except (RuntimeError, OSError, ValueError) as exc:
        return {"supported": False, "outcome": f"error: {' '.join(str(exc).split())[:200]}"}
    return {"supported": True, "outcome": f"0x0000 Success, {result['accepted']} instance of 3 frames"}


def _first(corpus: Corpus) -> Corpus:
    return Corpus(corpus.name, corpus.label, corpus.files[:1], corpus.sop_uids[:1], corpus.sop_classes,
                  corpus.transfer_syntax, corpus.study_uid, corpus.series_uid, corpus.frames[:1])


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / 2**20, 1),
            "kernel": platform.release(), "os": _os_release(), "python": platform.python_version()}


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def versions() -> dict:
    import dicomaccel
    from dicomaccel import frames
    getscu = dcmtk_program("getscu")
    dcmtk = subprocess.run([getscu, "--version"], capture_output=True, text=True).stdout.split("\n")[0] if getscu else ""
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
    out = {"dicomaccel": f"{getattr(dicomaccel, '__version__', '0.1.0')} @ {rev.stdout.strip() or '?'}"
                         f"{' + uncommitted changes' if dirty.stdout.strip() else ''}",
           "dicomaccel kernels": "compiled" if "_c" in frames.NativeFrames.__module__ else "pure Python",
           "pydicom": pydicom.__version__, "pynetdicom": pynetdicom.__version__, "numpy": np.__version__,
           "DCMTK": dcmtk.strip("$ ") or "absent", "Orthanc": orthanc_version() or "absent"}
    try:
        import openjpeg
        out["pylibjpeg-openjpeg"] = openjpeg.__version__
    except ImportError:
        pass
    return out


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
    child = subprocess.Popen(["unshare", "--net", "--", sys.executable, "-m", "benchmarks.compare", *argv],
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
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", type=_csv(tuple(PEERS)), default=list(PEERS),
                   help="comma-separated servers (default: all four)")
    p.add_argument("--workloads", type=_csv(WORKLOADS), default=list(WORKLOADS),
                   help="comma-separated: stow, cstore, cget, frame (default: all)")
    p.add_argument("--clients", type=_csv(CLIENTS), default=list(CLIENTS),
                   help="C-GET receivers: getscu, pynetdicom, drain (default: all three)")
    p.add_argument("--levels", type=_csv(LEVELS), default=list(LEVELS), help="C-GET levels (default: STUDY,SERIES)")
    p.add_argument("--runs", type=int, default=5, help="repetitions of every measurement (default 5)")
    p.add_argument("--dicomaccel-workers", type=int, default=os.cpu_count() or 1,
                   help="`dicomaccel serve --workers` for ingest (default: the CPU count)")
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
    p.add_argument("--max-pdu", type=int, default=16384, help="receivers' Maximum Length (default 16384)")
    p.add_argument("--out", type=Path, default=Path("compare-report"),
                   help="directory for report.md, results.json and the PNG charts (default ./compare-report)")
    p.add_argument("--cache-dir", type=Path,
                   default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dicomaccel-compare",
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


def plan(args, corpora: list[Corpus], available: list[str], log_config: Path) -> tuple[list[Method], list[Method]]:
    """The ingest methods (fresh servers) and the retrieve methods (loaded servers)."""
    ingest, retrieve = [], []
    for corpus in corpora:
        stow_peers = [p for p in available if p in STOW_PEERS]
        if "stow" in args.workloads and stow_peers:
            for batch, clients in ingest_configs(len(corpus.files), args.stow_batch, args.stow_clients):
                cache: dict = {}

                def run(peer, corpus=corpus, batch=batch, clients=clients, cache=cache):
                    if "bodies" not in cache:  # built once, outside the timing, shared by peers and runs
                        cache["bodies"] = [(_multipart(corpus.files[i:i + batch], STOW_BOUNDARY), 0)
                                           for i in range(0, len(corpus.files), batch)]
                    path = STOW_PEERS[peer.name][1]
                    return stow_run(peer.http_port, path, cache["bodies"], clients)
                label = f"STOW-RS {batch}/request, {clients} client{'s' if clients > 1 else ''}"
                ingest.append(Method("ingest", corpus, label, stow_peers, run, fresh=True))
        cstore_peers = [p for p in available if p in CSTORE_PEERS]
        if "cstore" in args.workloads and cstore_peers and dcmtk_program("storescu"):
            n = len(storescu_groups(corpus))
            label = f"C-STORE storescu, {n} association{'s' if n > 1 else ''}"
            ingest.append(Method("ingest", corpus, label, cstore_peers,
                                 lambda peer, corpus=corpus: cstore_run(peer, corpus, log_config), fresh=True))
        if not corpus.retrievable:
            continue
        if "cget" in args.workloads:
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


def run_harness(args, argv: list[str]) -> int:
    install_signal_handlers()
    began = time.time()
    data: dict = {"command": shlex.join(["python", "-m", "benchmarks.compare", *argv]),
                  "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "machine": machine(), "versions": versions(), "netns": os.environ.get(NETNS_MARK) == "1",
                  "load_before": Path("/proc/loadavg").read_text().split()[:3], "skipped": {}, "rows": [],
                  "frame_probe": {}, "runs": args.runs, "max_pdu": args.max_pdu,
                  "dicomaccel_workers": args.dicomaccel_workers}
    IngestDicomaccel.workers = args.dicomaccel_workers
    available = []
    for name in args.peers:
        reason = PEERS[name].unavailable()
        if name in NEEDS_NETNS and not data["netns"]:
            reason = reason or ("binds every interface and cannot be limited to 127.0.0.1: needs root and "
                                "`unshare -n` to run in a loopback-only network namespace")
        if reason:
            data["skipped"][name] = reason
            print(f"skipping peer {name}: {reason}", file=sys.stderr, flush=True)
        else:
            available.append(name)
    if not available:
        print("no peer available", file=sys.stderr)
        return 1
    getscu = dcmtk_program("getscu")
    if "getscu" in args.clients and getscu is None:
        print("skipping receiver getscu: DCMTK getscu not installed (apt-get install -y dcmtk)", file=sys.stderr)
        args.clients = [c for c in args.clients if c != "getscu"]

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
    data["corpora"] = [c.describe() for c in corpora]
    for c in corpora:
        print(f"corpus {c.name}: {len(c.files)} instances, {c.nbytes / 1e6:.1f} MB", flush=True)
    print(f"corpora ready in {time.perf_counter() - t0:.1f} s (cache {args.cache_dir})", flush=True)

    work = Path(tempfile.mkdtemp(prefix="dicomaccel-compare-", dir=args.workdir))
    started: dict[str, Peer] = {}
    try:
        ct = next((c for c in corpora if c.name == "ct"), None)
        data["limits"] = limits(work, ct.files[0].stat().st_size if ct else 1 << 19)
        log_config = work / "dcmtk-log.cfg"
        log_config.write_text(STORESCU_LOG)
        ingest, retrieve = plan(args, corpora, available, log_config)
        for method in ingest:
            data["rows"] += measure(method, args.runs, started, work)

        retrievable = [c for c in corpora if c.retrievable]
        wants_frames = "frame" in args.workloads and any(c.frames for c in retrievable)
        if retrieve or wants_frames:
            not_loaded: dict[str, dict[str, str]] = {}  # corpus -> peer -> why
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
            for method in retrieve:
                method.peers = [p for p in method.peers if p in started]
                if method.peers:
                    data["rows"] += measure(method, args.runs, started, work, not_loaded.get(method.corpus.name))
            if wants_frames:
                source = next(c for c in retrievable if c.frames)
                for name, peer in started.items():
                    if name in not_loaded.get(source.name, {}):
                        continue
                    data["frame_probe"][name] = probe_frame(peer, source, args.max_pdu)
                    print(f"FRAME-level C-GET to {name}: {data['frame_probe'][name]['outcome']}", flush=True)
                supported = [n for n, r in data["frame_probe"].items() if r["supported"]]
                for corpus in (c for c in retrievable if c.frames and supported):
                    lists = frame_lists(corpus)
                    method = Method("frame", corpus, f"C-GET FRAME every {FRAME_STEP}th frame, pynetdicom",
                                    supported, lambda peer, corpus=corpus, lists=lists:
                                    pynetdicom_run(peer, corpus, "FRAME", args.max_pdu, lists))
                    data["rows"] += measure(method, args.runs, started, work, not_loaded.get(corpus.name))
    finally:
        for peer in started.values():
            peer.stop()
        shutil.rmtree(work, ignore_errors=True)

    data["seconds"] = round(time.time() - began, 1)
    data["load_after"] = Path("/proc/loadavg").read_text().split()[:3]
    written = report.write(data, args.out, charts=not args.no_charts)
    print(report.headline(data), flush=True)
    print(f"report: {', '.join(str(p) for p in written)}", flush=True)
    return 0 if all(r["runs"] for r in data["rows"]) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.runs < 1 or args.dicomaccel_workers < 1:
        parser().error("--runs and --dicomaccel-workers must be at least 1")
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


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        # run_harness's finally has stopped the servers by now.
        print("interrupted", file=sys.stderr)
        sys.exit(130)
