"""The one entry point of the benchmarks.

    python -m benchmarks run [options]      every workload against every peer (benchmarks.run)
    python -m benchmarks kernels [options]  the kernels against their baselines (benchmarks.kernels)
    python -m benchmarks report RESULTS.json OUTDIR   rebuild a report from its raw figures
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command == "run":
        from benchmarks import run
        return run.main(rest)
    if command == "kernels":
        from benchmarks.kernels.__main__ import main as kernels
        return kernels(rest)
    if command == "report" and len(rest) == 2:
        from benchmarks import report
        for path in report.write(json.loads(Path(rest[0]).read_text()), Path(rest[1])):
            print(path)
        return 0
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        # run_harness's finally has stopped the servers by now.
        print("interrupted", file=sys.stderr)
        sys.exit(130)
