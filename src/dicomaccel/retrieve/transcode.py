"""The fallback: re-encode a stored instance into a transfer syntax the SCU accepted.

Used only when the SCU accepted none of the stored transfer syntax's contexts (PS3.4
C.4.3.3.1 lets the SCP convert to a syntax the SCU accepted; see docs/architecture.md for why
sending as stored is the path). Compressed pixel data are decoded with pydicom and its pylibjpeg plugins
(JPEG 2000: pylibjpeg-openjpeg; RLE: pylibjpeg-rle; JPEG and JPEG-LS: pylibjpeg-libjpeg,
JPEG baseline also Pillow); the result is an uncompressed little-endian data set. Runs in a
worker thread: it is CPU-heavy.
"""

from __future__ import annotations

import zlib
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
)

__all__ = ["TARGETS", "TranscodeError", "encode_dataset", "transcode"]

# What we can produce, best first: Explicit VR keeps VRs the receiver would otherwise guess.
TARGETS = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

# Always lossy (PS3.5 Table A-1 / 8.2.1): decoding them does not make the pixels original.
_LOSSY_ONLY = frozenset((JPEGBaseline8Bit, JPEGExtended12Bit))


class TranscodeError(Exception):
    """The instance cannot be produced in the requested transfer syntax (the reason)."""


def encode_dataset(ds: Dataset, transfer_syntax: str) -> bytes:
    """Encode ``ds`` (no File Meta) as a DIMSE data set in ``transfer_syntax``.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The data set; any Pixel Data must already be in the form ``transfer_syntax`` wants
        (so an encapsulated syntax only suits a data set without Pixel Data, as in Annex Z).
    transfer_syntax : str
        Any transfer syntax UID. Encapsulated syntaxes use Explicit VR Little Endian for
        the data set (PS3.5 A.4); Deflated is raw deflate of that encoding (PS3.5 A.5).

    Returns
    -------
    bytes
    """
    uid = UID(transfer_syntax)
    buf = DicomBytesIO()
    buf.is_little_endian = uid.is_little_endian
    buf.is_implicit_VR = uid.is_implicit_VR
    write_dataset(buf, ds)
    data = buf.getvalue()
    if uid == DeflatedExplicitVRLittleEndian:
        packer = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = packer.compress(data) + packer.flush()
    return data


def transcode(data: bytes | memoryview, target: str) -> bytes:
    """Decode the PS3.10 file in ``data`` and re-encode its data set in ``target``.

    Parameters
    ----------
    data : bytes-like
        The whole stored PS3.10 file (preamble and File Meta included).
    target : str
        One of :data:`TARGETS`.

    Returns
    -------
    bytes
        The data set without File Meta, Pixel Data uncompressed.

    Raises
    ------
    TranscodeError
        ``target`` is not one we produce, or the pixel data cannot be decoded (no plugin
        for the stored syntax, or the plugin failed); the message says why.
    """
    if target not in TARGETS:
        raise TranscodeError(f"cannot produce transfer syntax {target}")
    try:
        ds = dcmread(BytesIO(data))
        source = ds.file_meta.TransferSyntaxUID
        if source.is_compressed:
            # Same image, same instance: the C-STORE-RQ names the stored SOP Instance UID.
            ds.decompress(generate_instance_uid=False)
            # PS3.3 C.7.6.1.1.5: once lossy compressed, always flagged as such.
            if source in _LOSSY_ONLY and "LossyImageCompression" not in ds:
                ds.LossyImageCompression = "01"
        return encode_dataset(ds, target)
    except Exception as exc:  # decoder plugins raise many types
        raise TranscodeError(f"cannot decode {exc}"[:120]) from exc
