"""Status codes used on the wire, by name, with the clause that defines them.

STOW-RS Warning/Failure Reasons are PS3.18 Annex I.2 values (sent as US integers); DIMSE
statuses are PS3.7 Annex C and PS3.4 Annex C / Y. Implementation-specific codes are marked
IMPL and listed in docs/conformance.md.
"""

from __future__ import annotations

from enum import IntEnum


class FailureReason(IntEnum):
    """Failure Reason (0008,1197) values for STOW-RS (PS3.18 I.2) and C-STORE (PS3.4 B.2.3)."""

    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111  # PS3.7 C; an "additional code" for STOW (IMPL)
    CLASS_INSTANCE_CONFLICT = 0x0119  # PS3.7 C; an "additional code" for STOW (IMPL)
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_MEMORY = 0xA700  # PS3.2 J.4 sample: Refused, out of resources (memory)
    OUT_OF_STORAGE = 0xA710  # PS3.2 J.4 sample: Refused, out of resources (storage space)
    # IMPL, in PS3.4 Table B.2-1's A7xx "Refused: Out of Resources" (PS3.18 Table I.2-1: the
    # same for STOW-RS, answered 503): the index database cannot be reached or failed, nothing
    # is acknowledged, sending again later is safe.
    INDEX_UNAVAILABLE = 0xA720
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
    STUDY_UID_MISMATCH = 0xC409  # IMPL: instance's Study UID differs from the request URL's


class WarningReason(IntEnum):
    """Warning Reason (0008,1196) values (PS3.18 I.2)."""

    COERCION_OF_DATA_ELEMENTS = 0xB000
    ELEMENTS_DISCARDED = 0xB006
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xB007


class Status(IntEnum):
    """DIMSE Status (0000,0900) values used by the C-ECHO, C-GET and C-STORE services."""

    SUCCESS = 0x0000
    WARNING = 0xB000  # C-GET: sub-operations complete, one or more failures or warnings
    PENDING = 0xFF00
    CANCEL = 0xFE00
    PROCESSING_FAILURE = 0x0110
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    DUPLICATE_INVOCATION = 0x0210
    UNRECOGNIZED_OPERATION = 0x0211
    MISTYPED_ARGUMENT = 0x0212
    OUT_OF_RESOURCES_MATCHES = 0xA701
    OUT_OF_RESOURCES_SUBOPERATIONS = 0xA702
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    UNABLE_TO_PROCESS = 0xC000
    # PS3.4 Table Y.4-2 (FRAME-level retrieve)
    NO_FRAMES_FOUND = 0xAA00
    CANNOT_CREATE_NEW_OBJECT = 0xAA01
    CANNOT_EXTRACT_FRAMES = 0xAA02
    TIME_BASED_REQUEST_ON_NON_TIME_BASED = 0xAA03
    INVALID_REQUEST = 0xAA04


def status_category(code: int) -> str:
    """The PS3.7 Annex C class of a DIMSE status: success/warning/failure/cancel/pending."""
    if code == 0x0000:
        return "success"
    if code in (0x0001, 0x0107, 0x0116) or 0xB000 <= code <= 0xBFFF:
        return "warning"
    if code == 0xFE00:
        return "cancel"
    if code in (0xFF00, 0xFF01):
        return "pending"
    return "failure"


def c_store_status(reason: int) -> int:
    """The C-STORE-RSP Status (PS3.4 Table B.2-1) for a store outcome's reason code.

    Both ways in share one set of codes: a :class:`FailureReason` or :class:`WarningReason`
    is what STOW-RS reports as Failure/Warning Reason (PS3.18 I.2) and also a valid C-STORE
    status: 0110, 0111, 0119 and 0122 (PS3.7 Annex C), A7xx Refused: Out of Resources, A9xx
    Error: Data Set does not match SOP Class, Cxxx Error: Cannot understand (C409 is IMPL),
    B000, B006 and B007 warnings. Anything else becomes 0110 Processing Failure.
    """
    if reason in _C_STORE_CODES or 0xA700 <= reason <= 0xA7FF or 0xA900 <= reason <= 0xA9FF \
            or 0xC000 <= reason <= 0xCFFF:
        return int(reason)
    return int(FailureReason.PROCESSING_FAILURE)


_C_STORE_CODES = frozenset({0x0000, 0x0110, 0x0111, 0x0119, 0x0122, *WarningReason})
