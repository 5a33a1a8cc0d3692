"""Type stub of ``dicomaccel._multipart_c``: exactly the public API of ``_multipart_py``.

The twin is the specification (see its docstrings); tests/kernels/test_parity.py checks that
this stub, the twin and the compiled module export the same names with the same parameters.
"""

from array import array
from mmap import mmap
from typing import Any, Final, Literal, TypeAlias, final

__all__ = ["PART_BEGIN", "PART_DATA", "PART_END", "CLOSE", "MultipartScanner", "parse_content_type",
           "body_buffer"]

# collections.abc.Buffer is 3.12+; these are the contiguous buffers callers pass on 3.10+.
_Buffer: TypeAlias = bytes | bytearray | memoryview | mmap | array[Any]
_Headers: TypeAlias = list[tuple[str, str]]
# PART_DATA payloads are memoryview slices of the fed chunk, or small bytes for data held back
# across a chunk edge.
_Event: TypeAlias = (
    tuple[Literal[1], _Headers]
    | tuple[Literal[2], memoryview | bytes]
    | tuple[Literal[3], None]
    | tuple[Literal[4], None]
)

PART_BEGIN: Final = 1
PART_DATA: Final = 2
PART_END: Final = 3
CLOSE: Final = 4

# Not subclassable in the compiled module (the twin allows it; do not rely on that).
@final
class MultipartScanner:
    def __init__(
        self,
        boundary: bytes | bytearray | memoryview | str,
        *,
        max_header_size: int = 16384,
        max_parts: int = 10000,
    ) -> None: ...
    @property
    def offset(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    @property
    def part_count(self) -> int: ...
    # Errors: dicomaccel.errors.ParseError, or its subclass LimitExceeded for max_parts and
    # max_header_size, with ``events: list[_Event]``, what the call produced before the error.
    def feed(self, chunk: _Buffer) -> list[_Event]: ...
    def finish(self) -> None: ...

def parse_content_type(value: str | bytes | bytearray) -> tuple[str, dict[str, str]]: ...
def body_buffer(size: int) -> bytearray: ...
