"""Coercion and discard rules: what the archive changes in a data set before storing it.

A rule comes from the configuration file (``[[coerce]]`` and ``[[discard]]`` tables):

- coerce: ``tag`` (a keyword such as ``"InstitutionName"`` or ``"(0008,0080)"``) is set to
  ``value``. The value is a template: ``{Keyword}`` is replaced by that attribute's current
  value (e.g. ``value = "HOSP-{PatientID}"``). With ``only_if_empty = true`` the rule applies
  only when the attribute is absent or empty (a condition). Reported with Warning Reason B000.
- discard: removes ``tag``; or every element of the private blocks reserved by
  ``private_creator`` (PS3.5 7.8.1), their Private Creator element included; or, with
  ``group_length = true``, every (gggg,0000) group length, retired in the data set (PS3.5
  7.2). Reported with Warning Reason B006. Group lengths also go whenever another rule
  changed the data set: the rewritten header does not carry them.

Only top-level attributes are changed. Each change is recorded in the stored instance as one
new Original Attributes Sequence (0400,0561) item (PS3.3 C.12.1.1.9): Reason for the
Attribute Modification ``COERCE``, the Modifying System, the time, and a Modified Attributes
Sequence item holding the previous values (an attribute that was absent appears with zero
length, as C.12.1.1.9 says; a private element goes with its Private Creator).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from ..config import ConfigError

__all__ = ["CoerceRule", "DiscardRule", "Change", "compile_rules", "apply_rules", "MODIFYING_SYSTEM"]

MODIFYING_SYSTEM = "DICOMACCEL"
_TAG = re.compile(r"\(?\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)?")
_FIELD = re.compile(r"\{([A-Za-z0-9]+)\}")
# The VRs whose values are text, which a template can set (PS3.5 Table 6.2-1).
_TEXT_VRS = frozenset(("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM",
                       "UC", "UI", "UR", "UT"))


@dataclass(frozen=True)
class CoerceRule:
    tag: int
    value: str
    only_if_empty: bool = False


@dataclass(frozen=True)
class DiscardRule:
    tag: int | None = None
    private_creator: str | None = None
    group_length: bool = False


@dataclass(frozen=True)
class Change:
    """One attribute changed by a rule: ``action`` is ``"coerced"`` or ``"discarded"``."""

    tag: int
    keyword: str
    action: str


def _tag(text, where: str) -> int:
    if isinstance(text, str):
        m = _TAG.fullmatch(text.strip())
        if m:
            return int(m.group(1) + m.group(2), 16)
        tag = tag_for_keyword(text.strip())
        if tag is not None:
            return tag
    raise ConfigError(f"{where}: tag must be a DICOM keyword or \"(gggg,eeee)\", not {text!r}")


def compile_rules(coerce: tuple[dict, ...], discard: tuple[dict, ...]) -> tuple[tuple, tuple]:
    """The rule objects of the configuration tables; :class:`ConfigError` names what is wrong."""
    out_c, out_d = [], []
    for i, table in enumerate(coerce, 1):
        where = f"[[coerce]] #{i}"
        unknown = set(table) - {"tag", "value", "only_if_empty"}
        if unknown or "tag" not in table or "value" not in table:
            raise ConfigError(f"{where}: needs tag and value (optional only_if_empty); "
                              f"unknown keys: {sorted(unknown)}")
        tag = _tag(table["tag"], where)
        if tag >> 16 in (0x0002, 0x7FE0) or tag in (0x00080016, 0x00080018):
            raise ConfigError(f"{where}: ({tag >> 16:04X},{tag & 0xFFFF:04X}) cannot be coerced "
                              "(File Meta, SOP Class/Instance UID and Pixel Data keep their values)")
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = None
        if vr not in _TEXT_VRS:
            raise ConfigError(f"{where}: ({tag >> 16:04X},{tag & 0xFFFF:04X}) is not a text attribute of the "
                              "data dictionary; coercion sets text values (PS3.5 Table 6.2-1)")
        if not isinstance(table["value"], str) or not isinstance(table.get("only_if_empty", False), bool):
            raise ConfigError(f"{where}: value must be a string and only_if_empty true or false")
        unknown = [k for k in _FIELD.findall(table["value"]) if tag_for_keyword(k) is None]
        if unknown:
            raise ConfigError(f"{where}: value refers to unknown keywords {unknown}")
        out_c.append(CoerceRule(tag, table["value"], table.get("only_if_empty", False)))
    for i, table in enumerate(discard, 1):
        where = f"[[discard]] #{i}"
        given = [k for k in ("tag", "private_creator", "group_length") if k in table]
        if len(given) != 1 or set(table) - {"tag", "private_creator", "group_length"}:
            raise ConfigError(f"{where}: needs exactly one of tag, private_creator, group_length")
        if "tag" in table:
            tag = _tag(table["tag"], where)
            if tag >> 16 in (0x0002, 0x7FE0) or tag in (0x00080016, 0x00080018, 0x0020000D, 0x0020000E):
                raise ConfigError(f"{where}: ({tag >> 16:04X},{tag & 0xFFFF:04X}) cannot be discarded")
            out_d.append(DiscardRule(tag=tag))
        elif "private_creator" in table:
            if not isinstance(table["private_creator"], str) or not table["private_creator"].strip():
                raise ConfigError(f"{where}: private_creator must be a non-empty string")
            out_d.append(DiscardRule(private_creator=table["private_creator"].strip()))
        else:
            if table["group_length"] is not True:
                raise ConfigError(f"{where}: group_length must be true")
            out_d.append(DiscardRule(group_length=True))
    return tuple(out_c), tuple(out_d)


def _text(ds: Dataset, keyword: str) -> str:
    elem = ds.data_element(keyword) if keyword in ds else None
    if elem is None or elem.value is None:
        return ""
    value = elem.value
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _discarded(ds: Dataset, rule: DiscardRule) -> list[int]:
    if rule.tag is not None:
        return [rule.tag] if rule.tag in ds else []
    if rule.group_length:
        return [int(e.tag) for e in ds if e.tag.element == 0x0000 and e.tag.group != 0x0002]
    out = []
    for elem in ds:
        tag = elem.tag
        if tag.group % 2 == 1 and 0x0010 <= tag.element <= 0x00FF and str(elem.value).strip() == rule.private_creator:
            block = tag.element << 8
            out.append(int(tag))
            out += [int(e.tag) for e in ds if e.tag.group == tag.group and block <= e.tag.element <= block + 0xFF]
    return out


def apply_rules(ds: Dataset, coerce: tuple, discard: tuple, now: datetime | None = None) -> list[Change]:
    """Apply the rules to the top level of ``ds`` in place; the changes made, and, if any, one
    new Original Attributes Sequence item recording the previous values."""
    previous = Dataset()
    changes: list[Change] = []
    for rule in coerce:
        elem = ds.get(rule.tag)
        if rule.only_if_empty and elem is not None and elem.value not in (None, "", b""):
            continue
        new = _FIELD.sub(lambda m: _text(ds, m.group(1)), rule.value)
        old = "" if elem is None or elem.value is None else str(elem.value)
        if old == new:
            continue
        vr = elem.VR if elem is not None else dictionary_VR(rule.tag)
        previous[rule.tag] = DataElement(rule.tag, vr, elem.value if elem is not None else None)
        ds[rule.tag] = DataElement(rule.tag, vr, new)
        changes.append(Change(rule.tag, keyword_for_tag(rule.tag) or _tag_text(rule.tag), "coerced"))
    for rule in discard:
        for tag in _discarded(ds, rule):
            if tag not in ds:
                continue  # removed by an earlier rule
            previous[tag] = ds[tag]
            creator = (tag & 0xFFFF0000) | ((tag & 0xFF00) >> 8)
            if tag >> 16 & 1 and tag & 0xFF00 and creator in ds:
                previous[creator] = ds[creator]  # a private value is read through its creator
            del ds[tag]
            changes.append(Change(tag, keyword_for_tag(tag) or _tag_text(tag), "discarded"))
    if changes:
        # Written again, the data set loses its retired group lengths (PS3.5 7.2): record them.
        for tag in _discarded(ds, DiscardRule(group_length=True)):
            previous[tag] = ds[tag]
            del ds[tag]
            changes.append(Change(tag, _tag_text(tag), "discarded"))
        stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d%H%M%S.%f%z")
        item = Dataset()
        item.SourceOfPreviousValues = ""
        item.AttributeModificationDateTime = stamp
        item.ModifyingSystem = MODIFYING_SYSTEM
        item.ReasonForTheAttributeModification = "COERCE"
        item.ModifiedAttributesSequence = [previous]
        # Existing items are kept (C.12.1.1.9): this modification adds one.
        ds.OriginalAttributesSequence = [*ds.get("OriginalAttributesSequence", []), item]
    return changes


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
