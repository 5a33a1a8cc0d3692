"""The instance index: one row per stored SOP Instance, SQLite (WAL mode) by default.

The row holds the query keys (Patient, Study, Series, SOP Instance), what a retriever needs
to serve the file without parsing it (transfer syntax, offsets of the data set and of the
Pixel Data value, and the frame index BLOB), the file's path relative to the archive root
(so an archive directory can be moved as a whole) and the file's CRC-32.

Rows are written in batches (:meth:`Index.put_batch`, one transaction per batch). The SQLite
index lives beside the files, so the archive's single flush of a batch (``syncfs``) makes
its WAL durable together with the files; until that flush returns, the batch's rows are
listed in ``unconfirmed`` and start-up checks their files (:meth:`Index.unconfirmed`).
"""

from __future__ import annotations

import abc
import dataclasses
import json
import logging
import mmap
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .ingest import QUERY_KEYS, FrameIndex, StoreFailure, scan

__all__ = ["InstanceRecord", "Index", "SQLiteIndex", "DuplicateRow", "RecordList", "QUERY_FIELDS",
           "fold_case", "SCHEMA_VERSION"]

log = logging.getLogger("dicomaccel.archive")

# The query keys of ingest.QUERY_KEYS, as InstanceRecord fields and index columns.
QUERY_FIELDS = tuple(name for name, _, _ in QUERY_KEYS)


def fold_case(value: str | None) -> str:
    """Person Name as the ``*_folded`` columns hold it, for case-insensitive matching, which
    PS3.4 C.2.2.2.1 allows for PN (Unicode case folding)."""
    return (value or "").casefold()


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
    crc32: int | None = None  # CRC-32 of the whole file (None for rows of schema version 2)
    # CRC-32 of the bytes as received, when the store policy rewrote them (coercion,
    # discard): what makes sending the same instance again idempotent. None otherwise.
    received_crc32: int | None = None
    # Query keys (ingest.QUERY_KEYS): "" or None when absent.
    specific_character_set: str = ""
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    modality: str = ""
    referring_physician_name: str = ""
    study_description: str = ""
    series_description: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_id: str = ""
    series_number: int | None = None
    performed_procedure_step_start_date: str = ""
    performed_procedure_step_start_time: str = ""


class Index(abc.ABC):
    """What the archive needs from an instance index (SQLite here; PostgreSQL later).

    Attributes
    ----------
    durable_on_commit : bool
        True if :meth:`put_batch` is durable when it returns (a database server with its own
        log); False if the archive's file flush makes it durable (an index file beside the
        instances). The archive flushes files before the commit in the first case, after it
        in the second.
    """

    durable_on_commit: bool = True

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
        lazy: bool = False,
    ) -> list[InstanceRecord] | RecordList:
        """Records matching every given key (a list matches any of its values); with
        ``lazy``, a :class:`RecordList` that builds each record when it is first read."""

    @abc.abstractmethod
    def put_batch(self, records: list[InstanceRecord], replace_existing: list[bool],
                  ) -> list[InstanceRecord | DuplicateRow | BaseException]:
        """Insert the records in one transaction (each with ``replace_existing[i]``: replace a row of
        the same SOP Instance UID, else refuse it). Returns, per record, the record with
        ``stored_at`` set, :class:`DuplicateRow` if a row of that UID appeared meanwhile (a
        concurrent writer won), or the error that kept it out; one bad row does not fail
        the others. With ``durable_on_commit`` False the rows stay *unconfirmed* until a
        ``put_batch`` or :meth:`confirm` that follows a :meth:`flushed`."""

    @abc.abstractmethod
    def flushed(self) -> None:
        """The archive's flush after the last batch succeeded: the rows committed so far
        are durable (the next batch's transaction confirms them, at no extra write)."""

    @abc.abstractmethod
    def confirm(self) -> None:
        """Confirm the rows :meth:`flushed` made durable now (when closing)."""

    @abc.abstractmethod
    def lookup(self, sop_instance_uid: str) -> tuple[str, int, int | None, str, int | None] | None:
        """``(path, size, crc32, sop_class_uid, received_crc32)`` of a stored instance, or
        None: what the duplicate rule needs."""

    @abc.abstractmethod
    def unconfirmed(self) -> list[tuple[str, str, int, int | None]]:
        """``(sop_instance_uid, rel_path, size, crc32)`` of rows committed before a crash
        whose flush may not have completed (start-up only)."""

    @abc.abstractmethod
    def drop_unconfirmed(self, bad_sop_instance_uids: list[str]) -> None:
        """Delete these rows (their files did not survive) and forget the rest of the
        unconfirmed list, durably."""

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
    "crc32", "received_crc32", *QUERY_FIELDS, "patient_name_folded",
    "referring_physician_name_folded",
)
# Version 5: the query keys (text columns default to ''), Person Names case-folded for
# matching, and indexes on the matching columns (PS3.18 §10.6, PS3.4 C.6).
_QUERY_COLUMNS = {name: "INTEGER" if name == "series_number" else "TEXT NOT NULL DEFAULT ''"
                  for name in (*QUERY_FIELDS, "patient_name_folded", "referring_physician_name_folded")}
