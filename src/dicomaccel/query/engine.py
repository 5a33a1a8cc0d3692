"""The query engine: conditions in, result rows out, over the archive's index (SQLite or
PostgreSQL: :mod:`.dialect` holds what differs in their SQL).

One search serves both doors (QIDO-RS in :mod:`dicomaccel.qido`, C-FIND in
:mod:`dicomaccel.retrieve.cfind`). The entities of each level (PS3.4 C.6) are the rows of
one table: ``studies``, ``series``, ``instances``; a patient is the group of its studies.
A search is two steps:

1. one page of the level's rows that match every condition (``LIMIT``/``OFFSET`` applied
   here, one more row fetched to know whether the result was cut), with the attributes read
   from a row: the level's own and those of the levels above (their tables joined by UID).
   A condition on a table below the level (Modalities in Study, SOP Classes in Study) is a
   sub-query: the entity has *some* row there that matches;
2. for that page only, the computed attributes (PS3.4 C.6.1.1.4-C.6.1.1.5: counts,
   Modalities and SOP Classes in Study) over *all* the rows below each entity, so a key such
   as Modalities in Study restricts which studies match without changing what is counted.

Every value is a bound parameter; a list travels as one parameter (JSON for SQLite's
``json_each``, an array for PostgreSQL), so no statement depends on how many values a
request holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .attributes import BY_TAG, LEVEL_COLUMN, LEVEL_TABLE, LEVELS, UNIQUE_KEYS, Attribute
from .dialect import Dialect, dialect_of
from .matching import Condition

__all__ = ["Query", "SearchResult", "search"]

_ALIAS = {"studies": "st", "series": "se", "instances": "i"}
_DEPTH = {"studies": 1, "series": 2, "instances": 3}
# The UIDs a table's rows hold themselves (their entity's and those above): read without a join.
_UIDS = {"studies": {"study_uid"}, "series": {"study_uid", "series_uid"},
         "instances": {"study_uid", "series_uid", "sop_instance_uid"}}
# How the rows of a table reach the row above them.
_JOIN = {("series", "studies"): " JOIN studies st ON st.study_uid = se.study_uid",
         ("instances", "series"): " JOIN series se ON se.series_uid = i.series_uid",
         ("instances", "studies"): " JOIN studies st ON st.study_uid = i.study_uid"}
# The column a table below links to (a condition on it is a sub-query on that column).
_LINK = {"studies": "study_uid", "series": "series_uid"}
# The rows a computed attribute aggregates, by (level, table), and the entity's column there.
_AGGREGATE_FROM = {
    ("PATIENT", "series"): ("studies st JOIN series se ON se.study_uid = st.study_uid",
                            "st.patient_id"),
    ("STUDY", "series"): ("series se", "se.study_uid"),
    ("STUDY", "instances"): ("instances i", "i.study_uid"),
}
# Result order: by the level's unique key; instances as the index's own listing orders them.
_ORDER = {"PATIENT": "st.patient_id", "STUDY": "st.study_uid", "SERIES": "se.series_uid",
          "IMAGE": "i.study_uid, i.series_uid, i.instance_number IS NULL, i.instance_number, "
                   "i.sop_instance_uid"}


@dataclass(frozen=True)
class Query:
    """A search at ``level`` returning ``returns`` (tags; the engine fills the ones of
    :data:`~.attributes.ATTRIBUTES`, others are the caller's)."""

    level: str
    conditions: tuple[Condition, ...] = ()
    returns: tuple[int, ...] = ()
    limit: int | None = None
    offset: int = 0


@dataclass
class SearchResult:
    """Matches as ``{tag: value}`` (str, int, list of str for multi-valued computed keys,
    None when empty), in a stable order; ``more`` says matches were left after ``limit``."""

    matches: list[dict] = field(default_factory=list)
    more: bool = False


def search(index, query: Query) -> SearchResult:
    """Run ``query`` on ``index`` (an :class:`~dicomaccel.archive.index.Index` with a ``read``
    method that runs one read statement, in the SQL its ``sql_dialect`` names)."""
    level = query.level
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}")
    table = LEVEL_TABLE[level]
    depth = LEVELS.index(level)
    returned = [BY_TAG[t] for t in query.returns if t in BY_TAG]
    # Attributes read from a row: of this level and above (one value per entity).
    plain = [a for a in returned if a.computed is None and LEVELS.index(a.level) <= depth]
    computed = [a for a in returned if a.computed is not None and LEVELS.index(a.level) <= depth]
    # The levels above this one whose computed attributes are asked for: the key of the
    # owning entity (e.g. the study of a series) is read with each row.
    owners = sorted({a.level for a in computed} - {level}, key=LEVELS.index)
    d = dialect_of(index)
    joins: set[str] = set()
    where, args = _where(query.conditions, table, joins, d)
    columns = [f"{_ALIAS[table]}.{LEVEL_COLUMN[level]}"]
    columns += [_column(a, a.column, table, joins) for a in plain]
    columns += [_column(BY_TAG[UNIQUE_KEYS[lvl]], LEVEL_COLUMN[lvl], table, joins) for lvl in owners]
    page = ""
    page_args: list = []
    if query.limit is not None:
        page = f" LIMIT {d.p} OFFSET {d.p}"
        page_args = [query.limit + 1, query.offset]
    elif query.offset:
        page = d.offset()
        page_args = [query.offset]
    # With matching keys, "+" keeps SQLite from walking the table in the order of the result
    # (to save a sort) instead of using the index of the matching column; without any,
    # walking in order is what lets LIMIT stop early.
    plus = d.plus if where else ""
    distinct, group = d.one_per_patient(plus) if level == "PATIENT" else ("", "")
    source = f"{table} {_ALIAS[table]}" + "".join(
        _JOIN[table, above] for above in sorted(joins, key=_DEPTH.get))
    rows = index.read(f"SELECT {distinct}{', '.join(columns)} FROM {source}{where}{group}"
                      f" ORDER BY {plus}{_ORDER[level]}{page}", args + page_args)
    more = query.limit is not None and len(rows) > query.limit
    if more:
        rows = rows[:query.limit]
    n = len(plain)
    matches = [{a.tag: _value(a, v) for a, v in zip(plain, row[1:n + 1])} for row in rows]
    keys = {level: [row[0] for row in rows]}
    for j, lvl in enumerate(owners):
        keys[lvl] = [row[n + 1 + j] for row in rows]
    for lvl, source_table in {(a.level, a.table) for a in computed}:
        _aggregate(index, d, matches, keys[lvl], lvl, source_table,
                   [a for a in computed if (a.level, a.table) == (lvl, source_table)])
    return SearchResult(matches, more)


