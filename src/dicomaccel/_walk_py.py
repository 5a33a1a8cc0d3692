"""The top-level walk of a data set (PS3.5 §7), pure Python: the specification of the
compiled ``_walk_c``, which gives the same results and raises the same exceptions.

:func:`walk` records where every top-level element's value lies, up to the Pixel Data
header, stepping over sequences (defined or undefined length, items of either, PS3.5 §7.5)
without recording what is inside them. Element headers are read as :mod:`dicomaccel.elements`
defines them (its VR tables are the compiled walk's too). Errors are
:class:`~dicomaccel.errors.ParseError` with the byte offset, or its subclass
:class:`~dicomaccel.elements.TruncatedElement` (with ``what``) when a length runs past ``end``,
so that a caller scanning a growing prefix (a deflated data set) knows to read more.
"""

from __future__ import annotations

from .elements import (
    IMPLICIT_BE,
    IMPLICIT_LE,
    ITEM,
    ITEM_DELIMITATION,
    SEQUENCE_DELIMITATION,
    UNDEFINED_LENGTH,
    TruncatedElement,
    read_header,
)
from .errors import ParseError
from .syntaxes import PIXEL_TAGS

__all__ = ["walk", "MAX_SEQUENCE_DEPTH"]

# Nested sequences deeper than this are refused: real IODs nest a handful of levels, and a
# bound keeps hostile input from exhausting the stack.
MAX_SEQUENCE_DEPTH = 64


def tag_text(tag: int) -> str:
    """``(gggg,eeee)``, as messages name elements."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def walk(buf, pos: int, end: int, explicit: bool, little: bool, wanted: frozenset,
         found: dict) -> tuple[int, int, int, int]:
    """Walk the top-level elements of ``buf[pos:end]``, recording each in ``found`` as
    ``tag -> (value offset, value length)``, up to and including the first Pixel Data header (any of ``syntaxes.PIXEL_TAGS``).

    An element of undefined length (a sequence, or UN holding one) is recorded with the
    length of what lies between its header and its Sequence Delimitation Item (0 for no
    item), so "present but empty" reads the same for every encoding; a Pixel Data of
    undefined length with length 1 (present). Elements whose tags are in ``wanted`` must
    have a defined length that fits. ``found`` keeps what was recorded before an error.

    Returns
    -------
    tuple
        ``(tag, header offset, value offset, value length or -1 if undefined)`` of the Pixel
        Data, or ``(0, -1, -1, -1)`` if the data set ends without one.

    Raises
    ------
    TruncatedElement
        A header, value or sequence item runs past ``end``.
    ParseError
        Anything else that is not PS3.5: an unknown VR, an item or delimiter outside a
        sequence, undefined length on a VR that cannot have it, a sequence that holds no
        item, nesting deeper than :data:`MAX_SEQUENCE_DEPTH`.
    """
    size = memoryview(buf).nbytes
    if end > size or pos < 0:
        raise ValueError(f"walk: bounds {pos}..{end} outside a buffer of {size} bytes")
    while pos < end:
        tag, vr, ln, vpos = read_header(buf, pos, end, explicit, little)
        if tag in PIXEL_TAGS:
            undefined = ln == UNDEFINED_LENGTH
            found[tag] = (vpos, 1 if undefined else ln)  # presence, for the IOD check
            return tag, pos, vpos, -1 if undefined else ln
        if tag in wanted:
            if ln == UNDEFINED_LENGTH or ln > end - vpos:
                raise TruncatedElement(f"value of {tag_text(tag)}", vpos)
            found[tag] = (vpos, ln)
            pos = vpos + ln
        elif tag >> 16 == 0xFFFE:
            raise ParseError(f"unexpected {tag_text(tag)} in the top-level data set", pos)
        else:
            pos = _skip_value(buf, end, tag, vr, ln, vpos, explicit, little, 0)
            found[tag] = (vpos, ln if ln != UNDEFINED_LENGTH else pos - vpos - 8)
    return 0, -1, -1, -1


def _skip_value(buf, end: int, tag: int, vr, ln: int, vpos: int, explicit: bool, little: bool,
                depth: int) -> int:
    """The offset after the value of the element whose header was just read."""
    if ln != UNDEFINED_LENGTH:
        if ln > end - vpos:
            raise TruncatedElement(f"value of {tag_text(tag)}", vpos)
        return vpos + ln
    if vr == b"UN":
        # UN with undefined length holds an Implicit VR LE sequence (PS3.5 §6.2.2).
        return _skip_sequence(buf, end, vpos, False, True, depth + 1)
    if vr is not None and vr != b"SQ":
        raise ParseError(f"undefined length on VR {vr.decode('ascii', 'replace')} element "
                         f"{tag_text(tag)}", vpos - 12)
    return _skip_sequence(buf, end, vpos, explicit, little, depth + 1)


def _skip_sequence(buf, end: int, pos: int, explicit: bool, little: bool, depth: int) -> int:
    """Walk an undefined-length sequence's items to just past its delimiter (PS3.5 §7.5)."""
    if depth > MAX_SEQUENCE_DEPTH:
        raise ParseError(f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels", pos)
    fmt = IMPLICIT_LE if little else IMPLICIT_BE  # item headers have no VR (PS3.5 §7.5)
    while True:
        if end - pos < 8:
            raise TruncatedElement("sequence item", pos)
        g, e, ln = fmt.unpack_from(buf, pos)
        tag = g << 16 | e
        if tag == SEQUENCE_DELIMITATION:
            return pos + 8
        if tag != ITEM:
            raise ParseError(f"expected an item tag (FFFE,E000) in a sequence, found {tag_text(tag)}", pos)
        pos += 8
        if ln != UNDEFINED_LENGTH:
            if ln > end - pos:
                raise TruncatedElement("sequence item", pos - 8)
            pos += ln
            continue
        # Undefined-length item: its elements until the Item Delimitation Item.
        while True:
            tag, vr, ln, vpos = read_header(buf, pos, end, explicit, little)
            if tag == ITEM_DELIMITATION:
                pos = vpos
                break
            if tag >> 16 == 0xFFFE:
                raise ParseError(f"unexpected {tag_text(tag)} inside an item", pos)
            pos = _skip_value(buf, end, tag, vr, ln, vpos, explicit, little, depth)
