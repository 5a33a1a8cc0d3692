"""dicomaccel.memory: what the server process asks of glibc's allocator, checked in fresh
Python processes (the settings are process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dicomaccel import memory

pytestmark = pytest.mark.skipif(memory._mallopt is None, reason="glibc's mallopt only")

# Four 1.5 MiB blocks (under MMAP_THRESHOLD: from the heap once it is held) written, freed,
# and the resident size read around it.
_PROBE = """
import json, sys
from dicomaccel import memory
if sys.argv[1] == "hold":
    assert memory.hold_freed_heap()
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) << 10
blocks = [b"\\x01" * (3 << 19) for _ in range(4)]
full = rss()
del blocks
freed = rss()
if sys.argv[1] == "hold":
    memory._last = 0.0
    memory.trim()
print(json.dumps({"given_back": full - freed, "trimmed": full - rss()}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_held_heap_keeps_freed_blocks_and_trim_still_gives_them_back():
    assert memory.MMAP_THRESHOLD > 3 << 19 and memory.TRIM_THRESHOLD > 4 * (3 << 19)
    default = _probe("default")
    held = _probe("hold")
    # glibc's default: the 6 MiB go back to the kernel as soon as they are freed (unmapped).
    assert default["given_back"] > 5 << 20, default
    # Held: they stay for the next request's buffers ...
    assert held["given_back"] < 1 << 20, held
    # ... and trim() (after a failure that used much memory) still returns them.
    assert held["trimmed"] > 5 << 20, held
