"""Start, load, measure and stop the C-GET servers that the benchmarks compare.

Three peers and two receivers that bound them, one interface (:class:`Peer`):

- :class:`DicomaccelPeer`: ``dicomaccel serve`` with its C-GET SCP on an ephemeral port, loaded
  over STOW-RS (the ``cstore`` workload measures its C-STORE SCP on a fresh server).
- :class:`DcmqrscpPeer`: DCMTK's ``dcmqrscp`` from a generated ``dcmqrscp.cfg``, loaded with DCMTK's
  ``storescu``. Both run with ``TCP_NODELAY=1`` in their environment: DCMTK only disables Nagle's
  algorithm when that variable is set, and Debian's build leaves it on otherwise.
- :class:`PynetdicomPeer`: the baseline SCP in :mod:`benchmarks.pynetdicom_scp`, which indexes its
  directory at start-up; its directory holds hard links to the corpus files.
- :class:`StorescpIgnorePeer`: DCMTK's ``storescp --ignore``, which receives each data set and
  discards it: what ``storescu`` can push into a receiver that does the least (the ``cstore``
  workload's ceiling; it holds nothing to retrieve).
- :class:`CStoreFloorPeer`: ``benchmarks/cstore_floor.c``, which writes each data set to a file
  and flushes it before answering: the least a *durable* C-STORE SCP does (the ``cstore``
  workload's floor).

Every process started here is registered by PID and stopped by PID on :func:`stop_all`, which
runs at exit; :func:`install_signal_handlers` turns SIGTERM and SIGHUP into ``SystemExit`` so
``finally`` blocks run for them as they do for Ctrl-C. All peers are reached on 127.0.0.1 only.
"""

from __future__ import annotations

import atexit
import http.client
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

from dicomaccel.testing import dcmtk_program

REPO = Path(__file__).resolve().parent.parent

_LIVE: dict[int, subprocess.Popen] = {}


class PeerUnavailable(RuntimeError):
    """A peer cannot run here (program or package missing, or the server does not start)."""


def spawn(cmd: list[str], *, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """Start ``cmd`` with stdout piped (text) and stderr appended to ``log``; register it for cleanup."""
    with open(log, "ab") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, text=True)
    _LIVE[proc.pid] = proc
    return proc


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM ``proc``, SIGKILL it after ``timeout`` seconds, reap it, forget it."""
    try:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
    finally:
        _LIVE.pop(proc.pid, None)


def stop_all() -> None:
    """Stop every process this module started that is still registered (runs at exit)."""
    for proc in list(_LIVE.values()):
        stop_process(proc)


def _raise_exit(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


def install_signal_handlers() -> None:
    """Make SIGTERM and SIGHUP unwind like Ctrl-C, so ``finally`` blocks stop the peers."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_exit)


atexit.register(stop_all)


def dcmtk_env() -> dict[str, str]:
    """Environment for DCMTK programs: TCP_NODELAY=1 makes dcmnet set TCP_NODELAY on its sockets."""
    return dict(os.environ, TCP_NODELAY="1")


