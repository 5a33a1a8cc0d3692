"""The new composite instance of a FRAME-level retrieve (PS3.4 Y.3.3, PS3.17 Annex MM).

:func:`extract_frames` builds, from a stored PS3.10 file and a Frame Range Key, the instance
a C-GET/C-MOVE at FRAME level sends. It reads the source header (everything before Pixel
Data) and never decodes pixels: native frames are byte ranges of the source (bit-shifted
copies when Bits Allocated is 1), encapsulated frames keep their fragments byte for byte
behind a new Basic Offset Table. Those ranges are not copied: the new instance is a list of
buffers, its new header and item headers followed by views of the (mapped) source, so a
sender streams the frames from the page cache and never holds the instance whole. With an
archive record the header is read from the stored offsets; only the elements the rules
below change or read are decoded, and the new header is written with every other
element's bytes copied from the source.

Transformations applied (copy to docs/conformance.md)
-----------------------------------------------------
Y.3.3 rules:

* Same SOP Class; a new SOP Instance UID under the dicomaccel UID root (data set, returned
  object and File Meta agree). Patient, Study, Series and all other attributes keep the
  source values unless listed here; top-level elements outside sequences keep their encoded
  bytes (VR and value as stored), sequences are re-encoded by pydicom. A source without Number of Frames (0028,0008) is not a
  multi-frame instance and is refused with AA01.
* Number of Frames = number of frames extracted; the frames are the Frame List, in source
  order.
* Frame Extraction Sequence (0008,1164): the source's items plus one with Multi-frame Source
  SOP Instance UID (0008,1167) and the Frame Range Key exactly as requested.
* Contributing Equipment Sequence (0018,A001): the source's items plus one with Manufacturer
  "dicomaccel", Manufacturer's Model Name, Software Versions, Contribution DateTime and
  Purpose of Reference (109105, DCM, "Frame Extracting Equipment").
* Instance Creation Date/Time (0008,0012)/(0008,0013) are set to the time of extraction.
* Removed: Pixel Data Provider URL (0028,7FE0); the Concatenation attributes (0020,9161),
  (0020,9162), (0020,9163), (0020,9228), (0020,0242); at every nesting level, private
  attributes (odd groups, PS3.17 MM.7), Digital Signatures Sequence (FFFA,FFFA) and MAC
  Parameters Sequence (4FFE,0001) (they sign bytes that changed).

Frame-dependent attributes (PS3.17 MM.2, MM.3):

* Per-Frame Functional Groups Sequence (5200,9230): the selected items, in order; Shared
  Functional Groups unchanged; values inside the items (Dimension Index Values, In-Stack
  Position, Temporal Position Index, ...) are kept as they are. A per-frame sequence whose
  length differs from Number of Frames is AA01.
* Per-frame vectors with one value per frame are subset in lock step: every attribute the
  Frame Increment Pointer (0028,0009) names, and always the NM vectors (0054,0010),
  (0054,0020), (0054,0030), (0054,0050), (0054,0060), (0054,0070), (0054,0080), (0054,0090),
  (0054,0100), Page Number / Frame Label / Frame Primary and Secondary Angle / Slice
  Location Vectors (0018,2001)-(0018,2005). A Frame Increment Pointer target without one
  value per frame is AA01. NM counts (Number of Slices etc.) are kept: the vectors still
  index the source's definitions.
* Incremental vectors (Positioner Primary/Secondary Angle Increment (0018,1520)/(0018,1521),
  Table Vertical/Lateral/Longitudinal Increment (0018,1135)-(0018,1137)) cannot be re-based
  without knowing their origin convention for sure: a selection other than all frames of
  such an instance is AA01.
* Frame Time Vector (0018,1065): new first value 0, then T(f_i) - T(f_i-1). Frame Time
  (0018,1063): kept for contiguous frames, multiplied by the stride for a uniform stride,
  otherwise replaced by a Frame Time Vector (and the Frame Increment Pointer updated). When
  frame times change, Cine Rate (0018,0040) and Recommended Display Frame Rate (0008,2144)
  are removed; for any proper subset Effective Duration (0018,0072) is removed.
* When frame 1 is not extracted and the source has frame timing (see
  :mod:`.framelist`), Content Date/Time, Acquisition Date/Time, Acquisition DateTime and
  Image Trigger Delay (0018,1067) move forward by T(first extracted frame) (MM.2.2). A date
  present next to the time rolls over at midnight; a time without its date wraps modulo 24 h.
* Frame numbers are renumbered to positions in the new instance: Representative Frame
  Number (removed if its frame is not extracted); Frame Numbers of Interest with their
  Description and Type (entries of frames not extracted dropped); Start/Stop Trim (clamped
  to extracted frames, removed if none remains); Mask Subtraction Sequence items (an item
  whose mask frames are not all extracted, or whose Applicable Frame Range holds no
  extracted frame, or a TID item of a proper subset, is removed; with no item left the
  sequence and Recommended Viewing Mode go).

Pixel Data:

* Native (Pixel Data, Float and Double Float Pixel Data): the frames are gathered and padded
  to even length; OW when Bits Allocated > 8, else OB.
* Encapsulated, frame-addressable transfer syntaxes (JPEG family, JPEG-LS, JPEG 2000 Part 1,
  HTJ2K, JPEG XL, RLE, Deflated Image Frame, Encapsulated Uncompressed): the fragments of
  the selected frames are copied unchanged behind a new Basic Offset Table; when the source
  had an Extended Offset Table it is recomputed (Basic Offset Table empty).
* Video (MPEG-2, H.264, HEVC) and JPEG 2000 Part 2 multi-component: frames cannot be cut
  without re-encoding, so only a request for all frames is served (the value copied as is);
  any other selection is AA02.

Limitations: Deflated Explicit VR Little Endian, Explicit VR Big Endian (retired) and JPIP
Referenced sources are refused with AA02.
"""

from __future__ import annotations

import functools
import io
import mmap
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from io import BytesIO

