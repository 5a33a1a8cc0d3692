"""The C-STORE SCP (PS3.4 Annex B): instances sent over DIMSE go into the same archive, under
the same policy, as STOW-RS.

The upper layer hands a C-STORE-RQ up as soon as its command set is complete; its data set
follows as a :class:`~dicomaccel.dimse.stream.DataSetStream` of PDV payloads (read-only
views of the buffers the kernel read them into, never reused, so they are fed without a
copy). The instance becomes a PS3.10 file as it arrives: a File Meta Information group built
from the command (Affected SOP Class and Instance UID, PS3.7 §9.1.1.1) and the presentation context's
transfer syntax (PS3.10 §7.1), then the data set exactly as received, both fed to
:meth:`Archive.begin`'s :class:`~dicomaccel.archive.IncomingInstance` (writer threads write
each MiB; nothing is held whole). The C-STORE-RSP is sent once the instance is durable
(``commit_async``), with the status the shared store policy decided (PS3.4 B.2.3,
:func:`dicomaccel.status.c_store_status`) and an Error Comment on every failure and warning.
"""

from __future__ import annotations

import logging

from . import metrics
from .archive import Archive, StoreFailure
from .dimse.association import Association, Request
from .logs import access
from .policy.sop_classes import STORAGE_SOP_CLASSES
from .policy.store import StorePolicy
from .retrieve.extraction import file_meta_bytes
from .status import FailureReason, Status, c_store_status, status_category
from .syntaxes import DEFLATED, ENCAPSULATED, NATIVE

__all__ = ["CStoreSCP", "STORE_TRANSFER_SYNTAXES", "storage_sop_classes"]

log = logging.getLogger("dicomaccel.store")

# What we store as received: every transfer syntax of syntaxes.py (the archive's scan reads
# them all, PS3.5 §10 and Annex A).
STORE_TRANSFER_SYNTAXES = NATIVE | DEFLATED | ENCAPSULATED

# The archive checks the File Meta copies against the data set (PS3.10 §7.1); here those
# copies came from the command, so a mismatch is the command's (PS3.4 B.2.3: A900).
_COMMAND_WORDING = (
    ("Media Storage SOP Class UID (0002,0002)", "Affected SOP Class UID (0000,0002)"),
    ("Media Storage SOP Instance UID (0002,0003)", "Affected SOP Instance UID (0000,1000)"),
)


def storage_sop_classes(policy: StorePolicy) -> tuple[str, ...]:
    """The abstract syntaxes the C-STORE SCP accepts: every Storage SOP Class (PS3.6 Table
    A-1) and every class added by ``--accept-sop-class``, less those the policy refuses."""
    return tuple(uid for uid in sorted({*STORAGE_SOP_CLASSES, *policy.accept_sop_classes})
                 if policy.accepts(uid))


