"""Native (uncompressed) Pixel Data frames: geometry, zero-copy frame views, gathering (PS3.5 §8.1).

Public names come from the compiled kernel unless ``DICOMACCEL_NO_EXTENSIONS=1``; the
pure-Python twin ``_frames_py`` is the specification of both.
"""

from ._compat import load_kernel

_impl = load_kernel("frames")

IMPLEMENTATION = _impl.__name__
frame_bits = _impl.frame_bits
check_frames_fit = _impl.check_frames_fit
NativeFrames = _impl.NativeFrames

__all__ = ["frame_bits", "check_frames_fit", "NativeFrames"]
