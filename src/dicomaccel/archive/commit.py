"""Group commit: committer threads publish, index and flush the instances of many requests at once.

Every store that reaches :meth:`GroupCommit.submit` has its bytes in a complete temp file,
scanned and validated. The committer takes *all* stores queued at that moment as one batch:

1. per instance, the duplicate rule (another SOP Class: 0119; same bytes: already stored;
   different bytes: 0111 unless the archive overwrites; the index is asked about the whole
   batch at once), then publish: rename to a marker, hard-link into ``instances/``;
2. one index transaction for the batch's rows;
3. one flush of the file system (:meth:`FileStore.flush`) for everything above, ordered after
   the commit when the index lives beside the files (SQLite: the flush also covers its WAL)
   and before it when the index is durable on its own;
4. the stores are answered (each item's ``on_done`` callback, called on this thread: an event
   loop's future is resolved from here, with no thread waiting in between), markers dropped,
   overwritten files removed.

So a store's critical path holds one flush, shared by everyone in its batch. There are
:data:`COMMIT_THREADS` committer threads: while one batch flushes, the next is published and
indexed on another thread and starts its own flush (index transactions one at a time, flushes
overlapping), instead of waiting for the first flush to return. A flush confirms in the index
exactly the batches committed before it started (:meth:`~.index.Index.committed`). Two stores
of one SOP Instance UID are never committed at once: a second one waits until the batch
holding the first is done, then sees it as existing.

A store answered "already stored" (the same bytes under a UID the index holds) is answered
after a flush that started once the row was found, so it is not acknowledged before the
stored copy is durable (another worker's batch may still be flushing it).

An index whose unique key decides duplicates on its own (``Index.insert_first``: both the
SQLite and the PostgreSQL index) is not asked in step 1: the batch is inserted,
and a row it refuses (:class:`~.index.DuplicateRow`: the UID is stored) sends its store back
to the queue, marked, to be decided by step 1 against the existing row with the same rules. An
index that refuses a row more than ``MAX_REFUSALS`` times without holding it fails the store
(0110).
So a batch of new instances costs one statement per row and no question (with a database
server, one round trip), a duplicate a few more; while duplicates keep coming (a client
sending a study again), each batch asks first.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..status import FailureReason
from .index import CommitInDoubt, DuplicateRow, Index, IndexUnavailable, InstanceRecord
from .ingest import FrameIndex, Header, StoreFailure
from .store import FileStore, Published

log = logging.getLogger(__name__)

# Most stores in one batch: bounds one transaction and the wait of its first store.
MAX_BATCH = 256
# Committer threads of an archive. With one, a batch waited for the previous batch's flush,
# which took 1.2-1.7 ms with four STOW-RS clients against 0.45 ms with one (each syncfs
# waits for everything dirty, the other worker's writes included), and the committer was
# busy ~72% of the time with batches of ~1.07 stores. Two overlap one batch's index
# transaction and flush with the other's flush.
COMMIT_THREADS = 2
# Times the index may refuse a store's row as a duplicate and then, asked, not hold that UID
# (a row that came and went between two batches) before the store fails (0110) instead of
# going back to the queue: an index that contradicts itself must not keep the committer
# cycling on one store.
MAX_REFUSALS = 3


@dataclass(frozen=True)
class StoreOutcome:
    """A successful store.

    Attributes
    ----------
    record : InstanceRecord
        The index row (for an idempotent re-store: the row already there).
    warning : int or None
        A :class:`~dicomaccel.status.WarningReason` value, or None: B007 when the data set
        does not match its IOD and the policy stores it anyway.
    already_stored : bool
        Identical bytes were already stored under this SOP Instance UID.
    problems : tuple of dicomaccel.policy.iod.Problem
        What the IOD check found (the attributes a B007 names).
    changes : tuple of dicomaccel.policy.rules.Change
        What the coercion and discard rules changed (B000, B006).
    """

    record: InstanceRecord
    warning: int | None
    already_stored: bool
    problems: tuple = ()
    changes: tuple = ()


class PreparedInstance:
    """A complete, validated temp file waiting for the group commit."""

    __slots__ = ("temp_path", "size", "crc32", "header", "frame_index", "warning",
                 "changes", "received_crc32", "published", "retired", "replaces", "refused", "result",
                 "on_done")

    def __init__(self, temp_path: str, size: int, crc32: int, header: Header,
                 frame_index: FrameIndex | None, warning: int | None = None,
                 changes=(), received_crc32: int | None = None,
                 on_done: Callable[["PreparedInstance"], None] | None = None) -> None:
        self.temp_path = temp_path
        self.warning = warning
        self.changes = tuple(changes)
        self.received_crc32 = received_crc32  # set when the policy rewrote the received bytes
        self.size = size
        self.crc32 = crc32
        self.header = header
        self.frame_index = frame_index
        self.published: Published | None = None
        self.retired: tuple[str, str] | None = None  # (old path, obsolete marker)
        self.replaces = False
        self.refused = 0  # times the index refused its row (the UID is stored): ask before inserting
        self.result: StoreOutcome | BaseException | None = None
        self.on_done = on_done  # called once on the committer thread when ``result`` is set

    def outcome(self, record: InstanceRecord, already_stored: bool) -> StoreOutcome:
        return StoreOutcome(record, self.warning, already_stored, self.header.problems, self.changes)


class GroupCommit:
    """The archive's committer threads (see the module docstring)."""

    def __init__(self, files: FileStore, index: Index, *, overwrite: bool,
                 record: Callable[..., InstanceRecord]) -> None:
        self.files = files
        self.index = index
        self.overwrite = overwrite
        self._record = record
        self._queue: collections.deque[PreparedInstance] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._ask_first = False  # the last batch met a stored UID: ask about the next one first
        self._committing: set[str] = set()  # SOP Instance UIDs of the batches being committed
        self._threads = [threading.Thread(target=self._run, name="archive-commit", daemon=True)
                         for _ in range(COMMIT_THREADS)]
        for thread in self._threads:
            thread.start()

    def enqueue(self, item: PreparedInstance) -> None:
        """Queue ``item``; its ``on_done`` is called once its batch is durable (or failed)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("archive is closed")
            self._queue.append(item)
            self._cond.notify()

    def close(self) -> None:
        """Commit what is queued, then stop the threads (idempotent)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (batch := self._take()) and not (self._closed and not self._queue):
                    self._cond.wait()
                if not batch:
                    return
            try:
                self._commit(batch)
            except BaseException as exc:  # never leave a store waiting forever
                log.exception("group commit failed")
                for item in batch:
                    # Each its own failure (the caller names it); "already stored" too, as no
                    # flush followed its lookup.
                    if item.result is None or _already_stored(item):
                        item.result = self.index.store_failure(exc) if isinstance(exc, Exception) else exc
            finally:
                for item in batch:
                    if item.result is not None:
                        _answer(item)
                retry = [item for item in batch if item.result is None]
                with self._cond:
                    self._committing.difference_update(item.header.sop_instance_uid for item in batch)
                    if retry:  # lost a race with another process for the UID: decide again
                        self._queue.extendleft(reversed(retry))
                    if retry or self._queue:  # stores held back for a UID of this batch
                        self._cond.notify()

    def _take(self) -> list[PreparedInstance]:
        """The next batch (under ``_cond``): queued stores in order, at most one per SOP
        Instance UID and none whose UID another committer thread's batch holds; the others
        stay queued, in order."""
        batch, later = [], []
        busy = self._committing
        while self._queue and len(batch) < MAX_BATCH:
            item = self._queue.popleft()
            sop = item.header.sop_instance_uid
            if sop in busy:
                later.append(item)
            else:
                batch.append(item)
                busy.add(sop)
        self._queue.extendleft(reversed(later))
        return batch

    def _commit(self, batch: list[PreparedInstance]) -> None:
        # Who the duplicate rule asks about before inserting (see the module docstring): the
        # whole batch, or, when the index's unique key decides, only stores it refused before.
        asking = batch if not self.index.insert_first or self._ask_first else \
            [item for item in batch if item.refused]
        asked = {item.header.sop_instance_uid for item in asking}
        existing: dict | None = {}
        if asking:
            try:
                # The question for all of them at once (a batch's UIDs are distinct): with a
                # database server, one round trip instead of one per store.
                existing = self.index.lookup_many(list(asked))
            except Exception as exc:
                if not isinstance(self.index.store_failure(exc), IndexUnavailable):
                    existing = None  # not the server: ask one by one, so a failure fails its store alone
                else:  # the database is unavailable: every store of the batch is refused (A7xx)
                    for item in batch:  # each its own failure: the caller names it after its instance
                        item.result = self.index.store_failure(exc)
                    return
        self._ask_first = bool(existing)
        todo, flushed = [], False
        for item in batch:
            try:
                uid = item.header.sop_instance_uid
                found = None if uid not in asked else \
                    self.index.lookup(uid) if existing is None else existing.get(uid)
                if self._place(item, found):
                    todo.append(item)
            except Exception as exc:  # this store fails alone; the caller maps the error
                # An index that lost its server names it (IndexUnavailable, A7xx): the one
                # place where both front ends' stores learn it.
                item.result = self.index.store_failure(exc)
        if not todo:
            self._flush_already_stored(batch, flushed)
            return
        durable_first = self.index.durable_on_commit
        try:
            records = [self._record(item.header, item.published.path, item.size, item.frame_index,
                                    item.crc32, item.received_crc32) for item in todo]
            if durable_first:
                self._flush()
            results = self.index.put_batch(records, [item.replaces for item in todo])
        except BaseException as exc:  # nothing of the batch is indexed: take the files back
            for item in todo:
                self.files.remove(self._undo(item))
                item.result = exc
            raise
        flush_error = None
        if not durable_first and any(isinstance(r, InstanceRecord) for r in results):
            try:
                self._flush()
                flushed = True
            except OSError as exc:
                # The rows are committed and name whole files, but their durability is unknown:
                # no store of the batch is acknowledged. The rows stay unconfirmed, so start-up
                # checks their files; a client that sends again is told "already stored".
                log.error("flushing a committed batch failed: %s", exc)
                flush_error = exc
        for item, result in zip(todo, results):
            if isinstance(result, InstanceRecord):
                self.files.finish(item.published.marker)
                if item.retired is not None:
                    self.files.remove(item.retired[0])
                    self.files.finish(item.retired[1])
                item.result = flush_error or item.outcome(result, False)
            elif isinstance(result, DuplicateRow):
                # The UID is stored (by another writer since our lookup, or before an insert that
                # did not ask): back to the queue, to be decided against the existing row.
                item.temp_path = self._undo(item)
                item.published = None
                item.refused += 1
                self._ask_first = True
                if item.refused > MAX_REFUSALS:
                    log.error("the index refused %s as stored %d times but holds no row of it",
                              item.header.sop_instance_uid, item.refused)
                    self.files.remove(item.temp_path)
                    item.result = StoreFailure(
                        FailureReason.PROCESSING_FAILURE,
                        "the index refused this SOP Instance UID as already stored but holds "
                        "no instance of it", item.header.sop_class_uid, item.header.sop_instance_uid)
            elif isinstance(result, CommitInDoubt):
                # The row may exist: the file and its marker stay for start-up recovery.
                item.result = result
            else:
                self.files.remove(self._undo(item))
                item.result = result
        self._flush_already_stored(batch, flushed, flush_error)

    def _flush(self) -> None:
        """Flush the archive's file system; the index confirms what the flush covered."""
        mark = self.index.committed()
        self.files.flush()
        self.index.flushed(mark)

    def _flush_already_stored(self, batch: list[PreparedInstance], flushed: bool,
                              error: OSError | None = None) -> None:
        """Answer "already stored" only once the stored copy is durable: after a flush that
        started after the row was found (``flushed``: this batch's own flush did; ``error``:
        it failed), unless the index names only files already flushed (``durable_on_commit``)."""
        if flushed or self.index.durable_on_commit:
            return
        already = [item for item in batch if _already_stored(item)]
        if not already:
            return
        if error is None:
            try:
                self._flush()
                return
            except OSError as exc:
                log.error("flushing before answering stores already stored failed: %s", exc)
                error = exc
        for item in already:
            item.result = error

    def _place(self, item: PreparedInstance, existing: tuple | None) -> bool:
        """Apply the duplicate rule (``existing``: the index's :meth:`~.index.Index.lookup`
        of the UID); publish the file if it is to be indexed."""
        h = item.header
        if existing is not None:
            path, size, crc, sop_class, received_crc = existing
            if sop_class != h.sop_class_uid:
                # PS3.7 C (0119 Class-Instance conflict): a SOP Instance UID names one
                # instance of one SOP Class (PS3.3 C.12.1.1.1); no overwrite policy changes that.
                item.result = StoreFailure(
                    FailureReason.CLASS_INSTANCE_CONFLICT,
                    f"SOP Instance UID is already stored with SOP Class {sop_class}",
                    h.sop_class_uid, h.sop_instance_uid,
                )
                return False
            # The same instance again: the same bytes, or, when the policy rewrote it (the
            # rewrite stamps the time), the same received bytes.
            same = (size == item.size and crc in (None, item.crc32)
                    and self.files.same_bytes(path, item.temp_path, item.size)) or \
                (item.received_crc32 is not None and received_crc == item.received_crc32)
            if same:
                item.result = item.outcome(self.index.get(h.sop_instance_uid), True)
                return False
            if not self.overwrite:
                item.result = StoreFailure(
                    FailureReason.DUPLICATE_SOP_INSTANCE,
                    "an instance with this SOP Instance UID and different content is "
                    "already stored", h.sop_class_uid, h.sop_instance_uid,
                )
                return False
            item.retired = (path, self.files.retire(path))
        item.replaces = existing is not None
        try:
            item.published = self.files.publish(item.temp_path, h.study_uid, h.series_uid,
                                                h.sop_instance_uid)
        except BaseException:
            if item.retired is not None:
                self.files.finish(item.retired[1])
                item.retired = None
            raise
        return True

    def _undo(self, item: PreparedInstance) -> str:
        """Take back a published file whose row did not commit; returns its temp path."""
        if item.retired is not None:
            self.files.finish(item.retired[1])
            item.retired = None
        if item.published is None:
            return item.temp_path
        return self.files.unpublish(item.published)


def _already_stored(item: PreparedInstance) -> bool:
    return isinstance(item.result, StoreOutcome) and item.result.already_stored


def _answer(item: PreparedInstance) -> None:
    try:
        item.on_done(item)
    except Exception:  # a caller's callback must not stop the committer
        log.exception("store completion callback failed")