def free_port() -> int:
    """An unused 127.0.0.1 TCP port, for servers that cannot bind port 0 and report it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    """Whether some socket on this host listens on TCP ``port`` (any address, IPv4 or IPv6)."""
    # /proc/net/tcp{,6}: local address as hex "ADDR:PORT", state 0A is LISTEN. Reading it does
    # not open a connection, which a DICOM server would log as a failed association.
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def came_up(proc: subprocess.Popen, port: int, timeout: float = 30) -> bool:
    """Wait until ``proc`` listens on ``port``: False if it exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not listening(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class _ProcessTable:
    """The parent of every process on this host, kept between calls.

    The memory sampler asks for a peer's processes every few milliseconds (:class:`RssSampler`).
    Each call lists ``/proc`` (~0.05 ms) and reads the ``stat`` file of the processes it has
    not met before only. Reading every process's ``stat`` took ~1.1 ms here, and the sampler
    did it once per process of the peer at each sample: for a peer of three processes
    (``dicomaccel serve --workers 2``), 1.04 s of CPU in 3 s, a third of one of the 2 cores the
    server and its clients share, and less for a peer of fewer processes; 0.08 s now. A process
    keeps the parent it had when first met (an orphan adopted by init still counts as its
    first parent's)."""

    def __init__(self) -> None:
        self._parent: dict[int, int] = {}
        self._lock = threading.Lock()

    def children(self) -> dict[int, list[int]]:
        """Parent PID -> the PIDs of its children, for the processes alive now."""
        with self._lock:
            live = {int(name) for name in os.listdir("/proc") if name.isdigit()}
            for gone in self._parent.keys() - live:
                del self._parent[gone]
            for pid in live - self._parent.keys():
                try:
                    with open(f"/proc/{pid}/stat", "rb") as f:
                        self._parent[pid] = int(f.read().rsplit(b")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue  # ended meanwhile
            out: dict[int, list[int]] = {}
            for pid, parent in self._parent.items():
                out.setdefault(parent, []).append(pid)
            return out


_PROCESSES = _ProcessTable()


def descendants(pid: int) -> list[int]:
    """Children of ``pid``, their children and so on (``dicomaccel serve --workers N`` forks N,
    dcmqrscp one per association)."""
    children = _PROCESSES.children()
    found, todo = [], [pid]
    while todo:
        below = sorted(children.get(todo.pop(), ()))
        found += below
        todo += below
    return found


CLOCK_TICK = 1 / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid`` in seconds (proc(5)), 0 once it is gone.

    cutime/cstime hold the CPU of the children it has waited for, so a child that ended during a
    measurement still counts, through its parent, once it has been reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return sum(int(v) for v in fields[11:15]) * CLOCK_TICK


def vm_hwm_kib(pid: int) -> int:
    """VmHWM (peak resident set) of ``pid`` in KiB; 0 once the process is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Peer:
    """One C-GET SCP under test: ``start(files)`` runs it holding ``files``; then C-GET it at
    ``127.0.0.1:port`` with AE title ``ae_title``; ``stop()`` ends it."""

    name = ""
    ae_title = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = self.workdir / "server.log"
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this peer cannot run here, or None if it can."""
        return None

    def start(self, files: list[Path]) -> None:
        """Run the server with ``files`` (PS3.10) stored in its archive; raise :class:`PeerUnavailable`
        if it does not start."""
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc is not None:
            # The server first (a dicomaccel supervisor would replace a worker that ends before
            # it), then, by PID, what is left of its descendants (dcmqrscp's per-association
            # processes).
            left = descendants(self.proc.pid)
            stop_process(self.proc)
            self.proc = None
            for child in left:
                try:
                    os.kill(child, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def pids(self) -> list[int]:
        """The server process and its descendants: the processes whose memory and CPU we report."""
        if self.proc is None:
            return []
        return [self.proc.pid, *descendants(self.proc.pid)]

    def cpu_s(self) -> float:
        """CPU seconds used so far by the server and its descendants, live or reaped (see
        :func:`process_cpu_s`); the difference of two readings is the CPU of what ran between."""
        return sum(process_cpu_s(pid) for pid in self.pids())

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class _Lines:
    """Reads a child's stdout on a thread (so the pipe never fills) and hands lines to a waiter."""

    def __init__(self, proc: subprocess.Popen, log: Path) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._log = log
        threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True).start()

    def _pump(self, stream) -> None:
        with open(self._log, "a") as log:
            for line in stream:
                log.write(line)
                log.flush()
                self._queue.put(line)
        self._queue.put(None)

    def until(self, done: str, timeout: float) -> Iterator[str]:
        """Yield lines until one starts with ``done``; stop early at EOF or after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                return
            if line is None or line.startswith(done):
                return
            yield line


class DicomaccelPeer(Peer):
    """``dicomaccel serve`` (this checkout) with STOW-RS and the C-GET SCP on ephemeral ports."""

    name = "dicomaccel"
    ae_title = "DICOMACCEL"
    fsync = "never"
    workers = 1  # processes of ``dicomaccel serve --workers``: each serves STOW-RS and DIMSE
    # C-MOVE destinations, AE title -> (host, port); set by the cmove workload (benchmarks.cmove).
    move_destinations: dict[str, tuple[str, int]] = {}
    index_url: str | None = None  # --index (a PostgreSQL database); None: the embedded SQLite file
    _listen = re.compile(r"dicomaccel: (STOW-RS|C-GET SCP) on \S+://[^:/]+:(\d+)")

    def start(self, files: list[Path]) -> None:
        # --fsync never by default: durability of the load does not change what C-GET reads, only
        # how long loading takes. An ingest benchmark sets ``fsync = "always"``.
        cmd = [sys.executable, "-m", "dicomaccel.cli", "serve", "--data", str(self.workdir / "data"),
               "--host", "127.0.0.1", "--http-port", "0", "--dimse-port", "0", "--ae-title", self.ae_title,
               "--fsync", self.fsync, "--workers", str(self.workers), "--log-level", "warning",
               *(a for ae, (host, port) in self.move_destinations.items()
                 for a in ("--move-destination", f"{ae}={host}:{port}")),
               *(("--index", self.index_url) if self.index_url else ())]
        self.proc = spawn(cmd, log=self.log, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.http_port = None
        for line in _Lines(self.proc, self.log).until("dicomaccel: ready", 60):
            m = self._listen.search(line)
            if m and m.group(1) == "STOW-RS":
                self.http_port = int(m.group(2))
            elif m:
                self.port = int(m.group(2))
        if self.http_port is None or self.port is None:
            self.stop()
            raise PeerUnavailable(f"dicomaccel serve printed no 'C-GET SCP on' and 'STOW-RS on' lines "
                                  f"(C-GET SCP not wired into serve yet?): {self.log_tail(600)}")
        stow(self.http_port, files)

    def instance_count(self) -> int:
        """Instances in the index (what C-STORE stored; read while the server runs, WAL mode)."""
        import sqlite3

        with sqlite3.connect(f"file:{self.workdir / 'data' / 'index.sqlite3'}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT count(*) FROM instances").fetchone()[0]


class PrefilledDicomaccel(DicomaccelPeer):
    """``dicomaccel serve`` on a data directory that starts with a copy of ``index`` (an
    ``index.sqlite3`` built directly, :func:`benchmarks.corpus.qido_index`): searches over many
    instances without storing them first."""

    index: Path | None = None

    def start(self, files: list[Path]) -> None:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        if self.index is not None:
            shutil.copyfile(self.index, data / "index.sqlite3")
        super().start(files)


BOUNDARY = "dicomaccel-cget-bench"


def _batches(files: list[Path], max_count: int = 50, max_bytes: int = 256 << 20) -> Iterator[list[Path]]:
    batch: list[Path] = []
    size = 0
    for path in files:
        n = path.stat().st_size
        if batch and (len(batch) == max_count or size + n > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(path)
        size += n
    if batch:
        yield batch


def stow(port: int, files: list[Path], path: str = "/dicomweb/studies") -> None:
    """POST ``files`` to ``path`` on 127.0.0.1:``port`` as multipart/related (PS3.18 §10.5),
    streamed from disk, several instances per request; raise unless each is 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        for batch in _batches(files):
            head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            tail = f"--{BOUNDARY}--\r\n".encode()
            length = sum(len(head) + p.stat().st_size + 2 for p in batch) + len(tail)

            def body(batch: list[Path] = batch) -> Iterable[bytes]:
                for path in batch:
                    yield head
                    with open(path, "rb") as f:
                        while chunk := f.read(1 << 20):
                            yield chunk
                    yield b"\r\n"
                yield tail

            conn.request("POST", path, body=body(), headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
                "Content-Length": str(length), "Accept": "application/dicom+json"})
            resp = conn.getresponse()
            text = resp.read()[:500]
            if resp.status != 200:
                raise RuntimeError(f"STOW-RS load failed: HTTP {resp.status} {text!r}")
    finally:
        conn.close()


class DcmqrscpPeer(Peer):
    """DCMTK's ``dcmqrscp``, forking one child per association (its default mode).

    Single-process mode (``-s``) would keep all work in one PID, but DCMTK 3.6.7 as packaged by
    Debian crashes (SIGSEGV) in that mode after releasing an association that ran a C-GET; the
    forked child ends after its association anyway, so fork mode serves the same bytes the same
    way. Memory is therefore read from the parent and its children (see :class:`RssSampler`).
    """

    name = "dcmqrscp"
    ae_title = "DCMQRSCP"
    options: tuple[str, ...] = ()  # extra dcmqrscp command-line options, e.g. accepted transfer syntaxes
    client_titles = {"getscu": "GETSCU", "storescu": "STORESCU", "pynetdicom": "PYNETDICOM", "findscu": "FINDSCU",
                     "movescu": "MOVESCU"}
    # C-MOVE destinations, AE title -> (host, port): HostTable entries with their real ports.
    move_destinations: dict[str, tuple[str, int]] = {}

    @classmethod
    def unavailable(cls) -> str | None:
        missing = [p for p in ("dcmqrscp", "storescu") if dcmtk_program(p) is None]
        return f"DCMTK {', '.join(missing)} not installed (Debian package dcmtk)" if missing else None

    def _write_config(self, quota_mb: int) -> Path:
        storage = self.workdir / "db"
        storage.mkdir(exist_ok=True)
        # Host table: only C-MOVE destinations need real ports; we list the SCUs so the table
        # names every AE that talks to this archive. Quota: (max studies, max bytes per study).
        hosts = "\n".join([f"{entry} = ({title}, 127.0.0.1, 0)" for entry, title in self.client_titles.items()]
                          + [f"dest{i} = ({title}, {host}, {port})"
                             for i, (title, (host, port)) in enumerate(self.move_destinations.items())])
        cfg = self.workdir / "dcmqrscp.cfg"
        cfg.write_text(
            f"NetworkTCPPort = {self.port}\nMaxPDUSize = 131072\nMaxAssociations = 16\n\n"
            f"HostTable BEGIN\n{hosts}\nHostTable END\n\n"
            "VendorTable BEGIN\nVendorTable END\n\n"
            f"AETable BEGIN\n{self.ae_title} {storage} RW (200, {quota_mb}mb) ANY\nAETable END\n"
        )
        return cfg

    def start(self, files: list[Path]) -> None:
        self.port = free_port()
        # dcmqrscp deletes the oldest images of a study that outgrows its quota: keep the usual
        # 1024 MB unless the corpus is bigger.
        cfg = self._write_config(max(1024, 2 * sum(p.stat().st_size for p in files) >> 20))
        self.proc = spawn([dcmtk_program("dcmqrscp"), *self.options, "-c", str(cfg), str(self.port)], log=self.log,
                          env=dcmtk_env(), cwd=self.workdir)
        if not came_up(self.proc, self.port):
            self.stop()
            raise PeerUnavailable(f"dcmqrscp did not listen on {self.port}: {self.log_tail(600)}")
        if not files:  # an empty archive, for a benchmark that stores into it
            return
        done = subprocess.run(
            [dcmtk_program("storescu"), "-aet", self.client_titles["storescu"], "-aec", self.ae_title,
             "127.0.0.1", str(self.port), *map(str, files)],
            env=dcmtk_env(), capture_output=True, text=True, timeout=1800)
        if done.returncode != 0 or "E: " in done.stderr:
            raise RuntimeError(f"storescu into dcmqrscp failed ({done.returncode}): {done.stderr[-1000:]}")


    def instance_count(self) -> int:
        """Instances in dcmqrscp's storage area (one file each, besides its index)."""
        return sum(1 for p in (self.workdir / "db").iterdir() if p.is_file() and p.name != "index.dat")


class PynetdicomPeer(Peer):
    """The baseline pynetdicom C-GET SCP (:mod:`benchmarks.pynetdicom_scp`) on its own directory."""

    name = "pynetdicom"
    ae_title = "PYNETDICOM_SCP"

    def start(self, files: list[Path]) -> None:
        # The SCP indexes its directory at start-up, so the files go in first (hard links).
        target = self.workdir / "files"
        target.mkdir(exist_ok=True)
        for i, path in enumerate(files):
            dest = target / f"{i:06d}-{path.name}"
            try:
                os.link(path, dest)
            except OSError:
                shutil.copyfile(path, dest)
        cmd = [sys.executable, "-m", "benchmarks.pynetdicom_scp", "--dir", str(self.workdir / "files"),
               "--port", "0", "--ae-title", self.ae_title]
        self.proc = spawn(cmd, log=self.log, env=dict(os.environ, PYTHONUNBUFFERED="1"), cwd=REPO)
        for line in _Lines(self.proc, self.log).until("pynetdicom-scp: ready", 60):
            if m := re.search(r"C-GET SCP on dicom://[\d.]+:(\d+)", line):
                self.port = int(m.group(1))
        if self.port is None:
            self.stop()
            raise PeerUnavailable(f"pynetdicom SCP did not start: {self.log_tail(600)}")


# storescp logs each C-STORE request at INFO level (one short write each, all the log costs it),
# which the count below reads; at INFO level it would also print a progress dot per received PDU
# to stdout (its "progress" logger), a write per PDU the ceiling must not pay and a pipe nobody
# reads. Its log goes to stderr, the server log.
STORESCP_LOG_CONFIG = """\
log4cplus.rootLogger = INFO, stderr
log4cplus.logger.dcmtk.apps.storescp.progress = WARN
log4cplus.appender.stderr = log4cplus::ConsoleAppender
log4cplus.appender.stderr.logToStdErr = true
log4cplus.appender.stderr.layout = log4cplus::PatternLayout
log4cplus.appender.stderr.layout.ConversionPattern = %p: %m%n
"""


def build_c(source: str, where: Path, libs: tuple[str, ...] = ()) -> Path | None:
    """``benchmarks/<source>`` compiled (gcc -O2 -pthread, linked with ``libs``) into ``where``;
    None without a C compiler."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        return None
    binary = where / Path(source).stem
    subprocess.run([gcc, "-O2", "-pthread", "-o", str(binary), str(Path(__file__).with_name(source)), *libs],
                   check=True)
    return binary


class StorescpIgnorePeer(Peer):
    """DCMTK's ``storescp --ignore`` on a free port: it receives each data set whole, discards it
    and answers Success, writing nothing. It is the C-STORE receiver that does the least, so
    ``storescu`` into it is the ceiling of the ``cstore`` workload on this machine; it stores
    nothing, so it cannot be loaded for retrieval."""

    name = "storescp-ignore"
    ae_title = "STORESCP"
    # --fork: one child per association, as dcmqrscp serves them; in its default single-process
    # mode storescp takes one association at a time, and N storescu at once would queue.
    # +xa: accept every transfer syntax storescu proposes (a compressed corpus goes as stored);
    # -pm: and any SOP class. -pdu: its largest Maximum Length, which storescu caps what it sends
    # at too: the same PDUs as into dcmqrscp (131072 configured) and dicomaccel (1 MiB offered).
    options: tuple[str, ...] = ("--fork", "+xa", "-pm", "-pdu", "131072")

    @classmethod
    def unavailable(cls) -> str | None:
        return None if dcmtk_program("storescp") else "DCMTK storescp not installed (Debian package dcmtk)"

    def start(self, files: list[Path]) -> None:
        if files:
            raise PeerUnavailable("storescp --ignore keeps nothing: it cannot be loaded")
        self.port = free_port()
        log_config = self.workdir / "storescp-log.cfg"
        log_config.write_text(STORESCP_LOG_CONFIG)
        self.proc = spawn([dcmtk_program("storescp"), "--log-config", str(log_config), *self.options, "--ignore",
                           "-aet", self.ae_title, str(self.port)], log=self.log, env=dcmtk_env(), cwd=self.workdir)
        if not came_up(self.proc, self.port):
            self.stop()
            raise PeerUnavailable(f"storescp did not listen on {self.port}: {self.log_tail(600)}")

    def instance_count(self) -> int:
        """C-STORE requests it answered Success: those it logged as received, less those it
        logged ``Store SCP Failed`` for (the data set or the answer did not get through); with
        ``--ignore`` it answers every other one Success. Counted by the receiver, as the other
        peers' stored instances are, not from the sender's log that times the run. Substrings,
        not lines: each message is one write, but the forked children's lines interleave."""
        text = self.log.read_text(errors="replace")
        return text.count("Received Store Request") - text.count("Store SCP Failed")


class CStoreFloorPeer(Peer):
    """``benchmarks/cstore_floor.c`` on an ephemeral 127.0.0.1 port: per C-STORE it writes the data
    set to a new file as the PDVs arrive (starting their writeback at once), fdatasyncs it and
    fsyncs the directory, then answers
    Success; nothing is parsed or indexed. ``storescu`` into it is the least time a C-STORE SCP
    that acknowledges only durable instances can take here, as ``floor.c`` is for STOW-RS."""

    name = "cstore-floor"
    ae_title = "FLOOR"

    @classmethod
    def unavailable(cls) -> str | None:
        return None if shutil.which("gcc") or shutil.which("cc") else "no C compiler to build benchmarks/cstore_floor.c"

    def start(self, files: list[Path]) -> None:
        if files:
            raise PeerUnavailable("the C-STORE floor keeps no index: it cannot be loaded")
        binary = build_c("cstore_floor.c", self.workdir)
        self.files = self.workdir / "files"
        self.files.mkdir(exist_ok=True)
        self.proc = spawn([str(binary), str(self.files)], log=self.log, cwd=self.workdir)
        line = self.proc.stdout.readline()
        if not line.startswith("port "):
            self.stop()
            raise PeerUnavailable(f"cstore_floor did not start: {self.log_tail(600)}")
        self.port = int(line.split()[1])

    def instance_count(self) -> int:
        """Data sets it flushed and acknowledged: one file each (an aborted one would leave a
        file too; the benchmark's storescu runs abort none, and a failed run is reported)."""
        return sum(1 for _ in self.files.iterdir())


PEERS: dict[str, type[Peer]] = {p.name: p for p in (DicomaccelPeer, DcmqrscpPeer, PynetdicomPeer)}


class RssSampler:
    """Peak resident set of a peer's processes over a ``with`` block, in MiB.

    On entry, writes 5 to each process's ``clear_refs``, which resets VmHWM to the current RSS
    (proc(5)); during the block, samples VmHWM of the server and its children every
    ``interval`` seconds; on exit, samples once more. Sampling matters for dcmqrscp, whose
    per-association child is gone (with its VmHWM) when the C-GET ends; its last sample is at
    most ``interval`` old. The same sampler runs for every peer so its small CPU cost is shared.
    """

    def __init__(self, peer: Peer, interval: float = 0.005) -> None:
        self.peer = peer
        self.interval = interval
        self.peak_kib: dict[int, int] = {}
        self.cpu_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for pid in self.peer.pids():
            self.peak_kib[pid] = max(self.peak_kib.get(pid, 0), vm_hwm_kib(pid))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()
        self.cpu_s = time.thread_time()  # what sampling cost this process (the harness)

    @property
    def peak_mib(self) -> float:
        """The largest VmHWM of any one process (the server, or the child that ran the C-GET)."""
        return max(self.peak_kib.values(), default=0) / 1024

    def __enter__(self) -> RssSampler:
        for pid in self.peer.pids():
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