class CStoreSCP:
    """The handler for C-STORE-RQ: ``await scp(assoc, request)`` (``request.stream`` set).

    Parameters
    ----------
    archive : Archive
        Where instances go; its :class:`~dicomaccel.policy.store.StorePolicy` decides.
    max_instance_bytes : int, optional
        A data set larger than this is drained unstored and refused with A700.
    """

    def __init__(self, archive: Archive, max_instance_bytes: int | None = None) -> None:
        self.archive = archive
        self.max_instance_bytes = max_instance_bytes

    async def __call__(self, assoc: Association, request: Request) -> None:
        stream = request.stream
        command = request.command
        context = request.context
        sop_class = command.get("AffectedSOPClassUID")
        sop_instance = command.get("AffectedSOPInstanceUID")
        if stream is None:
            # PS3.7 §9.3.1.1: a C-STORE-RQ always carries its data set.
            return await self._answer(assoc, request, FailureReason.CANNOT_UNDERSTAND,
                                      "C-STORE-RQ without a data set")
        failure = self._check_command(context.abstract_syntax, sop_class, sop_instance)
        incoming = None
        if failure is None:
            try:
                incoming = self.archive.begin()
            except StoreFailure as exc:  # A710: below the free-space reserve
                failure = exc
        if incoming is None:
            await stream.discard()
            return await self._answer(assoc, request, failure.status, failure.comment)
        try:
            await self._receive(incoming, stream, sop_class, sop_instance, context.transfer_syntax)
        except StoreFailure as exc:
            incoming.abort()
            if not stream.complete:
                await stream.discard()
            return await self._answer(assoc, request, exc.status, _command_wording(exc.comment))
        except BaseException:
            # The association ended (or the handler was cancelled) mid-data-set: nothing of
            # this instance stays (the temp file goes, PS3.4 B.2.3 has no partial store).
            incoming.abort()
            raise
        # From here the writer threads own the instance; if the association ends meanwhile
        # it may still be stored (unacknowledged, so the sender will send it again: the same
        # bytes are then an idempotent success).
        try:
            outcome = await incoming.commit_async()
        except StoreFailure as exc:
            return await self._answer(assoc, request, exc.status, _command_wording(exc.comment),
                                      exc.problems)
        problems = outcome.problems
        changes = outcome.changes
        status = Status.SUCCESS if outcome.warning is None else outcome.warning
        comment = _warning_comment(problems, changes) if outcome.warning is not None else None
        await self._answer(assoc, request, status, comment, problems, changes)

    def _check_command(self, context_class: str, sop_class, sop_instance) -> StoreFailure | None:
        # PS3.7 §9.1.1.1: the Affected SOP Class UID names the context's abstract syntax.
        if sop_class != context_class:
            return StoreFailure(FailureReason.SOP_CLASS_NOT_SUPPORTED,
                                "Affected SOP Class UID differs from the presentation context")
        if not self.archive.policy.accepts(sop_class):
            return StoreFailure(FailureReason.SOP_CLASS_NOT_SUPPORTED,
                                f"SOP Class {sop_class[:40]} is not supported")
        if not sop_instance:
            return StoreFailure(FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                "Affected SOP Instance UID (0000,1000) is missing")
        return None

    async def _receive(self, incoming, stream, sop_class: str, sop_instance: str,
                       transfer_syntax: str) -> None:
        """Feed the file meta and the data set, as it arrives, to ``incoming``."""
        try:
            meta = file_meta_bytes(sop_class, sop_instance, transfer_syntax)
        except Exception:  # a UID pydicom cannot write: the data set check would fail anyway
            raise StoreFailure(FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                               "Affected SOP Instance UID (0000,1000) is not a valid UID") from None
        limit = self.max_instance_bytes
        await incoming.feed(meta)
        while True:
            fragments = await stream.read()
            if not fragments:
                break
            if limit is not None and stream.received > limit:
                raise StoreFailure(FailureReason.OUT_OF_MEMORY,
                                   f"data set exceeds the {limit}-byte instance limit")
            for fragment in fragments:
                await incoming.feed(fragment)
        if stream.received == 0:
            raise StoreFailure(FailureReason.CANNOT_UNDERSTAND, "empty data set")

    async def _answer(self, assoc: Association, request: Request, status: int, comment: str | None,
                      problems: tuple = (), changes: tuple = ()) -> None:
        status = c_store_status(status)
        fields = {"AffectedSOPInstanceUID": request.command.get("AffectedSOPInstanceUID") or None}
        category = status_category(status)
        if category != "success":
            # PS3.4 Table B.2-1: Error Comment (and Offending Element where we know it) with
            # every failure and warning status.
            fields["ErrorComment"] = comment or "not stored"
            tags = [p.tag for p in problems] + [c.tag for c in changes]
            if tags:
                fields["OffendingElement"] = tags[:16]
        metrics.child(metrics.CSTORE_INSTANCES, category, f"{status:04X}").inc()
        access("cstore", f"{assoc.calling_ae} C-STORE {fields['AffectedSOPInstanceUID']} {status:04X}",
               calling_ae=assoc.calling_ae, sop_instance_uid=fields["AffectedSOPInstanceUID"],
               status=f"{status:04X}")
        await assoc.respond(request, status, **fields)


def _command_wording(comment: str) -> str:
    for file_meta, command in _COMMAND_WORDING:
        comment = comment.replace(file_meta, command)
    return comment


def _warning_comment(problems: tuple, changes: tuple) -> str:
    if problems:
        return f"{len(problems)} attribute(s) do not match the IOD: " + "; ".join(
            p.comment for p in problems[:3])
    coerced = [c.keyword for c in changes if c.action == "coerced"]
    if coerced:
        return "coerced: " + ", ".join(coerced)
    return "discarded: " + ", ".join(c.keyword for c in changes)

