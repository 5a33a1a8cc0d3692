"""The C-FIND SCP (PS3.4 C.4.1): Patient Root and Study Root Query/Retrieve Information Model
- FIND, levels PATIENT, STUDY, SERIES and IMAGE, on the query engine QIDO-RS uses.

The Identifier is read as PS3.4 C.4.1.2.1 (baseline, hierarchical) says: Query/Retrieve
Level (0008,0052) must name a level of the model, and every level above it needs its unique
key with exactly one value (A900, with the Offending Element, otherwise; C000 for bytes that
are not a data set). Each other key present is returned: one at the query level or above that
the engine knows is also matched (PS3.4 C.2.2.2); one it does not know, or below the level,
comes back empty. Matches are sent as Pending (FF00) responses, each Identifier encoded in the
presentation context's transfer syntax, a page at a time; a C-CANCEL-RQ is looked at before
every response and ends the search with Cancel (FE00) (PS3.4 C.4.1.3.1).

The Identifier is read by walking its element headers (:func:`dicomaccel.elements.read_header`,
Implicit and Explicit VR Little Endian, PS3.5 §7.1, sequences walked item by item and skipped,
PS3.5 §7.5) and the responses are written by :func:`dicomaccel.elements.encode_padded`; what
that walk does not read exactly as pydicom would (another byte order, a VR outside the
character strings, numbers and SQ, a non-ASCII or ISO 2022 value, a value pydicom refuses, a
tag the data dictionary lacks in Implicit VR) goes to pydicom, in a worker thread, as before.
A search is usually well under a millisecond, but a leading wild card on a large index takes
milliseconds, which the event loop must not wait for. So the first page, of
:data:`_FIRST_PAGE` matches, is read on the event loop only if the index answers it quickly
(:meth:`~dicomaccel.archive.index.Index.read_quickly`: an embedded index within a bounded
number of steps, as QIDO-RS's searches); otherwise, and for every later page of :data:`_PAGE`
matches, in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

from pydicom.datadict import DicomDictionary
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from ..archive import Archive
from ..dimse.association import Association, Request
from ..elements import (
    ITEM,
    ITEM_DELIMITATION,
    SEQUENCE_DELIMITATION,
    UNDEFINED_LENGTH,
    encode_header,
    encode_padded,
    read_header,
    read_tag,
)
from ..errors import ParseError
from ..query.attributes import (
    BY_TAG,
    QUERY_RETRIEVE_LEVEL,
    SPECIFIC_CHARACTER_SET,
    UNIQUE_KEYS,
)
from ..query.dicom_json import has_non_ascii
from ..query.engine import Query, search
from ..query.matching import MatchError, condition
from ..status import Status
from ..syntaxes import EXPLICIT_VR_BE, IMPLICIT_VR_LE
from .identifier import IdentifierError, decode_identifier

__all__ = ["CFindSCP", "FIND_SOP_CLASSES", "PATIENT_ROOT_FIND", "STUDY_ROOT_FIND", "parse_find_identifier",
           "read_find_identifier", "parse_find_elements", "encode_identifier"]

log = logging.getLogger("dicomaccel.retrieve")

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
FIND_SOP_CLASSES = (PATIENT_ROOT_FIND, STUDY_ROOT_FIND)
# Levels of each model (PS3.4 C.6.1.1, C.6.2.1).
_MODEL_LEVELS = {
    PATIENT_ROOT_FIND: ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    STUDY_ROOT_FIND: ("STUDY", "SERIES", "IMAGE"),
}
# Matches read and encoded per worker-thread call: bounds memory for a search matching the
# whole archive, and how long a C-CANCEL waits at most.
_PAGE = 500
# The first page is tried on the event loop with this many matches, if the index reads it
# quickly (Index.read_quickly): most searches end there, without the two thread hand-offs of a
# worker-thread page (findscu, three studies, 200 C-FINDs on one association, 5 runs beside
# dcmqrscp: 1806 -> 1997 requests/s, 0.4 -> 0.35 ms of server CPU each). Its size bounds the
# encoding done on the loop.
_FIRST_PAGE = 32
# The loop reads what the peer sent (a C-CANCEL-RQ) after this many Pending responses, not
# after every one (three studies, 200 C-FINDs on one association, 5 runs beside dcmqrscp:
# 2072 -> 2152 requests/s).
_YIELD_EVERY = 8
# Identifiers up to this size are walked on the event loop (a few elements: microseconds);
# larger ones (the DIMSE layer allows 1 MiB) in a worker thread.
_INLINE_IDENTIFIER = 16 << 10


def parse_find_identifier(sop_class_uid: str, ds: Dataset) -> tuple[Query, list[tuple[int, str]]]:
    """The engine's query for a C-FIND Identifier decoded by pydicom, and the keys to return
    as (tag, VR); see :func:`parse_find_elements`."""
    return parse_find_elements(sop_class_uid, [
        (e.tag, e.VR, [] if e.VR == "SQ" else _strings(e.value)) for e in ds])


def parse_find_elements(sop_class_uid: str, elements) -> tuple[Query, list[tuple[int, str]]]:
    """The engine's query for a C-FIND Identifier given as its top-level elements, in tag
    order, each ``(tag, VR, values as strings)`` (no values: empty), and the keys to return
    as (tag, VR).

    Raises
    ------
    IdentifierError
        A900 with the Offending Element for a missing or wrong level, or a unique key above
        the level that is missing or not a single value; A900 for a value its VR does not
        allow as a matching key.
    """
    levels = _MODEL_LEVELS[sop_class_uid]
    values_of = {tag: values for tag, _, values in elements}
    qr = values_of.get(QUERY_RETRIEVE_LEVEL)
    if not qr or not (qr[0] if len(qr) == 1 else str(qr)).strip():
        raise IdentifierError("Query/Retrieve Level (0008,0052) is missing", offending=QUERY_RETRIEVE_LEVEL)
    level = (qr[0] if len(qr) == 1 else str(qr)).strip().upper()
    if level not in levels:
        raise IdentifierError(f"level {level[:16]!r} is not a level of this model", offending=QUERY_RETRIEVE_LEVEL)
    depth = levels.index(level)
    for above in levels[:depth]:
        tag = UNIQUE_KEYS[above]
        values = values_of.get(tag, [])
        if len(values) != 1 or "*" in values[0] or "?" in values[0]:
            raise IdentifierError(f"{BY_TAG[tag].keyword} needs exactly one value above the {level} level",
                                  offending=tag)
    conditions, returns = [], []
    engine_levels = ("PATIENT", "STUDY", "SERIES", "IMAGE")
    for tag, vr, values in elements:
        if tag in (QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET) or tag >> 16 == 0:
            continue
        returns.append((tag, vr))
        a = BY_TAG.get(tag)
        if a is None or vr == "SQ":
            continue  # returned empty
        # Study Root puts the Patient attributes at its STUDY level (PS3.4 C.6.2.1).
        if engine_levels.index(a.level) > engine_levels.index(level):
            continue
        if not a.matching:
            continue
        try:
            c = condition(a, values)
        except MatchError as exc:
            raise IdentifierError(str(exc)[:64], offending=tag) from None
        if c is not None:
            conditions.append(c)
    # The unique key of the level is always returned (PS3.4 C.4.1.2.1).
    unique = UNIQUE_KEYS[level]
    if all(t != unique for t, _ in returns):
        returns.append((unique, BY_TAG[unique].vr))
    return Query(level, tuple(conditions), tuple(t for t, _ in returns)), returns


class _Unsure(Exception):
    """The element walk cannot promise to read this Identifier as pydicom reads it."""


_C000 = Status.UNABLE_TO_PROCESS
# Number VRs and their struct formats (PS3.5 Table 6.2-1: little endian binary values).
_NUMBERS = {b"US": "H", b"SS": "h", b"UL": "I", b"SL": "i", b"FL": "f", b"FD": "d", b"SV": "q",
            b"UV": "Q"}
# How each character string VR's value becomes values, as pydicom's converters do it: "multi"
# (trailing SPACE and NUL off, split at backslashes, PS3.5 §6.4), "text" (split, each value
# trimmed at its end: LO, SH, UC), "ae" (split, each trimmed at both ends: leading spaces are
# not significant in AE), "single" (LT, ST, UT: one value, backslash included), "ur", "pn",
# "is", "ds".
_TEXT = {b"AS": "multi", b"CS": "multi", b"DA": "multi", b"DT": "multi", b"TM": "multi",
         b"UI": "multi", b"LO": "text", b"SH": "text", b"UC": "text", b"AE": "ae", b"LT": "single",
         b"ST": "single", b"UT": "single", b"UR": "ur", b"PN": "pn", b"IS": "is", b"DS": "ds"}
# VRs by name as bytes, for Implicit VR (PS3.5 §7.1.3: the VR is the data dictionary's, PS3.6).
_VR_BYTES = {vr.decode(): vr for vr in (*_NUMBERS, *_TEXT, b"SQ")}


def read_find_identifier(data: bytes, transfer_syntax: str | None) -> list[tuple[int, str, list[str]]]:
    """The top-level elements of a C-FIND Identifier, in tag order, as
    :func:`parse_find_elements` takes them, read by walking the element headers.

    Raises
    ------
    IdentifierError
        C000 for bytes that are not a data set: a truncated header, an unknown VR, a value
        past the end, top-level tags not in ascending order (PS3.5 §7.1) before the first
        element of undefined length; the same checks and messages as the pydicom path.
    _Unsure
        For an Identifier the walk does not read exactly as pydicom would (the caller then
        decodes it with pydicom).
    """
    if transfer_syntax == IMPLICIT_VR_LE:
        explicit = False
    elif transfer_syntax == EXPLICIT_VR_BE or transfer_syntax is None:
        raise _Unsure
    else:
        explicit = True  # Explicit VR Little Endian (a deflated context is never accepted for FIND)
    elements: dict[int, tuple[str, list[str]]] = {}
    pos, end, last, ordered = 0, len(data), -1, True
    while pos < end:
        try:
            tag, vr, length, value = read_header(data, pos, end, explicit, True)
        except ParseError as exc:
            if not ordered:
                raise _Unsure from None
            raise IdentifierError(f"Identifier cannot be decoded: {exc}"[:64], _C000) from None
        if tag >> 16 == 0xFFFE:
            raise _Unsure  # an item tag at the top level: pydicom decides
        if ordered and tag <= last:
            raise IdentifierError(f"Identifier elements out of order at byte {pos}", _C000)
        if not explicit:
            vr = _implicit_vr(tag)
        if length == UNDEFINED_LENGTH:
            if vr != b"SQ":
                raise _Unsure
            ordered = False  # as the pydicom path: the order check ends at undefined length
            pos = _skip_sequence(data, value, end, explicit, True)
            elements[tag] = ("SQ", [])
            continue
        if length > end - value:
            if not ordered:
                raise _Unsure
            raise IdentifierError(f"Identifier value past its end at byte {pos}", _C000)
        pos = value + length
        last = tag
        if vr == b"SQ":
            _skip_items(data, value, pos, explicit)
            elements[tag] = ("SQ", [])
        else:
            elements[tag] = (vr.decode(), _values(vr, data[value:pos]))
    return [(tag, vr, values) for tag, (vr, values) in sorted(elements.items())]


def _implicit_vr(tag: int) -> bytes:
    a = BY_TAG.get(tag)
    if a is not None:
        return _VR_BYTES[a.vr]
    entry = DicomDictionary.get(tag)
    vr = None if entry is None else _VR_BYTES.get(entry[0])
    if vr is None:
        raise _Unsure  # private, repeating-group, ambiguous or byte VRs: pydicom decides
    return vr


def _values(vr: bytes, raw: bytes) -> list[str]:
    """The values of one element as pydicom's converters (and ``_strings``) make them."""
    fmt = _NUMBERS.get(vr)
    if fmt is not None:
        size = struct.calcsize(fmt)
        if len(raw) % size:
            raise _Unsure
        return [str(v) for v in struct.unpack(f"<{len(raw) // size}{fmt}", raw)]
    kind = _TEXT.get(vr)
    if kind is None or not raw.isascii() or b"\x1b" in raw:
        # Byte VRs, UN (pydicom may replace it with the dictionary's VR), values that the
        # Specific Character Set decodes (PS3.5 §6.1.2.5): pydicom decides.
        raise _Unsure
    s = raw.decode("ascii")
    if kind == "multi":
        items = s.rstrip(" \x00").split("\\")
    elif kind == "text":
        items = [v.rstrip("\x00 ") for v in s.split("\\")]
    elif kind == "ae":
        items = [v.strip() for v in s.split("\\")]
    elif kind == "single":
        items = [s.rstrip("\x00 ")]
    elif kind == "ur":
        items = [s.rstrip()]
    elif kind == "pn":
        if "=" in s:
            raise _Unsure  # component groups (PS3.5 §6.2.1.2): pydicom's PersonName decides
        items = s.rstrip("\x00 ").split("\\")
    else:  # IS, DS: each value must be a number (pydicom refuses others)
        items = (s.strip() if kind == "ds" else s).rstrip(" \x00").split("\\")
        items = [v.strip() for v in items]
        for v in items:
            if v:
                try:
                    int(v) if kind == "is" else float(v)
                except ValueError:
                    raise _Unsure from None
    if len(items) == 1 and items[0] == "":
        return []
    return items


