"""``start_dimse_server``: listen for associations and serve them on the running loop.

One process alone listens through the event loop's server. Worker processes sharing the
listening sockets (``dicomaccel serve --workers N``) each pass their seat on the supervisor's
DIMSE :class:`~dicomaccel.accept.LoadBoard`, so that each new connection goes to the worker
holding fewest, and their account on its :func:`association_ledger`, so that
``max_associations`` and :data:`PENDING_SLACK` bound all workers together, as they bound one
process.
"""

from __future__ import annotations

import asyncio
import socket
import ssl as ssl_module
from typing import Iterable, Mapping

from .. import metrics
from ..accept import Account, Acceptor, Ledger, Seat, hand_over
from ..config import DEFAULTS
from .association import DIMSEProtocol
from .config import (
    DEFAULT_MAX_PDU,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    Handler,
    ServerConfig,
)
from .negotiation import Rejection, check_provider


# PS3.8 D.1 sets no minimum Maximum Length; below this an A-ASSOCIATE-RQ with many contexts
# would not even fit in what we ask peers to respect, so refuse such a configuration.
MIN_MAX_PDU = 1024


# Connections beyond max_associations that are still admitted, so that a peer arriving at the
# limit gets its A-ASSOCIATE-RJ (2, 3, 2) rather than a closed connection; beyond that, a
# new connection is closed at once. Every admitted connection may buffer one A-ASSOCIATE-RQ
# of up to MAX_ASSOCIATE_RQ_LENGTH, so memory before association is bounded by
# (max_associations + PENDING_SLACK) x 256 KiB, for all worker processes together.
PENDING_SLACK = 16

# What an association ledger counts for each worker: connections admitted (associated or
# not), and associations.
CONNECTIONS, ASSOCIATIONS = 0, 1


def association_ledger(workers: int) -> Ledger:
    """The ledger a supervisor makes before forking ``workers`` processes that all serve DIMSE:
    give worker ``n`` its ``account(n)`` (:func:`start_dimse_server`)."""
    return Ledger(workers, kinds=2)


