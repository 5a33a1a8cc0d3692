"""WADO-RS metadata (PS3.18 §10.4.1.1.2, §8.7.3.5.5): the DICOM JSON Model (PS3.18 Annex F)
of each stored instance, bulk data replaced by BulkDataURI entries.

The header is read by pydicom with ``stop_before_pixels`` and ``defer_size``: values larger
than :data:`BULK_DATA_THRESHOLD` are skipped in the file, not read, and Pixel Data is never
read (its place is known from the index). Each element is converted by pydicom's own
``DataElement.to_json_dict``; this module walks the data set so that it knows the tag path of
every bulk value (pydicom's handler is given the element only), and so that a deferred value
is never loaded just to be replaced by a URI.

BulkDataURI scheme (:mod:`.wado_bulkdata` serves it)::

    {instance URL}/bulkdata/{tag}[/{item}/{tag}]...

``tag`` is 8 hex digits, ``item`` the 1-based item number within the sequence before it
(the numbering of PS3.3 Table 10-20, Selector Sequence Pointer Items); Pixel Data is
``{instance URL}/bulkdata/7FE00010``.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from .syntaxes import DEFLATED, IMPLICIT_VR_LE

__all__ = ["BULK_DATA_THRESHOLD", "BULK_VRS", "instance_json", "instance_json_bytes", "MetadataCache"]

# The one threshold: a value of a bulk VR longer than this many bytes becomes a BulkDataURI
# (PS3.18 §8.7.3.5.5 leaves the size to the origin server). Pixel Data always does.
BULK_DATA_THRESHOLD = 1024
# VRs whose long values are bulk data: the binary VRs and the unlimited-length text VRs
# (PS3.18 Table F.2.3-1 allows BulkDataURI for these among others).
BULK_VRS = frozenset(("OB", "OD", "OF", "OL", "OV", "OW", "UN", "UT", "UC", "UR", "LT"))
PIXEL_TAGS = {0x7FE00010: "OW", 0x7FE00008: "OF", 0x7FE00009: "OD"}


def instance_json(record, instance_url: str) -> dict:
    """The JSON Model object of one stored instance (``record``: its InstanceRecord)."""
    # A deflated data set (PS3.5 A.5) has no file offsets a deferred value could be read from.
    defer = None if record.transfer_syntax_uid in DEFLATED else BULK_DATA_THRESHOLD
    with open(record.path, "rb") as f:
        ds = dcmread(f, stop_before_pixels=True, defer_size=defer)
        bulk = f"{instance_url}/bulkdata/"
        out = _dataset(ds, bulk, "")
        if record.pixel_tag:
            out[f"{record.pixel_tag:08X}"] = {"vr": _pixel_vr(f, record), "BulkDataURI": f"{bulk}{record.pixel_tag:08X}"}
    return out


def instance_json_bytes(record, instance_url: str) -> bytes:
    return json.dumps(instance_json(record, instance_url), ensure_ascii=False, separators=(",", ":")).encode()


def _pixel_vr(f, record) -> str:
    """Pixel Data's VR: as encoded in Explicit VR (PS3.5 §7.1.2), else OW (PS3.5 A.1: Implicit
    VR Pixel Data is OW); the float variants have theirs."""
    if record.pixel_tag != 0x7FE00010:
        return PIXEL_TAGS[record.pixel_tag]
    if record.pixel_offset >= 0 and record.transfer_syntax_uid != IMPLICIT_VR_LE:
        vr = os.pread(f.fileno(), 2, record.pixel_offset + 4)
        if vr in (b"OB", b"OW"):
            return vr.decode()
    if record.frame_index is not None and record.frame_index.encapsulated:
        return "OB"
    return "OW"


def _vr_of(tag: int, raw) -> str:
    vr = raw.VR
    if vr is None:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return "UN"
    vr = str(vr)
    if " or " in vr:  # ambiguous in the dictionary (PS3.6): an Implicit VR binary value is OW
        return "OW" if "OW" in vr else vr.split(" or ")[0]
    return vr


def _dataset(ds: Dataset, bulk: str, path: str) -> dict:
    out: dict = {}
    for tag in ds.keys():
        raw = ds.get_item(tag)
        key = f"{int(tag):08X}"
        if isinstance(raw, RawDataElement):
            vr = _vr_of(int(tag), raw)
            length = raw.length
        else:
            vr = str(raw.VR)
            length = len(raw.value) if isinstance(raw.value, (bytes, str)) else 0
        if vr in BULK_VRS and length != 0xFFFFFFFF and length > BULK_DATA_THRESHOLD:
            out[key] = {"vr": vr, "BulkDataURI": f"{bulk}{path}{key}"}
            continue
        elem = ds[tag]
        if elem.VR == "SQ":
            items = [_dataset(item, bulk, f"{path}{key}/{i}/") for i, item in enumerate(elem.value, 1)]
            out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        else:
            out[key] = elem.to_json_dict(None, BULK_DATA_THRESHOLD)
    return out


class MetadataCache:
    """Recently built JSON of instances, up to ``max_bytes`` (least recently used out first).

    Keyed by what makes the JSON: the file (SOP Instance UID, CRC-32, size: a replaced
    instance is a new key) and the instance URL its BulkDataURIs start with. A viewer reads a
    study's metadata again and again; pydicom's parse costs about 1 ms an instance.
    """

    def __init__(self, max_bytes: int = 32 << 20) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, record, instance_url: str) -> bytes:
        if record.crc32 is None:  # no identity for the bytes: not cached
            return instance_json_bytes(record, instance_url)
        key = (record.sop_instance_uid, record.crc32, record.size, instance_url)
        with self._lock:
            data = self._entries.get(key)
            if data is not None:
                self._entries.move_to_end(key)
                return data
        data = instance_json_bytes(record, instance_url)
        with self._lock:
            if key not in self._entries and len(data) <= self.max_bytes:
                self._entries[key] = data
                self._bytes += len(data)
                while self._bytes > self.max_bytes:
                    _, old = self._entries.popitem(last=False)
                    self._bytes -= len(old)
        return data
