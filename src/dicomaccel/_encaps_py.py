"""Encapsulated Pixel Data, pure-Python twin: the specification of ``_encaps_c``.

An encapsulated Pixel Data (7FE0,0010) value (PS3.5 A.4) is a sequence of items: a Basic
Offset Table item, zero or more fragment items and a Sequence Delimitation Item. This module
walks that sequence into offset tables without copying fragment data, maps frames to
fragments (Extended Offset Table, Basic Offset Table, one fragment per frame, one frame,
end-of-image markers, in that order) and builds new encapsulated values.

Every byte offset this module reports or accepts is absolute, counted from the start of the
buffer. The compiled module gives the same results and raises the same exceptions with the
same messages.
"""

from __future__ import annotations

import operator
import struct
import sys
from array import array
from collections.abc import Iterable, Sequence

from .errors import ParseError

__all__ = ["parse_items", "parse_extended_offset_table", "EncapsulatedFrames", "encapsulate"]

# Tags as one little-endian uint32 (group in the low half): (FFFE,E000) and (FFFE,E0DD).
ITEM_TAG = 0xE000FFFE
SEQ_DELIM_TAG = 0xE0DDFFFE
UNDEFINED_LENGTH = 0xFFFFFFFF
# Largest even uint32: item lengths are even (PS3.5 A.4) and 0xFFFFFFFF means undefined.
MAX_ITEM_LENGTH = 0xFFFFFFFE
MAX_BOT_OFFSET = 0xFFFFFFFF
ITEM_HEADER = struct.Struct("<II")

_ITEM_HEADER_BYTES = b"\xfe\xff\x00\xe0"
_SEQ_DELIM_ITEM = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_BIG_ENDIAN = sys.byteorder == "big"

MSG_UNDEFINED = "undefined item length (0xFFFFFFFF); encapsulated items must have a defined length"
MSG_NO_SEQ_DELIM = "no Sequence Delimitation Item (FFFE,E0DD) before the end of the data"


def _format_tag(tag: int) -> str:
    return f"({tag & 0xFFFF:04X},{tag >> 16:04X})"


def _byte_view(buffer: object) -> memoryview:
    """A flat unsigned-byte view of ``buffer`` (any C-contiguous buffer object)."""
    view = memoryview(buffer)  # type: ignore[arg-type]
    if not view.c_contiguous:
        raise TypeError("buffer must be C-contiguous")
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view


def _bounds(size: int, offset: object, end: object) -> tuple[int, int]:
    start = operator.index(offset)  # type: ignore[arg-type]
    stop = operator.index(end)  # type: ignore[arg-type]
    if stop == -1:
        stop = size
    elif stop < 0 or stop > size:
        raise ValueError(f"end {stop} outside the buffer (0..{size})")
    if start < 0 or start > stop:
        raise ValueError(f"offset {start} outside 0..{stop}")
    return start, stop


def _u64_le(raw: object, what: str) -> array:
    view = _byte_view(raw)
    if view.nbytes % 8:
        raise ParseError(f"{what} length {view.nbytes} is not a multiple of 8", 0)
    values = array("Q")
    values.frombytes(view)
    if _BIG_ENDIAN:
        values.byteswap()
    return values