from pydicom import dcmread
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset, read_file_meta_info
from pydicom.filewriter import (
    write_data_element,
    write_sequence_item,
)
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import generate_uid
from pydicom.valuerep import DA, DT, TM, format_number_as_ds

from .. import __version__, encaps
from ..memory import close_map
from ..archive.index import InstanceRecord
from ..archive.ingest import FrameIndex
from ..elements import (
    ITEM,
    LONG_VRS,
    MAX_SHORT_LENGTH,
    SEQUENCE_DELIMITATION,
    UNDEFINED_LENGTH,
    PixelDataHeader,
    encode_element,
    encode_header,
    encode_item,
    read_header,
    read_tag,
)
from ..errors import ParseError
from ..status import Status
from ..syntaxes import (
    DICOMACCEL_UID_ROOT,
    DOUBLE_PIXEL_DATA,
    EXPLICIT_VR_LE,
    EXTENDED_OFFSET_TABLE,
    EXTENDED_OFFSET_TABLE_LENGTHS,
    FLOAT_PIXEL_DATA,
    FRAME_ADDRESSABLE,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    IMPLICIT_VR_LE,
    PIXEL_DATA,
    PIXEL_TAGS,
    WHOLE_STREAM,
)
from .framelist import (
    FRAME_TIME,
    FRAME_TIME_VECTOR,
    FrameExtractionError,
    FrameTiming,
    as_list,
    build_frame_list,
    frame_timing,
)

__all__ = ["ExtractedInstance", "FrameExtractionError", "extract_frames"]

# Big endian is refused (AA02): only the little-endian native syntaxes are sliced.
NATIVE_SYNTAXES = frozenset({IMPLICIT_VR_LE, EXPLICIT_VR_LE})
MAX_VALUE_LENGTH = 0xFFFFFFFE

# Y.3.3: the new instance is not part of a Concatenation; the provider URL names the source.
REMOVED_TAGS = (
    0x00287FE0,  # Pixel Data Provider URL
    0x00209161,  # Concatenation UID
    0x00209162,  # In-concatenation Number
    0x00209163,  # In-concatenation Total Number
    0x00209228,  # Concatenation Frame Offset Number
    0x00200242,  # SOP Instance UID of Concatenation Source
    EXTENDED_OFFSET_TABLE,
    EXTENDED_OFFSET_TABLE_LENGTHS,
    # Alternate Representation Sequence (SOP Common Module, PS3.3 Table C.12-1): its items name
    # other encodings of the *source* instance; the new instance holds a frame subset, so
    # none of them is an alternate representation of it.
    0x00083001,
) + tuple(sorted(PIXEL_TAGS))
# Signatures over bytes we change become false (PS3.15 C.1); removed at every level.
SIGNATURE_TAGS = frozenset({0xFFFAFFFA, 0x4FFE0001})
# Per-frame vectors whose value k belongs to frame k (PS3.3 C.8.4.8 NM Multi-frame, C.8.6.3
# Multi-frame SC Image); any other Frame Increment Pointer target is handled alike.
LOCKSTEP_VECTORS = (
    0x00540010, 0x00540020, 0x00540030, 0x00540050, 0x00540060, 0x00540070, 0x00540080,
    0x00540090, 0x00540100,
    0x00182001, 0x00182002, 0x00182003, 0x00182004, 0x00182005,
)
# Increments whose origin convention we do not re-base (see the module docstring).
INCREMENT_VECTORS = (0x00181520, 0x00181521, 0x00181135, 0x00181136, 0x00181137)
CINE_RATE = 0x00180040
RECOMMENDED_DISPLAY_FRAME_RATE = 0x00082144
EFFECTIVE_DURATION = 0x00180072
IMAGE_TRIGGER_DELAY = 0x00181067
CONTENT_DATE, CONTENT_TIME = 0x00080023, 0x00080033
ACQUISITION_DATE, ACQUISITION_TIME, ACQUISITION_DATETIME = 0x00080022, 0x00080032, 0x0008002A
SIMPLE_FRAME_LIST, CALCULATED_FRAME_LIST, TIME_RANGE = 0x00081161, 0x00081162, 0x00081163

_PURPOSE = ("109105", "DCM", "Frame Extracting Equipment")  # PS3.16 CID 7005
_SEQUENCE_DELIMITATION_ITEM = encode_header(SEQUENCE_DELIMITATION, None, 0, True)  # PS3.5 A.4


