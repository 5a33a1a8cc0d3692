"""The instance index: one row per stored SOP Instance, SQLite (WAL mode) by default.

The row holds the instance's keys (Patient, Study, Series, SOP Instance, as that instance
carried them), what a retriever needs to serve the file without parsing it (transfer syntax,
offsets of the data set and of the Pixel Data value, and the frame index BLOB), the file's
path relative to the archive root (so an archive directory can be moved as a whole) and the
file's CRC-32.

The query keys of the levels above the instance (PS3.4 C.6.1.1.2-C.6.1.1.4) and their
indexes live in a ``studies`` table (Patient and Study keys, one row per Study Instance UID)
and a ``series`` table (Series keys and the series' instance count, one row per Series
Instance UID), kept in the same transaction as the instance rows. When instances of one
study or series disagree, the last one written wins (a series belongs to the study its last
instance names: a Series Instance UID is unique, PS3.3 C.7.3.1). So an instance insert
touches the instance table and its three indexes, and one ``series`` row; the query-key
indexes change only when a study or series appears, disappears or changes its attributes.

Rows are written in batches (:meth:`Index.put_batch`, one transaction per batch). The SQLite
index lives beside the files, so the archive's single flush of a batch (``syncfs``) makes
its WAL durable together with the files; the batch's rows are listed in ``unconfirmed``, and
start-up checks their files (:meth:`Index.unconfirmed`), until a later transaction follows a
completed flush that started after the batch committed (:meth:`Index.committed`,
:meth:`Index.flushed`).
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import errno
import json
import logging
import mmap
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ..status import FailureReason
from .ingest import QUERY_KEYS, FrameIndex, QueryKeyValues, StoreFailure, filled, fillable, scan

__all__ = ["InstanceRecord", "Index", "SQLiteIndex", "DuplicateRow", "IndexUnavailable", "CommitInDoubt", "RecordList", "Vanished", "QUERY_FIELDS",
           "fold_case", "SCHEMA_VERSION", "STUDY_FIELDS", "SERIES_FIELDS"]

log = logging.getLogger("dicomaccel.archive")

# The query keys of ingest.QUERY_KEYS, as InstanceRecord fields and index columns.
QUERY_FIELDS = tuple(name for name, _, _ in QUERY_KEYS)
# The keys a study's row holds (Patient level, PS3.4 C.6.1.1.2, and Study level, C.6.1.1.3),
# and a series' row (Series level, C.6.1.1.4); the UIDs that link them come first.
STUDY_FIELDS = ("patient_id", "patient_name", "patient_birth_date", "patient_sex", "study_date",
                "study_time", "accession_number", "referring_physician_name", "study_id",
                "study_description")
SERIES_FIELDS = ("modality", "series_number", "series_description",
                 "performed_procedure_step_start_date", "performed_procedure_step_start_time")
# Index.read_quickly: a statement of the embedded index read on the event loop is stopped after
# this many SQLite virtual machine steps (~80 per microsecond here, so ~0.25 ms). A C-FIND of
# the benchmark's three studies takes far fewer; a leading wild card on a large index, more.
QUICK_READ_STEPS = 20_000
T = TypeVar("T")


def fold_case(value: str | None) -> str:
    """Person Name as the ``*_folded`` columns hold it, for case-insensitive matching, which
    PS3.4 C.2.2.2.1 allows for PN (Unicode case folding)."""
    return (value or "").casefold()


@fillable
@dataclass(frozen=True)
class InstanceRecord(QueryKeyValues):
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
    stored_at: float = 0.0  # time.time() of the index commit (or of the record made for it)
    crc32: int | None = None  # CRC-32 of the whole file (None for rows of schema version 2)
    # CRC-32 of the bytes as received, when the store policy rewrote them (coercion,
    # discard): what makes sending the same instance again idempotent. None otherwise.
    received_crc32: int | None = None


class Index(abc.ABC):
    """What the archive needs from an instance index (:class:`SQLiteIndex` here, and
    :class:`~.postgres_index.PostgresIndex`).

    Attributes
    ----------
    durable_on_commit : bool
        True if :meth:`put_batch` is durable when it returns (a database server with its own
        log); False if the archive's file flush makes it durable (an index file beside the
        instances). The archive flushes files before the commit in the first case, after it
        in the second.
    sql_dialect : str
        The SQL that :meth:`read` runs (``"sqlite"``, ``"postgresql"``): the query engine
        writes its statements for it.
    insert_first : bool
        True if the group commit should insert a batch without asking :meth:`lookup_many`
        first, leaving duplicates to :meth:`put_batch`'s :class:`DuplicateRow` (with a server
        the question costs a round trip; with SQLite, a read transaction of its own, 20-30 us
        per batch on the committer thread); False: ask first.
    remote : bool
        True if a read crosses the network (and may wait for a server that went away): the
        event loop then never reads it itself. An embedded index is read inline where one
        indexed row is all that is needed.
    """

    durable_on_commit: bool = True
    insert_first: bool = False
    remote: bool = False
    sql_dialect: str

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
        ``lazy``, a :class:`RecordList` that reads each record when it is first reached (an
        instance deleted meanwhile reads as :class:`Vanished`)."""

    @abc.abstractmethod
    def put_batch(self, records: list[InstanceRecord], replace_existing: list[bool],
                  ) -> list[InstanceRecord | DuplicateRow | BaseException]:
        """Insert the records in one transaction (each with ``replace_existing[i]``: replace a row of
        the same SOP Instance UID, else refuse it). Returns, per record, the record with
        ``stored_at`` set (kept if the caller set it, else the commit's time), :class:`DuplicateRow` if a row of that UID appeared meanwhile (a
        concurrent writer won), or the error that kept it out; one bad row does not fail
        the others. With ``durable_on_commit`` False the rows stay *unconfirmed* until a
        ``put_batch`` or :meth:`confirm` that follows a :meth:`flushed`."""

    def committed(self) -> int:
        """A mark of the batches committed so far, read just before a flush starts: the
        flush covers them (their writes are in the page cache when it starts), and only
        them, so :meth:`flushed` confirms no batch another thread commits meanwhile."""
        return 0

    @abc.abstractmethod
    def flushed(self, mark: int) -> None:
        """The archive's flush that started after :meth:`committed` returned ``mark``
        succeeded: the batches up to that mark are durable (the next batch's transaction
        confirms them, at no extra write)."""

    @abc.abstractmethod
    def confirm(self) -> None:
        """Confirm the rows :meth:`flushed` made durable now (when closing)."""

    @abc.abstractmethod
    def lookup(self, sop_instance_uid: str) -> tuple[str, int, int | None, str, int | None] | None:
        """``(path, size, crc32, sop_class_uid, received_crc32)`` of a stored instance, or
        None: what the duplicate rule needs."""

    def lookup_many(self, sop_instance_uids: Sequence[str]) -> dict[str, tuple]:
        """:meth:`lookup` of each UID, by UID, those stored only: the group commit's duplicate
        rule for a whole batch. A backend with a server answers in one round trip."""
        return {uid: found for uid in sop_instance_uids if (found := self.lookup(uid)) is not None}

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
    def page(self, after: str, limit: int) -> list[InstanceRecord]:
        """Up to ``limit`` records in SOP Instance UID order, from the first UID above ``after``
        (``""``: the first): every row, a page at a time (copying and checking an index)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections (idempotent)."""

    def read_quickly(self, fn: Callable[..., T], *args) -> T | None:
        """``fn(*args)`` on this thread if every read of this index it makes is quick, else None.

        For the event loop: a search usually takes a fraction of a millisecond, less than handing
        it to a worker thread and back, but one on a large index can take much longer, which the
        loop must not wait for. A caller that gets None runs ``fn`` in a worker thread. An index
        that cannot stop a read part-way (a database server) always returns None."""
        return None

    def store_failure(self, exc: BaseException) -> BaseException:
        """What a store is refused with when a read of this index on its way (the duplicate
        rule's :meth:`lookup_many` and :meth:`get`) raised ``exc``: :class:`IndexUnavailable` when
        the database cannot answer, else ``exc`` itself. The embedded index has no server to
        lose."""
        return exc


