"""The fallback: re-encode a stored instance into a transfer syntax the SCU accepted.

Used only when the SCU accepted none of the stored transfer syntax's contexts (ARCHITECTURE
decision 6). Compressed pixel data are decoded with pydicom and pylibjpeg; the result is an
uncompressed little-endian data set. Runs in a worker thread: it is CPU-heavy.
"""

from __future__ import annotations

from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

# What we can produce, best first: Explicit VR keeps VRs the receiver would otherwise guess.
TARGETS = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class TranscodeError(Exception):
    pass


def encode_dataset(ds: Dataset, transfer_syntax: str) -> bytes:
    """A data set (no File Meta) in ``transfer_syntax``, which must be uncompressed."""
    uid = UID(transfer_syntax)
    buf = DicomBytesIO()
    buf.is_little_endian = uid.is_little_endian
    buf.is_implicit_VR = uid.is_implicit_VR
    write_dataset(buf, ds)
    return buf.getvalue()


def transcode(data: bytes | memoryview, target: str) -> bytes:
    """Decode the PS3.10 file in ``data`` and re-encode its data set in ``target``."""
    if target not in TARGETS:
        raise TranscodeError(f"cannot produce transfer syntax {target}")
    try:
        ds = dcmread(BytesIO(data))
        source = ds.file_meta.TransferSyntaxUID
        if source.is_compressed:
            ds.decompress()
        return encode_dataset(ds, target)
    except TranscodeError:
        raise
    except Exception as exc:  # decoder plugins raise many types
        raise TranscodeError(f"cannot decode {exc}"[:60]) from exc
