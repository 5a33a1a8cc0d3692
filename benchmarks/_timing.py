"""What every kernel benchmark shares: best-of-N timing and the list of implementations."""

from __future__ import annotations

import gc
import importlib
import time
from collections.abc import Callable
from types import ModuleType


def best(fn: Callable[[], object], *, repeat: int, number: int = 1) -> float:
    """Best-of-``repeat`` mean seconds per call over ``number`` calls, after one warm-up call
    (page faults on mappings, imports, caches)."""
    fn()
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return min(times)


def implementations(kernel: str) -> list[ModuleType]:
    """The compiled module (if built) and the pure-Python twin of ``kernel``."""
    mods = []
    for name in (f"dicomaccel._{kernel}_c", f"dicomaccel._{kernel}_py"):
        try:
            mods.append(importlib.import_module(name))
        except ImportError:
            pass
    return mods
