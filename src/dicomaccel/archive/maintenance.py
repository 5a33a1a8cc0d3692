"""Index maintenance: copy an index to another backend, and check an index against the files.

``dicomaccel index migrate`` and ``dicomaccel index verify`` (cli.py) run these with no
``dicomaccel serve`` writing: a copy taken under a running writer misses its later stores,
and a check under one may report a file being published as an orphan for an instant (files
named by a pending marker in ``tmp/`` are left out for that reason).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from .index import DuplicateRow, Index, InstanceRecord
from .store import _MARKER_RE, crc32_of

__all__ = ["copy_index", "verify", "Findings"]

PAGE = 1000  # rows read and written at a time


def copy_index(source: Index, target: Index, progress: Callable[[int], None] | None = None) -> tuple[int, int]:
    """Every row of ``source`` into ``target`` (the same files: paths stay relative to the
    archive root), :data:`PAGE` rows per transaction. Rows whose SOP Instance UID the target
    already holds are left as they are there. Returns (copied, already there)."""
    copied = skipped = 0
    after = ""
    while records := source.page(after, PAGE):
        for result in target.put_batch(records, [False] * len(records)):
            if isinstance(result, InstanceRecord):
                copied += 1
            elif isinstance(result, DuplicateRow):
                skipped += 1
            else:
                raise result
        after = records[-1].sop_instance_uid
        if progress is not None:
            progress(copied + skipped)
    return copied, skipped


@dataclass
class Findings:
    """What :func:`verify` found: rows whose file is missing, rows whose file differs (size,
    or CRC-32 when checked) and files under ``instances/`` that no row names (paths relative
    to the archive root)."""

    rows: int = 0
    files: int = 0
    missing: list[tuple[str, str]] = field(default_factory=list)  # (SOP Instance UID, path)
    damaged: list[tuple[str, str]] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.damaged or self.orphans)


def verify(root: str, index: Index, *, checksums: bool = False) -> Findings:
    """Check ``index`` against the files under ``root``: every row's file exists with its size
    (and its CRC-32, with ``checksums``: reads every file), and every file is some row's."""
    root = os.path.abspath(root)
    found = Findings()
    named: set[str] = set()
    after = ""
    while records := index.page(after, PAGE):
        for record in records:
            rel = os.path.relpath(record.path, root).replace(os.sep, "/")
            named.add(rel)
            try:
                size = os.stat(record.path).st_size
            except FileNotFoundError:
                found.missing.append((record.sop_instance_uid, rel))
                continue
            if size != record.size or (checksums and record.crc32 is not None and not _crc_matches(record)):
                found.damaged.append((record.sop_instance_uid, rel))
        found.rows += len(records)
        after = records[-1].sop_instance_uid
    tmp = os.path.join(root, "tmp")
    # Files being published (a pending marker names them) are not orphans yet.
    in_flight = {m.group(2).replace("!", "/") for m in map(_MARKER_RE.match, os.listdir(tmp)) if m} \
        if os.path.isdir(tmp) else set()
    for directory, _, names in os.walk(os.path.join(root, "instances")):
        for name in names:
            rel = os.path.relpath(os.path.join(directory, name), root).replace(os.sep, "/")
            found.files += 1
            if rel not in named and rel not in in_flight:
                found.orphans.append(rel)
    return found


def _crc_matches(record: InstanceRecord) -> bool:
    with open(record.path, "rb") as f:
        crc = 0
        while chunk := f.read(1 << 24):
            crc = crc32_of(chunk, crc)
    return crc == record.crc32
