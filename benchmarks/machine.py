"""The machine the benchmarks run on: what it is, what it can do, and what it is doing.

- :func:`limits`: the disk and loopback limits that bound a server, measured in the same run
  (sequential write + fdatasync; small files with fdatasync, with and without a directory
  fsync; loopback TCP; the sender CPU of one instance over loopback, framed as P-DATA-TF
  PDUs and whole);
- :func:`stow_floor`: the STOW-RS floor, a minimal C server (``floor.c``) that only reads each
  request and makes its body a durable file, driven by the same clients as the servers;
- :func:`design_floor`: dicomaccel's own per-request work in C (``design_floor.c``), the same
  way: how far the design goes on this machine without the interpreter;
- :func:`front_end`: dicomaccel's HTTP server and STOW-RS application alone, over an archive
  that keeps nothing (:mod:`benchmarks.front_end`), the same way: the event loop's own share;
- :func:`archive_alone`: dicomaccel's archive alone, storing the same instances through its
  blocking API (:mod:`benchmarks.archive_alone`): the share behind the event loop;
- :func:`release_files`: how every run's files are cleaned up on this VM (emptied, kept);
- :func:`core_times` / :func:`core_busy`: the share of each core busy over a run;
- :func:`harness_cpu_s`: CPU of this process and the clients it ran;
- :func:`machine` and :func:`versions`: what the report names.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import multiprocessing
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pynetdicom

from benchmarks.orthanc import version as orthanc_version
from benchmarks.peers import REPO, build_c, dcmtk_program

def _write_file(path: Path, data: bytes, chunk: int, directory: int | None = None) -> None:
    """Write ``data`` to a new file in ``chunk``-byte writes, fdatasync and close it; then fsync
    ``directory`` (an open descriptor) if given, as a store that makes the new name durable does."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        for i in range(0, len(view), chunk):
            os.write(fd, view[i:i + chunk])
        os.fdatasync(fd)
    finally:
        os.close(fd)
    if directory is not None:
        os.fsync(directory)


