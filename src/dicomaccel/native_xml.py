"""The Native DICOM Model (PS3.19 §A.1) in XML, written from the DICOM JSON Model object
(PS3.18 Annex F) that :mod:`.wado_metadata` builds, so both forms say the same thing.

The mapping follows PS3.19 Table A.1.5-2 and PS3.18 §F.3 (the JSON and XML models side by
side): one ``DicomAttribute`` per element (``tag``, ``vr``, ``keyword``, ``privateCreator``
for private tags), ``Value number=...`` per value, ``PersonName`` with ``Alphabetic`` /
``Ideographic`` / ``Phonetic`` groups of components, ``Item number=...`` per sequence item,
``BulkData uri=...`` and ``InlineBinary``.
"""

from __future__ import annotations

import re
from xml.sax.saxutils import escape, quoteattr

from pydicom.datadict import keyword_for_tag

__all__ = ["to_native_xml"]

_HEAD = ('<?xml version="1.0" encoding="UTF-8"?>\n'
         '<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM" xml:space="preserve">')
# PS3.5 §6.2 PN component groups -> components, in order (PS3.19 Table A.1.5-2).
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
_PN_PARTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
# Characters XML 1.0 does not allow (§2.2); a decoded DICOM string should hold none.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def to_native_xml(model: dict) -> bytes:
    """The ``NativeDicomModel`` document of one data set, UTF-8."""
    out = [_HEAD]
    _dataset(model, out)
    out.append("</NativeDicomModel>\n")
    return "".join(out).encode("utf-8")


def _text(value) -> str:
    return escape(_NOT_XML.sub("", str(value)))


def _dataset(model: dict, out: list[str]) -> None:
    for key, element in model.items():
        tag = int(key, 16)
        vr = element.get("vr", "UN")
        attrs = f'tag="{key}" vr="{vr}"'
        group, elem = tag >> 16, tag & 0xFFFF
        if group % 2:
            block = elem >> 8
            creator = model.get(f"{group:04X}00{block:02X}", {}).get("Value") if block >= 0x10 else None
            if creator:
                attrs += f" privateCreator={quoteattr(_NOT_XML.sub('', str(creator[0])))}"
        else:
            keyword = keyword_for_tag(tag)
            if keyword:
                attrs += f' keyword="{keyword}"'
        out.append(f"<DicomAttribute {attrs}>")
        if "BulkDataURI" in element:
            out.append(f"<BulkData uri={quoteattr(element['BulkDataURI'])}/>")
        elif "InlineBinary" in element:
            out.append(f"<InlineBinary>{element['InlineBinary']}</InlineBinary>")
        elif vr == "SQ":
            for number, item in enumerate(element.get("Value", ()), 1):
                out.append(f'<Item number="{number}">')
                _dataset(item or {}, out)
                out.append("</Item>")
        elif vr == "PN":
            for number, name in enumerate(element.get("Value", ()), 1):
                out.append(f'<PersonName number="{number}">')
                for group_name in _PN_GROUPS:
                    text = (name or {}).get(group_name)
                    if text:
                        out.append(f"<{group_name}>")
                        for part, value in zip(_PN_PARTS, text.split("^")):
                            if value:
                                out.append(f"<{part}>{_text(value)}</{part}>")
                        out.append(f"</{group_name}>")
                out.append("</PersonName>")
        else:
            for number, value in enumerate(element.get("Value", ()), 1):
                if value is None:
                    out.append(f'<Value number="{number}"/>')
                else:
                    out.append(f'<Value number="{number}">{_text(value)}</Value>')
        out.append("</DicomAttribute>")
