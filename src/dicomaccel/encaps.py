"""Encapsulated Pixel Data: items, offset tables, frame -> fragments, re-encapsulation (PS3.5 A.4).

Public names come from the compiled kernel unless ``DICOMACCEL_NO_EXTENSIONS=1``; the
pure-Python twin ``_encaps_py`` is the specification of both.
"""

from ._compat import load_kernel

_impl = load_kernel("encaps")

IMPLEMENTATION = _impl.__name__
parse_items = _impl.parse_items
parse_extended_offset_table = _impl.parse_extended_offset_table
EncapsulatedFrames = _impl.EncapsulatedFrames
encapsulate = _impl.encapsulate

__all__ = ["parse_items", "parse_extended_offset_table", "EncapsulatedFrames", "encapsulate"]
