"""The SQL the query engine writes, for each index backend (``Index.sql_dialect``).

The engine builds one statement per step from the same pieces on both; only these differ:
placeholders, a list of values as one parameter, wild card matching, an offset without a
limit, one row per patient, and the text aggregate of the computed attributes.
"""

from __future__ import annotations

import json
import re

__all__ = ["Dialect", "SQLite", "PostgreSQL", "dialect_of"]


class Dialect:
    """SQLite's (the embedded index).

    Attributes
    ----------
    p : str
        The placeholder of one bound parameter.
    plus : str
        Put before an ORDER BY or GROUP BY term when the search has matching keys: SQLite
        then uses the index of the matching column instead of walking the table in result
        order to save a sort (a unary ``+`` hides the column from its planner).
    """

    p = "?"
    plus = "+"

    def any_of(self, column: str, values) -> tuple[str, object]:
        """``column`` equal to one of ``values``: one JSON parameter whatever their number."""
        return f"{column} IN (SELECT value FROM json_each(?))", json.dumps(list(values))

    def wildcard(self, column: str, glob: str) -> tuple[str, str]:
        """``column`` matching a GLOB pattern (``*``, ``?``, ``[[]`` for a ``[``; PS3.4
        C.2.2.2.4 wild cards as :mod:`.matching` writes them)."""
        return f"{column} GLOB ?", glob

    def offset(self) -> str:
        """``OFFSET`` without a ``LIMIT``."""
        return " LIMIT -1 OFFSET ?"

    def one_per_patient(self, plus: str) -> tuple[str, str]:
        """``(after SELECT, after WHERE)`` that make a patient's studies one row (the Patient
        level's attributes are every study row's)."""
        return "", f" GROUP BY {plus}st.patient_id"

    def aggregate(self, expression: str) -> str:
        """A computed attribute's aggregate (written in SQLite's SQL)."""
        return expression


class PostgreSQLDialect(Dialect):
    """PostgreSQL's (:mod:`dicomaccel.archive.postgres_index`)."""

    p = "%s"
    plus = ""  # its planner needs no hint, and text has no unary +

    def any_of(self, column: str, values) -> tuple[str, object]:
        return f"{column} = ANY(%s)", list(values)

    def wildcard(self, column: str, glob: str) -> tuple[str, str]:
        # The index's text is in the "C" collation: LIKE compares bytes as GLOB does, and a
        # pattern with a fixed prefix can use the column's B-tree.
        return f"{column} LIKE %s", _like(glob)

    def offset(self) -> str:
        return " OFFSET %s"

    def one_per_patient(self, plus: str) -> tuple[str, str]:
        return "DISTINCT ON (st.patient_id) ", ""

    def aggregate(self, expression: str) -> str:
        # group_concat(DISTINCT x) -> string_agg(DISTINCT x, ','): the same comma-separated
        # text; sum() of a bigint is numeric here, cast back to an integer.
        expression = re.sub(r"group_concat\(DISTINCT ([^()]*)\)", r"string_agg(DISTINCT \1, ',')", expression)
        return re.sub(r"\bsum\(([^()]*)\)", r"sum(\1)::bigint", expression)


def _like(glob: str) -> str:
    """A GLOB pattern of :mod:`.matching` as a LIKE pattern (escape character ``\\``)."""
    out = []
    i = 0
    while i < len(glob):
        if glob.startswith("[[]", i):
            out.append("[")
            i += 3
            continue
        c = glob[i]
        out.append({"*": "%", "?": "_", "%": "\\%", "_": "\\_", "\\": "\\\\"}.get(c, c))
        i += 1
    return "".join(out)


SQLite = Dialect()
PostgreSQL = PostgreSQLDialect()
_BY_NAME = {"sqlite": SQLite, "postgresql": PostgreSQL}


def dialect_of(index) -> Dialect:
    """The dialect of ``index`` (its ``sql_dialect``)."""
    return _BY_NAME[index.sql_dialect]
