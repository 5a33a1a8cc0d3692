"""The C-GET SCP (PS3.4 C.4.3): C-STORE sub-operations over the requesting association.

For each matching instance we pick a presentation context whose abstract syntax is the
instance's SOP Class and on which the SCU accepted the SCP role (PS3.4 C.5.3). The stored
transfer syntax is sent as stored: the PDVs are memoryview slices of an mmap of the file.
Only when the SCU accepted no context for it is the instance transcoded (transcode.py).
"""

from __future__ import annotations

import asyncio
import logging
import mmap
from concurrent.futures import Executor
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from ..archive import Archive, InstanceRecord
from ..dimse.association import Association, AssociationClosedError, Request
from ..status import Status, status_category
from .bulkdata import strip_bulk_data
from .identifier import (
    COMPOSITE_INSTANCE_WITHOUT_BULK_DATA_GET,
    IdentifierError,
    RetrieveRequest,
    decode_identifier,
    parse_identifier,
)
from .transcode import TARGETS, TranscodeError, encode_dataset, transcode

log = logging.getLogger("dicomaccel.retrieve")

# Sub-operation counters are US (PS3.7 E.1): a request matching more cannot be reported.
MAX_SUBOPERATIONS = 0xFFFF


@dataclass
class SubOperations:
    """The PS3.4 C.4.3.1.5 counters of one C-GET."""

    remaining: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)

    def record(self, category: str, sop_instance_uid: str) -> None:
        self.remaining -= 1
        if category == "success":
            self.completed += 1
        elif category == "warning":
            self.warning += 1
        else:
            self.failed += 1
            self.failed_uids.append(sop_instance_uid)

    def fields(self, *, with_remaining: bool) -> dict:
        out = {
            "NumberOfCompletedSuboperations": self.completed,
            "NumberOfFailedSuboperations": self.failed,
            "NumberOfWarningSuboperations": self.warning,
        }
        if with_remaining:
            out["NumberOfRemainingSuboperations"] = self.remaining
        return out


class CGetSCP:
    """The handler for C-GET-RQ: ``await scp(assoc, request)``."""

    def __init__(self, archive: Archive, executor: Executor | None = None) -> None:
        self.archive = archive
        self.executor = executor

    async def __call__(self, assoc: Association, request: Request) -> None:
        loop = asyncio.get_running_loop()
        sop_class = request.command.get("AffectedSOPClassUID", "")
        try:
            identifier = await loop.run_in_executor(
                self.executor, decode_identifier, request.dataset, request.transfer_syntax
            )
            query = parse_identifier(sop_class, identifier)
            if query.level == "FRAME":
                # Built by the FRAME-level service (PS3.4 Annex Y); until it exists we say so.
                raise IdentifierError("FRAME level retrieve is not supported yet", Status.CANNOT_EXTRACT_FRAMES)
        except IdentifierError as err:
            fields = {"ErrorComment": err.comment}
            if err.offending is not None:
                fields["OffendingElement"] = [err.offending]
            await assoc.respond(request, err.status, **fields)
            return

        records = await loop.run_in_executor(self.executor, lambda: self.archive.find(**query.match_keys()))
        if len(records) > MAX_SUBOPERATIONS:
            await assoc.respond(request, Status.OUT_OF_RESOURCES_SUBOPERATIONS,
                                ErrorComment=f"{len(records)} matches exceed 65535 sub-operations")
            return
        await self.run_suboperations(assoc, request, query, records)

    async def run_suboperations(self, assoc: Association, request: Request, query: RetrieveRequest,
                                records: list[InstanceRecord]) -> None:
        counters = SubOperations(remaining=len(records))
        priority = request.command.get("Priority", 0)
        for record in records:
            if request.cancelled.is_set():
                break
            category = await self.store(assoc, record, priority, query)
            counters.record(category, record.sop_instance_uid)
            if counters.remaining and not request.cancelled.is_set():
                await assoc.respond(request, Status.PENDING, **counters.fields(with_remaining=True))
        await self._final(assoc, request, counters)

    async def _final(self, assoc: Association, request: Request, counters: SubOperations) -> None:
        # PS3.4 C.4.3.1.5-8 and C.4.3.3.1: Remaining only in Pending and Cancel responses;
        # the Failed SOP Instance UID List in every Cancel, Failure and Warning response.
        if request.cancelled.is_set() and counters.remaining:
            status = Status.CANCEL
        elif counters.failed == 0 and counters.warning == 0:
            status = Status.SUCCESS
        elif counters.completed == 0 and counters.warning == 0:
            status = Status.OUT_OF_RESOURCES_SUBOPERATIONS
        else:
            status = Status.WARNING
        dataset = None
        if status != Status.SUCCESS:
            ds = Dataset()
            ds.FailedSOPInstanceUIDList = counters.failed_uids
            dataset = encode_dataset(ds, request.transfer_syntax)
        fields = counters.fields(with_remaining=status == Status.CANCEL)
        if status == Status.OUT_OF_RESOURCES_SUBOPERATIONS:
            fields["ErrorComment"] = "every sub-operation failed"
        await assoc.respond(request, status, dataset, **fields)

    async def store(self, assoc: Association, record: InstanceRecord, priority: int,
                    query: RetrieveRequest) -> str:
        """One C-STORE sub-operation; returns its PS3.7 status category."""
        contexts = assoc.storage_contexts(record.sop_class_uid)
        if not contexts:
            log.info("no accepted Storage SCP context for %s (%s)", record.sop_instance_uid, record.sop_class_uid)
            return "failure"
        context = next((c for c in contexts if c.transfer_syntax == record.transfer_syntax_uid), None)
        without_bulk = query.sop_class_uid == COMPOSITE_INSTANCE_WITHOUT_BULK_DATA_GET
        try:
            if context is not None and not without_bulk:
                rsp = await self._send_stored(assoc, context, record, priority)
            else:
                if context is None:
                    context = next((c for t in TARGETS for c in contexts if c.transfer_syntax == t), None)
                    if context is None:
                        log.info("SCU accepted no transfer syntax we can produce for %s", record.sop_instance_uid)
                        return "failure"
                data = await asyncio.get_running_loop().run_in_executor(
                    self.executor, _prepare, record, context.transfer_syntax, without_bulk
                )
                rsp = await assoc.send_c_store(context, sop_class_uid=record.sop_class_uid,
                                               sop_instance_uid=record.sop_instance_uid, dataset=data,
                                               priority=priority)
        except TranscodeError as exc:
            log.warning("cannot transcode %s: %s", record.sop_instance_uid, exc)
            return "failure"
        except OSError as exc:
            if isinstance(exc, AssociationClosedError):
                raise
            log.error("cannot read %s: %s", record.path, exc)
            return "failure"
        return status_category(rsp.get("Status", 0xC000))

    async def _send_stored(self, assoc: Association, context, record: InstanceRecord, priority: int) -> dict:
        with open(record.path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        view = memoryview(mm)[record.dataset_offset:]
        try:
            return await assoc.send_c_store(context, sop_class_uid=record.sop_class_uid,
                                            sop_instance_uid=record.sop_instance_uid, dataset=view,
                                            priority=priority)
        finally:
            view.release()
            try:
                mm.close()
            except BufferError:
                pass  # the transport still holds a slice; the mapping goes with the last view


def _prepare(record: InstanceRecord, target: str, without_bulk: bool) -> bytes:
    with open(record.path, "rb") as f:
        data = f.read()
    if without_bulk:
        return strip_bulk_data(data, target)
    return transcode(data, target)