_COLUMNS = (
    "sop_instance_uid", "sop_class_uid", "study_uid", "series_uid", "patient_id",
    "patient_name", "instance_number", "transfer_syntax_uid", "number_of_frames", "n_rows",
    "n_columns", "samples_per_pixel", "bits_allocated", "photometric_interpretation",
    "planar_configuration", "path", "size", "dataset_offset", "pixel_tag", "pixel_offset",
    "pixel_value_offset", "pixel_length", "frame_index", "has_alternates", "stored_at",
    "crc32", "received_crc32", *QUERY_FIELDS,
)
_AT = {name: i for i, name in enumerate(_COLUMNS)}


def row_of(record: InstanceRecord, root: str) -> tuple:
    """The index row of ``record`` (values in :data:`_COLUMNS` order, the path relative to the
    archive ``root``, '/'-separated), as every backend stores it."""
    path = record.path
    # The archive names its files under its root: slicing is what relpath would do, at a
    # fifth of the cost on the committer thread.
    rel = path[len(root) + 1:] if path.startswith(root) and path[len(root):len(root) + 1] == os.sep \
        else os.path.relpath(path, root)
    rel = rel.replace(os.sep, "/")
    fi = record.frame_index
    return (
        record.sop_instance_uid, record.sop_class_uid, record.study_uid,
        record.series_uid, record.patient_id, record.patient_name,
        record.instance_number, record.transfer_syntax_uid, record.number_of_frames,
        record.rows, record.columns, record.samples_per_pixel, record.bits_allocated,
        record.photometric_interpretation, record.planar_configuration, rel, record.size,
        record.dataset_offset, record.pixel_tag, record.pixel_offset,
        record.pixel_value_offset, record.pixel_length,
        None if fi is None else fi.to_blob(), int(record.has_alternates), record.stored_at,
        record.crc32, record.received_crc32,
        *[getattr(record, name) for name in QUERY_FIELDS],
    )


