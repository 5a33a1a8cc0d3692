"""Streaming multipart/related scanner (RFC 2046 §5.1.1 as profiled by PS3.18 §8.6.1.2).

Public names come from the compiled kernel unless ``DICOMACCEL_NO_EXTENSIONS=1``; the
pure-Python twin ``_multipart_py`` is the specification of both. ``LimitExceeded`` (a
``ParseError``) is what both raise for the ``max_parts`` and ``max_header_size`` limits.
"""

from ._compat import load_kernel
from .errors import LimitExceeded

_impl = load_kernel("multipart")

IMPLEMENTATION = _impl.__name__
PART_BEGIN = _impl.PART_BEGIN
PART_DATA = _impl.PART_DATA
PART_END = _impl.PART_END
CLOSE = _impl.CLOSE
MultipartScanner = _impl.MultipartScanner
parse_content_type = _impl.parse_content_type
body_buffer = _impl.body_buffer

__all__ = ["PART_BEGIN", "PART_DATA", "PART_END", "CLOSE", "MultipartScanner", "parse_content_type", "body_buffer",
           "LimitExceeded"]
