"""Where the time of a pynetdicom AE with dicomaccel's handlers goes (issue 16), variant by variant.

    python -m benchmarks.embed_modes store [--runs 7] [--ct 200] [--corpus ct|multiframe] [--variants a,b]
                                           [--max-pdu 16382]
    python -m benchmarks.embed_modes get-send [--runs 7] [--ct 200]
    python -m benchmarks.embed_modes handler [--runs 7] [--ct 200] [--compare OLD_STORE_PY]

``store``: one pynetdicom AE in this process receives the CT study from DCMTK ``storescu``
(one association, TCP_NODELAY on the accepted socket), once per variant, the variants
alternated ``--runs`` times; per instance: end to end (storescu's wall time, start-up included)
the handler's own time and the CPU time of this process (the AE; storescu's is not in it),
medians with the spread (``--corpus multiframe``: the 4 native
multi-frame instances of 89-131 MB instead of the CT study). Then the process's peak RSS
before and after: with one variant (``--variants``) and ``--runs 1``, what receiving costs in
memory. ``--max-pdu``: the AE's Maximum Length Received (PS3.8 D.1; pynetdicom's default
16382, 0 for no limit), which bounds the P-DATA PDUs storescu sends. ``--compare OLD.py``:
the ``dicomaccel`` variants also with the handler of another version of
``integrations/pynetdicom/store.py`` (see ``handler``). Every other run goes through the
variants in reverse order. Variants:

- ``usual``: the data set in memory, ``event.dataset`` + ``ds.save_as`` (no fsync);
- ``dicomaccel``, ``dicomaccel-chunked``: :class:`~dicomaccel.integrations.pynetdicom.ArchiveStoreHandler`,
  data set in memory (``event.request.DataSet``) or in pynetdicom's temporary file
  (``_config.STORE_RECV_CHUNKED_DATASET``), archive ``fsync=False``;
- ``dicomaccel-fsync``, ``dicomaccel-chunked-fsync``: the same with ``fsync=True`` (the
  archive's default: files, directory and index durable before the response);
- ``floor``, ``floor-chunked``: the handler answers Success and keeps nothing (pynetdicom's own
  cost of receiving, in memory or through its temporary file);
- ``durable-floor``: the least a handler answering once the data set is durable does: the
  data set (in memory) written to a new file, ``fdatasync``, ``fsync`` of its directory.

``get-send``: the sending side of a C-GET without the network: per instance of the study, the
handler's data set and pynetdicom's encoding of it (``pynetdicom.dsutils.encode``, what
``send_c_store`` does before fragmenting into P-DATA): ``dicomaccel`` (ArchiveGetHandler's raw
elements over an mmap of the stored file), ``dicomaccel-read`` (the same over the file read
into memory) and ``usual`` (``dcmread(path)``). Binds 127.0.0.1 only.

``handler``: :class:`~dicomaccel.integrations.pynetdicom.ArchiveStoreHandler` alone, without
the network or pynetdicom's threads: per instance, called with an event holding what
pynetdicom hands it (in memory, a BytesIO; ``-chunked``, its temporary file in the system
temporary directory, made as pynetdicom 3.0 makes it: preamble, its File Meta, a write and a
flush per 16 KB PDV; closed and deleted after the handler); the four ``dicomaccel`` variants
of ``store``, alternated. Per instance: the handler's wall time, its thread's CPU time and the
process's (the archive's writer and committer threads included). ``--compare OLD.py``: the
handler of another version of ``integrations/pynetdicom/store.py`` too, each variant run by
both back to back (before/after in one process)::

    git show d361b67~1:src/dicomaccel/integrations/pynetdicom/store.py > /tmp/store_before.py
    python -m benchmarks.embed_modes handler --runs 10 --compare /tmp/store_before.py
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import resource
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from tempfile import NamedTemporaryFile
from types import SimpleNamespace

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE, _config, evt
from pynetdicom.dsutils import create_file_meta, encode

from benchmarks.corpus import ct_corpus, multiframe_corpus
from dicomaccel.archive import Archive
from dicomaccel.integrations.pynetdicom import ArchiveGetHandler, ArchiveStoreHandler, add_presentation_contexts
from dicomaccel.integrations.pynetdicom import get as get_module
from dicomaccel.retrieve.cget import match_records
from dicomaccel.retrieve.identifier import parse_identifier
from dicomaccel.testing.files import dataset_part
from dicomaccel.testing.server import dcmtk_program

STORE_VARIANTS = ("usual", "dicomaccel", "dicomaccel-chunked", "dicomaccel-fsync", "dicomaccel-chunked-fsync",
                  "floor", "floor-chunked", "durable-floor")
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
# Data set bytes per P-DATA PDV of pynetdicom's default maximum PDU (16382, PS3.8 D.1) less the
# PDV item header and its control byte: what pynetdicom writes to its temporary file at a time.
PDV_BYTES = 16382 - 6


def _nodelay(event) -> None:
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def store_once(variant: str, files: list[Path], work: Path, storescu: str,
               max_pdu: int | None = None, handler_class=ArchiveStoreHandler) -> tuple[float, float, float]:
    """(seconds end to end, seconds in the handler, CPU seconds of this process) for ``files``
    sent by storescu to a new AE (storescu's CPU is not this process's)."""
    _config.STORE_RECV_CHUNKED_DATASET = "chunked" in variant
    archive = None
    if variant.startswith("dicomaccel"):
        archive = Archive(work / "archive", fsync=variant.endswith("-fsync"))
        inner = handler_class(archive)
    elif variant == "usual":
        received = work / "received"
        received.mkdir()

        def inner(event):
            ds = event.dataset
            ds.file_meta = event.file_meta
            ds.save_as(received / ds.SOPInstanceUID, enforce_file_format=True)
            return 0x0000
    elif variant == "durable-floor":
        received = work / "received"
        received.mkdir()
        directory = os.open(received, os.O_RDONLY | os.O_DIRECTORY)

        def inner(event):
            # The least a handler that answers once the data set is durable can do: write it
            # to a new file, flush the file and its directory entry.
            fd = os.open(received / str(event.request.AffectedSOPInstanceUID), os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                with event.request.DataSet.getbuffer() as view:
                    os.write(fd, view)
                os.fdatasync(fd)
            finally:
                os.close(fd)
            os.fsync(directory)
            return 0x0000
    else:
        def inner(event):
            return 0x0000
    spent = [0.0]

    def handler(event):
        t = time.perf_counter()
        try:
            return inner(event)
        finally:
            spent[0] += time.perf_counter() - t

    ae = AE(ae_title="EMBED")
    if max_pdu is not None:
        ae.maximum_pdu_size = max_pdu
    add_presentation_contexts(ae)
    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, handler), (evt.EVT_CONN_OPEN, _nodelay)])
    try:
        port = server.socket.getsockname()[1]
        t, cpu = time.perf_counter(), time.process_time()
        done = subprocess.run([storescu, "-R", "-aet", "STORESCU", "-aec", "EMBED", "127.0.0.1", str(port),
                               *map(str, files)], capture_output=True, text=True, timeout=600)
        seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    finally:
        server.shutdown()
        if archive is not None:
            archive.close()
        if variant == "durable-floor":
            os.close(directory)
        _config.STORE_RECV_CHUNKED_DATASET = False
    if done.returncode != 0:
        raise RuntimeError(f"storescu: {done.stderr[-500:]}")
    return seconds, spent[0], cpu


def run_store(files: list[Path], runs: int, variants: list[str], max_pdu: int | None = None,
              compare: Path | None = None) -> None:
    storescu = dcmtk_program("storescu")
    if storescu is None:
        raise SystemExit("DCMTK storescu is needed")
    handlers = _handlers(compare)
    root = Path(tempfile.mkdtemp(prefix="embed-modes-"))
    runners = [(label + v, v, h) for v in variants for label, h in handlers.items()
               if not label or v.startswith("dicomaccel")]
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _, _ in runners}
    try:
        (root / "warm").mkdir()
        store_once("floor-chunked", files[:1], root / "warm", storescu)  # imports, first association (RSS flat)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for run in range(runs):
            for name, variant, handler in runners[::1 if run % 2 == 0 else -1]:
                work = root / "work"
                work.mkdir()
                results[name].append(store_once(variant, files, work, storescu, max_pdu, handler))
                shutil.rmtree(work)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mb = sum(f.stat().st_size for f in files) / len(files) / 1e6
    pdu = "" if max_pdu is None else f", AE maximum PDU {max_pdu or 'unlimited'}"
    print(f"C-STORE of {len(files)} instances ({mb:.1f} MB each on average) by storescu{pdu}, {runs} alternated "
          "runs; ms per instance, median [min-max]")
    print("| variant | end to end | handler's own | CPU of the AE's process |\n|---|---|---|---|")
    for variant, rows in results.items():
        print(f"| {variant} | " + " | ".join(_cell([r[i] for r in rows], len(files)) for i in range(3)) + " |")
    print(f"peak RSS of this process: {rss_before / 1024:.0f} MiB before the runs, {rss_after / 1024:.0f} MiB after")


def run_get_send(files: list[Path], runs: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="embed-modes-"))
    try:
        with Archive(root / "archive", fsync=False) as archive:
            for path in files:
                archive.store_bytes(path.read_bytes())
            identifier = Dataset()
            identifier.QueryRetrieveLevel = "STUDY"
            identifier.StudyInstanceUID = dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
            records, _ = match_records(archive, parse_identifier(STUDY_ROOT_GET, identifier))
            syntax = str(dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID)
            handler = ArchiveGetHandler(archive)

            class Contexts:  # every instance's stored syntax accepted, as in the embed workload
                def storage_contexts(self, sop_class_uid):
                    return [type("Context", (), {"transfer_syntax": syntax})()]

            contexts, mapped = Contexts(), get_module.map_file

            def read(path):
                with open(path, "rb", buffering=0) as f:
                    return f.read()

            def send(reader):
                get_module.map_file = reader
                try:
                    for record in records:
                        encode(handler._dataset(record, contexts, False), False, True)
                finally:
                    get_module.map_file = mapped

            def usual():
                for path in files:
                    encode(dcmread(path), False, True)

            variants = {"dicomaccel": lambda: send(mapped), "dicomaccel-read": lambda: send(read), "usual": usual}
            times: dict[str, list[float]] = {v: [] for v in variants}
            for fn in variants.values():
                fn()  # warm-up
            for _ in range(runs):
                for name, fn in variants.items():
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"C-GET send side of {len(files)} instances (handler's data set + pynetdicom's encoding), "
          f"{runs} alternated runs; ms per instance, median [min-max]")
    print("| variant | handler + encode |\n|---|---|")
    for name, values in times.items():
        print(f"| {name} | {_cell(values, len(files))} |")


def _handlers(compare: Path | None) -> dict:
    """ArchiveStoreHandler, labelled "", and with ``compare`` that of another version of its
    module (e.g. an earlier commit's), labelled with its file name."""
    handlers = {"": ArchiveStoreHandler}
    if compare is not None:
        spec = importlib.util.spec_from_file_location("dicomaccel.integrations.pynetdicom._compared", compare)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        handlers[f"{compare.name}: "] = module.ArchiveStoreHandler
    return handlers


def run_handler(files: list[Path], runs: int, compare: Path | None = None) -> None:
    handlers = _handlers(compare)
    instances = []
    for path in files:
        raw = path.read_bytes()
        meta = dcmread(path, stop_before_pixels=True).file_meta
        instances.append((meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID,
                          meta.TransferSyntaxUID, dataset_part(raw)))
    variants = [v for v in STORE_VARIANTS if v.startswith("dicomaccel")]
    results: dict[str, list[tuple[float, float, float]]] = {h + v: [] for v in variants for h in handlers}
    root = Path(tempfile.mkdtemp(prefix="embed-modes-"))
    try:
        for run in range(runs + 1):  # the first round warms up
            for variant in variants:
                # The handlers compared run back to back, in turns first.
                for label, handler in list(handlers.items())[::1 if run % 2 else -1]:
                    seconds = _handler_once(handler, variant, instances, root / f"{variant}-{run}")
                    if run:
                        results[label + variant].append(seconds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"ArchiveStoreHandler alone, {len(files)} instances, {runs} alternated runs; ms per instance, "
          "median [min-max]")
    print("| variant | handler's wall time | its thread's CPU | the process's CPU |\n|---|---|---|---|")
    for variant, rows in results.items():
        print(f"| {variant} | " + " | ".join(_cell([r[i] for r in rows], len(files)) for i in range(3)) + " |")


def _handler_once(handler_class, variant: str, instances: list, directory: Path) -> tuple[float, float, float]:
    chunked = "chunked" in variant
    wall = thread = process = 0.0
    with Archive(directory, fsync=variant.endswith("-fsync")) as archive:
        handler = handler_class(archive)
        for sop_class, sop_instance, syntax, data in instances:
            request = SimpleNamespace(AffectedSOPClassUID=sop_class, AffectedSOPInstanceUID=sop_instance)
            event = SimpleNamespace(request=request, context=SimpleNamespace(transfer_syntax=syntax))
            if chunked:
                received = NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")
                received.write(b"\x00" * 128 + b"DICM")
                write_file_meta_info(received, create_file_meta(
                    sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=syntax))
                for pos in range(0, len(data), PDV_BYTES):
                    received.write(data[pos:pos + PDV_BYTES])
                    received.file.flush()
                event.dataset_path = Path(received.name)
            else:
                request.DataSet = io.BytesIO(data)
            t, c, p = time.perf_counter(), time.thread_time(), time.process_time()
            status = handler(event)
            wall += time.perf_counter() - t
            thread += time.thread_time() - c
            process += time.process_time() - p
            if chunked:
                received.close()
                os.unlink(received.name)
            if status != 0x0000:
                raise RuntimeError(f"{variant}: status {status}")
    shutil.rmtree(directory)
    return wall, thread, process


def _cell(seconds: list[float], n: int) -> str:
    ms = [1e3 * s / n for s in seconds]
    return f"{statistics.median(ms):.2f} [{min(ms):.2f}-{max(ms):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("store", "get-send", "handler"))
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--ct", type=int, default=200, help="instances of the CT study (default 200)")
    parser.add_argument("--max-pdu", type=int, default=None,
                        help="store: the AE's maximum PDU size (default pynetdicom's, 16382; 0: no limit)")
    parser.add_argument("--corpus", choices=("ct", "multiframe"), default="ct", help="store: what storescu sends")
    parser.add_argument("--variants", default=",".join(STORE_VARIANTS), help="store: comma-separated variants")
    parser.add_argument("--compare", type=Path, default=None,
                        help="store, handler: alternate with the ArchiveStoreHandler of this copy of "
                             "integrations/pynetdicom/store.py (git show REV:src/dicomaccel/integrations/pynetdicom/store.py)")
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dicomaccel-bench")
    args = parser.parse_args()
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    corpus = multiframe_corpus(args.cache_dir, 4) if args.corpus == "multiframe" else ct_corpus(args.cache_dir, args.ct)
    files = list(corpus.files)
    if args.what == "store":
        run_store(files, args.runs, args.variants.split(","), args.max_pdu, args.compare)
    elif args.what == "handler":
        run_handler(files, args.runs, args.compare)
    else:
        run_get_send(files, args.runs)


if __name__ == "__main__":
    main()