def _skip_items(data: bytes, pos: int, end: int, explicit: bool) -> None:
    """Walk the items of a sequence value of defined length ``[pos, end)``."""
    while pos < end:
        pos = _item(data, pos, end, explicit)


def _skip_sequence(data: bytes, pos: int, end: int, explicit: bool, top: bool) -> int:
    """Walk a sequence of undefined length from its first item to past its Sequence
    Delimitation Item (PS3.5 §7.5.2); the position after it."""
    while True:
        try:
            tag, _, length, value = read_header(data, pos, end, explicit, True)
        except ParseError:
            raise _Unsure from None
        if tag == SEQUENCE_DELIMITATION:
            return value
        pos = _item(data, pos, end, explicit)


def _item(data: bytes, pos: int, end: int, explicit: bool) -> int:
    """Walk one item (PS3.5 §7.5.1) at ``pos``, checking its elements' values as pydicom's
    converters would; the position after it. Anything unusual: pydicom decides."""
    try:
        tag, _, length, value = read_header(data, pos, end, explicit, True)
    except ParseError:
        raise _Unsure from None
    if tag != ITEM:
        raise _Unsure
    undefined = length == UNDEFINED_LENGTH
    if not undefined:
        if length > end - value:
            raise _Unsure
        stop, pos = value + length, value
    else:
        stop, pos = end, value
    while pos < stop:
        try:
            tag, vr, length, value = read_header(data, pos, stop, explicit, True)
        except ParseError:
            raise _Unsure from None
        if tag == ITEM_DELIMITATION and undefined:
            return value
        if tag >> 16 == 0xFFFE:
            raise _Unsure
        if not explicit:
            vr = _implicit_vr(tag)
        if length == UNDEFINED_LENGTH:
            if vr != b"SQ":
                raise _Unsure
            pos = _skip_sequence(data, value, stop, explicit, False)
            continue
        if length > stop - value:
            raise _Unsure
        pos = value + length
        if vr == b"SQ":
            _skip_items(data, value, pos, explicit)
        elif _NUMBERS.get(vr) is not None or vr in (b"IS", b"DS"):
            _values_checked(vr, data[value:pos])
    if undefined:
        raise _Unsure  # no Item Delimitation Item
    return stop


