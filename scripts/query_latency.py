"""QIDO-RS search latency on an index of N synthetic instances (default 100,000).

    python scripts/query_latency.py [--instances 100000] [--queries 400] [--data DIR] [--index URL]

Fills an index directly (no files: rows through ``put_batch`` of the SQLite index, or of the
PostgreSQL one with ``--index``, 40 instances per
study, 2 series per study, 5,000 patients; the builder is :mod:`dicomaccel.testing.query_index`,
shared with the benchmark runner), then times searches through the QIDO-RS ASGI app in-process
(engine, SQL, DICOM JSON encoding; no sockets): studies by Patient Name (prefix, exact-ish,
leading wild card), Study Date range, Accession Number, Modalities in Study and none; the series
of a study; all series by Modality; the instances of a series; instances by Patient ID. Random
values; prints p50/p99 in ms. The issue's target is p50 <= 10 ms, p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time

from dicomaccel.archive.index import SQLiteIndex
from dicomaccel.testing.query_index import FAMILY, GIVEN, MODALITIES, fill


class _FakeArchive:
    def __init__(self, index):
        self.index = index


async def _get(app, path: str, query: str) -> tuple[int, bytes]:
    out = {}
    body = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    scope = {"type": "http", "method": "GET", "path": path, "query_string": query.encode(),
             "headers": [(b"host", b"localhost")], "scheme": "http"}
    await app(scope, receive, send)
    return out["status"], b"".join(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--data", default=None)
    parser.add_argument("--index", metavar="URL", default=None,
                        help="a PostgreSQL database (postgresql://USER@HOST:PORT/DB) instead of SQLite in --data")
    args = parser.parse_args()
    from dicomaccel.qido import create_qido_app

    root = args.data or tempfile.mkdtemp(prefix="qido-latency-")
    os.makedirs(root, exist_ok=True)
    if args.index:
        from dicomaccel.archive.postgres_index import PostgresIndex

        index = PostgresIndex(args.index, root, fsync=False)
    else:
        index = SQLiteIndex(os.path.join(root, "index.sqlite3"), root, fsync=False)
    t0 = time.perf_counter()
    count = index.read("SELECT count(*) FROM instances")[0][0]
    if count < args.instances:
        fill(index, root, args.instances)
        count = index.read("SELECT count(*) FROM instances")[0][0]
    print(f"index: {count} instances in {root} (filled in {time.perf_counter() - t0:.1f} s)")
    app = create_qido_app(_FakeArchive(index))
    rng = random.Random(5)

    async def run():
        results = {}
        studies = count // 40  # as fill() makes them

        def study() -> str:
            return f"1.2.826.0.1.99.{rng.randrange(studies)}"

        for label, make in (
            ("PatientName=<family prefix>*",
             lambda: ("studies", f"PatientName={rng.choice(FAMILY)[:3]}*")),
            ("PatientName=<family><n>^*",
             lambda: ("studies", f"PatientName={rng.choice(FAMILY)}{rng.randrange(97)}^*")),
            ("PatientName=*<given>* (leading wildcard)",
             lambda: ("studies", f"PatientName=*{rng.choice(GIVEN).lower()}*")),
            ("StudyDate=<one year>",
             lambda: ("studies", "StudyDate=20{0}0101-20{0}1231".format(rng.randrange(10, 26)))),
            ("AccessionNumber=<one>",
             lambda: ("studies", f"AccessionNumber=ACC{rng.randrange(studies):07d}")),
            ("ModalitiesInStudy=<one>", lambda: ("studies", f"ModalitiesInStudy={rng.choice(MODALITIES)}")),
            ("no filter, limit=100", lambda: ("studies", "limit=100")),
            ("series of one study", lambda: (f"studies/{study()}/series", "")),
            ("series, Modality=<one>", lambda: ("series", f"Modality={rng.choice(MODALITIES)}")),
            ("instances of one series",
             lambda: ("studies/{0}/series/{0}.{1}/instances".format(study(), rng.randrange(2)), "")),
            ("instances, PatientID=<one>",
             lambda: ("instances", f"PatientID=PID{rng.randrange(5000):06d}")),
        ):
            times, sizes = [], []
            for _ in range(args.queries if "leading" not in label else args.queries // 4):
                path, q = make()
                if "limit" not in q:
                    q += "&limit=100"
                t = time.perf_counter()
                status, body = await _get(app, f"/dicomweb/{path}", q)
                times.append((time.perf_counter() - t) * 1000)
                assert status in (200, 204), (status, body[:200])
                sizes.append(body.count(b'"0020000D"'))
            times.sort()
            results[label] = (statistics.median(times), times[int(len(times) * 0.99) - 1],
                              statistics.mean(sizes))
        return results

    for label, (p50, p99, n) in asyncio.run(run()).items():
        print(f"{label:45s} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  (mean {n:.1f} matches)")
    index.close()


if __name__ == "__main__":
    main()