@dataclass
class ExtractedInstance:
    """A new instance made of frames of a source instance.

    The selected frames are not copied: ``pieces`` holds views of the source (its mapping,
    or the buffer given to :func:`extract_frames`), so a sender streams them as they are and
    only the new header is new memory. Close the instance (or use it as a context manager)
    once sent, so a mapping :func:`extract_frames` made goes at once, not when collected.

    Attributes
    ----------
    sop_class_uid : str
        The source's SOP Class UID (Y.3.3).
    sop_instance_uid : str
        The new SOP Instance UID; use it as the C-STORE Affected SOP Instance UID.
    transfer_syntax_uid : str
        The source's transfer syntax, in which the data set is encoded.
    source_sop_instance_uid : str
        The instance the frames were taken from.
    frames : list of int
        The Frame List: 1-based source frame numbers, in order.
    pieces : list of bytes-like
        Buffers whose concatenation is the data set without File Meta, as a C-STORE sends
        it: the encoded header, the Pixel Data element header, then the Pixel Data value in
        pieces (item headers and offset tables as bytes, frames and fragments as views of
        the source).
    spans : list of (int, int, int)
        The pieces that are views of the source, in data set order: (offset in the data
        set, offset in the source, length). A sender of a mapped source releases the pages
        behind what it has sent with these.
    mapping : mmap.mmap or None
        The mapping of the source file :func:`extract_frames` made (None when it was given a
        buffer); ``spans`` index it.
    """

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    source_sop_instance_uid: str
    frames: list[int]
    pieces: list
    spans: list[tuple[int, int, int]] = field(default_factory=list)
    mapping: mmap.mmap | None = field(default=None, repr=False)

    @property
    def dataset(self) -> list:
        """The data set as three buffers: the encoded header, the Pixel Data element header
        and the Pixel Data value, joined (a copy of the frames: for an embedder that hands
        the value to pydicom whole; a sender streams ``pieces`` instead)."""
        header, pixel_header, *value = self.pieces
        return [header, pixel_header, self._join(value)]

    @property
    def nbytes(self) -> int:
        """Length of the encoded data set."""
        return sum(memoryview(b).nbytes for b in self.pieces)

    def file_meta_bytes(self) -> bytes:
        """Preamble, ``DICM`` and the File Meta Information group (PS3.10 §7.1)."""
        return file_meta_bytes(self.sop_class_uid, self.sop_instance_uid, self.transfer_syntax_uid)

    def to_file_bytes(self) -> bytes:
        """The whole PS3.10 file in memory (tests, embedders, transcoding)."""
        return self._join([self.file_meta_bytes(), *self.pieces])

    def _join(self, parts: list) -> bytes:
        joined = b"".join(parts)
        if self.mapping is not None:
            # The copy read the frames through our mapping: drop those pages now rather than
            # when the instance goes (pages of a read-only file mapping fault back if read).
            self.mapping.madvise(mmap.MADV_DONTNEED)
        return joined

    def write(self, path: str | os.PathLike) -> None:
        """Write the PS3.10 file to `path` without joining the buffers."""
        with open(path, "wb") as f:
            f.write(self.file_meta_bytes())
            for part in self.pieces:
                f.write(part)

    def close(self) -> None:
        """Release the views of the source and unmap it (if :func:`extract_frames` mapped
        it). A view still held elsewhere (a transport's) keeps the mapping until it goes."""
        for part in self.pieces:
            if isinstance(part, memoryview):
                part.release()
        if self.mapping is not None:
            close_map(self.mapping)

    def __enter__(self) -> ExtractedInstance:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Preamble, ``DICM`` and a File Meta Information group (PS3.10 §7.1) naming dicomaccel as
    the implementation: what a data set we send as a file (a new FRAME-level instance, a
    transcoded WADO-RS instance) is prefixed with."""
    # Written with elements.py rather than pydicom's writer: the C-STORE SCP prefixes every
    # received data set with one, and this is 60 times cheaper (4 us instead of 250 us).
    # PS3.10 Table 7.1-1, Explicit VR Little Endian, ascending tags; UI padded with NUL, SH
    # with a space (PS3.5 §6.2).
    body = b"".join((
        _FILE_META_VERSION,
        encode_element(0x00020002, b"UI", _padded(sop_class_uid, b"\x00"), False),
        encode_element(0x00020003, b"UI", _padded(sop_instance_uid, b"\x00"), False),
        encode_element(0x00020010, b"UI", _padded(transfer_syntax_uid, b"\x00"), False),
        _FILE_META_IMPLEMENTATION,
    ))
    return _PREAMBLE + encode_element(0x00020000, b"UL", struct.pack("<L", len(body)), False) + body


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) & 1 else raw


_PREAMBLE = b"\x00" * 128 + b"DICM"
# (0002,0001) File Meta Information Version 00H 01H; (0002,0012)/(0002,0013) ours.
_FILE_META_VERSION = encode_element(0x00020001, b"OB", b"\x00\x01", False)
_FILE_META_IMPLEMENTATION = (
    encode_element(0x00020012, b"UI", _padded(IMPLEMENTATION_CLASS_UID, b"\x00"), False)
    + encode_element(0x00020013, b"SH", _padded(IMPLEMENTATION_VERSION_NAME, b" "), False)
)


def extract_frames(
    source: str | os.PathLike | InstanceRecord | bytes | bytearray | memoryview | mmap.mmap,
    keyword: str,
    values: Sequence,
    *,
    sop_instance_uid: str | None = None,
    now: datetime | None = None,
) -> ExtractedInstance:
    """Build the new instance of a FRAME-level retrieve (PS3.4 Y.3.3).

    Parameters
    ----------
    source : str, os.PathLike, InstanceRecord or bytes-like
        The stored PS3.10 file, its archive record, or the whole file in a buffer (bytes,
        an mmap: not copied). A record with a frame index is served from its offsets
        (header bytes before ``pixel_offset``, frames from ``frame_index``); otherwise the
        header is parsed up to Pixel Data and the frames located with the kernels.
    keyword : str
        The Frame Range Key: ``"SimpleFrameList"``, ``"CalculatedFrameList"`` or
        ``"TimeRange"``.
    values : sequence
        Its values, as in the request Identifier.
    sop_instance_uid : str, optional
        The new SOP Instance UID; by default a fresh UID under the dicomaccel root.
    now : datetime.datetime, optional
        Time of extraction for Contribution DateTime and Instance Creation Date/Time;
        default: the current local time.

    Returns
    -------
    ExtractedInstance

    Raises
    ------
    FrameExtractionError
        With AA00-AA04 (PS3.4 Table Y.4-2); see :mod:`.framelist` and the module docstring.
    OSError
        If the file cannot be read.
    """
    record = source if isinstance(source, InstanceRecord) else None
    buffer = None if record is not None or isinstance(source, (str, os.PathLike)) \
        else memoryview(source).cast("B")
    path = record.path if record is not None else None if buffer is not None else os.fspath(source)
    if record is not None and record.frame_index is None:
        record = None  # deflated, video or no Pixel Data: nothing indexed to use
    now = now or datetime.now().astimezone()
    # The transfer syntax first: a deflated data set would be inflated whole to be read.
    ts = record.transfer_syntax_uid if record is not None else _transfer_syntax(path or _ViewFile(buffer))
    if ts not in NATIVE_SYNTAXES | FRAME_ADDRESSABLE | WHOLE_STREAM:
        raise FrameExtractionError(
            Status.CANNOT_EXTRACT_FRAMES, f"transfer syntax {ts} not supported"
        )
    with (open(path, "rb") if buffer is None else _ViewFile(buffer)) as f:
        ds, pixel_offset = _read_header(f, record)
        try:
            n = _number_of_frames(ds)
        except FrameExtractionError as exc:
            if exc.status == Status.CANNOT_CREATE_NEW_OBJECT and keyword != "TimeRange":
                # A malformed frame list is AA04 whatever the source is (PS3.4 Table Y.4-2).
                build_frame_list(keyword, values, 1, None)
            raise
        timing = frame_timing(ds, n)
        frame_list = build_frame_list(keyword, values, n, timing)
        mapping = None if buffer is not None else mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    source_view = memoryview(mapping if mapping is not None else buffer)
    try:
        pixel = _pixel_data(source_view, ds, ts, pixel_offset, record, n, frame_list)
        source_uid = str(ds.SOPInstanceUID)
        new_uid = sop_instance_uid or generate_uid(prefix=DICOMACCEL_UID_ROOT + ".")
        _edit(ds, frame_list, n, timing, keyword, values, new_uid, now)
        if pixel.extended is not None:
            ds[EXTENDED_OFFSET_TABLE] = _ov(EXTENDED_OFFSET_TABLE, pixel.extended[0])
            ds[EXTENDED_OFFSET_TABLE_LENGTHS] = _ov(EXTENDED_OFFSET_TABLE_LENGTHS, pixel.extended[1])
        pieces = [_encode(ds, ts), _pixel_header(pixel, ts)]
        spans = []
        pos = len(pieces[0]) + len(pieces[1])
        for part in pixel.parts:
            if type(part) is tuple:  # a range of the source: sent from it, never copied
                begin, stop = part
                spans.append((pos, begin, stop - begin))
                part = source_view[begin:stop]
            pieces.append(part)
            pos += len(part)
    except BaseException:
        source_view.release()
        if mapping is not None:
            close_map(mapping)
        raise
    source_view.release()  # the slices in pieces keep the source exported
    return ExtractedInstance(
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=new_uid,
        transfer_syntax_uid=ts,
        source_sop_instance_uid=source_uid,
        frames=frame_list,
        pieces=pieces,
        spans=spans,
        mapping=mapping,
    )


# --- reading --------------------------------------------------------------------------------


class _ViewFile(io.RawIOBase):
    """A read-only file over a buffer, without copying it: what pydicom reads a source held
    in memory through."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view, self._pos = view, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        chunk = self._view[self._pos:self._pos + len(b)]
        n = chunk.nbytes
        memoryview(b).cast("B")[:n] = chunk
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = max(0, offset + (0, self._pos, self._view.nbytes)[whence])
        return self._pos

    def tell(self) -> int:
        return self._pos


