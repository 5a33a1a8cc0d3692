"""Give memory back to the operating system: freed heap after a failure that used a lot of
it (:func:`trim`), and file mappings once their bytes are sent or read (:func:`close_map`).

glibc keeps memory freed inside its arenas (every thread that allocates gets one) for reuse;
after an abusive input (a deflate bomb's 64 MiB header, say) the process would stay that much
larger. ``malloc_trim(0)`` returns the free pages. It walks the arenas, a few milliseconds on a
large heap, so it runs at most once per :data:`MIN_INTERVAL` and only after failures. A leaf:
imports nothing of ours.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import threading
import time

__all__ = ["trim", "close_map", "MIN_INTERVAL"]

MIN_INTERVAL = 1.0  # seconds between two trims

try:
    _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or None).malloc_trim
    _malloc_trim.argtypes = [ctypes.c_size_t]
except (OSError, AttributeError):  # not glibc: nothing to trim
    _malloc_trim = None
_lock = threading.Lock()
_last = 0.0


def trim() -> bool:
    """Trim the heap unless that was done less than :data:`MIN_INTERVAL` ago (any thread);
    True if it ran."""
    global _last
    if _malloc_trim is None:
        return False
    with _lock:
        now = time.monotonic()
        if now - _last < MIN_INTERVAL:
            return False
        _last = now
    _malloc_trim(0)
    return True


def close_map(mapping: mmap.mmap) -> None:
    """Unmap ``mapping`` now, or, while a view of it is still held (a transport's slice, a
    traceback's frame, a kernel's memoryview), when the last view goes."""
    try:
        mapping.close()
    except BufferError:
        pass
