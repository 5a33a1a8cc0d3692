"""One pynetdicom AE, three sets of handlers: what embedding dicomaccel in a pynetdicom server buys.

    python -m benchmarks.pynetdicom_embed --handlers dicomaccel|usual|floor --dir DIR --work DIR
                                          [--receive memory|chunked] [--fsync]
                                          [--port 0] [--ae-title EMBED]

The AE is the same for the three (every Get model and Storage SOP Class with both roles, from
:func:`dicomaccel.integrations.pynetdicom.add_presentation_contexts`; TCP_NODELAY on accepted
sockets as in :mod:`benchmarks.pynetdicom_scp`); only the EVT_C_GET and EVT_C_STORE handlers
differ:

- ``dicomaccel``: :class:`~dicomaccel.integrations.pynetdicom.ArchiveGetHandler` and
  :class:`~dicomaccel.integrations.pynetdicom.ArchiveStoreHandler` over an archive holding the
  files of DIR (stored at start-up);
- ``usual``: the handlers a pynetdicom user writes: C-GET of :mod:`benchmarks.pynetdicom_scp`
  (``yield dcmread(path)``; FRAME level: pydicom reads the source and builds the new
  instance), C-STORE ``event.dataset`` with ``event.file_meta`` written by ``ds.save_as``;
- ``floor``: pynetdicom's own cost: C-GET yields data sets built before the request (the files
  of DIR read at start-up; a FRAME-level instance built at its first request and kept), C-STORE
  answers Success and keeps nothing.

How pynetdicom receives a C-STORE data set is ``--receive``: ``memory`` (pynetdicom's default,
a BytesIO the handler reads, ``event.request.DataSet``) or ``chunked``
(``_config.STORE_RECV_CHUNKED_DATASET``: pynetdicom writes it to a temporary file, the handler
reads ``event.dataset_path``). The usual handler decodes either; the floor ignores it.

No fsyncs unless ``--fsync`` (``save_as`` does not fsync; the archive runs with
``fsync=False``, or ``fsync=True`` with ``--fsync``: the durable store it defaults to, a
separate row, not the like-for-like comparison). Each handler's own
time (for a C-GET: the time spent inside the handler's generator, so not pynetdicom's encoding
and sending of what it yields) is added up and written, with the count of events and of
instances stored, to ``WORK/handler-stats.json`` after every event. Binds 127.0.0.1 only.
Prints ``pynetdicom-embed: C-GET SCP on dicom://127.0.0.1:PORT`` then ``pynetdicom-embed: ready``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, _config, evt

from benchmarks.pynetdicom_scp import build_index, handle_get, matches, new_instance, nodelay, serve_until_stopped
from dicomaccel.archive import Archive
from dicomaccel.integrations.pynetdicom import ArchiveGetHandler, ArchiveStoreHandler, add_presentation_contexts

HANDLERS = ("dicomaccel", "usual", "floor")
STATS = "handler-stats.json"


class Stats:
    """Handler seconds, events and instances stored, written to a file after each event."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.values = {"handler_s": 0.0, "events": 0, "stored": 0}
        self.write()

    def add(self, seconds: float, stored: int = 0) -> None:
        with self.lock:
            self.values["handler_s"] += seconds
            self.values["events"] += 1
            self.values["stored"] += stored
            self.write()

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.values))
        os.replace(tmp, self.path)


def timed_get(handler, stats: Stats):
    """An EVT_C_GET handler that runs ``handler`` and adds the time spent inside its generator."""
    def run(event):
        spent = 0.0
        inner = handler(event)
        try:
            while True:
                t = time.perf_counter()
                try:
                    item = next(inner)
                except StopIteration:
                    spent += time.perf_counter() - t
                    return
                spent += time.perf_counter() - t
                yield item
        finally:
            stats.add(spent)
    return run


