"""The instance index in PostgreSQL: one database shared by every node of an archive.

Same rows as the embedded SQLite index (:mod:`.index`: the ``instances`` table with its
frame index as ``bytea``, the ``studies`` and ``series`` tables of the query keys, kept in
each batch's transaction), so the query engine and the retrievers see no difference. What
changes is who decides between nodes, and when a row is durable.

*Duplicates across nodes.* The primary key on SOP Instance UID decides. A batch of new UIDs
is one statement (rows inserted, their studies and series upserted, committed on its own: one
round trip), and the group commit does not look its UIDs up first (``insert_first``). If one
of its UIDs is stored (by any node, or being committed by one: the insert waits for that
transaction), the primary key's unique violation undoes the statement, and
the batch goes again with ``ON CONFLICT (sop_instance_uid) DO NOTHING RETURNING``: the rows
not returned come back as :class:`~.index.DuplicateRow`, and the group commit decides those
stores again against the winner (same bytes: already stored; different bytes: 0111; another
SOP Class: 0119). Rows are inserted, and studies and series upserted, in UID order, so two
nodes' batches lock rows in one order and cannot deadlock each other.

*Durability.* A commit is durable when it returns (the server's write-ahead log), so
``durable_on_commit`` is True and the group commit (:mod:`.commit`) flushes the batch's files
*before* this index commits. A crash before the commit leaves published files whose pending
markers name them and no row: start-up recovery removes them. A crash after the commit
leaves rows naming files already on stable storage. No row ever names a file that might not
survive, so there is no *unconfirmed* list here: :meth:`PostgresIndex.unconfirmed` is always
empty. With ``fsync=False`` the files are not flushed and this session's commits are
asynchronous (``synchronous_commit = off``): as with SQLite, a power failure may lose the
last stores.

*A lost connection.* If the connection fails during a batch, the commit may have happened
without the client hearing of it. The batch's rows are then looked for by their paths (new
names) on a new connection: those found are stored, the others refused with A720 (an A7xx
"Refused: Out of Resources", PS3.4 Table B.2-1; STOW-RS answers 503) and the Error Comment
"the index database is unavailable; send again later" (:class:`~.index.IndexUnavailable`);
if the server cannot be asked, :class:`~.index.CommitInDoubt` refuses them the same way but
keeps their files and pending markers, and this node's next start-up keeps the files whose
rows exist. Reads retry once on a new
connection, so a restarted server costs the stores that met it, not a restart of the node;
a read the database cannot answer raises :class:`~.index.IndexUnavailable` (QIDO-RS and WADO-RS
answer 503, C-FIND A700, C-GET and C-MOVE A701, each with the same Error Comment:
:mod:`dicomaccel.unavailable`).

*Schema.* Versioned in ``dicomaccel_schema``; :data:`MIGRATIONS` brings a database from any
older version to :data:`SCHEMA_VERSION` at start-up, all in one transaction that first takes
a transaction-level advisory lock (``pg_advisory_xact_lock``), so nodes starting together
migrate once: the others wait for the lock, then find the schema current. A database of a
newer version is refused.

Connections: the group commit writes on one connection of its own; reads (``get``, ``find``,
``lookup``, the query engine's :meth:`PostgresIndex.read`) borrow one from a pool.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import os
import select
import threading
import time
from collections.abc import Sequence

import psycopg
from psycopg_pool import ConnectionPool

from .index import (_AT, _COLUMNS, _MATCH, _ORDER, _SELECT, _SERIES_COLUMNS, _STUDY_COLUMNS, QUERY_FIELDS, STUDY_FIELDS,
                    CommitInDoubt, DuplicateRow, Index, IndexUnavailable, InstanceRecord, RecordList,
                    fold_case, record_of, row_of)

__all__ = ["PostgresIndex", "IndexUnavailable", "SCHEMA_VERSION", "MIGRATIONS"]

log = logging.getLogger("dicomaccel.archive")

# Keys of pg_advisory_xact_lock: one 64-bit number for dicomaccel's migrations ("dicomacc").
_MIGRATION_LOCK = int.from_bytes(b"dicomacc", "big")
# Readers borrowed at once per process (request threads, QIDO-RS, C-GET); more wait.
POOL_SIZE = 8
# Seconds a read waits for a pooled connection (all busy, or the server unreachable) before
# it fails: a store then gets A720 "the index database is unavailable".
POOL_WAIT = 10.0
# Seconds a read waits for a connection of its own while the database is unavailable (libpq's
# connect_timeout; a refused connection fails at once).
CONNECT_WAIT = 3

_INTEGERS = {"instance_number", "number_of_frames", "n_rows", "n_columns", "samples_per_pixel",
             "bits_allocated", "planar_configuration", "size", "dataset_offset", "pixel_tag",
             "pixel_offset", "pixel_value_offset", "pixel_length", "has_alternates", "crc32",
             "received_crc32", "series_number", "n_instances"}
_NULLABLE = {"instance_number", "n_rows", "n_columns", "bits_allocated", "frame_index", "crc32",
             "received_crc32", "series_number"}


def _type(name: str) -> str:
    # Text in the "C" collation: UIDs and keys compare byte by byte, as in SQLite (the
    # retrieval order), and a prefix LIKE can use the B-tree whatever the database's locale.
    if name in _INTEGERS:
        kind = "bigint"
    elif name == "frame_index":
        kind = "bytea"
    elif name == "stored_at":
        kind = "double precision"
    else:
        kind = "text COLLATE \"C\""
    if name in _NULLABLE:
        return kind
    return kind + (" NOT NULL DEFAULT ''" if kind.startswith("text") and name in QUERY_FIELDS
                   else " NOT NULL")


def _table(name: str, columns: Sequence[str], key: str, extra: str = "") -> str:
    body = ",\n    ".join(f"{c} {_type(c)}" for c in columns)
    return f"CREATE TABLE {name} (\n    {body},\n    {extra}PRIMARY KEY ({key})\n)"


# Version -> the statements that bring version - 1 to it. Version 1 is the layout of the
# SQLite index's schema 6.
MIGRATIONS: dict[int, list[str]] = {
    1: [
        _table("instances", _COLUMNS, "sop_instance_uid", "UNIQUE (path),\n    "),
        "CREATE INDEX instances_study_series ON instances (study_uid, series_uid, instance_number)",
        _table("studies", _STUDY_COLUMNS, "study_uid"),
        "CREATE INDEX studies_patient ON studies (patient_id)",
        "CREATE INDEX studies_patient_name ON studies (patient_name_folded)",
        "CREATE INDEX studies_date ON studies (study_date)",
        "CREATE INDEX studies_accession ON studies (accession_number)",
        _table("series", (*_SERIES_COLUMNS, "n_instances"), "series_uid"),
        "CREATE INDEX series_study ON series (study_uid)",
        "CREATE INDEX series_modality ON series (modality)",
    ],
}
SCHEMA_VERSION = max(MIGRATIONS)

# The most parameters one statement binds (the protocol's Bind message counts them in 16 bits).
_MAX_PARAMETERS = 65535


def _values(rows: int, columns: int, first: int = 1) -> str:
    """``rows`` VALUES tuples of ``columns`` numbered placeholders (``$first``...): a batch in
    one statement, sent as is (:class:`psycopg.RawCursor`: no parsing of a long text)."""
    numbers = iter(range(first, first + rows * columns))
    return ", ".join("(" + ", ".join(f"${next(numbers)}" for _ in range(columns)) + ")" for _ in range(rows))


# The batch's rows; a row of a taken UID fails the statement (the primary key's unique violation).
def _insert(rows: int, first: int = 1) -> str:
    return f"INSERT INTO instances ({', '.join(_COLUMNS)}) VALUES {_values(rows, len(_COLUMNS), first)}"


# A row whose UID is taken is not inserted and not returned: another node won (DuplicateRow).
_NEW_ONLY = " ON CONFLICT (sop_instance_uid) DO NOTHING RETURNING sop_instance_uid"
# An overwrite (replace_existing): the new row takes the old one's place.
_REPLACING = (f" ON CONFLICT (sop_instance_uid) DO UPDATE SET ({', '.join(_COLUMNS[1:])}) ="
              f" ({', '.join('excluded.' + c for c in _COLUMNS[1:])}) RETURNING sop_instance_uid")


def _upsert_studies(rows: int, first: int = 1) -> str:
    """Per batch and distinct study: insert, or update only if an attribute changed (last
    write wins), so an unchanged study writes no new row version."""
    attrs = _STUDY_COLUMNS[1:]
    return (f"INSERT INTO studies ({', '.join(_STUDY_COLUMNS)}) VALUES {_values(rows, len(_STUDY_COLUMNS), first)}"
            f" ON CONFLICT (study_uid) DO UPDATE SET ({', '.join(attrs)}) = ({', '.join('excluded.' + c for c in attrs)})"
            f" WHERE ({', '.join('studies.' + c for c in attrs)}) IS DISTINCT FROM"
            f" ({', '.join('excluded.' + c for c in attrs)})")


def _upsert_series(rows: int, first: int = 1) -> str:
    """Per batch and distinct series: its attributes and its count (inserted: the count; else
    added to it) in one statement. The count changes anyway; with the indexed columns
    unchanged the new row version is a HOT update, which writes no index entry."""
    attrs = _SERIES_COLUMNS[1:]
    return (f"INSERT INTO series ({', '.join(_SERIES_COLUMNS)}, n_instances)"
            f" VALUES {_values(rows, len(_SERIES_COLUMNS) + 1, first)}"
            f" ON CONFLICT (series_uid) DO UPDATE SET ({', '.join(attrs)}, n_instances) ="
            f" ({', '.join('excluded.' + c for c in attrs)}, series.n_instances + excluded.n_instances)")


@functools.lru_cache(maxsize=1024)
def _at_once(rows: int, studies: int, series: int) -> str:
    """The usual batch (new UIDs only) as one statement: its instances, then its studies'
    and series' upserts, as data-modifying WITH queries."""
    first_study = 1 + rows * len(_COLUMNS)
    first_series = first_study + studies * len(_STUDY_COLUMNS)
    return (f"WITH i AS ({_insert(rows)}), s AS ({_upsert_studies(studies, first_study)})"
            f" {_upsert_series(series, first_series)}")


