"""Type stub of ``dicomaccel._frames_c``: exactly the public API of ``_frames_py``.

The twin is the specification (see its docstrings); tests/kernels/test_parity.py checks that
this stub, the twin and the compiled module export the same names with the same parameters.
"""

from array import array
from collections.abc import Iterable
from mmap import mmap
from typing import Any, TypeAlias, final

__all__ = ["frame_bits", "check_frames_fit", "NativeFrames"]

# collections.abc.Buffer is 3.12+; these are the contiguous buffers callers pass on 3.10+.
_Buffer: TypeAlias = bytes | bytearray | memoryview | mmap | array[Any]

def frame_bits(
    rows: int,
    columns: int,
    samples_per_pixel: int,
    bits_allocated: int,
    photometric_interpretation: str = "",
) -> int: ...

def check_frames_fit(bits: int, number_of_frames: int, length: int, offset: int) -> None: ...

# Not subclassable in the compiled module (the twin allows it; do not rely on that).
@final
class NativeFrames:
    def __init__(
        self,
        buffer: _Buffer,
        *,
        rows: int,
        columns: int,
        samples_per_pixel: int = 1,
        bits_allocated: int,
        number_of_frames: int = 1,
        photometric_interpretation: str = "",
        offset: int = 0,
        length: int = -1,
    ) -> None: ...
    @property
    def frame_bits(self) -> int: ...
    @property
    def frame_length(self) -> int: ...
    @property
    def byte_aligned(self) -> bool: ...
    @property
    def number_of_frames(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def length(self) -> int: ...
    def frame_range(self, index: int) -> tuple[int, int]: ...
    def frame(self, index: int) -> memoryview | bytes: ...
    def gather(self, indices: Iterable[int]) -> bytearray: ...