# The InstanceRecord field of each column (two columns are named apart from their fields).
_FIELDS = tuple({"n_rows": "rows", "n_columns": "columns"}.get(name, name) for name in _COLUMNS)


def record_of(row: Sequence, root: str) -> InstanceRecord:
    """The :class:`InstanceRecord` of an index row read in :data:`_COLUMNS` order."""
    d = dict(zip(_FIELDS, row))
    d["path"] = os.path.join(root, *d["path"].split("/"))
    blob = d["frame_index"]
    if blob is not None:
        d["frame_index"] = FrameIndex.from_blob(blob)
    d["has_alternates"] = bool(d["has_alternates"])
    # The fields are exactly the columns (a test holds them equal).
    return filled(InstanceRecord, d)


def _text(name: str) -> str:
    return "INTEGER" if name == "series_number" else "TEXT NOT NULL DEFAULT ''"


# Version 5 added the query keys to the instance rows (text columns default to '');
# version 6 moved their indexes, and the case-folded Person Names matched on, to the
# studies and series tables (PS3.18 §10.6, PS3.4 C.6).
_QUERY_COLUMNS = {name: _text(name) for name in QUERY_FIELDS}
_STUDY_COLUMNS = ("study_uid", *STUDY_FIELDS, "patient_name_folded", "referring_physician_name_folded")
_SERIES_COLUMNS = ("series_uid", "study_uid", *SERIES_FIELDS)
SCHEMA_VERSION = 6
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
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
""" + ",\n".join(f"    {name} {_text(name)}" for name in _STUDY_COLUMNS[1:]) + """
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS studies_patient ON studies (patient_id);
CREATE INDEX IF NOT EXISTS studies_patient_name ON studies (patient_name_folded);
CREATE INDEX IF NOT EXISTS studies_date ON studies (study_date);
CREATE INDEX IF NOT EXISTS studies_accession ON studies (accession_number);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
""" + ",\n".join(f"    {name} {_text(name)}" for name in SERIES_FIELDS) + """,
    n_instances INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS series_study ON series (study_uid);
