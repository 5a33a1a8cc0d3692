# The top-level walk of a data set (PS3.5 §7), compiled. dicomaccel._walk_py is the
# specification: same API, same results, same exception types, messages and offsets. The
# element loop and the sequence skipping live here; the VR tables come from
# dicomaccel.elements (the one owner of element bytes) and the error text from the twin.
#
# Headers are read over a raw pointer with every length checked against the bytes left
# (`ln > end - vpos`, lengths widened to 64 bits first) whatever the boundscheck directive
# says. A data set header is kilobytes, so the walk keeps the GIL (it also fills a dict).

from libc.stdint cimport int64_t, uint16_t, uint32_t

from dicomaccel._walk_py import MAX_SEQUENCE_DEPTH as _MAX_DEPTH, tag_text
from dicomaccel.elements import LONG_VRS, SHORT_VRS, TruncatedElement
from dicomaccel.errors import ParseError
from dicomaccel.syntaxes import PIXEL_TAGS

__all__ = ["walk", "MAX_SEQUENCE_DEPTH"]

MAX_SEQUENCE_DEPTH = _MAX_DEPTH

cdef uint32_t UNDEFINED = 0xFFFFFFFF
cdef uint32_t ITEM_TAG = 0xFFFEE000
cdef uint32_t ITEM_DELIM_TAG = 0xFFFEE00D
cdef uint32_t SEQ_DELIM_TAG = 0xFFFEE0DD
cdef int max_depth = _MAX_DEPTH
cdef frozenset PIXEL = PIXEL_TAGS

# VR kind by its two bytes (first byte in the high half): 0 unknown, 1 a 16-bit length
# follows, 2 two reserved bytes and a 32-bit length follow (PS3.5 Table 7.1-1, 7.1-2).
cdef unsigned char vr_kind[65536]
for _vr in SHORT_VRS:
    vr_kind[_vr[0] << 8 | _vr[1]] = 1
for _vr in LONG_VRS:
    vr_kind[_vr[0] << 8 | _vr[1]] = 2

cdef uint16_t VR_UN = (b"U"[0] << 8) | b"N"[0]
cdef uint16_t VR_SQ = (b"S"[0] << 8) | b"Q"[0]


cdef struct Head:
    uint32_t tag
    int vr  # the VR's two bytes, or -1: none (Implicit VR, or an item or delimiter tag)
    int64_t length
    Py_ssize_t vpos


cdef inline uint16_t u16(const unsigned char* p, bint little) noexcept nogil:
    if little:
        return p[0] | (<uint16_t>p[1] << 8)
    return (<uint16_t>p[0] << 8) | p[1]


cdef inline uint32_t u32(const unsigned char* p, bint little) noexcept nogil:
    if little:
        return p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef int read_head(const unsigned char* b, Py_ssize_t pos, Py_ssize_t end, bint explicit, bint little,
                   Head* h) except -1:
    # As elements.read_header.
    cdef uint16_t g, vr
    if end - pos < 8:
        raise TruncatedElement("element header", pos)
    g = u16(b + pos, little)
    h.tag = (<uint32_t>g << 16) | u16(b + pos + 2, little)
    if not explicit or g == 0xFFFE:
        h.vr = -1
        h.length = u32(b + pos + 4, little)
        h.vpos = pos + 8
        return 0
    vr = (<uint16_t>b[pos + 4] << 8) | b[pos + 5]
    h.vr = vr
    if vr_kind[vr] == 2:
        if end - pos < 12:
            raise TruncatedElement("element header", pos)
        h.length = u32(b + pos + 8, little)
        h.vpos = pos + 12
    elif vr_kind[vr] == 1:
        h.length = u16(b + pos + 6, little)
        h.vpos = pos + 8
    else:
        raise ParseError(f"unknown VR {bytes(b[pos + 4:pos + 6])!r} in element {tag_text(h.tag)}", pos)
    return 0


