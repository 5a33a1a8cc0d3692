"""Type stub of ``dicomaccel._encaps_c``: exactly the public API of ``_encaps_py``.

The twin is the specification (see its docstrings); tests/kernels/test_parity.py checks that
this stub, the twin and the compiled module export the same names with the same parameters.
"""

from array import array
from collections.abc import Iterable, Sequence
from mmap import mmap
from typing import Any, TypeAlias

__all__ = ["parse_items", "parse_extended_offset_table", "EncapsulatedFrames", "encapsulate"]

# collections.abc.Buffer is 3.12+; these are the contiguous buffers callers pass on 3.10+.
_Buffer: TypeAlias = bytes | bytearray | memoryview | mmap | array[Any]
# Extended Offset Table values: the raw OV bytes (little-endian uint64) or decoded integers;
# the twin decodes only bytes, bytearray and memoryview as raw values.
_U64Table: TypeAlias = bytes | bytearray | memoryview | Iterable[int]

def parse_items(
    buffer: _Buffer, offset: int = 0, end: int = -1
) -> tuple[array[int], array[int], array[int], int]: ...
def parse_extended_offset_table(
    offsets: _Buffer, lengths: _Buffer
) -> tuple[array[int], array[int]]: ...

class EncapsulatedFrames:
    def __init__(
        self,
        buffer: _Buffer,
        number_of_frames: int,
        *,
        offset: int = 0,
        end: int = -1,
        extended_offsets: _U64Table | None = None,
        extended_lengths: _U64Table | None = None,
    ) -> None: ...
    # Read-only in the compiled module (plain attributes in the twin).
    @property
    def number_of_frames(self) -> int: ...
    @property
    def basic_offsets(self) -> array[int]: ...
    @property
    def fragment_offsets(self) -> array[int]: ...
    @property
    def fragment_lengths(self) -> array[int]: ...
    @property
    def end_offset(self) -> int: ...
    @property
    def frame_fragments(self) -> array[int]: ...
    @property
    def mapping(self) -> str: ...
    def frame(self, index: int) -> memoryview | bytes: ...
    def fragment_ranges(self, index: int) -> list[tuple[int, int]]: ...

def encapsulate(
    frames: Iterable[Sequence[_Buffer]], *, extended: bool = False
) -> bytes | tuple[bytes, bytes, bytes]: ...
