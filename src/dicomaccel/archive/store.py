"""The file store: instance files under a root directory, written crash-safely.

Layout (every name below ``instances/`` comes from validated UIDs, see
:func:`~dicomaccel.archive.ingest.is_valid_uid`, plus a random hex token)::

    <root>/tmp/<random>.part                                   being received
    <root>/tmp/<random>.pending!instances!<study>!<series>!<sop>.<token>.dcm
    <root>/tmp/<random>.obsolete!instances!<study>!<series>!<sop>.<token>.dcm
    <root>/instances/<study>/<series>/<sop>.<token>.dcm        stored instances

The token makes every stored version a new name, so publishing never replaces a file an
index row points to (an overwrite commits the row for the new file, then drops the old one).

Publishing is: fsync the temp file, rename it inside ``tmp/`` to a *pending* marker that
names its destination, hard-link the marker to the destination, fsync the directory; the
caller then commits the index row and calls :meth:`LocalFileStore.finish` to drop the
marker. A retired (overwritten) file gets an *obsolete* marker before the index commit.
At start-up, :meth:`LocalFileStore.recover` removes ``*.part`` files and, for each marker,
removes the destination unless the index references it. So after a crash at any point the
index never names a missing or partial file, and a file we wrote but never indexed is
removed. Files under ``instances/`` that no marker mentions are left alone: they are not
ours to delete.
"""

from __future__ import annotations

import abc
import errno
import mmap
import os
import re
import secrets
import tempfile
from collections.abc import Callable

__all__ = ["FileStore", "LocalFileStore", "Published"]

_MARKER_RE = re.compile(
    r"[^!]+\.(pending|obsolete)!(instances(?:![0-9.]{1,64}){3}\.[0-9a-f]{16}\.dcm)\Z"
)


class Published:
    """A file made visible by :meth:`FileStore.publish`, not yet confirmed by the index."""

    __slots__ = ("path", "marker")

    def __init__(self, path: str, marker: str) -> None:
        self.path = path
        self.marker = marker


class FileStore(abc.ABC):
    """What the archive needs from a place that holds instance files.

    Paths are absolute strings; an object-store implementation would map them to keys.
    """

    root: str

    @abc.abstractmethod
    def create_temp(self) -> tuple[int, str]:
        """A new, empty, private temp file: ``(fd, path)``."""

    @abc.abstractmethod
    def free_bytes(self) -> int:
        """Bytes available to us on the store's file system."""

    @abc.abstractmethod
    def sync(self, fd: int) -> None:
        """Make a temp file's content durable (no-op when durability is off)."""

    @abc.abstractmethod
    def publish(self, temp_path: str, study_uid: str, series_uid: str, sop_uid: str) -> Published:
        """Move a complete temp file to its final name (UIDs must be validated)."""

    @abc.abstractmethod
    def retire(self, path: str) -> str:
        """Mark a stored file for removal once the index stops naming it; returns the marker."""

    @abc.abstractmethod
    def finish(self, marker: str) -> None:
        """The index commit is done: drop a marker from :meth:`publish` or :meth:`retire`."""

    @abc.abstractmethod
    def remove(self, path: str) -> None:
        """Remove a file (missing is fine)."""

    @abc.abstractmethod
    def same_bytes(self, path: str, buffer, size: int) -> bool:
        """True if the stored file at ``path`` holds exactly ``buffer[:size]``."""

    @abc.abstractmethod
    def recover(self, is_indexed: Callable[[str], bool]) -> None:
        """Start-up cleanup after a crash (see module docstring)."""


class LocalFileStore(FileStore):
    """Instance files on a local file system under ``root``.

    Parameters
    ----------
    root : str
        Directory; ``instances/`` and ``tmp/`` are created inside it (same file system, so
        rename and link are atomic).
    fsync : bool
        Flush file contents and directory entries to stable storage before an instance is
        reported stored (the durability option; ``False`` trades crash-durability for speed).
    """

    def __init__(self, root: str, *, fsync: bool = True) -> None:
        self.root = os.path.abspath(root)
        self.fsync = fsync
        self.tmp_dir = os.path.join(self.root, "tmp")
        self.instances_dir = os.path.join(self.root, "instances")
        os.makedirs(self.tmp_dir, exist_ok=True)
        os.makedirs(self.instances_dir, exist_ok=True)

    def create_temp(self) -> tuple[int, str]:
        return tempfile.mkstemp(suffix=".part", dir=self.tmp_dir)

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def sync(self, fd: int) -> None:
        if self.fsync:
            # fdatasync skips timestamps but still flushes the size a reader needs (fdatasync(2)).
            getattr(os, "fdatasync", os.fsync)(fd)

    def _sync_dir(self, path: str) -> None:
        # A rename or link is durable only once its directory is fsynced (POSIX fsync(2)).
        if self.fsync:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _make_dirs(self, path: str) -> None:
        created = []
        while not os.path.isdir(path):
            created.append(path)
            path = os.path.dirname(path)
        for d in reversed(created):
            try:
                os.mkdir(d)
            except FileExistsError:
                continue
            self._sync_dir(os.path.dirname(d))

    def publish(self, temp_path: str, study_uid: str, series_uid: str, sop_uid: str) -> Published:
        rel = "/".join(
            ("instances", study_uid, series_uid, f"{sop_uid}.{secrets.token_hex(8)}.dcm")
        )
        final = os.path.join(self.root, *rel.split("/"))
        marker = f"{temp_path[:-5]}.pending!{rel.replace('/', '!')}"
        os.rename(temp_path, marker)
        linked = False
        try:
            # The marker must be durable before the link it announces: otherwise a crash
            # could keep the link but turn the marker back into a *.part that recover()
            # deletes, leaving a file no marker or row accounts for.
            self._sync_dir(self.tmp_dir)
            self._make_dirs(os.path.dirname(final))
            os.link(marker, final)
            linked = True
            self._sync_dir(os.path.dirname(final))
        except BaseException:
            if linked:
                self.remove(final)
            self.remove(marker)
            raise
        return Published(final, marker)

    def retire(self, path: str) -> str:
        rel = os.path.relpath(path, self.root).replace(os.sep, "!")
        marker = os.path.join(self.tmp_dir, f"{secrets.token_hex(8)}.obsolete!{rel}")
        os.link(path, marker)
        self._sync_dir(self.tmp_dir)  # durable before the index stops naming the file
        return marker

    def finish(self, marker: str) -> None:
        self.remove(marker)

    def remove(self, path: str) -> None:
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            pass

    def same_bytes(self, path: str, buffer, size: int) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            if os.fstat(fd).st_size != size:
                return False
            if size == 0:
                return True
            with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as stored:
                step = 1 << 22
                mv = memoryview(buffer)
                try:
                    for pos in range(0, size, step):
                        if stored[pos:pos + step] != mv[pos:pos + step]:
                            return False
                finally:
                    mv.release()
                return True
        finally:
            os.close(fd)

    def recover(self, is_indexed: Callable[[str], bool]) -> None:
        for name in os.listdir(self.tmp_dir):
            path = os.path.join(self.tmp_dir, name)
            m = _MARKER_RE.match(name)
            if m is not None:
                rel = m.group(2).replace("!", "/")
                if not is_indexed(rel):
                    self.remove(os.path.join(self.root, *rel.split("/")))
            try:
                os.unlink(path)
            except IsADirectoryError:
                continue  # never created by us; leave it
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
