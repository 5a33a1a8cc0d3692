"""Check an instance's top-level attributes against its IOD (PS3.3 Annex A, Annex C).

The ingest scanner reports every top-level element it walked over as tag -> value length;
:func:`validate` compares that with the Type 1 and Type 2 attributes of the mandatory modules
of the instance's IOD (:mod:`dicomaccel.policy.iod_tables`) and with a few Enumerated Values
and value multiplicities. Nothing nested in a sequence is seen, so nothing nested is checked.

The tables are compiled at import into one tuple of checks per SOP Class, sorted by tag, so a
call is a handful of dictionary look-ups and allocates nothing for a conforming instance.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .iod_tables import (
    ENUMERATED,
    IOD_ENUMERATED,
    IODS,
    MODULES,
    REQUIRED_UNLESS,
    VALUE_MULTIPLICITY,
)

__all__ = ["Problem", "has_iod", "validate", "iod_attributes"]


@dataclass(frozen=True)
class Problem:
    """One way an instance departs from its IOD.

    Attributes
    ----------
    tag : int
        The attribute's tag, e.g. ``0x00280010``.
    keyword : str
        Its PS3.6 keyword, e.g. ``"Rows"``.
    module : str
        The PS3.3 module that requires it, e.g. ``"Image Pixel"``.
    kind : str
        ``"missing"`` (a Type 1 or Type 2 attribute is absent), ``"empty"`` (a Type 1
        attribute has zero length), ``"value"`` (not one of the Enumerated Values) or
        ``"vm"`` (wrong value multiplicity).
    comment : str
        One short line naming the attribute, the fault and the clause, e.g.
        ``"(0028,0010) Rows: Type 1 attribute missing (PS3.3 C.7.6.3 Image Pixel Module)"``.
    """

    tag: int
    keyword: str
    module: str
    kind: str
    comment: str


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _module_ref(module: str) -> str:
    """``"PS3.3 C.7.6.3 Image Pixel Module"`` for a module of :data:`MODULES`."""
    clause = MODULES[module][0].split(" (", 1)[0]
    return f"PS3.3 {clause} {module} Module"


# --- Compiled plans -------------------------------------------------------------------------
# Presence check: (tag, type 1?, keyword, module, missing comment, empty comment, unless tag).
# `unless` is 0 for plain Type 1/2 attributes, else the tag whose presence waives the check.
_Presence = tuple[int, bool, str, str, str, str, int]
# Value check: (tag, keyword, VM (min, max or None for "n") or None, module for the VM
# problem, enumerated checks ((value index or None, allowed, module, clause), ...)).
_Enum = tuple["int | None", frozenset, str, str]
_ValueCheck = tuple[int, str, "tuple[int, int | None] | None", str, tuple[_Enum, ...]]


@dataclass(frozen=True)
class _Plan:
    presence: tuple[_Presence, ...]
    values: tuple[_ValueCheck, ...]


def _compile(uid: str) -> _Plan:
    modules = IODS[uid][2]
    # tag -> (type 1?, keyword, module); the stricter type wins, then the first module.
    required: dict[int, tuple[bool, str, str]] = {}
    for module in modules:
        for tag, keyword, kind in MODULES[module][1]:
            type1 = kind == "1"
            if tag not in required or (type1 and not required[tag][0]):
                required[tag] = (type1, keyword, module)
    presence: list[_Presence] = []
    for tag, (type1, keyword, module) in required.items():
        where = f"{_tag_text(tag)} {keyword}: Type {'1' if type1 else '2'} attribute"
        presence.append((tag, type1, keyword, module, f"{where} missing ({_module_ref(module)})",
                         f"{where} has no value ({_module_ref(module)})", 0))
    for module in modules:
        for tag, keyword, other in REQUIRED_UNLESS.get(module, ()):
            where = f"{_tag_text(tag)} {keyword}: Type 1C attribute"
            presence.append((
                tag, True, keyword, module,
                f"{where} missing, and no {_tag_text(other)} ({_module_ref(module)})",
                f"{where} has no value ({_module_ref(module)})", other))
    presence.sort(key=lambda p: p[0])

    # Enumerated values, grouped by tag so `text` is called once per attribute.
    enums: dict[int, list[_Enum]] = {}
    keywords = {tag: keyword for tag, (_, keyword, _) in required.items()}
    for module in modules:
        for tag, index, allowed in ENUMERATED.get(module, ()):
            enums.setdefault(tag, []).append((index, allowed, module, _module_ref(module)))
    for tag, index, allowed, module, clause in IOD_ENUMERATED.get(uid, ()):
        enums.setdefault(tag, []).append((index, allowed, module, clause))
    values: list[_ValueCheck] = []
    for tag in sorted(set(enums) | (set(VALUE_MULTIPLICITY) & set(required))):
        vm = VALUE_MULTIPLICITY.get(tag) if tag in required else None
        values.append((tag, keywords[tag], vm, required[tag][2] if vm else "",
                       tuple(enums.get(tag, ()))))
    return _Plan(tuple(presence), tuple(values))


_PLANS: dict[str, _Plan] = {uid: _compile(uid) for uid in IODS}


# --- Public API -----------------------------------------------------------------------------
def has_iod(sop_class_uid: str) -> bool:
    """Whether :func:`validate` has a table for this SOP Class.

    Parameters
    ----------
    sop_class_uid : str
        The SOP Class UID, without padding.

    Returns
    -------
    bool
    """
    return sop_class_uid in _PLANS


def iod_attributes(sop_class_uid: str) -> dict[int, tuple[str, str, str]]:
    """The attributes checked for presence for a SOP Class: tag -> (keyword, type, module).

    Parameters
    ----------
    sop_class_uid : str
        The SOP Class UID, without padding.

    Returns
    -------
    dict
        Empty when :func:`has_iod` is False. Type is ``"1"``, ``"2"`` or ``"1C"``.
    """
    plan = _PLANS.get(sop_class_uid)
    if plan is None:
        return {}
    return {
        tag: (keyword, ("1C" if unless else "1") if type1 else "2", module)
        for tag, type1, keyword, module, _, _, unless in plan.presence
    }


def validate(
    sop_class_uid: str, lengths: Mapping[int, int], text: Callable[[int], str]
) -> list[Problem]:
    """Check an instance's top-level attributes against its IOD.

    Parameters
    ----------
    sop_class_uid : str
        The instance's SOP Class UID, without padding.
    lengths : Mapping[int, int]
        EVERY top-level element of the data set (File Meta group 0002 excluded), tag ->
        value length in bytes. A sequence's length is 0 when it has no items, so a Type 1
        sequence without items is "empty". An undefined length (0xFFFFFFFF) counts as a
        value. Pixel Data must be included when present.
    text : Callable[[int], str]
        ``text(tag)`` is the value of a present string-VR element decoded as ASCII, trailing
        spaces and NULs stripped. It is called only for tags present in `lengths` with a
        non-zero length, and only for the Enumerated Value and VM checks.

    Returns
    -------
    list of Problem
        In tag order (for one tag: presence, then VM, then values). Empty for a conforming
        instance and for SOP Classes without a table (:func:`has_iod` False).
    """
    plan = _PLANS.get(sop_class_uid)
    if plan is None:
        return []
    problems: list[Problem] = []
    get = lengths.get
    for tag, type1, keyword, module, missing, empty, unless in plan.presence:
        n = get(tag)
        if n is None:
            if not unless or unless not in lengths:
                problems.append(Problem(tag, keyword, module, "missing", missing))
        elif type1 and n == 0:
            problems.append(Problem(tag, keyword, module, "empty", empty))
    unsorted = False
    for tag, keyword, vm, vm_module, enums in plan.values:
        if not get(tag):
            continue
        parts = text(tag).split("\\")
        if vm is not None:
            low, high = vm
            count = len(parts)
            if count < low or (high is not None and count > high):
                want = f"{low}-n" if high is None else (
                    str(low) if low == high else f"{low}-{high}")
                problems.append(Problem(
                    tag, keyword, vm_module, "vm",
                    f"{_tag_text(tag)} {keyword}: {count} value(s), VM is {want} "
                    f"(PS3.6 Table 6-1)"))
                unsorted = True
        for index, allowed, module, clause in enums:
            if index is None:
                checked = enumerate(parts)
            elif index < len(parts):
                checked = ((index, parts[index]),)
            else:
                continue
            for i, value in checked:
                value = value.strip(" ")
                if value not in allowed:
                    shown = value if len(value) <= 24 else value[:24] + "..."
                    problems.append(Problem(
                        tag, keyword, module, "value",
                        f"{_tag_text(tag)} {keyword}: Value {i + 1} {shown!r} is not an "
                        f"Enumerated Value ({clause})"))
                    unsorted = True
                    break
    if unsorted:
        problems.sort(key=_by_tag)  # stable: presence problems stay ahead of value ones
    return problems


def _by_tag(problem: Problem) -> int:
    return problem.tag