class PostgresIndex(Index):
    """The instance index in a PostgreSQL database (see the module docstring).

    Parameters
    ----------
    url : str
        libpq connection URI, ``postgresql://USER@HOST:PORT/DB`` (a password may come from
        ``PGPASSWORD`` or ``~/.pgpass``, as for every libpq client).
    root : str
        Archive root; rows store file paths relative to it, so every node must mount the
        shared data directory (at any path).
    fsync : bool
        False: asynchronous commits (``synchronous_commit = off``), like the files.
    """

    durable_on_commit = True
    sql_dialect = "postgresql"
    # The primary key decides duplicates: a batch of new UIDs is one round trip, no lookup first.
    insert_first = True
    remote = True

    def __init__(self, url: str, root: str, *, fsync: bool = True) -> None:
        self.url = url
        self.root = os.path.abspath(root)
        self.fsync = fsync
        self._write_lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        try:
            with self._write_lock:
                self._migrate(self._writer())
        except psycopg.OperationalError as exc:
            # An OSError, which `dicomaccel serve` reports in one line (as a busy port).
            raise ConnectionError(f"cannot use the index database: {str(exc).strip()}") from None
        self._pool_lock = threading.Lock()
        self._down = False  # the last read found no database: reads connect on their own
        self._pool = self._new_pool()

    # --- connections --------------------------------------------------------------------
    def _writer(self) -> psycopg.Connection:
        """The group commit's connection, opened again after the server dropped it.

        Between batches the connection is idle: nothing is due from the server, so a socket
        with something to read means the server ended the session (a restart, a shutdown:
        its notice, then end of file). Such a connection is replaced *before* a batch is sent
        on it, so a server that went away refuses the batch cleanly (nothing sent) instead of
        leaving its commit in doubt."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken and \
                select.select([conn.fileno()], [], [], 0)[0]:
            conn.close()
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=int(POOL_WAIT))
            if not self.fsync:
                self._conn.execute("SET synchronous_commit = off")
        return self._conn

    def _migrate(self, conn: psycopg.Connection) -> None:
        with conn.transaction():
            # Held until this transaction ends: a second node starting now waits here, then
            # finds the schema current.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS dicomaccel_schema (version integer NOT NULL)")
            row = conn.execute("SELECT version FROM dicomaccel_schema").fetchone()
            version = 0 if row is None else row[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"the index database has schema version {version}, newer than "
                                   f"this dicomaccel knows ({SCHEMA_VERSION}): upgrade dicomaccel")
            if version == SCHEMA_VERSION:
                return
            started = time.monotonic()
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target]:
                    conn.execute(statement)
            if row is None:
                conn.execute("INSERT INTO dicomaccel_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
            else:
                conn.execute("UPDATE dicomaccel_schema SET version = %s", (SCHEMA_VERSION,))
            log.warning("index: PostgreSQL schema migrated from version %d to %d in %.2f s",
                        version, SCHEMA_VERSION, time.monotonic() - started)

    def read(self, sql: str, parameters: Sequence = ()) -> list[tuple]:
        """Run one read-only statement (``%s`` placeholders, parameters always bound) on a
        pooled connection: every read of the index (the query engine's, ``get``, ``find``,
        ``lookup``...) comes here, so this is where a lost database is named.

        A connection the server dropped (a restart, a fail-over) is discarded and the
        statement runs once more on a new connection of its own, opened at once rather than
        waiting for the pool's next attempt; if that works the pool is renewed (its other
        connections are gone too). If the database cannot answer (no connection, or the pool
        had none for :data:`POOL_WAIT` seconds), :class:`~.index.IndexUnavailable` is raised,
        and until a read succeeds again each read tries its own connection, so it fails at
        once (refused) or after :data:`CONNECT_WAIT` seconds rather than after the pool's
        wait, and the node is back on the first read that reaches the database.
        """
        if self._down:
            return self._read_alone(sql, parameters)
        conn = None
        try:
            with self._pool.connection() as conn:
                return conn.execute(sql, parameters).fetchall()
        except psycopg.OperationalError as exc:
            if conn is None or not conn.broken:  # the pool waited in vain: the server is gone
                self._down = True
                raise IndexUnavailable(exc) from None
        return self._read_alone(sql, parameters)

    def _read_alone(self, sql: str, parameters: Sequence) -> list[tuple]:
        """``read`` on a new connection of its own; the pool is renewed once that works."""
        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_WAIT) as conn:
                rows = conn.execute(sql, parameters).fetchall()
        except psycopg.OperationalError as exc:
            self._down = True
            raise IndexUnavailable(exc) from None
        with self._pool_lock:
            old, self._pool = self._pool, self._new_pool()
            self._down = False
        log.warning("index: the database answers again")
        # A connection still lent by the old pool is closed when it comes back.
        threading.Thread(target=old.close, name="dicomaccel-index-old-pool", daemon=True).start()
        return rows

    def _new_pool(self) -> ConnectionPool:
        return ConnectionPool(self.url, min_size=1, max_size=POOL_SIZE, open=True, timeout=POOL_WAIT,
                              kwargs={"autocommit": True}, name="dicomaccel-index")

    # --- reads --------------------------------------------------------------------------
    def get(self, sop_instance_uid: str) -> InstanceRecord | None:
        rows = self.read(_SELECT + " WHERE sop_instance_uid = %s", (sop_instance_uid,))
        return record_of(rows[0], self.root) if rows else None

    def find(self, *, patient_id=None, study_uids=None, series_uids=None,
             sop_instance_uids=None, lazy: bool = False) -> list[InstanceRecord] | RecordList:
        where, args = [], []
        if patient_id is not None:
            where.append("study_uid IN (SELECT study_uid FROM studies WHERE patient_id = %s)")
            args.append(patient_id)
        # One array parameter per list, whatever its length.
        lists = {column: [values] if isinstance(values, str) else list(values)
                 for column, values in (("study_uid", study_uids), ("series_uid", series_uids),
                                        ("sop_instance_uid", sop_instance_uids))
                 if values is not None}
        if "series_uid" in lists and "study_uid" not in lists:
            # The series' studies too, so the (study, series) index finds the rows.
            where.append("study_uid IN (SELECT study_uid FROM series WHERE series_uid = ANY(%s))")
            args.append(lists["series_uid"])
        for column, values in lists.items():
            where.append(f"{column} = ANY(%s)")
            args.append(values)
        condition = " WHERE " + " AND ".join(where) if where else ""
        if lazy:
            return RecordList(self.read(_MATCH + condition + _ORDER, args), self._records_of)
        return [record_of(row, self.root) for row in self.read(_SELECT + condition + _ORDER, args)]

    def _records_of(self, uids: list[str]) -> dict[str, InstanceRecord]:
        rows = self.read(_SELECT + " WHERE sop_instance_uid = ANY(%s)", (uids,))
        return {row[_AT["sop_instance_uid"]]: record_of(row, self.root) for row in rows}

    def lookup(self, sop_instance_uid: str):
        rows = self.read("SELECT path, size, crc32, sop_class_uid, received_crc32 FROM instances"
                         " WHERE sop_instance_uid = %s", (sop_instance_uid,))
        if not rows:
            return None
        return os.path.join(self.root, *rows[0][0].split("/")), *rows[0][1:]

    def lookup_many(self, sop_instance_uids):
        # One round trip for the batch (the primary key's index, one array parameter).
        rows = self.read("SELECT sop_instance_uid, path, size, crc32, sop_class_uid, received_crc32"
                         " FROM instances WHERE sop_instance_uid = ANY(%s)", (list(sop_instance_uids),))
        return {uid: (os.path.join(self.root, *path.split("/")), *rest) for uid, path, *rest in rows}

    def store_failure(self, exc: BaseException) -> BaseException:
        # A read's IndexUnavailable (one per store: the caller names it after its instance), a
        # lost server, a pool that waited POOL_WAIT for a connection (PoolTimeout is one too).
        if isinstance(exc, IndexUnavailable):
            return IndexUnavailable(None, exc.comment)
        return IndexUnavailable(exc) if _unavailable(exc) else exc

    def has_path(self, rel_path: str) -> bool:
        return bool(self.read("SELECT 1 FROM instances WHERE path = %s", (rel_path,)))

    def page(self, after: str, limit: int) -> list[InstanceRecord]:
        rows = self.read(_SELECT + " WHERE sop_instance_uid > %s ORDER BY sop_instance_uid LIMIT %s",
                         (after, limit))
        return [record_of(row, self.root) for row in rows]

    # --- writes -------------------------------------------------------------------------
    def put_batch(self, records, replace_existing):
        now = time.time()
        out: list = [r if r.stored_at else dataclasses.replace(r, stored_at=now) for r in records]
        items = [(_without_nul(row_of(r, self.root)), rep) for r, rep in zip(out, replace_existing)]
        with self._write_lock:
            try:
                self._writer()
            except psycopg.OperationalError as exc:  # nothing was sent: refused, not in doubt
                log.error("index: cannot reach the database: %s", str(exc).strip())
                return [IndexUnavailable(exc)] * len(out)
            try:
                at_once = not any(rep for _, rep in items) and len(items) * len(_COLUMNS) <= _MAX_PARAMETERS
                taken = self._insert_at_once(items) if at_once else None
                if taken is None:
                    taken = self._insert(items)
            except psycopg.Error as exc:
                if _unavailable(exc):
                    return self._after_lost(items, out, exc)
                if len(items) == 1:
                    return [exc]
                # One bad row must not fail the others: try each alone (rolled back), then
                # commit the good ones together.
                good = []
                for i, item in enumerate(items):
                    try:
                        self._insert([item], probe=True)
                        good.append(i)
                    except psycopg.Error as exc:
                        out[i] = _refusal(exc)
                taken = set()
                if good:
                    try:
                        taken = self._insert([items[i] for i in good])
                    except psycopg.Error as exc:
                        lost = self._after_lost([items[i] for i in good], [out[i] for i in good], exc) \
                            if _unavailable(exc) else [exc] * len(good)
                        for i, result in zip(good, lost):
                            out[i] = result
                            if isinstance(result, InstanceRecord):
                                taken.add(result.sop_instance_uid)
        return [DuplicateRow() if isinstance(r, InstanceRecord) and r.sop_instance_uid not in taken
                else r for r in out]

    def _after_lost(self, items, out: list, exc: psycopg.Error) -> list:
        """The connection failed during a batch, perhaps during its COMMIT, whose outcome the
        client then cannot know: ask again on a new connection which rows went in (by their
        paths, which are new names). Rows found are stored; the others get
        :class:`IndexUnavailable`; if the server cannot be asked, :class:`~.index.CommitInDoubt`
        keeps their files for start-up recovery to decide."""
        paths = [row[_AT["path"]] for row, _ in items]
        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                found = {uid for uid, in conn.execute(
                    "SELECT sop_instance_uid FROM instances WHERE path = ANY(%s)", (paths,))}
        except psycopg.Error:
            log.error("index: the database failed during a commit and cannot be reached: %s", exc)
            return [CommitInDoubt(exc)] * len(items)
        log.error("index: the database failed during a batch (%d of %d row(s) committed): %s",
                  len(found), len(items), exc)
        return [r if r.sop_instance_uid in found else IndexUnavailable(exc) for r in out]

    def _insert_at_once(self, items) -> set[str] | None:
        """The usual batch (new UIDs only) in one round trip: one statement, committed on its
        own (:func:`_at_once`). None if a row's UID was taken (the primary key's unique
        violation undid the statement): then :meth:`_insert` finds which."""
        rows = [row for row, _ in items]
        studies, series = _entities(rows, [])
        try:
            psycopg.RawCursor(self._writer()).execute(
                _at_once(len(rows), len(studies), len(series)),
                [v for group in (sorted(rows), studies, series) for row in group for v in row])
        except psycopg.errors.UniqueViolation as exc:
            if exc.diag.constraint_name != "instances_pkey":
                raise
            return None
        return {row[0] for row in rows}

    def _insert(self, items, *, probe: bool = False) -> set[str]:
        """Insert ``items`` (row, replace_existing) in one transaction (``probe``: then roll it
        back); the SOP Instance UIDs that went in."""
        conn = self._writer()
        with conn.transaction(force_rollback=probe), conn.cursor() as cur, psycopg.RawCursor(conn) as raw:
            replaced = sorted(row[0] for row, replace in items if replace)
            gone = cur.execute(
                "SELECT study_uid, series_uid FROM instances WHERE sop_instance_uid = ANY(%s)"
                " ORDER BY sop_instance_uid FOR UPDATE", (replaced,)).fetchall() if replaced else []
            taken = set()
            for conflict in (_NEW_ONLY, _REPLACING):
                rows = sorted(row for row, rep in items if bool(rep) == (conflict is _REPLACING))
                for chunk in _chunks(rows):
                    raw.execute(_insert(len(chunk)) + conflict, [v for row in chunk for v in row])
                    taken.update(uid for uid, in raw.fetchall())
            new = [row for row, _ in items if row[0] in taken]
            if new:
                for sql, group in zip((_upsert_studies, _upsert_series), _entities(new, gone)):
                    for chunk in _chunks(group):
                        raw.execute(sql(len(chunk)), [v for row in chunk for v in row])
            _unlink(cur, gone, written=({row[_AT["series_uid"]] for row in new},
                                        {row[_AT["study_uid"]] for row in new}))
        return taken

    def flushed(self, mark: int) -> None:
        """Nothing to note: the files were flushed before the commit (``durable_on_commit``)."""

    def confirm(self) -> None:
        """Nothing to confirm: a committed row is durable."""

    def unconfirmed(self):
        return []

    def drop_unconfirmed(self, bad_sop_instance_uids) -> None:
        bad = list(bad_sop_instance_uids)
        if not bad:
            return
        with self._write_lock:
            conn = self._writer()
            with conn.transaction(), conn.cursor() as cur:
                gone = cur.execute("DELETE FROM instances WHERE sop_instance_uid = ANY(%s)"
                                   " RETURNING study_uid, series_uid", (bad,)).fetchall()
                _unlink(cur, gone)

    def close(self) -> None:
        self._pool.close()
        with self._write_lock:
            if self._conn is not None:
                self._conn.close()


def _chunks(rows: list[tuple]) -> list[list[tuple]]:
    """``rows`` in statements of at most :data:`_MAX_PARAMETERS` values."""
    if not rows:
        return []
    n = _MAX_PARAMETERS // len(rows[0])
    return [rows[i:i + n] for i in range(0, len(rows), n)]


def _without_nul(row: tuple) -> tuple:
    """``row`` with NUL characters taken out of its text values: PostgreSQL's text cannot hold
    them, and no text VR's repertoire has them (PS3.5 §6.1.2.3; a UI value's trailing NUL is
    padding, §6.2). The stored file keeps the bytes as received; the index holds the values
    that matching and search results use."""
    if not any(isinstance(v, str) and "\x00" in v for v in row):
        return row
    return tuple(v.replace("\x00", "") if isinstance(v, str) else v for v in row)


def _entities(rows: list[tuple], gone: list[tuple[str, str]]) -> tuple[list[tuple], list[tuple]]:
    """The studies' and the series' rows that keep those tables in step with a batch's new
    ``rows`` (in arrival order: attributes are those of the batch's last instance in each;
    ``gone``: the study and series of the rows they replaced), each in UID order (one lock
    order on every node); a series' row ends with the change of its instance count."""
    studies = {row[_AT["study_uid"]]: row for row in rows}
    series = {row[_AT["series_uid"]]: row for row in rows}
    net = collections.Counter(row[_AT["series_uid"]] for row in rows)
    net.subtract(series_uid for _, series_uid in gone if series_uid in series)
    return ([(uid, *[row[_AT[name]] for name in STUDY_FIELDS],
              fold_case(row[_AT["patient_name"]]), fold_case(row[_AT["referring_physician_name"]]))
             for uid, row in sorted(studies.items())],
            [(uid, *[row[_AT[name]] for name in _SERIES_COLUMNS[1:]], net[uid])
             for uid, row in sorted(series.items())])


def _unlink(cur: psycopg.Cursor, gone: list[tuple[str, str]], written=((), ())) -> None:
    """Take deleted or replaced instance rows off their series' counts; delete a series left
    with no instance and a study left with no series (those in ``written`` were counted by
    the batch's upserts)."""
    series, studies = written
    for series_uid, n in sorted(collections.Counter(se for _, se in gone if se not in series).items()):
        cur.execute("UPDATE series SET n_instances = n_instances - %s WHERE series_uid = %s",
                    (n, series_uid))
        cur.execute("DELETE FROM series WHERE series_uid = %s AND n_instances <= 0", (series_uid,))
    for study_uid in sorted({study_uid for study_uid, _ in gone}.difference(studies)):
        cur.execute("DELETE FROM studies WHERE study_uid = %s AND NOT EXISTS"
                    " (SELECT 1 FROM series WHERE study_uid = %s)", (study_uid, study_uid))


def _unavailable(exc: BaseException) -> bool:
    """The server or the connection failed (not this batch's rows)."""
    return isinstance(exc, psycopg.OperationalError)


def _refusal(exc: psycopg.Error) -> BaseException:
    return IndexUnavailable(exc) if _unavailable(exc) else exc
