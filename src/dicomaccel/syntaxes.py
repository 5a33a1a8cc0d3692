"""The one table of transfer syntaxes (PS3.5 §10, Annex A), grouped by how their Pixel Data is
laid out; the Pixel Data tags; dicomaccel's own UIDs; what a valid UID looks like.

Element and item header bytes (VRs, lengths, delimiters) belong to :mod:`.elements`.
"""

from __future__ import annotations

import re

from . import __version__

# Our UID root: a UUID-derived UID (PS3.5 §B.2, "2.25." + the UUID as one decimal integer),
# generated once for dicomaccel. Every UID dicomaccel mints hangs below it.
DICOMACCEL_UID_ROOT = "2.25.294668801731823321037626927530289830545"
IMPLEMENTATION_CLASS_UID = DICOMACCEL_UID_ROOT + ".1"
# PS3.7 D.3.3.2.3: 1-16 characters of the default repertoire.
IMPLEMENTATION_VERSION_NAME = ("DICOMACCEL_" + __version__.replace(".", ""))[:16]

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
NATIVE = frozenset({IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE})
# Whole data set deflated (RFC 1951) after the File Meta group: Deflated Explicit VR LE and the
# two JPIP Referenced Deflate syntaxes (PS3.5 A.5, A.6).
DEFLATED = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.205"})
# Each frame is in its own fragment(s), so frames are addressable (PS3.5 A.4 per-TS rules).
FRAME_ADDRESSABLE = frozenset(
    ["1.2.840.10008.1.2.4." + s for s in ("50", "51", "57", "70", "80", "81", "90", "91")]
    + ["1.2.840.10008.1.2.4." + s for s in ("110", "111", "112", "201", "202", "203")]
    + ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.8.1", "1.2.840.10008.1.2.1.98"]
)
# One bitstream for all frames (MPEG-2, H.264, HEVC) or component collections spanning frames
# (JPEG 2000 Part 2): frames cannot be cut without re-encoding.
WHOLE_STREAM = frozenset(
    ["1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.107",
     "1.2.840.10008.1.2.4.108"]
    + ["1.2.840.10008.1.2.4." + s for s in ("100", "101", "102", "103", "104", "105", "106")]
    + ["1.2.840.10008.1.2.4." + s + ".1" for s in ("100", "101", "102", "103", "104", "105", "106")]
)
# JPIP Referenced (PS3.5 A.6): pixels live at a Pixel Data Provider URL, not in the data set.
REFERENCED = frozenset({"1.2.840.10008.1.2.4.94", "1.2.840.10008.1.2.4.204"})
ENCAPSULATED = FRAME_ADDRESSABLE | WHOLE_STREAM | REFERENCED
# Transfer syntaxes that never lose information (PS3.5 §10 and Annex A): the native and
# deflated ones, RLE, JPEG Lossless (Processes 14 and 14 SV1), JPEG-LS Lossless, JPEG 2000 and
# HTJ2K Lossless Only.
LOSSLESS = frozenset({
    IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE, "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.5",  # RLE
    "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",  # JPEG lossless
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90",  # JPEG-LS / JPEG 2000 lossless
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",  # HTJ2K lossless
})

PIXEL_DATA = 0x7FE00010
FLOAT_PIXEL_DATA = 0x7FE00008
DOUBLE_PIXEL_DATA = 0x7FE00009
PIXEL_TAGS = frozenset((PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_PIXEL_DATA))
EXTENDED_OFFSET_TABLE = 0x7FE00001
EXTENDED_OFFSET_TABLE_LENGTHS = 0x7FE00002


_UID_RE = re.compile(r"(?:0|[0-9]+)(?:\.[0-9]+)*\Z")


def is_valid_uid(uid: str | None) -> bool:
    """True if ``uid`` is a syntactically valid UID (PS3.5 §9.1), leniently.

    At most 64 characters of digits and dots with no empty component. A leading zero in a
    multi-digit component is tolerated (common in the wild). Stored file names are built only
    from UIDs that pass this check, so no path separator or ``..`` can reach the file system.
    """
    return bool(uid) and len(uid) <= 64 and _UID_RE.match(uid) is not None