def _walk(view: memoryview, pos: int, end: int) -> tuple[array, array, array, int]:
    # Item 1 is always the Basic Offset Table, possibly empty (PS3.5 A.4, Table A.4-1).
    avail = end - pos
    if avail < 8:
        raise ParseError(f"truncated item header: expected 8 bytes, found {avail}", pos)
    tag, length = ITEM_HEADER.unpack_from(view, pos)
    if tag != ITEM_TAG:
        raise ParseError(
            f"expected Basic Offset Table item tag (FFFE,E000), found {_format_tag(tag)}", pos
        )
    if length == UNDEFINED_LENGTH:
        raise ParseError(MSG_UNDEFINED, pos)
    if length > avail - 8:
        raise ParseError(f"item length {length} exceeds the {avail - 8} bytes remaining", pos)
    if length % 4:
        raise ParseError(f"Basic Offset Table length {length} is not a multiple of 4", pos)
    entries = array("I")
    entries.frombytes(view[pos + 8 : pos + 8 + length])
    if _BIG_ENDIAN:
        entries.byteswap()
    # BOT entries are uint32 (PS3.5 A.4); widen them so all tables share one type.
    basic = array("Q", entries)
    pos += 8 + length

    offsets = array("q")
    lengths = array("q")
    while True:
        avail = end - pos
        if avail == 0:
            raise ParseError(MSG_NO_SEQ_DELIM, pos)
        if avail < 8:
            raise ParseError(f"truncated item header: expected 8 bytes, found {avail}", pos)
        tag, length = ITEM_HEADER.unpack_from(view, pos)
        if tag == SEQ_DELIM_TAG:
            if length:
                raise ParseError(f"Sequence Delimitation Item has length {length}, expected 0", pos)
            return basic, offsets, lengths, pos + 8
        if tag != ITEM_TAG:
            raise ParseError(
                "expected item tag (FFFE,E000) or Sequence Delimitation Item (FFFE,E0DD), "
                f"found {_format_tag(tag)}",
                pos,
            )
        if length == UNDEFINED_LENGTH:
            raise ParseError(MSG_UNDEFINED, pos)
        if length > avail - 8:
            raise ParseError(f"item length {length} exceeds the {avail - 8} bytes remaining", pos)
        if length & 1:
            # PS3.5 A.4: fragment items have even length (the last one of a frame is padded).
            raise ParseError(f"odd fragment length {length}; fragment items have even length", pos)
        offsets.append(pos + 8)
        lengths.append(length)
        pos += 8 + length


def parse_items(
    buffer: object, offset: int = 0, end: int = -1
) -> tuple[array, array, array, int]:
    """Walk the items of an encapsulated Pixel Data value (PS3.5 A.4).

    Parameters
    ----------
    buffer : bytes-like
        Any C-contiguous buffer holding the value; it is not copied.
    offset : int, optional
        Absolute position of the Basic Offset Table item tag, just after the (7FE0,0010)
        element header with undefined length.
    end : int, optional
        Absolute limit of the value; ``-1`` (default) means the end of ``buffer``.

    Returns
    -------
    basic_offsets : array.array
        ``array('Q')`` of the Basic Offset Table values, empty when the BOT item is empty.
    fragment_offsets : array.array
        ``array('q')`` of the absolute offsets of each fragment's value (after its 8-byte
        item header).
    fragment_lengths : array.array
        ``array('q')`` of the fragment lengths.
    end_offset : int
        Absolute offset just past the Sequence Delimitation Item.

    Raises
    ------
    ParseError
        Malformed items, with ``offset`` set to the absolute position of the offending item:
        truncated item header, missing Basic Offset Table item, wrong tag, undefined or
        overlong item length, odd fragment length, BOT length not a multiple of 4, no
        Sequence Delimitation Item before ``end``, or a delimiter with non-zero length.
    ValueError
        ``offset`` or ``end`` outside the buffer.
    """
    view = _byte_view(buffer)
    start, stop = _bounds(view.nbytes, offset, end)
    return _walk(view, start, stop)


def parse_extended_offset_table(offsets: object, lengths: object) -> tuple[array, array]:
    """Decode Extended Offset Table (7FE0,0001) and its Lengths (7FE0,0002) (PS3.3 C.7.6.3).

    Parameters
    ----------
    offsets, lengths : bytes-like
        The raw OV values: little-endian uint64, one per frame.

    Returns
    -------
    tuple of array.array
        Two ``array('Q')``: the offsets and the lengths.

    Raises
    ------
    ParseError
        A value whose length is not a multiple of 8, or different entry counts; ``offset``
        is 0 (relative to the value).
    """
    table = _u64_le(offsets, "Extended Offset Table")
    sizes = _u64_le(lengths, "Extended Offset Table Lengths")
    if len(table) != len(sizes):
        raise ParseError(
            f"Extended Offset Table has {len(table)} entries but Extended Offset Table Lengths "
            f"has {len(sizes)}",
            0,
        )
    return table, sizes


def _eot_values(value: object, what: str) -> array:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _u64_le(value, what)
    return array("Q", value)  # type: ignore[call-overload]


def _ends_with_eoi(view: memoryview, start: int, length: int) -> bool:
    # JPEG EOI and JPEG 2000 EOC are both FF D9; padding after the marker is 00 (PS3.5 A.4).
    return bytes(view[start : start + length]).rstrip(b"\x00").endswith(b"\xff\xd9")