class DIMSEServer:
    """A listening DIMSE acceptor; returned by :func:`start_dimse_server`.

    Use it as an async context manager, or call :meth:`close` then :meth:`wait_closed`.
    """

    def __init__(self, config: ServerConfig, seat: Seat | None = None, account: Account | None = None) -> None:
        self.config = config
        self._seat = seat
        # One process alone keeps its counts on a ledger of its own.
        self._account = account if account is not None else association_ledger(1).account(0)
        self._listening: list[tuple] = []  # the plain listener's sockets, then the TLS listener's
        self._servers: list[asyncio.base_events.Server] = []  # alone: the event loop accepts
        self._acceptors: list[Acceptor] = []  # workers sharing the sockets: .accept
        self._opening: set[asyncio.Task] = set()  # hand-overs of accepted sockets under way
        # Accepted, not yet connected (TLS: handshaking). A protocol is in this set or in
        # ``_connections``, never both: _connection_made moves it in one step, so the board
        # never shows one connection twice (which sent a connection to the other worker).
        self._handshaking: set[DIMSEProtocol] = set()
        self._closing = False
        self._connections: set[DIMSEProtocol] = set()
        self._associations: set[DIMSEProtocol] = set()

    @property
    def sockets(self) -> tuple:
        return self._listening[0] if self._listening else ()

    @property
    def port(self) -> int:
        """The port actually bound (useful after binding port 0)."""
        return self._listening[0][0].getsockname()[1]

    @property
    def tls_port(self) -> int | None:
        """The TLS listener's port (:meth:`listen_tls`), or None."""
        return self._listening[1][0].getsockname()[1] if len(self._listening) > 1 else None

    async def listen_tls(self, context: ssl_module.SSLContext, host: str | None = None, port: int = 0,
                         sock=None, backlog: int = 128) -> None:
        """Also accept associations over TLS (PS3.15 B.9, the BCP 195 profile) with
        ``context``; they share this server's handlers and association limit."""
        await self._listen(host, port, sock, backlog, None, context)

    async def _listen(self, host, port, sock, backlog, reuse_port, context) -> None:
        if self._seat is None:
            loop = asyncio.get_running_loop()
            factory = lambda: DIMSEProtocol(self, self.config)  # noqa: E731
            if sock is not None:
                server = await loop.create_server(factory, sock=sock, backlog=backlog, ssl=context)
            else:
                server = await loop.create_server(factory, host, port, backlog=backlog,
                                                  reuse_port=reuse_port, ssl=context)
            self._servers.append(server)
            self._listening.append(tuple(server.sockets))
            return
        acceptor = Acceptor(sock, self._seat, lambda conn: self._accepted(conn, context))
        self._acceptors.append(acceptor)
        self._listening.append((sock,))
        acceptor.start()
        self._publish()  # start() showed 0: the other listener may hold connections already

    def _accepted(self, conn: socket.socket, context: ssl_module.SSLContext | None) -> None:
        hand_over(conn, DIMSEProtocol(self, self.config), context, self._handshaking, self._opening,
                  self._publish)

    def _publish(self) -> None:
        """Tell the other workers how many connections this one holds."""
        if self._seat is not None and not self._closing:  # closing: the acceptors left the board
            self._seat.publish(len(self._connections) + len(self._handshaking))

    @property
    def active_associations(self) -> int:
        """Associations accepted and not yet released, aborted or closed."""
        return len(self._associations)

    @property
    def connections(self) -> int:
        """Open TCP connections, associated or not."""
        return len(self._connections)

    def close(self) -> None:
        """Stop listening and abort every association (A-ABORT, source 0)."""
        self._closing = True
        for server in self._servers:
            server.close()
        for acceptor in self._acceptors:
            acceptor.close()
        for task in self._opening:
            task.cancel()
        for protocol in list(self._connections):
            protocol.abort(close=True)

    async def wait_closed(self) -> None:
        for server in self._servers:
            await server.wait_closed()
        if self._opening:
            await asyncio.wait(set(self._opening))

    async def __aenter__(self) -> DIMSEServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    # Called by the protocol.
    def _connection_made(self, protocol: DIMSEProtocol) -> bool:
        """Admit a new connection, or refuse it (False) when associations and connections
        still waiting for theirs already reach ``max_associations + PENDING_SLACK``."""
        self._handshaking.discard(protocol)  # now counted as a connection, or refused
        limit = self.config.max_associations + PENDING_SLACK
        if self._account.claim(CONNECTIONS, lambda held: held >= limit):
            metrics.child(metrics.ASSOCIATIONS, "refused").inc()
            return False
        self._connections.add(protocol)
        self._publish()
        return True

    def _connection_lost(self, protocol: DIMSEProtocol) -> None:
        self._disassociated(protocol)
        if protocol in self._connections:
            self._connections.remove(protocol)
            self._account.release(CONNECTIONS)
            self._publish()

    def _admit(self, protocol: DIMSEProtocol, rq) -> Rejection | None:
        """AE-6's checks (PS3.8 §9.2.2) of an A-ASSOCIATE-RQ; when they pass, the association
        counts at once, under the ledger's lock, so no other (in this worker or another)
        can take the last place between the check and the count. Negotiation may still
        reject it (AE-8: :meth:`_rejected` gives the place back)."""
        rejection = self._account.claim(ASSOCIATIONS,
                                        lambda held: check_provider(rq, held, self.config))
        if rejection is None:
            self._associations.add(protocol)
        return rejection

    def _associated(self, protocol: DIMSEProtocol) -> None:
        metrics.child(metrics.ASSOCIATIONS, "accepted").inc()

    def _rejected(self, protocol: DIMSEProtocol) -> None:
        metrics.child(metrics.ASSOCIATIONS, "rejected").inc()
        self._disassociated(protocol)

    def _disassociated(self, protocol: DIMSEProtocol) -> None:
        if protocol in self._associations:
            self._associations.remove(protocol)
            self._account.release(ASSOCIATIONS)