def _values_checked(vr: bytes, raw: bytes) -> None:
    # Values nested in a sequence are not keys: only what makes pydicom refuse them matters.
    try:
        _values(vr, raw)
    except _Unsure:
        raise
    except Exception:
        raise _Unsure from None


def _strings(value) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, (MultiValue, list, tuple)):
        return [str(v) for v in value]
    if isinstance(value, PersonName):
        return [str(value)]
    if isinstance(value, bytes):
        return [value.decode("latin-1")]
    return [str(value)]


# Character string VRs the Specific Character Set applies to (PS3.5 §6.1.2.3); the others are
# the default repertoire.
_CHARSET_VRS = frozenset(("LO", "LT", "PN", "SH", "ST", "UC", "UT"))
_TEXT_NAMES = frozenset(vr.decode() for vr in _TEXT) | {"UR"}
_NUMBER_NAMES = {vr.decode(): fmt for vr, fmt in _NUMBERS.items()}


class ResponsePlan:
    """How the Pending responses of one request are written: the returned keys in tag order
    with Query/Retrieve Level (0008,0052) and, for a match that needs it, Specific Character
    Set (0008,0005) ISO_IR 192 (PS3.5 §6.1.2.5, Annex H-K not needed for UTF-8), each
    element by :func:`dicomaccel.elements.encode_padded` (Little Endian only)."""

    __slots__ = ("entries", "implicit", "returns", "level", "transfer_syntax")

    def __init__(self, returns: list[tuple[int, str]], level: str, transfer_syntax: str | None) -> None:
        self.returns, self.level, self.transfer_syntax = returns, level, transfer_syntax
        self.implicit = implicit = transfer_syntax == IMPLICIT_VR_LE
        entries = {QUERY_RETRIEVE_LEVEL: (None, encode_padded(QUERY_RETRIEVE_LEVEL, b"CS", level.encode(), implicit))}
        for tag, vr in returns:
            if tag & 0xFFFF == 0 and tag >> 16 > 6:
                continue  # Group Length is retired (PS3.5 §7.2): not written, as pydicom does not
            vr_bytes = vr.encode("ascii", "replace")[:2]
            if vr == "SQ":
                # Sequence keys come back as empty sequences (sequence matching is not offered,
                # PS3.4 C.2.2.2.6): a zero-length value.
                entries[tag] = (None, encode_header(tag, vr_bytes, 0, implicit))
            else:
                entries[tag] = (vr, encode_header(tag, vr_bytes, 0, implicit))
        self.entries = sorted(entries.items())

    def encode(self, match: dict) -> bytes:
        """One C-FIND-RSP Identifier for ``match``."""
        if self.transfer_syntax == EXPLICIT_VR_BE or self.transfer_syntax is None:
            return _encode_with_pydicom(match, self.returns, self.level, self.transfer_syntax)
        utf8 = has_non_ascii(match)
        parts = [_ISO_IR_192[self.implicit]] if utf8 else []
        implicit = self.implicit
        try:
            for tag, (vr, empty) in self.entries:
                if vr is None:
                    parts.append(empty)
                    continue
                value = match.get(tag)
                if value is None or value == "" or value == [] or vr == "UN":
                    parts.append(empty)
                else:
                    parts.append(encode_padded(tag, vr.encode(), _value_bytes(vr, value, utf8), implicit))
        except (_Unsure, UnicodeEncodeError, struct.error, OverflowError):
            return _encode_with_pydicom(match, self.returns, self.level, self.transfer_syntax)
        if utf8 and self.entries and self.entries[0][0] < SPECIFIC_CHARACTER_SET:
            parts.sort(key=_tag_of)  # a key below (0008,0005) was asked for
        return b"".join(parts)


