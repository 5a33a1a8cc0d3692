"""Query results as the DICOM JSON Model (PS3.18 Annex F.2).

A result is ``{tag: value}`` as :func:`dicomaccel.query.engine.search` makes it, plus the
keys the caller adds (Retrieve URL, Instance Availability, ...). Empty values become an
attribute with its VR and no ``Value`` (F.2.5); PN values are objects with their component
groups (F.2.2); IS and US values are JSON numbers (F.2.3).
"""

from __future__ import annotations

from .attributes import keyword_vr

__all__ = ["to_json_model", "has_non_ascii"]

_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
_NUMBERS = {"IS", "US", "UL", "SS", "SL"}
# Text VRs whose backslash separates values (PS3.5 §6.4); UR, LT, ST, UT hold one value.
_MULTI = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UI"}


def to_json_model(match: dict) -> dict:
    """One result as a DICOM JSON object, attributes in tag order."""
    out = {}
    for tag in sorted(match):
        kv = keyword_vr(tag)
        if kv is None:
            continue
        vr = kv[1]
        element = {"vr": vr}
        value = match[tag]
        values = _values(vr, value)
        if values:
            element["Value"] = values
        out[f"{tag:08X}"] = element
    return out


def _values(vr: str, value) -> list:
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, list):
        items = value
    elif isinstance(value, int):
        return [value]
    elif vr in _MULTI:
        items = value.split("\\")
    else:
        items = [value]
    if vr == "PN":
        out = []
        for item in items:
            groups = item.split("=")
            out.append({g: v for g, v in zip(_PN_GROUPS, groups) if v})
        return out
    if vr in _NUMBERS:
        return [int(v) for v in items if v.strip()]
    return items


def has_non_ascii(match: dict) -> bool:
    """True if a text value of ``match`` needs more than the default repertoire."""
    for value in match.values():
        if isinstance(value, str) and not value.isascii():
            return True
    return False