CREATE INDEX IF NOT EXISTS series_modality ON series (modality);
CREATE TABLE IF NOT EXISTS unconfirmed (
    sop_instance_uid TEXT PRIMARY KEY,
    writer TEXT NOT NULL
) WITHOUT ROWID;
""" + f"""
PRAGMA user_version = {SCHEMA_VERSION};
"""
# Version 2 -> 3: the file's CRC-32 and the unconfirmed list (created by _SCHEMA).
_MIGRATE_2_3 = "ALTER TABLE instances ADD COLUMN crc32 INTEGER"
# Version 3 -> 4: the received bytes' CRC-32 of rewritten instances.
_MIGRATE_3_4 = "ALTER TABLE instances ADD COLUMN received_crc32 INTEGER"
# Version 4 -> 5: the query key columns, back-filled from the files' headers (_backfill).
_MIGRATE_4_5 = [f"ALTER TABLE instances ADD COLUMN {name} {kind}" for name, kind in _QUERY_COLUMNS.items()]
# Version 5 -> 6: the query-key indexes and folded names leave the instance table; the
# unconfirmed list becomes one B-tree (WITHOUT ROWID: one page per batch, not two), its
# rows copied over by _entities_backfill.
_MIGRATE_5_6 = [
    *(f"DROP INDEX IF EXISTS {name}" for name in (
        "instances_series", "instances_patient", "instances_patient_name",
        "instances_study_date", "instances_accession", "instances_modality")),
    "ALTER TABLE instances DROP COLUMN patient_name_folded",
    "ALTER TABLE instances DROP COLUMN referring_physician_name_folded",
]
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM instances"
# What a lazy find reads of each matched row (see RecordList).
_MATCH = "SELECT sop_instance_uid, has_alternates FROM instances"
_ORDER = (
    " ORDER BY study_uid, series_uid, instance_number IS NULL, instance_number,"
    " sop_instance_uid"
)
_VALUES = f"INTO instances ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
_INSERT = "INSERT " + _VALUES
_REPLACE = "INSERT OR REPLACE " + _VALUES
# Per batch and distinct study: insert its row, or update its attributes only if one of them
# changed (last write wins), so an unchanged study dirties no page at all.
_STUDY_ATTRS = ", ".join(_STUDY_COLUMNS[1:])
_UPSERT_STUDY = (
    f"INSERT INTO studies ({', '.join(_STUDY_COLUMNS)}) VALUES ({', '.join('?' * len(_STUDY_COLUMNS))})"
    f" ON CONFLICT (study_uid) DO UPDATE SET ({_STUDY_ATTRS}) ="
    f" ({', '.join('excluded.' + c for c in _STUDY_COLUMNS[1:])})"
    f" WHERE ({', '.join('studies.' + c for c in _STUDY_COLUMNS[1:])}) IS NOT"
    f" ({', '.join('excluded.' + c for c in _STUDY_COLUMNS[1:])})"
)
# Per batch and distinct series: its attributes only if one changed (an UPDATE rewrites the
# index entries of every column it sets, changed or not), then its instance count: the one
# page an ordinary insert dirties outside the instance table.
_SERIES_ATTRS = ", ".join(_SERIES_COLUMNS[1:])
_UPDATE_SERIES = (
    f"UPDATE series SET ({_SERIES_ATTRS}) = ({', '.join('?' * (len(_SERIES_COLUMNS) - 1))})"
    f" WHERE series_uid = ? AND ({_SERIES_ATTRS}) IS NOT ({', '.join('?' * (len(_SERIES_COLUMNS) - 1))})"
)
_UPSERT_SERIES = (
    f"INSERT INTO series ({', '.join(_SERIES_COLUMNS)}, n_instances)"
    f" VALUES ({', '.join('?' * len(_SERIES_COLUMNS))}, ?)"
    f" ON CONFLICT (series_uid) DO UPDATE SET n_instances = n_instances + ?"
)


class SQLiteIndex(Index):
    """The embedded index: one SQLite file in WAL mode.

    Readers use one connection per thread (WAL lets them run beside the writer); writes come
    from the archive's group-commit threads, one transaction at a time on a single connection.
    Other processes on the same file (``dicomaccel serve --workers``) contend on SQLite's write
    lock, which holds each batch for a fraction of a millisecond.

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
    insert_first = True
    sql_dialect = "sqlite"

    def __init__(self, db_path: str, root: str, *, fsync: bool = True) -> None:
        self.db_path = db_path
        self.root = os.path.abspath(root)
        self.fsync = fsync
        self._writer_id = f"{os.getpid()}-{os.urandom(6).hex()}"
        # The unconfirmed list tags each row with its batch, "<writer>:<batch number>" (12
        # digits: tags of one writer sort as their numbers), so that a flush confirms exactly
        # the batches committed before it started, whichever committer thread flushes.
        self._batches = 0  # batches committed (under _write_lock)
        self._durable = 0  # batches a completed flush covered
        self._confirmed = 0  # batches whose rows left the unconfirmed list
        self._mark_lock = threading.Lock()
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = False
        self._writer = self._connect()
        self._writer.execute("PRAGMA journal_mode=WAL")
        # The committer never checkpoints: _Checkpointer does, off the stores' path.
        self._writer.execute("PRAGMA wal_autocheckpoint = 0")
        self._checkpointer = _Checkpointer(self._connect)
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
                started = time.monotonic()
                if version == 5:
                    log.warning("index: migrating %s from schema version 5 to %d: studies and "
                                "series tables for the query keys", db_path, SCHEMA_VERSION)
                    for statement in _MIGRATE_5_6:
                        self._writer.execute(statement)
                if version in (3, 4, 5):
                    self._writer.execute("ALTER TABLE unconfirmed RENAME TO unconfirmed_5")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._writer.execute(statement)
                if version in (2, 3, 4):
                    self._backfill(version)
                if version in (2, 3, 4, 5):
                    self._entities_backfill(version, started)
                self._writer.execute("COMMIT")
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise

    def _backfill(self, version: int) -> None:
        """Fill the query key columns of rows written before version 5 from their files'
        headers (inside the migration's transaction)."""
        conn = self._writer
        rows = conn.execute("SELECT sop_instance_uid, path FROM instances").fetchall()
        log.warning("index: migrating %s from schema version %d to %d: adding the query keys "
                    "(QIDO-RS, C-FIND) and back-filling %d row(s) from their files",
                    self.db_path, version, SCHEMA_VERSION, len(rows))
        started = time.monotonic()
        assign = ", ".join(f"{name} = ?" for name in QUERY_FIELDS)
        unread = 0
        for sop, rel in rows:
            header = _read_header(os.path.join(self.root, *rel.split("/")))
            if header is None:
                unread += 1
                values = [None if name == "series_number" else "" for name in QUERY_FIELDS]
            else:
                values = [getattr(header, name) for name in QUERY_FIELDS]
            conn.execute(f"UPDATE instances SET {assign} WHERE sop_instance_uid = ?", (*values, sop))
        log.warning("index: query keys of schema version %d back-filled in %.1f s (%d file(s) "
                    "could not be read; their query keys stay empty)", SCHEMA_VERSION,
                    time.monotonic() - started, unread)

    def _entities_backfill(self, version: int, started: float) -> None:
        """Fill the studies and series tables from the instance rows, in SQL (inside the
        migration's transaction): each study and series takes the attributes of its last
        written instance (the highest rowid: INSERT OR REPLACE gives a new one), each series
        its instance count; and carry the unconfirmed list over."""
        conn = self._writer
        conn.create_function("fold_case", 1, fold_case, deterministic=True)
        last = "SELECT max(rowid) FROM instances GROUP BY {}"
        conn.execute(
            f"INSERT INTO studies ({', '.join(_STUDY_COLUMNS)}) SELECT study_uid,"
            f" {', '.join(STUDY_FIELDS)}, fold_case(patient_name), fold_case(referring_physician_name)"
            f" FROM instances WHERE rowid IN ({last.format('study_uid')})")
        conn.execute(
            f"INSERT INTO series ({', '.join(_SERIES_COLUMNS)}, n_instances)"
            f" SELECT {', '.join('i.' + c for c in _SERIES_COLUMNS)}, c.n FROM instances i"
            f" JOIN (SELECT max(rowid) AS last, count(*) AS n FROM instances GROUP BY series_uid) c"
            f" ON i.rowid = c.last")
        if version > 2:
            conn.execute("INSERT INTO unconfirmed SELECT sop_instance_uid, writer FROM unconfirmed_5")
            conn.execute("DROP TABLE unconfirmed_5")
        studies = conn.execute("SELECT count(*) FROM studies").fetchone()[0]
        series = conn.execute("SELECT count(*) FROM series").fetchone()[0]
        log.warning("index: migrated %s from schema version %d to %d in %.1f s: the query keys "
                    "of %d studies and %d series moved from the instance rows to the studies "
                    "and series tables", self.db_path, version, SCHEMA_VERSION,
                    time.monotonic() - started, studies, series)

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

    def read_quickly(self, fn, *args):
        # SQLite calls the progress handler every QUICK_READ_STEPS virtual machine steps of a
        # statement; the first call stops it (sqlite3_progress_handler), so a read that would
        # go on is abandoned after ~0.25 ms here and run again in a worker thread.
        conn = self._reader()
        stopped = False

        def stop() -> bool:
            nonlocal stopped
            stopped = True
            return True

        conn.set_progress_handler(stop, QUICK_READ_STEPS)
        try:
            result = fn(*args)
            # A statement stopped is never an answer, even if fn caught its error.
            return None if stopped else result
        except sqlite3.OperationalError:
            if stopped:
                return None
            raise
        finally:
            conn.set_progress_handler(None, 0)

    def _record(self, row) -> InstanceRecord:
        return record_of(row, self.root)

    def get(self, sop_instance_uid: str) -> InstanceRecord | None:
        row = self._reader().execute(
            _SELECT + " WHERE sop_instance_uid = ?", (sop_instance_uid,)
        ).fetchone()
        return None if row is None else self._record(row)

    def find(self, *, patient_id=None, study_uids=None, series_uids=None,
             sop_instance_uids=None, lazy: bool = False) -> list[InstanceRecord] | RecordList:
        where, args = [], []
        if patient_id is not None:
            # The patient's studies (the Patient level keys are the study row's).
            where.append("study_uid IN (SELECT study_uid FROM studies WHERE patient_id = ?)")
            args.append(patient_id)
        # One JSON parameter per list, whatever its length (no SQLITE_MAX_VARIABLE_NUMBER).
        lists = {column: json.dumps([values] if isinstance(values, str) else list(values))
                 for column, values in (("study_uid", study_uids), ("series_uid", series_uids),
                                        ("sop_instance_uid", sop_instance_uids))
                 if values is not None}
        if "series_uid" in lists and "study_uid" not in lists:
            # The series' studies too, so the (study, series) index finds the rows.
            where.append("study_uid IN (SELECT study_uid FROM series WHERE series_uid IN"
                         " (SELECT value FROM json_each(?)))")
            args.append(lists["series_uid"])
        for column, values in lists.items():
            where.append(f"{column} IN (SELECT value FROM json_each(?))")
            args.append(values)
        condition = " WHERE " + " AND ".join(where) if where else ""
        if lazy:
            matched = self._reader().execute(_MATCH + condition + _ORDER, args).fetchall()
            return RecordList(matched, self._records_of)
        rows = self._reader().execute(_SELECT + condition + _ORDER, args).fetchall()
        return [self._record(r) for r in rows]

    def _records_of(self, uids: list[str]) -> dict[str, InstanceRecord]:
        rows = self._reader().execute(_SELECT + " WHERE sop_instance_uid IN (SELECT value FROM json_each(?))",
                                      (json.dumps(uids),)).fetchall()
        return {row[_AT["sop_instance_uid"]]: self._record(row) for row in rows}

    def put_batch(self, records, replace_existing):
        # A record made for this commit carries its time (the archive's do: no copy of a
        # 40-field record per instance); one without gets the commit's.
        now = time.time()
        out: list = [r if r.stored_at else dataclasses.replace(r, stored_at=now) for r in records]
        items = [(row_of(r, self.root), rep) for r, rep in zip(out, replace_existing)]
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
                        out[i] = _out_of_space(exc)
        return out

    def _insert(self, items, *, probe: bool = False) -> None:
        # probe: try the rows and roll back, to learn whether they can go in the batch.
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            durable = self._durable
            confirming = self.fsync and not probe and durable > self._confirmed
            if confirming:
                # Batches a completed flush covered: their rows name durable files.
                self._unlist(conn, durable)
            gone = []  # (study, series) of the rows this batch replaces
            for row, replace_existing in items:
                if replace_existing:
                    gone += conn.execute("SELECT study_uid, series_uid FROM instances"
                                         " WHERE sop_instance_uid = ?", (row[0],)).fetchall()
                conn.execute(_REPLACE if replace_existing else _INSERT, row)
            self._entities(conn, [row for row, _ in items], gone)
            if self.fsync and not probe:
                conn.executemany(
                    "INSERT OR REPLACE INTO unconfirmed (sop_instance_uid, writer) VALUES (?, ?)",
                    [(row[0], self._tag(self._batches + 1)) for row, _ in items],
                )
            conn.execute("ROLLBACK" if probe else "COMMIT")
            if confirming:
                self._confirmed = durable
            if not probe:
                self._batches += 1
                if self._batches % CHECKPOINT_EVERY == 0:
                    self._checkpointer.wake()
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _entities(conn: sqlite3.Connection, rows: list[tuple], gone: list[tuple[str, str]]) -> None:
        """Keep the studies and series tables in step with a batch's instance ``rows``
        (``gone``: the study and series of the rows they replaced): one upsert per distinct
        study and series, whose attributes are those of the batch's last instance in it."""
        studies = {row[_AT["study_uid"]]: row for row in rows}
        series = {row[_AT["series_uid"]]: row for row in rows}
        added = collections.Counter(row[_AT["series_uid"]] for row in rows)
        removed = collections.Counter(series_uid for _, series_uid in gone)
        for row in studies.values():
            conn.execute(_UPSERT_STUDY, (
                row[_AT["study_uid"]], *[row[_AT[name]] for name in STUDY_FIELDS],
                fold_case(row[_AT["patient_name"]]), fold_case(row[_AT["referring_physician_name"]])))
        for uid, row in series.items():
            attrs = [row[_AT[name]] for name in _SERIES_COLUMNS[1:]]
            conn.execute(_UPDATE_SERIES, (*attrs, uid, *attrs))
            conn.execute(_UPSERT_SERIES, (uid, *attrs, added[uid], added[uid] - removed[uid]))
        _unlink(conn, gone, written=(series.keys(), studies.keys()))

    def _tag(self, batch: int) -> str:
        return f"{self._writer_id}:{batch:012d}"

    def _unlist(self, conn: sqlite3.Connection, durable: int) -> None:
        """Take the rows of the batches after the last confirmed one, up to ``durable``,
        off the unconfirmed list (the caller holds the write lock)."""
        conn.execute("DELETE FROM unconfirmed WHERE writer > ? AND writer <= ?",
                     (self._tag(self._confirmed), self._tag(durable)))

    def committed(self) -> int:
        return self._batches

    def flushed(self, mark: int) -> None:
        # Flushes may complete out of order (several committer threads): keep the furthest.
        with self._mark_lock:
            self._durable = max(self._durable, mark)

    def confirm(self) -> None:
        with self._write_lock:
            durable = self._durable
            if not self.fsync or durable <= self._confirmed:
                return
            self._unlist(self._writer, durable)
            self._confirmed = durable

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
                bad = json.dumps(list(bad_sop_instance_uids))
                gone = conn.execute("SELECT study_uid, series_uid FROM instances WHERE"
                                    " sop_instance_uid IN (SELECT value FROM json_each(?))",
                                    (bad,)).fetchall()
                conn.execute("DELETE FROM instances WHERE sop_instance_uid IN"
                             " (SELECT value FROM json_each(?))", (bad,))
                _unlink(conn, gone)
                conn.execute("DELETE FROM unconfirmed")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def has_path(self, rel_path: str) -> bool:
        return self._reader().execute(
            "SELECT 1 FROM instances WHERE path = ?", (rel_path,)
        ).fetchone() is not None

    def page(self, after: str, limit: int) -> list[InstanceRecord]:
        rows = self._reader().execute(
            _SELECT + " WHERE sop_instance_uid > ? ORDER BY sop_instance_uid LIMIT ?", (after, limit)
        ).fetchall()
        return [self._record(row) for row in rows]

    def close(self) -> None:
        self._checkpointer.close()
        with self._all_lock:
            self._closed = True
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()