def timed_store(handler, stats: Stats):
    """An EVT_C_STORE handler that runs ``handler`` and adds its time (and a success count)."""
    def run(event):
        t = time.perf_counter()
        status = handler(event)
        code = status if isinstance(status, int) else status.Status
        stats.add(time.perf_counter() - t, stored=int(code == 0x0000 or code >> 12 == 0xB))
        return status
    return run


def usual_store(directory: Path):
    """C-STORE the way pynetdicom's documentation shows it: decode, add the File Meta, save."""
    def handle(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        ds.save_as(directory / ds.SOPInstanceUID, enforce_file_format=True)
        return 0x0000
    return handle


def floor_get(index, datasets: dict[Path, object]):
    """C-GET yielding data sets built before the request (FRAME level: at its first request)."""
    frames: dict[tuple, object] = {}

    def handle(event):
        ident = event.identifier
        if str(ident.get("QueryRetrieveLevel", "")).strip().upper() == "FRAME":
            found = index["IMAGE"].get(str(ident.get("SOPInstanceUID", "")))
            value = ident.get("SimpleFrameList")
            yield 1
            if not found or value is None:
                yield 0xC000, None
                return
            wanted = [int(value)] if isinstance(value, int) else [int(v) for v in value]
            key = (str(found[0]), tuple(wanted))
            if key not in frames:
                frames[key] = new_instance(found[0], wanted)
            yield 0xFF00, frames[key]
            return
        paths = matches(index, ident) or []
        yield len(paths)
        for path in paths:
            yield 0xFF00, datasets[path]
    return handle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--handlers", choices=HANDLERS, required=True)
    parser.add_argument("--dir", type=Path, required=True, help="DICOM files to serve (C-GET)")
    parser.add_argument("--work", type=Path, required=True, help="archive, received files, handler-stats.json")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: ephemeral)")
    parser.add_argument("--ae-title", default="EMBED")
    parser.add_argument("--receive", choices=("memory", "chunked"), default="memory",
                        help="C-STORE data sets in memory (default) or in pynetdicom's temporary file")
    parser.add_argument("--fsync", action="store_true", help="the archive fsyncs (dicomaccel handlers)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    stats = Stats(args.work / STATS)
    files = sorted(p for p in args.dir.rglob("*") if p.is_file())
    archive = None
    _config.STORE_RECV_CHUNKED_DATASET = args.receive == "chunked"
    if args.handlers == "dicomaccel":
        archive = Archive(args.work / "archive", fsync=args.fsync)
        for path in files:
            archive.store_bytes(path.read_bytes())
        get, store = ArchiveGetHandler(archive), ArchiveStoreHandler(archive)
    else:
        index = build_index(args.dir)
        if args.handlers == "usual":
            received = args.work / "received"
            received.mkdir(exist_ok=True)
            get, store = (lambda event: handle_get(event, index)), usual_store(received)
        else:
            datasets = {p: dcmread(p) for p in files}
            get, store = floor_get(index, datasets), (lambda event: 0x0000)

    ae = AE(ae_title=args.ae_title)
    ae.maximum_associations = 16
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 600
    add_presentation_contexts(ae)
    handlers = [(evt.EVT_C_GET, timed_get(get, stats)), (evt.EVT_C_STORE, timed_store(store, stats)),
                (evt.EVT_CONN_OPEN, nodelay)]
    server = ae.start_server(("127.0.0.1", args.port), block=False, evt_handlers=handlers)
    print(f"pynetdicom-embed: C-GET SCP on dicom://127.0.0.1:{server.socket.getsockname()[1]}", flush=True)
    print(f"pynetdicom-embed: {args.handlers} handlers, C-STORE received {'to a file' if args.receive == 'chunked' else 'in memory'}"
          f"{', fsync' if args.fsync else ''}, {len(files)} instances", flush=True)
    print("pynetdicom-embed: ready", flush=True)
    serve_until_stopped(server, *([archive] if archive is not None else []))


if __name__ == "__main__":
    main()