def _tag_of(element: bytes) -> int:
    return read_tag(element, 0)


_ISO_IR_192 = {imp: encode_padded(SPECIFIC_CHARACTER_SET, b"CS", b"ISO_IR 192", imp) for imp in (False, True)}


def _value_bytes(vr: str, value, utf8: bool) -> bytes:
    """The bytes of a value from the engine (str, int, or a list of them) in ``vr``."""
    fmt = _NUMBER_NAMES.get(vr)
    if fmt is not None:
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, int) for v in items):
            raise _Unsure
        return struct.pack(f"<{len(items)}{fmt}", *items)
    if vr not in _TEXT_NAMES:
        raise _Unsure
    if isinstance(value, str):
        text = value
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        text = "\\".join(value)  # multiple values (PS3.5 §6.4)
    elif isinstance(value, int) and not isinstance(value, bool) and vr in ("IS", "DS"):
        text = str(value)
    else:
        raise _Unsure
    return text.encode("utf-8" if utf8 and vr in _CHARSET_VRS else "latin-1")


def encode_identifier(match: dict, returns: list[tuple[int, str]], level: str, transfer_syntax: str) -> bytes:
    """One C-FIND-RSP Identifier: the requested keys (empty when unknown), the level, and
    Specific Character Set ISO_IR 192 when a value needs more than the default repertoire."""
    return ResponsePlan(returns, level, transfer_syntax).encode(match)