def _view_transfer_syntax(view: memoryview) -> str:
    """Transfer Syntax UID (0002,0010) of a PS3.10 file in a buffer (PS3.10 §7.1: preamble,
    "DICM", then the File Meta group in Explicit VR Little Endian)."""
    if view[128:132].tobytes() != b"DICM":
        raise FrameExtractionError(Status.CANNOT_CREATE_NEW_OBJECT, "source is not a PS3.10 file")
    pos, end = 132, view.nbytes
    try:
        while pos < end:
            tag, _, length, value = read_header(view, pos, end, True, True)
            if tag >> 16 != 0x0002 or length > end - value:
                break
            if tag == 0x00020010:
                return view[value:value + length].tobytes().rstrip(b"\0 ").decode("ascii", "replace")
            pos = value + length
    except ParseError as exc:
        raise FrameExtractionError(Status.CANNOT_CREATE_NEW_OBJECT,
                                   f"source File Meta unreadable at byte {exc.offset}") from exc
    return ""


def _transfer_syntax(path) -> str:
    if isinstance(path, _ViewFile):
        return _view_transfer_syntax(path._view)
    try:
        meta = read_file_meta_info(path)
    except OSError:
        raise
    except Exception as exc:  # pydicom raises many types for malformed input
        raise FrameExtractionError(
            Status.CANNOT_CREATE_NEW_OBJECT, f"source File Meta unreadable: {exc}"
        ) from exc
    return str(meta.get("TransferSyntaxUID", ""))


def _read_header(f, record: InstanceRecord | None) -> tuple[Dataset, int]:
    """The source data set up to Pixel Data, and the file offset of the Pixel Data element."""
    try:
        if record is not None:
            # The index already validated preamble and File Meta: read the data set only.
            f.seek(record.dataset_offset)
            head = f.read(record.pixel_offset - record.dataset_offset)
            implicit = record.transfer_syntax_uid == IMPLICIT_VR_LE
            return read_dataset(BytesIO(head), implicit, True), record.pixel_offset
        ds = dcmread(f, stop_before_pixels=True)
        return ds, f.tell()
    except Exception as exc:  # pydicom raises many types for malformed input
        raise FrameExtractionError(
            Status.CANNOT_CREATE_NEW_OBJECT, f"source header unreadable: {exc}"
        ) from exc


def _number_of_frames(ds: Dataset) -> int:
    # Y.3.3 keeps the SOP Class; only multi-frame IODs have Number of Frames and the Frame
    # Extraction Module (PS3.3 C.12.3).
    value = ds.get("NumberOfFrames")
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise FrameExtractionError(
            Status.CANNOT_CREATE_NEW_OBJECT, "source is not a multi-frame instance"
        ) from None
    if n < 1:
        raise FrameExtractionError(Status.CANNOT_CREATE_NEW_OBJECT, f"Number of Frames is {n}")
    return n


@dataclass
class _Pixel:
    tag: int
    # The value in order: bytes written here, or (start, end) ranges of the source.
    parts: list[bytes | tuple[int, int]]
    length: int
    encapsulated: bool
    vr: bytes
    extended: tuple[bytes, bytes] | None = None


