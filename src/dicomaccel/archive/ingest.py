"""Ingest: scan a PS3.10 file's header, validate it and build its frame index.

The scanner walks the File Meta group and the top-level data set element by element with
:func:`dicomaccel.elements.read_header` on the caller's buffer (bytes or an mmap). It never
builds a data set: values it does not need are jumped over, sequences are skipped (a defined
length is one jump; an undefined length is walked item by item without materialising
anything), and it stops at the Pixel Data header. The pixel value is then handed to the
kernels (``dicomaccel.frames``, ``dicomaccel.encaps``), which return offsets, so retrieval
never re-parses the data set.

Every failure is a :class:`StoreFailure` carrying the STOW-RS Failure Reason
(PS3.18 Annex I.2) and a comment that is safe to send to the peer.
"""

from __future__ import annotations

import re
import struct
import zlib
from array import array
from dataclasses import MISSING, dataclass, field, fields

from ..elements import (
    U16BE,
    U16LE,
    UNDEFINED_LENGTH,
    PixelDataHeader,
    TruncatedElement,
    read_header,
)
from .. import frames
from ..errors import ParseError
from ..policy import iod
from ..status import FailureReason
from ..syntaxes import (
    DEFLATED,
    DOUBLE_PIXEL_DATA,
    ENCAPSULATED,
    EXPLICIT_VR_BE,
    EXTENDED_OFFSET_TABLE,
    EXTENDED_OFFSET_TABLE_LENGTHS,
    FLOAT_PIXEL_DATA,
    FRAME_ADDRESSABLE,
    IMPLICIT_VR_LE,
    NATIVE,
    is_valid_uid,
)
from ..walk import walk

__all__ = [
    "StoreFailure",
    "FrameIndex",
    "Header",
    "scan",
    "scan_head",
    "build_frame_index",
    "is_valid_uid",
    "identify",
    "QUERY_KEYS",
    "filled",
    "fillable",
]


class StoreFailure(Exception):
    """An instance was not stored.

    Parameters
    ----------
    status : int
        A :class:`~dicomaccel.status.FailureReason` value.
    comment : str
        Human-readable reason, safe to send to the peer (no paths, no host details).
    sop_class_uid, sop_instance_uid : str or None
        The instance's UIDs when they were read (and are syntactically valid UIDs).
    problems : tuple of dicomaccel.policy.iod.Problem
        For A900 from IOD validation: the attributes that do not match.
    """

    def __init__(
        self,
        status: int,
        comment: str,
        sop_class_uid: str | None = None,
        sop_instance_uid: str | None = None,
        problems: tuple = (),
    ) -> None:
        super().__init__(f"{status:04X}: {comment}")
        self.status = int(status)
        self.comment = comment
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid
        self.problems = problems


def identify(head) -> tuple[str | None, str | None]:
    """(SOP Class UID, SOP Instance UID) read from the first bytes of a PS3.10 file, each None
    where it cannot be read or is not a valid UID: what a failure report names when the
    instance failed for another reason (out of space, I/O) after its header arrived."""
    try:
        h = scan(head)
        found = (h.sop_class_uid or h.media_sop_class_uid, h.sop_instance_uid or h.media_sop_instance_uid)
    except StoreFailure as partial:  # a prefix: usually "truncated", with what was seen
        found = (partial.sop_class_uid, partial.sop_instance_uid)
    return tuple(u if is_valid_uid(u) else None for u in found)


class _Truncated(StoreFailure):
    """The buffer ended inside an element; a deflated scan inflates more and retries."""


# --- Transfer syntaxes (PS3.5 §10, Annex A) ----------------------------------------------
# SMPTE ST 2110 (1.2.840.10008.1.2.7.x) is deliberately absent: the frame layout we would
# index for it is unverified, so such instances are refused with C122 rather than stored
# unindexed.
_KNOWN_SYNTAXES = NATIVE | DEFLATED | ENCAPSULATED

# --- Value checks (PS3.5 Table 6.2-1) -------------------------------------------------------
_IS_VALUE = re.compile(r"[+-]?[0-9]{1,12}")
_CS_VALUE = re.compile(r"[A-Z0-9 _]{0,16}")
# A deflated data set (PS3.5 A.5) inflating beyond this is refused as a decompression bomb;
# what follows the Pixel Data header is inflated a MiB at a time and dropped.
MAX_INFLATED_SIZE = 1 << 30
# The header scan keeps the inflated data set up to the Pixel Data header in memory (for a
# data set without Pixel Data, all of it): more than this is refused, so a deflated instance
# costs at most this much memory, whatever it inflates to.
MAX_INFLATED_HEADER = 64 << 20


# Encapsulated Pixel Data (PS3.5 A.4) may split a frame into any number of fragments, empty
# ones included; the frame index costs 24 bytes per fragment. More fragments than one per
# MIN_BYTES_PER_FRAGMENT bytes of the value (or FRAGMENTS_PER_FRAME per frame, for tiny
# values) is refused: real encoders write one fragment per frame or fragments of kilobytes.
MIN_BYTES_PER_FRAGMENT = 64
FRAGMENTS_PER_FRAME = 16