def _encode_with_pydicom(match: dict, returns: list[tuple[int, str]], level: str, transfer_syntax: str) -> bytes:
    """:func:`encode_identifier` by pydicom: for Big Endian and values the plan does not write."""
    ds = Dataset()
    if has_non_ascii(match):
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.add_new(QUERY_RETRIEVE_LEVEL, "CS", level)
    for tag, vr in returns:
        value = match.get(tag)
        if vr == "SQ":
            ds.add_new(tag, vr, [])
            continue
        if isinstance(value, list):
            value = value if vr != "UN" else None
        ds.add_new(tag, vr, value)
    fp = DicomBytesIO()
    fp.is_little_endian = transfer_syntax != EXPLICIT_VR_BE
    fp.is_implicit_VR = transfer_syntax == IMPLICIT_VR_LE
    write_dataset(fp, ds)
    return fp.getvalue()


class _Cork:
    """TCP_CORK (tcp(7)) on the association's socket while a page of responses is written:
    each response is two P-DATA-TF PDUs, each its own write; corked, the kernel sends them in
    full segments when released instead of one segment (and one wake-up of the peer) per PDU.
    Without a TCP socket (or where the option does not exist) it does nothing."""

    __slots__ = ("_sock", "_held")

    def __init__(self, assoc: Association) -> None:
        sock = assoc.socket
        self._sock = sock if _TCP_CORK is not None and sock is not None and sock.family in (
            socket.AF_INET, socket.AF_INET6) else None
        self._held = False

    def hold(self) -> None:
        if self._sock is not None and not self._held:
            try:
                self._sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 1)
                self._held = True
            except OSError:
                self._sock = None

    def release(self) -> None:
        if self._held:
            self._held = False
            try:
                self._sock.setsockopt(socket.IPPROTO_TCP, _TCP_CORK, 0)
            except OSError:
                self._sock = None