def _pixel_element(mm, ts: str, pos: int) -> PixelDataHeader:
    """The Pixel Data element at ``pos`` (only little-endian sources get here)."""
    size = len(mm)
    if pos < 0 or 8 > size - pos or read_tag(mm, pos) not in PIXEL_TAGS:
        raise FrameExtractionError(Status.CANNOT_EXTRACT_FRAMES, "source has no Pixel Data")
    try:
        tag, vr, length, start = read_header(mm, pos, size, ts != IMPLICIT_VR_LE, True)
    except ParseError:
        vr = b""  # truncated, or not a VR at all
    if vr is not None and vr not in LONG_VRS:  # OB, OW, OF or OD (PS3.5 §8.1.1, A.4)
        raise FrameExtractionError(
            Status.CANNOT_EXTRACT_FRAMES, "malformed Pixel Data element header"
        )
    if length == UNDEFINED_LENGTH:
        return PixelDataHeader(tag, pos, start, -1)
    if length > size - start:
        raise FrameExtractionError(
            Status.CANNOT_EXTRACT_FRAMES, "Pixel Data runs past the end of the file"
        )
    return PixelDataHeader(tag, pos, start, length)


def _pixel_data(mm, ds, ts, pixel_offset, record, n, frame_list) -> _Pixel:
    if record is not None:
        fi = record.frame_index
        tag, start, length = record.pixel_tag, fi.pixel_value_offset, fi.pixel_length
    else:
        tag, _, start, length = _pixel_element(mm, ts, pixel_offset)
    indices = [f - 1 for f in frame_list]
    try:
        if length != -1:
            return _native(mm, ds, tag, start, length, n, indices, record)
        if ts in NATIVE_SYNTAXES:
            raise FrameExtractionError(
                Status.CANNOT_EXTRACT_FRAMES, "undefined-length native Pixel Data"
            )
        if ts in WHOLE_STREAM:
            if indices != list(range(n)):
                raise FrameExtractionError(
                    Status.CANNOT_EXTRACT_FRAMES, "frames of this transfer syntax not separable"
                )
            end = encaps.EncapsulatedFrames(mm, 1, offset=start).end_offset
            return _Pixel(tag, [(start, end)], end - start, True, b"OB")
        return _encapsulated(mm, ds, tag, start, n, indices, record)
    except ParseError as exc:
        raise FrameExtractionError(
            Status.CANNOT_EXTRACT_FRAMES, f"Pixel Data malformed at byte {exc.offset}"
        ) from exc
    except ValueError as exc:  # geometry the kernels reject
        raise FrameExtractionError(
            Status.CANNOT_EXTRACT_FRAMES, f"Pixel Data: {exc}"
        ) from exc


def _native(mm, ds, tag, start, length, n, indices, record) -> _Pixel:
    if tag == PIXEL_DATA:
        ba = int(ds.get("BitsAllocated") or 0)
    else:  # Float / Double Float Pixel Data are 32 / 64 bits (PS3.3 C.7.6.24)
        ba = int(ds.get("BitsAllocated") or (32 if tag == FLOAT_PIXEL_DATA else 64))
    if record is not None:
        index = record.frame_index
    else:
        index = FrameIndex.native(
            rows=int(ds.get("Rows") or 0),
            columns=int(ds.get("Columns") or 0),
            samples_per_pixel=int(ds.get("SamplesPerPixel") or 1),
            bits_allocated=ba,
            number_of_frames=n,
            photometric_interpretation=str(ds.get("PhotometricInterpretation", "")),
            pixel_value_offset=start,
            pixel_length=length,
        )
    native = index.native_frames(mm)  # checks that the value holds every frame
    parts: list = []
    if native.byte_aligned:
        # Frames are byte ranges of the source; runs of consecutive frames are one range.
        for i in indices:
            begin, end = native.frame_range(i)
            if parts and parts[-1][1] == begin:
                parts[-1] = (parts[-1][0], end)
            else:
                parts.append((begin, end))
        size = len(indices) * native.frame_length
        if size & 1:
            parts.append(b"\0")  # PS3.5 §7.1.1: even value length
            size += 1
    else:  # 1-bit frames sharing bytes are shifted into place: a copy, of bits only
        value = bytes(native.gather(indices))
        parts.append(value)
        size = len(value)
    del native  # release the view of the map before it closes
    if size > MAX_VALUE_LENGTH:
        raise FrameExtractionError(Status.CANNOT_EXTRACT_FRAMES, "new Pixel Data exceeds 4 GiB")
    vr = {PIXEL_DATA: b"OW" if ba > 8 else b"OB", FLOAT_PIXEL_DATA: b"OF",
          DOUBLE_PIXEL_DATA: b"OD"}[tag]
    return _Pixel(tag, parts, size, False, vr)


def _encapsulated(mm, ds, tag, start, n, indices, record) -> _Pixel:
    if record is not None:
        fi = record.frame_index
        ranges = [fi.frame_ranges(i) for i in indices]
        extended = fi.has_extended_offset_table
    else:
        eot = ds.get(EXTENDED_OFFSET_TABLE)
        eotl = ds.get(EXTENDED_OFFSET_TABLE_LENGTHS)
        extended = eot is not None and eotl is not None and bool(eot.value)
        ef = encaps.EncapsulatedFrames(
            mm, n, offset=start,
            extended_offsets=eot.value if extended else None,
            extended_lengths=eotl.value if extended else None,
        )
        ranges = [ef.fragment_ranges(i) for i in indices]
        del ef
    # PS3.5 A.4: a Basic Offset Table item, the fragments as items copied unchanged, a
    # Sequence Delimitation Item. Each frame's offset runs from the first item after the
    # table to the frame's first item tag; with an Extended Offset Table (PS3.3
    # C.7.6.3.1.8) the table item stays empty and every frame is one fragment.
    parts: list = [b""]  # the Basic Offset Table item, once the offsets are known
    starts = []
    pos = 0
    for k, frame in enumerate(ranges):
        if not frame or (extended and len(frame) != 1):
            raise ValueError(f"frame {indices[k] + 1} has {len(frame)} fragments")
        starts.append(pos)
        for begin, end in frame:
            size = end - begin
            if size & 1 or size > MAX_VALUE_LENGTH:
                raise ValueError(f"a fragment of frame {indices[k] + 1} is {size} bytes")
            parts += [encode_header(ITEM, None, size, True), (begin, end)]
            pos += 8 + size
    parts.append(_SEQUENCE_DELIMITATION_ITEM)
    nframes = len(starts)
    if extended:
        parts[0] = encode_header(ITEM, None, 0, True)
        tables = (struct.pack(f"<{nframes}Q", *starts),
                  struct.pack(f"<{nframes}Q", *(end - begin for ((begin, end),) in ranges)))
    else:
        if starts[-1] > 0xFFFFFFFF:  # a 32-bit offset cannot reach it
            raise ValueError("Basic Offset Table offset above 2**32 - 1")
        parts[0] = encode_header(ITEM, None, 4 * nframes, True) + struct.pack(f"<{nframes}I", *starts)
        tables = None
    length = len(parts[0]) + pos + len(_SEQUENCE_DELIMITATION_ITEM)
    return _Pixel(tag, parts, length, True, b"OB", tables)


