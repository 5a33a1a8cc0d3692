"""WADO-RS bulk data (PS3.18 §10.4, the bulkdata resources): the value of one element,
found in the stored file by its tag path and served from its byte range.

``{instance URL}/bulkdata/{tag}[/{item}/{tag}]...`` (the scheme :mod:`.wado_metadata` writes:
8 hex digit tags, 1-based item numbers). The element is located by walking element and item
headers only (PS3.5 §7.1, §7.5, with :mod:`.elements`): values are skipped, never decoded, so
the cost is the number of elements before it, not the size of the data set. The bytes go out
as stored: PS3.5 Little Endian for every transfer syntax we store but the retired Explicit VR
Big Endian. A deflated data set (PS3.5 A.5) has no byte offsets; there pydicom inflates it.

Top-level Pixel Data is found from the index without a walk; when encapsulated, :mod:`.wado`
answers its frames instead, each in its compressed media type (the media types of PS3.18
§8.7.3 for compressed Pixel Data).
"""

from __future__ import annotations

import mmap
import os
import re
from dataclasses import dataclass

from .elements import ITEM, ITEM_DELIMITATION, SEQUENCE_DELIMITATION, UNDEFINED_LENGTH, read_header
from .errors import ParseError
from .syntaxes import DEFLATED, EXPLICIT_VR_BE, IMPLICIT_VR_LE
from .wado_http import Refused

__all__ = ["TagPath", "parse_tag_path", "locate", "read_value"]

# Sequences nest at most this deep in a path we walk (a bound for hostile files).
MAX_DEPTH = 64
_PATH = re.compile(r"^[0-9A-Fa-f]{8}(?:/[1-9][0-9]{0,8}/[0-9A-Fa-f]{8})*$")


@dataclass(frozen=True)
class TagPath:
    """Tags and 1-based item numbers, alternating: ``(tag, item, tag, ..., tag)``."""

    steps: tuple[int, ...]

    @property
    def tags(self) -> tuple[int, ...]:
        return self.steps[::2]

    @property
    def items(self) -> tuple[int, ...]:
        return self.steps[1::2]

    def __str__(self) -> str:
        return "/".join(f"{s:08X}" if i % 2 == 0 else str(s) for i, s in enumerate(self.steps))


def parse_tag_path(text: str) -> TagPath:
    text = text.strip("/")
    if len(text) > 4096 or not _PATH.match(text):
        raise Refused(400, f"Bad bulk data path {text[:80]!r}: tag[/item/tag]..., tags as 8 hex digits, items from 1")
    parts = text.split("/")
    if len(parts) // 2 > MAX_DEPTH:
        raise Refused(400, f"Bulk data path nests deeper than {MAX_DEPTH} sequences")
    return TagPath(tuple(int(p, 16) if i % 2 == 0 else int(p) for i, p in enumerate(parts)))


@dataclass(frozen=True)
class Located:
    """Where a value lies in the stored file (``offset``, ``length``), or its bytes (``data``)
    when it has no offset (a deflated data set)."""

    offset: int
    length: int
    data: bytes | None = None


def locate(record, path: TagPath) -> Located:
    """The value ``path`` names in ``record``'s file. Raises Refused(404) if absent."""
    syntax = record.transfer_syntax_uid
    if syntax in DEFLATED:
        data = _deflated_value(record.path, path)
        return Located(0, len(data), data)
    if len(path.steps) == 1 and path.steps[0] == record.pixel_tag and record.pixel_length >= 0:
        return Located(record.pixel_value_offset, record.pixel_length)
    explicit, little = syntax != IMPLICIT_VR_LE, syntax != EXPLICIT_VR_BE
    with open(record.path, "rb") as f:
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            try:
                return _walk(mm, record.dataset_offset, len(mm), explicit, little, path)
            except ParseError as exc:
                raise Refused(404, f"Bulk data {path} not found: the stored data set cannot be walked ({exc})") from None


def _missing(path: TagPath) -> Refused:
    return Refused(404, f"No bulk data {path} in this instance")