def seq_write_mbps(where: Path, total: int = 256 << 20, chunk: int = 8 << 20, reps: int = 3) -> list[float]:
    """MB/s of writing ``total`` bytes to one file in ``chunk``-byte writes plus one fdatasync."""
    data, out = os.urandom(chunk) * (total // chunk), []
    for _ in range(reps):
        t = time.perf_counter()
        _write_file(where / "seq.bin", data, chunk)
        out.append(total / (time.perf_counter() - t) / 1e6)
        os.unlink(where / "seq.bin")
    return out


def files_per_s(where: Path, size: int, threads: int, dir_sync: bool, seconds: float = 2.0,
                most: int = 1000) -> float:
    """Files/s of ``threads`` threads each writing ``size``-byte files (write, fdatasync, close,
    and with ``dir_sync`` an fsync of the directory) for ``seconds`` or ``most`` files each."""
    directory = where / f"files-{threads}-{int(dir_sync)}"
    directory.mkdir()
    data = os.urandom(size)
    dfd = os.open(directory, os.O_RDONLY)
    counts = [0] * threads

    def writer(k: int) -> None:
        deadline = time.perf_counter() + seconds
        while counts[k] < most and time.perf_counter() < deadline:
            _write_file(directory / f"{k}-{counts[k]}", data, size, dfd if dir_sync else None)
            counts[k] += 1

    t = time.perf_counter()
    pool = [threading.Thread(target=writer, args=(k,)) for k in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    rate = sum(counts) / (time.perf_counter() - t)
    os.close(dfd)
    shutil.rmtree(directory)
    return rate


def _tcp_send(port: int, total: int, chunk: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        block = b"\0" * chunk
        for _ in range(total // chunk):
            s.sendall(block)


def tcp_mbps(total: int = 1 << 30, chunk: int = 1 << 20) -> float:
    """MB/s of ``total`` bytes over loopback TCP from a sender process (``chunk``-byte sends) to
    this one, timed by the receiver from accepting the connection to the sender's close."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = multiprocessing.get_context("fork").Process(
            target=_tcp_send, args=(server.getsockname()[1], total, chunk), daemon=True)
        sender.start()
        conn, _ = server.accept()
        t, got, buf = time.perf_counter(), 0, bytearray(chunk)
        with conn:
            while n := conn.recv_into(buf):
                got += n
        seconds = time.perf_counter() - t
    sender.join()
    if got != total:
        raise RuntimeError(f"loopback TCP: received {got} of {total} bytes")
    return total / seconds / 1e6


def _drain(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        buf = bytearray(1 << 20)
        while s.recv_into(buf):
            pass


def send_cpu_ms(files: list[Path], pdu: int, rounds: int = 400) -> dict:
    """Sender CPU (ms, this thread's user + system time) per file to send ``files`` in turn over
    loopback TCP to a draining process, each opened per send as a C-GET SCP reads its archive
    (their pages in the page cache), median of 3 batches of ``rounds`` sends:

    - ``framed``: as a C-GET sub-operation must, P-DATA-TF PDUs of at most ``pdu`` bytes (the
      receiver's Maximum Length, PS3.8 D.1), each a 12-byte header and a slice of the file
      mapped for the send, 32 buffers per ``sendmsg``;
    - ``whole``: the file in one ``sendfile`` (no framing: what no DIMSE sender can do; the
      kernel's least).
    """
    fragment = (pdu - 6) & ~1  # PS3.8 D.1: PDU length minus the 6-byte PDV item header
    header = bytes(12)

    def framed(conn: socket.socket, fd: int, size: int) -> None:
        with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mm, memoryview(mm) as view:
            parts = []
            for off in range(0, size, fragment):
                parts += [header, view[off:off + fragment]]
            for i in range(0, len(parts), 32):
                sent = conn.sendmsg(parts[i:i + 32])
                if sent < sum(map(len, parts[i:i + 32])):
                    conn.sendall(b"".join(parts[i:i + 32])[sent:])
            parts.clear()  # the slices go before the map closes

    def whole(conn: socket.socket, fd: int, size: int) -> None:
        off = 0
        while off < size:
            off += os.sendfile(conn.fileno(), fd, off, size - off)

    out = {}
    with socket.create_server(("127.0.0.1", 0)) as server:
        receiver = multiprocessing.get_context("fork").Process(
            target=_drain, args=(server.getsockname()[1],), daemon=True)
        receiver.start()
        conn, _ = server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            for name, send in (("framed", framed), ("whole", whole)):
                runs = []
                for _ in range(3):
                    before = resource.getrusage(resource.RUSAGE_THREAD)
                    for i in range(rounds):
                        fd = os.open(files[i % len(files)], os.O_RDONLY)
                        try:
                            send(conn, fd, os.fstat(fd).st_size)
                        finally:
                            os.close(fd)
                    after = resource.getrusage(resource.RUSAGE_THREAD)
                    runs.append((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
                                / rounds * 1e3)
                out[name] = statistics.median(runs)
        receiver.join()
    return out


def limits(where: Path, file_size: int, instances: list[Path] | None = None, pdu: int = 16384) -> dict:
    """Disk and loopback limits of this machine in ``where``'s file system (see the report)."""
    print(f"measuring disk and loopback limits in {where} ...", flush=True)
    seq = seq_write_mbps(where)
    # The fastest repetition: a slower one met pages the guest had handed back to its host
    # (see PAGE_REPORTING), which lowers a run but never raises it.
    out = {"filesystem": str(where), "seq_write_mbps": max(seq), "seq_write_runs": seq,
           "file_bytes": file_size,
           "files_per_s": {str(n): {"write + fdatasync + close": files_per_s(where, file_size, n, False),
                                    "write + fdatasync + close + directory fsync":
                                        files_per_s(where, file_size, n, True)}
                           for n in (1, 4)},
           "tcp_mbps": tcp_mbps()}
    if instances:
        out["send_cpu_ms"] = send_cpu_ms(instances, pdu)
        out["send_pdu"] = pdu
    print(f"limits: sequential write+fdatasync {out['seq_write_mbps']:.0f} MB/s, loopback TCP "
          f"{out['tcp_mbps']:.0f} MB/s, {file_size} B files/s (1 and 4 threads) "
          f"{', '.join(f'{v:.0f}' for n in out['files_per_s'].values() for v in n.values())}", flush=True)
    return out



def release_files(directory: Path) -> None:
    """Empty every file of a finished run and keep the inodes until the harness ends.

    Both ways of cleaning up between runs bias the next run on a VM whose root file system is
    ext4 without a journal: deleting files makes every file creation of the next run scan past
    the recently deleted inodes (a third of a server's CPU in a measured case), and keeping the
    data makes the next run fill never-touched guest pages (new page-cache pages cost about
    1 ms per 0.5 MB cold, 0.16 ms recycled). Truncating frees the pages for reuse and deletes
    no inode."""
    for root, _, names in os.walk(directory):
        for name in names:
            try:
                os.truncate(os.path.join(root, name), 0)
            except OSError:
                pass


def stow_floor(where: Path, bodies: list[tuple[bytes, int]], clients: tuple[int, ...] = (1, 4),
               runs: int = 3) -> dict:
    """Requests/s and server CPU ms per request of ``floor.c`` for ``bodies`` (one instance
    each), per client count: the median of ``runs`` (see the report). Empty if gcc is missing."""
    binary = build_c("floor.c", where)
    if binary is None:
        return {}
    out = _floor_runs([str(binary)], lambda run: run.mkdir(), where / "floor", bodies, clients, runs)
    print("STOW-RS floor: " + ", ".join(f"{n} client(s) {v['per_s']:.0f}/s" for n, v in out.items()), flush=True)
    return out


def design_floor(where: Path, files: list[Path], bodies: list[tuple[bytes, int]],
                 clients: tuple[int, ...] = (1, 4), runs: int = 3) -> dict:
    """As :func:`stow_floor`, for ``design_floor.c``: dicomaccel's per-request work (temp file,
    early writeback, publication by rename and link, the index transaction's own SQLite
    statements, syncfs) in C, into an archive :func:`design_template` made of ``files``. Each
    run checks that the index holds a row for every request. Empty without gcc or SQLite's
    header (Debian package libsqlite3-dev)."""
    import sqlite3

    if len(files) < 2:  # the template's statements are those of a second instance in its series
        print("design floor: not measured: it needs a corpus of 2 instances or more", flush=True)
        return {}
    try:
        binary = build_c("design_floor.c", where, libs=("-lsqlite3",))
    except subprocess.CalledProcessError:
        print("design floor: not measured: design_floor.c did not build (libsqlite3-dev missing?)", flush=True)
        return {}
    if binary is None:
        return {}
    template = design_template(where / "design-template", files)

    def check(run: Path, requests: int) -> None:
        with contextlib.closing(sqlite3.connect(run / "index.sqlite3")) as conn:
            rows = conn.execute("SELECT count(*) FROM instances").fetchone()[0]
        if rows != 2 + requests:
            raise RuntimeError(f"design_floor indexed {rows - 2} of {requests} requests")

    out = _floor_runs([str(binary)], lambda run: shutil.copytree(template, run), where / "design", bodies,
                      clients, runs, check)
    print("design floor: " + ", ".join(f"{n} client(s) {v['per_s']:.0f}/s" for n, v in out.items()), flush=True)
    return out


def _child_env() -> dict:
    """The environment of a Python child of the harness: it imports benchmarks from this
    checkout, and dicomaccel as this process does."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH")))))


# The front end keeps nothing, so it takes the corpus this many times per run (see front_end).
FRONT_END_PASSES = 5


def front_end(where: Path, bodies: list[tuple[bytes, int]], clients: tuple[int, ...] = (1, 4),
              runs: int = 3) -> dict:
    """As :func:`stow_floor`, for dicomaccel's STOW-RS front end alone (:mod:`benchmarks.front_end`:
    what ``dicomaccel serve`` answers HTTP with, in one process, over an archive that keeps
    nothing): the event loop's own work per request. Its rate is one process's, where the
    servers run ``--workers``; its CPU per request is what compares. ``bodies`` are posted
    :data:`FRONT_END_PASSES` times per run: /proc counts CPU in clock ticks (10 ms), which over
    200 requests of 0.3 ms is a sixth of the figure."""
    from benchmarks import front_end as module

    env = _child_env()
    out = _floor_runs([sys.executable, "-m", "benchmarks.front_end"], lambda run: run.mkdir(),
                      where / "front", bodies * FRONT_END_PASSES, clients, runs, path=module.PATH, env=env,
                      answers_stored=True)
    print("STOW-RS front end alone: " + ", ".join(f"{n} client(s) {v['per_s']:.0f}/s at {v['cpu_ms']:.2f} ms"
                                                  for n, v in out.items()), flush=True)
    return out


def archive_alone(where: Path, files: list[Path], clients: tuple[int, ...] = (1, 4),
                  runs: int = 3, workers: int = 2) -> dict:
    """Instances/s and CPU ms per instance of dicomaccel's archive alone
    (:mod:`benchmarks.archive_alone`: ``files`` stored through the blocking API, no HTTP),
    per client count, the median of ``runs`` after one untimed run, as for the floors. Like
    ``serve --workers``, up to ``workers`` processes share one archive, each storing its share
    of the corpus from its share of the clients' threads; all start storing together. Its CPU
    per instance is what compares with a server row's; with :func:`front_end` it splits
    where that CPU goes."""
    import sqlite3

    from dicomaccel.archive import Archive

    env = _child_env()
    out = {}
    for n in clients:
        procs = max(1, min(n, workers))
        threads = [n // procs + (i < n % procs) for i in range(procs)]
        rates, cpus = [], []
        for attempt in range(runs + 1):
            run = where / f"archive-{n}-{attempt}"
            Archive(run).close()  # made, and recovered, once: its processes share it
            children = [subprocess.Popen(
                [sys.executable, "-m", "benchmarks.archive_alone", str(run), str(t), *map(str, files[i::procs])],
                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for i, t in enumerate(threads)]
            try:
                for child in children:
                    if child.stdout.readline().strip() != "ready":
                        raise RuntimeError(f"archive alone did not start: {child.communicate()[1].strip()[-500:]}")
                for child in children:  # all store at once
                    child.stdin.write("go\n")
                    child.stdin.flush()
                results = []
                for child in children:
                    stdout, stderr = child.communicate(timeout=600)
                    if child.returncode:
                        raise RuntimeError(f"archive alone failed: {stderr.strip()[-500:]}")
                    results.append(json.loads(stdout))
                with contextlib.closing(sqlite3.connect(run / "index.sqlite3")) as conn:
                    rows = conn.execute("SELECT count(*) FROM instances").fetchone()[0]
                if rows != len(files) or sum(r["stored"] for r in results) != len(files):
                    raise RuntimeError(f"archive alone stored {rows} of {len(files)} instances")
            finally:
                for child in children:
                    if child.poll() is None:
                        child.kill()
                        child.wait()
                release_files(run)
            if attempt:
                rates.append(len(files) / max(r["seconds"] for r in results))
                cpus.append(1e3 * sum(r["cpu_s"] for r in results) / len(files))
        out[str(n)] = {"per_s": statistics.median(rates), "runs": rates, "cpu_ms": statistics.median(cpus),
                       "processes": procs}
    print("STOW-RS archive alone: " + ", ".join(f"{n} client(s) {v['per_s']:.0f}/s at {v['cpu_ms']:.2f} ms"
                                                for n, v in out.items()), flush=True)
    return out


def design_template(root: Path, files: list[Path]) -> Path:
    """An archive made by dicomaccel's own :class:`~dicomaccel.archive.Archive` (its defaults:
    SQLite index, fsync) holding ``files[0]`` and ``files[1]`` (instances of one series), with
    ``design.sql`` for ``design_floor.c``: the series directory, then the statements the index
    ran to commit the second instance, its SOP Instance UID and path made parameters ?1 and ?2.
    So the design floor runs the schema and statements of the code under test, whatever they
    are at the time."""
    from dicomaccel.archive import Archive

    archive = Archive(str(root))
    statements: list[str] = []
    try:
        for i, path in enumerate(files[:2]):
            incoming = archive.begin()
            incoming.write(path.read_bytes())
            # The writer connection is the index's own: what it runs for one commit is traced.
            archive.index._writer.set_trace_callback(statements.append if i else None)
            record = incoming.commit().record
        archive.index._writer.set_trace_callback(None)
    finally:
        archive.close()
    rel = os.path.relpath(record.path, root).replace(os.sep, "/")
    body = [s.replace(f"'{record.sop_instance_uid}'", "?1").replace(f"'{rel}'", "?2").replace("\n", " ")
            for s in statements if s not in ("BEGIN IMMEDIATE", "COMMIT")]
    if not any("?1" in s and "?2" in s for s in body):
        raise RuntimeError(f"no statement of the traced commit names the instance: {body}")
    (root / "design.sql").write_text("\n".join([rel.rpartition("/")[0], *body]) + "\n")
    return root


def _floor_runs(command: list[str], prepare, where: Path, bodies: list[tuple[bytes, int]],
                clients: tuple[int, ...], runs: int, check=None, path: str = "/", env=None,
                answers_stored: bool = False) -> dict:
    """``command DIRECTORY`` (prepared by ``prepare(DIRECTORY)``; it prints "port N") driven by
    the STOW-RS clients posting ``bodies`` to ``path``, for each client count;
    ``check(DIRECTORY, requests)`` after each run. ``answers_stored``: the server answers Store
    Instances Responses, each of which must report its instance stored."""
    from benchmarks.clients import stow_run  # clients imports this module's neighbours only
    from benchmarks.peers import process_cpu_s

    out = {}
    for n in clients:
        rates, cpus = [], []
        # One untimed run first: on this VM a page-cache page touched for the first time costs
        # ~1 ms per 0.5 MB, so a cold first run measures the hypervisor, not the floor (the
        # servers' runs reuse pages the earlier runs freed).
        for attempt in range(runs + 1):
            run = where.with_name(f"{where.name}-{n}-{attempt}")
            prepare(run)
            proc = subprocess.Popen([*command, str(run)], stdout=subprocess.PIPE, text=True, env=env)
            try:
                port = int(proc.stdout.readline().split()[1])
                cpu = process_cpu_s(proc.pid)
                result = stow_run(port, path, bodies, n)
                if answers_stored and result["accepted"] != len(bodies):
                    raise RuntimeError(f"{command[-1]} stored {result['accepted']} of {len(bodies)} instances")
                if attempt:
                    cpus.append(1e3 * (process_cpu_s(proc.pid) - cpu) / len(bodies))
                    rates.append(len(bodies) / result["seconds"])
            finally:
                proc.kill()
                proc.wait()
            if check is not None:
                check(run, len(bodies))
            release_files(run)
        out[str(n)] = {"per_s": statistics.median(rates), "runs": rates, "cpu_ms": statistics.median(cpus)}
    return out


def harness_cpu_s() -> float:
    """CPU seconds of this process and of its children that have ended (and been waited for)."""
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def core_times() -> list[tuple[int, int]]:
    """(busy, total) jiffies of every core, from /proc/stat (proc(5))."""
    out = []
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name != "cpu":
            ticks = [int(f) for f in fields[:8]]
            out.append((sum(ticks) - ticks[3] - ticks[4], sum(ticks)))  # idle, iowait
    return out


def core_busy(before: list[tuple[int, int]]) -> list[float]:
    """Share of each core busy since ``before`` (everything on the machine: server, clients,
    kernel threads flushing to disk)."""
    return [(b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
            for (b0, t0), (b1, t1) in zip(before, core_times())]


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# Free page reporting (virtio-balloon): the guest hands free memory back to the host, and the
# next touch of such a page faults in the hypervisor (measured on the development VM: 3.6 us
# per 4 KiB page, ~1.8 ms per 0.5 MB), so how much was reported during a run says how much of
# its memory, page cache included, it had to take fresh.
PAGE_REPORTING = Path("/sys/module/page_reporting/parameters")


def page_reporting() -> dict | None:
    """The guest's free page reporting settings, or None where there is none."""
    try:
        return {"block_kib": 4 << int((PAGE_REPORTING / "page_reporting_order").read_text()),
                "min_free_ms": int((PAGE_REPORTING / "min_free_ms").read_text())}
    except (OSError, ValueError):
        return None


def reported_kib() -> int | None:
    """KiB of free memory reported to the host so far (None without free page reporting)."""
    try:
        return int((PAGE_REPORTING / "reported_kib").read_text())
    except (OSError, ValueError):
        return None


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / 2**20, 1),
            "kernel": platform.release(), "os": _os_release(), "python": platform.python_version(),
            "page_reporting": page_reporting()}


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def versions() -> dict:
    import dicomaccel
    from dicomaccel import frames
    getscu = dcmtk_program("getscu")
    dcmtk = subprocess.run([getscu, "--version"], capture_output=True, text=True).stdout.split("\n")[0] if getscu else ""
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
    out = {"dicomaccel": f"{getattr(dicomaccel, '__version__', '0.1.0')} @ {rev.stdout.strip() or '?'}"
                         f"{' + uncommitted changes' if dirty.stdout.strip() else ''}",
           "dicomaccel kernels": "compiled" if "_c" in frames.NativeFrames.__module__ else "pure Python",
           "pydicom": pydicom.__version__, "pynetdicom": pynetdicom.__version__, "numpy": np.__version__,
           "DCMTK": dcmtk.strip("$ ") or "absent", "Orthanc": orthanc_version() or "absent"}
    try:
        import openjpeg
        out["pylibjpeg-openjpeg"] = openjpeg.__version__
    except ImportError:
        pass
    return out

