"""Rewrite a received instance whose header the coercion and discard rules change.

The header (File Meta Information and every top-level element before Pixel Data) is read with
pydicom, changed (:func:`dicomaccel.policy.rules.apply_rules`) and written again in the same
transfer syntax; the rest of the file, from the Pixel Data element to the end, is copied from
the received temp file by the kernel (``copy_file_range``): pixel data is never decoded, nor
copied through Python. A deflated data set (PS3.5 A.5) is one deflate stream, so it is read
and written whole instead.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import pydicom

from ..policy.rules import Change, apply_rules
from ..syntaxes import DEFLATED
from .ingest import Header
from .store import FileStore, crc32_of

__all__ = ["Rewritten", "rewrite"]


@dataclass
class Rewritten:
    """The new temp file: descriptor, path, size and CRC-32, and what changed."""

    fd: int
    path: str
    size: int
    crc32: int
    changes: list[Change]


def rewrite(files: FileStore, fd: int, mm, size: int, header: Header, coerce: tuple,
            discard: tuple) -> Rewritten | None:
    """Apply the rules to the instance in ``mm`` (``size`` bytes, temp file ``fd``); the new
    temp file, or None when no rule changed anything (the received file stays)."""
    deflated = header.transfer_syntax_uid in DEFLATED
    tail = 0 if deflated or header.pixel_offset < 0 else header.pixel_offset
    head = mm[:tail or size]
    ds = pydicom.dcmread(io.BytesIO(head), force=True)
    changes = apply_rules(ds, coerce, discard)
    if not changes:
        return None
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    new_head = out.getvalue()
    new_fd, path = files.create_temp()
    try:
        os.write(new_fd, new_head)
        crc = crc32_of(new_head)
        if tail:
            offset, left = tail, size - tail
            while left:
                n = os.copy_file_range(fd, new_fd, left, offset)
                if n == 0:
                    raise OSError("copy_file_range: the received file ended early")
                offset += n
                left -= n
            crc = crc32_of(memoryview(mm)[tail:size], crc)
    except BaseException:
        os.close(new_fd)
        files.remove(path)
        raise
    return Rewritten(new_fd, path, len(new_head) + (size - tail if tail else 0), crc, changes)
