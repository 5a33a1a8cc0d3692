"""WADO-RS rendered resources (PS3.18 §10.4.1.1.3, query parameters of §8.3.5): one frame of
a stored image as ``image/jpeg`` (the default) or ``image/png``.

The pipeline is PS3.3's grayscale one (§C.11: Modality LUT, then VOI LUT, then Presentation
LUT) cut to what a consumer display needs:

1. decode the frame with pydicom (the pylibjpeg plugins for compressed syntaxes); only that
   frame is read from the file; YBR colour comes back as RGB, PALETTE COLOR goes through its
   lookup tables (PS3.3 §C.7.6.3.1.5);
2. monochrome: Rescale Slope / Intercept (PS3.3 §C.11.1.1.2, top level or the frame's Pixel
   Value Transformation functional group), or the Modality LUT Sequence;
3. a window: the ``window`` parameter, else the instance's first Window Center / Width (top
   level or the frame's Frame VOI LUT functional group) with its VOI LUT Function, else the
   frame's minimum and maximum; applied as PS3.3 §C.11.2.1.2.1 (linear), §C.11.2.1.3.2
   (linear exact) or §C.11.2.1.3.1 (sigmoid) onto 0..255;
4. MONOCHROME1 is inverted (PS3.3 §C.7.6.3.1.2: minimum is white);
5. ``viewport`` crops and scales to fit, keeping the aspect ratio; Pillow encodes, ``quality``
   sets the JPEG quality.

A multi-frame instance rendered without a frame number is its first frame.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from .wado_http import MediaRange, Refused, Request

__all__ = ["RenderOptions", "render_options", "render_media_type", "render"]

DEFAULT_QUALITY = 90
RENDER_MEDIA = ("image/jpeg", "image/png")
_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}
# Largest viewport side we scale to (a bound on the memory one request may take).
MAX_VIEWPORT = 8192
_EXTRA_TAGS = [0x00281050, 0x00281051, 0x00281052, 0x00281053, 0x00281056, 0x00283000,
               0x52009229, 0x52009230, 0x00280004]


@dataclass(frozen=True)
class RenderOptions:
    media_type: str
    window: tuple[float, float, str] | None = None  # center, width, VOI LUT Function
    viewport: tuple[int, int] | None = None
    crop: tuple[int, int, int, int] | None = None  # sx, sy, sw, sh in source pixels
    quality: int = DEFAULT_QUALITY

    def key(self) -> str:
        """What distinguishes this rendering (for the ETag)."""
        return f"rendered:{self.media_type}:{self.window}:{self.viewport}:{self.crop}:{self.quality}"


def render_media_type(request: Request) -> str:
    """The media type to answer: the ``accept`` query parameter (PS3.18 §8.3.3.1), else the
    Accept header; 406 if it allows neither JPEG nor PNG."""
    param = request.param("accept")
    if param is not None:
        ranges = [MediaRange(x) for x in param.split(",") if x.strip()]
    else:
        ranges = request.accept()
    for media_range in ranges:
        for media in RENDER_MEDIA:
            if media_range.matches(media):
                return media
    raise Refused(406, "Not acceptable: rendered images are image/jpeg or image/png")


def render_options(request: Request) -> RenderOptions:
    """The query parameters of PS3.18 §8.3.5 (window, viewport, quality); 400 if malformed."""
    media = render_media_type(request)
    window = viewport = crop = None
    quality = DEFAULT_QUALITY
    text = request.param("window")
    if text is not None:
        parts = [p.strip() for p in text.split(",")]
        if len(parts) not in (2, 3):
            raise Refused(400, f"Bad window {text[:60]!r}: center,width[,linear|linear-exact|sigmoid]")
        try:
            center, width = float(parts[0]), float(parts[1])
        except ValueError:
            raise Refused(400, f"Bad window {text[:60]!r}: center and width are numbers") from None
        function = _FUNCTIONS.get(parts[2].lower() if len(parts) == 3 else "linear")
        if function is None:
            raise Refused(400, f"Bad window function {parts[2][:20]!r}: linear, linear-exact or sigmoid")
        if not np.isfinite(center) or not np.isfinite(width) or width <= 0 or (function == "LINEAR" and width < 1):
            raise Refused(400, f"Bad window {text[:60]!r}: the width must be positive (at least 1 for linear)")
        window = (center, width, function)
    text = request.param("viewport")
    if text is not None:
        parts = [p.strip() for p in text.split(",")]
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            numbers = []
        if len(numbers) not in (2, 6) or not all(0 < n <= MAX_VIEWPORT for n in numbers[:2]) \
                or any(n < 0 for n in numbers[2:4]) or any(n <= 0 for n in numbers[4:]):
            raise Refused(400, f"Bad viewport {text[:60]!r}: vw,vh[,sx,sy,sw,sh] as integers, "
                               f"0 < vw, vh <= {MAX_VIEWPORT}, sw and sh positive")
        viewport = (numbers[0], numbers[1])
        if len(numbers) == 6:
            crop = tuple(numbers[2:])
    text = request.param("quality")
    if text is not None:
        try:
            quality = int(text)
        except ValueError:
            quality = 0
        if not 1 <= quality <= 100:
            raise Refused(400, f"Bad quality {text[:20]!r}: an integer from 1 to 100")
    return RenderOptions(media, window, viewport, crop, quality)


def render(path: str, frame: int, options: RenderOptions) -> bytes:
    """Frame ``frame`` (0-based) of the stored file at ``path``, rendered and encoded."""
    from PIL import Image
    from pydicom import Dataset
    from pydicom.pixels import pixel_array

    ds = Dataset()
    try:
        arr = pixel_array(path, index=frame, ds_out=ds, specific_tags=_EXTRA_TAGS)
    except Exception as exc:  # pydicom raises many kinds for what it cannot decode
        raise Refused(406, f"Not acceptable: this instance cannot be decoded for rendering ({exc})"[:300]) from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
    if arr.ndim == 3:
        image = Image.fromarray(_color_to_8bit(arr), "RGB")
    else:
        values = _modality(arr, ds, frame)
        window = options.window or _stored_window(ds, frame) or _minmax_window(values)
        out = _apply_window(values, *window)
        if photometric == "MONOCHROME1":
            out = 255 - out
        image = Image.fromarray(out, "L")
    if options.crop is not None:
        sx, sy, sw, sh = options.crop
        if sx >= image.width or sy >= image.height:
            raise Refused(400, f"Bad viewport: the region starts outside the {image.width}x{image.height} image")
        image = image.crop((sx, sy, min(image.width, sx + sw), min(image.height, sy + sh)))
    if options.viewport is not None:
        vw, vh = options.viewport
        scale = min(vw / image.width, vh / image.height)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        if size != image.size:
            image = image.resize(size, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    if options.media_type == "image/png":
        image.save(buf, "PNG")
    else:
        image.save(buf, "JPEG", quality=options.quality)
    return buf.getvalue()


def _frame_group(ds, frame: int, sequence: str):
    """The first item of functional group ``sequence`` for ``frame``: per-frame first, then
    shared (PS3.3 §C.7.6.16)."""
    for holder, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(holder)
        if groups is not None and len(groups) > index:
            inner = groups[index].get(sequence)
            if inner:
                return inner[0]
    return None


def _first(value) -> float | None:
    """The first value of a (possibly multi-valued) numeric attribute, or None."""
    if value is None or value == "":
        return None
    if not isinstance(value, (str, bytes, int, float)):
        try:
            value = value[0]
        except (TypeError, IndexError):
            return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _modality(arr: np.ndarray, ds, frame: int) -> np.ndarray:
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        return apply_modality_lut(arr, ds).astype(np.float32)
    source = ds if "RescaleSlope" in ds or "RescaleIntercept" in ds else \
        _frame_group(ds, frame, "PixelValueTransformationSequence")
    slope = _first(source.get("RescaleSlope")) if source is not None else None
    intercept = _first(source.get("RescaleIntercept")) if source is not None else None
    values = arr.astype(np.float32)
    if slope is not None and slope != 1.0:
        values *= slope
    if intercept:
        values += intercept
    return values


def _stored_window(ds, frame: int) -> tuple[float, float, str] | None:
    source = ds if "WindowCenter" in ds else _frame_group(ds, frame, "FrameVOILUTSequence")
    if source is None:
        return None
    center, width = _first(source.get("WindowCenter")), _first(source.get("WindowWidth"))
    function = str(source.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if center is None or width is None or width <= 0:
        return None
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    if function == "LINEAR" and width < 1:
        width = 1.0
    return center, width, function


def _minmax_window(values: np.ndarray) -> tuple[float, float, str]:
    low, high = float(values.min()), float(values.max())
    return (low + high) / 2, max(high - low, 1.0), "LINEAR_EXACT"


def _apply_window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    if function == "SIGMOID":  # PS3.3 §C.11.2.1.3.1
        y = 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function == "LINEAR_EXACT":  # PS3.3 §C.11.2.1.3.2
        y = ((x - center) / width + 0.5) * 255.0
    else:  # PS3.3 §C.11.2.1.2.1
        y = ((x - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0 if width > 1 else \
            np.where(x > center - 0.5, 255.0, 0.0)
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def _color_to_8bit(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    high = float(arr.max()) if arr.size else 0.0
    if high <= 0:
        return np.zeros(arr.shape, np.uint8)
    bits = max(8, int(np.ceil(np.log2(high + 1))))
    return (arr.astype(np.float32) * (255.0 / (2 ** bits - 1))).round().clip(0, 255).astype(np.uint8)
