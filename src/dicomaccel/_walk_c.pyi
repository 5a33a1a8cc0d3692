"""Type stub of ``dicomaccel._walk_c``: exactly the public API of ``_walk_py``.

The twin is the specification (see its docstrings); tests/kernels/test_parity.py checks that
this stub, the twin and the compiled module export the same names with the same parameters.
"""

from mmap import mmap
from typing import Final, TypeAlias

__all__ = ["walk", "MAX_SEQUENCE_DEPTH"]

# collections.abc.Buffer is 3.12+; these are the contiguous buffers callers pass on 3.10+.
_Buffer: TypeAlias = bytes | bytearray | memoryview | mmap

MAX_SEQUENCE_DEPTH: Final = 64

def walk(
    buf: _Buffer,
    pos: int,
    end: int,
    explicit: bool,
    little: bool,
    wanted: frozenset[int],
    found: dict[int, tuple[int, int]],
) -> tuple[int, int, int, int]: ...
