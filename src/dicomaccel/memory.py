"""Give memory back to the operating system: freed heap after a failure that used a lot of
it (:func:`trim`), and file mappings once their bytes are sent or read (:func:`close_map`).

glibc keeps memory freed inside its arenas (every thread that allocates gets one) for reuse;
after an abusive input (a deflate bomb's 64 MiB header, say) the process would stay that much
larger. ``malloc_trim(0)`` returns the free pages. It walks the arenas, a few milliseconds on a
large heap, so it runs at most once per :data:`MIN_INTERVAL` and only after failures. A leaf:
imports nothing of ours.

The other way round, a server should not give back what it will need again at once:
:func:`hold_freed_heap` (``dicomaccel serve`` calls it) keeps up to :data:`TRIM_THRESHOLD`
bytes free at the top of each heap. glibc's default gives the top back once about half a MiB
of it is free (mallopt(3): M_TRIM_THRESHOLD, adjusted from M_MMAP_THRESHOLD). A server
receiving 0.5 MB instances frees and takes back MiBs of request buffers every few
milliseconds, and each page taken back is a page fault plus the zeroing of a new page.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import threading
import time

__all__ = ["trim", "close_map", "hold_freed_heap", "MIN_INTERVAL", "TRIM_THRESHOLD",
           "MMAP_THRESHOLD"]

MIN_INTERVAL = 1.0  # seconds between two trims
# Free bytes a heap's top keeps before glibc gives them back, and the size from which a block
# is mapped on its own (unmapped, so given back, when freed). Measured, STOW-RS CT 0.5 MB, 4
# clients, 1000 requests, one process: 77-81 -> 6 page faults per request, 1.46-1.51 -> 1.28-
# 1.32 ms of server CPU each, 665-672 -> 754-775 requests/s; peak RSS 73.5 -> 74 MiB.
TRIM_THRESHOLD = 8 << 20
MMAP_THRESHOLD = 2 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>

try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
    _malloc_trim = _libc.malloc_trim
    _malloc_trim.argtypes = [ctypes.c_size_t]
    _mallopt = _libc.mallopt
    _mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
except (OSError, AttributeError):  # not glibc: nothing to trim or tune
    _malloc_trim = _mallopt = None
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


def hold_freed_heap() -> bool:
    """Have glibc keep :data:`TRIM_THRESHOLD` free bytes at a heap's top and map blocks of
    :data:`MMAP_THRESHOLD` or more on their own, for the whole process (and the processes it
    forks); True if set. For a server process only: an embedding application keeps its own
    allocator settings. :func:`trim` still gives everything free back."""
    if _mallopt is None:
        return False
    # Setting either turns glibc's adjustment of both off (mallopt(3)), so set both.
    return bool(_mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(_mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def close_map(mapping: mmap.mmap) -> None:
    """Unmap ``mapping`` now, or, while a view of it is still held (a transport's slice, a
    traceback's frame, a kernel's memoryview), when the last view goes."""
    try:
        mapping.close()
    except BufferError:
        pass