def _walk(buf, pos: int, end: int, explicit: bool, little: bool, path: TagPath) -> Located:
    tags, items = path.tags, path.items
    for depth, wanted in enumerate(tags):
        found = _find(buf, pos, end, explicit, little, wanted)
        if found is None:
            raise _missing(path)
        vr, ln, vpos = found
        if depth == len(tags) - 1:
            if ln == UNDEFINED_LENGTH:  # e.g. encapsulated icon pixels: the items as stored
                ln = _skip(buf, vpos, ln, end, explicit, little, vr, 0) - vpos
            elif vpos + ln > end:
                raise ParseError("value runs past the end", vpos)
            return Located(vpos, ln)
        if vr == b"UN" and ln == UNDEFINED_LENGTH:
            explicit = False  # PS3.5 §6.2.2: a UN sequence is Implicit VR Little Endian inside
        seq_end = end if ln == UNDEFINED_LENGTH else min(end, vpos + ln)
        bounds = _item(buf, vpos, seq_end, explicit, little, items[depth])
        if bounds is None:
            raise _missing(path)
        pos, end = bounds
    raise _missing(path)


def _find(buf, pos: int, end: int, explicit: bool, little: bool, wanted: int):
    """``(vr, length, value offset)`` of element ``wanted`` among those from ``pos``, or None."""
    while pos < end:
        tag, vr, ln, vpos = read_header(buf, pos, end, explicit, little)
        if tag == ITEM_DELIMITATION:
            return None
        if tag == wanted:
            return vr, ln, vpos
        if tag > wanted and tag >> 16 != 0xFFFE:
            return None  # elements are in ascending tag order (PS3.5 §7.1)
        pos = _skip(buf, vpos, ln, end, explicit, little, vr, 0)
    return None


def _item(buf, pos: int, end: int, explicit: bool, little: bool, number: int):
    """``(start, end)`` of the data set of item ``number`` (1-based) of the sequence value at
    ``pos``; an item of undefined length ends at its Item Delimitation Item, found by
    :func:`_find`."""
    n = 0
    while pos < end:
        tag, _, ln, ipos = read_header(buf, pos, end, explicit, little)
        if tag != ITEM:
            return None  # Sequence Delimitation Item, or not a sequence
        n += 1
        if n == number:
            return ipos, end if ln == UNDEFINED_LENGTH else min(end, ipos + ln)
        pos = _skip_item(buf, ipos, ln, end, explicit, little, 1)
    return None


def _skip(buf, vpos: int, ln: int, end: int, explicit: bool, little: bool, vr, depth: int) -> int:
    """The offset after a value: ``vpos + ln``, or past the Sequence Delimitation Item of an
    undefined-length value (PS3.5 §7.5.2: items, then (FFFE,E0DD))."""
    if ln != UNDEFINED_LENGTH:
        return vpos + ln
    if depth > MAX_DEPTH:
        raise ParseError("sequences nested too deep", vpos)
    if vr == b"UN":
        explicit = False
    pos = vpos
    while True:
        tag, _, iln, ipos = read_header(buf, pos, end, explicit, little)
        if tag == SEQUENCE_DELIMITATION:
            return ipos
        if tag != ITEM:
            raise ParseError("expected an item", pos)
        pos = _skip_item(buf, ipos, iln, end, explicit, little, depth + 1)


def _skip_item(buf, ipos: int, iln: int, end: int, explicit: bool, little: bool, depth: int) -> int:
    if iln != UNDEFINED_LENGTH:
        return ipos + iln
    pos = ipos
    while True:
        tag, vr, ln, vpos = read_header(buf, pos, end, explicit, little)
        if tag == ITEM_DELIMITATION:
            return vpos
        pos = _skip(buf, vpos, ln, end, explicit, little, vr, depth)


def _deflated_value(file_path: str, path: TagPath) -> bytes:
    from pydicom import dcmread
    from pydicom.dataelem import RawDataElement

    ds = dcmread(file_path)
    tags, items = path.tags, path.items
    for depth, tag in enumerate(tags):
        if tag not in ds:
            raise _missing(path)
        if depth == len(tags) - 1:
            elem = ds.get_item(tag)
            value = elem.value
            if isinstance(elem, RawDataElement) or isinstance(value, (bytes, bytearray)):
                return bytes(value or b"")
            if isinstance(value, str):
                return value.encode("utf-8")
            raise _missing(path)
        seq = ds[tag].value
        if ds[tag].VR != "SQ" or items[depth] > len(seq):
            raise _missing(path)
        ds = seq[items[depth] - 1]
    raise _missing(path)


def read_value(record, located: Located, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of a located value (relative to the value)."""
    if located.data is not None:
        return located.data[start:end]
    with open(record.path, "rb") as f:
        return os.pread(f.fileno(), end - start, located.offset + start)
