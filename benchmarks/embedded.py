"""The ``embed`` workload's servers and clients: one pynetdicom AE (:mod:`benchmarks.pynetdicom_embed`)
with dicomaccel's handlers, with the handlers a pynetdicom user writes, and with handlers that
only hand over data sets built beforehand (pynetdicom's own floor).

The runner (:func:`benchmarks.run.embed_methods`) measures, the three side by side in one run:

- FRAME level (PS3.4 Annex Y): ``--embed-requests`` C-GETs of 1 frame (the middle one) of the
  multi-frame instance with the most frames (250 with ``--multiframe 4``), one association,
  a pynetdicom SCU that does not decode what it receives, after one uncounted request (the
  floor builds its instance then);
- a Study Root C-GET of the CT study (``--ct``, 200 by default), the same SCU;
- C-STORE of the CT study by DCMTK ``storescu`` over one association, into a fresh server.
  The like-for-like row is ``pynetdicom+dicomaccel``: the data set received in memory as the
  usual handler's is, and neither fsyncs. Three C-STORE-only rows show what else costs:
  ``pynetdicom+dicomaccel-chunked`` (pynetdicom writes each data set to a temporary file
  first, ``STORE_RECV_CHUNKED_DATASET``: flat RSS for any size), ``pynetdicom+dicomaccel-fsync``
  (in memory, the archive's durable default ``fsync=True``) and ``pynetdicom-floor-chunked``
  (pynetdicom's own cost of that temporary file). They are not started for the C-GET methods
  (same C-GET handlers as the row they vary), so the report lists them as skipped there.

Each run also records the handlers' own time (``handler_s``: inside the C-GET handler's
generator, or the C-STORE handler's call), read from the server's ``handler-stats.json``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from benchmarks.clients import pynetdicom_run
from benchmarks.corpus import Corpus
from benchmarks.peers import REPO, Peer, PeerUnavailable, _Lines, spawn

__all__ = ["EMBED_PEERS", "EmbedPeer", "frame_requests_run", "with_handler_time"]


class EmbedPeer(Peer):
    """:mod:`benchmarks.pynetdicom_embed` with the handlers of ``handlers``."""

    handlers = ""
    ae_title = "EMBED"
    options: tuple[str, ...] = ()
    store_only = False  # a C-STORE variant: not started for the C-GET methods
    get_rows = ""  # ... whose C-GET rows are this peer's

    def start(self, files: list[Path]) -> None:
        if files and self.store_only:
            raise PeerUnavailable(f"a C-STORE variant: its C-GET handler is {self.get_rows}'s")
        source = self.workdir / "files"
        source.mkdir(exist_ok=True)
        for i, path in enumerate(files):
            dest = source / f"{i:06d}-{path.name}"
            try:
                os.link(path, dest)
            except OSError:
                shutil.copyfile(path, dest)
        cmd = [sys.executable, "-m", "benchmarks.pynetdicom_embed", "--handlers", self.handlers,
               "--dir", str(source), "--work", str(self.workdir / "state"), "--ae-title", self.ae_title,
               *self.options]
        self.proc = spawn(cmd, log=self.log, env=dict(os.environ, PYTHONUNBUFFERED="1"), cwd=REPO)
        for line in _Lines(self.proc, self.log).until("pynetdicom-embed: ready", 600):
            if m := re.search(r"C-GET SCP on dicom://[\d.]+:(\d+)", line):
                self.port = int(m.group(1))
        if self.port is None:
            self.stop()
            raise PeerUnavailable(f"pynetdicom-embed ({self.handlers}) did not start: {self.log_tail(600)}")

    def stats(self) -> dict:
        """Handler seconds, events and instances stored so far."""
        return json.loads((self.workdir / "state" / "handler-stats.json").read_text())

    def instance_count(self) -> int:
        return self.stats()["stored"]


class EmbedDicomaccel(EmbedPeer):
    name, handlers = "pynetdicom+dicomaccel", "dicomaccel"


class EmbedUsual(EmbedPeer):
    name, handlers = "pynetdicom-usual", "usual"


class EmbedFloor(EmbedPeer):
    name, handlers = "pynetdicom-floor", "floor"


class EmbedDicomaccelChunked(EmbedPeer):
    name, handlers, options, store_only = "pynetdicom+dicomaccel-chunked", "dicomaccel", ("--receive", "chunked"), True
    get_rows = "pynetdicom+dicomaccel"


class EmbedDicomaccelFsync(EmbedPeer):
    name, handlers, options, store_only = "pynetdicom+dicomaccel-fsync", "dicomaccel", ("--fsync",), True
    get_rows = "pynetdicom+dicomaccel"


class EmbedFloorChunked(EmbedPeer):
    name, handlers, options, store_only = "pynetdicom-floor-chunked", "floor", ("--receive", "chunked"), True
    get_rows = "pynetdicom-floor"


EMBED_PEERS: dict[str, type[EmbedPeer]] = {p.name: p for p in (
    EmbedDicomaccel, EmbedUsual, EmbedFloor, EmbedDicomaccelChunked, EmbedDicomaccelFsync, EmbedFloorChunked)}


def with_handler_time(peer: EmbedPeer, fn, *args) -> dict:
    """``fn(peer, *args)``'s result with ``handler_s``: the handlers' own time meanwhile."""
    before = peer.stats()["handler_s"]
    result = fn(peer, *args)
    result["handler_s"] = peer.stats()["handler_s"] - before
    return result


def frame_requests_run(peer: EmbedPeer, source: Corpus, frame: int, count: int, max_pdu: int) -> dict:
    """``count`` FRAME-level C-GETs of ``frame`` of ``source``'s one instance on one association,
    after one on an association of its own that is not counted (the floor builds its instance
    then; every server gets the same warm-up). With ``handler_s`` of the counted ones."""
    frame_request(peer, source, frame, 1, max_pdu)
    return with_handler_time(peer, frame_request, source, frame, count, max_pdu)


def frame_request(peer: Peer, source: Corpus, frame: int, count: int, max_pdu: int) -> dict:
    repeated = replace(source, sop_uids=source.sop_uids[:1] * count, files=source.files[:1] * count,
                       frames=source.frames[:1] * count)
    result = pynetdicom_run(peer, repeated, "FRAME", max_pdu, [[frame]] * count)
    return dict(result, requests=count)
