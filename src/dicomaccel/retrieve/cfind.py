"""The C-FIND SCP (PS3.4 C.4.1): Patient Root and Study Root Query/Retrieve Information Model
- FIND, levels PATIENT, STUDY, SERIES and IMAGE, on the query engine QIDO-RS uses.

The Identifier is read as PS3.4 C.4.1.2.1 (baseline, hierarchical) says: Query/Retrieve
Level (0008,0052) must name a level of the model, and every level above it needs its unique
key with exactly one value (A900, with the Offending Element, otherwise; C000 for bytes that
are not a data set). Each other key present is returned: one at the query level or above that
the engine knows is also matched (PS3.4 C.2.2.2); one it does not know, or below the level,
comes back empty. Matches are sent as Pending (FF00) responses, each Identifier encoded in the
presentation context's transfer syntax, in pages that run in a worker thread; a C-CANCEL-RQ
is looked at before every response and ends the search with Cancel (FE00) (PS3.4 C.4.1.3.1).
"""

from __future__ import annotations

import asyncio
import logging

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from ..archive import Archive
from ..dimse.association import Association, Request
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

__all__ = ["CFindSCP", "FIND_SOP_CLASSES", "PATIENT_ROOT_FIND", "STUDY_ROOT_FIND", "parse_find_identifier"]

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


def parse_find_identifier(sop_class_uid: str, ds: Dataset) -> tuple[Query, list[tuple[int, str]]]:
    """The engine's query for a C-FIND Identifier, and the keys to return as (tag, VR).

    Raises
    ------
    IdentifierError
        A900 with the Offending Element for a missing or wrong level, or a unique key above
        the level that is missing or not a single value; A900 for a value its VR does not
        allow as a matching key.
    """
    levels = _MODEL_LEVELS[sop_class_uid]
    if QUERY_RETRIEVE_LEVEL not in ds or not str(ds[QUERY_RETRIEVE_LEVEL].value or "").strip():
        raise IdentifierError("Query/Retrieve Level (0008,0052) is missing", offending=QUERY_RETRIEVE_LEVEL)
    level = str(ds[QUERY_RETRIEVE_LEVEL].value).strip().upper()
    if level not in levels:
        raise IdentifierError(f"level {level[:16]!r} is not a level of this model", offending=QUERY_RETRIEVE_LEVEL)
    depth = levels.index(level)
    for above in levels[:depth]:
        tag = UNIQUE_KEYS[above]
        values = _strings(ds[tag].value) if tag in ds else []
        if len(values) != 1 or "*" in values[0] or "?" in values[0]:
            raise IdentifierError(f"{BY_TAG[tag].keyword} needs exactly one value above the {level} level",
                                  offending=tag)
    conditions, returns = [], []
    engine_levels = ("PATIENT", "STUDY", "SERIES", "IMAGE")
    for element in ds:
        tag = element.tag
        if tag in (QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET) or tag >> 16 == 0:
            continue
        returns.append((tag, element.VR))
        a = BY_TAG.get(tag)
        if a is None or element.VR == "SQ":
            continue  # returned empty
        # Study Root puts the Patient attributes at its STUDY level (PS3.4 C.6.2.1).
        if engine_levels.index(a.level) > engine_levels.index(level):
            continue
        if not a.matching:
            continue
        try:
            c = condition(a, _strings(element.value))
        except MatchError as exc:
            raise IdentifierError(str(exc)[:64], offending=tag) from None
        if c is not None:
            conditions.append(c)
    # The unique key of the level is always returned (PS3.4 C.4.1.2.1).
    unique = UNIQUE_KEYS[level]
    if all(t != unique for t, _ in returns):
        returns.append((unique, BY_TAG[unique].vr))
    return Query(level, tuple(conditions), tuple(t for t, _ in returns)), returns


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


def encode_identifier(match: dict, returns: list[tuple[int, str]], level: str, transfer_syntax: str) -> bytes:
    """One C-FIND-RSP Identifier: the requested keys (empty when unknown), the level, and
    Specific Character Set ISO_IR 192 when a value needs more than the default repertoire."""
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
        try:
            if not request.dataset:
                raise IdentifierError("the C-FIND-RQ carries no Identifier")
            ds = await loop.run_in_executor(None, decode_identifier, request.dataset, request.transfer_syntax)
            query, returns = parse_find_identifier(sop_class, ds)
        except IdentifierError as err:
            fields = {"ErrorComment": err.comment}
            if err.offending is not None:
                fields["OffendingElement"] = [err.offending]
            await assoc.respond(request, err.status, **fields)
            return
        offset = 0
        while True:
            if request.cancelled.is_set():
                await assoc.respond(request, Status.CANCEL)
                return
            page, more = await loop.run_in_executor(None, self._page, query, returns, offset,
                                                    request.transfer_syntax)
            offset += len(page)
            for identifier in page:
                if request.cancelled.is_set():
                    await assoc.respond(request, Status.CANCEL)
                    return
                await assoc.respond(request, Status.PENDING, identifier)
                await asyncio.sleep(0)  # lets a C-CANCEL-RQ in (PS3.7 §9.3.2.3)
            if not more:
                break
        await assoc.respond(request, Status.SUCCESS)

    def _page(self, query: Query, returns, offset: int, transfer_syntax: str) -> tuple[list[bytes], bool]:
        result = search(self.archive.index, Query(query.level, query.conditions, query.returns,
                                                  _PAGE, offset))
        return [encode_identifier(m, returns, query.level, transfer_syntax) for m in result.matches], result.more
