"""The acceptor: an ``asyncio.BufferedProtocol`` running the PS3.8 state machine, and the
service API.

:class:`DIMSEProtocol` has the kernel read into buffers of its own (see :data:`READ_FIRST`),
frames PDUs out of them as views, reassembles PDV fragments into DIMSE messages (fragment
views, joined once per message; a streamed data set's are handed up as they are) and drives
:data:`~dicomaccel.dimse.fsm.TRANSITIONS`; each PS3.8 action is a method named after it
(``_AE_6``, ``_DT_2``, ``_AA_8``, ...).

:class:`Association` is what services see: the negotiated contexts, ``send_c_store``,
``send_response``/``respond``, ``release`` and ``abort``. Requests are served one at a time
by a worker task per association (we grant an asynchronous operations window of 1/1);
C-CANCEL-RQs and responses to our own requests are handled as they arrive, so they reach a
running handler.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Iterator

from dicomaccel._compat import WRITELINES_SAFE
from dicomaccel.errors import ParseError
from dicomaccel.logs import access
from dicomaccel.status import Status, status_category

from . import fsm, messages, pdu
from .config import (
    MAX_ASSOCIATE_RQ_LENGTH,
    MAX_COMMAND_SET_LENGTH,
    MAX_QUEUED_REQUESTS,
    PDU_LENGTH_SLACK,
    ServerConfig,
)
from .negotiation import Acceptance, PresentationContext, Rejection, check_certificate, negotiate
from .stream import DataSetStream

logger = logging.getLogger("dicomaccel.dimse")

# Bytes handed to the transport per writelines() call before flow control is consulted; a
# few hundred KiB amortise the call while the write buffer limits bound memory.
_WRITE_BATCH = 256 * 1024
_WRITE_HIGH_WATER = 1024 * 1024
_WRITE_LOW_WATER = 256 * 1024

# Reading: the kernel writes what arrives straight into buffers of the connection's own
# (asyncio.BufferedProtocol), each filled once from start to end and never written again, so
# PDU bodies and the PDV fragments handed up are read-only views of what the kernel wrote. A
# C-STORE data set thus reaches its file with one copy in user space fewer than through
# data_received (the transport's bytes), and a second one fewer for each PDU that spans two
# reads (they were joined). A connection's first buffer holds READ_FIRST bytes. Once a buffer
# is full, the next one holds the rest of the PDU that spans its end, whose bytes so far are
# copied into it (at most the Maximum Length we announced, PS3.8 D.1), or, between PDUs,
# READ_BUFFER bytes (the peer sends faster than we read). Between messages, with nothing
# left to parse, the connection holds no buffer.
READ_FIRST = 64 << 10
READ_BUFFER = 1 << 20
# Where a connection that is being discarded reads to.
_DRAIN = memoryview(bytearray(READ_FIRST))

_STATE_CLOSING = ("Sta1", "Sta13")
_LOCAL_EVENTS = ("Evt1", "Evt7", "Evt8", "Evt9", "Evt11", "Evt14", "Evt15")
_PDU_EVENTS = {
    pdu.A_ASSOCIATE_AC: "Evt3",
    pdu.A_ASSOCIATE_RJ: "Evt4",
    pdu.A_ASSOCIATE_RQ: "Evt6",
    pdu.P_DATA_TF: "Evt10",
    pdu.A_RELEASE_RQ: "Evt12",
    pdu.A_RELEASE_RP: "Evt13",
    pdu.A_ABORT: "Evt16",
}


class AssociationClosedError(ConnectionError):
    """The association is gone (released, aborted, or the peer vanished) or not yet up."""


@dataclass(slots=True, eq=False)
class Request:
    """A DIMSE request received from the peer.

    Attributes
    ----------
    context : PresentationContext
        The context it arrived on; ``context.transfer_syntax`` is the data set's encoding.
    command : dict
        The decoded command set (keyword -> value, see :mod:`dicomaccel.dimse.messages`).
    dataset : bytes or None
        The data set (C-GET Identifier, ...) exactly as received, or ``None`` (always for a
        streamed request).
    message_id : int
        Message ID (0000,0110).
    cancelled : asyncio.Event
        Set when a C-CANCEL-RQ for this Message ID arrives (PS3.7 §9.3.2.3).
    responded : bool
        True once a final (non-Pending) response has been sent.
    duplicate : bool
        Its Message ID was already outstanding; answered 0x0210 without calling a handler.
    stream : DataSetStream or None
        For a Command Field in the server's ``stream_commands`` (C-STORE-RQ): the data set,
        arriving while the handler runs; read it to the end (or discard it) before the final
        response. ``None`` otherwise.
    """

    context: PresentationContext
    command: dict
    dataset: bytes | None
    message_id: int
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    responded: bool = False
    duplicate: bool = False
    stream: DataSetStream | None = None

    @property
    def command_field(self) -> int:
        return self.command["CommandField"]

    @property
    def transfer_syntax(self) -> str | None:
        return self.context.transfer_syntax


class Association:
    """One established association, as seen by services.

    Created by the protocol when it sends A-ASSOCIATE-AC. Handlers receive it as their
    first argument.

    Attributes
    ----------
    calling_ae, called_ae : str
        AE titles from the A-ASSOCIATE-RQ, without padding.
    peer_max_pdu : int
        The peer's Maximum Length (0: no limit); what we send honours it.
    contexts : dict of int to PresentationContext
        Every proposed context by ID, accepted or not.
    implementation_class_uid, implementation_version_name : str or None
        The peer's, from the A-ASSOCIATE-RQ.
    """

    __slots__ = (
        "calling_ae",
        "called_ae",
        "peer_max_pdu",
        "contexts",
        "implementation_class_uid",
        "implementation_version_name",
        "_protocol",
        "_pending",
        "_message_ids",
        "_send_lock",
        "_current",
        "_requests",
        "_storage",
    )

    def __init__(self, protocol: DIMSEProtocol, rq: pdu.AssociateRQ, acceptance: Acceptance) -> None:
        self.calling_ae = rq.calling_ae
        self.called_ae = rq.called_ae
        self.peer_max_pdu = acceptance.peer_max_pdu
        self.contexts = acceptance.contexts
        self.implementation_class_uid = rq.implementation_class_uid
        self.implementation_version_name = rq.implementation_version_name
        self._protocol = protocol
        self._pending: dict[int, asyncio.Future] = {}
        self._message_ids = itertools.cycle(range(1, 0x10000))
        self._send_lock = asyncio.Lock()
        self._current: Request | None = None
        self._requests: dict[int, Request] = {}
        self._storage: dict[str, list[PresentationContext]] | None = None

    @property
    def is_established(self) -> bool:
        """True while requests and responses can still be sent."""
        return self._protocol._state in ("Sta6", "Sta8")

    @property
    def socket(self):
        """The connection's socket (for socket options such as TCP_CORK), or None."""
        transport = self._protocol._transport
        return transport.get_extra_info("socket") if transport is not None else None

    @property
    def peer_address(self) -> tuple | None:
        transport = self._protocol._transport
        return transport.get_extra_info("peername") if transport is not None else None

    def storage_contexts(self, sop_class_uid: str) -> list[PresentationContext]:
        """Accepted contexts for ``sop_class_uid`` on which the peer accepted the SCP role.

        These are the only contexts :meth:`send_c_store` may use (PS3.4 C.5.3); one per
        transfer syntax the peer proposed in separate contexts.
        """
        if self._storage is None:
            # Negotiated once: sorted by SOP class on first use, not scanned per sub-operation
            # (a getscu association carries ~120 contexts).
            self._storage = {}
            for c in self.contexts.values():
                if c.accepted and c.scp_role:
                    self._storage.setdefault(c.abstract_syntax, []).append(c)
        return list(self._storage.get(sop_class_uid, ()))

    def next_message_id(self) -> int:
        """A Message ID not used by any of our outstanding requests (PS3.7 §9.1.1.1.1)."""
        for mid in self._message_ids:
            if mid not in self._pending:
                return mid
        raise AssertionError("unreachable: itertools.cycle never ends")

    async def send_c_store(
        self,
        context: PresentationContext,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        dataset: bytes | memoryview | Iterable[Any],
        priority: int = messages.PRIORITY_MEDIUM,
        message_id: int | None = None,
        move_originator: tuple[str, int] | None = None,
        on_sent: Callable[[int], None] | None = None,
        while_waiting: Callable[[], None] | None = None,
    ) -> dict:
        """Send a C-STORE-RQ and wait for its C-STORE-RSP (PS3.7 §9.1.1, §9.3.1).

        Parameters
        ----------
        context : PresentationContext
            One of :meth:`storage_contexts`; the data set must already be encoded in its
            ``transfer_syntax``.
        sop_class_uid, sop_instance_uid : str
            Affected SOP Class / Instance UID.
        dataset : buffer or iterable of buffers
            The data set without File Meta Information. Sent as PDV fragments that are
            memoryview slices of these buffers (no copy); the transport may hold the views
            until they are written, so keep the buffers open until this returns.
        priority : int
            (0000,0700): 0 medium, 1 high, 2 low.
        message_id : int, optional
            Defaults to :meth:`next_message_id`.
        move_originator : (AE title, message ID), optional
            Only for C-MOVE sub-operations (PS3.7 §9.3.1.1); C-GET leaves it out.
        on_sent : callable, optional
            Called with the number of data set bytes handed to the transport so far, after
            each batch of PDUs (a sender of a mapped file releases the pages behind it).
        while_waiting : callable, optional
            Called once the whole message is handed to the transport, before waiting for
            the response: work that would otherwise stand between this response and the
            next request (a retrieve maps its next instance while the peer stores this one).
            It must not raise.

        Returns
        -------
        dict
            The C-STORE-RSP command set (``"Status"``, ...).

        Raises
        ------
        ValueError
            ``context`` is not accepted with the peer in the SCP role.
        AssociationClosedError
            The association ended before the response arrived.
        """
        if context.result != pdu.PC_ACCEPTANCE or not context.scp_role:
            raise ValueError(f"presentation context {context.id} does not allow sending C-STORE-RQ to the peer")
        if message_id is None:
            message_id = self.next_message_id()
        command = messages.encode_c_store_rq(sop_class_uid, message_id, priority, sop_instance_uid,
                                             move_originator)
        return await self._exchange(context, message_id, command, dataset, on_sent, while_waiting)

    async def send_request(self, context: PresentationContext, command: dict, dataset: Any = None) -> dict:
        """Send any request (an N-EVENT-REPORT-RQ, PS3.7 §10.3.1) on ``context`` and wait for
        its response.

        ``command`` is the command set dict without (0000,0800), which is set from whether
        ``dataset`` is given; without a ``MessageID`` one from :meth:`next_message_id` is used.
        Whether our role on ``context`` allows the request is the caller's to know.

        Returns
        -------
        dict
            The response command set.

        Raises
        ------
        ValueError
            ``context`` was not accepted.
        AssociationClosedError
            The association ended before the response arrived.
        """
        if context.result != pdu.PC_ACCEPTANCE:
            raise ValueError(f"presentation context {context.id} was not accepted")
        command = dict(command)
        message_id = command.setdefault("MessageID", self.next_message_id())
        command["CommandDataSetType"] = messages.NO_DATASET if dataset is None else messages.DATASET_PRESENT
        return await self._exchange(context, message_id, messages.encode_command(command), dataset)

    async def _exchange(self, context: PresentationContext, message_id: int, command: bytes,
                        dataset: Any, on_sent: Callable[[int], None] | None = None,
                        while_waiting: Callable[[], None] | None = None) -> dict:
        """Send a request's encoded ``command`` (and ``dataset``) and wait for the response
        to ``message_id`` (PS3.7 §9.3.1: it carries Message ID Being Responded To)."""
        future = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        try:
            await self._protocol.send_message(context.id, command, dataset, on_sent)
            if while_waiting is not None:
                while_waiting()
            response = await future
        finally:
            if self._pending.get(message_id) is future:
                del self._pending[message_id]
        if response is None:  # the association ended first (see DIMSEProtocol._teardown)
            raise AssociationClosedError("association ended before the response")
        return response

    async def send_response(self, context: PresentationContext, command: dict, dataset: Any = None) -> None:
        """Send a response (or any message) on ``context``.

        ``command`` is a command set dict without (0000,0800): Command Data Set Type is set
        from whether ``dataset`` (a buffer or iterable of buffers, as for
        :meth:`send_c_store`) is given. A non-Pending response to the request being served
        marks it answered.
        """
        command = dict(command)
        command["CommandDataSetType"] = messages.NO_DATASET if dataset is None else messages.DATASET_PRESENT
        await self._protocol.send_message(context.id, messages.encode_command(command), dataset)
        current = self._current
        if (
            current is not None
            and command.get("MessageIDBeingRespondedTo") == current.message_id
            and status_category(command.get("Status", 0)) != "pending"
        ):
            current.responded = True

    async def respond(self, request: Request, status: int, dataset: Any = None, **fields: Any) -> None:
        """Answer ``request`` with ``status`` (plus any command ``fields`` by keyword).

        Builds the response command set of PS3.7 §9.3: Command Field with bit 15 set,
        Message ID Being Responded To from the request, and the Affected SOP Class UID of the
        context it came on (the peer's own value may be anything, even non-ASCII).
        """
        await self.send_response(request.context, self._response(request, status, fields), dataset)

    def pending_response(self, request: Request) -> Callable[[Any], Awaitable[None]]:
        """A sender of Pending (FF00) responses to ``request``, each with a data set: the
        command set is encoded once, for an SCP that sends many (C-FIND, one per match)."""
        command = self._response(request, Status.PENDING, {})
        command["CommandDataSetType"] = messages.DATASET_PRESENT
        encoded = messages.encode_command(command)
        pcid = request.context.id

        async def send(dataset: Any) -> None:
            await self._protocol.send_message(pcid, encoded, dataset)

        return send

    @staticmethod
    def _response(request: Request, status: int, fields: dict) -> dict:
        command = {
            "AffectedSOPClassUID": request.context.abstract_syntax,
            "CommandField": request.command_field | 0x8000,
            "MessageIDBeingRespondedTo": request.message_id,
            "Status": int(status),
        }
        command.update(fields)
        if "ErrorComment" in command and command["ErrorComment"] is not None:
            command["ErrorComment"] = command["ErrorComment"][: messages.ERROR_COMMENT_MAX]
        return command

    async def release(self, timeout: float | None = None) -> None:
        """Release the association (PS3.8 AR-1) and wait for the peer's A-RELEASE-RP.

        Waits at most ``timeout`` seconds (default: the ARTIM timeout), then aborts and
        raises ``TimeoutError``.
        """
        protocol = self._protocol
        protocol._event("Evt11")
        waiter = protocol._release_waiter = asyncio.get_running_loop().create_future()
        try:
            released = await asyncio.wait_for(asyncio.shield(waiter), timeout or protocol._config.artim_timeout)
        except asyncio.TimeoutError:
            self.abort()
            raise
        if not released:
            raise AssociationClosedError("association ended before the A-RELEASE-RP")

    def abort(self) -> None:
        """Abort the association: A-ABORT with source 0 (service-user), PS3.8 AA-1."""
        self._protocol.abort()


