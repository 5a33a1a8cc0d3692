"""The archive alone: dicomaccel's :class:`~dicomaccel.archive.Archive` storing instances
through its blocking API, without HTTP, for the limits table
(:func:`benchmarks.machine.archive_alone`).

What the archive's own work per instance costs once the HTTP server and the STOW-RS
application are taken away: the temp file and its write, CRC-32 and early writeback, the
writer thread's header scan, IOD check and frame index, the group commit (publication by
rename and link, the index transaction, ``syncfs``) and the thread hand-offs between them,
with the defaults of ``dicomaccel serve`` (SQLite index, ``fsync``, IOD validation ``warn``).
:mod:`benchmarks.front_end` is its counterpart: the event loop's work without the archive.
The path differs from serve's in one way: each instance is one ``begin()``, one ``write()`` of
the whole file held in memory and ``commit()``, where serve's event loop feeds the received
bytes to the archive's writer threads and awaits ``commit_async()``. Like the front end, it is
a ceiling, not a server: no peer is compared with it.

One process stores its share of the corpus from ``THREADS`` threads at once, into an archive
the harness made (several such processes share it, as serve's workers do, so none recovers
it). It loads its files, prints ``ready``, waits for a line on its standard input, stores,
and prints one JSON line: instances stored, wall seconds and the process's CPU seconds while
storing.

usage: python -m benchmarks.archive_alone DIRECTORY THREADS FILE...
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from dicomaccel import memory
from dicomaccel.archive import Archive

__all__ = ["store_all"]


def store_all(archive: Archive, blobs: list[bytes], threads: int) -> dict:
    """Store ``blobs`` (PS3.10 files) into ``archive`` from ``threads`` threads at once; every
    one must be stored, and stored once (an answer "already stored" fails the run)."""
    pending = iter(blobs)
    take = threading.Lock()
    stored = []
    failures: list[BaseException] = []

    def client() -> None:
        while True:
            with take:
                data = next(pending, None)
            if data is None or failures:
                return
            incoming = None
            try:
                incoming = archive.begin()
                incoming.write(data)
                if incoming.commit().already_stored:
                    raise RuntimeError("an instance was already stored: the corpus repeats a SOP Instance UID")
                stored.append(1)
            except BaseException as exc:
                if incoming is not None:
                    incoming.abort()
                failures.append(exc)
                return

    workers = [threading.Thread(target=client) for _ in range(threads)]
    cpu, wall = time.process_time(), time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if failures:
        raise failures[0]
    return {"stored": len(stored), "seconds": wall, "cpu_s": cpu}


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    memory.hold_freed_heap()  # as dicomaccel serve does
    files = [Path(path).read_bytes() for path in sys.argv[3:]]
    archive = Archive(sys.argv[1], recover=False)
    try:
        print("ready", flush=True)
        sys.stdin.readline()
        result = store_all(archive, files, int(sys.argv[2]))
    finally:
        archive.close()
    print(json.dumps(result), flush=True)
