"""Data sets and PS3.10 files made with pydicom: CT series, native and encapsulated multi-frame
instances, FRAME-level retrieval sources, and small edits of existing files.

Every file is written by :func:`to_bytes` (or :func:`write_file`, which calls it).
"""

from __future__ import annotations

import io
import struct
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_fragmented_frames
from pydicom.pixels import pack_bits
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    PYDICOM_IMPLEMENTATION_UID,
    RLELossless,
    generate_uid,
)

from ..policy.iod import iod_attributes

MULTIFRAME_CLASS = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word Secondary Capture
MULTIFRAME_BYTE_CLASS = "1.2.840.10008.5.1.4.1.1.7.2"  # Multi-frame Grayscale Byte SC
MULTIFRAME_TRUECOLOR_CLASS = "1.2.840.10008.5.1.4.1.1.7.4"  # Multi-frame True Color SC
SC_SINGLE_BIT_CLASS = "1.2.840.10008.5.1.4.1.1.7.1"  # Multi-frame Single Bit SC


# --- writing and editing files ------------------------------------------------------------


def to_bytes(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """``ds`` as a PS3.10 file in ``transfer_syntax`` (a new File Meta Information group).

    Pixel Data must already be in that syntax: a deflated syntax is deflated on writing,
    nothing is compressed.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=transfer_syntax == ImplicitVRLittleEndian,
               little_endian=transfer_syntax != ExplicitVRBigEndian)
    return buf.getvalue()


def write_file(ds: Dataset, transfer_syntax: str, path) -> str:
    """:func:`to_bytes` written to ``path``; the path as a string."""
    Path(path).write_bytes(to_bytes(ds, transfer_syntax))
    return str(path)


def retag(data: bytes, **attrs) -> bytes:
    """``data`` with attributes replaced, written back in its own transfer syntax."""
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def sop_of(data: bytes) -> str:
    """The SOP Instance UID of a PS3.10 file."""
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID


def dataset_part(data: bytes) -> bytes:
    """The data set of a PS3.10 file: what a C-STORE-RQ carries when nothing is transcoded."""
    assert data[128:132] == b"DICM" and data[132:138] == b"\x02\x00\x00\x00UL"
    (meta_length,) = struct.unpack_from("<I", data, 140)
    return data[144 + meta_length:]


# --- pixel modules --------------------------------------------------------------------------


def _sc_class(bits: int, samples: int) -> str:
    if bits == 1:
        return SC_SINGLE_BIT_CLASS
    if samples == 3:
        return MULTIFRAME_TRUECOLOR_CLASS
    return MULTIFRAME_CLASS if bits == 16 else MULTIFRAME_BYTE_CLASS


def _set_geometry(ds: Dataset, rows: int, columns: int, bits: int, samples: int,
                  photometric: str | None = None, bits_stored: int | None = None) -> None:
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric or ("RGB" if samples == 3 else "MONOCHROME2")
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0


def _pixel_bytes(rng: np.random.Generator, count: int, bits: int, value_bits: int | None = None) -> bytes:
    """``count`` random samples of ``bits`` bits (values below 2**value_bits), padded to even length."""
    if bits == 1:
        raw = np.packbits(rng.integers(0, 2, count, dtype=np.uint8), bitorder="little").tobytes()
    else:
        dtype = np.uint16 if bits == 16 else np.uint8
        raw = rng.integers(0, 2 ** (value_bits or bits), count, dtype=dtype).tobytes()
    return raw + b"\0" * (len(raw) % 2)


def _compress(ds: Dataset, transfer_syntax: str, arr=None, **kw) -> None:
    """Compress ``ds`` in place (RLE Lossless by pydicom, JPEG 2000 by pylibjpeg)."""
    plugin = "pylibjpeg" if transfer_syntax == JPEG2000Lossless else ""
    ds.compress(transfer_syntax, arr, encoding_plugin=plugin, **kw)


# --- complete IODs -------------------------------------------------------------------------

# Values for Type 1 attributes the builders below do not set themselves (PS3.3 C.7-C.8).
_TYPE1_DEFAULTS = {
    "ConversionType": "WSD",  # SC Equipment (C.8.6.1): workstation
    "BurnedInAnnotation": "NO",  # SC Multi-frame Image (C.8.6.3)
    "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
    "ImagePositionPatient": [0, 0, 0],
    "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
    "PixelSpacing": [0.5, 0.5],
    "RescaleIntercept": 0,
    "RescaleSlope": 1,
    "PresentationLUTShape": "IDENTITY",
    "LossyImageCompression": "00",
}


def complete_iod(ds: Dataset) -> Dataset:
    """Add what ``ds`` lacks of its IOD's mandatory modules, so that the archive's IOD check
    (:mod:`dicomaccel.policy.iod`) finds nothing: Type 2 attributes empty, Type 1 attributes
    from :data:`_TYPE1_DEFAULTS`, a new Frame of Reference UID. Attributes already there stay."""
    for tag, (keyword, kind, _module) in iod_attributes(str(ds.SOPClassUID)).items():
        if tag in ds:
            continue
        if kind == "2":
            ds.add_new(tag, dictionary_VR(tag), None)
        elif keyword == "FrameOfReferenceUID":
            ds.FrameOfReferenceUID = generate_uid()
        elif keyword in _TYPE1_DEFAULTS:
            setattr(ds, keyword, _TYPE1_DEFAULTS[keyword])
    return ds


# --- CT series and multi-frame instances ---------------------------------------------------


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


def ct_instance(study_uid: str, series_uid: str, number: int, rows: int = 512, columns: int = 512,
                seed: int | None = None) -> bytes:
    """A CT Image Storage file, 16-bit (12 stored), random pixels seeded by ``number``."""
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
    _set_geometry(ds, rows, columns, 16, 1, bits_stored=12)
    rng = np.random.default_rng(number if seed is None else seed)
    ds.PixelData = _pixel_bytes(rng, rows * columns, 16, 12)
    return to_bytes(complete_iod(ds))


def ct_series(n: int, rows: int = 512, columns: int = 512) -> tuple[str, list[bytes]]:
    """A study of one series of ``n`` CT files: (Study Instance UID, files)."""
    study, series = generate_uid(), generate_uid()
    return study, [ct_instance(study, series, i + 1, rows, columns) for i in range(n)]


def multiframe_dataset(frames: int, rows: int = 64, columns: int = 64, bits: int = 16,
                       samples: int = 1, study_uid: str | None = None) -> Dataset:
    """A native multi-frame Secondary Capture data set (Frame Time 40 ms)."""
    ds = _base(_sc_class(bits, samples), study_uid or generate_uid(), generate_uid())
    ds.InstanceNumber = 1
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063
    ds.FrameTime = 40.0
    _set_geometry(ds, rows, columns, bits, samples)
    rng = np.random.default_rng(frames * 7 + rows)
    ds.PixelData = _pixel_bytes(rng, frames * rows * columns * (1 if bits == 1 else samples), bits)
    return complete_iod(ds)


def multiframe_instance(frames: int, rows: int = 64, columns: int = 64, bits: int = 16, samples: int = 1,
                        transfer_syntax: str = ExplicitVRLittleEndian, study_uid: str | None = None) -> bytes:
    """:func:`multiframe_dataset` as a file; RLE Lossless and JPEG 2000 Lossless compress it."""
    ds = multiframe_dataset(frames, rows, columns, bits, samples, study_uid)
    if transfer_syntax in (JPEG2000Lossless, RLELossless):
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        _compress(ds, transfer_syntax)
    return to_bytes(ds, transfer_syntax)


# --- header-scanner inputs: a sequence before the keys, a character set ---------------------


def base_dataset(sop_class: str = CTImageStorage, study: str | None = None,
                 series: str | None = None, sop: str | None = None) -> Dataset:
    """Keys after a sequence (a scanner must skip it without losing its place), ISO_IR 100 name."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop or generate_uid()
    ds.StudyDate = "20260101"
    ds.Modality = "CT"
    ds.ReferencedStudySequence = Sequence([Dataset(), Dataset()])
    ds.ReferencedStudySequence[0].ReferencedSOPClassUID = "1.2.3"
    ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID = "1.2.3.4"
    ds.PatientName = "Müller^Jörg"
    ds.PatientID = "PID-1"
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.InstanceNumber = 7
    return ds


def image_dataset(frames: int = 1, rows: int = 512, columns: int = 512, bits: int = 16,
                  samples: int = 1, photometric: str | None = None, seed: int = 0,
                  **keys) -> Dataset:
    """:func:`base_dataset` with pixels: a CT for one 16-bit grey frame, else Secondary Capture."""
    single_ct = frames == 1 and samples == 1 and bits == 16
    ds = base_dataset(CTImageStorage if single_ct else _sc_class(bits, samples), **keys)
    if not single_ct:
        ds.NumberOfFrames = frames
    _set_geometry(ds, rows, columns, bits, samples, photometric)
    count = frames * rows * columns * (1 if bits == 1 else samples)
    if ds.PhotometricInterpretation == "YBR_FULL_422":
        count = frames * rows * columns * 2  # chroma subsampled (PS3.3 C.7.6.3.1.2)
    ds.PixelData = _pixel_bytes(np.random.default_rng(seed), count, bits, min(bits, 12))
    return complete_iod(ds)


def ct_file(ts: str = ExplicitVRLittleEndian, **kw) -> bytes:
    return to_bytes(image_dataset(**kw), ts)


def compressed_file(ts: str, frames: int = 3, rows: int = 64, columns: int = 48, **kw) -> bytes:
    """:func:`image_dataset` compressed to ``ts`` (RLE Lossless or JPEG 2000 Lossless)."""
    ds = image_dataset(frames=frames, rows=rows, columns=columns, **kw)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    _compress(ds, ts)
    return to_bytes(ds, ts)


def reencapsulated_file(frames_bytes: list[bytes], *, bot: bool = False, eot: bool = False,
                        fragments_per_frame: int = 1, ts: str = RLELossless, **keys) -> bytes:
    """An encapsulated instance holding ``frames_bytes`` verbatim, with the chosen tables."""
    ds = image_dataset(frames=len(frames_bytes), rows=8, columns=8, **keys)
    if eot:
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = (
            encapsulate_extended(frames_bytes)
        )
    else:
        ds.PixelData = encapsulate(frames_bytes, fragments_per_frame, has_bot=bot)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return to_bytes(ds, ts)


# --- FRAME-level retrieval sources (PS3.4 Annex Y) -------------------------------------------


def source_pixels(frames: int, rows: int, cols: int, spp: int, bits: int, seed: int = 1) -> np.ndarray:
    """Random frames, each marked in its first sample, so a wrong frame cannot pass."""
    rng = np.random.default_rng(seed)
    shape = (frames, rows, cols) + ((spp,) if spp > 1 else ())
    if bits == 1:
        return rng.integers(0, 2, shape, dtype=np.uint8)
    dtype = np.uint16 if bits == 16 else np.uint8
    arr = rng.integers(0, 1 << min(bits, 12), shape, dtype=dtype)
    for k in range(frames):
        arr[k].flat[0] = (k + 1) % 256
    return arr


def equipment(name: str) -> Dataset:
    """A Contributing Equipment Sequence item: ``name``, Modifying Equipment."""
    item = Dataset()
    item.Manufacturer = name
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "109103", "DCM"
    code.CodeMeaning = "Modifying Equipment"
    item.PurposeOfReferenceCodeSequence = [code]
    return item


def make_source(*, frames: int = 10, rows: int = 16, cols: int = 16, spp: int = 1,
                bits: int = 16, sop_class: str = MULTIFRAME_CLASS,
                rich: bool = True) -> tuple[Dataset, np.ndarray]:
    """A multi-frame data set with every frame-dependent attribute the Y.3.3 rules touch, and
    its frames (not yet in Pixel Data)."""
    arr = source_pixels(frames, rows, cols, spp, bits)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = "Frame^Source"
    ds.PatientID = "PID-FRAMES"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyDate = ds.ContentDate = ds.AcquisitionDate = "20260101"
    ds.StudyTime = "101010"
    ds.ContentTime = "120000"
    ds.AcquisitionTime = "120000.500000"
    ds.Modality = "OT"
    ds.InstanceNumber = 7
    _set_geometry(ds, rows, cols, bits, spp, bits_stored=12 if bits == 16 else bits)
    ds.NumberOfFrames = frames
    if rich:
        ds.FrameTime = "40"
        ds.FrameIncrementPointer = [0x00181063]
        ds.CineRate = 25
        ds.EffectiveDuration = "0.4"
        ds.RepresentativeFrameNumber = 4
        ds.FrameNumbersOfInterest = [1, 4, 9]
        ds.FrameOfInterestDescription = ["first", "fourth", "ninth"]
        ds.ConcatenationUID = generate_uid()
        ds.InConcatenationNumber = 1
        ds.ConcatenationFrameOffsetNumber = 0
        ds.add_new(0x00090010, "LO", "PRIVATE CREATOR")
        ds.add_new(0x00091001, "LO", "private value")
        ds.add_new(0xFFFAFFFA, "SQ", Sequence([Dataset()]))
        ds.ContributingEquipmentSequence = [equipment("Earlier Vendor")]
        old = Dataset()
        old.MultiFrameSourceSOPInstanceUID = generate_uid()
        old.SimpleFrameList = [1, 2, 3]
        ds.FrameExtractionSequence = [old]
        per_frame = []
        for k in range(frames):
            item = Dataset()
            content = Dataset()
            stamp = datetime(2026, 1, 1, 12) + timedelta(milliseconds=40 * k)
            content.FrameReferenceDateTime = stamp.strftime("%Y%m%d%H%M%S.%f")
            content.add_new(0x00210010, "LO", "NESTED PRIVATE")
            item.FrameContentSequence = [content]
            per_frame.append(item)
        ds.PerFrameFunctionalGroupsSequence = per_frame
    return complete_iod(ds), arr


def native_source(directory, *, ts=ExplicitVRLittleEndian, name="native.dcm", **kw) -> str:
    """:func:`make_source` with native Pixel Data, written to ``directory/name``."""
    ds, arr = make_source(**kw)
    ds.PixelData = pack_bits(arr.ravel()) if ds.BitsAllocated == 1 else arr.tobytes()
    return write_file(ds, ts, Path(directory) / name)


def compressed_source(directory, ts, *, fragments: int = 1, bot: bool = True, eot: bool = False,
                      name: str = "compressed.dcm", **kw) -> str:
    """:func:`make_source` compressed to ``ts``, then re-encapsulated with the fragment layout
    asked for, written to ``directory/name``."""
    ds, arr = make_source(**kw)
    _compress(ds, ts, arr, generate_instance_uid=False)
    n = int(ds.NumberOfFrames)
    encoded = [b"".join(f) for f in generate_fragmented_frames(ds.PixelData, number_of_frames=n)]
    if eot:
        ds.PixelData, table, lengths = encapsulate_extended(encoded)
        ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = table, lengths
    elif fragments > 1 or not bot:
        ds.PixelData = encapsulate(encoded, fragments_per_frame=fragments, has_bot=bot)
    return write_file(ds, ts, Path(directory) / name)
