"""The top-level walk of a data set (PS3.5 §7): where each element's value lies, up to the
Pixel Data header.

Public names come from the compiled kernel unless ``DICOMACCEL_NO_EXTENSIONS=1``; the
pure-Python twin ``_walk_py`` is the specification of both.
"""

from ._compat import load_kernel

_impl = load_kernel("walk")

IMPLEMENTATION = _impl.__name__
walk = _impl.walk
MAX_SEQUENCE_DEPTH = _impl.MAX_SEQUENCE_DEPTH

__all__ = ["walk", "MAX_SEQUENCE_DEPTH"]