# Commits between two checkpoints of the WAL into the database file. An instance dirties 3-5
# pages (its row, the instance table's indexes, its series), a batch of one ~6 with the
# unconfirmed list: ~1000 pages, SQLite's own default threshold.
CHECKPOINT_EVERY = 160


class _Checkpointer:
    """Copies the WAL back into the database file on a thread of its own.

    SQLite's automatic checkpoint runs inside the COMMIT that crosses its threshold; with
    ``synchronous=NORMAL`` it flushes the WAL, copies the pages and flushes the database file
    (SQLite's "WAL mode" documentation), which stalled the committer, and every store of its
    batch, for 1-17 ms once every few hundred commits on the development machine. Here the
    writer connection has ``wal_autocheckpoint = 0`` and this thread runs the same PASSIVE
    checkpoint on its own connection: it never waits for readers or writers (a reader still
    on old frames only stops it early; the next one goes on), so the WAL stays bounded while
    stores never wait for it. Other processes on the same file run their own; SQLite lets one
    checkpoint run at a time and the others return at once.
    """

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._due = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="index-checkpoint", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._due.set()

    def close(self) -> None:
        self._closed = True
        self._due.set()
        self._thread.join()

    def _run(self) -> None:
        conn = None
        while True:
            self._due.wait()
            self._due.clear()
            if self._closed:
                return
            try:
                if conn is None:
                    conn = self._connect()
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except Exception as exc:  # the WAL grows until the next try; stores go on
                log.warning("index: WAL checkpoint failed: %s", exc)


