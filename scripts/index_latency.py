"""put_batch and lookup per instance: the SQLite index against the PostgreSQL index.

    python scripts/index_latency.py [--rows 4000] [--lookups 4000]

Starts a throwaway PostgreSQL cluster with its durable defaults (``fsync=on``, commits flushed:
:mod:`dicomaccel.testing.postgres`) and an SQLite index in a temp directory, then, on each,
inserts ``--rows`` synthetic CT rows (:mod:`dicomaccel.testing.query_index`, 40 per study, each
with the frame index of a 512x512 CT) one per batch and 16 per batch, then looks up random
stored SOP Instance UIDs (``lookup``, the duplicate rule's read) and reads their records (``get``).
Prints mean and p99 in microseconds. SQLite's commit is not flushed here: in the archive the
batch's one ``syncfs`` does that, for the files and the WAL together; PostgreSQL's commit
includes its WAL flush (and the archive's ``syncfs`` of the files comes before it).
"""

from __future__ import annotations

import argparse
import dataclasses
import mmap
import os
import random
import statistics
import tempfile
import time

from dicomaccel.archive.index import InstanceRecord, SQLiteIndex
from dicomaccel.archive.ingest import build_frame_index, scan
from dicomaccel.archive.postgres_index import PostgresIndex
from dicomaccel.testing.files import ct_instance, generate_uid
from dicomaccel.testing.postgres import start_cluster
from dicomaccel.testing.query_index import fill


def _records(root: str, n: int) -> list[InstanceRecord]:
    """``n`` synthetic rows (through query_index.fill's builder), each with a real frame index."""
    data = ct_instance(generate_uid(), generate_uid(), 1, 512, 512)
    with mmap.mmap(-1, len(data)) as mm:
        mm[:] = data
        frame_index = build_frame_index(mm, scan(mm, len(data)))

    class Collect:
        def __init__(self):
            self.rows = []

        def put_batch(self, records, replace_existing):
            self.rows += records

    sink = Collect()
    fill(sink, root, n)
    return [dataclasses.replace(r, frame_index=frame_index) for r in sink.rows]


def _stats(name: str, samples: list[float], per: int = 1) -> None:
    us = sorted(s / per * 1e6 for s in samples)
    print(f"  {name:<28} mean {statistics.fmean(us):8.1f} us   p99 {us[int(len(us) * 0.99) - 1]:8.1f} us")


def _measure(index, records: list[InstanceRecord], lookups: int) -> None:
    half = len(records) // 2
    single, batched = [], []
    for r in records[:half]:
        t = time.perf_counter()
        index.put_batch([r], [False])
        single.append(time.perf_counter() - t)
    rest = records[half:]
    for i in range(0, len(rest) - 15, 16):
        t = time.perf_counter()
        index.put_batch(rest[i:i + 16], [False] * 16)
        batched.append(time.perf_counter() - t)
    _stats("put_batch, 1 per batch", single)
    _stats("put_batch, 16 per batch", batched, 16)
    rng = random.Random(5)
    uids = [records[rng.randrange(len(records))].sop_instance_uid for _ in range(lookups)]
    for name, call in (("lookup", index.lookup), ("get", index.get)):
        times = []
        for uid in uids:
            t = time.perf_counter()
            assert call(uid) is not None
            times.append(time.perf_counter() - t)
        _stats(name, times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--lookups", type=int, default=4000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        records = _records(root, args.rows)
        print(f"SQLite (WAL, synchronous=NORMAL), {len(records)} rows")
        sqlite = SQLiteIndex(os.path.join(root, "index.sqlite3"), root)
        _measure(sqlite, records, args.lookups)
        sqlite.close()
        cluster = start_cluster(durable=True)
        try:
            print(f"PostgreSQL (fsync=on, 127.0.0.1), {len(records)} rows")
            pg = PostgresIndex(cluster.create_database(), root)
            _measure(pg, records, args.lookups)
            pg.close()
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
