"""The Storage Commitment Push Model SOP Class as SCP (PS3.4 Annex J).

A modality asks, with an N-ACTION-RQ (Action Type ID 1, PS3.4 J.3.2), that the archive commit
to the safekeeping of the SOP Instances of its Referenced SOP Sequence (0008,1199), naming the
request by its Transaction UID (0008,1195). We answer the N-ACTION-RSP at once (success only
says the request was received, PS3.4 J.3.2.1.3), then assess every reference and send the
result as an N-EVENT-REPORT-RQ (PS3.4 J.3.3): Event Type ID 1 when every instance is
committed, 2 when a failure exists, with the same Transaction UID, the committed instances in
the Referenced SOP Sequence and the others in the Failed SOP Sequence (0008,1198), each with a
Failure Reason (0008,1197, PS3.3 C.14.1.1).

An instance is committed only when it is durable in the archive: the index has its record
with the same SOP Class, and the archive's flush has covered it. A store is acknowledged
only after the flush of its batch, but the batch's rows are visible from the index commit
that precedes that flush (:mod:`dicomaccel.archive`, step 3), so after reading the records we
wait for one flush of the archive's group commit (``archive.files.flush()``, which returns
once a flush begun after the call completed) before reporting any of them committed. With
``--fsync never`` that flush is skipped, as for every store.

An instance not committed gets the Failure Reason 0119 Class/Instance conflict (stored
under another SOP Class), 0122 Referenced SOP Class not supported (absent, and of a class
the store policy refuses) or 0112 No such object instance; 0110 Processing failure when the
index cannot be read or the flush fails.

The report goes on the association the N-ACTION came on while it is still established
(PS3.4 J.3.3.1.2 Note 1); if the requester released it first, or answers the report with a
failure status there, on a new association we open to the requester's AE title, which must be
a configured destination (``--move-destination AE=HOST:PORT``, ``[[move_destination]]``),
proposing SCP/SCU Role Selection with the SCP role for us (PS3.4 J.3.3.1.3 Note, PS3.7
D.3.3.4); the report is sent only if the requester accepts that role. A report that cannot be
delivered is logged and dropped; the requester may repeat its request with a new Transaction
UID.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from dataclasses import dataclass
from typing import Callable, Mapping

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from .archive import Archive
from .dimse import messages
from .dimse.association import Association, AssociationClosedError, Request
from .dimse.negotiation import PresentationContext
from .dimse.requestor import AssociationRejectedError, RemoteAE
from .elements import encode_element, encode_item, encode_padded
from .retrieve.identifier import IdentifierError, decode_identifier
from .syntaxes import EXPLICIT_VR_LE, IMPLICIT_VR_LE, is_valid_uid

__all__ = [
    "STORAGE_COMMITMENT_PUSH_MODEL",
    "STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE",
    "MAX_REFERENCES",
    "MAX_PENDING_REPORTS",
    "StorageCommitmentSCP",
    "CommitmentRequest",
    "parse_action_information",
    "encode_event_information",
]

log = logging.getLogger("dicomaccel.commitment")

# PS3.4 J.3.5 (and PS3.6 Table A-1): the SOP Class and its well-known SOP Instance.
STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE = "1.2.840.10008.1.20.1.1"
# PS3.4 J.3.2.1.1: Action Type ID 1, "Request Storage Commitment".
ACTION_REQUEST_COMMITMENT = 1
# PS3.4 J.3.3.1.1: Event Type ID 1 "Storage Commitment Request Successful", 2 "Storage
# Commitment Request Complete - Failures Exist".
EVENT_SUCCESSFUL = 1
EVENT_FAILURES_EXIST = 2

# The most references one N-ACTION-RQ may carry; more are refused with 0213 Resource
# limitation. 4096 items of two 64-character UIDs are about 620 KB of Action Information,
# within the 1 MiB data set limit of the DIMSE port.
MAX_REFERENCES = 4096
# Reports under way at once (assessed or waiting for the requester's N-EVENT-REPORT-RSP, for
# up to --idle-timeout, or for a new association): each holds its request's references, so a
# requester that asks and never answers must not pile them up. Beyond, an N-ACTION-RQ is
# refused with 0213 Resource limitation (PS3.7 Annex C) until one ends. The bound is on a
# process's memory, so with --workers N each worker keeps its own count (N x 64 on the node).
MAX_PENDING_REPORTS = 64

# N-ACTION-RSP statuses (PS3.7 Annex C; PS3.4 J.3.2.1.3 lists which apply).
SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110  # the Action Information cannot be decoded
NO_SUCH_SOP_INSTANCE = 0x0112  # a well-formed Requested SOP Instance UID that is not ours
INVALID_ARGUMENT_VALUE = 0x0115  # Action Information present but not as Table J.3-1 wants
INVALID_SOP_INSTANCE = 0x0117  # a Requested SOP Instance UID violating PS3.5 §9.1
NO_SUCH_SOP_CLASS = 0x0118
NO_SUCH_ACTION = 0x0123
RESOURCE_LIMITATION = 0x0213

# Failure Reason (0008,1197) values, PS3.3 C.14.1.1 (0213 Resource limitation and 0131
# Duplicate transaction UID are not used).
FAILURE_PROCESSING = 0x0110
FAILURE_NO_SUCH_OBJECT_INSTANCE = 0x0112
FAILURE_CLASS_INSTANCE_CONFLICT = 0x0119
FAILURE_SOP_CLASS_NOT_SUPPORTED = 0x0122

# Data elements of the Storage Commitment Module (PS3.3 Table C.14-1) and of the SOP Instance
# Reference Macro (PS3.3 Table 10-11).
_RETRIEVE_AE_TITLE = 0x00080054
_REFERENCED_SOP_CLASS_UID = 0x00081150
_REFERENCED_SOP_INSTANCE_UID = 0x00081155
_TRANSACTION_UID = 0x00081195
_FAILURE_REASON = 0x00081197
_FAILED_SOP_SEQUENCE = 0x00081198
_REFERENCED_SOP_SEQUENCE = 0x00081199

_US = struct.Struct("<H")
_REPORT_SYNTAXES = (EXPLICIT_VR_LE, IMPLICIT_VR_LE)


class ActionError(Exception):
    """An N-ACTION-RQ we do not process: the N-ACTION-RSP ``status``, ``comment`` and the
    offending element, if one is to blame (PS3.7 C.4: Offending Element, Error Comment)."""

    def __init__(self, status: int, comment: str, offending: int | None = None) -> None:
        super().__init__(comment)
        self.status, self.comment, self.offending = status, comment, offending


@dataclass(frozen=True)
class CommitmentRequest:
    """What an N-ACTION-RQ asks (PS3.4 Table J.3-1): the Transaction UID and the
    (Referenced SOP Class UID, Referenced SOP Instance UID) pairs, in request order."""

    transaction_uid: str
    references: tuple[tuple[str, str], ...]


def parse_action_information(data: bytes | None, transfer_syntax: str | None) -> CommitmentRequest:
    """Decode and check the Action Information of a Storage Commitment N-ACTION-RQ.

    Raises
    ------
    ActionError
        0110 when the data set cannot be decoded; 0115 when the Transaction UID or the
        Referenced SOP Sequence is missing or invalid (PS3.4 Table J.3-1: both required,
        every item with a Referenced SOP Class UID and a Referenced SOP Instance UID); 0213
        beyond :data:`MAX_REFERENCES` references.
    """
    if not data:
        raise ActionError(INVALID_ARGUMENT_VALUE, "the N-ACTION-RQ carries no Action Information")
    try:
        ds = decode_identifier(data, transfer_syntax)
    except IdentifierError as exc:
        detail = exc.comment.split(": ", 1)[-1].replace("Identifier ", "", 1)
        raise ActionError(PROCESSING_FAILURE, f"Action Information cannot be decoded: {detail}") from None
    transaction_uid = _uid(ds, "TransactionUID")
    if transaction_uid is None:
        raise ActionError(INVALID_ARGUMENT_VALUE, "Transaction UID (0008,1195) missing or not a UID",
                          _TRANSACTION_UID)
    try:
        items = ds.get("ReferencedSOPSequence")
    except Exception:  # a value pydicom cannot convert
        items = None
    if not isinstance(items, Sequence) or not items:
        raise ActionError(INVALID_ARGUMENT_VALUE, "Referenced SOP Sequence (0008,1199) missing or empty",
                          _REFERENCED_SOP_SEQUENCE)
    if len(items) > MAX_REFERENCES:
        raise ActionError(RESOURCE_LIMITATION, f"{len(items)} references; at most {MAX_REFERENCES} per request",
                          _REFERENCED_SOP_SEQUENCE)
    references = []
    for number, item in enumerate(items, 1):
        sop_class, sop_instance = _uid(item, "ReferencedSOPClassUID"), _uid(item, "ReferencedSOPInstanceUID")
        if sop_class is None or sop_instance is None:
            missing = "Class" if sop_class is None else "Instance"
            raise ActionError(INVALID_ARGUMENT_VALUE, f"item {number}: Referenced SOP {missing} UID missing or invalid",
                              _REFERENCED_SOP_CLASS_UID if sop_class is None else _REFERENCED_SOP_INSTANCE_UID)
        references.append((sop_class, sop_instance))
    return CommitmentRequest(transaction_uid, tuple(references))


def _uid(ds: Dataset, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # a value pydicom cannot convert
        return None
    if not isinstance(value, str):
        return None
    value = value.strip(" \x00")
    return value if is_valid_uid(value) else None


def assess(archive: Archive, references: tuple[tuple[str, str], ...],
           accepts: Callable[[str], bool] | None = None) -> list[tuple[str, str, int | None]]:
    """Each reference with ``None`` if committed, else its Failure Reason (PS3.3 C.14.1.1).

    Committed means durable in ``archive``: indexed under the same SOP Class, and covered by
    a flush that began after the index was read (a row is visible from its batch's index
    commit, just before that batch's flush). ``accepts`` (the store policy's) tells a class
    the archive refuses (0122) from one it would store (0112) when the instance is absent.
    Blocking: run it in a thread.
    """
    try:
        records = archive.find(sop_instance_uids=sorted({uid for _, uid in references}))
        if records:
            # The durability barrier: every file and index row read above is on stable
            # storage once this returns (a no-op with fsync off).
            archive.files.flush()
    except Exception:
        log.exception("storage commitment: cannot read the index or flush the archive")
        return [(cls, uid, FAILURE_PROCESSING) for cls, uid in references]
    stored = {r.sop_instance_uid: r.sop_class_uid for r in records}
    results = []
    for sop_class, sop_instance in references:
        found = stored.get(sop_instance)
        if found == sop_class:
            reason = None
        elif found is not None:
            reason = FAILURE_CLASS_INSTANCE_CONFLICT
        elif accepts is not None and not accepts(sop_class):
            reason = FAILURE_SOP_CLASS_NOT_SUPPORTED
        else:
            reason = FAILURE_NO_SUCH_OBJECT_INSTANCE
        results.append((sop_class, sop_instance, reason))
    return results


def encode_event_information(transaction_uid: str, results: list[tuple[str, str, int | None]],
                             transfer_syntax: str, retrieve_ae_title: str | None = None) -> tuple[int, bytes]:
    """The Event Type ID and the Event Information of the N-EVENT-REPORT-RQ (PS3.4 Table
    J.3-2) in ``transfer_syntax`` (Explicit or Implicit VR Little Endian).

    Every reference of the request is in one of the two sequences (PS3.4 J.3.3.1.2); the
    Referenced SOP Sequence is left out when nothing was committed, the Failed SOP Sequence
    when nothing failed. Retrieve AE Title (0008,0054), our AE title, says where the
    committed instances can be retrieved.
    """
    implicit = transfer_syntax == IMPLICIT_VR_LE

    def ui(tag: int, uid: str) -> bytes:
        return encode_padded(tag, b"UI", uid.encode("ascii"), implicit)

    committed = [encode_item(ui(_REFERENCED_SOP_CLASS_UID, c) + ui(_REFERENCED_SOP_INSTANCE_UID, i))
                 for c, i, reason in results if reason is None]
    failed = [encode_item(ui(_REFERENCED_SOP_CLASS_UID, c) + ui(_REFERENCED_SOP_INSTANCE_UID, i)
                          + encode_element(_FAILURE_REASON, b"US", _US.pack(reason), implicit))
              for c, i, reason in results if reason is not None]
    # PS3.5 §7.1: elements in ascending tag order.
    parts = []
    if committed and retrieve_ae_title:
        parts.append(encode_padded(_RETRIEVE_AE_TITLE, b"AE", retrieve_ae_title.encode("ascii"), implicit))
    parts.append(ui(_TRANSACTION_UID, transaction_uid))
    if failed:
        parts.append(encode_element(_FAILED_SOP_SEQUENCE, b"SQ", b"".join(failed), implicit))
    if committed:
        parts.append(encode_element(_REFERENCED_SOP_SEQUENCE, b"SQ", b"".join(committed), implicit))
    return (EVENT_FAILURES_EXIST if failed else EVENT_SUCCESSFUL), b"".join(parts)


class StorageCommitmentSCP:
    """The handler for N-ACTION-RQ: ``await scp(assoc, request)``.

    Parameters
    ----------
    archive : Archive
        Where committed instances must be; its store policy tells 0122 from 0112.
    destinations : mapping of str to RemoteAE
        Requester AE title -> where it listens for a report on a new association (the C-MOVE
        destinations of the configuration), and the TLS context to reach it with (PS3.15 B.9).
    ae_title : str
        Our Calling AE Title on a new association, and the Retrieve AE Title we report.
    connect_timeout : float
        Seconds to connect and be accepted by the requester.
    response_timeout : float or None
        Seconds we wait for the N-EVENT-REPORT-RSP; also the idle timeout of a new association.
    """

    def __init__(self, archive: Archive, destinations: Mapping[str, RemoteAE], *, ae_title: str,
                 connect_timeout: float, response_timeout: float | None) -> None:
        self.archive = archive
        self.destinations = dict(destinations)
        self.ae_title = ae_title
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        # Reports under way; kept so that the tasks are not collected before they finish.
        self._reports: set[asyncio.Task] = set()

    async def __call__(self, assoc: Association, request: Request) -> None:
        try:
            self._check_command(request)
            if len(self._reports) >= MAX_PENDING_REPORTS:
                raise ActionError(RESOURCE_LIMITATION,  # an LO: at most 64 characters
                                  f"{MAX_PENDING_REPORTS} commitment reports under way; ask again later")
            loop = asyncio.get_running_loop()
            # Decoding a few thousand items takes a while: off the event loop.
            wanted = await loop.run_in_executor(None, parse_action_information, request.dataset,
                                                request.transfer_syntax)
        except ActionError as exc:
            log.warning("storage commitment request from %s refused: %04X %s", assoc.calling_ae,
                        exc.status, exc.comment)
            await assoc.respond(request, exc.status, ErrorComment=exc.comment, OffendingElement=exc.offending)
            return
        # PS3.4 J.3.2.1.3: success says the request was received; the result follows.
        await assoc.respond(request, SUCCESS, AffectedSOPInstanceUID=STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE)
        log.info("storage commitment request %s from %s: %d reference(s)", wanted.transaction_uid,
                 assoc.calling_ae, len(wanted.references))
        # Not awaited here: a requester may release as soon as it has the N-ACTION-RSP (PS3.4
        # J.3.2.1.2), which cancels what this handler awaits; the report must outlive that.
        task = asyncio.get_running_loop().create_task(self._report(assoc, request.context, wanted))
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    @staticmethod
    def _check_command(request: Request) -> None:
        command = request.command
        # PS3.7 §10.1.4.1: Requested SOP Class UID, Requested SOP Instance UID, Action Type ID.
        if command.get("RequestedSOPClassUID") != STORAGE_COMMITMENT_PUSH_MODEL:
            raise ActionError(NO_SUCH_SOP_CLASS, "Requested SOP Class UID is not Storage Commitment Push Model")
        instance = command.get("RequestedSOPInstanceUID")
        if instance != STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE:
            # PS3.4 J.3.2.1.2: the well-known SOP Instance of PS3.4 J.3.5.
            if not is_valid_uid(instance):
                raise ActionError(INVALID_SOP_INSTANCE, "Requested SOP Instance UID is not a valid UID")
            raise ActionError(NO_SUCH_SOP_INSTANCE,
                              f"use the well-known instance {STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE}")
        if command.get("ActionTypeID") != ACTION_REQUEST_COMMITMENT:
            raise ActionError(NO_SUCH_ACTION, f"Action Type ID {command.get('ActionTypeID')} is not 1")

    # ------------------------------------------------------------------ the report (PS3.4 J.3.3)

    async def _report(self, assoc: Association, context: PresentationContext, wanted: CommitmentRequest) -> None:
        requester = assoc.calling_ae
        try:
            loop = asyncio.get_running_loop()
            policy = getattr(self.archive, "policy", None)
            results = await loop.run_in_executor(None, assess, self.archive, wanted.references,
                                                 None if policy is None else policy.accepts)
            if assoc.is_established and context.scu_role:
                if await self._send(assoc, context, wanted, results, "the same association"):
                    return
            await self._report_on_new_association(requester, wanted, results)
        except asyncio.CancelledError:
            raise
        except Exception:  # never let a report take the server down
            log.exception("storage commitment report %s for %s failed", wanted.transaction_uid, requester)

    async def _send(self, assoc: Association, context: PresentationContext, wanted: CommitmentRequest,
                    results: list, where: str) -> bool:
        """Send the N-EVENT-REPORT-RQ (PS3.7 §10.3.1) on ``context``; True once the requester
        answered it with a success (or warning) status."""
        event_type, dataset = encode_event_information(wanted.transaction_uid, results, context.transfer_syntax,
                                                       self.ae_title)
        command = {
            "AffectedSOPClassUID": STORAGE_COMMITMENT_PUSH_MODEL,
            "CommandField": messages.N_EVENT_REPORT_RQ,
            "AffectedSOPInstanceUID": STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE,
            "EventTypeID": event_type,
        }
        try:
            response = await asyncio.wait_for(assoc.send_request(context, command, dataset), self.response_timeout)
        except asyncio.TimeoutError:
            # The message may be half written: the association cannot carry another one.
            log.warning("storage commitment report %s: no N-EVENT-REPORT-RSP on %s within %g s",
                        wanted.transaction_uid, where, self.response_timeout)
            assoc.abort()
            return False
        except AssociationClosedError as exc:
            log.info("storage commitment report %s not delivered on %s: %s", wanted.transaction_uid, where, exc)
            return False
        status = response.get("Status", 0xFFFF)
        if status != SUCCESS and not 0xB000 <= status <= 0xBFFF and status not in (0x0001, 0x0107, 0x0116):
            log.warning("storage commitment report %s: %s answered %04X on %s", wanted.transaction_uid,
                        assoc.calling_ae or assoc.called_ae, status, where)
            return False
        failed = sum(1 for *_, reason in results if reason is not None)
        log.info("storage commitment report %s delivered on %s: event type %d, %d committed, %d failed",
                 wanted.transaction_uid, where, event_type, len(results) - failed, failed)
        return True

    async def _report_on_new_association(self, requester: str, wanted: CommitmentRequest, results: list) -> None:
        address = self.destinations.get(requester)
        if address is None:
            log.warning("storage commitment report %s for %s dropped: the requester left and %s is not a "
                        "configured destination", wanted.transaction_uid, requester, requester)
            return
        try:
            # PS3.4 J.3.3.1.3 Note: the Storage Commitment SCP proposes the SCP role as
            # association-requestor (PS3.7 D.3.3.4: SCU-role 0, SCP-role 1).
            target = await address.associate(
                requester, calling_ae=self.ae_title,
                contexts=[(STORAGE_COMMITMENT_PUSH_MODEL, list(_REPORT_SYNTAXES))],
                roles={STORAGE_COMMITMENT_PUSH_MODEL: (0, 1)},
                timeout=self.connect_timeout, idle_timeout=self.response_timeout)
        except (OSError, asyncio.TimeoutError, AssociationRejectedError, AssociationClosedError) as exc:
            log.warning("storage commitment report %s dropped: cannot associate with %s at %s:%d: %s",
                        wanted.transaction_uid, requester, address.host, address.port, exc)
            return
        try:
            # Our role must be SCP, so the requester's SCU (context.scu_role).
            context = next((c for c in target.contexts.values() if c.accepted and c.scu_role), None)
            if context is None:
                log.warning("storage commitment report %s dropped: %s did not accept the SCP role for "
                            "Storage Commitment", wanted.transaction_uid, requester)
                return
            if not await self._send(target, context, wanted, results, "a new association"):
                log.warning("storage commitment report %s for %s dropped", wanted.transaction_uid, requester)
        finally:
            await _close(target)


async def _close(target: Association) -> None:
    if not target.is_established:
        return
    try:
        await target.release()
    except (AssociationClosedError, asyncio.TimeoutError, OSError):
        target.abort()
