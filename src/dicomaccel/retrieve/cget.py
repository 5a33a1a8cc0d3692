"""The C-GET SCP (PS3.4 C.4.3): C-STORE sub-operations over the requesting association.

The sub-operation engine (:meth:`CGetSCP.run_suboperations`, :meth:`CGetSCP.retrieve_frames`)
also serves C-MOVE (:mod:`.cmove`): there the C-STOREs go over an association we opened to
the move destination, and only the responses go back to the requester.

For each matching instance we pick a presentation context whose abstract syntax is the
instance's SOP Class and on which the SCU accepted the SCP role (PS3.4 C.5.3). The stored
transfer syntax is sent as stored: the PDVs are memoryview slices of an mmap of the file.
Only when the SCU accepted no context for it is the instance transcoded (transcode.py), in a
worker thread, so one association's decoding never stalls the event loop.

FRAME level (Composite Instance Root, PS3.4 Annex Y) makes exactly one sub-operation: the
named source instance is looked up in the index, the new instance is built from its header
and the selected frames' byte ranges (:func:`.extraction.extract_frames`, in the worker
pool) and sent with its own SOP Instance UID: a new header, then the frames as views of the
mapped source, windowed like a large stored file, so the new instance is never held whole. It
is transcoded only when the SCU accepted no context in the source's transfer syntax. Every failure is final: the status says why (AAxx
from extraction, C000 for an unknown or unreadable source, A702 when the sub-operation
itself fails), the one sub-operation is counted as failed and the Failed SOP Instance UID
List names the source instance (the new UID means nothing to the SCU that asked).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import mmap
import os
import threading
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

from pydicom import dcmread
from pydicom.dataset import Dataset

from .. import metrics
from ..memory import close_map
from ..archive import Archive, InstanceRecord
from ..archive.index import RecordList, Vanished
from ..config import DEFAULTS
from ..dimse.association import Association, AssociationClosedError, Request
from ..dimse.negotiation import PresentationContext
from ..status import Status, status_category
from ..syntaxes import LOSSLESS as _LOSSLESS  # preferred among alternate encodings
from .bulkdata import strip_bulk_data
from .extraction import ExtractedInstance, extract_frames
from .framelist import FrameExtractionError
from .identifier import (
    COMPOSITE_INSTANCE_WITHOUT_BULK_DATA_GET,
    IdentifierError,
    RetrieveRequest,
    decode_identifier,
    parse_identifier,
)
from .transcode import TARGETS, TranscodeError, encode_dataset, transcode

__all__ = ["CGetSCP", "SubOperations", "alternate_groups", "match_records", "one_per_image", "pick_context",
           "MAX_SUBOPERATIONS"]

log = logging.getLogger("dicomaccel.retrieve")

# Sub-operation counters are US (PS3.7 E.1): a request matching more cannot be reported.
MAX_SUBOPERATIONS = 0xFFFF

# Identifiers up to this size are decoded on the event loop: a few elements decode in less
# time than a hop to a worker thread and back costs; bigger ones (up to the 1 MiB cap) go to
# a worker so the loop never stalls on one.
_INLINE_IDENTIFIER = 4096

# Alternate Representation Sequence (PS3.3 C.6.1.1.5.1), as its tag bytes appear in a file.
_ALTERNATE_REPRESENTATION = 0x00083001
# Files up to this size are opened and mapped on the event loop: a thread hop would cost
# more than the few cached page reads (measured: 0.1 ms per CT instance).
_INLINE_MAP = 4 << 20
# Larger files (and the frames of a FRAME-level instance) are read ahead a window of this size
# at a time as they are sent.
_SEND_WINDOW = 8 << 20
# Sent pages are dropped this far behind the position handed to the transport (more than its
# write buffer holds: 1 MiB high-water mark plus a 256 KiB batch, dimse/association.py), a
# step at a time: what a send keeps resident of a mapped file is about their sum.
_RELEASE_SLACK = 2 << 20
_RELEASE_STEP = 1 << 20


@dataclass
class SubOperations:
    """The PS3.4 C.4.3.1.5 counters of one C-GET.

    Attributes
    ----------
    remaining, completed, failed, warning : int
        Number of Remaining / Completed / Failed / Warning Sub-operations.
    failed_uids : list of str
        Failed SOP Instance UID List (0008,0058).
    """

    remaining: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)

    def record(self, category: str, sop_instance_uid: str) -> None:
        """Count one finished sub-operation of PS3.7 status ``category``."""
        self.remaining -= 1
        if category == "success":
            self.completed += 1
        elif category == "warning":
            self.warning += 1
        else:
            self.failed += 1
            self.failed_uids.append(sop_instance_uid)

    def fields(self, *, with_remaining: bool) -> dict:
        """The counters as C-GET-RSP command fields."""
        out = {
            "NumberOfCompletedSuboperations": self.completed,
            "NumberOfFailedSuboperations": self.failed,
            "NumberOfWarningSuboperations": self.warning,
        }
        if with_remaining:
            out["NumberOfRemainingSuboperations"] = self.remaining
        return out


@dataclass(frozen=True)
class _FrameFailure:
    status: int
    comment: str


class CGetSCP:
    """The handler for C-GET-RQ: ``await scp(assoc, request)``.

    Serves Patient Root and Study Root (PATIENT / STUDY / SERIES / IMAGE), Composite
    Instance Root (IMAGE and FRAME) and Composite Instance Retrieve Without Bulk Data
    (IMAGE) from ``archive``.

    Parameters
    ----------
    archive : dicomaccel.archive.Archive
        Where the instances come from.
    executor : concurrent.futures.Executor, optional
        Runs transcoding, bulk-data removal and frame extraction (CPU-heavy). Default: a pool of
        ``os.cpu_count()`` threads shared by all associations, created on first use; index
        look-ups use the event loop's default executor, so they never queue behind decoding
        (except a FRAME retrieve's, made in the same worker call as its extraction).
    pending_interval : float
        Seconds between Pending responses (C-GET and C-MOVE): one goes out after a
        sub-operation once this long has passed since the request or the previous one; 0
        sends one after every sub-operation.
    """

    def __init__(self, archive: Archive, executor: Executor | None = None, *,
                 pending_interval: float = DEFAULTS.pending_interval) -> None:
        self.archive = archive
        self.pending_interval = pending_interval
        self._executor = executor
        self._executor_lock = threading.Lock()

    @property
    def executor(self) -> Executor:
        """The executor transcoding runs in."""
        if self._executor is None:
            with self._executor_lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(os.cpu_count() or 2,
                                                        thread_name_prefix="dicomaccel-transcode")
        return self._executor

    async def __call__(self, assoc: Association, request: Request) -> None:
        query = await self.parse_request(assoc, request)
        if query is None:
            return
        if query.level == "FRAME":
            await self.retrieve_frames(assoc, request, query)
            return

        records, groups = await asyncio.get_running_loop().run_in_executor(None, self._match, query)
        if groups:
            records = one_per_image(assoc, records, groups)
        if len(records) > MAX_SUBOPERATIONS:
            await assoc.respond(request, Status.OUT_OF_RESOURCES_SUBOPERATIONS,
                                ErrorComment=f"{len(records)} matches exceed 65535 sub-operations")
            return
        await self.run_suboperations(assoc, request, query, records)

    async def parse_request(self, assoc: Association, request: Request,
                            model: str | None = None) -> RetrieveRequest | None:
        """The request's Identifier as a :class:`RetrieveRequest`, or None once answered with
        the error (0122, A900 with the Offending Element, C000).

        ``model`` is the C-GET SOP Class whose levels and keys apply (default: the context's
        abstract syntax); a C-MOVE passes the C-GET model of the same information model.
        """
        loop = asyncio.get_running_loop()
        # PS3.7 §9.1.3.1: the Affected SOP Class UID is the context's abstract syntax.
        sop_class = request.context.abstract_syntax
        if request.command.get("AffectedSOPClassUID") != sop_class:
            await assoc.respond(request, Status.SOP_CLASS_NOT_SUPPORTED,
                                ErrorComment="Affected SOP Class UID differs from the presentation context")
            return None
        try:
            if len(request.dataset or b"") <= _INLINE_IDENTIFIER:
                identifier = decode_identifier(request.dataset, request.transfer_syntax)
            else:
                identifier = await loop.run_in_executor(
                    None, decode_identifier, request.dataset, request.transfer_syntax
                )
            return parse_identifier(model or sop_class, identifier)
        except IdentifierError as err:
            fields = {"ErrorComment": err.comment}
            if err.offending is not None:
                fields["OffendingElement"] = [err.offending]
            await assoc.respond(request, err.status, **fields)
            return None

    def _match(self, query: RetrieveRequest) -> tuple[list[InstanceRecord], list[list[int]]]:
        return match_records(self.archive, query)

    async def run_suboperations(self, assoc: Association, request: Request, query: RetrieveRequest,
                                records: list[InstanceRecord], target: Association | None = None,
                                move_originator: tuple[str, int] | None = None) -> None:
        """Send ``records`` as C-STORE sub-operations, then the final response.

        The C-STOREs go over ``target``: the requester's own association (C-GET, the
        default) or one we opened to a move destination (C-MOVE, PS3.4 C.4.2.3, with
        ``move_originator`` = (AE title, Message ID) for each C-STORE-RQ). Pending and final
        responses go to ``request`` on ``assoc``. If ``target`` is not ``assoc`` and it ends,
        the sub-operation in flight and every remaining one fail.
        """
        counters = SubOperations(remaining=len(records))
        priority = request.command.get("Priority", 0)
        without_bulk = query.sop_class_uid == COMPOSITE_INSTANCE_WITHOUT_BULK_DATA_GET
        target = assoc if target is None else target
        # PS3.4 C.4.2.3.1 and C.4.3.3: Pending responses during the sub-operations are
        # optional. One per sub-operation made the requester (getscu) decode a response
        # between every two instances, 15-20% of a CT study's C-GET time; a few per second
        # still show progress and keep a requester's DIMSE timeout from expiring.
        loop = asyncio.get_running_loop()
        interval = self.pending_interval
        last_pending = loop.time()
        paged = isinstance(records, RecordList)
        ahead = _Ahead(target, records, without_bulk)
        try:
            for i in range(len(records)):
                # PS3.4 C.4.3.3.1: after a C-CANCEL-RQ no new sub-operation starts; the one in
                # flight has finished by the time we get here.
                if request.cancelled.is_set():
                    break
                if paged and not records.loaded(i):
                    try:  # the next page of records, off the event loop (a database server's round trip)
                        await loop.run_in_executor(None, records.load, i)
                    except Exception as exc:
                        log.error("cannot read the index during a retrieve: %s", exc)
                        for uid in _uids(records, i):
                            counters.record("failure", uid)
                        break
                record = records[i]
                ahead.at(i)
                if isinstance(record, Vanished):  # deleted or replaced since the match
                    counters.record("failure", record.sop_instance_uid)
                    continue
                try:
                    category = await self.store(target, record, priority, without_bulk, move_originator, ahead)
                except AssociationClosedError:
                    if target is assoc:
                        raise
                    # PS3.4 C.4.2.3.1: the destination is gone; what was not stored failed.
                    log.warning("move destination %s ended the association", target.called_ae)
                    for uid in _uids(records, i):
                        counters.record("failure", uid)
                    break
                counters.record(category, record.sop_instance_uid)
                metrics.child(metrics.CGET_SUBOPERATIONS, category).inc()
                if category != "failure":
                    metrics.child(metrics.BYTES_OUT).inc(record.size - record.dataset_offset)
                if counters.remaining and not request.cancelled.is_set() and \
                        loop.time() - last_pending >= interval:
                    await assoc.respond(request, Status.PENDING, **counters.fields(with_remaining=True))
                    last_pending = loop.time()
        finally:
            ahead.close()
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
        dataset = None if status == Status.SUCCESS else _failed_list(counters, request)
        fields = counters.fields(with_remaining=status == Status.CANCEL)
        if status == Status.OUT_OF_RESOURCES_SUBOPERATIONS:
            fields["ErrorComment"] = "every sub-operation failed"
        await assoc.respond(request, status, dataset, **fields)

    # ------------------------------------------------------------ FRAME level (Annex Y)

    async def retrieve_frames(self, assoc: Association, request: Request, query: RetrieveRequest,
                              target: Association | None = None,
                              move_originator: tuple[str, int] | None = None) -> None:
        """Serve a FRAME-level C-GET: one new instance, one C-STORE sub-operation (PS3.4 Y.4.2.3).

        Parameters
        ----------
        assoc : Association
            The C-GET's association.
        request : Request
            The C-GET-RQ; its final response is sent here.
        query : RetrieveRequest
            A FRAME-level request from :func:`.identifier.parse_identifier` (one SOP
            Instance UID, one Frame Range Key).
        target, move_originator
            As :meth:`run_suboperations`: where the C-STORE goes (C-MOVE).
        """
        target = assoc if target is None else target
        (source_uid,) = query.sop_instance_uids
        keyword, values = query.frame_key
        counters = SubOperations(remaining=1)
        # One hop to a worker for the index look-up, the context choice and the extraction:
        # each hop costs a thread wake-up and an event-loop turn, more than the look-up.
        outcome = await asyncio.get_running_loop().run_in_executor(
            self.executor, self._frame_instance, target, request, source_uid, keyword, values
        )
        if outcome is None:  # cancelled before the sub-operation started
            await self._final(assoc, request, counters)
            return
        if isinstance(outcome, _FrameFailure):
            await self._frame_failure(assoc, request, counters, source_uid, outcome.status,
                                      outcome.comment)
            return
        context, instance, data, on_sent = outcome
        try:
            if request.cancelled.is_set():
                await self._final(assoc, request, counters)
                return
            priority = request.command.get("Priority", 0)
            rsp = await target.send_c_store(context, sop_class_uid=instance.sop_class_uid,
                                            sop_instance_uid=instance.sop_instance_uid, dataset=data,
                                            priority=priority, on_sent=on_sent,
                                            move_originator=move_originator)
        except AssociationClosedError:
            if target is assoc:
                raise
            rsp = {}  # the move destination went away: the sub-operation failed
        finally:
            instance.close()
        counters.record(status_category(rsp.get("Status", 0xC000)), source_uid)
        await self._final(assoc, request, counters)

    def _frame_instance(self, assoc: Association, request: Request, source_uid: str, keyword: str,
                        values: tuple) -> tuple | _FrameFailure | None:
        """In a worker: the context, new instance, data set and ``on_sent`` of a FRAME
        retrieve (see :func:`_extract`), a failure, or None if the C-GET was cancelled first."""
        record = self.archive.get(source_uid)
        if record is None:
            # The standard has no status for an unknown source; a Success with zero
            # sub-operations would hide the error, so it is a failure (C000, IMPL).
            return _FrameFailure(Status.UNABLE_TO_PROCESS, "source SOP Instance UID not found")
        # Y.3.3: the new instance keeps the source's SOP Class and transfer syntax. The
        # negotiated contexts no longer change, so reading them here is safe.
        context = pick_context(assoc.storage_contexts(record.sop_class_uid), record.transfer_syntax_uid, False)
        if context is None:
            # PS3.4 C.4.3.3.1: no usable presentation context -> the sub-operation fails,
            # found out before any work is done.
            return _FrameFailure(Status.OUT_OF_RESOURCES_SUBOPERATIONS,
                                 "no accepted Storage SCP context for the source SOP Class")
        # PS3.4 C.4.3.3.1: after a C-CANCEL-RQ the sub-operation is not started (checked
        # again once the new instance exists: extraction may take a while).
        if request.cancelled.is_set():
            return None
        try:
            return (context, *_extract(record, keyword, values, context.transfer_syntax))
        except FrameExtractionError as exc:
            return _FrameFailure(exc.status, exc.comment)
        except TranscodeError as exc:
            log.warning("cannot send frames of %s in %s: %s", source_uid, context.transfer_syntax, exc)
            return _FrameFailure(Status.OUT_OF_RESOURCES_SUBOPERATIONS, "cannot produce an accepted transfer syntax")
        except OSError as exc:
            log.error("cannot read %s: %s", record.path, exc)
            return _FrameFailure(Status.UNABLE_TO_PROCESS, "cannot read the source instance")

    async def _frame_failure(self, assoc: Association, request: Request, counters: SubOperations,
                             source_uid: str, status: int, comment: str) -> None:
        # PS3.4 Y.4.2.3.1: the new instance could not be made, so its one sub-operation
        # failed; the final status says why (Table Y.4-2) and the Identifier lists the source.
        counters.record("failure", source_uid)
        await assoc.respond(request, status, _failed_list(counters, request),
                            ErrorComment=comment, **counters.fields(with_remaining=False))

    async def store(self, assoc: Association, record: InstanceRecord, priority: int,
                    without_bulk: bool = False, move_originator: tuple[str, int] | None = None,
                    ahead: _Ahead | None = None) -> str:
        """One C-STORE sub-operation of ``record``.

        Parameters
        ----------
        assoc : Association
            The C-GET's association; the SCU is the Storage SCP on it.
        record : InstanceRecord
            The instance to send.
        priority : int
            The C-GET's Priority, used for the C-STORE-RQ (PS3.4 C.4.3.2).
        without_bulk : bool
            Send it without bulk data (PS3.4 Annex Z).
        move_originator : (str, int), optional
            For a C-MOVE sub-operation: the C-MOVE's requester AE title and Message ID
            (PS3.7 §9.3.1.1).
        ahead : _Ahead, optional
            The run of sub-operations this one belongs to: what it prepared for ``record``,
            and what it does while the SCU stores it.

        Returns
        -------
        str
            The PS3.7 category of the outcome: ``"success"``, ``"warning"`` or
            ``"failure"`` (no usable context, cannot transcode or read, or the SCU's
            C-STORE-RSP said so).

        Raises
        ------
        AssociationClosedError
            The association ended; the C-GET cannot be answered any more.
        """
        staged = None if ahead is None else ahead.take(record)
        if staged is not None:
            context = staged.context
        else:
            contexts = assoc.storage_contexts(record.sop_class_uid)
            if not contexts:
                # PS3.4 C.4.3.3.1: no suitable presentation context -> this sub-operation fails.
                log.info("no accepted Storage SCP context for %s (%s)", record.sop_instance_uid,
                         record.sop_class_uid)
                return "failure"
            context = pick_context(contexts, record.transfer_syntax_uid, without_bulk)
            if context is None:
                log.info("SCU accepted no transfer syntax we can produce for %s", record.sop_instance_uid)
                return "failure"
        try:
            if context.transfer_syntax == record.transfer_syntax_uid and not without_bulk:
                rsp = await self._send_stored(assoc, context, record, priority, move_originator,
                                              None if staged is None else staged.mm, ahead)
            else:
                data = await asyncio.get_running_loop().run_in_executor(
                    self.executor, _prepare, record, context.transfer_syntax, without_bulk
                )
                rsp = await assoc.send_c_store(context, sop_class_uid=record.sop_class_uid,
                                               sop_instance_uid=record.sop_instance_uid, dataset=data,
                                               priority=priority, move_originator=move_originator,
                                               while_waiting=ahead)
        except TranscodeError as exc:
            log.warning("cannot send %s in %s: %s", record.sop_instance_uid, context.transfer_syntax, exc)
            return "failure"
        except (OSError, ValueError) as exc:
            if isinstance(exc, AssociationClosedError):
                raise
            log.error("cannot read %s: %s", record.path, exc)
            return "failure"
        return status_category(rsp.get("Status", 0xC000))

    async def _send_stored(self, assoc: Association, context: PresentationContext, record: InstanceRecord,
                           priority: int, move_originator: tuple[str, int] | None = None,
                           mapped: mmap.mmap | None = None, ahead: _Ahead | None = None) -> dict:
        if mapped is not None:  # staged (inline size): no window to keep
            mm, on_sent = mapped, None
        elif record.size <= _INLINE_MAP:
            mm, on_sent = _map_for_sending(record)
        else:
            mm, on_sent = await asyncio.get_running_loop().run_in_executor(None, _map_for_sending, record)
        view = memoryview(mm)[record.dataset_offset:]
        try:
            return await assoc.send_c_store(context, sop_class_uid=record.sop_class_uid,
                                            sop_instance_uid=record.sop_instance_uid, dataset=view,
                                            priority=priority, on_sent=on_sent,
                                            move_originator=move_originator, while_waiting=ahead)
        finally:
            view.release()
            close_map(mm)  # the transport may still hold a slice: then with the last one


def _map_for_sending(record: InstanceRecord) -> tuple[mmap.mmap, _WindowedMap | None]:
    """The stored file mapped, and for a large one the ``on_sent`` that windows it."""
    # Opening and mapping touch the disk: not on the event loop for a large file. A bare
    # descriptor, not a file object (3 us of its 19 per sub-operation).
    fd = os.open(record.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    if record.size <= _INLINE_MAP:
        mm.madvise(mmap.MADV_WILLNEED)
        return mm, None
    return mm, _WindowedMap(mm, [(0, record.dataset_offset, len(mm) - record.dataset_offset)])


class _Staged:
    """A sub-operation prepared while the previous one is stored: the context it goes on and
    its file, mapped (:meth:`_Ahead.__call__`)."""

    __slots__ = ("record", "context", "mm")

    def __init__(self, record: InstanceRecord, context: PresentationContext, mm: mmap.mmap) -> None:
        self.record = record
        self.context = context
        self.mm = mm


class _Ahead:
    """What a run of sub-operations does while the SCU stores an instance (without an
    Asynchronous Operations Window, PS3.7 D.3.3.3, one operation is outstanding at a time, so
    the SCP waits for each C-STORE-RSP): map the next one and pick its
    context, when it goes as stored and is small enough to map on the event loop
    (:data:`_INLINE_MAP`). Between a C-STORE-RSP and the next C-STORE-RQ only the request's
    own bytes remain to write.

    It is the ``while_waiting`` of each C-STORE-RQ sent
    (:meth:`~dicomaccel.dimse.Association.send_c_store`).
    """

    __slots__ = ("assoc", "records", "without_bulk", "next", "staged")

    def __init__(self, assoc: Association, records: list[InstanceRecord] | RecordList, without_bulk: bool) -> None:
        self.assoc = assoc
        self.records = records
        self.without_bulk = without_bulk
        self.next = 0  # the sub-operation to prepare while the current one is stored
        self.staged: _Staged | None = None

    def at(self, i: int) -> None:
        """Sub-operation ``i`` is the current one."""
        self.next = i + 1

    def take(self, record: InstanceRecord) -> _Staged | None:
        """What was prepared for ``record`` (then the caller's), if anything."""
        staged, self.staged = self.staged, None
        if staged is not None and staged.record is not record:
            close_map(staged.mm)
            return None
        return staged

    def __call__(self) -> None:
        self.close()  # what a sub-operation that failed before sending did not take
        try:
            self.staged = self._prepare()
        except Exception:  # a hint only: the sub-operation itself finds out and reports it
            log.debug("could not prepare the next sub-operation", exc_info=True)

    def _prepare(self) -> _Staged | None:
        i, records = self.next, self.records
        if i >= len(records) or (isinstance(records, RecordList) and not records.loaded(i)):
            return None
        record = records[i]
        if isinstance(record, Vanished) or self.without_bulk or record.size > _INLINE_MAP:
            return None
        contexts = self.assoc.storage_contexts(record.sop_class_uid)
        context = pick_context(contexts, record.transfer_syntax_uid, False) if contexts else None
        if context is None or context.transfer_syntax != record.transfer_syntax_uid:
            return None
        mm, _ = _map_for_sending(record)
        return _Staged(record, context, mm)

    def close(self) -> None:
        """The run ended (completed, cancelled, or the association went): unmap what was staged."""
        if self.staged is not None:
            close_map(self.staged.mm)
            self.staged = None


class _WindowedMap:
    """``on_sent`` for a data set whose bytes are ranges of a mapped file (a stored instance:
    one range; a FRAME-level instance: its frames' or fragments' ranges, in file order):
    read the next window ahead, drop the pages sent.

    WILLNEED starts read-ahead into the page cache, so the page faults taken while the
    transport copies the views mostly hit the cache; it maps nothing, so costs no RSS.
    Dropping pages of a read-only file mapping (MADV_DONTNEED) only unmaps them: a view the
    transport still holds faults them back in from the page cache, so this is always safe;
    the slack behind the sent position (more than the transport buffers) keeps that rare.
    A fault may map a whole large folio of the page cache (ext4 on Linux 6.x: up to 2 MiB),
    bytes next to the range included, so a range is dropped together with the file bytes
    between it and the previous range, which nothing sends. What stays resident is the slack,
    one release step and a folio or two, whatever the instance's size.
    """

    __slots__ = ("mm", "spans", "positions", "gaps", "ahead", "released")

    def __init__(self, mm: mmap.mmap, spans: list[tuple[int, int, int]]) -> None:
        self.mm = mm
        self.spans = spans  # (data set offset, file offset, length), in data set order
        self.positions = [position for position, _, _ in spans]
        # Where dropping a range may start: the previous range's end, if before it in the file.
        self.gaps = [offset for _, offset, _ in spans]
        for k in range(1, len(spans)):
            end = spans[k - 1][1] + spans[k - 1][2]
            if end <= spans[k][1]:
                self.gaps[k] = end
        self.ahead = 0  # data set bytes read ahead
        self.released = 0  # data set bytes whose pages were dropped
        self(0)

    def __call__(self, sent: int) -> None:
        page = mmap.PAGESIZE
        if sent + _SEND_WINDOW > self.ahead:
            for _, first, last in self._ranges(self.ahead, self.ahead + _SEND_WINDOW):
                first = first // page * page
                self.mm.madvise(mmap.MADV_WILLNEED, first, last - first)
            self.ahead += _SEND_WINDOW
        upto = sent - _RELEASE_SLACK
        if upto - self.released >= _RELEASE_STEP:
            for k, first, last in self._ranges(self.released, upto):
                if first == self.spans[k][1]:
                    first = self.gaps[k]
                # The page holding the last byte sent may hold bytes not sent yet: it stays.
                first, last = first // page * page, last // page * page
                if last > first:
                    self.mm.madvise(mmap.MADV_DONTNEED, first, last - first)
            self.released = upto

    def _ranges(self, begin: int, end: int):
        """(range index, first file offset, end file offset) of data set bytes ``begin`` to
        ``end``, range by range."""
        for k in range(max(0, bisect.bisect_right(self.positions, begin) - 1), len(self.spans)):
            position, offset, length = self.spans[k]
            if position >= end:
                break
            first = offset + max(0, begin - position)
            last = offset + min(length, end - position)
            if last > first:
                yield k, first, last


def _uids(records: list[InstanceRecord] | RecordList, start: int) -> list[str]:
    """The SOP Instance UIDs of ``records[start:]``, without reading a record from the index."""
    if isinstance(records, RecordList):
        return records.uids[start:]
    return [record.sop_instance_uid for record in records[start:]]


def _failed_list(counters: SubOperations, request: Request) -> bytes:
    """The response Identifier: Failed SOP Instance UID List (0008,0058), PS3.4 C.4.3.1.3.2."""
    ds = Dataset()
    ds.FailedSOPInstanceUIDList = counters.failed_uids
    return encode_dataset(ds, request.transfer_syntax)


def pick_context(contexts: list[PresentationContext], stored: str,
                 without_bulk: bool) -> PresentationContext | None:
    """The context to send an instance stored in ``stored`` on (PS3.4 C.4.3.3.1): the stored
    syntax, else one we transcode to; None if none is usable. ``contexts`` need only a
    ``transfer_syntax`` attribute (our contexts, or an embedder's)."""
    by_syntax: dict[str, PresentationContext] = {}
    for c in contexts:
        by_syntax.setdefault(c.transfer_syntax, c)
    if without_bulk:
        # No Pixel Data left, so nothing to compress: an uncompressed context reads best;
        # any other syntax is still encodable (encode_dataset).
        order = (*TARGETS, stored)
    else:
        order = (stored, *TARGETS)
    for syntax in order:
        if syntax in by_syntax:
            return by_syntax[syntax]
    return contexts[0] if without_bulk else None


def _extract(record: InstanceRecord, keyword: str, values: tuple,
             target: str) -> tuple[ExtractedInstance, list | bytes, _WindowedMap | None]:
    """The new instance of a FRAME retrieve, the data set to send in ``target`` and the
    ``on_sent`` that drops the source pages sent (close the instance once sent)."""
    instance = extract_frames(record, keyword, values)
    try:
        if target == instance.transfer_syntax_uid:
            # The frames go out as views of the mapped source: only the pages in flight are
            # resident (the new instance is never joined; PS3.8 Annex E fragments it anyway).
            windows = _WindowedMap(instance.mapping, instance.spans) if instance.mapping is not None else None
            return instance, instance.pieces, windows
        # Extract first, then transcode only the new instance's bytes (fewer frames to decode).
        return instance, transcode(instance.to_file_bytes(), target), None
    except BaseException:
        instance.close()
        raise


def _prepare(record: InstanceRecord, target: str, without_bulk: bool) -> bytes:
    with open(record.path, "rb") as f:
        data = f.read()
    if without_bulk:
        return strip_bulk_data(data, target)
    return transcode(data, target)


def match_records(archive: Archive, query: RetrieveRequest) -> tuple[RecordList, list[list[int]]]:
    """The records a non-FRAME C-GET names, and the alternate-encoding groups among them
    (blocking: run it off the event loop).

    Records are read from the index a page at a time as the sub-operations reach them (a
    :class:`~dicomaccel.archive.index.RecordList`, its first page read here): the first
    instance leaves without waiting for the whole study's records; one deleted meanwhile is
    a :class:`~dicomaccel.archive.index.Vanished`, a failed sub-operation. PS3.4 C.4.3.3.1:
    one encoding per image at PATIENT/STUDY/SERIES level (pass the groups to
    :func:`one_per_image`); an IMAGE-level request names its instances, so each named one is
    sent (no groups).
    """
    records = archive.find(**query.match_keys(), lazy=True)
    if len(records):
        records.load(0)
    groups = alternate_groups(records) if query.level != "IMAGE" and records.has_alternates else []
    return records, groups


# ---------------------------------------------------------------- alternate encodings


def alternate_groups(records: list[InstanceRecord]) -> list[list[int]]:
    """Which of ``records`` are alternate encodings of one image (PS3.3 C.6.1.1.5.1).

    Two instances are alternates when either lists the other in its top-level Alternate
    Representation Sequence (0008,3001); the relation is closed transitively. The index
    records which instances carry that sequence (``has_alternates``, found by the ingest
    scan), so only those files are read, and only their headers.

    Parameters
    ----------
    records : list of InstanceRecord

    Returns
    -------
    list of list of int
        Index lists into ``records``, one per image stored in more than one encoding, each
        in ``records`` order.
    """
    position = {r.sop_instance_uid: i for i, r in enumerate(records)}
    parent = list(range(len(records)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, record in enumerate(records):
        if not record.has_alternates:
            continue
        for uid in _alternate_references(record):
            j = position.get(uid)
            if j is not None:
                parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(records)):
        groups.setdefault(root(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def _alternate_references(record: InstanceRecord) -> list[str]:
    try:
        ds = dcmread(record.path, stop_before_pixels=True, specific_tags=[_ALTERNATE_REPRESENTATION])
        items = ds[_ALTERNATE_REPRESENTATION].value if _ALTERNATE_REPRESENTATION in ds else []
        return [str(item.ReferencedSOPInstanceUID) for item in items if "ReferencedSOPInstanceUID" in item]
    except Exception as exc:  # unreadable here means unreadable when sent: that reports it
        log.warning("cannot read the Alternate Representation Sequence of %s: %s", record.sop_instance_uid, exc)
        return []


def one_per_image(assoc: Association, records: list[InstanceRecord],
                  groups: list[list[int]]) -> list[InstanceRecord]:
    """``records`` with one encoding kept per group of :func:`alternate_groups`. ``assoc``
    needs only ``storage_contexts(sop_class_uid)`` (our association, or an embedder's)."""
    # PS3.4 C.4.3.3.1 lets the SCP pick by the negotiated transfer syntaxes: prefer the
    # encoding that goes out as stored, then one we can transcode, then a lossless one.
    def cost(i: int) -> tuple[int, bool, int]:
        record = records[i]
        if isinstance(record, Vanished):
            return 3, True, i
        syntaxes = {c.transfer_syntax for c in assoc.storage_contexts(record.sop_class_uid)}
        if record.transfer_syntax_uid in syntaxes:
            rank = 0
        elif syntaxes.intersection(TARGETS):
            rank = 1
        else:
            rank = 2
        return rank, record.transfer_syntax_uid not in _LOSSLESS, i

    dropped: set[int] = set()
    for group in groups:
        keep = min(group, key=cost)
        dropped.update(i for i in group if i != keep)
        log.debug("alternate encodings %s: sending %s",
                  [records[i].sop_instance_uid for i in group], records[keep].sop_instance_uid)
    return [r for i, r in enumerate(records) if i not in dropped]
