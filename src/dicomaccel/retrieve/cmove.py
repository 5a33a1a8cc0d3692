"""The C-MOVE SCP (PS3.4 C.4.2): the C-GET sub-operation engine, sending to a configured AE.

A C-MOVE-RQ names its Move Destination (0000,0600) by AE title; only destinations from the
configuration (``--move-destination AE=HOST:PORT``, ``[[move_destination]]``) are known, any
other gets A801 (PS3.4 C.4.2.1.4.1). The Identifier is read as a C-GET's of the same
information model (Patient Root, Study Root, Composite Instance Root with FRAME level).

For the sub-operations we open one association to the destination as requestor
(:func:`dicomaccel.dimse.requestor.request_association`), proposing for each SOP Class
among the matches one presentation context per stored transfer syntax plus Explicit and
Implicit VR Little Endian (PS3.4 C.4.2.3.1 lets the SCP choose). Then
:meth:`CGetSCP.run_suboperations` sends them exactly as for C-GET: stored bytes as mmap
slices when the destination accepted the stored syntax, transcoded otherwise, Pending
responses with the four counters after each, C-CANCEL honoured between sub-operations,
each C-STORE-RQ carrying the Move Originator AE title and Message ID (PS3.7 §9.3.1.1). A
destination that refuses the association, or is not listening, fails every sub-operation
(A702 with the Failed SOP Instance UID List); one that goes away midway fails the rest.

A destination marked ``tls`` (``[[move_destination]]`` ``tls = true``, or
``--move-destination AE=dicom+tls://HOST:PORT``) is reached over TLS (PS3.15 B.9, the BCP 195
profile of :func:`dicomaccel.tls.client_context`); a failed handshake (e.g. a certificate
our CA did not sign) fails every sub-operation like an unreachable destination, with the
TLS error in the Error Comment.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Mapping

from ..archive import InstanceRecord
from ..archive.index import Vanished
from ..dimse.association import Association, AssociationClosedError, Request
from ..dimse.requestor import AssociationRejectedError, RemoteAE
from ..status import Status
from ..syntaxes import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from .cget import MAX_SUBOPERATIONS, CGetSCP, SubOperations, _failed_list, match_records, one_per_image
from .identifier import COMPOSITE_INSTANCE_ROOT_GET, PATIENT_ROOT_GET, STUDY_ROOT_GET, RetrieveRequest

__all__ = ["CMoveSCP", "MOVE_SOP_CLASSES", "MOVE_DESTINATION_UNKNOWN"]

log = logging.getLogger("dicomaccel.retrieve")

PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
COMPOSITE_INSTANCE_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.4.2"
# PS3.4 C.6.1.1, C.6.2.1, Y.6.1: each MOVE model has the levels and keys of its GET twin.
_GET_MODEL = {
    PATIENT_ROOT_MOVE: PATIENT_ROOT_GET,
    STUDY_ROOT_MOVE: STUDY_ROOT_GET,
    COMPOSITE_INSTANCE_ROOT_MOVE: COMPOSITE_INSTANCE_ROOT_GET,
}
MOVE_SOP_CLASSES = tuple(_GET_MODEL)
# PS3.4 Table C.4-2: Refused, Move Destination unknown.
MOVE_DESTINATION_UNKNOWN = 0xA801
# PS3.8 §9.3.2.2: at most 128 presentation contexts in one A-ASSOCIATE-RQ.
_MAX_CONTEXTS = 128
_FALLBACKS = (EXPLICIT_VR_LE, IMPLICIT_VR_LE)


class CMoveSCP:
    """The handler for C-MOVE-RQ: ``await scp(assoc, request)``.

    Parameters
    ----------
    engine : CGetSCP
        The sub-operation engine (and its archive and transcoding pool), shared with C-GET.
    destinations : mapping of str to RemoteAE
        Move Destination AE title -> where it listens, and the TLS context to reach it with.
    ae_title : str
        Our Calling AE Title on the sub-association.
    connect_timeout : float
        Seconds to connect and be accepted by the destination.
    idle_timeout : float or None
        A destination that stops answering is aborted after this long.
    """

    def __init__(self, engine: CGetSCP, destinations: Mapping[str, RemoteAE], *, ae_title: str,
                 connect_timeout: float, idle_timeout: float | None) -> None:
        self.engine = engine
        self.destinations = dict(destinations)
        self.ae_title = ae_title
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout

    async def __call__(self, assoc: Association, request: Request) -> None:
        model = _GET_MODEL.get(request.context.abstract_syntax)
        destination = str(request.command.get("MoveDestination") or "").strip()
        address = self.destinations.get(destination)
        if model is not None and address is None and \
                request.command.get("AffectedSOPClassUID") == request.context.abstract_syntax:
            await assoc.respond(request, MOVE_DESTINATION_UNKNOWN,
                                ErrorComment=f"Move Destination {destination[:16]!r} is not configured")
            return
        query = await self.engine.parse_request(assoc, request, model)
        if query is None:
            return
        loop = asyncio.get_running_loop()
        if query.level == "FRAME":
            (source_uid,) = query.sop_instance_uids
            source = await loop.run_in_executor(None, self.engine.archive.get, source_uid)
            if source is None:
                # The engine answers an unknown source (C000) before any C-STORE.
                await self.engine.retrieve_frames(assoc, request, query)
                return
            records, groups = [source], []
        else:
            records, groups = await loop.run_in_executor(None, match_records, self.engine.archive, query)
        if len(records) > MAX_SUBOPERATIONS:
            await assoc.respond(request, Status.OUT_OF_RESOURCES_SUBOPERATIONS,
                                ErrorComment=f"{len(records)} matches exceed 65535 sub-operations")
            return
        if not records:  # Success with zero counters, no association needed
            await self.engine.run_suboperations(assoc, request, query, records)
            return
        contexts = await loop.run_in_executor(None, _contexts_for, records)
        try:
            target = await address.associate(
                destination, calling_ae=self.ae_title, contexts=contexts,
                timeout=self.connect_timeout, idle_timeout=self.idle_timeout)
        except (OSError, asyncio.TimeoutError, AssociationRejectedError, AssociationClosedError) as exc:
            log.warning("cannot associate with move destination %s at %s:%d: %s", destination,
                        address.host, address.port, exc)
            await self._unreachable(assoc, request, records, query,
                                    _why(destination, exc, address.ssl is not None))
            return
        originator = (assoc.calling_ae, request.message_id)
        try:
            if query.level == "FRAME":
                await self.engine.retrieve_frames(assoc, request, query, target, originator)
            else:
                if groups:
                    records = one_per_image(target, records, groups)
                await self.engine.run_suboperations(assoc, request, query, records, target, originator)
        finally:
            await _close(target)

    async def _unreachable(self, assoc: Association, request: Request, records: list[InstanceRecord],
                           query: RetrieveRequest, comment: str) -> None:
        # PS3.4 C.4.2.1.5: every sub-operation failed; A702 with the Failed SOP Instance UID
        # List (the FRAME source's UID for a FRAME retrieve, as for C-GET).
        counters = SubOperations(remaining=len(records))
        for record in records:
            counters.record("failure", record.sop_instance_uid)
        await assoc.respond(request, Status.OUT_OF_RESOURCES_SUBOPERATIONS, _failed_list(counters, request),
                            ErrorComment=comment, **counters.fields(with_remaining=False))


def _why(destination: str, exc: BaseException, tls: bool) -> str:
    """The Error Comment (0000,0902, an LO: at most 64 characters) for a destination not
    reached; a peer that is not speaking TLS usually just resets the connection."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the certificate of {destination[:16]} is not trusted"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {destination[:16]} failed"
    return f"cannot reach {destination[:16]}" + (" over TLS" if tls else "")


def _contexts_for(records: list[InstanceRecord]) -> list[tuple[str, list[str]]]:
    """One context per (SOP Class, transfer syntax): each stored syntax, then the two
    uncompressed fallbacks (PS3.4 C.4.2.3.1); uncompressed ones first, so that if more than
    128 are needed only compressed-as-stored ones are dropped (those are then transcoded)."""
    stored: dict[str, set[str]] = {}
    for record in records:
        if isinstance(record, Vanished):  # deleted since the match: nothing to propose
            continue
        stored.setdefault(record.sop_class_uid, set()).add(record.transfer_syntax_uid)
    plain = [(cls, [ts]) for cls in stored for ts in _FALLBACKS]
    compressed = [(cls, [ts]) for cls, syntaxes in stored.items() for ts in sorted(syntaxes)
                  if ts not in _FALLBACKS]
    return (plain + compressed)[:_MAX_CONTEXTS]


async def _close(target: Association) -> None:
    if not target.is_established:
        return
    try:
        await target.release()
    except (AssociationClosedError, asyncio.TimeoutError, OSError):
        target.abort()
