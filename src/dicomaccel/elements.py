"""PS3.5 data element bytes: element and item headers read and written (PS3.5 §7.1, §7.5).

The one place that knows the header layouts of PS3.5 §7.1.2 (Explicit VR, Table 7.1-1 and
Table 7.1-2) and §7.1.3 (Implicit VR, Table 7.1-3), and the item and delimitation headers of
§7.5 (Table 7.5-1 to 7.5-3). Reading works on any buffer (bytes, bytearray, memoryview, mmap)
with ``struct.unpack_from``, in either byte order; writing produces Little Endian only, the
one byte order dicomaccel ever encodes.

:func:`read_header` is on the ingest hot path (every top-level element of every stored file
goes through it), so it returns a plain tuple and does nothing the callers do not need.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .errors import ParseError

__all__ = [
    "LONG_VRS",
    "SHORT_VRS",
    "UNDEFINED_LENGTH",
    "MAX_SHORT_LENGTH",
    "ITEM",
    "ITEM_DELIMITATION",
    "SEQUENCE_DELIMITATION",
    "TruncatedElement",
    "PixelDataHeader",
    "read_header",
    "read_tag",
    "encode_header",
    "encode_element",
    "encode_item",
    "TEXT_VRS",
    "pad_value",
    "encode_padded",
]

# Explicit VR: VRs with 2 reserved bytes and a 32-bit length (PS3.5 §7.1.2, Table 7.1-1); the
# others have a 16-bit length (Table 7.1-2).
LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
                      b"UT", b"UV"))
SHORT_VRS = frozenset(
    (b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
     b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US")
)
# VRs whose values are character strings, padded with a trailing SPACE to an even length
# (PS3.5 §6.2, Table 6.2-1); UI is padded with a NUL instead, and so are the byte VRs (OB, UN).
TEXT_VRS = frozenset((b"AE", b"AS", b"CS", b"DA", b"DS", b"DT", b"IS", b"LO", b"LT", b"PN", b"SH",
                      b"ST", b"TM", b"UC", b"UR", b"UT"))
# Value Length 0xFFFFFFFF: undefined length (PS3.5 §7.1.1).
UNDEFINED_LENGTH = 0xFFFFFFFF
# Largest value a 16-bit Value Length field holds (PS3.5 Table 7.1-2).
MAX_SHORT_LENGTH = 0xFFFF
# Item, Item Delimitation Item and Sequence Delimitation Item tags (PS3.5 §7.5, Table 7.5-1 to
# 7.5-3); they carry no VR, their header is tag and 32-bit length in every transfer syntax.
ITEM = 0xFFFEE000
ITEM_DELIMITATION = 0xFFFEE00D
SEQUENCE_DELIMITATION = 0xFFFEE0DD
_ITEM_GROUP = 0xFFFE

# Header layouts: group, element, VR, 16-bit length (Explicit VR, Table 7.1-2); group, element,
# 32-bit length (Implicit VR, Table 7.1-3, and item headers, Table 7.5-1).
EXPLICIT_LE = struct.Struct("<HH2sH")
EXPLICIT_BE = struct.Struct(">HH2sH")
IMPLICIT_LE = struct.Struct("<HHI")
IMPLICIT_BE = struct.Struct(">HHI")
_LONG_LE = struct.Struct("<HH2sHI")
U32LE = struct.Struct("<I")
U32BE = struct.Struct(">I")
U16LE = struct.Struct("<H")
U16BE = struct.Struct(">H")


class TruncatedElement(ParseError):
    """The buffer ends inside ``what`` (for example "element header") starting at ``offset``."""

    def __init__(self, what: str, offset: int) -> None:
        super().__init__(f"truncated {what}", offset)
        self.what = what

    def __reduce__(self):
        return (type(self), (self.what, self.offset))


class PixelDataHeader(NamedTuple):
    """Where a Pixel Data element ((7FE0,0010), (7FE0,0008) or (7FE0,0009)) lies.

    ``offset`` is the position of the element's tag, ``value_offset`` that of its value;
    ``length`` is the Value Length, -1 for undefined length (encapsulated, PS3.5 A.4). An
    offset is -1 when it is not addressable (a deflated data set, PS3.5 A.5). A data set
    without Pixel Data has ``(0, -1, -1, -1)`` (what :func:`dicomaccel.walk.walk` returns).
    """

    tag: int
    offset: int
    value_offset: int
    length: int


def read_header(buf, pos: int, end: int, explicit: bool, little: bool):
    """Read the element header at ``pos``: ``(tag, VR or None, length, value offset)``.

    The VR is None in Implicit VR and for item and delimitation tags (group FFFE, PS3.5
    §7.5). ``length`` is the Value Length as encoded (``UNDEFINED_LENGTH`` included); the
    caller checks it against ``end``.

    Raises
    ------
    TruncatedElement
        Fewer than 8 bytes (12 for a long-length VR) before ``end``.
    ParseError
        An Explicit VR header whose VR is none of PS3.5 Table 6.2-1.
    """
    if end - pos < 8:
        raise TruncatedElement("element header", pos)
    if explicit:
        g, e, vr, ln = (EXPLICIT_LE if little else EXPLICIT_BE).unpack_from(buf, pos)
        if g == _ITEM_GROUP:
            (ln,) = (U32LE if little else U32BE).unpack_from(buf, pos + 4)
            return g << 16 | e, None, ln, pos + 8
        if vr in LONG_VRS:
            if end - pos < 12:
                raise TruncatedElement("element header", pos)
            (ln,) = (U32LE if little else U32BE).unpack_from(buf, pos + 8)
            return g << 16 | e, vr, ln, pos + 12
        if vr in SHORT_VRS:
            return g << 16 | e, vr, ln, pos + 8
        raise ParseError(f"unknown VR {vr!r} in element ({g:04X},{e:04X})", pos)
    g, e, ln = (IMPLICIT_LE if little else IMPLICIT_BE).unpack_from(buf, pos)
    return g << 16 | e, None, ln, pos + 8


def read_tag(buf, pos: int, little: bool = True) -> int:
    """The tag at ``pos`` as ``group << 16 | element`` (the caller checks 4 bytes are there)."""
    g, e = struct.unpack_from("<HH" if little else ">HH", buf, pos)
    return g << 16 | e


def encode_header(tag: int, vr: bytes | None, length: int, implicit: bool) -> bytes:
    """A Little Endian element header (PS3.5 §7.1.2 Explicit VR, §7.1.3 Implicit VR).

    ``vr`` is ignored in Implicit VR. ``length`` may be ``UNDEFINED_LENGTH`` for SQ, UN and
    encapsulated OB. A 16-bit-length VR with a value over 0xFFFF cannot be encoded (PS3.5
    §6.2.2 then says UN): that raises ``struct.error``.
    """
    group, element = tag >> 16, tag & 0xFFFF
    if implicit:
        return IMPLICIT_LE.pack(group, element, length)
    if vr in LONG_VRS:
        return _LONG_LE.pack(group, element, vr, 0, length)
    return EXPLICIT_LE.pack(group, element, vr, length)


def encode_element(tag: int, vr: bytes, value: bytes, implicit: bool) -> bytes:
    """One Little Endian element with a defined length: header and ``value`` (already even)."""
    return encode_header(tag, vr, len(value), implicit) + value


def encode_item(content: bytes) -> bytes:
    """One sequence item of defined length holding ``content`` (PS3.5 §7.5, Table 7.5-1)."""
    return IMPLICIT_LE.pack(_ITEM_GROUP, ITEM & 0xFFFF, len(content)) + content


def pad_value(vr: bytes, value: bytes) -> bytes:
    """``value`` padded to an even length as PS3.5 §6.2 says for ``vr`` (Value Lengths are
    even, PS3.5 §7.1.1): a trailing SPACE (20H) for the character string VRs of
    :data:`TEXT_VRS`, a NUL (00H) for UI and the byte VRs."""
    if len(value) & 1:
        return value + (b" " if vr in TEXT_VRS else b"\x00")
    return value


def encode_padded(tag: int, vr: bytes, value: bytes, implicit: bool) -> bytes:
    """One Little Endian element of defined length: header and ``value`` padded by
    :func:`pad_value` (an empty value is an element of length 0, PS3.5 §7.1.1)."""
    value = pad_value(vr, value)
    return encode_header(tag, vr, len(value), implicit) + value
