"""psycopg 3 against asyncpg, on the rows and the statement the archive's PostgreSQL index sends.

    python -m benchmarks.pg_drivers [--transactions N] [--runs R] [--batches 1,4,16] [--no-fsync]

A throwaway cluster (:mod:`dicomaccel.testing.postgres`, PostgreSQL's durable defaults unless
``--no-fsync``) gets the index's schema (:class:`~dicomaccel.archive.postgres_index.PostgresIndex`
creates it). Each transaction is what the group commit sends for a batch of new instances: one
statement (:func:`~dicomaccel.archive.postgres_index._at_once`: the instance rows inserted, their
study and series upserted), committed on its own, with the rows built as the archive builds them
(:func:`~dicomaccel.archive.index.row_of` of the records the archive makes from scanned CT files).
Batches of 1, 4 and 16 instances (one new study and series per batch), N transactions a run.

Drivers:

- ``psycopg``: a connection in autocommit, ``RawCursor.execute`` (what postgres_index.py does);
- ``asyncpg``: ``Connection.execute`` awaited N times inside one coroutine (the driver's best
  case: a caller that lives on the event loop);
- ``asyncpg-thread``: the same statement from a plain thread with its own event loop,
  ``run_until_complete`` per transaction: what the archive's committer, a thread, would do.

Per run and driver: client CPU per row (``time.process_time``: this process only; the server's
CPU is the same statement either way) and wall time per transaction. The drivers alternate
within each run (their order rotates), the tables are emptied before each, and the report gives
the median over runs with the lowest and highest.

asyncpg is not a dependency of dicomaccel: install it to run this (``pip install asyncpg``).
"""

from __future__ import annotations

import argparse
import asyncio
import mmap
import os
import shutil
import statistics
import sys
import tempfile
import time
import zlib

from dicomaccel.archive import _record
from dicomaccel.archive.index import row_of
from dicomaccel.archive.ingest import build_frame_index, scan
from dicomaccel.archive.postgres_index import PostgresIndex, _at_once, _entities, _without_nul
from dicomaccel.testing import files as dicomgen
from dicomaccel.testing.files import generate_uid
from dicomaccel.testing.postgres import start_cluster

DRIVERS = ("psycopg", "asyncpg", "asyncpg-thread")


def _instance_row(root: str, study: str, series: str, number: int) -> tuple:
    """The index row of one new CT instance, built as the archive builds it."""
    data = dicomgen.ct_instance(study, series, number, 16, 16)
    with mmap.mmap(-1, len(data)) as mm:
        mm[:] = data
        header = scan(mm, len(data))
        frames = build_frame_index(mm, header)
    path = os.path.join(root, "instances", study, series, f"{header.sop_instance_uid}.{number:016x}.dcm")
    record = _record(header, path, len(data), frames, zlib.crc32(data), None)
    return _without_nul(row_of(record, root))


def _transactions(root: str, batch: int, count: int) -> list[tuple[str, list]]:
    """``count`` transactions of ``batch`` new instances: (statement, parameters), as
    PostgresIndex._insert_at_once binds them."""
    out = []
    for _ in range(count):
        study, series = generate_uid(), generate_uid()
        rows = [_instance_row(root, study, series, n + 1) for n in range(batch)]
        studies, series_rows = _entities(rows, [])
        out.append((_at_once(len(rows), len(studies), len(series_rows)),
                    [v for group in (sorted(rows), studies, series_rows) for row in group for v in row]))
    return out


def _empty(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE instances, studies, series")
        conn.execute("CHECKPOINT")


def _run_psycopg(url: str, work) -> tuple[float, float]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = psycopg.RawCursor(conn)
        cpu, wall = time.process_time(), time.perf_counter()
        for sql, params in work:
            cur.execute(sql, params)
        return time.process_time() - cpu, time.perf_counter() - wall


async def _asyncpg_all(url: str, work) -> tuple[float, float]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        for sql, params in work:
            await conn.execute(sql, *params)
        return time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await conn.close()


def _run_asyncpg(url: str, work) -> tuple[float, float]:
    return asyncio.run(_asyncpg_all(url, work))


def _run_asyncpg_thread(url: str, work) -> tuple[float, float]:
    """One event loop owned by the calling thread, entered once per transaction."""
    import asyncpg

    loop = asyncio.new_event_loop()
    try:
        conn = loop.run_until_complete(asyncpg.connect(url))
        try:
            cpu, wall = time.process_time(), time.perf_counter()
            for sql, params in work:
                loop.run_until_complete(conn.execute(sql, *params))
            return time.process_time() - cpu, time.perf_counter() - wall
        finally:
            loop.run_until_complete(conn.close())
    finally:
        loop.close()


RUNNERS = {"psycopg": _run_psycopg, "asyncpg": _run_asyncpg, "asyncpg-thread": _run_asyncpg_thread}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pg_drivers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=1000, help="transactions per run and driver (1000)")
    parser.add_argument("--runs", type=int, default=5, help="alternated runs (5)")
    parser.add_argument("--batches", default="1,4,16", help="instances per transaction (1,4,16)")
    parser.add_argument("--no-fsync", action="store_true", help="cluster with fsync=off (commits not flushed)")
    args = parser.parse_args(argv)
    try:
        import asyncpg
        import psycopg
    except ImportError as exc:
        print(f"benchmarks.pg_drivers: {exc.name} is not installed; it measures both drivers, so install it "
              f"first (pip install {exc.name}); dicomaccel itself does not need asyncpg", file=sys.stderr)
        return 2
    batches = [int(b) for b in args.batches.split(",")]
    cluster = start_cluster(durable=not args.no_fsync)
    root = tempfile.mkdtemp(prefix="dicomaccel-pg-drivers.")
    try:
        url = cluster.create_database()
        PostgresIndex(url, root).close()  # the schema, migrated as a node does
        print(f"psycopg {psycopg.__version__} ({psycopg.pq.__impl__} libpq {psycopg.pq.version()}), "
              f"asyncpg {asyncpg.__version__}; PostgreSQL at {url} "
              f"({'fsync=off' if args.no_fsync else 'durable commits'}); "
              f"{args.transactions} transactions per run, {args.runs} runs", flush=True)
        results: dict[tuple[int, str], list[tuple[float, float]]] = {}
        for batch in batches:
            for run in range(args.runs):
                work = _transactions(root, batch, args.transactions)
                order = DRIVERS[run % len(DRIVERS):] + DRIVERS[:run % len(DRIVERS)]
                for driver in order:
                    _empty(url)
                    cpu, wall = RUNNERS[driver](url, work)
                    results.setdefault((batch, driver), []).append(
                        (cpu / (batch * len(work)) * 1e6, wall / len(work) * 1e3))
                    print(f"  batch {batch:2d} run {run + 1} {driver:15s} client CPU "
                          f"{results[batch, driver][-1][0]:7.1f} us/row, wall {results[batch, driver][-1][1]:6.3f} ms/tx",
                          flush=True)
        print()
        print("| rows per transaction | driver | client CPU per row, us: median (min-max) "
              "| wall per transaction, ms: median (min-max) |")
        print("|---|---|---|---|")
        for batch in batches:
            for driver in DRIVERS:
                cpu, wall = zip(*results[batch, driver])
                print(f"| {batch} | {driver} | {statistics.median(cpu):.1f} ({min(cpu):.1f}-{max(cpu):.1f}) "
                      f"| {statistics.median(wall):.3f} ({min(wall):.3f}-{max(wall):.3f}) |")
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
