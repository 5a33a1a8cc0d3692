"""EVT_C_GET handlers for a pynetdicom AE: C-GET served from a dicomaccel archive or from
the server's own storage (PS3.4 C.4.3, Annex Y FRAME level, Annex Z).

pynetdicom calls the handler with the event and sends what it yields: first the number of
C-STORE sub-operations, then one ``(0xFF00, dataset)`` per sub-operation (it makes the
sub-operation, counts it and sends the Pending response), or a ``(status, identifier)``
pair that ends the C-GET. The handlers here

- decode and check the Identifier with :mod:`dicomaccel.retrieve.identifier` (the same
  checks and statuses as our own C-GET SCP: A900 with the Offending Element, C000, AA04);
- match from the archive's index (:func:`dicomaccel.retrieve.cget.match_records`), one
  encoding per image (PS3.4 C.4.3.3.1, :func:`~dicomaccel.retrieve.cget.one_per_image`);
  or, for the server's own storage, from its ``match`` callback;
- send each instance in its stored transfer syntax when the SCU accepted it, as raw
  elements over an mmap of the file (:mod:`.datasets`): nothing is decoded; otherwise
  transcode it (:func:`dicomaccel.retrieve.transcode.transcode`), as our SCP does;
- at FRAME level make the one new instance with
  :func:`dicomaccel.retrieve.extract_frames` (frames sliced by the kernels, never decoded);
- stop starting sub-operations once the SCU sent C-CANCEL-RQ (``event.is_cancelled``,
  PS3.4 C.4.3.3.1): pynetdicom then answers Cancel (FE00) with the remaining count.

pynetdicom answers a count below 1 with Success, so a request that fails before any
sub-operation (a bad Identifier, an unknown FRAME source, more than 65535 matches) is
reported as one sub-operation that failed: the final response carries our status and
Error Comment, and Number of Failed Sub-operations 1 (pynetdicom computes it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from pydicom.dataset import Dataset

from ...archive import Archive, StoreFailure
from ...archive.index import Vanished
from ...archive.ingest import scan
from ...retrieve.bulkdata import strip_bulk_data
from ...retrieve.cget import MAX_SUBOPERATIONS, match_records, one_per_image, pick_context
from ...retrieve.extraction import extract_frames
from ...retrieve.framelist import FrameExtractionError
from ...retrieve.identifier import (
    COMPOSITE_INSTANCE_WITHOUT_BULK_DATA_GET,
    IdentifierError,
    RetrieveRequest,
    decode_identifier,
    parse_identifier,
)
from ...retrieve.transcode import TranscodeError, transcode
from ...status import Status
from .datasets import extracted_dataset, map_file, stored_dataset, unsendable

__all__ = ["ArchiveGetHandler", "StorageGetHandler", "Locate", "Match"]

log = logging.getLogger("dicomaccel.integrations.pynetdicom")

Locate = Callable[[str], "str | os.PathLike | bytes | bytearray | memoryview | None"]
"""SOP Instance UID -> the PS3.10 file: a path, or the whole file in a buffer; None if unknown."""
Match = Callable[[RetrieveRequest], Iterable[str]]
"""A checked non-FRAME request -> the SOP Instance UIDs it names, in the order to send."""

_PENDING = 0xFF00


@dataclass
class _Source:
    """One instance to send: where its bytes are and what its header says."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    dataset_offset: int
    pixel_offset: int
    buffer: object  # the whole PS3.10 file (an mmap of it, or the caller's buffer)


class _Contexts:
    """The accepted presentation contexts on which we may send C-STORE-RQs (we are the
    Storage SCU: PS3.4 C.4.3.3, role selection PS3.7 D.3.3.4), in the shape
    :func:`~dicomaccel.retrieve.cget.pick_context` and ``one_per_image`` read."""

    def __init__(self, assoc) -> None:
        self._by_class: dict[str, list[_Context]] = {}
        for cx in assoc.accepted_contexts:
            if cx.as_scu:
                self._by_class.setdefault(str(cx.abstract_syntax), []).append(_Context(str(cx.transfer_syntax[0])))

    def storage_contexts(self, sop_class_uid: str) -> list["_Context"]:
        return self._by_class.get(sop_class_uid, [])


@dataclass(frozen=True)
class _Context:
    transfer_syntax: str


def _status(code: int, comment: str | None = None, offending: int | None = None) -> Dataset:
    # PS3.7 C.4: Error Comment (0000,0902) is LO, 64 characters at most.
    ds = Dataset()
    ds.Status = int(code)
    if comment:
        ds.ErrorComment = comment[:64]
    if offending is not None:
        ds.OffendingElement = [offending]
    return ds


def _failed(*uids: str) -> Dataset:
    # PS3.4 C.4.3.1.3.2: the Identifier of a Failure, Warning or Cancel response.
    ds = Dataset()
    ds.FailedSOPInstanceUIDList = list(uids)
    return ds


