"""The association-requestor side of the upper layer (PS3.8 §9.2: AE-1 to AE-4).

:func:`request_association` opens a TCP connection, sends an A-ASSOCIATE-RQ with the given
presentation contexts and returns the same :class:`~dicomaccel.dimse.association.Association`
an acceptor's handler sees, once the A-ASSOCIATE-AC arrived: ``storage_contexts()``,
``send_c_store()`` (the peer is SCP on every context we propose, PS3.7 D.3.3.4 default
roles), ``send_request()``, ``release()`` and ``abort()``. A context proposed with SCP/SCU Role
Selection (``roles``) gets the roles the acceptor's answer grants. Everything after association (P-DATA framing, the
state machine, flow control, release and abort, the idle timer) is the acceptor's code:
:class:`RequestorProtocol` only adds the requestor's actions. C-MOVE sub-operations use it
to reach the move destination (PS3.4 C.4.2.3); the Storage Commitment SCP to send an
N-EVENT-REPORT as SCP (PS3.4 J.3.3.1).
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from dataclasses import dataclass
from typing import Iterable, Sequence

from dicomaccel.config import DEFAULTS

from . import pdu
from .association import (
    Association,
    AssociationClosedError,
    DIMSEProtocol,
    action_table,
)
from .config import DEFAULT_MAX_PDU, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, ServerConfig
from .negotiation import Acceptance, PresentationContext

__all__ = ["AssociationRejectedError", "RequestorProtocol", "request_association"]

# PS3.8 §9.3.2.2: presentation context IDs are odd integers 1-255.
MAX_CONTEXTS = 128


class AssociationRejectedError(ConnectionError):
    """The peer answered A-ASSOCIATE-RJ (PS3.8 Table 9-21): ``result``, ``source``, ``reason``."""

    def __init__(self, result: int, source: int, reason: int) -> None:
        super().__init__(f"association rejected (result {result}, source {source}, reason {reason})")
        self.result, self.source, self.reason = result, source, reason


class _Alone:
    """What the protocol reports its connection and association to: nothing to count."""

    active_associations = 0

    def __init__(self) -> None:
        self._connections: set = set()

    def _connection_made(self, protocol) -> bool:
        self._connections.add(protocol)
        return True

    def _connection_lost(self, protocol) -> None:
        self._connections.discard(protocol)

    def _associated(self, protocol) -> None:
        pass

    def _rejected(self, protocol) -> None:
        pass

    def _disassociated(self, protocol) -> None:
        pass


class RequestorProtocol(DIMSEProtocol):
    """One connection on which we are the association-requestor."""

    __slots__ = ("_rq_pdu", "_proposed", "_called_ae", "_established", "_roles")

    def __init__(self, config: ServerConfig, rq_pdu: bytes, proposed: list[pdu.ProposedContext],
                 called_ae: str, roles: dict[str, tuple[int, int]] | None = None) -> None:
        super().__init__(_Alone(), config)
        self._rq_pdu = rq_pdu
        self._proposed = proposed
        self._called_ae = called_ae
        self._roles = roles or {}
        self._established: asyncio.Future = self._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._take(transport)
        self._server._connection_made(self)
        # AE-1 was the connect itself (loop.create_connection): Sta4, then Evt2.
        self._state = "Sta4"
        self._event("Evt2")

    def _early_dispatch(self, pdu_type: int) -> bool:
        if self._state == "Sta5" and pdu_type in (pdu.A_ASSOCIATE_AC, pdu.A_ASSOCIATE_RJ):
            return False  # what we wait for: read its body
        return super()._early_dispatch(pdu_type)

    def _AE_2(self, event: str, arg) -> None:
        self._transport.write(self._rq_pdu)

    def _AE_3(self, event: str, body: memoryview) -> None:
        ac = pdu.decode_associate_ac(body, self._pdu_offset + 6)
        contexts: dict[int, PresentationContext] = {}
        for pc in self._proposed:
            result, ts = ac.results.get(pc.id, (pdu.PC_NO_REASON, None))
            accepted = result == pdu.PC_ACCEPTANCE and ts in pc.transfer_syntaxes
            # PS3.7 D.3.3.4 default roles: we are SCU, the acceptor SCP; it invokes nothing.
            ours = (True, False)
            proposed_role = self._roles.get(pc.abstract_syntax)
            answer = ac.roles.get(pc.abstract_syntax)
            if proposed_role is not None and answer is not None:
                # A role is ours only if we proposed it and the acceptor answered 1 for it;
                # no answer item means the acceptor ignored the proposal: default roles.
                ours = (bool(proposed_role[0] and answer[0]), bool(proposed_role[1] and answer[1]))
            # The context's roles are the peer's: it is SCP where we are SCU and vice versa.
            contexts[pc.id] = PresentationContext(
                pc.id, pc.abstract_syntax, ts if accepted else None,
                result if result != pdu.PC_ACCEPTANCE or accepted else pdu.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED,
                scu_role=accepted and ours[1], scp_role=accepted and ours[0],
                proposed_transfer_syntaxes=tuple(pc.transfer_syntaxes))
        rq = pdu.AssociateRQ(1, self._called_ae, self._config.ae_title, b"", b"",
                             implementation_class_uid=ac.implementation_class_uid,
                             implementation_version_name=ac.implementation_version_name)
        self.assoc = Association(self, rq, Acceptance(b"", contexts, ac.max_length or 0))
        self._accepted_ids = frozenset(i for i, c in contexts.items() if c.accepted)
        if ac.max_length:
            self._send_cap = ac.max_length
        self._worker = self._loop.create_task(self._serve())
        if self._config.idle_timeout:
            self._idle = self._loop.call_later(self._config.idle_timeout, self._idle_check)
        if not self._established.done():
            self._established.set_result(self.assoc)

    def _AE_4(self, event: str, body: memoryview) -> None:
        if len(body) < 4:
            raise pdu.PDUParameterError("A-ASSOCIATE-RJ shorter than 4 bytes", self._pdu_offset + 6)
        if not self._established.done():
            self._established.set_exception(AssociationRejectedError(body[1], body[2], body[3]))
        self._transport.close()

    def _AR_8(self, event: str, arg) -> str:
        return "Sta9"  # release collision, association-requestor side

    def _AR_9(self, event: str, arg) -> None:
        self._transport.write(pdu.A_RELEASE_RP_BYTES)

    def _teardown(self, reason: str) -> None:
        super()._teardown(reason)
        if not self._established.done():
            self._established.set_exception(AssociationClosedError(f"no association: {reason}"))

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self._established.done():
            self._established.set_exception(AssociationClosedError("connection closed before A-ASSOCIATE-AC"))


RequestorProtocol._actions = action_table(RequestorProtocol)


async def request_association(
    host: str,
    port: int,
    *,
    called_ae: str,
    calling_ae: str,
    contexts: Iterable[tuple[str, Sequence[str]]],
    max_pdu: int = DEFAULT_MAX_PDU,
    timeout: float = DEFAULTS.artim_timeout,
    idle_timeout: float | None = DEFAULTS.idle_timeout,
    roles: dict[str, tuple[int, int]] | None = None,
    ssl: ssl_module.SSLContext | None = None,
) -> Association:
    """Associate with ``called_ae`` at ``host:port`` as requestor (PS3.8 §9.2, AE-1 to AE-3).

    Parameters
    ----------
    contexts : iterable of (abstract syntax, transfer syntaxes)
        One presentation context each (IDs 1, 3, 5, ...), at most 128.
    max_pdu : int
        Our Maximum Length (what the peer may send us: only responses here).
    timeout : float
        Seconds for the connection and the A-ASSOCIATE-AC together.
    idle_timeout : float or None
        As :func:`~dicomaccel.dimse.start_dimse_server`'s: a peer that stops answering is
        aborted after this long.
    roles : mapping of str to (int, int), optional
        Abstract syntax -> the (SCU-role, SCP-role) we propose in an SCP/SCU Role Selection
        sub-item (PS3.7 D.3.3.4); each context's ``scu_role``/``scp_role`` then say what the
        acceptor granted (``scu_role`` true: the peer is SCU, we act as SCP).
    ssl : ssl.SSLContext, optional
        Open the association over TLS (PS3.15 B.9: the TLS handshake comes before the
        A-ASSOCIATE-RQ), the peer's certificate checked against ``host`` (e.g.
        :func:`dicomaccel.tls.client_context`); the handshake counts within ``timeout``.

    Returns
    -------
    Association

    Raises
    ------
    AssociationRejectedError
        A-ASSOCIATE-RJ.
    AssociationClosedError
        The peer aborted or closed the connection before accepting.
    OSError, TimeoutError
        No connection, or no answer within ``timeout`` (the connection is then aborted);
        a failed TLS handshake is an :class:`ssl.SSLError` (an OSError).
    ValueError
        No context, or more than 128.
    """
    proposed = [pdu.ProposedContext(2 * i + 1, abstract, list(syntaxes))
                for i, (abstract, syntaxes) in enumerate(contexts)]
    if not proposed or len(proposed) > MAX_CONTEXTS:
        raise ValueError(f"between 1 and {MAX_CONTEXTS} presentation contexts, not {len(proposed)}")
    user_info = [
        pdu.sub_maximum_length(max_pdu),
        pdu.sub_uid(pdu.SUB_IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_CLASS_UID),
        # PS3.7 D.3.3.4: one 54H sub-item per SOP Class whose roles we propose.
        *(pdu.sub_role_selection(uid, scu, scp) for uid, (scu, scp) in (roles or {}).items()),
        pdu.sub_uid(pdu.SUB_IMPLEMENTATION_VERSION_NAME, IMPLEMENTATION_VERSION_NAME),
    ]
    rq = pdu.encode_associate_rq(called_ae, calling_ae, proposed, user_info)
    config = ServerConfig(ae_title=calling_ae, max_pdu=max_pdu, artim_timeout=timeout,
                          idle_timeout=idle_timeout)
    loop = asyncio.get_running_loop()
    protocol: RequestorProtocol | None = None

    def factory() -> RequestorProtocol:
        nonlocal protocol
        protocol = RequestorProtocol(config, rq, proposed, called_ae, roles)
        return protocol

    async def connect() -> Association:
        if ssl is None:
            await loop.create_connection(factory, host, port)
        else:
            await loop.create_connection(factory, host, port, ssl=ssl, server_hostname=host,
                                         ssl_handshake_timeout=timeout)
        return await protocol._established

    try:
        return await asyncio.wait_for(connect(), timeout)
    except BaseException:
        if protocol is not None and protocol._transport is not None:
            protocol._transport.abort()
        raise


@dataclass(frozen=True)
class RemoteAE:
    """An AE we open associations to, as configured: a C-MOVE destination, or where a Storage
    Commitment report goes once its requester has released. ``ssl``: reach it over TLS
    (PS3.15 B.9) with this client context."""

    host: str
    port: int
    ssl: ssl_module.SSLContext | None = None

    async def associate(self, called_ae: str, **kwargs) -> Association:
        """:func:`request_association` with this AE (``kwargs`` as there, but for the address
        and ``ssl``)."""
        return await request_association(self.host, self.port, called_ae=called_ae, ssl=self.ssl, **kwargs)
