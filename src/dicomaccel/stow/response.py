"""The Store Instances Response Module (PS3.18 Annex I, Table I.1-1) in JSON and XML.

JSON follows the DICOM JSON Model (PS3.18 Annex F): 8-digit upper-case hex tags in ascending
order, ``{"vr": ..., "Value": [...]}``; US values as numbers. XML follows the Native DICOM
Model (PS3.19). No empty sequence is ever emitted: (0008,1198) appears only when something
failed (Type 1C), (0008,1199) only when something was stored.

Beyond PS3.18 Table I.1-1, every Failed SOP Sequence item carries an Error Comment
(0000,0902) saying why, and an item whose instance breaks its IOD (Warning Reason B007 or
Failure Reason A900) carries a Failed Attributes Sequence (0074,1048): one item per attribute,
its tag in Selector Attribute (0072,0026) and what is wrong in Error Comment; an instance
stored with B000 or B006 names there, the same way, each attribute coerced or discarded.
(Microsoft's DICOM service names the attributes of a failure the same way; PS3.18 has no
place for them.)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

JSON_MEDIA_TYPE = "application/dicom+json"
XML_MEDIA_TYPE = "application/dicom+xml"

# (tag, VR, keyword) of everything this module writes.
RETRIEVE_URL = ("00081190", "UR", "RetrieveURL")
FAILED_SOP_SEQUENCE = ("00081198", "SQ", "FailedSOPSequence")
REFERENCED_SOP_SEQUENCE = ("00081199", "SQ", "ReferencedSOPSequence")
OTHER_FAILURES_SEQUENCE = ("0008119A", "SQ", "OtherFailuresSequence")
REFERENCED_SOP_CLASS_UID = ("00081150", "UI", "ReferencedSOPClassUID")
REFERENCED_SOP_INSTANCE_UID = ("00081155", "UI", "ReferencedSOPInstanceUID")
WARNING_REASON = ("00081196", "US", "WarningReason")
FAILURE_REASON = ("00081197", "US", "FailureReason")
ERROR_COMMENT = ("00000902", "LO", "ErrorComment")
FAILED_ATTRIBUTES_SEQUENCE = ("00741048", "SQ", "FailedAttributesSequence")
SELECTOR_ATTRIBUTE = ("00720026", "AT", "SelectorAttribute")
_WRONG = {"missing": "missing", "empty": "empty (Type 1)", "value": "not an enumerated value",
          "vm": "wrong value multiplicity"}


@dataclass
class StoredInstance:
    sop_class_uid: str
    sop_instance_uid: str
    retrieve_url: str
    warning_reason: int | None = None
    problems: tuple = ()  # dicomaccel.policy.iod.Problem: what a B007 names
    changes: tuple = ()  # dicomaccel.policy.rules.Change: what B000 / B006 name


@dataclass
class FailedInstance:
    failure_reason: int
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    comment: str = ""
    problems: tuple = ()  # what an A900 from IOD validation names


@dataclass
class StoreResponse:
    """What one STOW-RS request did, in part order."""

    study_retrieve_url: str | None = None
    stored: list[StoredInstance] = field(default_factory=list)
    failed: list[FailedInstance] = field(default_factory=list)
    # Failures not tied to a SOP Instance (an unreadable part, a malformed tail): (0008,119A).
    other_failures: list[FailedInstance] = field(default_factory=list)

    def http_status(self) -> int:
        """PS3.18 Table 10.5.3-1: 200 all stored cleanly, 202 partial or warned, 409 none stored."""
        if not self.stored:
            failures = self.failed + self.other_failures
            if failures and all(0xA700 <= f.failure_reason <= 0xA7FF for f in failures):
                return 503  # refused for resources, nothing stored (PS3.18 §8.5)
            return 409
        if self.failed or self.other_failures or any(s.warning_reason for s in self.stored):
            return 202
        return 200

    def _elements(self) -> list[tuple[tuple[str, str, str], object]]:
        """Top-level (attribute, value) pairs in ascending tag order; SQ values are lists of item lists."""
        out: list[tuple[tuple[str, str, str], object]] = []
        if self.study_retrieve_url:
            out.append((RETRIEVE_URL, [self.study_retrieve_url]))
        if self.failed:
            out.append((FAILED_SOP_SEQUENCE, [_failed_item(f) for f in self.failed]))
        if self.stored:
            out.append((REFERENCED_SOP_SEQUENCE, [_stored_item(s) for s in self.stored]))
        if self.other_failures:
            out.append((OTHER_FAILURES_SEQUENCE, [_other_item(f) for f in self.other_failures]))
        return out

    def to_json(self) -> dict:
        return _json_dataset(self._elements())

    def to_xml(self) -> str:
        body = "".join(_xml_element(attr, value) for attr, value in self._elements())
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM" '
            f'xml:space="preserve">{body}</NativeDicomModel>\n'
        )


def _uid_pair(sop_class_uid: str | None, sop_instance_uid: str | None) -> list:
    # The SOP Instance Reference Macro is Type 1; an instance we could not parse has neither UID,
    # so those elements are sent empty rather than invented.
    return [
        (REFERENCED_SOP_CLASS_UID, [sop_class_uid] if sop_class_uid else []),
        (REFERENCED_SOP_INSTANCE_UID, [sop_instance_uid] if sop_instance_uid else []),
    ]


def _failed_attributes(problems, changes=()) -> list:
    named = [(f"{p.keyword} {_WRONG.get(p.kind, p.kind)} ({p.module})", p.tag) for p in problems]
    named += [(f"{c.keyword} {c.action}", c.tag) for c in changes]
    if not named:
        return []
    return [(FAILED_ATTRIBUTES_SEQUENCE, [
        [(ERROR_COMMENT, [comment[:64]]), (SELECTOR_ATTRIBUTE, [f"{tag:08X}"])]
        for comment, tag in named])]


def _failed_item(f: FailedInstance) -> list:
    item = [(ERROR_COMMENT, [f.comment[:64]])] if f.comment else []
    item += _uid_pair(f.sop_class_uid, f.sop_instance_uid)
    item.append((FAILURE_REASON, [f.failure_reason]))
    return item + _failed_attributes(f.problems)


def _stored_item(s: StoredInstance) -> list:
    item = _uid_pair(s.sop_class_uid, s.sop_instance_uid)
    item.append((RETRIEVE_URL, [s.retrieve_url]))
    if s.warning_reason:
        item.append((WARNING_REASON, [s.warning_reason]))
    return item + _failed_attributes(s.problems, s.changes)


def _other_item(f: FailedInstance) -> list:
    item = [(FAILURE_REASON, [f.failure_reason])]
    if f.comment:
        item.insert(0, (ERROR_COMMENT, [f.comment[:64]]))
    return item


def _json_dataset(elements: list) -> dict:
    ds = {}
    for (tag, vr, _keyword), values in elements:
        if vr == "SQ":
            ds[tag] = {"vr": vr, "Value": [_json_dataset(item) for item in values]}
        elif values:
            ds[tag] = {"vr": vr, "Value": list(values)}
        else:
            ds[tag] = {"vr": vr}
    return ds


def _xml_element(attr: tuple[str, str, str], values: list) -> str:
    tag, vr, keyword = attr
    if vr == "SQ":
        inner = "".join(
            f'<Item number="{n}">{"".join(_xml_element(a, v) for a, v in item)}</Item>'
            for n, item in enumerate(values, 1)
        )
    else:
        inner = "".join(f'<Value number="{n}">{escape(str(v))}</Value>' for n, v in enumerate(values, 1))
    return f"<DicomAttribute tag={quoteattr(tag)} vr={quoteattr(vr)} keyword={quoteattr(keyword)}>{inner}</DicomAttribute>"


@functools.lru_cache(maxsize=64)
def choose_media_type(accept: str | None) -> str | None:
    """Pick the response representation from an Accept header (RFC 9110 §12.5.1, q-values).

    Returns JSON (the PS3.18 default) when Accept is absent, and ``None`` when Accept names
    only types we cannot produce (the caller answers 406). Cached: a client sends the same
    Accept with every request.
    """
    if not accept or not accept.strip():
        return JSON_MEDIA_TYPE
    best: tuple[tuple[float, int, int], str] | None = None
    for position, item in enumerate(accept.split(",")):
        parts = [p.strip() for p in item.split(";")]
        media = parts[0].lower()
        q = 1.0
        for p in parts[1:]:
            name, _, val = p.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(val.strip())
                except ValueError:
                    q = 0.0
        if q <= 0:
            continue
        if media in (JSON_MEDIA_TYPE, "application/json", "application/*", "*/*"):
            candidate = JSON_MEDIA_TYPE
        elif media in (XML_MEDIA_TYPE, "application/xml"):
            candidate = XML_MEDIA_TYPE
        elif media == "multipart/related":
            # Some clients (dicomweb-client among them) send the request's own type here;
            # type=application/dicom+xml asks for XML, anything else gets the default.
            candidate = XML_MEDIA_TYPE if "dicom+xml" in item.lower() else JSON_MEDIA_TYPE
        else:
            continue
        # Exact types beat wildcards at equal q (RFC 9110 precedence); earlier beats later.
        specificity = 0 if "*" in media else 1
        key = (q, specificity, -position)
        if best is None or key > best[0]:
            best = (key, candidate)
    return best[1] if best else None