class _GetHandler:
    """What both handlers share: the request, the sub-operation loop, FRAME level."""

    def __call__(self, event) -> Iterator:
        sop_class = str(event.request.AffectedSOPClassUID)
        identifier = event.request.Identifier
        data = identifier.getvalue() if identifier is not None else None
        try:
            query = parse_identifier(sop_class, decode_identifier(data, str(event.context.transfer_syntax)))
        except IdentifierError as err:
            yield 1
            yield _status(err.status, err.comment, err.offending), _failed()
            return
        if query.level == "FRAME":
            yield from self._frames(event, query)
            return
        contexts = _Contexts(event.assoc)
        try:
            items = self._match(query, contexts)
        except IdentifierError as err:
            yield 1
            yield _status(err.status, err.comment), _failed()
            return
        except Exception:
            log.exception("C-GET: matching failed")
            yield 1
            yield _status(Status.UNABLE_TO_PROCESS, "matching failed"), _failed()
            return
        if len(items) > MAX_SUBOPERATIONS:
            # Sub-operation counters are US (PS3.7 E.1).
            yield 1
            yield _status(Status.OUT_OF_RESOURCES_SUBOPERATIONS,
                          f"{len(items)} matches exceed 65535 sub-operations"), _failed()
            return
        yield len(items)
        without_bulk = query.sop_class_uid == COMPOSITE_INSTANCE_WITHOUT_BULK_DATA_GET
        for item in items:
            # PS3.4 C.4.3.3.1: after a C-CANCEL-RQ no new sub-operation starts.
            if event.is_cancelled:
                yield Status.CANCEL, None
                return
            yield _PENDING, self._dataset(item, contexts, without_bulk)

    # --- what a subclass provides -------------------------------------------------------
    def _match(self, query: RetrieveRequest, contexts: _Contexts) -> list:
        raise NotImplementedError

    def _source(self, item) -> _Source | None:
        raise NotImplementedError

    def _frame_source(self, uid: str):
        """``(source for extract_frames, SOP Class UID, transfer syntax)`` or None."""
        raise NotImplementedError

    @staticmethod
    def _uid(item) -> str:
        return item

    # --- one sub-operation ---------------------------------------------------------------
    def _dataset(self, item, contexts: _Contexts, without_bulk: bool) -> Dataset:
        uid = self._uid(item)
        try:
            source = self._source(item)
        except (OSError, ValueError, StoreFailure) as exc:
            log.error("C-GET: cannot read %s: %s", uid, exc)
            return unsendable(None, uid)
        if source is None:
            log.warning("C-GET: %s is not stored", uid)
            return unsendable(None, uid)
        context = pick_context(contexts.storage_contexts(source.sop_class_uid),
                               source.transfer_syntax_uid, without_bulk)
        if context is None:
            # PS3.4 C.4.3.3.1: no suitable presentation context -> the sub-operation fails.
            log.info("C-GET: no accepted Storage context for %s (%s in %s)", uid,
                     source.sop_class_uid, source.transfer_syntax_uid)
            return unsendable(source.sop_class_uid, uid)
        target = context.transfer_syntax
        try:
            if target == source.transfer_syntax_uid and not without_bulk:
                return stored_dataset(source.buffer, target, source.dataset_offset, source.pixel_offset)
            view = memoryview(source.buffer)
            data = strip_bulk_data(view, target) if without_bulk else transcode(view, target)
            return stored_dataset(data, target, 0, -1)
        except (TranscodeError, OSError, ValueError) as exc:
            log.warning("C-GET: cannot send %s in %s: %s", uid, target, exc)
            return unsendable(source.sop_class_uid, uid)

    # --- FRAME level (PS3.4 Annex Y) ---------------------------------------------------
    def _frames(self, event, query: RetrieveRequest) -> Iterator:
        # Y.4.2.3: exactly one sub-operation, the new instance; every failure is final and
        # the Failed SOP Instance UID List names the source.
        (uid,) = query.sop_instance_uids
        keyword, values = query.frame_key
        yield 1
        try:
            found = self._frame_source(uid)
        except (OSError, ValueError, StoreFailure) as exc:
            log.error("C-GET: cannot read %s: %s", uid, exc)
            found = None
        if found is None:
            # No status names an unknown source; Success with no sub-operation would hide
            # it, so it is C000 (as our own SCP answers).
            yield _status(Status.UNABLE_TO_PROCESS, "source SOP Instance UID not found"), _failed(uid)
            return
        source, sop_class, syntax = found
        context = pick_context(_Contexts(event.assoc).storage_contexts(sop_class), syntax, False)
        if context is None:
            yield _status(Status.OUT_OF_RESOURCES_SUBOPERATIONS,
                          "no accepted Storage SCP context for the source SOP Class"), _failed(uid)
            return
        if event.is_cancelled:
            yield Status.CANCEL, None
            return
        try:
            instance = extract_frames(source, keyword, values)
            if context.transfer_syntax == instance.transfer_syntax_uid:
                dataset = extracted_dataset(instance)
            else:  # Y.3.3 keeps the source's syntax; transcode only the new instance's bytes
                dataset = stored_dataset(transcode(instance.to_file_bytes(), context.transfer_syntax),
                                         context.transfer_syntax, 0, -1)
        except FrameExtractionError as exc:
            yield _status(exc.status, exc.comment), _failed(uid)
            return
        except (TranscodeError, ValueError) as exc:
            log.warning("C-GET: cannot send frames of %s in %s: %s", uid, context.transfer_syntax, exc)
            yield _status(Status.OUT_OF_RESOURCES_SUBOPERATIONS,
                          "cannot produce an accepted transfer syntax"), _failed(uid)
            return
        except OSError as exc:
            log.error("C-GET: cannot read %s: %s", uid, exc)
            yield _status(Status.UNABLE_TO_PROCESS, "cannot read the source instance"), _failed(uid)
            return
        if event.is_cancelled:
            yield Status.CANCEL, None
            return
        yield _PENDING, dataset


