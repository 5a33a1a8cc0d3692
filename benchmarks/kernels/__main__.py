"""Run the kernel benchmarks, then print the ratio table.

    python -m benchmarks.kernels [--json PATH] [--quick] [pytest args]
    python -m benchmarks.kernels --from-json PATH

Runs pytest on this package with ``--benchmark-json`` (PATH, or a temporary file removed
afterwards), then prints :func:`benchmarks.kernels.table.table` of that JSON. Other arguments
go to pytest unchanged (``-k frames``, ``--benchmark-max-time=2``, ...). ``--quick`` cuts the
workloads and rounds down (environment ``DICOMACCEL_KERNEL_BENCH_QUICK=1``) for a run of
seconds that checks every benchmark and the table, not the speed. ``--from-json`` only prints
the table of a saved JSON. Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from .table import table

HERE = Path(__file__).resolve().parent
QUICK_ARGS = ["--benchmark-max-time=0.01", "--benchmark-min-rounds=2", "--benchmark-warmup=off"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="keep the pytest-benchmark JSON here")
    parser.add_argument("--from-json", type=Path, help="print the table of this JSON; run nothing")
    parser.add_argument("--quick", action="store_true", help="small workloads, few rounds: a smoke run")
    args, pytest_args = parser.parse_known_args(argv)

    if args.from_json:
        print(table(json.loads(args.from_json.read_text())))
        return 0

    import pytest  # only when running: --from-json needs no pytest

    if args.quick:
        # Read by workloads.py when pytest imports it, below.
        os.environ["DICOMACCEL_KERNEL_BENCH_QUICK"] = "1"
        pytest_args = QUICK_ARGS + pytest_args
    if args.json:
        path, temporary = args.json, False
    else:
        fd, name = tempfile.mkstemp(prefix="kernels-", suffix=".json")
        os.close(fd)
        path, temporary = Path(name), True
        path.unlink()  # so a run that writes nothing leaves nothing to read
    try:
        code = pytest.main(["-p", "no:cacheprovider", f"--benchmark-json={path}", *pytest_args, str(HERE)])
        sys.stdout.flush()
        # With --benchmark-disable pytest-benchmark leaves the file empty.
        data = json.loads(path.read_text()) if path.exists() and path.stat().st_size else {}
        if data.get("benchmarks"):
            print()
            print(table(data))
        else:
            print("\nNo timings in this run (benchmarks disabled, deselected or failed): no table.")
        return int(code)
    finally:
        if temporary:
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