# The data set attributes the index and the frame index need.
_WANTED = frozenset((
    0x00080005,  # Specific Character Set
    0x00080016, 0x00080018,  # SOP Class / Instance UID
    0x00100010, 0x00100020,  # Patient's Name, Patient ID
    0x0020000D, 0x0020000E, 0x00200013,  # Study / Series UID, Instance Number
    0x00280002, 0x00280004, 0x00280006, 0x00280008,  # SPP, Photometric, Planar, Frames
    0x00280010, 0x00280011, 0x00280100,  # Rows, Columns, Bits Allocated
    EXTENDED_OFFSET_TABLE, EXTENDED_OFFSET_TABLE_LENGTHS,
))

ALTERNATE_REPRESENTATION_SEQUENCE = 0x00083001

# The other query keys the index holds (QIDO-RS, PS3.18 Table 10.6.1-5; C-FIND, PS3.4 Tables
# C.6-1, C.6-2, C.6-5), decoded from the scan's offsets at no more cost than a slice each:
# (Header / InstanceRecord field, tag, VR). Patient's Name and ID, the UIDs and Instance
# Number are read above with their own checks. DA and TM values are kept in their current
# form (the ACR-NEMA "." and ":" separators of PS3.5 Table 6.2-1 dropped) so a string
# comparison orders them; a value that cannot be decoded is stored empty, never refused.
QUERY_KEYS = (
    ("specific_character_set", 0x00080005, "CS"),
    ("study_date", 0x00080020, "DA"),
    ("study_time", 0x00080030, "TM"),
    ("accession_number", 0x00080050, "SH"),
    ("modality", 0x00080060, "CS"),
    ("referring_physician_name", 0x00080090, "PN"),
    ("study_description", 0x00081030, "LO"),
    ("series_description", 0x0008103E, "LO"),
    ("patient_birth_date", 0x00100030, "DA"),
    ("patient_sex", 0x00100040, "CS"),
    ("study_id", 0x00200010, "SH"),
    ("series_number", 0x00200011, "IS"),
    ("performed_procedure_step_start_date", 0x00400244, "DA"),
    ("performed_procedure_step_start_time", 0x00400245, "TM"),
)