cdef Py_ssize_t skip_value(const unsigned char* b, Py_ssize_t end, Head* h, bint explicit, bint little,
                           int depth) except -1:
    if h.length != UNDEFINED:
        if h.length > end - h.vpos:
            raise TruncatedElement(f"value of {tag_text(h.tag)}", h.vpos)
        return h.vpos + h.length
    if h.vr == VR_UN:
        # UN with undefined length holds an Implicit VR LE sequence (PS3.5 §6.2.2).
        return skip_sequence(b, end, h.vpos, False, True, depth + 1)
    if h.vr != -1 and h.vr != VR_SQ:
        raise ParseError(f"undefined length on VR {bytes(b[h.vpos - 8:h.vpos - 6]).decode('ascii', 'replace')} "
                         f"element {tag_text(h.tag)}", h.vpos - 12)
    return skip_sequence(b, end, h.vpos, explicit, little, depth + 1)


cdef Py_ssize_t skip_sequence(const unsigned char* b, Py_ssize_t end, Py_ssize_t pos, bint explicit,
                              bint little, int depth) except -1:
    # An undefined-length sequence's items, to just past its delimiter (PS3.5 §7.5).
    cdef uint32_t tag
    cdef int64_t ln
    cdef Head h
    if depth > max_depth:
        raise ParseError(f"sequences nested deeper than {max_depth} levels", pos)
    while True:
        if end - pos < 8:
            raise TruncatedElement("sequence item", pos)
        # Item headers have no VR (PS3.5 §7.5).
        tag = (<uint32_t>u16(b + pos, little) << 16) | u16(b + pos + 2, little)
        ln = u32(b + pos + 4, little)
        if tag == SEQ_DELIM_TAG:
            return pos + 8
        if tag != ITEM_TAG:
            raise ParseError(f"expected an item tag (FFFE,E000) in a sequence, found {tag_text(tag)}", pos)
        pos += 8
        if ln != UNDEFINED:
            if ln > end - pos:
                raise TruncatedElement("sequence item", pos - 8)
            pos += ln
            continue
        # Undefined-length item: its elements until the Item Delimitation Item.
        while True:
            read_head(b, pos, end, explicit, little, &h)
            if h.tag == ITEM_DELIM_TAG:
                pos = h.vpos
                break
            if h.tag >> 16 == 0xFFFE:
                raise ParseError(f"unexpected {tag_text(h.tag)} inside an item", pos)
            pos = skip_value(b, end, &h, explicit, little, depth)


def walk(buf, Py_ssize_t pos, Py_ssize_t end, bint explicit, bint little, frozenset wanted,
         dict found):
    """See :func:`dicomaccel._walk_py.walk`."""
    cdef const unsigned char[::1] view = buf
    cdef const unsigned char* b
    cdef Head h
    cdef Py_ssize_t after
    if end > view.shape[0] or pos < 0:
        raise ValueError(f"walk: bounds {pos}..{end} outside a buffer of {view.shape[0]} bytes")
    if end <= pos:
        return 0, -1, -1, -1
    b = &view[0]
    while pos < end:
        read_head(b, pos, end, explicit, little, &h)
        key = h.tag
        if key in PIXEL:
            if h.length == UNDEFINED:
                found[key] = (h.vpos, 1)  # presence, for the IOD check
                return key, pos, h.vpos, -1
            found[key] = (h.vpos, h.length)
            return key, pos, h.vpos, h.length
        if key in wanted:
            if h.length == UNDEFINED or h.length > end - h.vpos:
                raise TruncatedElement(f"value of {tag_text(h.tag)}", h.vpos)
            found[key] = (h.vpos, h.length)
            pos = h.vpos + h.length
        elif h.tag >> 16 == 0xFFFE:
            raise ParseError(f"unexpected {tag_text(h.tag)} in the top-level data set", pos)
        else:
            after = skip_value(b, end, &h, explicit, little, 0)
            found[key] = (h.vpos, h.length if h.length != UNDEFINED else after - h.vpos - 8)
            pos = after
    return 0, -1, -1, -1
