"""The STOW-RS front end alone: dicomaccel's HTTP server and STOW-RS application over an
archive that keeps nothing, for the limits table (:func:`benchmarks.machine.front_end`).

What the event loop's own work per request costs and allows once the archive's writer and
committer threads are taken away: the request head, the body's reads and ASGI messages, the
multipart scanner, the store slot, the Store Instances Response, metrics and the access log.
Each part is answered as stored (the response names one fixed instance), nothing is written.
Like ``storescp --ignore`` for C-STORE, it is a ceiling, not a server: no peer is compared
with it.

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
from dicomaccel.http_server import HTTPServer
from dicomaccel.stow import create_app

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
    """What the STOW-RS application asks of an archive, answering every part as stored."""

    def writable(self) -> bool:
        return True

    def begin(self) -> _NullInstance:
        return _NullInstance()


async def _serve() -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    server = HTTPServer(create_app(NullArchive()), body_views=True)  # as dicomaccel serve does
    await server.start(sock)
    print(f"port {sock.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    memory.hold_freed_heap()  # as dicomaccel serve does
    uvloop.run(_serve())