# --- the new header ----------------------------------------------------------------------


def _strip(ds: Dataset) -> None:
    # PS3.17 MM.7 (private data is not understood, so not kept) and signatures (PS3.15 C.1).
    for tag in list(ds.keys()):
        if tag.group % 2 or tag in SIGNATURE_TAGS:
            del ds[tag]
        elif _may_be_sequence(ds.get_item(tag)):
            elem = ds[tag]
            if elem.VR == "SQ":
                for item in elem.value:
                    _strip(item)


def _may_be_sequence(elem) -> bool:
    # Only a sequence can hold what _strip removes; every other element stays undecoded
    # (pydicom then writes its source bytes unchanged). A raw element's VR is None in
    # Implicit VR and may be UN in Explicit VR (PS3.5 6.2.2): the dictionary decides then.
    vr = elem.VR
    if vr == "SQ":
        return True
    if not elem.is_raw or vr not in (None, "UN"):
        return False
    try:
        return dictionary_VR(elem.tag) == "SQ"
    except KeyError:
        return False


def _ds_value(x: float) -> str:
    return format_number_as_ds(float(x))


def _edit(ds: Dataset, frame_list: list[int], n: int, timing: FrameTiming | None,
          keyword: str, values: Sequence, new_uid: str, now: datetime) -> None:
    # Subset first: the items of frames left out are then never decoded by _strip.
    _subset_functional_groups(ds, frame_list, n)
    _strip(ds)
    for tag in REMOVED_TAGS:
        ds.pop(tag, None)
    all_frames = frame_list == list(range(1, n + 1))
    source_uid = str(ds.SOPInstanceUID)
    # Values set here are stored already encoded (_put): pydicom's attribute setters and
    # writer would cost more than the rest of the extraction.
    _put(ds, 0x00080018, b"UI", new_uid)  # SOP Instance UID
    _put(ds, 0x00280008, b"IS", str(len(frame_list)))  # Number of Frames
    _put(ds, 0x00080012, b"DA", now.strftime("%Y%m%d"))  # Instance Creation Date
    _put(ds, 0x00080013, b"TM", now.strftime("%H%M%S.%f"))  # Instance Creation Time
    _subset_vectors(ds, frame_list, n, all_frames)
    _frame_times(ds, frame_list, n, all_frames)
    _renumber(ds, frame_list, all_frames)
    if frame_list[0] != 1 and timing is not None:
        _shift_start(ds, timing.offsets_ms[frame_list[0] - 1])
    _add_frame_extraction_item(ds, source_uid, keyword, values)
    _add_contributing_equipment(ds, now)


def _subset_functional_groups(ds: Dataset, frame_list: list[int], n: int) -> None:
    items = ds.get("PerFrameFunctionalGroupsSequence")
    if items is None:
        return
    if len(items) != n:
        raise FrameExtractionError(
            Status.CANNOT_CREATE_NEW_OBJECT,
            f"{len(items)} per-frame functional groups for {n} frames",
        )
    ds.PerFrameFunctionalGroupsSequence = DicomSequence([items[f - 1] for f in frame_list])


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _subset_vectors(ds: Dataset, frame_list: list[int], n: int, all_frames: bool) -> None:
    pointers = [int(t) for t in as_list(ds.get("FrameIncrementPointer"))]
    for tag in dict.fromkeys([*LOCKSTEP_VECTORS, *pointers]):
        if tag in (FRAME_TIME, FRAME_TIME_VECTOR) or tag not in ds:
            continue  # frame times: _frame_times; a missing target has nothing to fix
        vals = as_list(ds[tag].value)
        if len(vals) == n:
            if tag in INCREMENT_VECTORS and not all_frames:
                raise FrameExtractionError(
                    Status.CANNOT_CREATE_NEW_OBJECT,
                    f"cannot re-base increments {_tag_text(tag)}",
                )
            ds[tag].value = [vals[f - 1] for f in frame_list]
        elif tag in pointers:
            raise FrameExtractionError(
                Status.CANNOT_CREATE_NEW_OBJECT,
                f"{_tag_text(tag)} lacks one value per frame",
            )
    if not all_frames:
        for tag in INCREMENT_VECTORS:
            if tag in ds and tag not in pointers and len(as_list(ds[tag].value)) == n:
                raise FrameExtractionError(
                    Status.CANNOT_CREATE_NEW_OBJECT,
                    f"cannot re-base increments {_tag_text(tag)}",
                )