@dataclass(frozen=True)
class FrameIndex:
    """Where every frame of an instance lies in its stored file (absolute byte offsets).

    Native Pixel Data keeps the geometry and the pixel value's position; frame ``k`` spans
    bits ``[k * frame_bits, (k + 1) * frame_bits)`` of the value (PS3.5 §8.1.1: frames are
    concatenated with no padding, bit-packed when Bits Allocated is 1). Encapsulated Pixel
    Data keeps every fragment's value range and, per frame, the slice of fragments that
    belongs to it (PS3.5 A.4), plus whether the file carried a Basic / Extended Offset Table.
    The arrays are ``array('q')``; :meth:`to_blob` stores them compactly.
    """

    encapsulated: bool
    number_of_frames: int
    pixel_value_offset: int
    pixel_length: int  # -1 for undefined length (encapsulated)
    # Native geometry (zero / "" when encapsulated).
    rows: int = 0
    columns: int = 0
    samples_per_pixel: int = 0
    bits_allocated: int = 0
    photometric_interpretation: str = ""
    frame_bits: int = 0
    # Encapsulated: fragment value ranges, and frame k -> fragments frame_fragments[k:k+2].
    fragment_offsets: array = field(default_factory=lambda: array("q"), hash=False)
    fragment_lengths: array = field(default_factory=lambda: array("q"), hash=False)
    frame_fragments: array = field(default_factory=lambda: array("q"), hash=False)
    has_basic_offset_table: bool = False
    has_extended_offset_table: bool = False

    @property
    def byte_aligned(self) -> bool:
        """True if every frame starts on a byte boundary (always, unless Bits Allocated is 1)."""
        return self.encapsulated or self.frame_bits % 8 == 0

    def frame_ranges(self, k: int) -> list[tuple[int, int]]:
        """Absolute ``(start, end)`` byte ranges in the file that hold frame ``k`` (0-based).

        Native: one range. When frames are not byte aligned (Bits Allocated 1), the range is
        the bytes covering the frame's bits; the first bit is ``(k * frame_bits) % 8`` and the
        reader shifts (``native_frames(buffer).frame(k)`` does it). Encapsulated: the value
        ranges of the frame's fragments, in order; concatenated they are the frame's
        codestream (including any trailing pad byte of the last fragment).
        """
        n = self.number_of_frames
        if not 0 <= k < n:
            raise IndexError(f"frame {k} out of range (0..{n - 1})")
        if self.encapsulated:
            offs, lens = self.fragment_offsets, self.fragment_lengths
            return [
                (offs[i], offs[i] + lens[i])
                for i in range(self.frame_fragments[k], self.frame_fragments[k + 1])
            ]
        start_bit = k * self.frame_bits
        end_bit = start_bit + self.frame_bits
        base = self.pixel_value_offset
        return [(base + start_bit // 8, base + (end_bit + 7) // 8)]

    @classmethod
    def native(
        cls,
        *,
        rows: int,
        columns: int,
        samples_per_pixel: int,
        bits_allocated: int,
        number_of_frames: int,
        photometric_interpretation: str,
        pixel_value_offset: int,
        pixel_length: int,
    ) -> "FrameIndex":
        """The index of native Pixel Data with this geometry (the one place it is built).

        Raises
        ------
        ValueError
            If the geometry is invalid (see :func:`dicomaccel.frames.frame_bits`). Whether
            the value holds the frames is checked apart: :meth:`native_frames` on the buffer,
            or :func:`dicomaccel.frames.check_frames_fit`.
        """
        return cls(
            encapsulated=False,
            number_of_frames=number_of_frames,
            pixel_value_offset=pixel_value_offset,
            pixel_length=pixel_length,
            rows=rows,
            columns=columns,
            samples_per_pixel=samples_per_pixel,
            bits_allocated=bits_allocated,
            photometric_interpretation=photometric_interpretation,
            frame_bits=frames.frame_bits(
                rows, columns, samples_per_pixel, bits_allocated, photometric_interpretation
            ),
        )

    def native_frames(self, buffer):
        """A :class:`dicomaccel.frames.NativeFrames` over ``buffer`` (the whole stored file).

        Raises ParseError if the Pixel Data value does not fit ``buffer`` or its frames.
        """
        if self.encapsulated:
            raise TypeError("encapsulated Pixel Data has no native frame geometry")
        return frames.NativeFrames(
            buffer,
            rows=self.rows,
            columns=self.columns,
            samples_per_pixel=self.samples_per_pixel,
            bits_allocated=self.bits_allocated,
            number_of_frames=self.number_of_frames,
            photometric_interpretation=self.photometric_interpretation,
            offset=self.pixel_value_offset,
            length=self.pixel_length,
        )

    # Blob layout (little endian): magic "DAFI", version, kind, flags, photometric length,
    # then 8 int64 fields, the photometric bytes, and for encapsulated the three arrays.
    _HEAD = struct.Struct("<4sBBBB8q")

    def to_blob(self) -> bytes:
        """Serialise for the index (one BLOB column)."""
        pi = self.photometric_interpretation.encode("ascii")
        flags = self.has_basic_offset_table | (self.has_extended_offset_table << 1)
        head = self._HEAD.pack(
            b"DAFI", 1, 2 if self.encapsulated else 1, flags, len(pi),
            self.number_of_frames, self.pixel_value_offset, self.pixel_length, self.rows,
            self.columns, self.samples_per_pixel, self.bits_allocated, self.frame_bits,
        )
        parts = [head, pi]
        if self.encapsulated:
            parts.append(_le_bytes(array("q", [len(self.fragment_offsets)])))
            for arr in (self.fragment_offsets, self.fragment_lengths, self.frame_fragments):
                parts.append(_le_bytes(arr))
        return b"".join(parts)

    @classmethod
    def from_blob(cls, blob: bytes) -> "FrameIndex":
        """Inverse of :meth:`to_blob`."""
        h = cls._HEAD
        magic, version, kind, flags, pil, nf, pvo, plen, rows, cols, spp, ba, fbits = (
            h.unpack_from(blob, 0)
        )
        if magic != b"DAFI" or version != 1 or kind not in (1, 2):
            raise ValueError("not a dicomaccel frame index blob")
        pos = h.size
        pi = bytes(blob[pos:pos + pil]).decode("ascii")
        pos += pil
        extra = {}
        if kind == 2:
            nfrag = _le_array(blob, pos, 1)[0]
            pos += 8
            for name, count in (
                ("fragment_offsets", nfrag), ("fragment_lengths", nfrag),
                ("frame_fragments", nf + 1),
            ):
                extra[name] = _le_array(blob, pos, count)
                pos += 8 * count
        return cls(
            encapsulated=kind == 2, number_of_frames=nf, pixel_value_offset=pvo,
            pixel_length=plen, rows=rows, columns=cols, samples_per_pixel=spp,
            bits_allocated=ba, photometric_interpretation=pi, frame_bits=fbits,
            has_basic_offset_table=bool(flags & 1), has_extended_offset_table=bool(flags & 2),
            **extra,
        )


def _le_bytes(arr: array) -> bytes:
    if struct.pack("=H", 1) == b"\x01\x00":
        return arr.tobytes()
    swapped = array("q", arr)
    swapped.byteswap()
    return swapped.tobytes()


def _le_array(blob, pos: int, count: int) -> array:
    arr = array("q")
    arr.frombytes(bytes(blob[pos:pos + 8 * count]))
    if struct.pack("=H", 1) != b"\x01\x00":
        arr.byteswap()
    return arr


@dataclass(frozen=True, kw_only=True)
class QueryKeyValues:
    """The values of :data:`QUERY_KEYS` ("" or None when absent): found by the scan
    (:class:`Header`) and kept in the index (``InstanceRecord``). Keyword-only, so both can add
    them after fields of their own."""

    specific_character_set: str = ""
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    modality: str = ""
    referring_physician_name: str = ""
    study_description: str = ""
    series_description: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_id: str = ""
    series_number: int | None = None
    performed_procedure_step_start_date: str = ""
    performed_procedure_step_start_time: str = ""


# Every query key's value when the data set does not have it.
_QUERY_DEFAULTS = {f.name: f.default for f in fields(QueryKeyValues)}


def filled(cls, values: dict):
    """An instance of the frozen dataclass ``cls`` holding ``values``, which name every one of
    its fields, made past the generated ``__init__``, whose ``object.__setattr__`` per field is
    most of what building a 40-field :class:`Header` or ``InstanceRecord`` costs when timed
    alone (5 us against 0.3 on the development machine; in a store's pipeline the difference
    was below the noise). ``cls`` must pass :func:`fillable`; tests hold the fields of what
    each caller makes complete."""
    made = object.__new__(cls)
    made.__dict__.update(values)
    return made


def fillable(cls):
    """Class decorator for what :func:`filled` makes: a frozen dataclass whose ``__init__`` does
    nothing but set its fields (no ``__post_init__``, no ``default_factory``: a made object
    would miss what they do)."""
    if hasattr(cls, "__post_init__") or any(f.default_factory is not MISSING for f in fields(cls)):
        raise TypeError(f"{cls.__name__}: filled() would skip its __post_init__ or default factories")
    return cls


@fillable
@dataclass(frozen=True)
class Header(QueryKeyValues):
    """What the scan of one PS3.10 file found. Offsets are absolute in the scanned buffer.

    For the deflated transfer syntaxes the data set offsets refer to the inflated stream, so
    ``pixel_offset`` and ``pixel_value_offset`` are -1 (not addressable in the stored file)
    while ``pixel_tag`` and ``pixel_length`` still say what the Pixel Data was.
    """

    media_sop_class_uid: str
    media_sop_instance_uid: str
    transfer_syntax_uid: str
    dataset_offset: int
    sop_class_uid: str | None
    sop_instance_uid: str | None
    patient_id: str
    patient_name: str
    study_uid: str | None
    series_uid: str | None
    instance_number: int | None
    samples_per_pixel: int
    photometric_interpretation: str
    planar_configuration: int
    number_of_frames: int
    rows: int | None
    columns: int | None
    bits_allocated: int | None
    pixel_tag: int  # 0 if no Pixel Data
    pixel_offset: int
    pixel_value_offset: int
    pixel_length: int
    extended_offsets: tuple[int, int] | None  # (value offset, length) of (7FE0,0001)
    extended_lengths: tuple[int, int] | None  # (value offset, length) of (7FE0,0002)
    has_alternates: bool = False  # a top-level Alternate Representation Sequence (0008,3001)
    problems: tuple = ()  # dicomaccel.policy.iod.Problem items, when the scan validated the IOD


class _Scan:
    """One scan's state: the buffer, its end and the UIDs seen so far (for failure reports)."""

    __slots__ = ("buf", "end", "partial", "media_class", "media_instance", "sop_class",
                 "sop_instance")

    def __init__(self, buf, end: int, partial: bool = False) -> None:
        self.buf = buf
        self.end = end
        self.partial = partial  # buf holds the file's first `end` bytes, not all of it
        self.media_class = self.media_instance = self.sop_class = self.sop_instance = None

    def failure(self, status: int, comment: str, cls=StoreFailure) -> StoreFailure:
        sop_class = self.sop_class or self.media_class
        sop_instance = self.sop_instance or self.media_instance
        return cls(
            status,
            comment,
            sop_class if is_valid_uid(sop_class) else None,
            sop_instance if is_valid_uid(sop_instance) else None,
        )

    def truncated(self, what: str, offset: int) -> StoreFailure:
        return self.failure(
            FailureReason.CANNOT_UNDERSTAND,
            f"truncated: {what} at byte {offset} runs past the end of the data ({self.end} bytes)",
            _Truncated,
        )

    def header_failure(self, exc: ParseError) -> StoreFailure:
        """The failure for an element header :func:`~dicomaccel.elements.read_header` refused."""
        if isinstance(exc, TruncatedElement):
            return self.truncated(exc.what, exc.offset)
        return self.failure(FailureReason.CANNOT_UNDERSTAND, f"{exc.message} at byte {exc.offset}")


def _text(raw) -> str:
    return bytes(raw).decode("latin-1")


def _uid(raw) -> str:
    # UI values are padded with a trailing NUL (PS3.5 §6.2); some writers pad with a space.
    return bytes(raw).rstrip(b"\x00 ").decode("latin-1")


def _decode_pn_lo(raw, charsets: list[str] | None, is_pn: bool) -> str:
    raw = bytes(raw).rstrip(b"\x00 ")
    if not charsets or charsets in (["ISO_IR 100"], ["ISO_IR 6"], [""]):
        return raw.decode("latin-1")
    if charsets == ["ISO_IR 192"]:
        return raw.decode("utf-8", "replace")
    from pydicom.charset import convert_encodings, decode_bytes

    # PN components reset ISO 2022 escapes at '^' and '=' (PS3.5 §6.1.2.5.3).
    return decode_bytes(raw, convert_encodings(charsets), {0x5E, 0x3D} if is_pn else set())


def _scan_meta(s: _Scan) -> tuple[dict, int]:
    """File Meta Information: always Explicit VR Little Endian (PS3.10 §7.1)."""
    buf, end = s.buf, s.end
    if end < 132:
        if s.partial:
            raise s.truncated("PS3.10 preamble and prefix", 0)
        raise s.failure(
            FailureReason.CANNOT_UNDERSTAND,
            f"not a PS3.10 file: {end} bytes is shorter than preamble and prefix (132)",
        )
    if bytes(buf[128:132]) != b"DICM":
        raise s.failure(
            FailureReason.CANNOT_UNDERSTAND,
            "not a PS3.10 file: no 'DICM' prefix at byte 128",
        )
    pos = 132
    meta: dict[int, str] = {}
    while end - pos >= 4 and U16LE.unpack_from(buf, pos)[0] == 0x0002:
        try:
            tag, vr, ln, vpos = read_header(buf, pos, end, True, True)
        except ParseError as exc:
            raise s.header_failure(exc) from None
        if ln == UNDEFINED_LENGTH or ln > end - vpos:
            raise s.truncated(f"File Meta element ({tag >> 16:04X},{tag & 0xFFFF:04X})", pos)
        if tag in (0x00020002, 0x00020003, 0x00020010):
            meta[tag] = _uid(buf[vpos:vpos + ln])
        pos = vpos + ln
    if s.partial and end - pos < 4:
        # The group may go on past what we have.
        raise s.truncated("File Meta Information", pos)
    if pos == 132:
        raise s.failure(
            FailureReason.CANNOT_UNDERSTAND,
            "not a PS3.10 file: no File Meta Information (group 0002) after 'DICM'",
        )
    s.media_class = meta.get(0x00020002)
    s.media_instance = meta.get(0x00020003)
    for tag, name in (
        (0x00020010, "Transfer Syntax UID"),
        (0x00020002, "Media Storage SOP Class UID"),
        (0x00020003, "Media Storage SOP Instance UID"),
    ):
        if not meta.get(tag):
            raise s.failure(
                FailureReason.CANNOT_UNDERSTAND,
                f"File Meta Information lacks ({tag >> 16:04X},{tag & 0xFFFF:04X}) {name}",
            )
    return meta, pos


def _scan_dataset(s: _Scan, pos: int, explicit: bool,
                  little: bool) -> tuple[dict, PixelDataHeader]:
    """Every top-level element up to the Pixel Data header, as tag -> (value offset, length):
    the walk kernel (:func:`dicomaccel.walk.walk`). The SOP Class and Instance UIDs met on the
    way name the instance in a failure report, a failure of the walk's own included."""
    found: dict[int, tuple[int, int]] = {}
    try:
        pixel = walk(s.buf, pos, s.end, explicit, little, _WANTED, found)
    except ParseError as exc:
        _note_uids(s, found)
        raise s.header_failure(exc) from None
    _note_uids(s, found)
    return found, PixelDataHeader(*pixel)


def _note_uids(s: _Scan, found: dict) -> None:
    for tag, name in ((0x00080016, "sop_class"), (0x00080018, "sop_instance")):
        if tag in found:
            vpos, ln = found[tag]
            setattr(s, name, _uid(s.buf[vpos:vpos + ln]))


def scan(buffer, size: int | None = None, *, validate: bool = False) -> Header:
    """Scan a PS3.10 file held in ``buffer`` (bytes-like or mmap) and validate its structure.

    Parameters
    ----------
    buffer : bytes-like
        The whole file.
    size : int, optional
        Number of valid bytes in ``buffer`` (default: ``len(buffer)``).
    validate : bool
        Also check the top-level data set against its IOD's tables
        (:func:`dicomaccel.policy.iod.validate`); what is wrong goes to ``Header.problems``.

    Returns
    -------
    Header

    Raises
    ------
    StoreFailure
        C000 if the file is not PS3.10, is truncated or cannot be parsed up to and including
        the Pixel Data header (or a Pixel Data value runs past the end of the file);
        C122 if the Transfer Syntax UID is not one we support.
    """
    end = len(buffer) if size is None else size
    return _scan(buffer, end, end, validate)


def scan_head(head, size: int, *, validate: bool = False) -> Header | None:
    """:func:`scan` of a file of ``size`` bytes from its first bytes ``head``, when they suffice.

    The scan reads nothing past the Pixel Data header, so a file's first bytes serve when that
    header (without Pixel Data: the whole data set) lies inside them; the file is then neither
    mapped nor read again. Returns None when they do not suffice: an element runs past
    ``head``, the data set goes on past it without Pixel Data, or the data set is deflated (its
    header is inflated from the whole file). Any other failure is the one :func:`scan` of the
    whole file raises, from the same bytes.
    """
    available = min(len(head), size)
    if available == size:
        return scan(head, size, validate=validate)
    try:
        return _scan(head, available, size, validate)
    except _Truncated:
        return None


def _scan(buffer, available: int, end: int, validate: bool) -> Header | None:
    """Scan ``buffer[:available]``, the first bytes of a file of ``end`` bytes; None if the
    scan needs more of it (only when ``available < end``)."""
    s = _Scan(buffer, available, available < end)
    meta, ds_pos = _scan_meta(s)
    ts = meta[0x00020010]
    if ts not in _KNOWN_SYNTAXES:
        raise s.failure(
            FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED,
            f"transfer syntax {ts[:64]!r} is not supported",
        )
    if ts in DEFLATED:
        return _scan_deflated(s, meta, ds_pos, validate) if available == end else None
    explicit = ts != IMPLICIT_VR_LE
    little = ts != EXPLICIT_VR_BE
    found, pixel = _scan_dataset(s, ds_pos, explicit, little)
    tag, ppos, vpos, plen = pixel
    if not tag and available < end:
        return None  # the data set goes on past what we have
    if tag:
        if plen == -1:
            if ts not in ENCAPSULATED or not explicit:
                raise s.failure(
                    FailureReason.CANNOT_UNDERSTAND,
                    f"Pixel Data at byte {ppos} has undefined length but transfer syntax "
                    f"{ts} is not encapsulated",
                )
        elif ts in ENCAPSULATED:
            raise s.failure(
                FailureReason.CANNOT_UNDERSTAND,
                f"Pixel Data at byte {ppos} has a defined length but transfer syntax {ts} "
                "requires encapsulation (PS3.5 A.4)",
            )
        elif plen > end - vpos:
            raise s.truncated("Pixel Data value", vpos)
    return _make_header(s, meta, ds_pos, found, pixel, little, validate)


def _scan_deflated(s: _Scan, meta: dict, ds_pos: int, validate: bool) -> Header:
    """Inflate just enough of a deflated data set to scan its header (PS3.5 A.5).

    The inflated data set is scanned from a growing prefix (steps doubling up to 8 MiB), so
    memory is bounded by the header (at most :data:`MAX_INFLATED_HEADER`) plus one step, not
    by the pixel data; the rest is inflated a MiB at a time and discarded, only to check that
    the Pixel Data value fits, that the whole stays under :data:`MAX_INFLATED_SIZE` and that
    the deflate stream is intact.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending = memoryview(s.buf)[ds_pos:s.end]
    inflated = bytearray()
    step = 1 << 16
    try:
        while True:
            # Never more than one byte past the header bound: the bound is what is checked.
            room = MAX_INFLATED_HEADER + 1 - len(inflated)
            inflated += inflater.decompress(pending, min(step, room))
            pending = inflater.unconsumed_tail
            # After the end of the deflate stream, trailing bytes go to unused_data and are
            # ignored; unconsumed_tail may still be set, so check eof too.
            finished = not pending or inflater.eof
            if finished:
                inflated += inflater.flush(room)
            _check_inflated(s, len(inflated))
            sub = _Scan(inflated, min(len(inflated), MAX_INFLATED_HEADER))
            sub.media_class, sub.media_instance = s.media_class, s.media_instance
            try:
                found, pixel = _scan_dataset(sub, 0, True, True)
            except _Truncated:
                if finished and len(inflated) <= MAX_INFLATED_HEADER:
                    raise
            else:
                if pixel.tag or finished:
                    break
            if len(inflated) > MAX_INFLATED_HEADER:
                raise s.failure(
                    FailureReason.CANNOT_UNDERSTAND,
                    f"deflated data set holds more than {MAX_INFLATED_HEADER} bytes before its "
                    "Pixel Data (or has none and inflates beyond that)",
                )
            step = min(2 * step, 8 << 20)  # small steps: a large one is a second copy in memory
        total = len(inflated)
        while pending and not inflater.eof:
            total += len(inflater.decompress(pending, 1 << 20))
            pending = inflater.unconsumed_tail
            _check_inflated(s, total)
        total += len(inflater.flush(1 << 20))
        _check_inflated(s, total)
    except zlib.error as exc:
        raise s.failure(
            FailureReason.CANNOT_UNDERSTAND,
            f"deflated data set starting at byte {ds_pos} does not inflate: {exc}",
        ) from None
    tag, _, vpos, plen = pixel
    if tag and (plen == -1 or plen > total - vpos):
        raise sub.failure(
            FailureReason.CANNOT_UNDERSTAND,
            "Pixel Data value in the deflated data set runs past its end",
        )
    # Offsets in the inflated stream address nothing in the stored file.
    return _make_header(sub, meta, ds_pos, found, pixel._replace(offset=-1, value_offset=-1), True,
                        validate)


def _check_inflated(s: _Scan, size: int) -> None:
    if size > MAX_INFLATED_SIZE:
        raise s.failure(
            FailureReason.CANNOT_UNDERSTAND,
            f"deflated data set inflates to more than {MAX_INFLATED_SIZE} bytes",
        )


def _make_header(s: _Scan, meta, ds_pos, found, pixel: PixelDataHeader, little,
                 validate: bool) -> Header:
    buf = s.buf
    u16 = U16LE if little else U16BE

    def raw(tag):
        vpos, ln = found[tag]
        return buf[vpos:vpos + ln]

    def us(tag):
        if tag not in found or found[tag][1] < 2:
            return None
        return u16.unpack_from(buf, found[tag][0])[0]

    def text(tag):
        return _text(raw(tag)).strip(" \x00") if tag in found else ""

    charsets = None
    if 0x00080005 in found:
        charsets = [c.strip() for c in _text(raw(0x00080005)).split("\\")]
    try:
        patient_name = (
            _decode_pn_lo(raw(0x00100010), charsets, True) if 0x00100010 in found else ""
        )
        patient_id = _decode_pn_lo(raw(0x00100020), charsets, False).strip() \
            if 0x00100020 in found else ""
    except (UnicodeDecodeError, LookupError, ValueError) as exc:  # ValueError: a NUL in a charset name
        raise s.failure(
            FailureReason.CANNOT_UNDERSTAND,
            f"Patient's Name / Patient ID cannot be decoded with Specific Character Set "
            f"{charsets}: {exc.__class__.__name__}",
        ) from None

    def integer_string(tag, name):
        value = text(tag)
        if not value:
            return None
        first = value.split("\\")[0].strip(" ")
        # IS (PS3.5 Table 6.2-1): at most 12 characters of an optional sign and digits, in
        # the range -2^31 .. 2^31-1. int() alone would also take "1_0" or 10**40.
        if not _IS_VALUE.fullmatch(first) or not -(2**31) <= int(first) < 2**31:
            raise s.failure(
                FailureReason.CANNOT_UNDERSTAND,
                f"{name} ({tag >> 16:04X},{tag & 0xFFFF:04X}) is not an integer: {value[:16]!r}",
            )
        return int(first)

    photometric = text(0x00280004)
    # CS: at most 16 characters of upper case, digits, space and underscore (PS3.5 6.2).
    if not _CS_VALUE.fullmatch(photometric):
        raise s.failure(FailureReason.CANNOT_UNDERSTAND,
                        f"Photometric Interpretation (0028,0004) is not a code string: {photometric[:16]!r}")

    frames = integer_string(0x00280008, "Number of Frames")
    sop_class_uid = _uid(raw(0x00080016)) if 0x00080016 in found else None
    problems = ()
    if validate and sop_class_uid:
        problems = tuple(iod.validate(sop_class_uid, {t: ln for t, (_, ln) in found.items()}, text))
    return filled(Header, dict(
        media_sop_class_uid=meta[0x00020002],
        media_sop_instance_uid=meta[0x00020003],
        transfer_syntax_uid=meta[0x00020010],
        dataset_offset=ds_pos,
        sop_class_uid=sop_class_uid,
        sop_instance_uid=_uid(raw(0x00080018)) if 0x00080018 in found else None,
        patient_id=patient_id,
        patient_name=patient_name,
        study_uid=_uid(raw(0x0020000D)) if 0x0020000D in found else None,
        series_uid=_uid(raw(0x0020000E)) if 0x0020000E in found else None,
        instance_number=integer_string(0x00200013, "Instance Number"),
        samples_per_pixel=us(0x00280002) or 1,
        photometric_interpretation=photometric,
        planar_configuration=us(0x00280006) or 0,
        number_of_frames=1 if frames is None else frames,
        rows=us(0x00280010),
        columns=us(0x00280011),
        bits_allocated=us(0x00280100),
        pixel_tag=pixel.tag,
        pixel_offset=pixel.offset,
        pixel_value_offset=pixel.value_offset,
        pixel_length=pixel.length,
        extended_offsets=found.get(EXTENDED_OFFSET_TABLE),
        extended_lengths=found.get(EXTENDED_OFFSET_TABLE_LENGTHS),
        has_alternates=ALTERNATE_REPRESENTATION_SEQUENCE in found,
        problems=problems,
        **_query_keys(buf, found, charsets),
    ))


def _query_keys(buf, found: dict, charsets: list[str] | None) -> dict:
    """Every :data:`QUERY_KEYS` value: those present in ``found`` decoded, the others their
    defaults."""
    out = dict(_QUERY_DEFAULTS)
    for name, tag, vr in QUERY_KEYS:
        where = found.get(tag)
        if where is None:
            continue
        vpos, ln = where
        raw = bytes(buf[vpos:vpos + ln])
        if vr in ("PN", "LO", "SH"):
            # Text in the Specific Character Set; leading and trailing spaces are not
            # significant (PS3.5 Table 6.2-1).
            try:
                value = _decode_pn_lo(raw, charsets, vr == "PN").strip(" ")
            except (UnicodeDecodeError, LookupError, ValueError):
                value = raw.decode("latin-1").strip(" \x00")
        else:  # CS, DA, TM, IS: the default repertoire
            value = raw.decode("latin-1").strip(" \x00")
            if vr == "DA":
                value = value.replace(".", "")
            elif vr == "TM":
                value = value.replace(":", "")
            elif vr == "IS":
                first = value.split("\\")[0].strip(" ")
                value = int(first) if _IS_VALUE.fullmatch(first) else None
        out[name] = value
    return out


def build_frame_index(buffer, header: Header) -> FrameIndex | None:
    """Compute the frame index of a scanned file with the kernels. ``buffer`` (the whole
    file) is read only for encapsulated Pixel Data; native frames follow from the header.

    Returns None when there is no Pixel Data, when the data set is deflated (the file's
    bytes are compressed, so no frame lies at a fixed file offset) or when the transfer
    syntax does not align fragments to frames (video, JPEG 2000 Part 2) — the encapsulation
    structure of the latter is still validated.

    Raises
    ------
    StoreFailure
        A900 if native Pixel Data lacks its geometry (Rows, Columns, Bits Allocated);
        C000 if the Pixel Data does not fit its geometry or its encapsulation is malformed.
    """
    if not header.pixel_tag or header.transfer_syntax_uid in DEFLATED:
        return None
    nframes = header.number_of_frames
    if nframes < 1:
        raise StoreFailure(
            FailureReason.CANNOT_UNDERSTAND,
            f"Number of Frames is {nframes}; Pixel Data needs at least one frame", *_uids(header),
        )
    try:
        if header.pixel_length != -1:
            return _native_index(header)
        return _encapsulated_index(buffer, header)
    except ValueError as exc:  # ParseError, or geometry the kernels reject (PS3.5 §8.1.1)
        problem = str(exc)
    # Raised outside the handler so the kernel's traceback (which holds views of the buffer,
    # possibly an mmap the caller wants to close) is already gone.
    raise StoreFailure(
        FailureReason.CANNOT_UNDERSTAND, f"Pixel Data at byte {header.pixel_offset}: {problem}",
        *_uids(header),
    )


def _uids(header: Header) -> tuple[str | None, str | None]:
    """The instance's UIDs for a failure report: the valid ones only."""
    return tuple(u if is_valid_uid(u) else None for u in (header.sop_class_uid, header.sop_instance_uid))


def _encapsulated_index(buffer, header: Header) -> FrameIndex | None:
    from .. import encaps

    indexable = header.transfer_syntax_uid in FRAME_ADDRESSABLE
    eot = eotl = None
    if indexable and header.extended_offsets and header.extended_lengths:
        (o, n), (lo, ln) = header.extended_offsets, header.extended_lengths
        eot, eotl = bytes(buffer[o:o + n]), bytes(buffer[lo:lo + ln])
    # Not frame-addressable syntaxes are still walked as one frame, to validate the items.
    ef = encaps.EncapsulatedFrames(
        buffer, header.number_of_frames if indexable else 1, offset=header.pixel_value_offset,
        extended_offsets=eot, extended_lengths=eotl,
    )
    offsets, lengths = ef.fragment_offsets, ef.fragment_lengths
    if len(offsets):
        span = offsets[-1] + lengths[-1] - header.pixel_value_offset
        most = max(FRAGMENTS_PER_FRAME * header.number_of_frames, span // MIN_BYTES_PER_FRAGMENT)
        if len(offsets) > most:
            raise StoreFailure(
                FailureReason.CANNOT_UNDERSTAND,
                f"Pixel Data holds {len(offsets)} fragments in {span} bytes: more than {most} "
                f"(at most one per {MIN_BYTES_PER_FRAGMENT} bytes, or {FRAGMENTS_PER_FRAME} per frame)",
                header.sop_class_uid, header.sop_instance_uid,
            )
    if not indexable:
        return None
    return FrameIndex(
        encapsulated=True,
        number_of_frames=header.number_of_frames,
        pixel_value_offset=header.pixel_value_offset,
        pixel_length=-1,
        fragment_offsets=array("q", ef.fragment_offsets),
        fragment_lengths=array("q", ef.fragment_lengths),
        frame_fragments=array("q", ef.frame_fragments),
        has_basic_offset_table=len(ef.basic_offsets) > 0,
        has_extended_offset_table=eot is not None,
    )


def _native_index(header: Header) -> FrameIndex:
    rows, cols, ba = header.rows, header.columns, header.bits_allocated
    if header.pixel_tag == FLOAT_PIXEL_DATA:
        ba = ba or 32  # Float Pixel Data is always 32-bit (PS3.3 C.7.6.24)
    elif header.pixel_tag == DOUBLE_PIXEL_DATA:
        ba = ba or 64
    if not rows or not cols or not ba:
        raise StoreFailure(
            FailureReason.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "Pixel Data present but Rows, Columns or Bits Allocated is missing or zero "
            "(Image Pixel Module, PS3.3 C.7.6.3)", *_uids(header),
        )
    index = FrameIndex.native(
        rows=rows,
        columns=cols,
        samples_per_pixel=header.samples_per_pixel,
        bits_allocated=ba,
        number_of_frames=header.number_of_frames,
        photometric_interpretation=header.photometric_interpretation,
        pixel_value_offset=header.pixel_value_offset,
        pixel_length=header.pixel_length,
    )
    # The scan checked that the value lies inside the file; this, that it holds the frames.
    frames.check_frames_fit(index.frame_bits, index.number_of_frames, index.pixel_length,
                            index.pixel_value_offset)
    return index
