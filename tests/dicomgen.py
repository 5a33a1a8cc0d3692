"""Test data made with pydicom: PS3.10 bytes of CT series, native and encapsulated multi-frame."""

from __future__ import annotations

import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    PYDICOM_IMPLEMENTATION_UID,
    RLELossless,
    generate_uid,
)

MULTIFRAME_CLASS = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word Secondary Capture
MULTIFRAME_BYTE_CLASS = "1.2.840.10008.5.1.4.1.1.7.2"  # Multi-frame Grayscale Byte SC
MULTIFRAME_TRUECOLOR_CLASS = "1.2.840.10008.5.1.4.1.1.7.4"
SC_SINGLE_BIT_CLASS = "1.2.840.10008.5.1.4.1.1.7.1"  # Multi-frame Single Bit SC


def _base(sop_class: str, study_uid: str, series_uid: str, sop_uid: str | None = None) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.PatientName = "Test^Patient"
    ds.PatientID = "PID-0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.ContentDate = "20260101"
    ds.ContentTime = "120000"
    ds.AccessionNumber = "A1"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.Modality = "CT" if sop_class == CTImageStorage else "OT"
    return ds


def to_bytes(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=transfer_syntax == "1.2.840.10008.1.2",
               little_endian=transfer_syntax != "1.2.840.10008.1.2.2")
    return buf.getvalue()


def ct_instance(study_uid: str, series_uid: str, number: int, rows: int = 512, columns: int = 512,
                seed: int | None = None) -> bytes:
    ds = _base(CTImageStorage, study_uid, series_uid)
    ds.InstanceNumber = number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = [0, 0, number]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 1
    ds.KVP = 120
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    rng = np.random.default_rng(number if seed is None else seed)
    ds.PixelData = rng.integers(0, 4096, (rows, columns), dtype=np.uint16).tobytes()
    return to_bytes(ds)


def ct_series(n: int, rows: int = 512, columns: int = 512) -> tuple[str, list[bytes]]:
    study, series = generate_uid(), generate_uid()
    return study, [ct_instance(study, series, i + 1, rows, columns) for i in range(n)]


def multiframe_dataset(frames: int, rows: int = 64, columns: int = 64, bits: int = 16,
                       samples: int = 1, study_uid: str | None = None) -> Dataset:
    if bits == 1:
        sop_class = SC_SINGLE_BIT_CLASS
    elif samples == 3:
        sop_class = MULTIFRAME_TRUECOLOR_CLASS
    else:
        sop_class = MULTIFRAME_CLASS if bits == 16 else MULTIFRAME_BYTE_CLASS
    ds = _base(sop_class, study_uid or generate_uid(), generate_uid())
    ds.InstanceNumber = 1
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063
    ds.FrameTime = 40.0
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    rng = np.random.default_rng(frames * 7 + rows)
    if bits == 1:
        nbits = frames * rows * columns
        raw = np.packbits(rng.integers(0, 2, nbits, dtype=np.uint8), bitorder="little").tobytes()
    else:
        dtype = np.uint16 if bits == 16 else np.uint8
        raw = rng.integers(0, 2**bits, frames * rows * columns * samples, dtype=dtype).tobytes()
    if len(raw) % 2:
        raw += b"\0"
    ds.PixelData = raw
    return ds


def multiframe_instance(frames: int, rows: int = 64, columns: int = 64, bits: int = 16, samples: int = 1,
                        transfer_syntax: str = ExplicitVRLittleEndian, study_uid: str | None = None) -> bytes:
    ds = multiframe_dataset(frames, rows, columns, bits, samples, study_uid)
    if transfer_syntax in (JPEG2000Lossless, RLELossless):
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.compress(transfer_syntax, encoding_plugin="pylibjpeg" if transfer_syntax == JPEG2000Lossless else "")
    return to_bytes(ds, transfer_syntax)