@dataclass(frozen=True)
class Vanished:
    """An instance a :class:`RecordList` matched whose row was gone when its page was read
    (deleted or replaced since the match): a retrieve counts it as a failed sub-operation."""

    sop_instance_uid: str
    has_alternates: bool = False


class RecordList(Sequence):
    """The instances a query matched, in order, read from the index a page at a time as they
    are reached.

    The match itself reads two columns per row: a C-GET of a study of 200 instances read
    every column of every row first (0.95 ms on the development machine, the largest part
    of the time to its first instance, and growing with the study); the SOP Instance UIDs and
    the alternates flag alone take 0.13 ms, a page of 16 rows by UID 0.08 ms.

    Attributes
    ----------
    uids : list of str
        The matched SOP Instance UIDs, in order.
    has_alternates : bool
        Some row has an Alternate Representation Sequence (known without reading records).
    """

    FIRST_PAGE = 4  # the first read: just what the first sub-operations need
    PAGE = 64

    def __init__(self, matched: list[tuple[str, int]],
                 fetch: Callable[[list[str]], dict[str, InstanceRecord]]) -> None:
        self.uids = [uid for uid, _ in matched]
        self.has_alternates = any(alternates for _, alternates in matched)
        self._fetch = fetch
        self._built: dict[int, InstanceRecord | Vanished] = {}

    def __len__(self) -> int:
        return len(self.uids)

    def loaded(self, i: int) -> bool:
        """True if item ``i`` is read (reading it would not touch the index)."""
        return i in self._built

    def load(self, i: int) -> None:
        """Read the page of records from ``i`` on (blocking: an executor's job when the index
        is a database server)."""
        size = self.PAGE if self._built else self.FIRST_PAGE
        todo = [j for j in range(i, min(i + size, len(self.uids))) if j not in self._built]
        found = self._fetch([self.uids[j] for j in todo])
        for j in todo:
            record = found.get(self.uids[j])
            self._built[j] = Vanished(self.uids[j]) if record is None else record

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self.uids)))]
        i = range(len(self.uids))[i]
        if i not in self._built:
            self.load(i)
        return self._built[i]