async def start_dimse_server(
    host: str | None = "127.0.0.1",
    port: int = 11112,
    *,
    ae_title: str = DEFAULTS.ae_title,
    handlers: Mapping[int, Handler] | None = None,
    supported_abstract_syntaxes: Iterable[str] = (),
    transfer_syntaxes: Iterable[str] = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN),
    storage_transfer_syntaxes: Iterable[str] | None = None,
    max_associations: int = DEFAULTS.max_associations,
    max_pdu: int = DEFAULT_MAX_PDU,
    artim_timeout: float = DEFAULTS.artim_timeout,
    idle_timeout: float | None = DEFAULTS.idle_timeout,
    require_called_ae: bool = False,
    calling_ae_allow: Iterable[str] | None = None,
    max_dataset_size: int = 1 << 28,
    backlog: int = 128,
    reuse_port: bool | None = None,
    sock=None,
    context_permissions: Mapping[str, str] | None = None,
    ae_permissions: Mapping[str, Iterable[str]] | None = None,
    peer_ordered_syntaxes: Mapping[str, Iterable[str]] | None = None,
    stream_commands: Iterable[int] = (),
    tls_client_ae: Mapping[str, Iterable[str]] | None = None,
    seat: Seat | None = None,
    account: Account | None = None,
) -> DIMSEServer:
    """Listen for DICOM associations on the running event loop (run it on uvloop).

    Parameters
    ----------
    host, port : str, int
        Where to listen; port 0 picks a free port (see :attr:`DIMSEServer.port`).
    ae_title : str
        Our AE title, checked against the Called AE Title when ``require_called_ae``.
    handlers : mapping of int to async callable
        Command Field of a request (e.g. ``messages.C_GET_RQ``) -> ``async def
        handler(assoc, request)``. C-ECHO-RQ is answered built-in unless overridden.
    supported_abstract_syntaxes : iterable of str
        SOP Classes we serve as SCP (Verification is always included).
    transfer_syntaxes : iterable of str
        For those contexts, in our order of preference.
    storage_transfer_syntaxes : iterable of str, optional
        Transfer syntaxes we accept on contexts the peer proposes the SCP role for (storage
        SOP classes for C-GET sub-operations); ``None`` accepts the peer's first proposal.
    max_associations : int
        Beyond this many concurrent associations, A-ASSOCIATE-RJ (2, 3, 2): transient,
        presentation-layer source, local limit exceeded.
    max_pdu : int
        Our Maximum Length (PS3.8 D.1), default 1 MiB. A P-DATA-TF longer than this (plus
        6 bytes of tolerance) is answered with A-ABORT (2, 6).
    artim_timeout : float
        PS3.8 §9.1.5 ARTIM, seconds: how long a connection may wait for its
        A-ASSOCIATE-RQ, and how long we wait for the peer to close after RJ, RP or ABORT.
    idle_timeout : float or None
        An established association with no traffic for this long is aborted (A-ABORT,
        source 0): when no operation is in progress, or while we wait on the peer (for a
        C-STORE-RSP, or for it to read what we write). ``None`` disables it.
    require_called_ae : bool
        Reject (1, 1, 7) an A-ASSOCIATE-RQ whose Called AE Title is not ``ae_title``.
    calling_ae_allow : iterable of str, optional
        If given, reject (1, 1, 3) Calling AE Titles not in it.
    max_dataset_size : int
        Largest data set we reassemble from the peer; beyond it, A-ABORT (2, 6).
    backlog, reuse_port
        Passed to ``loop.create_server``.
    sock : socket.socket, optional
        An already listening socket to serve instead of binding ``host``/``port`` (a
        supervisor binds before it starts worker processes).
    context_permissions, ae_permissions : mapping, optional
        Abstract syntax -> the permission it needs, and calling AE title -> its permissions;
        with ``ae_permissions`` given, an AE (listed or not) lacking a context's permission
        has that context refused (result 1, user-rejection).
    peer_ordered_syntaxes : mapping of str to iterable of str, optional
        Abstract syntax -> the transfer syntaxes accepted for it, picked in the order the
        peer proposed them (a Storage SCP stores what it receives as received).
    stream_commands : iterable of int
        Command Fields (``messages.C_STORE_RQ``) whose data set reaches the handler as
        ``request.stream`` (:class:`~dicomaccel.dimse.stream.DataSetStream`) while it
        arrives, never joined and not limited by ``max_dataset_size``.
    tls_client_ae : mapping of str to iterable of str, optional
        Client certificate subject Common Name -> the Calling AE Titles it may use. On a TLS
        connection (:meth:`DIMSEServer.listen_tls`) an A-ASSOCIATE-RQ whose Calling AE Title
        is not listed for the peer certificate's Common Name, or that came without a client
        certificate, is rejected (1, 1, 3). Plain connections are not affected.
    seat, account : optional
        For a worker process sharing ``sock`` (and :meth:`DIMSEServer.listen_tls`'s socket)
        with others: its seat on their DIMSE :class:`~dicomaccel.accept.LoadBoard` and its
        account on their :func:`association_ledger`, both made by the supervisor before it
        forked. ``max_associations`` then counts every worker's associations.

    Returns
    -------
    DIMSEServer
    """
    if max_pdu < MIN_MAX_PDU or max_pdu > 0xFFFFFFFF - 6:
        raise ValueError(f"max_pdu must be between {MIN_MAX_PDU} and {0xFFFFFFFF - 6}")
    if len(ae_title) > 16:
        raise ValueError("an AE title has at most 16 characters (PS3.5 Table 6.2-1)")
    config = ServerConfig(
        ae_title=ae_title.strip(),
        handlers=dict(handlers or {}),
        supported_abstract_syntaxes=frozenset(supported_abstract_syntaxes),
        transfer_syntaxes=tuple(transfer_syntaxes),
        storage_transfer_syntaxes=None if storage_transfer_syntaxes is None else tuple(storage_transfer_syntaxes),
        max_associations=max_associations,
        max_pdu=max_pdu,
        artim_timeout=artim_timeout,
        idle_timeout=idle_timeout,
        require_called_ae=require_called_ae,
        calling_ae_allow=None if calling_ae_allow is None else frozenset(a.strip() for a in calling_ae_allow),
        max_dataset_size=max_dataset_size,
        context_permissions=dict(context_permissions or {}),
        ae_permissions=None if ae_permissions is None else
        {ae.strip(): frozenset(p) for ae, p in ae_permissions.items()},
        peer_ordered_syntaxes={uid: frozenset(ts) for uid, ts in (peer_ordered_syntaxes or {}).items()},
        stream_commands=frozenset(stream_commands),
        tls_client_ae=None if tls_client_ae is None else
        {name: frozenset(ae.strip() for ae in aes) for name, aes in tls_client_ae.items()},
    )
    server = DIMSEServer(config, seat, account)
    await server._listen(host, port, sock, backlog, reuse_port, None)
    return server


__all__ = ["DIMSEServer", "association_ledger", "start_dimse_server"]