_QUERY_INDEXES = """
CREATE INDEX IF NOT EXISTS instances_series ON instances (series_uid);
CREATE INDEX IF NOT EXISTS instances_patient_name ON instances (patient_name_folded, study_uid);
CREATE INDEX IF NOT EXISTS instances_study_date ON instances (study_date, study_uid);
CREATE INDEX IF NOT EXISTS instances_accession ON instances (accession_number);
CREATE INDEX IF NOT EXISTS instances_modality ON instances (modality, study_uid);
"""
SCHEMA_VERSION = 5
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
    stored_at REAL NOT NULL,
    crc32 INTEGER,
    received_crc32 INTEGER,
""" + ",\n".join(f"    {name} {kind}" for name, kind in _QUERY_COLUMNS.items()) + """
);
CREATE INDEX IF NOT EXISTS instances_study_series
    ON instances (study_uid, series_uid, instance_number);
CREATE INDEX IF NOT EXISTS instances_patient ON instances (patient_id);
CREATE TABLE IF NOT EXISTS unconfirmed (
    sop_instance_uid TEXT PRIMARY KEY,
    writer TEXT NOT NULL
);
""" + _QUERY_INDEXES + f"""
PRAGMA user_version = {SCHEMA_VERSION};
"""
# Version 2 -> 3: the file's CRC-32 and the unconfirmed list (created by _SCHEMA).
_MIGRATE_2_3 = "ALTER TABLE instances ADD COLUMN crc32 INTEGER"
# Version 3 -> 4: the received bytes' CRC-32 of rewritten instances.
_MIGRATE_3_4 = "ALTER TABLE instances ADD COLUMN received_crc32 INTEGER"
# Version 4 -> 5: the query key columns, back-filled from the files' headers (_backfill).
_MIGRATE_4_5 = [f"ALTER TABLE instances ADD COLUMN {name} {kind}" for name, kind in _QUERY_COLUMNS.items()]
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM instances"
_ALTERNATES = _COLUMNS.index("has_alternates")
_ORDER = (
    " ORDER BY study_uid, series_uid, instance_number IS NULL, instance_number,"
    " sop_instance_uid"
)
_VALUES = f"INTO instances ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
_INSERT = "INSERT " + _VALUES
_REPLACE = "INSERT OR REPLACE " + _VALUES


class SQLiteIndex(Index):
    """The embedded index: one SQLite file in WAL mode.

    Readers use one connection per thread (WAL lets them run beside the writer); writes come
    from the archive's one group-commit thread, on a single connection. Other processes on
    the same file (``dicomaccel serve --workers``) contend on SQLite's write lock, which
    holds each batch for a fraction of a millisecond.

    Parameters
    ----------
    db_path : str
        The SQLite file.
    root : str
        Archive root; rows store file paths relative to it.
    fsync : bool
        Track unconfirmed rows (see the module docstring). Commits use ``synchronous=NORMAL``
        either way: in WAL mode that writes the log without flushing it, and the archive's
        flush of the batch makes it durable.
    """

    durable_on_commit = False

    def __init__(self, db_path: str, root: str, *, fsync: bool = True) -> None:
        self.db_path = db_path
        self.root = os.path.abspath(root)
        self.fsync = fsync
        self._writer_id = f"{os.getpid()}-{os.urandom(6).hex()}"
        self._flushed = False  # set by flushed(), cleared when a batch confirms
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = False
        self._writer = self._connect()
        self._writer.execute("PRAGMA journal_mode=WAL")
        with self._write_lock:
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                version = self._writer.execute("PRAGMA user_version").fetchone()[0]
                if version == 2:
                    self._writer.execute(_MIGRATE_2_3)
                if version in (2, 3):
                    self._writer.execute(_MIGRATE_3_4)
                if version in (2, 3, 4):
                    for statement in _MIGRATE_4_5:
                        self._writer.execute(statement)
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._writer.execute(statement)
                if version in (2, 3, 4):
                    self._backfill(version)
                self._writer.execute("COMMIT")
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise

    def _backfill(self, version: int) -> None:
        """Fill the query key columns of rows written before version 5 from their files'
        headers (inside the migration's transaction)."""
        conn = self._writer
        rows = conn.execute("SELECT sop_instance_uid, path, patient_name FROM instances").fetchall()
        log.warning("index: migrating %s from schema version %d to %d: adding the query keys "
                    "(QIDO-RS, C-FIND) and back-filling %d row(s) from their files",
                    self.db_path, version, SCHEMA_VERSION, len(rows))
        started = time.monotonic()
        assign = ", ".join(f"{name} = ?" for name in (*QUERY_FIELDS, "patient_name_folded",
                                                      "referring_physician_name_folded"))
        unread = 0
        for sop, rel, patient_name in rows:
            header = _read_header(os.path.join(self.root, *rel.split("/")))
            if header is None:
                unread += 1
                values = [None if name == "series_number" else "" for name in QUERY_FIELDS]
                values += [fold_case(patient_name), ""]
            else:
                values = [getattr(header, name) for name in QUERY_FIELDS]
                values += [fold_case(patient_name), fold_case(header.referring_physician_name)]
            conn.execute(f"UPDATE instances SET {assign} WHERE sop_instance_uid = ?", (*values, sop))
        log.warning("index: migration to schema version %d done in %.1f s (%d file(s) could not "
                    "be read; their query keys stay empty)", SCHEMA_VERSION,
                    time.monotonic() - started, unread)

    def read(self, sql: str, parameters: Sequence = ()) -> list[tuple]:
        """Run one read-only statement on this thread's reader connection (the query engine's
        way in, :mod:`dicomaccel.query`); parameters are always bound, never formatted in."""
        return self._reader().execute(sql, parameters).fetchall()

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError("index is closed")
        conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA synchronous = NORMAL")
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
            crc32=d["crc32"],
            received_crc32=d["received_crc32"],
            **{name: d[name] for name in QUERY_FIELDS},
        )

    def get(self, sop_instance_uid: str) -> InstanceRecord | None:
        row = self._reader().execute(
            _SELECT + " WHERE sop_instance_uid = ?", (sop_instance_uid,)
        ).fetchone()
        return None if row is None else self._record(row)

    def find(self, *, patient_id=None, study_uids=None, series_uids=None,
             sop_instance_uids=None, lazy: bool = False) -> list[InstanceRecord] | RecordList:
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
        rows = self._reader().execute(sql, args).fetchall()
        if lazy:
            return RecordList(rows, self._record)
        return [self._record(r) for r in rows]

    def _row(self, record: InstanceRecord, stored_at: float) -> tuple:
        rel = os.path.relpath(record.path, self.root).replace(os.sep, "/")
        fi = record.frame_index
        return (
            record.sop_instance_uid, record.sop_class_uid, record.study_uid,
            record.series_uid, record.patient_id, record.patient_name,
            record.instance_number, record.transfer_syntax_uid, record.number_of_frames,
            record.rows, record.columns, record.samples_per_pixel, record.bits_allocated,
            record.photometric_interpretation, record.planar_configuration, rel, record.size,
            record.dataset_offset, record.pixel_tag, record.pixel_offset,
            record.pixel_value_offset, record.pixel_length,
            None if fi is None else fi.to_blob(), int(record.has_alternates), stored_at,
            record.crc32, record.received_crc32,
            *[getattr(record, name) for name in QUERY_FIELDS],
            fold_case(record.patient_name), fold_case(record.referring_physician_name),
        )

    def put_batch(self, records, replace_existing):
        stored_at = time.time()
        items = [(self._row(r, stored_at), rep) for r, rep in zip(records, replace_existing)]
        out: list = [dataclasses.replace(r, stored_at=stored_at) for r in records]
        with self._write_lock:
            try:
                self._insert(items)
                return out
            except Exception as exc:
                if len(items) == 1:
                    return [_refusal(exc)]
            # One bad row must not fail the others: try each alone (rolled back), then
            # commit the good ones together.
            good = []
            for i, item in enumerate(items):
                try:
                    self._insert([item], probe=True)
                    good.append(i)
                except Exception as exc:
                    out[i] = _refusal(exc)
            if good:
                try:
                    self._insert([items[i] for i in good])
                except Exception as exc:
                    for i in good:
                        out[i] = exc
        return out

    def _insert(self, items, *, probe: bool = False) -> None:
        # probe: try the rows and roll back, to learn whether they can go in the batch.
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            confirming = self.fsync and not probe and self._flushed
            if confirming:
                # The previous batch of this writer was flushed before this one started.
                conn.execute("DELETE FROM unconfirmed WHERE writer = ?", (self._writer_id,))
            for row, replace_existing in items:
                conn.execute(_REPLACE if replace_existing else _INSERT, row)
            if self.fsync and not probe:
                conn.executemany(
                    "INSERT OR REPLACE INTO unconfirmed (sop_instance_uid, writer) VALUES (?, ?)",
                    [(row[0], self._writer_id) for row, _ in items],
                )
            conn.execute("ROLLBACK" if probe else "COMMIT")
            if confirming:
                self._flushed = False
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def flushed(self) -> None:
        self._flushed = True

    def confirm(self) -> None:
        if not (self.fsync and self._flushed):
            return
        with self._write_lock:
            self._writer.execute("DELETE FROM unconfirmed WHERE writer = ?", (self._writer_id,))

    def lookup(self, sop_instance_uid: str):
        row = self._reader().execute(
            "SELECT path, size, crc32, sop_class_uid, received_crc32 FROM instances"
            " WHERE sop_instance_uid = ?",
            (sop_instance_uid,),
        ).fetchone()
        if row is None:
            return None
        return os.path.join(self.root, *row[0].split("/")), *row[1:]

    def unconfirmed(self):
        return self._reader().execute(
            "SELECT i.sop_instance_uid, i.path, i.size, i.crc32 FROM unconfirmed u"
            " JOIN instances i ON i.sop_instance_uid = u.sop_instance_uid"
        ).fetchall()

    def drop_unconfirmed(self, bad_sop_instance_uids) -> None:
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("DELETE FROM instances WHERE sop_instance_uid = ?",
                                 [(u,) for u in bad_sop_instance_uids])
                conn.execute("DELETE FROM unconfirmed")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

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