def _column(a: Attribute, column: str, table: str, joins: set[str]) -> str:
    """``column`` of ``a`` in a search over ``table``: from the row itself, or from the
    joined row of the table above that holds it."""
    if a.table == table or column in _UIDS[table]:
        return f"{_ALIAS[table]}.{column}"
    joins.add(a.table)
    return f"{_ALIAS[a.table]}.{column}"


def _where(conditions, table: str, joins: set[str], d: Dialect) -> tuple[str, list]:
    parts, args = [], []
    for c in conditions:
        a: Attribute = c.attribute
        column = a.folded or a.column
        if a.computed is not None or _DEPTH[a.table] > _DEPTH[table]:
            # Rows below the level: the entity has some row there that matches.
            link = LEVEL_COLUMN[a.level] if a.computed is not None else _LINK[table]
            test, values = _test(column, c, d)
            parts.append(f"{_ALIAS[table]}.{link} IN (SELECT {link} FROM {a.table} WHERE {test})")
        else:
            test, values = _test(_column(a, column, table, joins), c, d)
            parts.append(test)
        args += values
    return (" WHERE " + " AND ".join(parts) if parts else ""), args


def _test(column: str, c: Condition, d: Dialect) -> tuple[str, list]:
    """The SQL test of one condition on ``column``, and its parameters."""
    if c.kind == "single":
        return f"{column} = {d.p}", [c.values[0]]
    if c.kind == "list":
        test, values = d.any_of(column, c.values)
        return test, [values]
    if c.kind == "wildcard":
        test, pattern = d.wildcard(column, c.values[0])
        return test, [pattern]
    if c.kind == "range":
        low, high = c.values
        parts, args = [], []
        if low is not None:
            parts.append(f"{column} >= {d.p}")
            args.append(low)
        if high is not None:
            # A bound matches every value it is a prefix of ("12" ends at 12:59:59.x):
            # '~' sorts after the digits and '.'.
            parts.append(f"{column} <= {d.p}")
            args.append(high + "~")
        parts.append(f"{column} != ''")
        return " AND ".join(parts), args
    raise ValueError(f"unknown condition kind {c.kind!r}")


def _aggregate(index, d: Dialect, matches: list[dict], keys: list, lvl: str, table: str,
               attrs: list[Attribute]) -> None:
    """Fill the computed attributes ``attrs`` of level ``lvl`` (over rows of ``table``) of
    each match; ``keys`` holds the entity of that level each match belongs to."""
    if not matches:
        return
    rows_from, column = _AGGREGATE_FROM[lvl, table]
    wanted = sorted({k for k in keys if k is not None})
    exprs = ", ".join(d.aggregate(a.computed) for a in attrs)
    test, values = d.any_of(column, wanted)
    rows = index.read(f"SELECT {column}, {exprs} FROM {rows_from} WHERE {test} GROUP BY {column}", [values])
    values = {r[0]: r[1:] for r in rows}
    for match, k in zip(matches, keys):
        got = values.get(k)
        for i, a in enumerate(attrs):
            match[a.tag] = None if got is None else _value(a, got[i])


def _value(a: Attribute, v):
    if a.computed and isinstance(v, str):
        # The distinct values joined by commas: a multi-valued attribute, sorted.
        return sorted(x for x in set(v.split(",")) if x) or None
    if v == "":
        return None
    return v
