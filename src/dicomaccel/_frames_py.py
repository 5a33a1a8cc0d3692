"""Native (uncompressed) Pixel Data frames: the pure-Python specification of ``_frames_c``.

In the native format all frames of Pixel Data (7FE0,0010) follow each other without gaps or
per-frame padding (PS3.5 §8.1.1, §8.2). Frame ``k`` therefore starts at bit
``k * frame_bits`` of the value. For Bits Allocated of 8 or more that is always a byte
boundary; for Bits Allocated = 1 the pixels are packed eight to a byte, least significant bit
first, and a frame starts mid-byte unless Rows x Columns x Samples per Pixel is a multiple of 8.

Both implementations expose the same names, results, exception types and messages.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable

from .errors import ParseError

__all__ = ["frame_bits", "check_frames_fit", "NativeFrames"]


def frame_bits(
    rows: int,
    columns: int,
    samples_per_pixel: int,
    bits_allocated: int,
    photometric_interpretation: str = "",
) -> int:
    """Return the number of bits in one native frame.

    Parameters
    ----------
    rows, columns : int
        Rows (0028,0010) and Columns (0028,0011); at least 1.
    samples_per_pixel : int
        Samples per Pixel (0028,0002): 1, 3, or 4. Four samples belong only to the retired
        ARGB and CMYK interpretations (PS3.3 C.7.6.3.1.2); they are accepted so that legacy
        instances can still be served frame by frame, and their size follows the same rule.
    bits_allocated : int
        Bits Allocated (0028,0100): 1, or a multiple of 8 up to 64 (PS3.5 §8.1.1).
    photometric_interpretation : str, optional
        Photometric Interpretation (0028,0004). Leading and trailing spaces are ignored
        (CS padding, PS3.5 §6.2). Only ``YBR_FULL_422`` changes the size.

    Returns
    -------
    int
        ``rows * columns * samples_per_pixel * bits_allocated``. For ``YBR_FULL_422`` the
        two chroma samples are shared by each pair of pixels (PS3.3 C.7.6.3.1.2), so a native
        frame holds two samples per pixel: ``rows * columns * 2 * bits_allocated``. Planar
        Configuration reorders samples without changing the size.

    Raises
    ------
    TypeError
        If a numeric argument is not an integer or the photometric interpretation is not
        a ``str``.
    ValueError
        If a value is outside the ranges above, or ``YBR_FULL_422`` comes with a Samples per
        Pixel other than 3.
    """
    rows = operator.index(rows)
    columns = operator.index(columns)
    samples_per_pixel = operator.index(samples_per_pixel)
    bits_allocated = operator.index(bits_allocated)
    if rows < 1:
        raise ValueError(f"Rows must be >= 1, got {rows}")
    if columns < 1:
        raise ValueError(f"Columns must be >= 1, got {columns}")
    if samples_per_pixel not in (1, 3, 4):
        raise ValueError(f"Samples per Pixel must be 1, 3 or 4, got {samples_per_pixel}")
    if bits_allocated != 1 and (bits_allocated % 8 or not 8 <= bits_allocated <= 64):
        raise ValueError(
            f"Bits Allocated must be 1 or a multiple of 8 up to 64, got {bits_allocated}"
        )
    if not isinstance(photometric_interpretation, str):
        raise TypeError(
            "photometric_interpretation must be str, not "
            f"{type(photometric_interpretation).__name__}"
        )
    if photometric_interpretation.strip(" ") == "YBR_FULL_422":
        if samples_per_pixel != 3:
            raise ValueError(
                f"YBR_FULL_422 needs Samples per Pixel 3, got {samples_per_pixel}"
            )
        return rows * columns * 2 * bits_allocated
    return rows * columns * samples_per_pixel * bits_allocated


def _layout(
    buffer,
    rows,
    columns,
    samples_per_pixel,
    bits_allocated,
    number_of_frames,
    photometric_interpretation,
    offset,
    length,
) -> tuple[memoryview, int, int, int, int]:
    """Check the arguments of :class:`NativeFrames` (both implementations call this).

    Returns ``(view, frame_bits, number_of_frames, offset, length)``: a read-only 1-D byte
    view of `buffer`, and the value's position with ``length`` resolved. Raises as
    :class:`NativeFrames` documents.
    """
    view = memoryview(buffer)
    if not view.c_contiguous:
        raise TypeError("buffer must be C-contiguous")
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    view = view.toreadonly()
    bits = frame_bits(rows, columns, samples_per_pixel, bits_allocated, photometric_interpretation)
    number_of_frames = operator.index(number_of_frames)
    offset = operator.index(offset)
    length = operator.index(length)
    if number_of_frames < 1:
        raise ValueError(f"Number of Frames must be >= 1, got {number_of_frames}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if length < -1:
        raise ValueError(f"length must be >= 0, or -1 for the rest of the buffer, got {length}")
    size = len(view)
    # Python ints: offset and length are untrusted and may exceed Py_ssize_t.
    if offset > size:
        raise ParseError(
            f"Pixel Data offset {offset} is past the end of the {size}-byte buffer", offset
        )
    if length == -1:
        length = size - offset
    elif length > size - offset:
        raise ParseError(
            f"Pixel Data value of {length} bytes runs past the end of the {size}-byte "
            f"buffer ({size - offset} bytes available)",
            offset,
        )
    check_frames_fit(bits, number_of_frames, length, offset)
    return view, bits, number_of_frames, offset, length


def check_frames_fit(bits: int, number_of_frames: int, length: int, offset: int) -> None:
    """Raise :class:`~dicomaccel.errors.ParseError` (at ``offset``) unless a native Pixel
    Data value of ``length`` bytes holds ``number_of_frames`` frames of ``bits`` bits each.

    PS3.5 §8.1.1: frames are concatenated bit by bit, so only the last byte is partial.
    """
    needed = (bits * number_of_frames + 7) // 8
    if needed > length:
        raise ParseError(
            f"native Pixel Data too short: {number_of_frames} frame(s) of {bits} bits "
            f"need {needed} bytes, the value has {length}",
            offset,
        )


class NativeFrames:
    """The frames of one native Pixel Data value, located inside a larger buffer.

    Parameters
    ----------
    buffer : bytes-like
        Any C-contiguous buffer (``bytes``, ``bytearray``, ``mmap.mmap``, ``memoryview``,
        NumPy arrays). It is viewed, never copied, and stays exported (an ``mmap`` cannot be
        closed) while this object or a frame view taken from it is alive.
    rows, columns, samples_per_pixel, bits_allocated, photometric_interpretation
        Image Pixel module attributes, validated as in :func:`frame_bits`.
    number_of_frames : int, optional
        Number of Frames (0028,0008); at least 1.
    offset : int, optional
        Byte offset of the Pixel Data *value* (not its element header) in `buffer`.
    length : int, optional
        Length of the value in bytes; -1 means "to the end of `buffer`". A value longer than
        the frames need (the trailing pad byte of PS3.5 §7.1.1, or trailing junk) is accepted.

    Raises
    ------
    TypeError
        If `buffer` is not a C-contiguous buffer or an argument has the wrong type.
    ValueError
        For invalid geometry (see :func:`frame_bits`), ``number_of_frames < 1``,
        ``offset < 0`` or ``length < -1``.
    ParseError
        If the value does not fit in `buffer` or is shorter than the frames need; the
        message gives actual and expected byte counts and ``.offset`` is `offset`.

    Attributes
    ----------
    frame_bits : int
        Bits in one frame.
    frame_length : int
        Bytes per frame when frames are byte-aligned, otherwise the size of one extracted,
        re-packed frame, ``ceil(frame_bits / 8)``.
    byte_aligned : bool
        Whether every frame starts on a byte boundary (``frame_bits % 8 == 0``).
    number_of_frames, offset, length : int
        As given, with ``length`` resolved when -1 was passed.
    """

    __slots__ = (
        "_view",
        "_frame_bits",
        "_frame_length",
        "_byte_aligned",
        "_number_of_frames",
        "_offset",
        "_length",
    )

    def __init__(
        self,
        buffer,
        *,
        rows: int,
        columns: int,
        samples_per_pixel: int = 1,
        bits_allocated: int,
        number_of_frames: int = 1,
        photometric_interpretation: str = "",
        offset: int = 0,
        length: int = -1,
    ) -> None:
        # The compiled module must refuse re-initialisation (its GIL-free copies rely on fixed
        # geometry); the twin refuses it too so that both behave alike.
        if hasattr(self, "_view"):
            raise TypeError("NativeFrames is already initialised")
        view, bits, number_of_frames, offset, length = _layout(
            buffer, rows, columns, samples_per_pixel, bits_allocated, number_of_frames,
            photometric_interpretation, offset, length,
        )
        self._view = view
        self._frame_bits = bits
        self._frame_length = (bits + 7) // 8
        self._byte_aligned = bits % 8 == 0
        self._number_of_frames = number_of_frames
        self._offset = offset
        self._length = length

    @property
    def frame_bits(self) -> int:
        """Bits in one frame."""
        return self._frame_bits

    @property
    def frame_length(self) -> int:
        """Bytes in one frame, or in one re-packed frame when frames are not byte-aligned."""
        return self._frame_length

    @property
    def byte_aligned(self) -> bool:
        """Whether every frame starts on a byte boundary."""
        return self._byte_aligned

    @property
    def number_of_frames(self) -> int:
        """Number of frames."""
        return self._number_of_frames

    @property
    def offset(self) -> int:
        """Offset of the Pixel Data value in the buffer."""
        return self._offset

    @property
    def length(self) -> int:
        """Length of the Pixel Data value in bytes."""
        return self._length

    def _index(self, index) -> int:
        i = operator.index(index)
        if not 0 <= i < self._number_of_frames:
            raise IndexError(
                f"frame index {i} out of range for {self._number_of_frames} frame(s)"
            )
        return i

    def frame_range(self, index: int) -> tuple[int, int]:
        """Return the absolute ``(start, end)`` byte offsets of frame `index` in the buffer.

        Parameters
        ----------
        index : int
            0-based frame number; negative values are not counted from the end.

        Returns
        -------
        tuple of int
            For byte-aligned frames, exactly the frame's bytes. Otherwise every byte the
            frame's bits touch, including the bytes it shares with its neighbours.

        Raises
        ------
        IndexError
            If `index` is outside ``0 .. number_of_frames - 1``.
        """
        i = self._index(index)
        if self._byte_aligned:
            start = self._offset + i * self._frame_length
            return start, start + self._frame_length
        first = i * self._frame_bits
        return self._offset + (first >> 3), self._offset + ((first + self._frame_bits + 7) >> 3)

    def frame(self, index: int) -> memoryview | bytes:
        """Return frame `index`.

        Parameters
        ----------
        index : int
            0-based frame number.

        Returns
        -------
        memoryview or bytes
            A read-only memoryview into the buffer (no copy) when frames are byte-aligned.
            Otherwise new ``bytes`` holding the frame's bits moved to start at bit 0 of
            byte 0, least significant bit first (PS3.5 §8.1.1), unused high bits of the last
            byte zero.

        Raises
        ------
        IndexError
            If `index` is outside ``0 .. number_of_frames - 1``.
        """
        i = self._index(index)
        if self._byte_aligned:
            start = self._offset + i * self._frame_length
            return self._view[start : start + self._frame_length]
        return self._frame_int(i).to_bytes(self._frame_length, "little")

    def _frame_int(self, i: int) -> int:
        # Bit j of the value is bit (j % 8) of byte j // 8 (PS3.5 §8.1.1), which is exactly
        # the bit numbering of a little-endian integer.
        first = i * self._frame_bits
        start = self._offset + (first >> 3)
        end = self._offset + ((first + self._frame_bits + 7) >> 3)
        value = int.from_bytes(self._view[start:end], "little") >> (first & 7)
        return value & ((1 << self._frame_bits) - 1)

    def gather(self, indices: Iterable[int]) -> bytearray:
        """Concatenate the listed frames into a new native Pixel Data value.

        Parameters
        ----------
        indices : iterable of int
            0-based frame numbers, in output order; repeats are allowed. All are checked
            before anything is copied.

        Returns
        -------
        bytearray
            Output frame ``k`` starts at bit ``k * frame_bits`` (bytewise for byte-aligned
            frames, bitwise for unaligned 1-bit frames), followed by one zero byte when
            needed to make the length even (PS3.5 §7.1.1). Unused bits are zero.

        Raises
        ------
        IndexError
            If any index is outside ``0 .. number_of_frames - 1``.
        """
        idx = [self._index(index) for index in indices]
        bits = self._frame_bits
        size = (len(idx) * bits + 7) // 8
        out = bytearray(size + (size & 1))
        if self._byte_aligned:
            flen = self._frame_length
            for k, i in enumerate(idx):
                start = self._offset + i * flen
                out[k * flen : (k + 1) * flen] = self._view[start : start + flen]
            return out
        # Eight consecutive frames span exactly `bits` bytes, so every group of eight output
        # frames starts on a byte boundary and can be assembled as one integer.
        for g in range(0, len(idx), 8):
            group = idx[g : g + 8]
            acc = 0
            for j, i in enumerate(group):
                acc |= self._frame_int(i) << (j * bits)
            start = (g // 8) * bits
            chunk = acc.to_bytes((len(group) * bits + 7) // 8, "little")
            out[start : start + len(chunk)] = chunk
        return out
