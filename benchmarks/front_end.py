"""The STOW-RS front end alone: what ``dicomaccel serve`` answers HTTP with
(:func:`dicomaccel.server.http_front`, its default configuration) over an archive that keeps
nothing, in one process, for the limits table (:func:`benchmarks.machine.front_end`).

What the event loop's own work per request costs once the archive is taken away: the request
head, the body's reads and ASGI messages, the routes in front of STOW-RS (operations, WADO-RS,
QIDO-RS), the multipart scanner, the store slot, the Store Instances Response and metrics (the
access log is off, as in the benchmark's servers at ``--log-level warning``). Each part is
answered as stored (the response names one fixed instance); nothing is written, and neither
the archive's work on the event loop (free-space checks, hand-offs to its threads) nor its
threads' are done. Like ``storescp --ignore`` for C-STORE, it is a ceiling, not a server: no
peer is compared with it.

usage: python -m benchmarks.front_end DIRECTORY   (DIRECTORY unused; listens on 127.0.0.1,
an ephemeral port, and prints "port N" as the C floors do)
"""

from __future__ import annotations

import asyncio
import socket
import sys

import uvloop

from dicomaccel import memory
from dicomaccel.archive.commit import StoreOutcome
from dicomaccel.archive.index import InstanceRecord
from dicomaccel.config import ServeConfig
from dicomaccel.server import http_front

__all__ = ["NullArchive", "PATH"]

PATH = "/dicomweb/studies"  # where the clients post

# CT Image Storage (PS3.6 Annex A); the UIDs under the 2.25 root (PS3.5 B.2).
_STORED = StoreOutcome(InstanceRecord(
    patient_id="", patient_name="", study_uid="2.25.2", series_uid="2.25.3", sop_instance_uid="2.25.1",
    sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax_uid="1.2.840.10008.1.2.1",
    number_of_frames=1, path="", size=0, dataset_offset=0, pixel_offset=-1, pixel_value_offset=-1,
    pixel_length=-1, frame_index=None), warning=None, already_stored=False)


class _NullInstance:
    async def feed(self, data) -> None:
        pass

    def commit_async(self, *, expected_study_uid: str | None = None) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        future.set_result(_STORED)
        return future

    def abort(self) -> None:
        pass


class NullArchive:
    """What a STOW-RS request asks of an archive, answering every part as stored (the other
    services' routes ask for more, and are not requested here)."""

    def writable(self) -> bool:
        return True

    def begin(self) -> _NullInstance:
        return _NullInstance()


async def _serve() -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    server = http_front(NullArchive(), ServeConfig())
    await server.start(sock)
    print(f"port {sock.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    memory.hold_freed_heap()  # as dicomaccel serve does
    uvloop.run(_serve())
