"""Both services in one event loop: DICOMweb on :mod:`.http_server` and the DIMSE SCPs,
sharing one archive.

With ``workers > 1`` a supervisor process recovers the archive, binds the ports and forks
that many workers. Every worker serves DICOMweb on the one shared HTTP socket and DIMSE on the
shared DIMSE sockets (plain and TLS), each new connection going to the worker that holds
fewest of its kind (:mod:`.accept`, one board for HTTP, one for DIMSE), so ingest uses every
core. ``--max-associations`` holds for all workers together: each claims an association on
a ledger the supervisor made (:func:`.dimse.server.association_ledger`). The workers share the data
directory and the SQLite index (WAL mode allows several writer processes; each worker's
group commit takes SQLite's write lock for one short transaction per batch), or the
PostgreSQL index that several nodes share (``--index``, docs/deployment.md).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import uvloop

from . import memory
from .accept import Account, LoadBoard, Seat
from .archive import Archive
from .config import ServeConfig, without_password
from .dimse import start_dimse_server
from .dimse.messages import C_FIND_RQ, C_GET_RQ, C_MOVE_RQ, C_STORE_RQ, N_ACTION_RQ
from .dimse.requestor import RemoteAE
from .dimse.server import association_ledger
from .http_server import HTTPLimits, HTTPServer
from .policy.store import StorePolicy
from .qido import create_qido_app
from .retrieve import GET_SOP_CLASSES, CGetSCP
from .retrieve.cfind import FIND_SOP_CLASSES, CFindSCP
from .retrieve.cmove import MOVE_SOP_CLASSES, CMoveSCP
from .access import credentials, require
from .commitment_scp import STORAGE_COMMITMENT_PUSH_MODEL, StorageCommitmentSCP
from .cors import with_cors
from .ops import scope_needed, with_ops
from .store_scp import STORE_TRANSFER_SYNTAXES, CStoreSCP, storage_sop_classes
from .stow import create_app
from .tls import client_context, server_context
from .unavailable import FIND_STATUS, RETRIEVE_STATUS, dimse_refusal, http_refusal
from .urls import presented_at
from .wado import create_wado_app

log = logging.getLogger("dicomaccel")

MAX_IDENTIFIER_SIZE = 1 << 20


def run(config: ServeConfig) -> int:
    """Serve until SIGINT/SIGTERM (blocking); the exit status for the command line."""
    memory.hold_freed_heap()  # before any fork: the workers inherit it
    if config.workers <= 1:
        _pin(config, 0)
        return _run_worker(config, None, recover=True, announce=True)
    # Recover once, before any worker writes: recovery removes temp files it did not make.
    Archive(config.data, index=config.index, node_id=config.node_id, fsync=config.fsync,
            min_free_bytes=config.min_free_bytes).close()
    try:
        http_sock = socket.create_server((config.host, config.http_port), backlog=1024)
        dimse_sock = socket.create_server((config.host, config.dimse_port), backlog=128)
        tls_sock = None if config.dimse_tls_port is None else \
            socket.create_server((config.host, config.dimse_tls_port), backlog=128)
    except OSError as exc:
        print(f"dicomaccel: {exc}", file=sys.stderr)
        return 1
    return _supervise(config, http_sock, dimse_sock, tls_sock)


def _announce(config: ServeConfig, http: tuple, dimse_port: int, tls_port: int | None) -> None:
    scheme = "https" if config.tls_cert is not None else "http"
    print(f"dicomaccel: STOW-RS on {scheme}://{http[0]}:{http[1]}/dicomweb/studies", flush=True)
    print(f"dicomaccel: C-GET SCP on dicom://{config.host}:{dimse_port} (AE {config.ae_title})", flush=True)
    if tls_port is not None:
        print(f"dicomaccel: DICOM TLS on dicom+tls://{config.host}:{tls_port}", flush=True)
    print(f"dicomaccel: archive in {Path(config.data).resolve()}", flush=True)
    if config.index is not None:
        print(f"dicomaccel: index in {without_password(config.index)} (node {config.node_id})", flush=True)
    if config.workers > 1:
        print(f"dicomaccel: {config.workers} worker processes, each serving DICOMweb and DIMSE", flush=True)
    cpus = worker_cpus(config)
    if cpus is not None:
        print(f"dicomaccel: worker CPUs {', '.join(map(str, cpus))} (--worker-cpu-affinity auto)", flush=True)
    print("dicomaccel: ready", flush=True)


# A worker that dies this soon after its start is restarted only after a pause, doubled at each
# such death up to the maximum: a worker that cannot start must not be respawned in a tight loop.
QUICK_DEATH_S = 5.0
RESTART_PAUSE_S = (1.0, 10.0)


@dataclass(frozen=True)
class Place:
    """A worker's places on what its supervisor made before forking: its seats on the HTTP and
    DIMSE :class:`~.accept.LoadBoard`, and its account on the association ledger."""

    http: Seat
    dimse: Seat
    associations: Account


def _supervise(config: ServeConfig, http_sock: socket.socket, dimse_sock: socket.socket,
               tls_sock: socket.socket | None) -> int:
    children: dict[int, tuple[int, float]] = {}  # pid -> (worker number, start time)
    # Before any fork: the workers share them (.accept).
    shared = (LoadBoard(config.workers), LoadBoard(config.workers), association_ledger(config.workers))
    stopping = False
    pause = RESTART_PAUSE_S[0]

    def spawn(number: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _die_with_parent()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                http, dimse, ledger = shared
                _pin(config, number)
                code = _run_worker(config, (http_sock, dimse_sock, tls_sock), recover=False, announce=False,
                                   place=Place(http.seat(number), dimse.seat(number), ledger.account(number)))
            finally:
                os._exit(code)
        children[pid] = (number, time.monotonic())

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for number in range(config.workers):
        spawn(number)
    # Connections made before a worker reaches accept() wait in the listen backlog.
    _announce(config, http_sock.getsockname()[:2], dimse_sock.getsockname()[1],
              None if tls_sock is None else tls_sock.getsockname()[1])
    status = 0
    while children:
        pid, code = os.wait()
        if pid not in children:
            continue
        number, started = children.pop(pid)
        for board in shared:
            board.vacate(number)
        if not stopping:
            # A worker died (a crash, the OOM killer): serve on with a new one. Its temp
            # files stay in tmp/ until the next start-up recovers them.
            wait = 0.0
            if time.monotonic() - started < QUICK_DEATH_S:
                wait, pause = pause, min(2 * pause, RESTART_PAUSE_S[1])
            else:
                pause = RESTART_PAUSE_S[0]
            log.error("worker %d (pid %d) exited with status %d; starting another in %g s",
                      number, pid, os.waitstatus_to_exitcode(code), wait)
            deadline = time.monotonic() + wait
            while not stopping and time.monotonic() < deadline:
                time.sleep(0.05)
            if not stopping:
                spawn(number)
        elif os.waitstatus_to_exitcode(code) not in (0, -signal.SIGTERM):
            status = 1
    return status


def worker_cpus(config: ServeConfig) -> list[int] | None:
    """The CPU of each worker, by number, with ``--worker-cpu-affinity auto``: the CPUs this
    process may use (its scheduler affinity: a container's cpuset, ``taskset``), round robin;
    None when it is off or the platform cannot pin.

    A worker's threads (event loop, writers, committer, executor) hand each other work all
    the time, and the GIL lets one run Python at a time anyway. On one CPU a hand-off is a
    switch on that CPU; across two it wakes the other CPU, which on the development VM costs
    70 us of CPU per executor round trip (89 against 17.5 us pinned) and 23 us per futex
    ping-pong (1.6 pinned). docs/architecture.md has what it changed in the server."""
    if config.worker_cpu_affinity != "auto" or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    return [allowed[k % len(allowed)] for k in range(max(1, config.workers))]


def _pin(config: ServeConfig, number: int) -> None:
    """Run this process, every thread of it now and every thread it starts, on worker
    ``number``'s CPU (:func:`worker_cpus`)."""
    cpus = worker_cpus(config)
    if cpus is None:
        return
    cpu = {cpus[number]}
    try:
        tasks = [int(task) for task in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: this thread, and the threads it starts from now on
        tasks = [0]
    for task in tasks:
        try:
            os.sched_setaffinity(task, cpu)
        except OSError:
            pass  # a thread that ended meanwhile


def _die_with_parent() -> None:
    # prctl(PR_SET_PDEATHSIG, SIGKILL): a worker never outlives a killed supervisor, so the
    # ports and the data directory are free for the next start (Linux only).
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (AttributeError, OSError):
        pass
    if os.getppid() == 1:
        os._exit(1)


def _run_worker(config: ServeConfig, listeners, *, recover: bool, announce: bool,
                place: Place | None = None) -> int:
    try:
        uvloop.run(serve(config, listeners=listeners, recover=recover, announce=announce, place=place))
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # a port in use, an unwritable --data directory
        print(f"dicomaccel: {exc}", file=sys.stderr)
        return 1
    return 0


def http_front(archive: Archive, config: ServeConfig) -> HTTPServer:
    """The HTTP server ``serve`` answers with over ``archive``: STOW-RS, with QIDO-RS, WADO-RS
    and the operations routes in front of it, then authentication and CORS (benchmarks/
    front_end.py serves the same over an archive that keeps nothing)."""
    app = create_app(
        archive,
        max_concurrent_stores=config.max_concurrent_stores,
        queue_limit=config.store_queue_limit,
        queue_wait=config.store_queue_wait,
        max_request_bytes=config.max_request_bytes,
        max_instance_bytes=config.max_instance_bytes,
        body_timeout=config.body_timeout,
        min_upload_rate=config.min_upload_rate,
        public_url=config.public_url,
    )
    # QIDO-RS builds its Retrieve URLs from the request: it sees requests as addressed to
    # the public URL (dicomaccel.urls.presented_at).
    qido = presented_at(create_qido_app(archive, fallback=app), config.public_url)
    # QIDO-RS and WADO-RS reads that meet a lost index database: 503 (dicomaccel.unavailable).
    front = with_ops(http_refusal(create_wado_app(archive, fallback=qido, public_url=config.public_url)), archive)
    checkers = credentials(config)
    if checkers is not None:
        front = require(front, checkers, scope_needed)
    front = with_cors(front, config.cors_origins)  # outermost: a preflight carries no credentials
    return HTTPServer(front, HTTPLimits(config.header_timeout, config.max_header_bytes,
                                        config.keepalive_timeout, config.max_connections),
                      body_views=True)  # our applications take any bytes-like body


def _destinations(config: ServeConfig) -> dict:
    """Move destination AE title -> :class:`~.dimse.requestor.RemoteAE`. Destinations marked
    ``tls`` share one requestor context (PS3.15 B.9, BCP 195): their certificates verified
    against ``tls-ca`` (the system's CAs without it), ours offered when configured."""
    context = None
    if any(d.tls for d in config.move_destinations):
        context = client_context(*(None if p is None else str(p)
                                   for p in (config.tls_ca, config.tls_cert, config.tls_key)))
    return {d.ae.strip(): RemoteAE(d.host, d.port, context if d.tls else None) for d in config.move_destinations}


async def serve(config: ServeConfig, *, listeners=None, recover: bool = True,
                with_dimse: bool = True, announce: bool = True, place: Place | None = None) -> None:
    """Run until SIGINT/SIGTERM.

    In-flight stores get 30 s to finish; parts whose bytes all arrived are committed before
    the archive closes, the rest are discarded.
    ``listeners`` is ``(http_socket, dimse_socket or None, dimse_tls_socket or None)``
    already bound by a supervisor, and ``place`` this worker's :class:`Place` on what the
    supervisor shares between its workers.
    """
    archive = Archive(config.data, index=config.index, node_id=config.node_id, fsync=config.fsync,
                      min_free_bytes=config.min_free_bytes,
                      policy=StorePolicy.from_config(config),
                      recover=recover)
    http = http_front(archive, config)
    dimse = None
    try:
        try:
            if with_dimse:
                store_classes = storage_sop_classes(archive.policy)
                cget = CGetSCP(archive, pending_interval=config.pending_interval)
                destinations = _destinations(config)
                # C-MOVE: the C-GET engine, sending over an association to the destination.
                cmove = CMoveSCP(cget, destinations,
                                 ae_title=config.ae_title, connect_timeout=config.artim_timeout,
                                 idle_timeout=config.idle_timeout)
                # Storage Commitment (PS3.4 J): reports to a requester that left go to its
                # configured destination (the C-MOVE destinations).
                commitment = StorageCommitmentSCP(
                    archive, destinations,
                    ae_title=config.ae_title, connect_timeout=config.artim_timeout,
                    response_timeout=config.idle_timeout)
                dimse = await start_dimse_server(
                    config.host,
                    config.dimse_port,
                    ae_title=config.ae_title,
                    # A lost index database: C-FIND A700, C-GET/C-MOVE A701 (dicomaccel.unavailable).
                    handlers={C_GET_RQ: dimse_refusal(cget, RETRIEVE_STATUS),
                              C_FIND_RQ: dimse_refusal(CFindSCP(archive), FIND_STATUS),
                              C_MOVE_RQ: dimse_refusal(cmove, RETRIEVE_STATUS),
                              C_STORE_RQ: CStoreSCP(archive, config.max_instance_bytes),
                              N_ACTION_RQ: commitment},
                    supported_abstract_syntaxes=GET_SOP_CLASSES + FIND_SOP_CLASSES + MOVE_SOP_CLASSES
                    + store_classes + (STORAGE_COMMITMENT_PUSH_MODEL,),
                    # C-STORE SCP (PS3.4 B.4.1): the sender's transfer syntax, stored as received;
                    # its data sets stream into the archive (never joined, no identifier cap).
                    peer_ordered_syntaxes={uid: STORE_TRANSFER_SYNTAXES for uid in store_classes},
                    stream_commands=(C_STORE_RQ,),
                    max_associations=config.max_associations,
                    require_called_ae=config.require_called_ae,
                    calling_ae_allow=config.calling_ae_allow,
                    artim_timeout=config.artim_timeout,
                    idle_timeout=config.idle_timeout,
                    # Joined data sets are Identifiers and responses (a few KiB) and Storage
                    # Commitment Action Information (MAX_REFERENCES items fit: commitment_scp).
                    max_dataset_size=MAX_IDENTIFIER_SIZE,
                    sock=None if listeners is None else listeners[1],
                    context_permissions={**{uid: "get" for uid in GET_SOP_CLASSES},
                                         **{uid: "find" for uid in FIND_SOP_CLASSES},
                                         **{uid: "move" for uid in MOVE_SOP_CLASSES},
                                         **{uid: "store" for uid in store_classes},
                                         STORAGE_COMMITMENT_PUSH_MODEL: "commit"},
                    ae_permissions=config.ae_permissions,
                    tls_client_ae=config.tls_client_ae,
                    seat=None if place is None else place.dimse,
                    account=None if place is None else place.associations,
                )
            tls = None if config.tls_cert is None else server_context(
                str(config.tls_cert), str(config.tls_key), None if config.tls_ca is None else str(config.tls_ca),
                config.tls_require_client_cert)
            if dimse is not None and tls is not None and config.dimse_tls_port is not None:
                await dimse.listen_tls(tls, config.host, config.dimse_tls_port,
                                       sock=None if listeners is None else listeners[2])
            # A busy port is an OSError we report plainly.
            listener = listeners[0] if listeners is not None else \
                socket.create_server((config.host, config.http_port), backlog=1024)
            await http.start(listener, ssl=tls, seat=None if place is None else place.http)
            if announce:
                _announce(config, listener.getsockname()[:2], dimse.port, dimse.tls_port)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            # In-flight stores get 30 s; parts whose bytes all arrived are committed.
            await http.stop(grace=30)
        finally:
            if dimse is not None:
                dimse.close()
                await dimse.wait_closed()
    finally:
        archive.close()
