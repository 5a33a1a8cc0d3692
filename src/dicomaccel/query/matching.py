"""Turn a requested value into a matching condition (PS3.4 C.2.2.2), one way for both doors.

- Universal matching (C.2.2.2.3): an empty value, or ``*`` alone: no condition.
- Single value matching (C.2.2.2.1): equality; Person Names ignore case (allowed for PN),
  and ``fuzzymatching`` is never performed (PS3.18 §8.3.4.1).
- List of UID matching (C.2.2.2.2): values separated by a backslash.
- Wild card matching (C.2.2.2.4): ``*`` any run of characters, ``?`` one character; not for
  the VRs that section excludes (DA, TM, DT, the numbers, UI).
- Range matching (C.2.2.2.5): ``low-high``, ``-high``, ``low-`` for DA and TM; the bounds
  are compared at the precision given (``-12`` for TM takes all of 12:xx:xx).
Sequence matching (C.2.2.2.6) is not offered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .attributes import Attribute

__all__ = ["Condition", "MatchError", "condition"]

_DA = re.compile(r"[0-9]{8}")
_TM = re.compile(r"[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:\.[0-9]{1,6})?)?)?")
_INT = re.compile(r"[+-]?[0-9]{1,12}")
# VRs wild card matching does not apply to (PS3.4 C.2.2.2.4).
_NO_WILDCARD = {"DA", "TM", "DT", "IS", "US", "UL", "SS", "SL", "DS", "FL", "FD", "UI", "AT"}
_INTEGER = {"IS", "US", "UL", "SS", "SL"}
# Some text VRs are case-insensitive here (PN: PS3.4 C.2.2.2.1); others are compared as
# given. The folded value must be built the way the index builds its folded columns.


class MatchError(ValueError):
    """A value that cannot be a matching key for its attribute; the message says why."""


@dataclass(frozen=True)
class Condition:
    """One matching key.

    ``kind`` is ``single`` (``values[0]``), ``list`` (any of ``values``), ``wildcard``
    (``values[0]`` is a SQL GLOB pattern) or ``range`` (``values`` is ``(low, high)``, either
    None). Values of case-insensitive attributes are already case-folded.
    """

    attribute: Attribute
    kind: str
    values: tuple


def condition(attribute: Attribute, values: list[str]) -> Condition | None:
    """The condition ``values`` (one or more values as requested) put on ``attribute``.

    Returns None for universal matching. Raises :class:`MatchError` for a value its VR does
    not allow.
    """
    values = [v.strip(" ") if attribute.vr != "UI" else v.strip(" \x00") for v in values]
    values = [v for v in values if v != ""]
    if not values or (all(v == "*" for v in values) and attribute.vr not in _INTEGER):
        return None
    name = attribute.keyword
    vr = attribute.vr
    if vr == "UI" or (len(values) > 1 and vr == "CS"):
        # List of UID matching (C.2.2.2.2); a CS key with several values (Modalities in
        # Study, C.6.1.1.4.1) matches any of them.
        for v in values:
            if "*" in v or "?" in v:
                raise MatchError(f"{name}: wild cards are not allowed in {vr} values ({v[:64]!r})")
        return Condition(attribute, "list" if len(values) > 1 else "single", tuple(values))
    if len(values) > 1:
        raise MatchError(f"{name}: only one value may be given")
    value = values[0]
    if vr == "DA" or vr == "TM":
        return _range_or_single(attribute, value)
    if vr in _INTEGER:
        if not _INT.fullmatch(value):
            raise MatchError(f"{name}: {value[:64]!r} is not an integer")
        return Condition(attribute, "single", (int(value),))
    if vr in _NO_WILDCARD:
        return Condition(attribute, "single", (value,))
    if attribute.folded:
        value = fold(value)
    if "*" in value or "?" in value:
        return Condition(attribute, "wildcard", (_glob(value),))
    return Condition(attribute, "single", (value,))


def fold(value: str) -> str:
    """Case folding of a PN value, as :func:`dicomaccel.archive.index.fold_case` stores it."""
    from ..archive.index import fold_case

    return fold_case(value)


def _glob(pattern: str) -> str:
    # SQLite GLOB has * and ? as DICOM does; '[' starts a class there, so it is escaped as
    # the one-character class "[[]".
    return pattern.replace("[", "[[]")


def _range_or_single(attribute: Attribute, value: str) -> Condition:
    vr, name = attribute.vr, attribute.keyword
    check = _DA if vr == "DA" else _TM

    def normal(v: str) -> str:
        v = v.replace(".", "") if vr == "DA" else v.replace(":", "")
        if not check.fullmatch(v):
            kind = "a date (YYYYMMDD)" if vr == "DA" else "a time (HH[MM[SS[.F]]])"
            raise MatchError(f"{name}: {v[:64]!r} is not {kind}")
        return v

    if "-" not in value:
        return Condition(attribute, "single" if vr == "DA" else "range",
                         (normal(value),) if vr == "DA" else (normal(value), normal(value)))
    low, _, high = value.partition("-")
    low = normal(low) if low else None
    high = normal(high) if high else None
    if low is None and high is None:
        raise MatchError(f"{name}: a range needs at least one bound")
    if low is not None and high is not None and low > high:
        raise MatchError(f"{name}: the range {value[:64]!r} is empty (start after end)")
    return Condition(attribute, "range", (low, high))