def _frame_times(ds: Dataset, frame_list: list[int], n: int, all_frames: bool) -> None:
    # PS3.17 MM.2.3: frame timing must describe the frames actually present.
    if all_frames:
        return
    ds.pop(EFFECTIVE_DURATION, None)
    gaps = {b - a for a, b in zip(frame_list, frame_list[1:])}
    changed = bool(gaps - {1})
    if FRAME_TIME_VECTOR in ds:
        source = as_list(ds[FRAME_TIME_VECTOR].value)
        if len(source) != n:
            raise FrameExtractionError(
                Status.CANNOT_CREATE_NEW_OBJECT, "Frame Time Vector lacks one value per frame"
            )
        times = [0.0]
        for v in source[1:]:
            times.append(times[-1] + float(v))
        new = [_ds_value(0)]
        for a, b in zip(frame_list, frame_list[1:]):
            new.append(source[b - 1] if b == a + 1 else _ds_value(times[b - 1] - times[a - 1]))
        ds[FRAME_TIME_VECTOR].value = new
        changed = True
        ds.pop(FRAME_TIME, None)  # the vector is authoritative once frames are dropped
    elif FRAME_TIME in ds and changed:
        ft = float(ds[FRAME_TIME].value)
        if len(gaps) == 1:
            ds[FRAME_TIME].value = _ds_value(ft * gaps.pop())
        else:
            ds.FrameTimeVector = [_ds_value(0)] + [
                _ds_value((b - a) * ft) for a, b in zip(frame_list, frame_list[1:])
            ]
            del ds[FRAME_TIME]
            pointers = [int(t) for t in as_list(ds.get("FrameIncrementPointer"))]
            if FRAME_TIME in pointers:
                ds.FrameIncrementPointer = [
                    Tag(FRAME_TIME_VECTOR if t == FRAME_TIME else t) for t in pointers
                ]
    if changed:
        ds.pop(CINE_RATE, None)
        ds.pop(RECOMMENDED_DISPLAY_FRAME_RATE, None)


def _renumber(ds: Dataset, frame_list: list[int], all_frames: bool) -> None:
    # PS3.17 MM.3: frame numbers are indexes into the instance, so they follow the subset.
    if all_frames:
        return
    pos = {f: i + 1 for i, f in enumerate(frame_list)}
    rep = ds.get("RepresentativeFrameNumber")
    if rep is not None:
        if int(rep) in pos:
            ds.RepresentativeFrameNumber = pos[int(rep)]
        else:
            del ds.RepresentativeFrameNumber
    if "FrameNumbersOfInterest" in ds:
        keep = [i for i, f in enumerate(as_list(ds.FrameNumbersOfInterest)) if int(f) in pos]
        for kw in ("FrameNumbersOfInterest", "FrameOfInterestDescription", "FrameOfInterestType"):
            if kw in ds:
                vals = as_list(ds[kw].value)
                kept = [vals[i] for i in keep if i < len(vals)]
                if kw == "FrameNumbersOfInterest":
                    kept = [pos[int(v)] for v in kept]
                if kept:
                    setattr(ds, kw, kept)
                else:
                    delattr(ds, kw)
    _renumber_trim(ds, frame_list, pos)
    if "MaskSubtractionSequence" in ds:
        items = [it for it in ds.MaskSubtractionSequence if _renumber_mask(it, frame_list, pos)]
        if items:
            ds.MaskSubtractionSequence = DicomSequence(items)
        else:
            del ds.MaskSubtractionSequence
            ds.pop("RecommendedViewingMode", None)


def _renumber_trim(ds: Dataset, frame_list: list[int], pos: dict[int, int]) -> None:
    if "StartTrim" not in ds and "StopTrim" not in ds:
        return
    start = int(ds.get("StartTrim") or 1)
    stop = int(ds.get("StopTrim") or frame_list[-1])
    inside = [f for f in frame_list if start <= f <= stop]
    for kw in ("StartTrim", "StopTrim"):
        ds.pop(kw, None)
    if inside:
        ds.StartTrim = pos[inside[0]]
        ds.StopTrim = pos[inside[-1]]


def _renumber_mask(item: Dataset, frame_list: list[int], pos: dict[int, int]) -> bool:
    """Renumber one Mask Subtraction item in place; False if it must be dropped."""
    if str(item.get("MaskOperation", "")).strip() == "TID":
        return False  # TID Offset counts frames of the source sequence
    masks = [int(f) for f in as_list(item.get("MaskFrameNumbers"))]
    if any(f not in pos for f in masks):
        return False
    if masks:
        item.MaskFrameNumbers = [pos[f] for f in masks]
    if "ApplicableFrameRange" in item:
        bounds = [int(v) for v in as_list(item.ApplicableFrameRange)]
        ranges = []
        for a, b in zip(bounds[::2], bounds[1::2]):
            inside = [f for f in frame_list if a <= f <= b]
            if inside:
                ranges += [pos[inside[0]], pos[inside[-1]]]
        if not ranges:
            return False
        item.ApplicableFrameRange = ranges
    return True


def _format_time(value: datetime, fractional: bool) -> str:
    return value.strftime("%H%M%S.%f" if fractional else "%H%M%S")


def _shift_start(ds: Dataset, delta_ms: float) -> None:
    # PS3.17 MM.2.2: the new first frame starts T(f1) after the old one.
    delta = timedelta(milliseconds=delta_ms)
    fractional_delta = bool(delta.microseconds)
    for date_tag, time_tag in ((CONTENT_DATE, CONTENT_TIME), (ACQUISITION_DATE, ACQUISITION_TIME)):
        text = _string(ds, time_tag)
        if not text:
            continue
        day_text = _string(ds, date_tag)
        day = DA(day_text) if day_text else None
        moved = datetime.combine(day or date(2000, 1, 1), TM(text)) + delta
        _put(ds, time_tag, b"TM", _format_time(moved, "." in text or fractional_delta))
        if day is not None:
            _put(ds, date_tag, b"DA", moved.strftime("%Y%m%d"))
    text = _string(ds, ACQUISITION_DATETIME)
    if text:
        moved = DT(text) + delta
        stamp = moved.strftime("%Y%m%d%H%M%S")
        if "." in text or fractional_delta:
            stamp += moved.strftime(".%f")
        if moved.tzinfo is not None:
            stamp += moved.strftime("%z")
        _put(ds, ACQUISITION_DATETIME, b"DT", stamp)
    text = _string(ds, IMAGE_TRIGGER_DELAY)
    if text:
        _put(ds, IMAGE_TRIGGER_DELAY, b"DS", _ds_value(float(text) + delta_ms))


