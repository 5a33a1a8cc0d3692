"""The archive: instance files plus an index, shared by STOW-RS (writes) and C-GET (reads).

Embedded default: a data directory holding the PS3.10 files exactly as received and an
SQLite index (WAL mode)::

    <path>/index.sqlite3
    <path>/instances/<study>/<series>/<sop>.<token>.dcm
    <path>/tmp/                    temp files and crash-recovery markers

Write path, and the exact order that makes "acknowledged" mean "durable" (``fsync=True``):

1. :meth:`IncomingInstance.feed` (event loop) holds the received buffers and hands them to a
   writer thread every :data:`SPILL_BYTES`; :meth:`IncomingInstance.write` writes at once.
   The writer appends to a temp file in ``tmp/``, folds the bytes into a CRC-32 and starts
   their writeback (``sync_file_range``), so the disk works while the rest arrives.
2. :meth:`IncomingInstance.commit_async` (or the blocking :meth:`IncomingInstance.commit`)
   has a writer thread scan the header from the instance's first bytes, kept as they
   arrived (an instance refused there is not written, if it was all still held), write what
   is left (and start its writeback), validate the header (scanning the file, mapped, when
   the first bytes did not suffice) and build the frame index: still nothing is visible.
   The instance is then queued for the group commit; no thread waits for it.
3. The group commit (:mod:`.commit`) takes every instance ready at that moment: duplicate
   rule, rename to a *pending* marker, link into ``instances/``, one index transaction for
   the batch, which also lists the batch's rows as *unconfirmed*, then **one** ``syncfs``
   of the archive's file system, which makes the files, their directory entries, the
   markers and the SQLite WAL durable together. Two committer threads overlap one batch's
   flush with the next batch's steps (transactions one at a time).
4. Only then is any store of the batch answered (the committer thread resolves the
   caller's future); markers are dropped afterwards.

A crash before step 3's flush returns may leave any subset of that batch on disk. Start-up
(:meth:`Archive.__init__`) therefore checks every unconfirmed row's file (size and CRC-32)
and deletes the rows whose file did not survive, then removes ``*.part`` files and files
whose marker has no row (:mod:`.store`). A row leaves the unconfirmed list only once a flush
that started after its batch committed has completed: each batch's transaction confirms the
batches such a flush covered (:meth:`Index.committed` is read before each flush; after a
failed flush, whose stores were answered with a failure, nothing it would have covered is
confirmed until a later flush succeeds). So the index never names a missing or partial file,
and nothing a client was told is stored can be lost. With ``fsync=False`` step 3 skips the
flush and the unconfirmed list: a process crash loses nothing (the kernel holds the data), a
power failure may lose the last stores.

Shared index (``index="postgresql://..."``, :mod:`.postgres_index`): several nodes use one
database and one data directory. The index commit is durable on its own, so step 3 flushes
the batch's files *before* the commit and keeps no unconfirmed list: a row only ever names a
file already on stable storage. Temp files and markers carry the node's ID, and start-up
recovery cleans only this node's; its flush counters are its own (``flush.<node>.seq``).

Thread safety: ``feed()`` and ``commit_async()`` on one event loop per instance; ``write()``
and ``commit()`` from any thread (``commit()`` blocks); ``get``/``find`` from any thread. Stores of one SOP Instance UID never share a batch, so two concurrent stores of
one UID cannot both win.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import mmap
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from .. import memory
from ..config import DEFAULTS
from ..policy.store import StorePolicy
from ..status import FailureReason
from .commit import GroupCommit, PreparedInstance, StoreOutcome
from .index import Index, InstanceRecord, RecordList, SQLiteIndex
from .ingest import (FrameIndex, Header, StoreFailure, build_frame_index, filled, identify, is_valid_uid,
                     scan, scan_head)
from .rewrite import rewrite
from .store import FileStore, LocalFileStore, crc32_of

__all__ = [
    "Archive",
    "IncomingInstance",
    "StoreOutcome",
    "StoreFailure",
    "InstanceRecord",
    "FrameIndex",
    "FileStore",
    "LocalFileStore",
    "Index",
    "SQLiteIndex",
    "is_valid_uid",
    "SPILL_BYTES",
]

log = logging.getLogger(__name__)

# Free space is re-checked after every this many bytes written (statvfs is cheap, but not
# free per 64 KiB chunk).
SPACE_CHECK_INTERVAL = 1 << 20
# feed() hands held buffers to the writer thread once this many bytes are held: one thread
# hop per MiB, and at most two MiB per incoming instance held in memory. Smaller hand-offs
# overlap writing with receiving, but each hop costs CPU: at 256 KiB, STOW-RS CT 0.5 MB
# (alternated, quiet machine) gained 4% at 1 client, lost 8% at 4 and cost 0.15-0.25 ms more
# CPU per instance.
SPILL_BYTES = 1 << 20
# Bytes of the start of each instance kept to name it in a failure report (IncomingInstance.named):
# enough for the File Meta Information and the SOP Common attributes of usual data sets.
HEAD_BYTES = 64 << 10
# Writer threads shared by all incoming instances of an archive. Every commit's scan runs on
# one, so this also bounds the memory of concurrent scans (a deflated header: up to
# ingest.MAX_INFLATED_HEADER each).
WRITER_THREADS = 4


class IncomingInstance:
    """One instance being received into a temp file. Get one from :meth:`Archive.begin`.

    Attributes
    ----------
    bytes_written : int
        Bytes received so far (written or held for the writer thread).
    """

    def __init__(self, archive: "Archive") -> None:
        self._archive = archive
        self._fd = -1
        self._path: str | None = None
        self._open = True
        self.bytes_written = 0
        self._in_file = 0
        self._crc = 0
        self._held: list = []
        self._held_bytes = 0
        self._spill: Future | None = None
        self._next_check = SPACE_CHECK_INTERVAL
        self._head = bytearray()  # the first HEAD_BYTES, to name the instance in a failure

    def write(self, data) -> None:
        """Append ``data`` (any contiguous buffer) to the temp file before returning.

        Raises
        ------
        StoreFailure
            A710 if free space falls below the archive's ``min_free_bytes`` or the disk is
            full (the temp file is removed); 0110 on another I/O error.
        """
        self._check_open()
        view = memoryview(data).cast("B")
        self._keep_head(view)
        try:
            self._finish_spill()
            self.bytes_written += view.nbytes
            self._write_views([*self._take_held(), view])
        except StoreFailure as failure:
            raise self.named(failure) from None

    async def feed(self, data) -> None:
        """Event-loop side of :meth:`write`: no file I/O on the calling thread.

        ``data`` must stay unchanged until the instance is committed or aborted (``bytes``
        or a view of it; the multipart scanner's views of the ASGI body chunks are). Every
        :data:`SPILL_BYTES` the held buffers go to a writer thread; if the previous hand-off
        is still being written, this waits for it (back-pressure on the sender).

        Raises
        ------
        StoreFailure
            As :meth:`write`, possibly for bytes fed earlier.
        """
        self._check_open()
        view = memoryview(data)
        self._keep_head(view)
        self._held.append(data)
        self._held_bytes += view.nbytes
        self.bytes_written += view.nbytes
        if self._held_bytes >= SPILL_BYTES:
            if self._spill is not None:
                try:
                    await asyncio.wrap_future(self._spill)
                except StoreFailure as failure:
                    raise self.named(failure) from None
            self._spill = self._archive._writers.submit(self._write_views, self._take_held())

    def commit(self, *, expected_study_uid: str | None = None) -> StoreOutcome:
        """Validate, index and publish the received instance; return once it is durable.
        Blocking; run it in a thread (on an event loop, use :meth:`commit_async`).

        Parameters
        ----------
        expected_study_uid : str, optional
            The Study Instance UID the instance must have (the STOW-RS URL's).

        Returns
        -------
        StoreOutcome

        Raises
        ------
        StoreFailure
            With the Failure Reason; the temp file is removed and nothing is indexed.
        """
        self._check_open()
        done = threading.Event()
        box: list = []
        # On a writer thread like commit_async(): scans (a deflated one holds up to 64 MiB)
        # never run on more than WRITER_THREADS threads of a process at once.
        self._archive._writers.submit(self._prepare, expected_study_uid,
                                      lambda result: (box.append(result), done.set()))
        done.wait()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def commit_async(self, *, expected_study_uid: str | None = None) -> asyncio.Future:
        """Event-loop side of :meth:`commit`: a future of the :class:`StoreOutcome` (or of the
        :class:`StoreFailure`), resolved once the instance is durable.

        The rest of the work runs on the archive's threads and never waits on the loop: a
        writer thread writes what is still held, scans, validates and builds the frame index,
        then queues the instance for the group commit, whose thread resolves the future after
        the batch's flush. Two thread hand-offs per instance (loop → writer, committer →
        loop) instead of four through a blocked worker thread.
        """
        self._check_open()
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def finished(result) -> None:
            try:
                loop.call_soon_threadsafe(_settle, future, result)
            except RuntimeError:  # the loop closed meanwhile: nobody is waiting
                pass

        # Handed over when the loop next goes idle, not now: a writer woken while this task
        # still runs would fight it for the GIL at every system call (measured: ~40 futex
        # calls per instance; with the deferral the writer mostly runs while the loop waits).
        loop.call_soon(self._archive._writers.submit, self._prepare, expected_study_uid, finished)
        return future

    def _prepare(self, expected_study_uid: str | None, finished) -> None:
        """Writer side of a commit: finish the file, prepare it, queue it for the group
        commit; ``finished(outcome or failure)`` is called exactly once, from this thread on
        failure, else from the committer's."""
        try:
            self._finish_spill()
            # The header first, from the bytes in memory: an instance refused there is never
            # written if it fitted in one hand-off, and the scan runs before the write has
            # passed the instance through the CPU's caches.
            header = self._archive._scan_head(self)
            if self._held:
                # With the writeback hint too: the disk takes the data while the batch is
                # indexed, so the flush waits for less (C-STORE on one association, 5
                # alternated runs: 417-477 -> 510-542 instances/s).
                self._write_views(self._take_held())
            item = self._archive._prepare(self, expected_study_uid, header)
        except BaseException as exc:
            self.abort()
            finished(self._failure(exc))
            del exc
            memory.trim()  # a failed scan may have used up to 64 MiB (a deflated header)
            return

        def committed(item: PreparedInstance) -> None:
            if item.published is not None:
                self._path = None  # renamed by the publish: nothing left to remove
            self.abort()
            result = item.result
            finished(self._failure(result) if isinstance(result, BaseException) else result)

        item.on_done = committed
        try:
            self._archive._committer.enqueue(item)
        except BaseException as exc:  # the archive is closing
            self.abort()
            finished(self._failure(exc))

    def _failure(self, exc: BaseException) -> BaseException:
        """What the caller of a commit gets for ``exc``: a named :class:`StoreFailure`, except
        for what is not about this instance (KeyboardInterrupt, SystemExit).

        A failure keeps no traceback or chained exception: the caller holds it until its
        response is sent, and the frames of a failed scan hold its buffers (up to 64 MiB for a
        deflated header), so eight stores failing at once would keep eight of them."""
        if isinstance(exc, StoreFailure):
            exc.__traceback__ = exc.__context__ = exc.__cause__ = None
            return self.named(exc)
        if isinstance(exc, OSError):
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                log.error("I/O error committing an instance", exc_info=exc)
            return self.named(_io_failure(exc))
        if isinstance(exc, MemoryError):
            return self.named(StoreFailure(FailureReason.OUT_OF_MEMORY, "out of memory while storing"))
        if isinstance(exc, Exception):
            # Whatever went wrong, the peer gets a per-instance failure, not a dead request.
            log.error("unexpected failure committing an instance", exc_info=exc)
            return self.named(StoreFailure(FailureReason.PROCESSING_FAILURE,
                                           "internal error while storing"))
        return exc

    def abort(self) -> None:
        """Discard the temp file (idempotent; safe while a hand-off is being written)."""
        if self._open:
            self._open = False
            self._held = []
            spill = self._spill
            if spill is not None and not spill.done():
                spill.add_done_callback(lambda _: self._discard())
            else:
                self._discard()

    def named(self, failure: StoreFailure) -> StoreFailure:
        """``failure`` with the instance's UIDs, read from its first bytes if it has none
        yet, so the peer can tell which instance failed (e.g. A700 or A710 while receiving).
        One failure may be every store's of a batch (an index that failed), so the named one
        is this instance's own copy."""
        if failure.sop_instance_uid is None and self._head:
            own = type(failure).__new__(type(failure))
            own.args = failure.args
            own.__dict__.update(failure.__dict__)
            own.sop_class_uid, own.sop_instance_uid = identify(bytes(self._head))
            return own
        return failure

    def replace_file(self, fd: int, path: str, size: int, crc32: int) -> None:
        """Make another complete temp file this instance's (a rewrite); the received one goes."""
        old_fd, old_path = self._fd, self._path
        self._fd, self._path, self._in_file, self._crc = fd, path, size, crc32
        os.close(old_fd)
        self._archive.files.remove(old_path)

    # --- internals ---------------------------------------------------------------------
    def _keep_head(self, view: memoryview) -> None:
        missing = HEAD_BYTES - len(self._head)
        if missing > 0:
            self._head += view.cast("B")[:missing]

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError("instance already committed or aborted")

    def _take_held(self) -> list:
        held, self._held, self._held_bytes = self._held, [], 0
        return held

    def _finish_spill(self) -> None:
        spill, self._spill = self._spill, None
        if spill is not None:
            spill.result()

    def _write_views(self, views: list) -> None:
        """Writer side: append ``views`` to the temp file (a writer or commit thread)."""
        if not self._open:
            return
        try:
            if self._fd < 0:
                self._fd, self._path = self._archive.files.create_temp()
            start = self._in_file
            crc = self._crc
            for view in views:
                crc = crc32_of(view, crc)
            pending = [m for m in (memoryview(v).cast("B") for v in views) if m.nbytes]
            while pending:
                n = os.writev(self._fd, pending[:1024])  # IOV_MAX
                self._in_file += n
                while n:
                    head = pending[0]
                    if n >= head.nbytes:
                        n -= head.nbytes
                        pending.pop(0)
                    else:
                        pending[0] = head[n:]
                        n = 0
            self._crc = crc
        except OSError as exc:
            self._fail()
            raise _io_failure(exc) from None
        self._archive.files.start_writeback(self._fd, start, self._in_file - start)
        if self._in_file >= self._next_check:
            self._next_check = self._in_file + SPACE_CHECK_INTERVAL
            if not self._archive.writable():
                self._fail()
                raise StoreFailure(
                    FailureReason.OUT_OF_STORAGE, "out of storage space while receiving"
                )

    def _fail(self) -> None:
        self._open = False
        self._discard()

    def _discard(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
            if self._path is not None:
                self._archive.files.remove(self._path)


def _settle(future: asyncio.Future, result) -> None:
    if future.cancelled():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def _io_failure(exc: OSError) -> StoreFailure:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFailure(FailureReason.OUT_OF_STORAGE, "out of storage space")
    return StoreFailure(FailureReason.PROCESSING_FAILURE, "I/O error while storing")


class Archive:
    """Instance files plus an index.

    Parameters
    ----------
    path : str or os.PathLike
        Data directory; ``instances/``, ``tmp/`` and ``index.sqlite3`` are created inside.
        Leftovers of an interrupted run are cleaned here (see :mod:`.store`).
    fsync : bool
        Durability: fsync files, directories and index commits (default). ``False`` is
        faster and still crash-consistent, but the last stores may be lost on power failure.
    index : str, optional
        Where the index lives: None for the embedded SQLite file ``index.sqlite3`` in the
        data directory, or a ``postgresql://USER@HOST:PORT/DB`` URL for a database that
        several nodes share (:mod:`.postgres_index`; the data directory is then shared too).
    node_id : str
        This node's name among those sharing a data directory (with a shared index): its
        temp files carry it, and start-up recovery cleans only those. Every node needs its own.
    overwrite : bool
        Replace an instance when the same SOP Instance UID arrives with different bytes
        (default: refuse with 0111 Duplicate SOP Instance).
    min_free_bytes : int
        Refuse (A710) to start or continue receiving when free space is below this.
    policy : StorePolicy
        Which SOP Classes are stored (0122 otherwise) and what an instance that breaks its
        IOD gets (B007 or A900); default: the Storage SOP Classes, validation ``warn``.
    recover : bool
        Run start-up recovery (default). Worker processes sharing a data directory pass
        False: their parent recovered it before starting them, and recovering under a
        running writer would remove its temp files.
    """

    def __init__(self, path, *, index: str | None = DEFAULTS.index, node_id: str = DEFAULTS.node_id,
                 fsync: bool = True, overwrite: bool = False,
                 min_free_bytes: int = DEFAULTS.min_free_bytes,
                 policy: StorePolicy = StorePolicy(),
                 recover: bool = True) -> None:
        self.root = os.path.abspath(os.fspath(path))
        self.min_free_bytes = min_free_bytes
        self.policy = policy
        os.makedirs(self.root, exist_ok=True)
        # With a shared index other nodes write into this directory too: name our temp files.
        self.files: FileStore = LocalFileStore(self.root, fsync=fsync,
                                               node=None if index is None else node_id)
        try:
            self.index: Index = _open_index(index, self.root, fsync)
        except BaseException:
            self.files.close()
            raise
        if recover:
            self._recover()
        self._writers = ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="archive-write")
        self._committer = GroupCommit(self.files, self.index, overwrite=overwrite, record=_record)

    @property
    def overwrite(self) -> bool:
        """Replace an instance whose SOP Instance UID arrives with different bytes."""
        return self._committer.overwrite

    def _recover(self) -> None:
        # Rows whose batch flush a crash interrupted: keep those whose file is whole.
        bad = []
        for sop, rel, size, crc in self.index.unconfirmed():
            path = os.path.join(self.root, *rel.split("/"))
            if crc is None or not self.files.verify(path, size, crc):
                bad.append((sop, path))
        if bad:
            log.warning("start-up: %d instance(s) of an interrupted commit were incomplete "
                        "and are removed (none had been acknowledged)", len(bad))
        self.index.drop_unconfirmed([sop for sop, _ in bad])
        self.files.flush()
        for _, path in bad:
            self.files.remove(path)
        self.files.recover(self.index.has_path)

    # --- reads -------------------------------------------------------------------------
    def get(self, sop_instance_uid: str) -> InstanceRecord | None:
        """The record of one stored instance, or None."""
        return self.index.get(sop_instance_uid)

    def find(self, *, patient_id=None, study_uids=None, series_uids=None,
             sop_instance_uids=None, lazy: bool = False) -> list[InstanceRecord] | RecordList:
        """Records matching all given keys (AND); a list matches any of its values.

        Ordered by Study, Series, Instance Number (absent last), then SOP Instance UID.
        ``lazy`` returns a :class:`~.index.RecordList`, which reads its records from the
        index a page at a time as they are reached.
        """
        return self.index.find(
            patient_id=patient_id, study_uids=study_uids, series_uids=series_uids,
            sop_instance_uids=sop_instance_uids, lazy=lazy,
        )

    def writable(self) -> bool:
        """False when free space is below ``min_free_bytes`` (STOW-RS answers 503)."""
        return self.files.free_bytes() >= self.min_free_bytes

    def close(self) -> None:
        """Commit what is queued, then close the index (idempotent). Incoming instances not
        yet committed are not touched."""
        if self._committer is not None:
            self._committer.close()
            self._writers.shutdown(wait=True)
            self.index.confirm()  # if the last batch's flush succeeded
            self._committer = None
        self.index.close()
        self.files.close()

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- writes ------------------------------------------------------------------------
    def begin(self) -> IncomingInstance:
        """Start receiving one instance into a temp file.

        Raises
        ------
        StoreFailure
            A710 if free space is already below ``min_free_bytes`` (nothing is created).
        """
        if not self.writable():
            raise StoreFailure(FailureReason.OUT_OF_STORAGE, "out of storage space")
        return IncomingInstance(self)  # the temp file is created by its first write

    def store_bytes(self, data, *, expected_study_uid: str | None = None) -> StoreOutcome:
        """Store one complete PS3.10 file held in memory (tests, DIMSE C-STORE).

        Raises
        ------
        StoreFailure
        """
        if self.files.free_bytes() - memoryview(data).nbytes < self.min_free_bytes:
            raise StoreFailure(FailureReason.OUT_OF_STORAGE, "out of storage space")
        incoming = self.begin()
        incoming.write(data)
        return incoming.commit(expected_study_uid=expected_study_uid)

    def _scan_head(self, incoming: IncomingInstance) -> Header | None:
        """The header of a completely received instance from its first bytes, kept in memory
        as they arrived, when they hold it (``ingest.scan_head``); None when the file must be
        scanned instead (a longer header, a deflated data set, a policy that rewrites)."""
        if incoming.bytes_written == 0:
            raise StoreFailure(FailureReason.CANNOT_UNDERSTAND, "empty instance")
        if self.policy.rewrites:
            return None
        return scan_head(incoming._head, incoming.bytes_written, validate=self.policy.validates)

    def _prepare(self, incoming: IncomingInstance, expected_study_uid: str | None,
                 header: Header | None) -> PreparedInstance:
        """Rewrite if the policy says so, validate and index the frames of a complete temp
        file (a writer thread), scanning it unless ``header`` (:meth:`_scan_head`) is given;
        the instance is ready for the group commit.

        With a header and native Pixel Data (or none) the file is not mapped at all;
        otherwise it is mapped for the scan, the rewrite and the fragments of encapsulated
        Pixel Data, and unmapped here."""
        size = incoming._in_file
        changes, received_crc = [], None
        encapsulated = header is not None and header.pixel_tag and header.pixel_length == -1
        if header is not None and not encapsulated:
            self._validate(header, expected_study_uid)
            frame_index = build_frame_index(None, header)
        else:
            mm = mmap.mmap(incoming._fd, size, access=mmap.ACCESS_READ)
            try:
                if header is None:
                    header = scan(mm, size, validate=self.policy.validates)
                if self.policy.rewrites:
                    new = rewrite(self.files, incoming._fd, mm, size, header,
                                  self.policy.coerce, self.policy.discard)
                    if new is not None:
                        # The rewritten file replaces the received one: scan and check it instead.
                        received_crc = incoming._crc
                        memory.close_map(mm)
                        incoming.replace_file(new.fd, new.path, new.size, new.crc32)
                        size, changes = new.size, new.changes
                        mm = mmap.mmap(new.fd, size, access=mmap.ACCESS_READ)
                        header = scan(mm, size, validate=self.policy.validates)
                self._validate(header, expected_study_uid)
                frame_index = build_frame_index(mm, header)
            finally:
                # Walking an encapsulated Pixel Data's items faulted in (and around) a page per
                # fragment: nothing of the map is kept while the batch flushes.
                memory.close_map(mm)
        return PreparedInstance(
            incoming._path, size, incoming._crc, header, frame_index,
            self.policy.warning(header.problems, changes), changes, received_crc)

    def _validate(self, h: Header, expected_study_uid: str | None) -> None:
        # Report the data set's UIDs, else the File Meta copies, and only valid ones.
        uids = tuple(
            next((u for u in candidates if is_valid_uid(u)), None)
            for candidates in ((h.sop_class_uid, h.media_sop_class_uid),
                               (h.sop_instance_uid, h.media_sop_instance_uid))
        )

        def fail(status, comment):
            return StoreFailure(status, comment, *uids)

        mismatch = FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS
        for value, tag, name in (
            (h.sop_class_uid, "(0008,0016)", "SOP Class UID"),
            (h.sop_instance_uid, "(0008,0018)", "SOP Instance UID"),
            (h.study_uid, "(0020,000D)", "Study Instance UID"),
            (h.series_uid, "(0020,000E)", "Series Instance UID"),
        ):
            if not value:  # Type 1 in the SOP Common / General Study / Series modules
                raise fail(mismatch, f"{name} {tag} is missing or empty")
        # PS3.10 §7.1: the File Meta copies must equal the data set's values.
        if h.media_sop_class_uid != h.sop_class_uid:
            raise fail(mismatch, "Media Storage SOP Class UID (0002,0002) differs from "
                                 "SOP Class UID (0008,0016)")
        if h.media_sop_instance_uid != h.sop_instance_uid:
            raise fail(mismatch, "Media Storage SOP Instance UID (0002,0003) differs from "
                                 "SOP Instance UID (0008,0018)")
        if not is_valid_uid(h.sop_class_uid) or not self.policy.accepts(h.sop_class_uid):
            raise fail(FailureReason.SOP_CLASS_NOT_SUPPORTED,
                       f"SOP Class {h.sop_class_uid[:64]!r} is not supported")
        for value, tag, name in (
            (h.sop_instance_uid, "(0008,0018)", "SOP Instance UID"),
            (h.study_uid, "(0020,000D)", "Study Instance UID"),
            (h.series_uid, "(0020,000E)", "Series Instance UID"),
        ):
            if not is_valid_uid(value):
                raise fail(FailureReason.CANNOT_UNDERSTAND,
                           f"{name} {tag} is not a valid UID: {value[:64]!r}")
        if expected_study_uid is not None and h.study_uid != expected_study_uid:
            raise fail(FailureReason.STUDY_UID_MISMATCH,
                       f"Study Instance UID {h.study_uid} differs from the requested study "
                       f"{expected_study_uid[:64]}")
        if h.problems and self.policy.validation == "reject":
            failure = fail(FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                           f"{len(h.problems)} attribute(s) do not match the IOD: "
                           + "; ".join(p.comment for p in h.problems[:3]))
            failure.problems = h.problems
            raise failure


def _open_index(url: str | None, root: str, fsync: bool) -> Index:
    if url is None:
        return SQLiteIndex(os.path.join(root, "index.sqlite3"), root, fsync=fsync)
    from .postgres_index import PostgresIndex  # psycopg is needed only for this backend

    return PostgresIndex(url, root, fsync=fsync)


def _record(h: Header, path: str, size: int, frame_index: FrameIndex | None,
            crc32: int, received_crc32: int | None) -> InstanceRecord:
    return filled(InstanceRecord, dict(
        stored_at=time.time(),  # made by the committer just before its index commit
        patient_id=h.patient_id,
        patient_name=h.patient_name,
        study_uid=h.study_uid,
        series_uid=h.series_uid,
        sop_instance_uid=h.sop_instance_uid,
        sop_class_uid=h.sop_class_uid,
        transfer_syntax_uid=h.transfer_syntax_uid,
        number_of_frames=h.number_of_frames if h.pixel_tag else 0,
        path=path,
        size=size,
        dataset_offset=h.dataset_offset,
        pixel_offset=h.pixel_offset,
        pixel_value_offset=h.pixel_value_offset,
        pixel_length=h.pixel_length,
        frame_index=frame_index,
        instance_number=h.instance_number,
        rows=h.rows,
        columns=h.columns,
        samples_per_pixel=h.samples_per_pixel,
        bits_allocated=h.bits_allocated,
        photometric_interpretation=h.photometric_interpretation,
        planar_configuration=h.planar_configuration,
        pixel_tag=h.pixel_tag,
        has_alternates=h.has_alternates,
        crc32=crc32,
        received_crc32=received_crc32,
        # The query keys (QIDO-RS, C-FIND) the scan decoded: ingest.QUERY_KEYS.
        specific_character_set=h.specific_character_set,
        study_date=h.study_date,
        study_time=h.study_time,
        accession_number=h.accession_number,
        modality=h.modality,
        referring_physician_name=h.referring_physician_name,
        study_description=h.study_description,
        series_description=h.series_description,
        patient_birth_date=h.patient_birth_date,
        patient_sex=h.patient_sex,
        study_id=h.study_id,
        series_number=h.series_number,
        performed_procedure_step_start_date=h.performed_procedure_step_start_date,
        performed_procedure_step_start_time=h.performed_procedure_step_start_time,
    ))
