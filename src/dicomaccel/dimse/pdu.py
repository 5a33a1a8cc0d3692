"""DICOM Upper Layer PDUs and items (PS3.8 §9.3, Annex D; PS3.7 Annex D.3.3).

Only what an association *acceptor* needs: A-ASSOCIATE-RQ is decoded in full, every other PDU
we receive has a fixed layout that the protocol reads itself; A-ASSOCIATE-AC/RJ, P-DATA-TF
headers, A-RELEASE-RQ/RP and A-ABORT are encoded here. All PDU and item lengths are big-endian
(PS3.8 §9.3.1). Reserved fields are sent as zero and never tested.

Decoding errors raise :class:`PDUParameterError`, a :class:`~dicomaccel.errors.ParseError`
that also carries the A-ABORT reason (PS3.8 Table 9-26) the protocol should send.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from dicomaccel.errors import ParseError

# PDU types (PS3.8 Table 9-11 ff.)
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

# Item and sub-item types (PS3.8 §9.3.2, Annex D; PS3.7 Annex D.3.3)
ITEM_APPLICATION_CONTEXT = 0x10
ITEM_PRESENTATION_CONTEXT_RQ = 0x20
ITEM_PRESENTATION_CONTEXT_AC = 0x21
ITEM_ABSTRACT_SYNTAX = 0x30
ITEM_TRANSFER_SYNTAX = 0x40
ITEM_USER_INFORMATION = 0x50
SUB_MAXIMUM_LENGTH = 0x51
SUB_IMPLEMENTATION_CLASS_UID = 0x52
SUB_ASYNC_OPERATIONS_WINDOW = 0x53
SUB_ROLE_SELECTION = 0x54
SUB_IMPLEMENTATION_VERSION_NAME = 0x55
SUB_SOP_CLASS_EXTENDED = 0x56
SUB_SOP_CLASS_COMMON_EXTENDED = 0x57
SUB_USER_IDENTITY_RQ = 0x58

# The only application context name defined by DICOM (PS3.7 Annex A.2.1).
DICOM_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

# A-ASSOCIATE-RJ result / source / reason (PS3.8 Table 9-21)
RJ_PERMANENT = 1
RJ_TRANSIENT = 2
RJ_SOURCE_USER = 1
RJ_SOURCE_ACSE = 2
RJ_SOURCE_PRESENTATION = 3
RJ_USER_NO_REASON = 1
RJ_USER_APPLICATION_CONTEXT_NOT_SUPPORTED = 2
RJ_USER_CALLING_AE_NOT_RECOGNIZED = 3
RJ_USER_CALLED_AE_NOT_RECOGNIZED = 7
RJ_ACSE_NO_REASON = 1
RJ_ACSE_PROTOCOL_VERSION_NOT_SUPPORTED = 2
RJ_PRESENTATION_TEMPORARY_CONGESTION = 1
RJ_PRESENTATION_LOCAL_LIMIT_EXCEEDED = 2

# A-ABORT source / reason (PS3.8 Table 9-26)
ABORT_SOURCE_USER = 0
ABORT_SOURCE_PROVIDER = 2
ABORT_REASON_NOT_SPECIFIED = 0
ABORT_UNRECOGNIZED_PDU = 1
ABORT_UNEXPECTED_PDU = 2
ABORT_UNRECOGNIZED_PDU_PARAMETER = 4
ABORT_UNEXPECTED_PDU_PARAMETER = 5
ABORT_INVALID_PDU_PARAMETER_VALUE = 6

# Presentation context results (PS3.8 Table 9-18)
PC_ACCEPTANCE = 0
PC_USER_REJECTION = 1
PC_NO_REASON = 2
PC_ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
PC_TRANSFER_SYNTAXES_NOT_SUPPORTED = 4

# Fixed part of A-ASSOCIATE-RQ/AC after the 6-byte PDU header: version(2) reserved(2)
# called AE(16) calling AE(16) reserved(32) (PS3.8 Table 9-11).
ASSOCIATE_FIXED_LENGTH = 68
# Fixed-length PDUs (RJ, RELEASE-RQ/RP, ABORT) carry exactly 4 bytes (PS3.8 Tables 9-21..9-26).
FIXED_PDU_LENGTH = 4

PDU_HEADER = struct.Struct(">BxL")
ITEM_HEADER = struct.Struct(">BxH")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">L")
_ASYNC_WINDOW = struct.Struct(">HH")
# P-DATA-TF with exactly one PDV: PDU header, PDV item length, context ID, control header
# (PS3.8 §9.3.5 and Annex E.2).
PDATA_ONE_PDV_HEADER = struct.Struct(">BxLLBB")
PDV_HEADER = struct.Struct(">LBB")

A_RELEASE_RQ_BYTES = PDU_HEADER.pack(A_RELEASE_RQ, 4) + b"\x00" * 4
A_RELEASE_RP_BYTES = PDU_HEADER.pack(A_RELEASE_RP, 4) + b"\x00" * 4


class PDUParameterError(ParseError):
    """A PDU that cannot be accepted; ``reason`` is the A-ABORT reason to send (PS3.8 Table 9-26)."""

    def __init__(self, message: str, offset: int, reason: int = ABORT_INVALID_PDU_PARAMETER_VALUE) -> None:
        super().__init__(message, offset)
        self.reason = reason

    def __reduce__(self):
        return (type(self), (self.message, self.offset, self.reason))


@dataclass(slots=True)
class ProposedContext:
    """One 20H Presentation Context item of an A-ASSOCIATE-RQ."""

    id: int
    abstract_syntax: str
    transfer_syntaxes: list[str]


@dataclass(slots=True)
class AssociateRQ:
    """A decoded A-ASSOCIATE-RQ PDU (PS3.8 §9.3.2).

    ``called_ae_raw``/``calling_ae_raw`` keep the 16 received bytes so the AC can echo them.
    ``max_length`` is ``None`` when the RQ had no 51H sub-item; ``roles`` maps an abstract
    syntax to the proposed ``(scu_role, scp_role)``; ``extended`` maps it to the proposed
    service-class-application-information bytes of a 56H sub-item.
    """

    protocol_version: int
    called_ae: str
    calling_ae: str
    called_ae_raw: bytes
    calling_ae_raw: bytes
    application_context: str | None = None
    contexts: list[ProposedContext] = field(default_factory=list)
    max_length: int | None = None
    implementation_class_uid: str | None = None
    implementation_version_name: str | None = None
    async_window: tuple[int, int] | None = None
    roles: dict[str, tuple[int, int]] = field(default_factory=dict)
    extended: dict[str, bytes] = field(default_factory=dict)
    user_identity: bool = False


def _text(value: memoryview, offset: int, what: str) -> str:
    # UIDs and AE titles use the default repertoire (PS3.8 Annex F, PS3.5 §9); some peers
    # pad UIDs with NUL although PS3.8 says not to, so both pads are stripped.
    try:
        return bytes(value).decode("ascii").strip(" \x00")
    except UnicodeDecodeError:
        raise PDUParameterError(f"{what} is not ASCII", offset) from None


def _items(body: memoryview, start: int, end: int, base: int):
    """Yield ``(type, value, absolute offset)`` for each item in ``body[start:end]``."""
    pos = start
    while pos < end:
        if end - pos < ITEM_HEADER.size:
            raise PDUParameterError(f"truncated item header ({end - pos} bytes left)", base + pos)
        item_type, length = ITEM_HEADER.unpack_from(body, pos)
        value_start = pos + ITEM_HEADER.size
        if length > end - value_start:
            raise PDUParameterError(
                f"item 0x{item_type:02X} length {length} exceeds the {end - value_start} bytes left",
                base + pos,
            )
        yield item_type, body[value_start : value_start + length], base + pos
        pos = value_start + length


def decode_associate_rq(body: memoryview, base: int = 6) -> AssociateRQ:
    """Decode the variable part of an A-ASSOCIATE-RQ PDU.

    Parameters
    ----------
    body : memoryview
        The bytes after the 6-byte PDU header (exactly PDU-length bytes).
    base : int
        Absolute stream offset of ``body[0]``, used in error offsets.

    Returns
    -------
    AssociateRQ

    Raises
    ------
    PDUParameterError
        Truncated or overlong items (reason 6), items where they do not belong or repeated
        where PS3.8 allows one (reason 5), a missing mandatory item (reason 6).
        Unknown item types are skipped (PS3.8 §9.3.1).
    """
    end = len(body)
    if end < ASSOCIATE_FIXED_LENGTH:
        raise PDUParameterError(
            f"A-ASSOCIATE-RQ is {end} bytes, the fixed part alone is {ASSOCIATE_FIXED_LENGTH}", base
        )
    (version,) = _U16.unpack_from(body, 0)
    called_raw = bytes(body[4:20])
    calling_raw = bytes(body[20:36])
    rq = AssociateRQ(
        protocol_version=version,
        called_ae=called_raw.decode("latin-1").strip(" \x00"),
        calling_ae=calling_raw.decode("latin-1").strip(" \x00"),
        called_ae_raw=called_raw,
        calling_ae_raw=calling_raw,
    )
    seen_user_info = False
    seen_ids: set[int] = set()
    for item_type, value, offset in _items(body, ASSOCIATE_FIXED_LENGTH, end, base):
        if item_type == ITEM_APPLICATION_CONTEXT:
            if rq.application_context is not None:
                raise PDUParameterError("second Application Context item", offset, ABORT_UNEXPECTED_PDU_PARAMETER)
            rq.application_context = _text(value, offset, "application context name")
        elif item_type == ITEM_PRESENTATION_CONTEXT_RQ:
            pc = _decode_presentation_context(value, offset)
            if pc.id in seen_ids:
                raise PDUParameterError(
                    f"presentation context ID {pc.id} proposed twice", offset, ABORT_UNEXPECTED_PDU_PARAMETER
                )
            seen_ids.add(pc.id)
            rq.contexts.append(pc)
        elif item_type == ITEM_USER_INFORMATION:
            if seen_user_info:
                raise PDUParameterError("second User Information item", offset, ABORT_UNEXPECTED_PDU_PARAMETER)
            seen_user_info = True
            _decode_user_information(value, offset, rq)
        elif item_type in (ITEM_PRESENTATION_CONTEXT_AC, ITEM_ABSTRACT_SYNTAX, ITEM_TRANSFER_SYNTAX):
            raise PDUParameterError(
                f"item 0x{item_type:02X} does not belong in A-ASSOCIATE-RQ",
                offset,
                ABORT_UNEXPECTED_PDU_PARAMETER,
            )
    # PS3.8 §9.3.2: one 10H, one or more 20H and one 50H are mandatory.
    if rq.application_context is None:
        raise PDUParameterError("A-ASSOCIATE-RQ has no Application Context item", base)
    if not rq.contexts:
        raise PDUParameterError("A-ASSOCIATE-RQ has no Presentation Context item", base)
    if not seen_user_info:
        raise PDUParameterError("A-ASSOCIATE-RQ has no User Information item", base)
    return rq


def _decode_presentation_context(value: memoryview, base: int) -> ProposedContext:
    # 20H item value: PCID(1) reserved(3) then 30H + 40H sub-items (PS3.8 Table 9-13).
    if len(value) < 4:
        raise PDUParameterError("presentation context item shorter than 4 bytes", base)
    pcid = value[0]
    # PS3.8 §9.3.2.2: odd integers 1-255.
    if not pcid & 1:
        raise PDUParameterError(f"presentation context ID {pcid} is not odd", base + 4)
    abstract = None
    transfer: list[str] = []
    for item_type, sub, offset in _items(value, 4, len(value), base + 4):
        if item_type == ITEM_ABSTRACT_SYNTAX:
            if abstract is not None:
                raise PDUParameterError(
                    f"presentation context {pcid} has two abstract syntaxes", offset, ABORT_UNEXPECTED_PDU_PARAMETER
                )
            abstract = _text(sub, offset, "abstract syntax")
        elif item_type == ITEM_TRANSFER_SYNTAX:
            transfer.append(_text(sub, offset, "transfer syntax"))
    if not abstract:
        raise PDUParameterError(f"presentation context {pcid} has no abstract syntax", base)
    if not transfer:
        raise PDUParameterError(f"presentation context {pcid} has no transfer syntax", base)
    return ProposedContext(pcid, abstract, transfer)


def _decode_user_information(value: memoryview, base: int, rq: AssociateRQ) -> None:
    for item_type, sub, offset in _items(value, 0, len(value), base + 4):
        if item_type == SUB_MAXIMUM_LENGTH:
            if len(sub) != 4:
                raise PDUParameterError(f"Maximum Length sub-item is {len(sub)} bytes, not 4", offset)
            (rq.max_length,) = _U32.unpack_from(sub, 0)
        elif item_type == SUB_IMPLEMENTATION_CLASS_UID:
            rq.implementation_class_uid = _text(sub, offset, "implementation class UID")
        elif item_type == SUB_IMPLEMENTATION_VERSION_NAME:
            rq.implementation_version_name = bytes(sub).decode("latin-1").strip(" \x00")
        elif item_type == SUB_ASYNC_OPERATIONS_WINDOW:
            if len(sub) != 4:
                raise PDUParameterError(f"Asynchronous Operations Window is {len(sub)} bytes, not 4", offset)
            rq.async_window = _ASYNC_WINDOW.unpack_from(sub, 0)
        elif item_type == SUB_ROLE_SELECTION:
            # UID-length(2) UID SCU-role(1) SCP-role(1) (PS3.7 Table D.3-9).
            if len(sub) < 2:
                raise PDUParameterError("truncated SCP/SCU Role Selection sub-item", offset)
            (n,) = _U16.unpack_from(sub, 0)
            if len(sub) != n + 4:
                raise PDUParameterError(
                    f"SCP/SCU Role Selection sub-item is {len(sub)} bytes, its UID length says {n + 4}", offset
                )
            uid = _text(sub[2 : 2 + n], offset, "role selection SOP class UID")
            rq.roles[uid] = (sub[2 + n], sub[3 + n])
        elif item_type == SUB_SOP_CLASS_EXTENDED:
            # UID-length(2) UID service-class-application-information (PS3.7 Table D.3-11).
            if len(sub) < 2:
                raise PDUParameterError("truncated SOP Class Extended Negotiation sub-item", offset)
            (n,) = _U16.unpack_from(sub, 0)
            if n > len(sub) - 2:
                raise PDUParameterError("SOP Class Extended Negotiation UID length exceeds the sub-item", offset)
            uid = _text(sub[2 : 2 + n], offset, "extended negotiation SOP class UID")
            rq.extended[uid] = bytes(sub[2 + n :])
        elif item_type == SUB_USER_IDENTITY_RQ:
            rq.user_identity = True


def item(item_type: int, value: bytes) -> bytes:
    """Encode one item or sub-item: type(1) reserved(1) length(2, big-endian) value."""
    return ITEM_HEADER.pack(item_type, len(value)) + value


def encode_associate_ac(
    rq: AssociateRQ,
    results: list[tuple[int, int, str | None]],
    user_info: list[bytes],
) -> bytes:
    """Encode an A-ASSOCIATE-AC answering ``rq`` (PS3.8 §9.3.3).

    Parameters
    ----------
    rq : AssociateRQ
        The request; its AE title fields are echoed (PS3.8 Table 9-17: not tested by the peer).
    results : list of (context ID, result, transfer syntax or None)
        One entry per proposed presentation context, in proposal order.
    user_info : list of bytes
        Encoded 5xH sub-items, in ascending type order.
    """
    parts = [item(ITEM_APPLICATION_CONTEXT, DICOM_APPLICATION_CONTEXT.encode("ascii"))]
    for pcid, result, ts in results:
        # PS3.8 Table 9-18: the 40H sub-item is not significant when the result is not
        # acceptance; it is still sent (empty) because some requestors expect it.
        ts_item = item(ITEM_TRANSFER_SYNTAX, ts.encode("ascii") if ts else b"")
        parts.append(item(ITEM_PRESENTATION_CONTEXT_AC, bytes((pcid, 0, result, 0)) + ts_item))
    parts.append(item(ITEM_USER_INFORMATION, b"".join(user_info)))
    variable = b"".join(parts)
    fixed = _U16.pack(1) + b"\x00\x00" + rq.called_ae_raw + rq.calling_ae_raw + b"\x00" * 32
    return PDU_HEADER.pack(A_ASSOCIATE_AC, len(fixed) + len(variable)) + fixed + variable


def encode_associate_rj(result: int, source: int, reason: int) -> bytes:
    """Encode an A-ASSOCIATE-RJ PDU (PS3.8 Table 9-21)."""
    return PDU_HEADER.pack(A_ASSOCIATE_RJ, 4) + bytes((0, result, source, reason))


def encode_abort(source: int, reason: int) -> bytes:
    """Encode an A-ABORT PDU (PS3.8 Table 9-26); a service-user abort sends reason 0."""
    return PDU_HEADER.pack(A_ABORT, 4) + bytes((0, 0, source, reason))


def sub_maximum_length(value: int) -> bytes:
    return item(SUB_MAXIMUM_LENGTH, _U32.pack(value))


def sub_uid(item_type: int, uid: str) -> bytes:
    return item(item_type, uid.encode("ascii"))


def sub_async_window(invoked: int, performed: int) -> bytes:
    return item(SUB_ASYNC_OPERATIONS_WINDOW, _ASYNC_WINDOW.pack(invoked, performed))


def sub_role_selection(uid: str, scu_role: int, scp_role: int) -> bytes:
    raw = uid.encode("ascii")
    return item(SUB_ROLE_SELECTION, _U16.pack(len(raw)) + raw + bytes((scu_role, scp_role)))


def sub_extended_negotiation(uid: str, info: bytes) -> bytes:
    raw = uid.encode("ascii")
    return item(SUB_SOP_CLASS_EXTENDED, _U16.pack(len(raw)) + raw + info)


# ---------------------------------------------------------------- association requestor


def encode_associate_rq(called_ae: str, calling_ae: str, contexts: list[ProposedContext],
                        user_info: list[bytes]) -> bytes:
    """Encode an A-ASSOCIATE-RQ PDU (PS3.8 §9.3.2): our proposal as association-requestor.

    Parameters
    ----------
    called_ae, calling_ae : str
        AE titles, space-padded to 16 bytes (PS3.8 Table 9-11).
    contexts : list of ProposedContext
        Odd context IDs, one abstract syntax and one or more transfer syntaxes each.
    user_info : list of bytes
        Encoded 5xH sub-items, in ascending type order.
    """
    parts = [item(ITEM_APPLICATION_CONTEXT, DICOM_APPLICATION_CONTEXT.encode("ascii"))]
    for pc in contexts:
        sub = item(ITEM_ABSTRACT_SYNTAX, pc.abstract_syntax.encode("ascii"))
        sub += b"".join(item(ITEM_TRANSFER_SYNTAX, ts.encode("ascii")) for ts in pc.transfer_syntaxes)
        parts.append(item(ITEM_PRESENTATION_CONTEXT_RQ, bytes((pc.id, 0, 0, 0)) + sub))
    parts.append(item(ITEM_USER_INFORMATION, b"".join(user_info)))
    variable = b"".join(parts)
    fixed = (_U16.pack(1) + b"\x00\x00" + called_ae.encode("ascii").ljust(16)[:16]
             + calling_ae.encode("ascii").ljust(16)[:16] + b"\x00" * 32)
    return PDU_HEADER.pack(A_ASSOCIATE_RQ, len(fixed) + len(variable)) + fixed + variable


@dataclass(slots=True)
class AssociateAC:
    """A decoded A-ASSOCIATE-AC PDU (PS3.8 §9.3.3): ``results`` maps each context ID to
    ``(result, transfer syntax)`` (PS3.8 Table 9-18); ``max_length`` is the acceptor's
    Maximum Length (0 or ``None``: no limit)."""

    results: dict[int, tuple[int, str | None]] = field(default_factory=dict)
    max_length: int | None = None
    implementation_class_uid: str | None = None
    implementation_version_name: str | None = None
    roles: dict[str, tuple[int, int]] = field(default_factory=dict)


def decode_associate_ac(body: memoryview, base: int = 6) -> AssociateAC:
    """Decode an A-ASSOCIATE-AC PDU body (the bytes after its 6-byte header).

    Raises
    ------
    PDUParameterError
        Truncated or malformed items, or no User Information item.
    """
    end = len(body)
    if end < ASSOCIATE_FIXED_LENGTH:
        raise PDUParameterError(
            f"A-ASSOCIATE-AC is {end} bytes, the fixed part alone is {ASSOCIATE_FIXED_LENGTH}", base
        )
    ac = AssociateAC()
    seen_user_info = False
    for item_type, value, offset in _items(body, ASSOCIATE_FIXED_LENGTH, end, base):
        if item_type == ITEM_PRESENTATION_CONTEXT_AC:
            # 21H item: PCID(1) reserved(1) result(1) reserved(1) then one 40H sub-item.
            if len(value) < 4:
                raise PDUParameterError("presentation context item shorter than 4 bytes", offset)
            ts = None
            for sub_type, sub, sub_offset in _items(value, 4, len(value), offset + 4):
                if sub_type == ITEM_TRANSFER_SYNTAX:
                    ts = _text(sub, sub_offset, "transfer syntax") or None
            ac.results[value[0]] = (value[2], ts)
        elif item_type == ITEM_USER_INFORMATION:
            seen_user_info = True
            info = AssociateRQ(1, "", "", b"", b"")  # the same sub-items (PS3.7 Annex D.3.3)
            _decode_user_information(value, offset, info)
            ac.max_length = info.max_length
            ac.implementation_class_uid = info.implementation_class_uid
            ac.implementation_version_name = info.implementation_version_name
            ac.roles = info.roles
    if not seen_user_info:
        raise PDUParameterError("A-ASSOCIATE-AC has no User Information item", base)
    return ac
