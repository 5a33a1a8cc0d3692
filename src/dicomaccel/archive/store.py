"""The file store: instance files under a root directory, written crash-safely.

Layout (every name below ``instances/`` comes from validated UIDs, see
:func:`~dicomaccel.archive.ingest.is_valid_uid`, plus a random hex token)::

    <root>/tmp/[<node>~]<random>.part                          being received
    <root>/tmp/[<node>~]<random>.pending!instances!<study>!<series>!<sop>.<token>.dcm
    <root>/tmp/[<node>~]<random>.obsolete!instances!<study>!<series>!<sop>.<token>.dcm
    <root>/instances/<study>/<series>/<sop>.<token>.dcm        stored instances

The token makes every stored version a new name, so publishing never replaces a file an
index row points to (an overwrite commits the row for the new file, then drops the old one).

Publishing is: rename the temp file inside ``tmp/`` to a *pending* marker that names its
destination, then hard-link the marker to the destination. Nothing is flushed per file: the
archive's group commit makes a whole batch durable with one :meth:`LocalFileStore.flush`
(``syncfs(2)``: file data, new directories, links and markers of every instance in the
batch, and the SQLite WAL beside them), then calls :meth:`LocalFileStore.finish` to drop the
markers. A retired (overwritten) file gets an *obsolete* marker before the index commit.
At start-up, :meth:`LocalFileStore.recover` removes ``*.part`` files and, for each marker,
removes the destination unless the index references it. So after a crash at any point the
index never names a missing or partial file (see :mod:`dicomaccel.archive` for how rows
committed in the same flush as their files are checked), and a file we wrote but never
indexed is removed. Files under ``instances/`` that no marker mentions are left alone: they
are not ours to delete.

When several nodes share the data directory (a shared index, e.g. PostgreSQL), each names its
temp files and markers with its node ID and recovers only those: another node's files may be
in flight.

Worker processes (and nodes) flush independently, each its own batches, although one
``syncfs`` writes every process's dirty pages: measured, two flushes under way at once end
sooner than the same two one after the other. (An earlier protocol let one flush serve
several processes, with counters in ``flush.seq`` and record locks; it mostly queued them.)
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import ctypes.util
import errno
import mmap
import os
import queue
import re
import secrets
import tempfile
import threading
from collections.abc import Callable

from zlib_ng.zlib_ng import crc32 as _crc32

__all__ = ["FileStore", "LocalFileStore", "Published", "crc32_of"]

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
# syncfs(2) and sync_file_range(2) are Linux calls; elsewhere flush() falls back to sync(2)
# and early writeback is skipped.
_syncfs = getattr(_libc, "syncfs", None)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
_SYNC_FILE_RANGE_WRITE = 2  # start writeback of dirty pages, do not wait (sync_file_range(2))
# Descriptors of the archive root for flushes running at once: more than the group commit's
# threads (archive.commit.COMMIT_THREADS) plus a Storage Commitment check; a further flush waits.
FLUSH_DESCRIPTORS = 4

_NODE_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
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
    def start_writeback(self, fd: int, offset: int, length: int) -> None:
        """Start writing a received range to disk without waiting (a hint), so the
        batch's :meth:`flush` finds little left to do."""

    @abc.abstractmethod
    def flush(self) -> None:
        """Make every file, link, directory and marker made so far durable, in one flush
        (no-op when durability is off)."""

    @abc.abstractmethod
    def verify(self, path: str, size: int, crc32: int) -> bool:
        """True if the file at ``path`` exists with this size and CRC-32 (start-up check of
        instances whose flush a crash may have interrupted)."""

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
    def same_bytes(self, path: str, other: str, size: int) -> bool:
        """True if the files at ``path`` and ``other`` both hold exactly the same ``size``
        bytes (a stored instance and a received temp file)."""

    @abc.abstractmethod
    def unpublish(self, published: Published) -> str:
        """Take back a published file whose index row was refused; returns its temp path."""

    @abc.abstractmethod
    def recover(self, is_indexed: Callable[[str], bool]) -> None:
        """Start-up cleanup after a crash (see module docstring)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release what the store holds open (idempotent)."""


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

    def __init__(self, root: str, *, fsync: bool = True, node: str | None = None) -> None:
        self.root = os.path.abspath(root)
        self.fsync = fsync
        self.tmp_dir = os.path.join(self.root, "tmp")
        self.instances_dir = os.path.join(self.root, "instances")
        os.makedirs(self.tmp_dir, exist_ok=True)
        os.makedirs(self.instances_dir, exist_ok=True)
        if node is not None and not _NODE_RE.fullmatch(node):
            raise ValueError(f"a node ID is 1-64 letters, digits, '.', '_' or '-', not {node!r}")
        # The prefix of this node's names in tmp/ ("" when the archive is this node's alone).
        self._prefix = "" if node is None else f"{node}~"
        # The flush counters of earlier versions, removed at start-up (recover()).
        self._stale = os.path.join(self.root, "flush.seq" if node is None else f"flush.{node}.seq")
        # syncfs(2) names the file system by an open descriptor: the root's, kept open. A
        # write-back error is reported once per open file (Linux), so flushes running at once
        # (the committer threads, a Storage Commitment check) each take a descriptor of their
        # own from this pool, all opened before any write: each sees every error since.
        self._root_fds: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._fds_lock = threading.Lock()  # a flush's descriptor comes back to a pool not yet closed
        self._closed = False
        for _ in range(FLUSH_DESCRIPTORS if fsync else 0):
            self._root_fds.put(os.open(self.root, os.O_RDONLY | os.O_DIRECTORY))

    def create_temp(self) -> tuple[int, str]:
        return tempfile.mkstemp(prefix=self._prefix, suffix=".part", dir=self.tmp_dir)

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def start_writeback(self, fd: int, offset: int, length: int) -> None:
        if self.fsync and _sync_file_range is not None:
            _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)

    def flush(self) -> None:
        if self.fsync:
            self._syncfs()

    def _syncfs(self) -> None:
        # One syncfs(2) covers file data, new directory entries and renames of the whole
        # batch: a new name is durable only once its directory is flushed (POSIX fsync(2)),
        # and flushing each directory and file alone would cost one disk flush per file.
        if _syncfs is None:
            os.sync()
            return
        fd = self._root_fds.get()  # waits while every descriptor is in a flush
        try:
            if _syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        finally:
            with self._fds_lock:
                if self._closed and fd >= 0:  # closed while this flush ran: its descriptor too
                    os.close(fd)
                    fd = -1
                self._root_fds.put(fd)

    def close(self) -> None:
        with self._fds_lock:
            self._closed = True
            fds = []
            while True:
                try:
                    fds.append(self._root_fds.get_nowait())
                except queue.Empty:
                    break
            for fd in fds:
                if fd >= 0:
                    os.close(fd)
                self._root_fds.put(-1)  # a flush after closing fails (EBADF) instead of waiting

    def _make_dirs(self, path: str) -> None:
        if not os.path.isdir(path):
            os.makedirs(path, exist_ok=True)

    def publish(self, temp_path: str, study_uid: str, series_uid: str, sop_uid: str) -> Published:
        rel = "/".join(
            ("instances", study_uid, series_uid, f"{sop_uid}.{secrets.token_hex(8)}.dcm")
        )
        final = os.path.join(self.root, *rel.split("/"))
        marker = f"{temp_path[:-5]}.pending!{rel.replace('/', '!')}"
        # The marker is renamed before the link it announces; journaling file systems
        # (ext4, XFS) commit metadata in order, so a crash cannot keep the link and lose
        # the marker that lets recover() remove an unindexed file.
        os.rename(temp_path, marker)
        try:
            self._make_dirs(os.path.dirname(final))
            os.link(marker, final)
        except BaseException:
            self.remove(marker)
            raise
        return Published(final, marker)

    def unpublish(self, published: Published) -> str:
        """Take back a file :meth:`publish` made visible; returns its temp path again."""
        self.remove(published.path)
        # The marker becomes the temp file again (its name is the temp file's, extended), so
        # the instance's own clean-up removes it; linked, not renamed, so a temp file made
        # meanwhile under that name is never replaced (then the marker stays the temp file).
        temp_path = published.marker.partition(".pending!")[0] + ".part"
        try:
            os.link(published.marker, temp_path)
        except FileExistsError:
            return published.marker
        self.remove(published.marker)
        return temp_path

    def retire(self, path: str) -> str:
        rel = os.path.relpath(path, self.root).replace(os.sep, "!")
        marker = os.path.join(self.tmp_dir, f"{self._prefix}{secrets.token_hex(8)}.obsolete!{rel}")
        os.link(path, marker)  # flushed with the batch, before the index row changes
        return marker

    def finish(self, marker: str) -> None:
        self.remove(marker)

    def remove(self, path: str) -> None:
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            pass

    def same_bytes(self, path: str, other: str, size: int) -> bool:
        with _mapped(path, size) as stored, _mapped(other, size) as received:
            if stored is None or received is None:
                return False
            step = 1 << 22
            # Slices of two maps are bytes: == is a memcmp, a step at a time.
            return all(stored[pos:pos + step] == received[pos:pos + step]
                       for pos in range(0, size, step))

    def verify(self, path: str, size: int, crc32: int) -> bool:
        with _mapped(path, size) as stored:
            return stored is not None and crc32_of(stored) == crc32

    def recover(self, is_indexed: Callable[[str], bool]) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._stale)
        for name in os.listdir(self.tmp_dir):
            if self._prefix and not name.startswith(self._prefix):
                continue  # another node's, perhaps in flight
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


@contextlib.contextmanager
def _mapped(path: str, size: int):
    """The file at ``path`` mapped read-only if it exists with exactly ``size`` bytes
    (``b""`` when that is 0), else None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield None
        return
    try:
        if os.fstat(fd).st_size != size:
            yield None
        elif size == 0:
            yield b""
        else:
            with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mm:
                yield mm
    finally:
        os.close(fd)


def crc32_of(buffer, crc: int = 0) -> int:
    """CRC-32 (ISO 3309, zlib's) of a buffer, continuing ``crc``: the one checksum of stored
    files, taken at ingest and checked at recovery and for duplicates.

    zlib-ng's folding implementation (PCLMULQDQ where the CPU has it) runs at ~28 GB/s here,
    where zlib's took 123 us per 0.5 MB instance; same polynomial, same values. It releases the
    GIL, in 16 MiB steps so a huge instance does not hold a core for long."""
    mv = memoryview(buffer).cast("B")
    try:
        step = 1 << 24
        for pos in range(0, mv.nbytes, step):
            crc = _crc32(mv[pos:pos + step], crc)
        return crc
    finally:
        mv.release()