class ArchiveGetHandler(_GetHandler):
    """EVT_C_GET handler serving C-GET from a dicomaccel :class:`~dicomaccel.archive.Archive`.

    Every level of Patient Root and Study Root (PATIENT, STUDY, SERIES, IMAGE), Composite
    Instance Root Retrieve - GET (IMAGE, FRAME) and Composite Instance Retrieve Without Bulk
    Data - GET (IMAGE)::

        ae.start_server(("", 11112), evt_handlers=[(evt.EVT_C_GET, ArchiveGetHandler(archive))])

    Parameters
    ----------
    archive : Archive
        Where the instances come from (read only; share it with our other services).
    """

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    def _match(self, query: RetrieveRequest, contexts: _Contexts) -> list:
        records, groups = match_records(self.archive, query)
        return one_per_image(contexts, records, groups) if groups else records

    @staticmethod
    def _uid(item) -> str:
        return item.sop_instance_uid

    def _source(self, record) -> _Source | None:
        if isinstance(record, Vanished):  # deleted since the match
            return None
        return _Source(record.sop_class_uid, record.sop_instance_uid, record.transfer_syntax_uid,
                       record.dataset_offset, record.pixel_offset, map_file(record.path))

    def _frame_source(self, uid: str):
        record = self.archive.get(uid)
        if record is None:
            return None
        return record, record.sop_class_uid, record.transfer_syntax_uid


class StorageGetHandler(_GetHandler):
    """EVT_C_GET handler for a server with its own storage.

    Parameters
    ----------
    locate : callable
        ``locate(sop_instance_uid)`` -> the PS3.10 file: a path, or the whole file in a
        buffer (bytes, an mmap; not copied); None if the server does not have it.
    match : callable, optional
        ``match(request)`` -> the SOP Instance UIDs a checked
        :class:`~dicomaccel.retrieve.identifier.RetrieveRequest` names (PATIENT, STUDY,
        SERIES or IMAGE level; its ``patient_id``, ``study_uids``, ``series_uids`` and
        ``sop_instance_uids`` are the keys). Without it, IMAGE and FRAME levels are served
        (the Identifier names the instances) and other levels answer C000.

    Headers are read by our scanner (:func:`dicomaccel.archive.ingest.scan`), frames cut by
    the kernels (:func:`dicomaccel.retrieve.extract_frames`); pydicom decodes nothing.
    """

    def __init__(self, locate: Locate, match: Match | None = None) -> None:
        self.locate = locate
        self.match = match

    def _match(self, query: RetrieveRequest, contexts: _Contexts) -> list:
        if self.match is not None:
            return list(self.match(query))
        if query.level == "IMAGE":
            return list(query.sop_instance_uids)
        raise IdentifierError(f"{query.level} level is not served here", Status.UNABLE_TO_PROCESS)

    def _open(self, uid: str):
        found = self.locate(uid)
        if found is None:
            return None
        if isinstance(found, (str, os.PathLike)):
            return map_file(found)
        return memoryview(found).cast("B")

    def _source(self, uid: str) -> _Source | None:
        buffer = self._open(uid)
        if buffer is None:
            return None
        header = scan(buffer)
        return _Source(header.sop_class_uid, header.sop_instance_uid or uid, header.transfer_syntax_uid,
                       header.dataset_offset, header.pixel_offset, buffer)

    def _frame_source(self, uid: str):
        buffer = self._open(uid)
        if buffer is None:
            return None
        header = scan(buffer)
        return buffer, header.sop_class_uid, header.transfer_syntax_uid
