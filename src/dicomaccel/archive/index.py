"""The instance index: one row per stored SOP Instance, SQLite (WAL mode) by default.

The row holds the query keys (Patient, Study, Series, SOP Instance), what a retriever needs
to serve the file without parsing it (transfer syntax, offsets of the data set and of the
Pixel Data value, and the frame index BLOB), and the file's path relative to the archive
root, so an archive directory can be moved as a whole.
"""

from __future__ import annotations

import abc
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace

from .ingest import FrameIndex

__all__ = ["InstanceRecord", "Index", "SQLiteIndex"]


@dataclass(frozen=True)
class InstanceRecord:
    """One stored instance, as the index knows it.

    Offsets are absolute byte offsets in the stored PS3.10 file. For the deflated transfer
    syntaxes ``pixel_offset``/``pixel_value_offset`` are -1 (the data set is compressed) and
    ``frame_index`` is None.
    """

    patient_id: str
    patient_name: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    number_of_frames: int
    path: str  # absolute path of the stored PS3.10 file
    size: int
    dataset_offset: int  # first data set element after the File Meta group
    pixel_offset: int  # Pixel Data element tag (header start); -1 if none
    pixel_value_offset: int  # Pixel Data value; -1 if none
    pixel_length: int  # value length; -1 = undefined length (encapsulated)
    frame_index: FrameIndex | None
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    samples_per_pixel: int = 1
    bits_allocated: int | None = None
    photometric_interpretation: str = ""
    planar_configuration: int = 0
    pixel_tag: int = 0  # (7FE0,0010), (7FE0,0008) or (7FE0,0009) as an int; 0 if none
    # A top-level Alternate Representation Sequence (0008,3001) is present: the instance may
    # be one of several encodings of an image (PS3.3 C.6.1.1.5.1).
    has_alternates: bool = False
    stored_at: float = 0.0  # time.time() of the index commit


class Index(abc.ABC):
    """What the archive needs from an instance index (SQLite here; PostgreSQL later)."""

    @abc.abstractmethod
    def get(self, sop_instance_uid: str) -> InstanceRecord | None:
        """The record of one instance, or None."""

    @abc.abstractmethod
    def find(
        self,
        *,
        patient_id: str | None = None,
        study_uids: Iterable[str] | None = None,
        series_uids: Iterable[str] | None = None,
        sop_instance_uids: Iterable[str] | None = None,
    ) -> list[InstanceRecord]:
        """Records matching every given key (a list matches any of its values)."""

    @abc.abstractmethod
    def put(self, record: InstanceRecord) -> InstanceRecord:
        """Insert the record, replacing one with the same SOP Instance UID, in one
        transaction; returns it with ``stored_at`` set."""

    @abc.abstractmethod
    def has_path(self, rel_path: str) -> bool:
        """True if a row names this file (path relative to the archive root, '/'-separated)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections (idempotent)."""