UNAVAILABLE_COMMENT = "the index database is unavailable; send again later"
IN_DOUBT_COMMENT = "the index database failed during the commit; send again later"


class IndexUnavailable(StoreFailure):
    """The index's database could not be reached or failed (not this instance's row): the store
    is refused with A720, an A7xx "Refused: Out of Resources" (PS3.4 Table B.2-1; for STOW-RS
    PS3.18 Table I.2-1, and a request of such failures only is answered 503), with an Error
    Comment that says so. Nothing of the instance stays, so sending it again later is safe.

    Every index failure of a store becomes this in one place, the group commit
    (:meth:`Index.store_failure`), so the STOW-RS and C-STORE front ends map it like any
    other A7xx refusal."""

    def __init__(self, cause: BaseException | None = None, comment: str = UNAVAILABLE_COMMENT) -> None:
        super().__init__(FailureReason.INDEX_UNAVAILABLE, comment)
        if cause is not None:
            log.debug("index unavailable: %s", cause)


class CommitInDoubt(IndexUnavailable):
    """:meth:`Index.put_batch` lost its database during the commit and could not learn whether
    the row went in. The store is refused (A720, as :class:`IndexUnavailable`: a client that
    sends the same bytes again is told "already stored" if the row went in), but the group
    commit keeps the published file and its pending marker: start-up recovery keeps the file
    if the row exists, else removes it."""

    def __init__(self, cause: BaseException | None = None) -> None:
        super().__init__(cause, IN_DOUBT_COMMENT)