class DIMSEProtocol(asyncio.BufferedProtocol):
    """The upper layer of one TCP connection, as association acceptor."""

    __slots__ = (
        "_server",
        "_config",
        "_loop",
        "_transport",
        "_state",
        "_rbuf",
        "_rview",
        "_rstart",
        "_rend",
        "_rbase",
        "_rnext",
        "_need",
        "_discard",
        "_artim",
        "_idle",
        "_last_activity",
        "_rq",
        "assoc",
        "_accepted_ids",
        "_msg_pcid",
        "_msg_command",
        "_frags",
        "_frag_size",
        "_write_paused",
        "_drain_waiter",
        "_queue",
        "_worker",
        "_worker_waiter",
        "_release_waiter",
        "_pdu_offset",
        "_send_cap",
        "_stream",
    )

    def __init__(self, server: Any, config: ServerConfig) -> None:
        self._server = server
        self._config = config
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._state = "Sta1"
        self._rbuf: memoryview | None = None  # the read buffer (writable), see READ_FIRST
        self._rview: memoryview | None = None  # the same, read-only: what is handed up
        self._rstart = 0  # first byte not yet framed
        self._rend = 0  # end of what the kernel wrote
        self._rbase = 0  # offset in the connection's byte stream of the buffer's first byte
        self._rnext = READ_FIRST  # size of the next buffer
        self._need = 6  # bytes from _rstart that complete the next PDU (a header: 6)
        self._discard = False
        self._artim: asyncio.TimerHandle | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._last_activity = 0.0
        self._rq: pdu.AssociateRQ | None = None
        self.assoc: Association | None = None
        self._accepted_ids: frozenset[int] = frozenset()
        self._msg_pcid = 0
        self._msg_command: dict | None = None
        self._frags: list = []
        self._frag_size = 0
        self._write_paused = False
        self._drain_waiter: asyncio.Future | None = None
        self._queue: deque[Request] = deque()
        self._worker: asyncio.Task | None = None
        self._worker_waiter: asyncio.Future | None = None
        self._pdu_offset = 0
        self._release_waiter: asyncio.Future | None = None
        self._send_cap = config.max_pdu
        self._stream: DataSetStream | None = None

    # ----------------------------------------------------------------- transport callbacks

    def _take(self, transport: asyncio.BaseTransport) -> None:
        """Adopt a new connection's transport (both roles)."""
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                # Small PDUs (C-STORE-RSP, C-GET-RSP pending) must not wait for Nagle.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass
        transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER, low=_WRITE_LOW_WATER)  # type: ignore[attr-defined]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._take(transport)
        if not self._server._connection_made(self):
            # More connections than associations allowed plus the pending slack: each could
            # make us buffer a large A-ASSOCIATE-RQ, so this one is closed before it is read.
            self._discard = True
            transport.abort()
            return
        self._event("Evt5")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._discard and self not in self._server._connections:
            return  # refused in connection_made: the state machine never started
        self._event("Evt17")
        self._teardown("connection closed")
        self._stop_artim()
        # _drain re-checks the transport when woken and raises there.
        self.resume_writing()
        self._server._connection_lost(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        # The peer is reading what we send: that is progress for the idle timer too.
        self._last_activity = self._loop.time()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._discard:
            return _DRAIN
        buf, start, end = self._rbuf, self._rstart, self._rend
        if buf is None or end == len(buf):
            # A new buffer once this one is full: for the rest of a PDU begun, the PDU's size
            # (its bytes so far move with it), else the next read's. So a peer that announces a
            # long PDU and trickles it holds READ_FIRST until it has sent that much.
            new = memoryview(bytearray(self._need if end > start else max(self._rnext, self._need)))
            if end > start:
                new[:end - start] = buf[start:end]
            self._rbase += start
            self._rbuf, self._rview = new, new.toreadonly()
            buf, end = new, end - start
            self._rstart, self._rend = 0, end
        return buf[end:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._discard:
            return
        self._last_activity = self._loop.time()
        end = self._rend = self._rend + nbytes
        if end == len(self._rbuf):
            self._rnext = READ_BUFFER
        if end - self._rstart < self._need:
            return
        try:
            self._parse()
        except Exception:
            # A bug must not leave the peer waiting on a half-dead association.
            logger.exception("internal error on the connection from %s", self._peer())
            self._discard = True
            self._teardown("internal error")
            self._transport.abort()

    # ----------------------------------------------------------------- framing (PS3.8 §9.3)

    def _parse(self) -> None:
        """Frame and handle the complete PDUs between ``_rstart`` and ``_rend``."""
        view = self._rview
        pos, end = self._rstart, self._rend
        header = pdu.PDU_HEADER
        while end - pos >= 6:
            pdu_type, length = header.unpack_from(view, pos)
            offset = self._pdu_offset = self._rbase + pos
            event = _PDU_EVENTS.get(pdu_type)
            if event is None:
                self._invalid(pdu.PDUParameterError(f"unrecognized PDU type 0x{pdu_type:02X}", offset, pdu.ABORT_UNRECOGNIZED_PDU))
                return
            limit = self._length_limit(pdu_type)
            if length > limit or (limit == pdu.FIXED_PDU_LENGTH and length != limit):
                self._invalid(
                    pdu.PDUParameterError(f"PDU type 0x{pdu_type:02X} length {length} (limit {limit})", offset)
                )
                return
            if self._early_dispatch(pdu_type):
                # The table answers this PDU in this state without looking at it (abort or
                # ignore), so do not wait for a body the peer may never send.
                self._event(event, None)
                self._after_event()
                return
            if length > end - pos - 6:
                self._need = length + 6
                break
            body = view[pos + 6 : pos + 6 + length]
            pos += 6 + length
            try:
                if pdu_type == pdu.A_ASSOCIATE_RQ:
                    self._event(event, pdu.decode_associate_rq(body, offset + 6))
                else:
                    self._event(event, body)
            except pdu.PDUParameterError as exc:
                self._invalid(exc)
                return
            if self._after_event():
                return
        else:
            self._need = 6
        self._rstart = pos
        if pos == end and self._stream is None and not self._frags and self._msg_command is None:
            self._drop_buffer()

    def _drop_buffer(self) -> None:
        """Let go of the read buffer (views handed up keep what they show)."""
        self._rbase += self._rend
        self._rbuf = self._rview = None
        self._rstart = self._rend = 0

    def _length_limit(self, pdu_type: int) -> int:
        if pdu_type == pdu.P_DATA_TF:
            # PS3.8 D.1: the peer shall not exceed our Maximum Length.
            return self._config.max_pdu + PDU_LENGTH_SLACK
        if pdu_type in (pdu.A_ASSOCIATE_RQ, pdu.A_ASSOCIATE_AC):
            return MAX_ASSOCIATE_RQ_LENGTH
        return pdu.FIXED_PDU_LENGTH

    def _early_dispatch(self, pdu_type: int) -> bool:
        state = self._state
        if pdu_type == pdu.P_DATA_TF:
            return state not in ("Sta6", "Sta7")
        if pdu_type == pdu.A_ASSOCIATE_RQ:
            return state != "Sta2"
        return pdu_type in (pdu.A_ASSOCIATE_AC, pdu.A_ASSOCIATE_RJ)

    def _invalid(self, exc: pdu.PDUParameterError) -> None:
        logger.warning("invalid PDU from %s: %s", self._peer(), exc)
        # After a framing error the stream cannot be resynchronised: drop the rest.
        self._discard = True
        if ("Evt19", self._state) in fsm.TRANSITIONS:
            self._event("Evt19", exc)

    def _after_event(self) -> bool:
        """Stop reading once the state machine is closing; True if it is."""
        if self._state in _STATE_CLOSING:
            self._discard = True
            self._drop_buffer()
            return True
        return False

    # ----------------------------------------------------------------- state machine

    def _event(self, event: str, arg: Any = None) -> None:
        action = fsm.TRANSITIONS.get((event, self._state))
        if action is None:
            if event in _LOCAL_EVENTS:
                raise AssociationClosedError(f"{fsm.EVENTS[event]} is not possible in {self._state}")
            return
        next_state = self._actions[action](self, event, arg)
        self._state = next_state or fsm.ACTIONS[action].next_state
        # The service-user answers A-ASSOCIATE and A-RELEASE indications at once.
        if self._state == "Sta3":
            self._answer_associate()
        elif self._state in ("Sta8", "Sta12"):
            self._event("Evt14")

    def _AE_5(self, event: str, arg: Any) -> None:
        self._start_artim()

    def _AE_6(self, event: str, rq: pdu.AssociateRQ) -> str:
        self._stop_artim()
        self._rq = rq
        rejection = self._server._admit(self, rq)
        if rejection is not None:
            self._reject(rejection)
            return "Sta13"
        return "Sta3"

    def _answer_associate(self) -> None:
        answer = None
        tls = self._transport.get_extra_info("ssl_object")
        if tls is not None:
            answer = check_certificate(self._rq, self._config, tls.getpeercert())
        if answer is None:
            answer = negotiate(self._rq, self._config)
        self._event("Evt8" if isinstance(answer, Rejection) else "Evt7", answer)

    def _AE_7(self, event: str, acceptance: Acceptance) -> None:
        self.assoc = Association(self, self._rq, acceptance)
        self._accepted_ids = frozenset(i for i, c in acceptance.contexts.items() if c.result == pdu.PC_ACCEPTANCE)
        if acceptance.peer_max_pdu:
            self._send_cap = acceptance.peer_max_pdu
        self._server._associated(self)
        self._transport.write(acceptance.pdu)
        access("association", f"{self._peer()} {self.assoc.calling_ae} -> {self.assoc.called_ae} accepted",
               peer=str(self._peer()), calling_ae=self.assoc.calling_ae, called_ae=self.assoc.called_ae,
               outcome="accepted", contexts=len(self._accepted_ids))
        logger.info(
            "association accepted: %s -> %s from %s, %d/%d contexts",
            self.assoc.calling_ae,
            self.assoc.called_ae,
            self._peer(),
            len(self._accepted_ids),
            len(acceptance.contexts),
        )
        self._worker = self._loop.create_task(self._serve())
        if self._config.idle_timeout:
            self._idle = self._loop.call_later(self._config.idle_timeout, self._idle_check)

    def _AE_8(self, event: str, rejection: Rejection) -> None:
        self._reject(rejection)

    def _reject(self, rejection: Rejection) -> None:
        logger.info("association rejected from %s: %s", self._peer(), rejection)
        self._server._rejected(self)
        rq = self._rq
        access("association", f"{self._peer()} rejected ({rejection.result}/{rejection.source}/{rejection.reason})",
               peer=str(self._peer()), calling_ae=rq.calling_ae if rq else None,
               called_ae=rq.called_ae if rq else None, outcome="rejected",
               rejection=[rejection.result, rejection.source, rejection.reason])
        self._transport.write(pdu.encode_associate_rj(rejection.result, rejection.source, rejection.reason))
        self._start_artim()

    def _DT_1(self, event: str, parts: list) -> None:
        if self._transport.is_closing():
            # The transport lost the connection; connection_lost (Evt17) is on its way.
            raise AssociationClosedError("connection closed")
        self._last_activity = self._loop.time()
        if WRITELINES_SAFE:
            self._transport.writelines(parts)
        else:
            self._transport.write(b"".join(parts))

    _AR_7 = _DT_1

    def _DT_2(self, event: str, body: memoryview) -> None:
        self._on_p_data(body)

    _AR_6 = _DT_2

    def _AR_1(self, event: str, arg: Any) -> None:
        self._transport.write(pdu.A_RELEASE_RQ_BYTES)

    def _AR_2(self, event: str, arg: Any) -> None:
        # A-RELEASE indication; the service-user answers at once (Evt14), abandoning any
        # operation still running: a requestor releases only when none is outstanding
        # (PS3.7 §D.3.3.3 and §7.2), so what runs now has no one waiting for it.
        self._teardown("released by the peer")

    def _AR_3(self, event: str, arg: Any) -> None:
        self._confirm_release()
        self._teardown("released")
        self._transport.close()

    def _AR_4(self, event: str, arg: Any) -> None:
        self._transport.write(pdu.A_RELEASE_RP_BYTES)
        self._start_artim()

    def _AR_5(self, event: str, arg: Any) -> None:
        self._stop_artim()

    def _AR_8(self, event: str, arg: Any) -> str:
        # Release collision; we are never the association-requestor.
        return "Sta10"

    def _AR_10(self, event: str, arg: Any) -> None:
        self._confirm_release()
        self._teardown("released")

    def _confirm_release(self) -> None:
        waiter = self._release_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def _abort_values(self, event: str, arg: Any) -> tuple[int, int]:
        if event == "Evt15":
            return pdu.ABORT_SOURCE_USER, pdu.ABORT_REASON_NOT_SPECIFIED
        if event == "Evt19":
            return pdu.ABORT_SOURCE_PROVIDER, arg.reason
        return pdu.ABORT_SOURCE_PROVIDER, pdu.ABORT_UNEXPECTED_PDU

    def _AA_1(self, event: str, arg: Any) -> None:
        # PS3.8 calls AA-1's A-ABORT "service-user source"; when it answers a PDU received in
        # Sta2 the provider detected the error, so we send source 2 with the reason of
        # PS3.8 Table 9-26 (unexpected PDU, or the parse error's reason), as AA-8 does.
        self._send_abort(*self._abort_values(event, arg))
        self._teardown("aborted")
        self._start_artim()

    def _AA_2(self, event: str, arg: Any) -> None:
        self._stop_artim()
        self._transport.abort()

    def _AA_3(self, event: str, body: memoryview | None) -> None:
        if body is not None:
            logger.info("A-ABORT from %s: source %d reason %d", self._peer(), body[2], body[3])
        self._teardown("aborted by the peer")
        self._transport.abort()

    def _AA_4(self, event: str, arg: Any) -> None:
        self._teardown("connection closed by the peer")

    def _AA_5(self, event: str, arg: Any) -> None:
        self._stop_artim()

    def _AA_6(self, event: str, arg: Any) -> None:
        pass

    def _AA_7(self, event: str, arg: Any) -> None:
        self._send_abort(*self._abort_values(event, arg))

    def _AA_8(self, event: str, arg: Any) -> None:
        source, reason = self._abort_values(event, arg)
        logger.warning("aborting association with %s: reason %d (%s)", self._peer(), reason, fsm.EVENTS[event])
        self._send_abort(source, reason)
        self._teardown("aborted: protocol error")
        self._start_artim()

    def _requestor_only(self, event: str, arg: Any) -> None:
        raise AssertionError(f"{event} in {self._state}: requestor-only transition")

    def _send_abort(self, source: int, reason: int) -> None:
        self._transport.write(pdu.encode_abort(source, reason))

    # ----------------------------------------------------------------- timers

    def _start_artim(self) -> None:
        self._stop_artim()
        self._artim = self._loop.call_later(self._config.artim_timeout, self._artim_expired)

    def _stop_artim(self) -> None:
        if self._artim is not None:
            self._artim.cancel()
            self._artim = None

    def _artim_expired(self) -> None:
        self._artim = None
        logger.info("ARTIM expired in %s for %s", self._state, self._peer())
        self._event("Evt18")

    def _idle_check(self) -> None:
        self._idle = None
        if self._state != "Sta6":
            return
        timeout = self._config.idle_timeout
        now = self._loop.time()
        assoc = self.assoc
        # Our own work (extraction, transcoding) may take long; a peer that neither answers
        # our C-STORE-RQ nor reads what we write may not: it would hold the association and
        # its mmaps forever.
        # A data set still arriving (and not held back by us) is the peer's to finish.
        stream = self._stream
        waiting_on_peer = bool(assoc._pending) or self._write_paused or (
            stream is not None and not stream.paused)
        if (assoc._current is not None or self._queue) and not waiting_on_peer:
            self._idle = self._loop.call_later(timeout, self._idle_check)
            return
        due = self._last_activity + timeout
        if now < due:
            self._idle = self._loop.call_at(due, self._idle_check)
            return
        logger.info("association with %s idle for %.0f s%s: aborting", self._peer(), timeout,
                    " while we wait on it" if waiting_on_peer else "")
        self._event("Evt15")

    # ----------------------------------------------------------------- P-DATA (PS3.8 §9.3.5, Annex E)

    def _on_p_data(self, body: memoryview) -> None:
        end = len(body)
        pos = 0
        pdv = pdu.PDV_HEADER
        accepted = self._accepted_ids
        while pos < end:
            offset = self._pdu_offset + 6 + pos
            if end - pos < 6:
                raise pdu.PDUParameterError(f"truncated PDV header ({end - pos} bytes left)", offset)
            item_length, pcid, control = pdv.unpack_from(body, pos)
            if item_length < 2 or item_length - 2 > end - pos - 6:
                raise pdu.PDUParameterError(f"PDV item length {item_length} does not fit the PDU", offset)
            if pcid not in accepted:
                raise pdu.PDUParameterError(
                    f"PDV on presentation context {pcid}, which is not accepted",
                    offset + 4,
                    pdu.ABORT_UNRECOGNIZED_PDU_PARAMETER,
                )
            fragment = body[pos + 6 : pos + 4 + item_length]
            pos += 4 + item_length
            if self._frags or self._msg_command is not None:
                if pcid != self._msg_pcid:
                    # PS3.8 Annex E.2: all fragments of a message use one context, and
                    # messages are not interleaved.
                    raise pdu.PDUParameterError(
                        f"PDV on context {pcid} inside a message on context {self._msg_pcid}", offset + 4
                    )
            else:
                self._msg_pcid = pcid
            is_command = control & 1
            if is_command:
                if self._msg_command is not None:
                    raise pdu.PDUParameterError(
                        "command fragment while the data set was expected",
                        offset + 5,
                        pdu.ABORT_UNEXPECTED_PDU_PARAMETER,
                    )
                limit = MAX_COMMAND_SET_LENGTH
            else:
                if self._msg_command is None:
                    raise pdu.PDUParameterError(
                        "data set fragment before its command", offset + 5, pdu.ABORT_UNEXPECTED_PDU_PARAMETER
                    )
                stream = self._stream
                if stream is not None:
                    # Streamed data set: straight to the handler, no size limit here (the
                    # handler has its own, and holds nothing in memory).
                    last = bool(control & 2)
                    if last:
                        self._stream = None
                        self._msg_command = None
                    stream.put(fragment, last)
                    continue
                limit = self._config.max_dataset_size
            self._frag_size += len(fragment)
            if self._frag_size > limit:
                raise pdu.PDUParameterError(
                    f"{'command set' if is_command else 'data set'} exceeds {limit} bytes", offset
                )
            self._frags.append(fragment)
            if control & 2:
                payload = self._frags[0] if len(self._frags) == 1 else b"".join(self._frags)
                self._frags = []
                self._frag_size = 0
                if is_command:
                    try:
                        command = messages.decode_command(payload)
                    except ParseError as exc:
                        raise pdu.PDUParameterError(f"malformed command set: {exc.message}", offset) from None
                    if messages.has_dataset(command):
                        self._msg_command = command
                        if command.get("CommandField") in self._config.stream_commands:
                            # Handed up now; the data set follows through the stream.
                            stream = DataSetStream(self._pause_reading, self._resume_reading)
                            if self._deliver(command, None, offset, stream):
                                self._stream = stream
                    else:
                        self._deliver(command, None, offset)
                else:
                    command = self._msg_command
                    self._msg_command = None
                    self._deliver(command, bytes(payload), offset)

    def _deliver(self, command: dict, dataset: bytes | None, offset: int,
                 stream: DataSetStream | None = None) -> bool:
        """Hand a complete command (and data set) up; True if it became a queued request."""
        assoc = self.assoc
        field_ = command.get("CommandField")
        if field_ is None:
            raise pdu.PDUParameterError("command set without Command Field (0000,0100)", offset)
        context = assoc.contexts[self._msg_pcid]
        if field_ == messages.C_CANCEL_RQ:
            request = assoc._requests.get(command.get("MessageIDBeingRespondedTo"))
            if request is not None:
                request.cancelled.set()
            return False
        if not messages.is_request(field_):
            future = assoc._pending.get(command.get("MessageIDBeingRespondedTo"))
            if future is not None and not future.done():
                future.set_result(command)
            else:
                logger.warning("unexpected response 0x%04X from %s", field_, self._peer())
            return False
        message_id = command.get("MessageID")
        if message_id is None:
            raise pdu.PDUParameterError("request without Message ID (0000,0110)", offset)
        if len(self._queue) >= MAX_QUEUED_REQUESTS:
            raise pdu.PDUParameterError(
                f"more than {MAX_QUEUED_REQUESTS} requests outstanding (window is 1)",
                offset,
                pdu.ABORT_REASON_NOT_SPECIFIED,
            )
        request = Request(context, command, dataset, message_id, stream=stream)
        if message_id in assoc._requests:
            request.duplicate = True
        else:
            assoc._requests[message_id] = request
        self._queue.append(request)
        self._wake_worker()
        return True

    def _pause_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    # ----------------------------------------------------------------- service worker

    def _wake_worker(self) -> None:
        waiter = self._worker_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _serve(self) -> None:
        assoc = self.assoc
        queue = self._queue
        # A cancellation can be swallowed by what a handler awaits (wait_for returns a
        # result that raced the cancel), so the loop also stops once torn down.
        while self._worker is not None:
            if not queue:
                self._worker_waiter = self._loop.create_future()
                await self._worker_waiter
                self._worker_waiter = None
                continue
            request = queue.popleft()
            assoc._current = request
            try:
                await self._run_handler(request)
            except AssociationClosedError:
                return
            except Exception:
                # Even the fallback answer failed: the association cannot be trusted to make
                # progress, and a dead worker would leave it hanging. Abort (PS3.8 AA-1).
                logger.exception("cannot answer request 0x%04X", request.command_field)
                self.abort()
                return
            finally:
                assoc._current = None
                if assoc._requests.get(request.message_id) is request:
                    del assoc._requests[request.message_id]

    async def _run_handler(self, request: Request) -> None:
        assoc = self.assoc
        stream = request.stream
        if request.duplicate:
            if stream is not None:
                await stream.discard()
            await self._answer(request, Status.DUPLICATE_INVOCATION, None)
            return
        handler = self._config.handlers.get(request.command_field)
        if handler is None and request.command_field == messages.C_ECHO_RQ:
            handler = _echo
        if handler is None or not request.context.scu_role:
            if stream is not None:
                await stream.discard()
            await self._answer(request, Status.UNRECOGNIZED_OPERATION, None)
            return
        try:
            result = await handler(assoc, request)
        except (asyncio.CancelledError, AssociationClosedError):
            raise
        except Exception:
            logger.exception("handler for 0x%04X failed", request.command_field)
            if stream is not None and not stream.complete:
                # PS3.8 Annex E: the message ends before we answer it.
                await stream.discard()
            if not request.responded:
                # The cause is in the log; internals (paths, SQL, library messages) stay here.
                await self._answer(request, Status.PROCESSING_FAILURE, "internal error in the service")
            return
        if stream is not None and not stream.complete:
            await stream.discard()  # the next message cannot be read before this one ends
        if not request.responded:
            if isinstance(result, int):
                await self._answer(request, result, None)
            else:
                logger.error("handler for 0x%04X returned without a final response", request.command_field)
                await self._answer(request, Status.PROCESSING_FAILURE, "no response from the service")

    async def _answer(self, request: Request, status: int, comment: str | None) -> None:
        try:
            await self.assoc.respond(request, status, ErrorComment=comment)
        except AssociationClosedError:
            pass

    # ----------------------------------------------------------------- sending

    async def send_message(self, pcid: int, command: bytes, dataset: Any,
                           on_sent: Callable[[int], None] | None = None) -> None:
        """Send one DIMSE message as P-DATA-TF PDUs, one PDV each (PS3.8 Annex E).

        The command's PDUs go out in the same write as the first of the data set's: one
        system call, and one segment for a small message such as a C-FIND-RSP with its
        Identifier, where two writes were two."""
        assoc = self.assoc
        async with assoc._send_lock:
            first = [part for parts, _ in self._fragments(pcid, (command,), 0x01) for part in parts]
            if dataset is not None:
                buffers = (dataset,) if isinstance(dataset, (bytes, bytearray, memoryview)) else dataset
                handed = 0
                for parts, full in self._fragments(pcid, buffers, 0x00):
                    self._event("Evt9", first + parts if first else parts)
                    first = None
                    if full:
                        handed += full
                        if on_sent is not None:
                            on_sent(handed)
                    if self._write_paused:
                        await self._drain()
            else:
                self._event("Evt9", first)
                if self._write_paused:
                    await self._drain()

    def _fragments(self, pcid: int, buffers: Iterable[Any], control: int) -> Iterator[tuple[list, int]]:
        """The P-DATA-TF PDUs of a command or data set made of ``buffers``, as lists of buffers
        to write of about :data:`_WRITE_BATCH` bytes each: ``(parts, n)``, ``n`` the fragment
        bytes of a full batch, 0 for a last one that is not full."""
        # PS3.8 D.1: a PDU may not exceed the peer's Maximum Length; one PDV per PDU leaves
        # max - 6 bytes of fragment, kept even (PS3.8 Annex E.2 wants even fragments).
        max_fragment = max(2, (self._send_cap - 6) & ~1)
        views = [v for v in (memoryview(b).cast("B") for b in buffers) if len(v)]
        remaining = sum(len(v) for v in views)
        pack = pdu.PDATA_ONE_PDV_HEADER.pack
        parts: list = []
        batched = 0
        index = 0
        pos = 0
        if not remaining:
            # An empty message still needs its last fragment.
            parts.append(pack(pdu.P_DATA_TF, 6, 2, pcid, control | 0x02))
        # Every fragment but the last has the same header: pack it once.
        full = pack(pdu.P_DATA_TF, max_fragment + 6, max_fragment + 2, pcid, control)
        append = parts.append
        while remaining:
            n = max_fragment if remaining > max_fragment else remaining
            remaining -= n
            append(full if remaining and n == max_fragment else
                   pack(pdu.P_DATA_TF, n + 6, n + 2, pcid, control if remaining else control | 0x02))
            view = views[index]
            if pos + n < len(view):  # within one buffer: one slice
                append(view[pos:pos + n])
                pos += n
            else:
                need = n
                while need:
                    view = views[index]
                    take = len(view) - pos
                    if take > need:
                        take = need
                    append(view[pos:pos + take])
                    pos += take
                    need -= take
                    if pos == len(view):
                        index += 1
                        pos = 0
            batched += n
            if batched >= _WRITE_BATCH:
                yield parts, batched
                parts = []
                append = parts.append
                batched = 0
        if parts:
            yield parts, 0

    async def _drain(self) -> None:
        if self._transport is None or self._transport.is_closing():
            raise AssociationClosedError("connection closed")
        waiter = self._drain_waiter
        if waiter is None or waiter.done():
            waiter = self._drain_waiter = self._loop.create_future()
        await waiter
        if self._transport.is_closing():
            raise AssociationClosedError("connection closed")

    # ----------------------------------------------------------------- teardown

    def abort(self, close: bool = False) -> None:
        """Local A-ABORT (Evt15); closes at once if the association is not up.

        With ``close``, the transport is closed after the A-ABORT is written instead of
        waiting for the peer to close it (server shutdown).
        """
        if ("Evt15", self._state) in fsm.TRANSITIONS:
            self._event("Evt15")
            self._after_event()
            if close:
                self._stop_artim()
                self._transport.close()
        elif self._transport is not None and not self._transport.is_closing():
            self._transport.abort()

    def _teardown(self, reason: str) -> None:
        """Stop serving: cancel the worker, wake what waits on the peer. Idempotent.

        Waiters get a result (``None`` / ``False``) rather than an exception, so nothing is
        logged as "never retrieved" when their awaiting task was cancelled first; the
        awaiting methods turn it into AssociationClosedError.
        """
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._worker is not None:
            logger.debug("association with %s ends: %s", self._peer(), reason)
            self._worker.cancel()
            self._worker = None
        if self._worker_waiter is not None and not self._worker_waiter.done():
            self._worker_waiter.cancel()
        self._queue.clear()
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close(AssociationClosedError(f"association ended inside a data set: {reason}"))
        assoc = self.assoc
        if assoc is not None:
            for future in assoc._pending.values():
                if not future.done():
                    future.set_result(None)
        waiter = self._release_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(False)
        self._server._disassociated(self)

    def _peer(self) -> Any:
        return self._transport.get_extra_info("peername") if self._transport is not None else None


async def _echo(assoc: Association, request: Request) -> int:
    """Built-in Verification SCP (PS3.4 Annex A): C-ECHO-RSP Success."""
    return Status.SUCCESS


def action_table(cls: type) -> dict:
    """PS3.8 action name -> the method of ``cls`` named after it (``_AE_6`` for AE-6); actions a
    class does not implement raise (they belong to the other role)."""
    return {name: getattr(cls, "_" + name.replace("-", "_"), cls._requestor_only) for name in fsm.ACTIONS}


_ACTIONS = action_table(DIMSEProtocol)
DIMSEProtocol._actions = _ACTIONS