_COLUMNS = (
    "sop_instance_uid", "sop_class_uid", "study_uid", "series_uid", "patient_id",
    "patient_name", "instance_number", "transfer_syntax_uid", "number_of_frames", "n_rows",
    "n_columns", "samples_per_pixel", "bits_allocated", "photometric_interpretation",
    "planar_configuration", "path", "size", "dataset_offset", "pixel_tag", "pixel_offset",
    "pixel_value_offset", "pixel_length", "frame_index", "has_alternates", "stored_at",
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    patient_name TEXT NOT NULL,
    instance_number INTEGER,
    transfer_syntax_uid TEXT NOT NULL,
    number_of_frames INTEGER NOT NULL,
    n_rows INTEGER,
    n_columns INTEGER,
    samples_per_pixel INTEGER NOT NULL,
    bits_allocated INTEGER,
    photometric_interpretation TEXT NOT NULL,
    planar_configuration INTEGER NOT NULL,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    dataset_offset INTEGER NOT NULL,
    pixel_tag INTEGER NOT NULL,
    pixel_offset INTEGER NOT NULL,
    pixel_value_offset INTEGER NOT NULL,
    pixel_length INTEGER NOT NULL,
    frame_index BLOB,
    has_alternates INTEGER NOT NULL,
    stored_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_study_series
    ON instances (study_uid, series_uid, instance_number);
CREATE INDEX IF NOT EXISTS instances_patient ON instances (patient_id);
PRAGMA user_version = 2;
"""
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM instances"
_ORDER = (
    " ORDER BY study_uid, series_uid, instance_number IS NULL, instance_number,"
    " sop_instance_uid"
)
_INSERT = (
    f"INSERT OR REPLACE INTO instances ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_COLUMNS))})"
)


class SQLiteIndex(Index):
    """The embedded index: one SQLite file in WAL mode.

    Readers use one connection per thread (WAL lets them run beside the writer); writes go
    through a single connection under a lock, so threads in this process never contend on
    SQLite's own write lock (whose busy handler sleeps).

    Parameters
    ----------
    db_path : str
        The SQLite file.
    root : str
        Archive root; rows store file paths relative to it.
    fsync : bool
        ``synchronous=FULL`` (a commit survives power loss) when True, else ``NORMAL``
        (consistent after a crash, the last commits may be lost).
    """

    def __init__(self, db_path: str, root: str, *, fsync: bool = True) -> None:
        self.db_path = db_path
        self.root = os.path.abspath(root)
        self._synchronous = "FULL" if fsync else "NORMAL"
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Ticket] = []
        self._closed = False
        self._writer = self._connect()
        self._writer.execute("PRAGMA journal_mode=WAL")
        self._writer.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError("index is closed")
        conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        with self._all_lock:
            self._all.append(conn)
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def _record(self, row) -> InstanceRecord:
        d = dict(zip(_COLUMNS, row))
        blob = d["frame_index"]
        return InstanceRecord(
            patient_id=d["patient_id"],
            patient_name=d["patient_name"],
            study_uid=d["study_uid"],
            series_uid=d["series_uid"],
            sop_instance_uid=d["sop_instance_uid"],
            sop_class_uid=d["sop_class_uid"],
            transfer_syntax_uid=d["transfer_syntax_uid"],
            number_of_frames=d["number_of_frames"],
            path=os.path.join(self.root, *d["path"].split("/")),
            size=d["size"],
            dataset_offset=d["dataset_offset"],
            pixel_offset=d["pixel_offset"],
            pixel_value_offset=d["pixel_value_offset"],
            pixel_length=d["pixel_length"],
            frame_index=None if blob is None else FrameIndex.from_blob(blob),
            instance_number=d["instance_number"],
            rows=d["n_rows"],
            columns=d["n_columns"],
            samples_per_pixel=d["samples_per_pixel"],
            bits_allocated=d["bits_allocated"],
            photometric_interpretation=d["photometric_interpretation"],
            planar_configuration=d["planar_configuration"],
            pixel_tag=d["pixel_tag"],
            has_alternates=bool(d["has_alternates"]),
            stored_at=d["stored_at"],
        )

    def get(self, sop_instance_uid: str) -> InstanceRecord | None:
        row = self._reader().execute(
            _SELECT + " WHERE sop_instance_uid = ?", (sop_instance_uid,)
        ).fetchone()
        return None if row is None else self._record(row)

    def find(self, *, patient_id=None, study_uids=None, series_uids=None,
             sop_instance_uids=None) -> list[InstanceRecord]:
        where, args = [], []
        if patient_id is not None:
            where.append("patient_id = ?")
            args.append(patient_id)
        for column, values in (
            ("study_uid", study_uids), ("series_uid", series_uids),
            ("sop_instance_uid", sop_instance_uids),
        ):
            if values is not None:
                if isinstance(values, str):
                    values = [values]
                # One JSON parameter, whatever the list length (no SQLITE_MAX_VARIABLE_NUMBER).
                where.append(f"{column} IN (SELECT value FROM json_each(?))")
                args.append(json.dumps(list(values)))
        sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "") + _ORDER
        return [self._record(r) for r in self._reader().execute(sql, args)]

    def put(self, record: InstanceRecord) -> InstanceRecord:
        rel = os.path.relpath(record.path, self.root).replace(os.sep, "/")
        stored_at = time.time()
        fi = record.frame_index
        row = (
            record.sop_instance_uid, record.sop_class_uid, record.study_uid,
            record.series_uid, record.patient_id, record.patient_name,
            record.instance_number, record.transfer_syntax_uid, record.number_of_frames,
            record.rows, record.columns, record.samples_per_pixel, record.bits_allocated,
            record.photometric_interpretation, record.planar_configuration, rel, record.size,
            record.dataset_offset, record.pixel_tag, record.pixel_offset,
            record.pixel_value_offset, record.pixel_length,
            None if fi is None else fi.to_blob(), int(record.has_alternates), stored_at,
        )
        ticket = _Ticket(row)
        with self._queue_lock:
            self._queue.append(ticket)
        # Group commit: whoever holds the writer lock commits every row queued so far in one
        # transaction, so concurrent stores share one WAL fsync instead of paying one each.
        with self._write_lock:
            if not ticket.done:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._commit(batch)
        if ticket.error is not None:
            raise ticket.error
        return replace(record, stored_at=stored_at)

    def _commit(self, batch: list["_Ticket"]) -> None:
        conn = self._writer
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_INSERT, [t.row for t in batch])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except Exception:
            if len(batch) == 1:
                batch[0].error = sys.exc_info()[1]
            else:
                # One bad row must not fail the others: commit them one by one.
                for ticket in batch:
                    self._commit([ticket])
        except BaseException as exc:
            # Interrupted mid-batch: no row of it may be reported stored.
            for ticket in batch:
                if not ticket.done:
                    ticket.error = RuntimeError(f"index commit interrupted: {exc!r}")
            raise
        finally:
            for ticket in batch:
                ticket.done = True

    def has_path(self, rel_path: str) -> bool:
        return self._reader().execute(
            "SELECT 1 FROM instances WHERE path = ?", (rel_path,)
        ).fetchone() is not None

    def close(self) -> None:
        with self._all_lock:
            self._closed = True
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()


class _Ticket:
    """One row waiting for the group commit in :meth:`SQLiteIndex.put`."""

    __slots__ = ("row", "done", "error")

    def __init__(self, row: tuple) -> None:
        self.row = row
        self.done = False
        self.error: BaseException | None = None
