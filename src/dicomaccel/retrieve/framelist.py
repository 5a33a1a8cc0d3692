"""Frame List construction for FRAME-level retrieve (PS3.4 Y.3.2).

A Frame Range Key names the frames of one multi-frame source instance that go into a new
instance. :func:`build_frame_list` turns the key into the *Frame List*: 1-based source frame
numbers, in source order (Y.3.2: frames are never re-ordered). Failures raise
:class:`FrameExtractionError` with the PS3.4 Table Y.4-2 status and an Error Comment.

Conformance decisions (copy to docs/conformance.md)
---------------------------------------------------
* **Simple Frame List** (0008,1161): values must be >= 1, strictly increasing and without
  duplicates, else AA04. Values above Number of Frames are *dropped*: the new instance holds
  the requested frames that exist, and AA00 is returned only when none exists. Y.3.2 is
  silent on partially out-of-range lists; the Calculated Frame List rules of the same clause
  tolerate numbers past the end ("to the end", ignored sub-ranges), so serving the found
  subset treats both keys alike. The Frame Extraction Sequence still records the key exactly
  as requested, and Number of Frames tells the receiver how many frames it got.
* **Calculated Frame List** (0008,1162): triplets (first, last, increment) with first >= 1,
  increment >= 1, last >= first. A last of FFFFFFFFH or any value above Number of Frames
  means "to the end" and is allowed only in the last triplet; a triplet whose first value is
  above Number of Frames is ignored; the concatenated sub-ranges must be strictly increasing.
  Violations are AA04; an empty result is AA00. The standard's example
  ``[2, 9, 3, 12, 0xFFFFFFFF, 5]`` on 25 frames gives 2, 5, 8, 12, 17, 22.
* **Time Range** (0008,1163): two finite values, start <= end (AA04 otherwise), in seconds
  relative to Content Time (0008,0033) as Y.3.2.1.3 defines them. Every frame whose start time
  lies in [start, end] is selected (both endpoints inclusive, 1 ns tolerance for decimal
  rounding); none is AA00. Frame start times come from, in this order: the attribute the
  Frame Increment Pointer (0028,0009) names if it is Frame Time or Frame Time Vector; else
  Frame Time Vector (0018,1065) with one value per frame (T(n) = sum of values 2..n, ms);
  else a positive Frame Time (0018,1063) (T(n) = (n - 1) x Frame Time, ms); else Frame
  Reference DateTime (0018,9151) in every Per-Frame Functional Groups item's Frame Content
  Sequence (0020,9111). With none of them the request is AA03.
* **Frame Delay** (0018,1066) *is* applied: PS3.3 C.7.6.5 defines it as the time from
  Content Time to the start of the first frame, and Y.3.2.1.3 measures the range from
  Content Time, so frame n starts at Frame Delay + T(n). For Frame Reference DateTime the
  origin is Content Date + Content Time when both are present (frame n starts at
  FRDT(n) - Content DateTime), otherwise the first frame's FRDT. Without Frame Delay and with
  the first frame at Content Time, "relative to Content Time" and "relative to the first
  frame" coincide.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import DA, DT, TM

from ..status import Status

__all__ = [
    "FRAME_RANGE_KEYWORDS",
    "FrameExtractionError",
    "FrameTiming",
    "build_frame_list",
    "frame_timing",
]

FRAME_RANGE_KEYWORDS = ("SimpleFrameList", "CalculatedFrameList", "TimeRange")
UL_MAX = 0xFFFFFFFF
# Error Comment (0000,0902) is LO: at most 64 characters (PS3.7 C.4.2, PS3.5 6.2).
MAX_COMMENT = 64
# Decimal DS values (e.g. 33.333 ms) do not add up exactly in binary floating point.
_TIME_TOLERANCE_MS = 1e-6

FRAME_TIME = 0x00181063
FRAME_TIME_VECTOR = 0x00181065


class FrameExtractionError(Exception):
    """A FRAME-level retrieve that cannot be served (PS3.4 Table Y.4-2).

    Parameters
    ----------
    status : int
        A :class:`~dicomaccel.status.Status` value, normally AA00 to AA04.
    comment : str
        Error Comment (0000,0902) text; cut to 64 characters.

    Attributes
    ----------
    status : int
    comment : str
    """

    def __init__(self, status: int, comment: str) -> None:
        comment = comment[:MAX_COMMENT]
        super().__init__(f"{int(status):04X}: {comment}")
        self.status = int(status)
        self.comment = comment

    def __reduce__(self):  # keep pickling (process pools) working
        return (type(self), (self.status, self.comment))


@dataclass(frozen=True)
class FrameTiming:
    """Start times of the frames of a multi-frame instance.

    Attributes
    ----------
    offsets_ms : tuple of float
        T(n) for n = 1..Number of Frames, in ms, relative to the first frame (T(1) = 0
        except for Frame Reference DateTime, where it is also 0 by construction).
    origin_ms : float
        Start of the first frame relative to Content Time (0008,0033), in ms.
    source : str
        Keyword of the attribute the times come from: ``"FrameTime"``,
        ``"FrameTimeVector"`` or ``"FrameReferenceDateTime"``.
    """

    offsets_ms: tuple[float, ...]
    origin_ms: float
    source: str


def as_list(value) -> list:
    """The values of a data element value: [] for None/empty, a list for VM > 1 or VM 1."""
    if value is None or value == "":
        return []
    if isinstance(value, (MultiValue, list, tuple)):
        return list(value)
    return [value]


def _number(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _frame_time_vector(ds: Dataset, n: int) -> tuple[float, ...] | None:
    if FRAME_TIME_VECTOR not in ds:
        return None
    values = as_list(ds[FRAME_TIME_VECTOR].value)
    if len(values) != n:
        return None
    numbers = [_number(v) for v in values]
    if any(x is None for x in numbers):
        return None
    # PS3.3 C.7.6.5.1.2: value n is the time from frame n-1 to frame n; value 1 is 0.
    out, t = [0.0], 0.0
    for x in numbers[1:]:
        t += x
        out.append(t)
    return tuple(out)


def _frame_time(ds: Dataset, n: int) -> tuple[float, ...] | None:
    if FRAME_TIME not in ds:
        return None
    ft = _number(ds[FRAME_TIME].value)
    if ft is None or ft <= 0:
        return None
    return tuple(k * ft for k in range(n))


def _frame_reference_datetimes(ds: Dataset, n: int) -> list[datetime] | None:
    items = ds.get("PerFrameFunctionalGroupsSequence")
    if not items or len(items) != n:
        return None
    out = []
    for item in items:
        content = item.get("FrameContentSequence")
        value = content[0].get("FrameReferenceDateTime") if content else None
        if not value:
            return None
        try:
            out.append(DT(value))
        except ValueError:
            return None
    return out


def _content_datetime(ds: Dataset) -> datetime | None:
    date, time = ds.get("ContentDate"), ds.get("ContentTime")
    if not date or not time:
        return None
    try:
        return datetime.combine(DA(date), TM(time))
    except ValueError:
        return None


def _difference_ms(a: datetime, b: datetime) -> float:
    # Frame Reference DateTime may carry a UTC offset that Content Date/Time (local time,
    # PS3.3 C.12.1.1.8) lacks; both are in the instance's local time, so compare wall clocks.
    if (a.tzinfo is None) != (b.tzinfo is None):
        a, b = a.replace(tzinfo=None), b.replace(tzinfo=None)
    return (a - b).total_seconds() * 1000.0


def frame_timing(ds: Dataset, number_of_frames: int) -> FrameTiming | None:
    """Derive frame start times from a source header (PS3.4 Y.3.2.1.3).

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The source data set (Pixel Data not needed).
    number_of_frames : int
        Number of Frames (0028,0008) of the source.

    Returns
    -------
    FrameTiming or None
        None when the instance is not time based: no usable Frame Time, Frame Time Vector
        (one value per frame) or Frame Reference DateTime (in every frame).
    """
    pointers = [int(t) for t in as_list(ds.get("FrameIncrementPointer"))]
    order = [FRAME_TIME_VECTOR, FRAME_TIME]
    if FRAME_TIME in pointers and FRAME_TIME_VECTOR not in pointers:
        order.reverse()
    delay = _number(ds.get("FrameDelay")) or 0.0
    for tag in order:
        offsets = (_frame_time_vector if tag == FRAME_TIME_VECTOR else _frame_time)(
            ds, number_of_frames
        )
        if offsets is not None:
            source = "FrameTimeVector" if tag == FRAME_TIME_VECTOR else "FrameTime"
            return FrameTiming(offsets, delay, source)
    stamps = _frame_reference_datetimes(ds, number_of_frames)
    if stamps is None:
        return None
    first = stamps[0]
    content = _content_datetime(ds)
    origin = 0.0 if content is None else _difference_ms(first, content)
    return FrameTiming(
        tuple(_difference_ms(s, first) for s in stamps), origin, "FrameReferenceDateTime"
    )


def _ul_values(values: Sequence, keyword: str) -> list[int]:
    out = []
    for v in values:
        try:
            x = operator.index(v)
        except TypeError:
            raise FrameExtractionError(
                Status.INVALID_REQUEST, f"{keyword} values must be integers"
            ) from None
        if not 0 <= x <= UL_MAX:
            raise FrameExtractionError(
                Status.INVALID_REQUEST, f"{keyword} value {x} is not a UL"[:MAX_COMMENT]
            )
        out.append(x)
    return out


def _simple(values: Sequence, n: int) -> list[int]:
    frames = _ul_values(values, "SimpleFrameList")
    if not frames:
        raise FrameExtractionError(Status.INVALID_REQUEST, "Simple Frame List is empty")
    if frames[0] < 1:
        raise FrameExtractionError(Status.INVALID_REQUEST, "frame numbers start at 1")
    for a, b in zip(frames, frames[1:]):
        if b <= a:
            raise FrameExtractionError(
                Status.INVALID_REQUEST, "Simple Frame List is not strictly increasing"
            )
    found = [f for f in frames if f <= n]
    if not found:
        raise FrameExtractionError(
            Status.NO_FRAMES_FOUND, f"no requested frame exists (instance has {n})"
        )
    return found


def _calculated(values: Sequence, n: int) -> list[int]:
    numbers = _ul_values(values, "CalculatedFrameList")
    if not numbers or len(numbers) % 3:
        raise FrameExtractionError(
            Status.INVALID_REQUEST, "Calculated Frame List needs 3-value groups"
        )
    ntriplets = len(numbers) // 3
    frames: list[int] = []
    for k in range(ntriplets):
        first, last, step = numbers[3 * k : 3 * k + 3]
        if first < 1:
            raise FrameExtractionError(Status.INVALID_REQUEST, "frame numbers start at 1")
        if step < 1:
            raise FrameExtractionError(Status.INVALID_REQUEST, "Calculated Frame List increment 0")
        if last < first:
            raise FrameExtractionError(
                Status.INVALID_REQUEST, "Calculated Frame List last < first"
            )
        # Y.3.2.1.2: "to the end" (FFFFFFFFH, or any value past the last frame) only in the
        # last triplet.
        if last > n and k != ntriplets - 1:
            raise FrameExtractionError(
                Status.INVALID_REQUEST, "'to the end' only allowed in the last triplet"
            )
        if first > n:
            continue  # Y.3.2.1.2: a sub-range starting past the end is ignored
        if frames and first <= frames[-1]:
            raise FrameExtractionError(
                Status.INVALID_REQUEST, "Calculated Frame List is not strictly increasing"
            )
        frames.extend(range(first, min(last, n) + 1, step))
    if not frames:
        raise FrameExtractionError(
            Status.NO_FRAMES_FOUND, f"no requested frame exists (instance has {n})"
        )
    return frames


def _time_range(values: Sequence, n: int, timing: FrameTiming | None) -> list[int]:
    if len(values) != 2:
        raise FrameExtractionError(Status.INVALID_REQUEST, "Time Range needs 2 values")
    bounds = [_number(v) for v in values]
    if bounds[0] is None or bounds[1] is None:
        raise FrameExtractionError(Status.INVALID_REQUEST, "Time Range values must be finite")
    start, end = bounds
    if end < start:
        raise FrameExtractionError(Status.INVALID_REQUEST, "Time Range end precedes its start")
    if timing is None:
        raise FrameExtractionError(
            Status.TIME_BASED_REQUEST_ON_NON_TIME_BASED, "source instance has no frame timing"
        )
    lo, hi = start * 1000.0 - _TIME_TOLERANCE_MS, end * 1000.0 + _TIME_TOLERANCE_MS
    frames = [
        f for f in range(1, n + 1)
        if lo <= timing.origin_ms + timing.offsets_ms[f - 1] <= hi
    ]
    if not frames:
        raise FrameExtractionError(Status.NO_FRAMES_FOUND, "no frame lies in the Time Range")
    return frames


def build_frame_list(
    keyword: str, values: Sequence, number_of_frames: int, timing: FrameTiming | None
) -> list[int]:
    """Build the Frame List for a Frame Range Key (PS3.4 Y.3.2).

    Parameters
    ----------
    keyword : str
        ``"SimpleFrameList"``, ``"CalculatedFrameList"`` or ``"TimeRange"``.
    values : sequence
        The key's values as in the request Identifier: integers for the UL lists, two
        numbers (seconds) for Time Range. A single value may be given bare.
    number_of_frames : int
        Number of Frames of the source instance, at least 1.
    timing : FrameTiming or None
        Frame start times (:func:`frame_timing`); only Time Range uses it.

    Returns
    -------
    list of int
        1-based source frame numbers, strictly increasing, each <= `number_of_frames`.

    Raises
    ------
    FrameExtractionError
        AA04 for a malformed key, AA00 when no requested frame exists, AA03 for a Time
        Range on an instance without frame timing. See the module docstring.
    """
    n = operator.index(number_of_frames)
    if n < 1:
        raise ValueError(f"number_of_frames must be >= 1, got {n}")
    values = as_list(values)
    if keyword == "SimpleFrameList":
        return _simple(values, n)
    if keyword == "CalculatedFrameList":
        return _calculated(values, n)
    if keyword == "TimeRange":
        return _time_range(values, n, timing)
    raise FrameExtractionError(
        Status.INVALID_REQUEST, f"{keyword!r} is not a Frame Range Key"[:MAX_COMMENT]
    )
