"""The archive: instance files plus an index, shared by STOW-RS (writes) and C-GET (reads).

Embedded default: a data directory holding the PS3.10 files exactly as received and an
SQLite index (WAL mode)::

    <path>/index.sqlite3
    <path>/instances/<study>/<series>/<sop>.<token>.dcm
    <path>/tmp/                    temp files and crash-recovery markers

Write path (:meth:`IncomingInstance.commit`): the bytes go to a temp file in ``tmp/`` (same
file system), the header is scanned and validated and the frame index built from an mmap of
that file, then fsync, hard-link into place, and one index transaction. An instance is
reported stored only after that commit. See :mod:`dicomaccel.archive.store` for what start-up
does after a crash.

Thread safety: ``write()`` may run on an event loop thread while ``commit()`` runs in a pool
(several at once); ``get``/``find`` from any thread. Commits of the same SOP Instance UID are
serialised, so two concurrent stores of one UID cannot both win.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import threading
import zlib
from dataclasses import dataclass

from ..status import FailureReason
from .index import Index, InstanceRecord, SQLiteIndex
from .ingest import FrameIndex, Header, StoreFailure, build_frame_index, is_valid_uid, scan
from .store import FileStore, LocalFileStore

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
]

log = logging.getLogger(__name__)

# Free space is re-checked after every this many bytes written (statvfs is cheap, but not
# free per 64 KiB chunk).
SPACE_CHECK_INTERVAL = 1 << 20
# Commits of one SOP Instance UID are serialised on one of these locks (striped by UID).
_LOCK_STRIPES = 64


@dataclass(frozen=True)
class StoreOutcome:
    """A successful store.

    Attributes
    ----------
    record : InstanceRecord
        The index row (for an idempotent re-store: the row already there).
    warning : int or None
        A :class:`~dicomaccel.status.WarningReason` value, or None (the archive stores the
        bytes received and never coerces, so this is None today).
    already_stored : bool
        Identical bytes were already stored under this SOP Instance UID.
    """

    record: InstanceRecord
    warning: int | None
    already_stored: bool


class IncomingInstance:
    """One instance being received into a temp file. Get one from :meth:`Archive.begin`.

    Attributes
    ----------
    bytes_written : int
        Bytes received so far.
    """

    def __init__(self, archive: "Archive") -> None:
        self._archive = archive
        self._fd, self._path = archive.files.create_temp()
        self._open = True
        self.bytes_written = 0
        self._next_check = SPACE_CHECK_INTERVAL

    def write(self, data) -> None:
        """Append ``data`` (any contiguous buffer) to the temp file.

        Raises
        ------
        StoreFailure
            A710 if free space falls below the archive's ``min_free_bytes`` or the disk is
            full (the temp file is removed); 0110 on another I/O error.
        """
        if not self._open:
            raise RuntimeError("instance already committed or aborted")
        view = memoryview(data).cast("B")
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
                self.bytes_written += n
        except OSError as exc:
            self.abort()
            raise _io_failure(exc) from None
        finally:
            view.release()
        if self.bytes_written >= self._next_check:
            self._next_check = self.bytes_written + SPACE_CHECK_INTERVAL
            if not self._archive.writable():
                self.abort()
                raise StoreFailure(
                    FailureReason.OUT_OF_STORAGE, "out of storage space while receiving"
                )

    def commit(self, *, expected_study_uid: str | None = None) -> StoreOutcome:
        """Validate, index and publish the received instance. Blocking; run it in a thread.

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
        if not self._open:
            raise RuntimeError("instance already committed or aborted")
        try:
            return self._archive._commit(self._fd, self._path, self.bytes_written,
                                         expected_study_uid)
        except StoreFailure:
            raise
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                log.exception("I/O error committing an instance")
            raise _io_failure(exc) from exc
        except MemoryError:
            raise
        except Exception as exc:
            # Whatever went wrong, the peer gets a per-instance failure, not a dead request.
            log.exception("unexpected failure committing an instance")
            raise StoreFailure(FailureReason.PROCESSING_FAILURE,
                               "internal error while storing") from exc
        finally:
            self.abort()

    def abort(self) -> None:
        """Discard the temp file (idempotent)."""
        if self._open:
            self._open = False
            os.close(self._fd)
            self._archive.files.remove(self._path)


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
    overwrite : bool
        Replace an instance when the same SOP Instance UID arrives with different bytes
        (default: refuse with 0111 Duplicate SOP Instance).
    min_free_bytes : int
        Refuse (A710) to start or continue receiving when free space is below this.
    allowed_sop_classes : frozenset of str, optional
        Accept only these SOP Class UIDs (0122 otherwise). Default: any valid UID.
    """

    def __init__(self, path, *, fsync: bool = True, overwrite: bool = False,
                 min_free_bytes: int = 256 * 2**20,
                 allowed_sop_classes: frozenset[str] | None = None) -> None:
        self.root = os.path.abspath(os.fspath(path))
        self.overwrite = overwrite
        self.min_free_bytes = min_free_bytes
        self.allowed_sop_classes = allowed_sop_classes
        os.makedirs(self.root, exist_ok=True)
        self.files: FileStore = LocalFileStore(self.root, fsync=fsync)
        self.index: Index = SQLiteIndex(
            os.path.join(self.root, "index.sqlite3"), self.root, fsync=fsync
        )
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        self.files.recover(self.index.has_path)

    # --- reads -------------------------------------------------------------------------
    def get(self, sop_instance_uid: str) -> InstanceRecord | None:
        """The record of one stored instance, or None."""
        return self.index.get(sop_instance_uid)

    def find(self, *, patient_id=None, study_uids=None, series_uids=None,
             sop_instance_uids=None) -> list[InstanceRecord]:
        """Records matching all given keys (AND); a list matches any of its values.

        Ordered by Study, Series, Instance Number (absent last), then SOP Instance UID.
        """
        return self.index.find(
            patient_id=patient_id, study_uids=study_uids, series_uids=series_uids,
            sop_instance_uids=sop_instance_uids,
        )

    def writable(self) -> bool:
        """False when free space is below ``min_free_bytes`` (STOW-RS answers 503)."""
        return self.files.free_bytes() >= self.min_free_bytes

    def close(self) -> None:
        """Close the index (idempotent). Uncommitted incoming instances are not touched."""
        self.index.close()

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
        try:
            return IncomingInstance(self)
        except OSError as exc:
            raise _io_failure(exc) from None

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

    def _commit(self, fd: int, temp_path: str, size: int,
                expected_study_uid: str | None) -> StoreOutcome:
        if size == 0:
            raise StoreFailure(FailureReason.CANNOT_UNDERSTAND, "empty instance")
        self.files.sync(fd)
        mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        try:
            header = scan(mm, size)
            self._validate(header, expected_study_uid)
            frame_index = build_frame_index(mm, header)
            return self._publish(mm, size, temp_path, header, frame_index)
        finally:
            try:
                mm.close()
            except BufferError:
                # A traceback still references a kernel view of the map; the mapping goes
                # away with the last reference.
                pass

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
        if not is_valid_uid(h.sop_class_uid) or (
            self.allowed_sop_classes is not None
            and h.sop_class_uid not in self.allowed_sop_classes
        ):
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

    def _publish(self, buf, size: int, temp_path: str, h: Header,
                 frame_index: FrameIndex | None) -> StoreOutcome:
        sop = h.sop_instance_uid
        with self._locks[zlib.crc32(sop.encode()) % _LOCK_STRIPES]:
            existing = self.index.get(sop)
            if existing is not None:
                if self.files.same_bytes(existing.path, buf, size):
                    return StoreOutcome(existing, None, True)
                if not self.overwrite:
                    raise StoreFailure(
                        FailureReason.DUPLICATE_SOP_INSTANCE,
                        "an instance with this SOP Instance UID and different content is "
                        "already stored", h.sop_class_uid, sop,
                    )
            published = self.files.publish(temp_path, h.study_uid, h.series_uid, sop)
            retired = None
            try:
                if existing is not None:
                    retired = self.files.retire(existing.path)
                record = self.index.put(_record(h, published.path, size, frame_index))
            except BaseException:
                self.files.remove(published.path)
                self.files.finish(published.marker)
                if retired is not None:
                    self.files.finish(retired)
                raise
            self.files.finish(published.marker)
            if retired is not None:
                self.files.remove(existing.path)
                self.files.finish(retired)
        return StoreOutcome(record, None, False)


def _record(h: Header, path: str, size: int, frame_index: FrameIndex | None) -> InstanceRecord:
    return InstanceRecord(
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
    )
