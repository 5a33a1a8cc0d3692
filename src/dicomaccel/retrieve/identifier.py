"""C-GET request Identifiers: which instances a request names (PS3.4 C.4.3.1.3.1, C.6, Y, Z).

Baseline (non-relational) retrieve only — we answer "no" to relational retrieval in
extended negotiation — so each level needs exactly one value of every unique key above it
and one or more values of its own key (PS3.4 C.4.3.2). Other attributes are ignored.
A malformed Identifier is refused with A900 and an Error Comment naming the element.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue

from ..elements import UNDEFINED_LENGTH, read_header
from ..errors import ParseError
from ..status import Status
from ..syntaxes import EXPLICIT_VR_BE, IMPLICIT_VR_LE

PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
COMPOSITE_INSTANCE_ROOT_GET = "1.2.840.10008.5.1.4.1.2.4.3"
COMPOSITE_INSTANCE_WITHOUT_BULK_DATA_GET = "1.2.840.10008.5.1.4.1.2.5.3"
GET_SOP_CLASSES = (PATIENT_ROOT_GET, STUDY_ROOT_GET, COMPOSITE_INSTANCE_ROOT_GET,
                   COMPOSITE_INSTANCE_WITHOUT_BULK_DATA_GET)

# Unique keys per level (PS3.4 Table C.6-1/C.6-2/Y.6-1): keyword and tag.
_KEYS = {
    "PATIENT": ("PatientID", 0x00100020),
    "STUDY": ("StudyInstanceUID", 0x0020000D),
    "SERIES": ("SeriesInstanceUID", 0x0020000E),
    "IMAGE": ("SOPInstanceUID", 0x00080018),
}
_LEVELS = {
    PATIENT_ROOT_GET: ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    STUDY_ROOT_GET: ("STUDY", "SERIES", "IMAGE"),
    COMPOSITE_INSTANCE_ROOT_GET: ("IMAGE", "FRAME"),
    COMPOSITE_INSTANCE_WITHOUT_BULK_DATA_GET: ("IMAGE",),
}
FRAME_RANGE_KEYS = ("SimpleFrameList", "CalculatedFrameList", "TimeRange")
_QR_LEVEL_TAG = 0x00080052
_QR_VIEW_TAG = 0x00080053


class IdentifierError(Exception):
    """The Identifier cannot be served: ``status`` with ``comment`` and the offending tag."""

    def __init__(self, comment: str, status: int = Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                 offending: int | None = None) -> None:
        super().__init__(comment)
        self.status = int(status)
        self.comment = comment
        self.offending = offending


@dataclass(frozen=True)
class RetrieveRequest:
    """The instances (or, at FRAME level, the one source and its Frame Range Key) requested."""

    sop_class_uid: str
    level: str
    patient_id: str | None = None
    study_uids: tuple[str, ...] | None = None
    series_uids: tuple[str, ...] | None = None
    sop_instance_uids: tuple[str, ...] | None = None
    frame_key: tuple[str, tuple] | None = None  # (keyword, values) at FRAME level
    dataset: Dataset | None = None

    def match_keys(self) -> dict:
        """Keyword arguments for :meth:`dicomaccel.archive.Archive.find`."""
        return {
            "patient_id": self.patient_id,
            "study_uids": list(self.study_uids) if self.study_uids else None,
            "series_uids": list(self.series_uids) if self.series_uids else None,
            "sop_instance_uids": list(self.sop_instance_uids) if self.sop_instance_uids else None,
        }


def decode_identifier(data: bytes | None, transfer_syntax: str | None) -> Dataset:
    """Decode a C-GET-RQ Identifier received in ``transfer_syntax``.

    Parameters
    ----------
    data : bytes or None
        The data set bytes as received.
    transfer_syntax : str or None
        The transfer syntax of the C-GET presentation context.

    Returns
    -------
    pydicom.dataset.Dataset

    Raises
    ------
    IdentifierError
        No Identifier (A900), or one that cannot be decoded (C000).
    """
    if not data:
        raise IdentifierError("the C-GET-RQ carries no Identifier")
    try:
        return _read(data, transfer_syntax)
    except IdentifierError:
        raise
    except Exception as exc:  # pydicom raises many types on malformed input
        raise IdentifierError(f"Identifier cannot be decoded: {exc}"[:64], Status.UNABLE_TO_PROCESS) from None


def _read(data: bytes, transfer_syntax: str | None) -> Dataset:
    implicit = transfer_syntax == IMPLICIT_VR_LE
    little = transfer_syntax != EXPLICIT_VR_BE
    _check_structure(data, implicit, little)
    ds = read_dataset(BytesIO(data), implicit, little)
    # Force every element to decode now, so a malformed value fails here, not later.
    for elem in ds.iterall():
        _ = elem.value
    return ds


def _check_structure(data: bytes, implicit: bool, little: bool) -> None:
    """Refuse what is not a data set before pydicom, which reads almost any bytes as elements
    of VR UN: top-level elements in strictly ascending tag order (PS3.5 7.1), each value
    inside the data. A sequence of undefined length ends the walk (pydicom reads it)."""
    pos, end, last = 0, len(data), -1
    while pos < end:
        try:
            tag, _, length, value = read_header(data, pos, end, not implicit, little)
        except ParseError as exc:
            raise IdentifierError(f"Identifier cannot be decoded: {exc}"[:64], Status.UNABLE_TO_PROCESS) from None
        if tag <= last:
            raise IdentifierError(f"Identifier elements out of order at byte {pos}", Status.UNABLE_TO_PROCESS)
        if length == UNDEFINED_LENGTH:
            return
        if length > end - value:
            raise IdentifierError(f"Identifier value past its end at byte {pos}", Status.UNABLE_TO_PROCESS)
        last, pos = tag, value + length


def parse_identifier(sop_class_uid: str, ds: Dataset) -> RetrieveRequest:
    """Validate ``ds`` as a C-GET Identifier for ``sop_class_uid`` and say what it names.

    Parameters
    ----------
    sop_class_uid : str
        Affected SOP Class UID of the C-GET-RQ (one of :data:`GET_SOP_CLASSES`).
    ds : pydicom.dataset.Dataset
        The decoded Identifier.

    Returns
    -------
    RetrieveRequest

    Raises
    ------
    IdentifierError
        With the status to answer: A900 and the offending element for a missing, empty or
        misplaced key or level; 0122 for an unknown SOP Class; AA04 for a malformed FRAME
        request (PS3.4 Table Y.4-2).
    """
    levels = _LEVELS.get(sop_class_uid)
    if levels is None:
        raise IdentifierError(f"{sop_class_uid} is not a supported C-GET SOP Class", Status.SOP_CLASS_NOT_SUPPORTED)
    if "QueryRetrieveLevel" not in ds or not ds.QueryRetrieveLevel:
        raise IdentifierError("Query/Retrieve Level (0008,0052) is missing", offending=_QR_LEVEL_TAG)
    level = str(ds.QueryRetrieveLevel).strip().upper()
    if level not in levels:
        raise IdentifierError(f"level {level[:16]!r} is not valid for this SOP Class", offending=_QR_LEVEL_TAG)
    if _QR_VIEW_TAG in ds:
        # PS3.4 C.4.3.1.3.1: only with Enhanced Multi-Frame Image Conversion, which we
        # decline in extended negotiation.
        raise IdentifierError("Query/Retrieve View (0008,0053) was not negotiated", offending=_QR_VIEW_TAG)
    if level == "FRAME":
        return _frame_request(sop_class_uid, ds)

    keys: dict[str, tuple[str, ...]] = {}
    # Instance-root models have no keys above IMAGE (PS3.4 Y.6.1, Z.6.1).
    chain = ("IMAGE",) if sop_class_uid in (COMPOSITE_INSTANCE_ROOT_GET, COMPOSITE_INSTANCE_WITHOUT_BULK_DATA_GET) \
        else levels[: levels.index(level) + 1]
    for lvl in chain:
        keyword, tag = _KEYS[lvl]
        values = _values(ds, keyword)
        if not values:
            raise IdentifierError(f"unique key {keyword} is missing or empty", offending=tag)
        if lvl != level and len(values) != 1:
            raise IdentifierError(f"{keyword} must have one value above the retrieve level", offending=tag)
        if lvl == "PATIENT" and len(values) != 1:
            raise IdentifierError("Patient ID takes a single value", offending=tag)
        keys[lvl] = values
    return RetrieveRequest(
        sop_class_uid=sop_class_uid,
        level=level,
        patient_id=keys["PATIENT"][0] if "PATIENT" in keys else None,
        study_uids=keys.get("STUDY"),
        series_uids=keys.get("SERIES"),
        sop_instance_uids=keys.get("IMAGE"),
        dataset=ds,
    )


def _frame_request(sop_class_uid: str, ds: Dataset) -> RetrieveRequest:
    # PS3.4 Y.4.2.1: exactly one SOP Instance UID and exactly one Frame Range Key.
    sop = _values(ds, "SOPInstanceUID")
    if len(sop) != 1:
        raise IdentifierError("FRAME level needs exactly one SOP Instance UID", Status.INVALID_REQUEST, 0x00080018)
    present = [k for k in FRAME_RANGE_KEYS if k in ds and ds[k].VM > 0]
    if len(present) != 1:
        raise IdentifierError("FRAME level needs exactly one Frame Range Key", Status.INVALID_REQUEST,
                              0x00081161)
    keyword = present[0]
    value = ds[keyword].value
    values = tuple(value) if isinstance(value, (MultiValue, list, tuple)) else (value,)
    return RetrieveRequest(sop_class_uid=sop_class_uid, level="FRAME", sop_instance_uids=sop,
                           frame_key=(keyword, values), dataset=ds)


def _values(ds: Dataset, keyword: str) -> tuple[str, ...]:
    if keyword not in ds:
        return ()
    value = ds[keyword].value
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        items = [value]
    else:
        items = list(value)
    return tuple(str(v).strip() for v in items if str(v).strip())