def _string(ds: Dataset, tag: int) -> str:
    """The text of a DA, TM, DT or DS element ("" if absent or empty), left undecoded."""
    elem = ds.get_item(tag)
    if elem is None or elem.value is None:
        return ""
    if elem.is_raw:  # these VRs hold ASCII only (PS3.5 6.2)
        return elem.value.decode("ascii", "replace").strip(" \0")
    return str(elem.value).strip()


def _add_frame_extraction_item(ds: Dataset, source_uid: str, keyword: str,
                               values: Sequence) -> None:
    # PS3.3 C.12.3: source items are kept, one item describes this extraction.
    implicit = ds.original_encoding[0]
    vals = as_list(values)
    if keyword == "TimeRange":
        value = struct.pack(f"<{len(vals)}d", *map(float, vals))
        key = encode_element(TIME_RANGE, b"FD", value, implicit)
    else:  # build_frame_list has checked that the values are ULs
        tag = SIMPLE_FRAME_LIST if keyword == "SimpleFrameList" else CALCULATED_FRAME_LIST
        key = encode_element(tag, b"UL", struct.pack(f"<{len(vals)}I", *map(int, vals)), implicit)
    uid = encode_element(0x00081167, b"UI", _text(source_uid, b"UI"), implicit)
    _append_item(ds, 0x00081164, key + uid)  # Multi-frame Source SOP Instance UID


@functools.cache
def _equipment_parts(implicit: bool) -> tuple[bytes, bytes]:
    """The constant elements of our Contributing Equipment item: those before Contribution
    DateTime, and those after it (Purpose of Reference is PS3.16 CID 7005)."""
    def elements(*specs):
        return b"".join(encode_element(tag, vr, _text(value, vr), implicit)
                        for tag, vr, value in specs)

    code = elements((0x00080100, b"SH", _PURPOSE[0]), (0x00080102, b"SH", _PURPOSE[1]),
                    (0x00080104, b"LO", _PURPOSE[2]))
    before = elements((0x00080070, b"LO", "dicomaccel"),  # Manufacturer
                      (0x00081090, b"LO", "dicomaccel"),  # Manufacturer's Model Name
                      (0x00181020, b"LO", __version__))  # Software Versions
    after = elements((0x0018A003, b"ST", "Frames extracted (PS3.4 Annex Y)"))
    # Purpose of Reference Code Sequence
    after += encode_element(0x0040A170, b"SQ", encode_item(code), implicit)
    return before, after


def _add_contributing_equipment(ds: Dataset, now: datetime) -> None:
    implicit = ds.original_encoding[0]
    before, after = _equipment_parts(implicit)
    stamp = now.strftime("%Y%m%d%H%M%S.%f") + now.strftime("%z")
    contribution = encode_element(0x0018A002, b"DT", _text(stamp, b"DT"), implicit)
    _append_item(ds, 0x0018A001, before + contribution + after)


# --- encoding ------------------------------------------------------------------------------


def _ov(tag: int, value: bytes) -> DataElement:
    return DataElement(tag, "OV", value)


def _text(value: str, vr: bytes) -> bytes:
    # PS3.5 6.2: even length, UI padded with NUL, other string VRs with a space. Our values
    # are ASCII, which every Specific Character Set keeps as is (PS3.5 6.1.2.5.3).
    raw = value.encode("ascii")
    if len(raw) % 2:
        raw += b"\0" if vr == b"UI" else b" "
    return raw


def _put(ds: Dataset, tag: int, vr: bytes, value: str | bytes) -> None:
    """Set ``tag`` to ``value`` (text, or bytes already encoded), stored as a raw element:
    _encode copies it, pydicom decodes it only if it is read."""
    implicit = ds.original_encoding[0]
    if isinstance(value, str):
        value = _text(value, vr)
    ds[tag] = RawDataElement(Tag(tag), None if implicit else vr.decode(), len(value), value, 0,
                             implicit, True)


def _append_item(ds: Dataset, tag: int, item: bytes) -> None:
    """Set sequence ``tag`` to its source items (if any) followed by ``item`` (encoded)."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = ds.original_encoding[0]
    if tag in ds:  # decoded by _strip
        encodings = convert_encodings(ds.get("SpecificCharacterSet", default_encoding))
        for source_item in ds[tag].value or ():
            write_sequence_item(fp, source_item, encodings)
    _put(ds, tag, b"SQ", fp.getvalue() + encode_item(item))


def _encode(ds: Dataset, ts: str) -> bytes:
    """The data set in ``ts`` (little endian), in tag order (PS3.5 7.1).

    A raw element (never decoded, or set by _put) is its bytes behind a header built here,
    as pydicom's writer would do minus its per-element cost; the elements that were
    decoded go through pydicom's writer.
    """
    implicit = ts == IMPLICIT_VR_LE
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    write = fp.write
    charset = None
    # Dataset.items() gives the elements as stored, raw ones not decoded.
    for tag, elem in sorted(ds.items()):
        if tag & 0xFFFF == 0 and tag > 0x0006FFFF:
            continue  # Group Length is retired (PS3.5 7.2) and would no longer be right
        value = elem.value
        if elem.is_raw and type(value) is bytes and elem.length != UNDEFINED_LENGTH:
            vr = None if implicit else elem.VR.encode()
            if implicit or vr in LONG_VRS or len(value) <= MAX_SHORT_LENGTH:
                write(encode_header(tag, vr, len(value), implicit))
                write(value)
                continue
            # else too long for a 16-bit length: pydicom re-encodes it as UN (PS3.5 6.2.2)
        if charset is None:
            charset = ds.get("SpecificCharacterSet", default_encoding)
        write_data_element(fp, elem, charset)
    return fp.getvalue()


def _pixel_header(pixel: _Pixel, ts: str) -> bytes:
    length = UNDEFINED_LENGTH if pixel.encapsulated else pixel.length
    return encode_header(pixel.tag, pixel.vr, length, ts == IMPLICIT_VR_LE)