class DuplicateRow:
    """:meth:`Index.put_batch` refused a row: its SOP Instance UID was stored meanwhile."""

    __slots__ = ()


def _unlink(conn: sqlite3.Connection, gone: list[tuple[str, str]], written=((), ())) -> None:
    """Take deleted or replaced instance rows (their study and series) off their series'
    counts; delete a series left with no instance and a study left with no series. Series
    and studies in ``written`` (the batch's upserts already counted them) are left alone."""
    series, studies = written
    for series_uid, n in collections.Counter(se for _, se in gone if se not in series).items():
        conn.execute("UPDATE series SET n_instances = n_instances - ? WHERE series_uid = ?",
                     (n, series_uid))
        conn.execute("DELETE FROM series WHERE series_uid = ? AND n_instances <= 0", (series_uid,))
    for study_uid in {study_uid for study_uid, _ in gone}.difference(studies):
        conn.execute("DELETE FROM studies WHERE study_uid = ? AND NOT EXISTS"
                     " (SELECT 1 FROM series WHERE study_uid = ?)", (study_uid, study_uid))


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
    return _out_of_space(exc)


_SQLITE_FULL = 13  # sqlite3.h's result code; Python has sqlite3.SQLITE_FULL from 3.11 on


def _out_of_space(exc: Exception) -> Exception:
    """SQLITE_FULL (the index's file system is full, so the WAL cannot grow) as the ENOSPC it
    is: the store is refused for storage space (A710), as when its own file cannot be written."""
    if isinstance(exc, sqlite3.OperationalError) and (
            getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL  # Python 3.11 and later
            or str(exc) == "database or disk is full"):  # SQLite's message for it: Python 3.10
        return OSError(errno.ENOSPC, f"the index: {exc}")
    return exc
