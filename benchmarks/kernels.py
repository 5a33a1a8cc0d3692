"""Kernel ratio table: each kernel against its baseline, measured in this run.

    python -m benchmarks.kernels
"""

from __future__ import annotations

import importlib
import platform


def main() -> None:
    rows = []
    for name in ("multipart", "frames", "encaps"):
        module = importlib.import_module(f"benchmarks.ratios_{name}")
        rows.extend(module.measure())
    print(f"# kernels on {platform.machine()} / Python {platform.python_version()}")
    print("| benchmark | ours | baseline | baseline time | ratio | target |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {_t(r['ours_s'])} | {r['baseline_name']} | {_t(r['baseline_s'])} | "
              f"{r['ratio']:.1f}x | {r['target']} |")


def _t(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.2f} µs"


if __name__ == "__main__":
    main()