class RecordList(Sequence):
    """Index rows that become :class:`InstanceRecord` objects when read.

    A C-GET of a study matches hundreds of rows; building every record (frame index BLOB
    included) before the first sub-operation would delay the first instance by milliseconds.

    Attributes
    ----------
    has_alternates : bool
        Some row has an Alternate Representation Sequence (known without building records).
    """

    def __init__(self, rows: list[tuple], build: Callable[[tuple], InstanceRecord]) -> None:
        self._rows = rows
        self._build = build
        self._built: dict[int, InstanceRecord] = {}
        self.has_alternates = any(row[_ALTERNATES] for row in rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self._rows)))]
        i = range(len(self._rows))[i]
        record = self._built.get(i)
        if record is None:
            record = self._built[i] = self._build(self._rows[i])
        return record


class DuplicateRow:
    """:meth:`Index.put_batch` refused a row: its SOP Instance UID was stored meanwhile."""

    __slots__ = ()


def _read_header(path: str):
    """The scanned header of a stored file, or None if it cannot be read (migration)."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return scan(mm)
    except (OSError, ValueError, StoreFailure):
        return None


def _refusal(exc: Exception):
    if isinstance(exc, sqlite3.IntegrityError) and "instances.sop_instance_uid" in str(exc):
        return DuplicateRow()
    return exc