class EncapsulatedFrames:
    """Frames of an encapsulated Pixel Data value, as offsets into the caller's buffer.

    Frames map to fragments by the first rule that applies (PS3.5 A.4, PS3.3 C.7.6.3):

    1. Extended Offset Table given: one fragment per frame, located by the table
       (``mapping == 'extended'``).
    2. Non-empty Basic Offset Table: one entry per frame, strictly increasing, first 0,
       each at a fragment's item tag (``'basic'``).
    3. As many fragments as frames: one fragment per frame (``'one-to-one'``).
    4. One frame: all fragments (``'single-frame'``).
    5. More fragments than frames: a frame ends with the fragment whose data ends with
       FF D9 (JPEG EOI / JPEG 2000 EOC), optionally followed by 00 padding (``'markers'``).

    Fewer fragments than frames is an error.

    Parameters
    ----------
    buffer : bytes-like
        The bytes holding the value; kept (not copied) for :meth:`frame`.
    number_of_frames : int
        Number of Frames (0028,0008), at least 1.
    offset, end : int, optional
        As in :func:`parse_items`.
    extended_offsets, extended_lengths : bytes-like or sequence of int, optional
        Extended Offset Table (7FE0,0001) and Lengths (7FE0,0002), raw OV values or decoded
        integers; both or neither.

    Attributes
    ----------
    number_of_frames : int
    basic_offsets, fragment_offsets, fragment_lengths : array.array
        As returned by :func:`parse_items`.
    end_offset : int
        Absolute offset just past the Sequence Delimitation Item.
    frame_fragments : array.array
        ``array('q')`` of ``number_of_frames + 1`` entries: frame ``k`` is fragments
        ``frame_fragments[k]:frame_fragments[k + 1]``.
    mapping : str
        ``'extended'``, ``'basic'``, ``'one-to-one'``, ``'single-frame'`` or ``'markers'``.

    Raises
    ------
    ParseError
        Malformed items (see :func:`parse_items`) or offset tables that do not match the
        fragments; ``offset`` is the absolute position of the offending item or table entry.
    ValueError
        ``number_of_frames`` below 1, or only one of the extended tables given.
    """

    def __init__(
        self,
        buffer: object,
        number_of_frames: int,
        *,
        offset: int = 0,
        end: int = -1,
        extended_offsets: object = None,
        extended_lengths: object = None,
    ) -> None:
        nframes = operator.index(number_of_frames)
        if nframes < 1:
            raise ValueError(f"number_of_frames must be at least 1, got {nframes}")
        if (extended_offsets is None) != (extended_lengths is None):
            raise ValueError("extended_offsets and extended_lengths must be given together")
        view = _byte_view(buffer)
        start, stop = _bounds(view.nbytes, offset, end)
        basic, frag_offsets, frag_lengths, end_offset = _walk(view, start, stop)
        # Offset-table origin: the first item tag after the BOT item (PS3.5 A.4).
        origin = start + 8 + 4 * len(basic)
        nfrags = len(frag_offsets)

        if extended_offsets is not None:
            table = _eot_values(extended_offsets, "Extended Offset Table")
            sizes = _eot_values(extended_lengths, "Extended Offset Table Lengths")
            bounds = self._map_extended(table, sizes, frag_offsets, frag_lengths, nframes, origin)
            mapping = "extended"
        elif basic:
            bounds = self._map_basic(basic, frag_offsets, nframes, start, origin)
            mapping = "basic"
        elif nfrags < nframes:
            raise ParseError(f"fewer fragments ({nfrags}) than frames ({nframes})", origin)
        elif nfrags == nframes:
            bounds = array("q", range(nframes + 1))
            mapping = "one-to-one"
        elif nframes == 1:
            bounds = array("q", (0, nfrags))
            mapping = "single-frame"
        else:
            bounds = self._map_markers(view, frag_offsets, frag_lengths, nframes, end_offset)
            mapping = "markers"

        self._view = view
        self.number_of_frames = nframes
        self.basic_offsets = basic
        self.fragment_offsets = frag_offsets
        self.fragment_lengths = frag_lengths
        self.end_offset = end_offset
        self.frame_fragments = bounds
        self.mapping = mapping

    @staticmethod
    def _map_extended(
        table: array, sizes: array, offsets: array, lengths: array, nframes: int, origin: int
    ) -> array:
        # PS3.3 C.7.6.3.1.8: each frame is exactly one fragment; offsets point at item tags.
        if len(table) != len(sizes):
            raise ParseError(
                f"Extended Offset Table has {len(table)} entries but Extended Offset Table "
                f"Lengths has {len(sizes)}",
                origin,
            )
        if len(table) != nframes:
            raise ParseError(
                f"Extended Offset Table has {len(table)} entries, expected {nframes} (Number of "
                "Frames)",
                origin,
            )
        if len(offsets) != nframes:
            raise ParseError(
                f"Extended Offset Table needs one fragment per frame: {nframes} frames, "
                f"{len(offsets)} fragments",
                origin,
            )
        for k in range(nframes):
            item = offsets[k] - 8
            if table[k] != item - origin:
                raise ParseError(
                    f"Extended Offset Table entry {k} ({table[k]}) does not point at the item "
                    f"tag of fragment {k} (expected {item - origin})",
                    origin,
                )
            if sizes[k] != lengths[k]:
                raise ParseError(
                    f"Extended Offset Table Lengths entry {k} ({sizes[k]}) differs from the "
                    f"fragment length {lengths[k]}",
                    item,
                )
        return array("q", range(nframes + 1))

    @staticmethod
    def _map_basic(basic: array, offsets: array, nframes: int, start: int, origin: int) -> array:
        # PS3.5 A.4: one BOT entry per frame, pointing at the item tag of its first fragment.
        if len(basic) != nframes:
            raise ParseError(
                f"Basic Offset Table has {len(basic)} entries, expected {nframes} (Number of "
                "Frames)",
                start,
            )
        bounds = array("q", bytes(8 * (nframes + 1)))
        nfrags = len(offsets)
        j = 0
        for k in range(nframes):
            value = basic[k]
            entry = start + 8 + 4 * k
            if k == 0:
                if value != 0:
                    raise ParseError(f"Basic Offset Table entry 0 is {value}, expected 0", entry)
            elif value <= basic[k - 1]:
                raise ParseError(
                    f"Basic Offset Table entry {k} ({value}) is not greater than entry {k - 1} "
                    f"({basic[k - 1]})",
                    entry,
                )
            while j < nfrags and offsets[j] - 8 - origin < value:
                j += 1
            if j == nfrags or offsets[j] - 8 - origin != value:
                raise ParseError(
                    f"Basic Offset Table entry {k} ({value}) does not point at a fragment item tag",
                    entry,
                )
            bounds[k] = j
        bounds[nframes] = nfrags
        return bounds

    @staticmethod
    def _map_markers(
        view: memoryview, offsets: array, lengths: array, nframes: int, end_offset: int
    ) -> array:
        bounds = array("q", bytes(8 * (nframes + 1)))
        nfrags = len(offsets)
        done = 0
        for j in range(nfrags):
            if _ends_with_eoi(view, offsets[j], lengths[j]):
                if done == nframes:
                    raise ParseError(
                        f"end-of-image markers (FF D9) delimit more than {nframes} frames",
                        offsets[j] - 8,
                    )
                done += 1
                bounds[done] = j + 1
        if done < nframes or bounds[nframes] != nfrags:
            first_left = bounds[done]
            where = offsets[first_left] - 8 if first_left < nfrags else end_offset - 8
            raise ParseError(
                f"end-of-image markers (FF D9) delimit {done} frames, expected {nframes}, "
                f"with {nfrags - first_left} fragments left over",
                where,
            )
        return bounds

    def _check_index(self, index: object) -> int:
        k = operator.index(index)  # type: ignore[arg-type]
        if k < 0 or k >= self.number_of_frames:
            raise IndexError(f"frame index {k} out of range 0..{self.number_of_frames - 1}")
        return k

    def frame(self, index: int) -> memoryview | bytes:
        """Return the encoded bytes of frame ``index`` (0-based).

        Returns
        -------
        memoryview or bytes
            A zero-copy view of the buffer when the frame is one fragment, otherwise a new
            ``bytes`` joining its fragments.

        Raises
        ------
        IndexError
            ``index`` outside ``0..number_of_frames - 1``.
        """
        k = self._check_index(index)
        first = self.frame_fragments[k]
        last = self.frame_fragments[k + 1]
        offsets = self.fragment_offsets
        lengths = self.fragment_lengths
        if last - first == 1:
            return self._view[offsets[first] : offsets[first] + lengths[first]]
        return b"".join(
            self._view[offsets[j] : offsets[j] + lengths[j]] for j in range(first, last)
        )

    def fragment_ranges(self, index: int) -> list[tuple[int, int]]:
        """Return the absolute ``(start, end)`` of each fragment value of frame ``index``.

        Raises
        ------
        IndexError
            ``index`` outside ``0..number_of_frames - 1``.
        """
        k = self._check_index(index)
        offsets = self.fragment_offsets
        lengths = self.fragment_lengths
        return [
            (offsets[j], offsets[j] + lengths[j])
            for j in range(self.frame_fragments[k], self.frame_fragments[k + 1])
        ]


