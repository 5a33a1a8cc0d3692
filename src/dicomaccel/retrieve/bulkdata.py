"""Composite Instance Retrieve Without Bulk Data (PS3.4 Annex Z): the instance minus its bulk data."""

from __future__ import annotations

from io import BytesIO

from pydicom import dcmread

from .transcode import TranscodeError, encode_dataset

# PS3.4 Z.1.2: removed from the top-level data set (Icon Image Sequence pixels stay).
_TOP_LEVEL = (0x7FE00010, 0x7FE00008, 0x7FE00009, 0x00287FE0, 0x56000020, 0x00420011)
_REPEATING = ((0x6000, 0x3000), (0x5000, 0x3000), (0x5000, 0x200C))  # overlay, curve, audio: groups xx00-xxFE
WAVEFORM_SEQUENCE = 0x54000100
WAVEFORM_DATA = 0x54001010


def strip_bulk_data(data: bytes | memoryview, target: str) -> bytes:
    """The data set of the PS3.10 file ``data`` without bulk data, encoded in ``target``."""
    try:
        ds = dcmread(BytesIO(data), stop_before_pixels=False, defer_size=1024)
    except Exception as exc:
        raise TranscodeError(f"cannot read the stored instance: {exc}"[:60]) from exc
    for tag in _TOP_LEVEL:
        if tag in ds:
            del ds[tag]
    for tag in [t for t in ds.keys() if _is_repeating_bulk(int(t))]:
        del ds[tag]
    if WAVEFORM_SEQUENCE in ds:
        for item in ds[WAVEFORM_SEQUENCE].value:
            if WAVEFORM_DATA in item:
                del item[WAVEFORM_DATA]
    return encode_dataset(ds, target)


def _is_repeating_bulk(tag: int) -> bool:
    group, element = tag >> 16, tag & 0xFFFF
    return any((group & 0xFF00) == base and group % 2 == 0 and element == elem for base, elem in _REPEATING)
