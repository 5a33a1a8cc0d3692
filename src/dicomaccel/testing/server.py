"""A real ``dicomaccel serve`` process on 127.0.0.1, and other helpers for process-level tests."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_LISTEN = re.compile(r"dicomaccel: (STOW-RS|C-GET SCP|DICOM TLS) on (\S+)")


@dataclass
class RunningServer:
    process: subprocess.Popen
    data: Path
    log: Path
    http_url: str | None = None
    dimse_port: int | None = None
    dimse_tls_port: int | None = None
    index: str | None = None  # the --index URL; None: SQLite in ``data`` (open it with Archive(data, index=...))
    announced: str = ""  # what it printed on its standard output up to "dicomaccel: ready"

    @property
    def stow_url(self) -> str:
        return f"{self.http_url}/dicomweb"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def start_server(data: Path, *args: str, timeout: float = 30,
                 filesystem: SmallFilesystem | None = None) -> RunningServer:
    """Start ``dicomaccel serve`` on ephemeral 127.0.0.1 ports and wait until it listens.

    ``args`` are more ``serve`` options. The server's stderr goes to ``<data>-server.log``
    beside ``data``; its "dicomaccel: STOW-RS on ..." and "C-GET SCP on ..." lines give the
    URL and port. Stop it with :meth:`RunningServer.stop`.

    ``filesystem``: run the server in that :class:`SmallFilesystem`'s namespace (``data``
    inside its directory), where the disk fills up for real.
    """
    data.mkdir(parents=True, exist_ok=True)
    log = data.parent / f"{data.name}-server.log"
    cmd = [sys.executable, "-m", "dicomaccel.cli", "serve", "--data", str(data), "--host", "127.0.0.1",
           "--http-port", "0", "--log-level", "warning", *args]
    if "--dimse-port" not in args:
        cmd += ["--dimse-port", "0"]
    if filesystem is not None:
        cmd = filesystem.command() + cmd
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "ab") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, text=True)
    index = args[args.index("--index") + 1] if "--index" in args[:-1] else None
    server = RunningServer(proc, data, log, index=index)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line or line.startswith("dicomaccel: ready"):
            break
        server.announced += line
        m = _LISTEN.search(line)
        if m:
            port = int(m.group(2).rsplit(":", 1)[1].split()[0]) if m.group(1) != "STOW-RS" else None
            if m.group(1) == "STOW-RS":
                server.http_url = m.group(2).split("/dicomweb")[0]
            elif m.group(1) == "DICOM TLS":
                server.dimse_tls_port = port
            else:
                server.dimse_port = port
    if server.http_url is None:
        server.stop(signal.SIGKILL)
        raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")
    return server


class SmallFilesystem:
    """A tmpfs of ``size`` bytes mounted on ``directory`` where only servers started with it
    (``start_server(..., filesystem=it)``) see it: a real disk that fills up, without root.

    A holder process makes a user and a mount namespace (unshare(1); unprivileged user
    namespaces suffice), mounts the tmpfs in it and sleeps; servers join that namespace
    (nsenter(1) execs them in the same process, so signals reach them), and the file system
    outlives each of them, so a restart meets the disk as the last run left it. Read its files
    through :meth:`path` (``/proc/<holder>/root``). Raises RuntimeError where namespaces or
    tmpfs mounts are not allowed.
    """

    def __init__(self, directory: Path, size: int) -> None:
        missing = [tool for tool in ("unshare", "nsenter") if shutil.which(tool) is None]
        if missing:
            raise RuntimeError(f"cannot mount a tmpfs in a namespace here: no {' or '.join(missing)} (util-linux)")
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        try:
            self._holder = subprocess.Popen(
                ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                 f'mount -t tmpfs -o size={size} tmpfs "$0" && echo mounted && exec sleep infinity',
                 str(directory)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        except FileNotFoundError as exc:
            raise RuntimeError(f"cannot mount a tmpfs in a namespace here: {exc}") from None
        if self._holder.stdout.readline().strip() != "mounted":
            self._holder.wait(10)
            raise RuntimeError(f"cannot mount a tmpfs in a namespace here: {self._holder.stderr.read().strip()}")

    def command(self) -> list[str]:
        """The prefix that runs a program inside the namespace."""
        return ["nsenter", "--target", str(self._holder.pid), "--user", "--mount", "--preserve-credentials"]

    def path(self, relative: str = "") -> Path:
        """A path under the mounted directory, as the servers see it."""
        return Path(f"/proc/{self._holder.pid}/root") / str(self.directory).lstrip("/") / relative

    def free_bytes(self) -> int:
        st = os.statvfs(self.path())
        return st.f_bavail * st.f_frsize

    def close(self) -> None:
        self._holder.kill()
        self._holder.wait(10)


def memory_kib(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of a process in KiB from /proc/PID/status (proc(5)): ``VmRSS`` (now),
    ``VmHWM`` (peak; write ``5`` to /proc/PID/clear_refs to reset it)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise ValueError(f"no {field} in /proc/{pid}/status")


def at_once(count: int, one: Callable[[], object], timeout: float = 60) -> list:
    """Run ``one`` in ``count`` threads released together by a barrier (connections opened at
    the same instant, to see which worker takes which); what each returned, as they finished."""
    barrier = threading.Barrier(count)
    out: list = []

    def run() -> None:
        barrier.wait()
        out.append(one())

    threads = [threading.Thread(target=run) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert len(out) == count, f"{count - len(out)} of {count} did not finish"
    return out


def worker_pids(supervisor: int) -> list[int]:
    """The processes ``supervisor`` forked and that still run: the workers of ``dicomaccel
    serve --workers N``, the per-association children of a forking SCP."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == supervisor:
                    out.append(int(entry.name))
            except OSError:
                continue
    return sorted(out)


def connections_held(pid: int, port: int, states: tuple[str, ...] = ("01",)) -> int:
    """TCP connections to local ``port`` whose socket process ``pid`` holds (from /proc/net/tcp
    and the process's file descriptors), in ``states`` as /proc/net/tcp writes them: ``"01"``
    established, ``"08"`` closed by the peer and not yet by the process (CLOSE_WAIT)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] in states:
            inodes.add(fields[9])
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            held += 1
    return held


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def dcmtk_program(name: str) -> str | None:
    """Path of DCMTK's ``name``, or None. pynetdicom installs same-named Python apps (``getscu``,
    ``storescu``) on PATH, so /usr/bin comes first and the candidate must say it is DCMTK."""
    for candidate in (f"/usr/bin/{name}", shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK):
            try:
                out = subprocess.run([candidate, "--version"], capture_output=True, text=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if "$dcmtk:" in out.stdout + out.stderr:
                return candidate
    return None
