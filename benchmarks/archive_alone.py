"""The archive alone: dicomaccel's :class:`~dicomaccel.archive.Archive` storing instances
through its blocking API, in one process, for the limits table
(:func:`benchmarks.machine.archive_alone`).

What the archive's own work per instance costs once the HTTP server and the STOW-RS
application are taken away: the temp file and its write, CRC-32 and early writeback, the
writer thread's header scan, IOD check and frame index, the group commit (publication by
rename and link, the index transaction, ``syncfs``) and the thread hand-offs between them,
with the defaults of ``dicomaccel serve`` (SQLite index, ``fsync``, IOD validation ``warn``).
:mod:`benchmarks.front_end` is its counterpart: the event loop's work without the archive.
Each instance is one ``begin()``, ``write()`` of the whole file held in memory and ``commit()``;
``THREADS`` threads store at once, as that many clients would. Like the front end, it is a
ceiling, not a server: no peer is compared with it.

usage: python -m benchmarks.archive_alone DIRECTORY THREADS FILE...
(prints one JSON line: instances stored, wall seconds and CPU seconds of the process while
storing; the files are read before the clock starts)
"""

from __future__ import annotations

import json
import sys
import threading
import time

from dicomaccel import memory
from dicomaccel.archive import Archive

__all__ = ["store_all"]


def store_all(directory: str, blobs: list[bytes], threads: int) -> dict:
    """Store ``blobs`` (PS3.10 files) into a new archive in ``directory`` from ``threads``
    threads at once; every one must be stored, and stored once."""
    archive = Archive(directory)
    pending = iter(blobs)
    take = threading.Lock()
    failures: list[BaseException] = []

    def client() -> None:
        while True:
            with take:
                data = next(pending, None)
            if data is None:
                return
            try:
                incoming = archive.begin()
                incoming.write(data)
                if incoming.commit().already_stored:
                    raise RuntimeError("an instance was already stored: the corpus repeats a SOP Instance UID")
            except BaseException as exc:
                failures.append(exc)
                return

    workers = [threading.Thread(target=client) for _ in range(threads)]
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if failures:
            raise failures[0]
        stored = len(archive.find())
    finally:
        archive.close()
    if stored != len(blobs):
        raise RuntimeError(f"the archive holds {stored} of {len(blobs)} instances")
    return {"stored": stored, "seconds": wall, "cpu_s": cpu}


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    memory.hold_freed_heap()  # as dicomaccel serve does
    files = [open(path, "rb").read() for path in sys.argv[3:]]
    print(json.dumps(store_all(sys.argv[1], files, int(sys.argv[2]))), flush=True)
