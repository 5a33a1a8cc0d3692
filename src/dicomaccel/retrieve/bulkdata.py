"""Composite Instance Retrieve Without Bulk Data (PS3.4 Annex Z): the instance minus its bulk data.

The SOP Instance UID and every other attribute stay as stored (Z.1.2: the SCP does not create
a new instance); private attributes are kept. Only the top level and Waveform Sequence items
are touched, so Icon Image Sequence (0088,0200) pixels stay (PS3.4 Z.1.2 removes bulk data
attributes; an icon is not one).
"""

from __future__ import annotations

from io import BytesIO

from pydicom import dcmread

from .transcode import TranscodeError, encode_dataset

__all__ = ["strip_bulk_data"]

# PS3.4 Z.1.2.1: Pixel Data, Float / Double Float Pixel Data, Pixel Data Provider URL,
# Spectroscopy Data, Encapsulated Document.
_TOP_LEVEL = (0x7FE00010, 0x7FE00008, 0x7FE00009, 0x00287FE0, 0x56000020, 0x00420011)
# Repeating groups (PS3.5 7.6): Overlay Data 60xx,3000; Curve Data 50xx,3000; Audio Sample
# Data 50xx,200C, for the even groups xx = 00..FE.
_REPEATING = ((0x6000, 0x3000), (0x5000, 0x3000), (0x5000, 0x200C))
WAVEFORM_SEQUENCE = 0x54000100
WAVEFORM_DATA = 0x54001010


def strip_bulk_data(data: bytes | memoryview, target: str) -> bytes:
    """The data set of a stored instance without its bulk data, encoded in ``target``.

    Parameters
    ----------
    data : bytes-like
        The whole stored PS3.10 file.
    target : str
        The transfer syntax of the presentation context it goes out on (any syntax
        :func:`~dicomaccel.retrieve.transcode.encode_dataset` accepts).

    Returns
    -------
    bytes
        The data set, without File Meta.

    Raises
    ------
    TranscodeError
        The stored file cannot be parsed.
    """
    try:
        ds = dcmread(BytesIO(data))
    except Exception as exc:  # pydicom raises many types on malformed input
        raise TranscodeError(f"cannot read the stored instance: {exc}"[:120]) from exc
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
    return group % 2 == 0 and any((group & 0xFF00) == base and element == elem for base, elem in _REPEATING)