def _collect(frames: Iterable[Sequence[object]], extended: bool) -> list[list[memoryview]]:
    collected = []
    for k, frame in enumerate(frames):
        if isinstance(frame, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"frame {k} is a bytes-like object; each frame must be a sequence of fragments"
            )
        views = []
        for j, fragment in enumerate(frame):
            view = memoryview(fragment)  # type: ignore[arg-type]
            if not view.c_contiguous:
                raise TypeError(f"fragment {j} of frame {k} is not C-contiguous")
            size = view.nbytes
            if size & 1:
                raise ValueError(
                    f"fragment {j} of frame {k} has odd length {size}; PS3.5 A.4 items have "
                    "even length"
                )
            if size > MAX_ITEM_LENGTH:
                raise ValueError(
                    f"fragment {j} of frame {k} is {size} bytes; an item holds at most "
                    f"{MAX_ITEM_LENGTH}"
                )
            views.append(view)
        if not views:
            raise ValueError(f"frame {k} has no fragments")
        if extended and len(views) != 1:
            raise ValueError(
                f"frame {k} has {len(views)} fragments; the Extended Offset Table needs exactly "
                "one fragment per frame"
            )
        collected.append(views)
    if not collected:
        raise ValueError("no frames to encapsulate")
    return collected


def encapsulate(
    frames: Iterable[Sequence[object]], *, extended: bool = False
) -> bytes | tuple[bytes, bytes, bytes]:
    """Build an encapsulated Pixel Data value from frames of fragments (PS3.5 A.4).

    Parameters
    ----------
    frames : iterable of sequences of bytes-like
        Each frame is a sequence of fragment values, copied unchanged. Fragments must have
        even length (pad the last fragment of a frame before calling).
    extended : bool, optional
        If true, leave the Basic Offset Table empty and also return the Extended Offset
        Table and its Lengths (PS3.3 C.7.6.3.1.8); every frame must then be one fragment.

    Returns
    -------
    bytes or tuple of bytes
        The value: Basic Offset Table item (one uint32 offset per frame, from the first item
        after the BOT to each frame's first item tag), fragment items, Sequence
        Delimitation Item. With ``extended``: ``(value, offsets, lengths)``, the latter two
        little-endian uint64 per frame (offsets to each frame's item tag, item lengths).

    Raises
    ------
    ValueError
        No frames, a frame without fragments, an odd-length or oversized fragment, several
        fragments in a frame with ``extended``, or a Basic Offset Table offset above
        2**32 - 1 (use ``extended=True``).
    TypeError
        A frame given as one bytes-like object, or a fragment that is not a C-contiguous
        buffer.
    """
    collected = _collect(frames, extended)
    nframes = len(collected)
    starts = []
    pos = 0
    for views in collected:
        starts.append(pos)
        for view in views:
            pos += 8 + view.nbytes
    parts: list[object] = [_ITEM_HEADER_BYTES]
    if extended:
        parts.append(b"\x00\x00\x00\x00")
    else:
        for k, start in enumerate(starts):
            if start > MAX_BOT_OFFSET:
                raise ValueError(
                    f"Basic Offset Table offset {start} of frame {k} exceeds {MAX_BOT_OFFSET}; "
                    "use extended=True"
                )
        parts.append(struct.pack(f"<I{nframes}I", 4 * nframes, *starts))
    for views in collected:
        for view in views:
            parts.append(ITEM_HEADER.pack(ITEM_TAG, view.nbytes))
            parts.append(view)
    parts.append(_SEQ_DELIM_ITEM)
    value = b"".join(parts)  # type: ignore[arg-type]
    if not extended:
        return value
    offsets = struct.pack(f"<{nframes}Q", *starts)
    lengths = struct.pack(f"<{nframes}Q", *(views[0].nbytes for views in collected))
    return value, offsets, lengths