_TCP_CORK = getattr(socket, "TCP_CORK", None)


class CFindSCP:
    """The handler for C-FIND-RQ: ``await scp(assoc, request)`` over ``archive``'s index."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    async def __call__(self, assoc: Association, request: Request) -> None:
        loop = asyncio.get_running_loop()
        sop_class = request.context.abstract_syntax
        if request.command.get("AffectedSOPClassUID") != sop_class or sop_class not in _MODEL_LEVELS:
            await assoc.respond(request, Status.SOP_CLASS_NOT_SUPPORTED,
                                ErrorComment="Affected SOP Class UID differs from the presentation context")
            return
        data, syntax = request.dataset, request.transfer_syntax
        try:
            if not data:
                raise IdentifierError("the C-FIND-RQ carries no Identifier")
            try:
                if len(data) <= _INLINE_IDENTIFIER:
                    elements = read_find_identifier(data, syntax)
                else:
                    elements = await loop.run_in_executor(None, read_find_identifier, data, syntax)
            except _Unsure:
                ds = await loop.run_in_executor(None, decode_identifier, data, syntax)
                query, returns = parse_find_identifier(sop_class, ds)
            else:
                query, returns = parse_find_elements(sop_class, elements)
        except IdentifierError as err:
            fields = {"ErrorComment": err.comment}
            if err.offending is not None:
                fields["OffendingElement"] = [err.offending]
            await assoc.respond(request, err.status, **fields)
            return
        plan = ResponsePlan(returns, query.level, syntax)
        pending = assoc.pending_response(request)  # one command set for every match
        cork = _Cork(assoc)
        try:
            offset = 0
            while True:
                if request.cancelled.is_set():
                    await assoc.respond(request, Status.CANCEL)
                    return
                cork.release()  # what is written goes out while the next page is read
                quick = None if offset else self.archive.index.read_quickly(
                    self._page, query, plan, 0, _FIRST_PAGE)
                if quick is None:
                    quick = await loop.run_in_executor(None, self._page, query, plan, offset, _PAGE)
                page, more = quick
                cork.hold()
                offset += len(page)
                for n, identifier in enumerate(page, 1):
                    if request.cancelled.is_set():
                        await assoc.respond(request, Status.CANCEL)
                        return
                    await pending(identifier)
                    if n % _YIELD_EVERY == 0:
                        await asyncio.sleep(0)  # lets a C-CANCEL-RQ in (PS3.7 §9.3.2.3)
                if not more:
                    break
            await assoc.respond(request, Status.SUCCESS)
        finally:
            cork.release()

    def _page(self, query: Query, plan: ResponsePlan, offset: int, limit: int) -> tuple[list[bytes], bool]:
        result = search(self.archive.index, Query(query.level, query.conditions, query.returns, limit, offset))
        return [plan.encode(m) for m in result.matches], result.more
