"""dicomaccel.dimse as a real server on 127.0.0.1 (uvloop), against pynetdicom, DCMTK and raw
sockets speaking hand-built PS3.8 bytes."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import mmap
import os
import socket
import struct
import subprocess
import threading
import time

import pytest
import uvloop
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.presentation import build_role
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicomaccel.dimse import AssociationClosedError, messages, start_dimse_server
from dicomaccel.status import Status
from dicomaccel.testing import dcmtk_program, wait_until
from dicomaccel.testing.pdu import associate_rq, command_set, dataset_bytes, p_data, recv_exact, recv_pdu

pytestmark = pytest.mark.timeout(60)

GET = str(PatientRootQueryRetrieveInformationModelGet)


# ------------------------------------------------------------------------- harness


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def loop(request):
    # uvloop is what we deploy on; the stdlib loop keeps the protocol honest about what it
    # assumes of its transport (flow control, writelines).
    loop = uvloop.new_event_loop() if request.param == "uvloop" else asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="dimse-loop", daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def run(loop, coro, timeout=10):
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


@pytest.fixture
def serve(loop):
    servers = []

    def start(**kwargs):
        kwargs.setdefault("supported_abstract_syntaxes", [GET])
        server = run(loop, start_dimse_server("127.0.0.1", 0, **kwargs))
        servers.append(server)
        return server

    yield start
    for server in servers:
        run(loop, server.__aexit__(None, None, None))


def scu(max_pdu=16382, contexts=(Verification,)):
    ae = AE(ae_title="PYSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.maximum_pdu_size = max_pdu
    for uid in contexts:
        ae.add_requested_context(uid)
    return ae


def echo_works(port) -> bool:
    assoc = scu().associate("127.0.0.1", port, ae_title="DICOMACCEL")
    try:
        return assoc.is_established and assoc.send_c_echo().Status == 0
    finally:
        if assoc.is_established:
            assoc.release()


# Raw PS3.8 bytes come from dicomaccel.testing.pdu, built by hand so the tests do not trust
# the code under test.


def raw_connect(port) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def closed_by_peer(sock) -> bool:
    """True once the server closes: EOF (or reset) before any more bytes."""
    try:
        return sock.recv(1 << 16) == b""
    except ConnectionResetError:
        return True


def ct_instance(pixel_bytes: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.2.1125.1." + str(pixel_bytes)
    ds.PatientID = "P1"
    ds.Rows = pixel_bytes // 1024
    ds.Columns = 512
    ds.BitsAllocated = 16
    ds.add_new(0x7FE00010, "OW", os.urandom(ds.Rows * 1024))
    return ds


# ------------------------------------------------------------------------- pynetdicom


def test_echo_and_release(serve):
    server = serve()
    ae = scu()
    assoc = ae.associate("127.0.0.1", server.port, ae_title="DICOMACCEL")
    assert assoc.is_established
    assert assoc.acceptor.implementation_class_uid.startswith("2.25.")
    assert assoc.acceptor.implementation_version_name == "DICOMACCEL_010"
    assert assoc.send_c_echo().Status == 0
    assert server.active_associations == 1
    assoc.release()
    assert assoc.is_released
    assert wait_until(lambda: server.active_associations == 0 and server.connections == 0)


def test_128_contexts(serve):
    server = serve(supported_abstract_syntaxes=[GET], transfer_syntaxes=[ImplicitVRLittleEndian])
    ae = scu(contexts=())
    # 128 contexts, the PS3.8 maximum: Verification, the GET model with only a transfer syntax
    # we refuse (result 4), 125 storage classes with the SCP role (accepted), and one storage
    # class without a role item (result 3).
    from pynetdicom.sop_class import _STORAGE_CLASSES

    storage = sorted(set(_STORAGE_CLASSES.values()))[:126]
    ae.add_requested_context(Verification)
    ae.add_requested_context(GET, [ExplicitVRLittleEndian])
    for uid in storage:
        ae.add_requested_context(uid, [ExplicitVRLittleEndian])
    assert len(ae.requested_contexts) == 128
    roles = [build_role(uid, scp_role=True) for uid in storage[:-1]]
    assoc = ae.associate("127.0.0.1", server.port, ext_neg=roles)
    try:
        assert assoc.is_established
        results = {cx.abstract_syntax: cx.result for cx in assoc.accepted_contexts + assoc.rejected_contexts}
        assert len(results) == 128
        assert results[Verification] == 0
        assert results[GET] == 4
        assert all(results[uid] == 0 for uid in storage[:-1])
        assert results[storage[-1]] == 3
        accepted_roles = {cx.abstract_syntax: cx.as_scu for cx in assoc.accepted_contexts}
        # pynetdicom: as_scu is False where we accepted its SCP role
        assert not any(accepted_roles[uid] for uid in storage[:-1])
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()


def _get_identifier():
    ds = Dataset()
    ds.QueryRetrieveLevel = "PATIENT"
    ds.PatientID = "P1"
    return ds


def test_c_get_sub_operation_large_dataset(serve, tmp_path):
    # A >10 MB instance goes back over the association as a C-STORE sub-operation, from an
    # mmap of the stored bytes, to a peer with a 16382-byte Maximum Length: ~650 PDVs, and
    # flow control, since pynetdicom reads far slower than we write.
    instance = ct_instance(10 * 1024 * 1024 + 512 * 1024)
    raw = dataset_bytes(instance)
    path = tmp_path / "instance.bin"
    path.write_bytes(raw)
    small = ct_instance(5120)
    small_raw = dataset_bytes(small)
    seen = {}

    async def handle_get(assoc, request):
        identifier = request.dataset
        seen["identifier"] = (identifier, request.transfer_syntax)
        (context,) = assoc.storage_contexts(CTImageStorage)
        seen["context"] = (context.transfer_syntax, context.scp_role, context.scu_role, assoc.peer_max_pdu)
        await assoc.respond(request, Status.PENDING, NumberOfRemainingSuboperations=2,
                            NumberOfCompletedSuboperations=0, NumberOfFailedSuboperations=0,
                            NumberOfWarningSuboperations=0)
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            rsp = await assoc.send_c_store(context, sop_class_uid=CTImageStorage,
                                           sop_instance_uid=instance.SOPInstanceUID, dataset=view)
            seen["rsp1"] = rsp
            # The peer has every byte once it answers, so nothing still holds a view:
            # releasing and unmapping must not raise BufferError.
            view.release()
        # The same data set split over several buffers at odd offsets.
        parts = [small_raw[:1], memoryview(small_raw)[1:4097], small_raw[4097:]]
        seen["rsp2"] = await assoc.send_c_store(context, sop_class_uid=CTImageStorage,
                                                sop_instance_uid=small.SOPInstanceUID, dataset=parts)
        await assoc.respond(request, Status.SUCCESS, NumberOfCompletedSuboperations=2,
                            NumberOfFailedSuboperations=0, NumberOfWarningSuboperations=0)

    server = serve(handlers={messages.C_GET_RQ: handle_get})
    received = []

    def on_store(event):
        received.append((event.request.AffectedSOPInstanceUID, event.request.DataSet.getvalue(),
                         event.context.transfer_syntax))
        return 0x0000

    ae = scu(contexts=())
    ae.add_requested_context(GET)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", server.port, ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    try:
        statuses = [status.Status for status, _ in assoc.send_c_get(_get_identifier(), GET)]
    finally:
        assoc.release()
    assert statuses == [0xFF00, 0x0000]
    assert seen["context"] == (ExplicitVRLittleEndian, True, False, 16382)
    identifier, ts = seen["identifier"]
    assert ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    assert b"P1" in identifier
    assert [r[0] for r in received] == [instance.SOPInstanceUID, small.SOPInstanceUID]
    assert hashlib.sha256(received[0][1]).digest() == hashlib.sha256(raw).digest()
    assert received[1][1] == small_raw
    assert seen["rsp1"]["Status"] == 0 and seen["rsp1"]["AffectedSOPInstanceUID"] == instance.SOPInstanceUID
    assert seen["rsp2"]["Status"] == 0


def test_c_cancel_reaches_running_handler(serve):
    events = {}

    async def handle_get(assoc, request):
        await assoc.respond(request, Status.PENDING, NumberOfRemainingSuboperations=5,
                            NumberOfCompletedSuboperations=0, NumberOfFailedSuboperations=0,
                            NumberOfWarningSuboperations=0)
        await asyncio.wait_for(request.cancelled.wait(), 10)
        events["cancelled"] = request.message_id
        await assoc.respond(request, Status.CANCEL, NumberOfRemainingSuboperations=5,
                            NumberOfCompletedSuboperations=0, NumberOfFailedSuboperations=0,
                            NumberOfWarningSuboperations=0)

    server = serve(handlers={messages.C_GET_RQ: handle_get})
    ae = scu(contexts=(GET, Verification))
    assoc = ae.associate("127.0.0.1", server.port)
    try:
        (context,) = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == GET]
        statuses = []
        for status, _ in assoc.send_c_get(_get_identifier(), GET, msg_id=42):
            statuses.append(status.Status)
            if status.Status == 0xFF00:
                assoc.send_c_cancel(42, context.context_id)
        assert statuses == [0xFF00, 0xFE00]
        assert events["cancelled"] == 42
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()


def test_handler_failure_and_unknown_command(serve):
    FIND = PatientRootQueryRetrieveInformationModelFind
    MOVE = PatientRootQueryRetrieveInformationModelMove

    async def broken(assoc, request):
        raise RuntimeError("disk on fire " + "x" * 100)

    async def silent(assoc, request):
        return None

    server = serve(handlers={messages.C_GET_RQ: broken, messages.C_FIND_RQ: silent},
                   supported_abstract_syntaxes=[GET, FIND, MOVE])
    ae = scu(contexts=(GET, FIND, MOVE, Verification))
    assoc = ae.associate("127.0.0.1", server.port)
    try:
        (status, _), = list(assoc.send_c_get(_get_identifier(), GET))
        assert status.Status == 0x0110
        # Never a traceback, nor the exception's text (paths, SQL): that goes to the log.
        assert status.ErrorComment == "internal error in the service"
        # A handler that returns without answering: still a final response.
        (status, _), = list(assoc.send_c_find(_get_identifier(), FIND))
        assert status.Status == 0x0110
        assert status.ErrorComment == "no response from the service"
        # No handler for C-MOVE: 0x0211 Unrecognized Operation.
        (status, _), = list(assoc.send_c_move(_get_identifier(), "DEST", MOVE))
        assert status.Status == 0x0211
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()


def test_server_side_release(serve):
    async def echo_then_release(assoc, request):
        await assoc.respond(request, Status.SUCCESS)
        await assoc.release(timeout=5)
        return None

    server = serve(handlers={messages.C_ECHO_RQ: echo_then_release})
    assoc = scu().associate("127.0.0.1", server.port)
    assert assoc.send_c_echo().Status == 0
    assert wait_until(lambda: assoc.is_released)
    assert wait_until(lambda: server.connections == 0)


def test_idle_timeout_aborts(serve):
    server = serve(idle_timeout=0.3)
    assoc = scu().associate("127.0.0.1", server.port)
    assert assoc.is_established
    assert wait_until(lambda: assoc.is_aborted)
    assert wait_until(lambda: server.active_associations == 0)


def test_dcmtk_echoscu(serve):
    echoscu = dcmtk_program("echoscu")
    if echoscu is None:
        pytest.skip("DCMTK echoscu not installed")
    server = serve(require_called_ae=True)
    done = subprocess.run([echoscu, "-aec", "DICOMACCEL", "-to", "10", "127.0.0.1", str(server.port)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    wrong = subprocess.run([echoscu, "-aec", "SOMEONE", "-to", "10", "127.0.0.1", str(server.port)],
                           capture_output=True, text=True, timeout=30)
    assert wrong.returncode != 0
    assert "Called AE Title Not Recognized" in wrong.stdout + wrong.stderr


# ------------------------------------------------------------------------- raw sockets


def test_garbage_instead_of_associate_rq(serve):
    server = serve()
    with raw_connect(server.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        # 'G' is no PDU type: A-ABORT, service-provider, unrecognized PDU.
        assert recv_exact(sock, 10) == bytes.fromhex("07000000000400000201")
    assert echo_works(server.port)


def test_truncated_pdu_then_close(serve):
    server = serve()
    rq = associate_rq()
    with raw_connect(server.port) as sock:
        sock.sendall(rq[: len(rq) // 2])
        assert wait_until(lambda: server.connections == 1)
    assert wait_until(lambda: server.connections == 0)
    assert echo_works(server.port)


def test_p_data_before_association(serve):
    server = serve()
    with raw_connect(server.port) as sock:
        sock.sendall(p_data(1, 0x03, command_set((0x0100, b"\x30\x00"))))
        assert recv_exact(sock, 10) == bytes.fromhex("07000000000400000202")  # unexpected PDU


def test_pdu_longer_than_negotiated_max(serve):
    server = serve(max_pdu=4096)
    with raw_connect(server.port) as sock:
        sock.sendall(associate_rq())
        pdu_type, ac = recv_pdu(sock)
        assert pdu_type == 0x02
        assert b"\x51\x00\x00\x04\x00\x00\x10\x00" in ac  # our Maximum Length, 4096
        # A header alone announcing more than 4096 (+6 tolerated) bytes is enough.
        sock.sendall(struct.pack(">BxL", 0x04, 4096 + 7))
        assert recv_exact(sock, 10) == bytes.fromhex("07000000000400000206")
    assert wait_until(lambda: server.active_associations == 0)


def test_pdu_beyond_hard_cap_before_association(serve):
    server = serve()
    with raw_connect(server.port) as sock:
        sock.sendall(struct.pack(">BxL", 0x01, 0xFFFFFFFF))
        assert recv_exact(sock, 10) == bytes.fromhex("07000000000400000206")


def test_pdv_on_unaccepted_context_aborts(serve):
    server = serve()
    with raw_connect(server.port) as sock:
        sock.sendall(associate_rq())
        assert recv_pdu(sock)[0] == 0x02
        sock.sendall(p_data(3, 0x03, command_set((0x0100, b"\x30\x00"))))
        assert recv_exact(sock, 10) == bytes.fromhex("07000000000400000204")


@pytest.mark.parametrize(
    "config, rq_args, expected",
    [
        ({"require_called_ae": True}, {"called": b"WRONG"}, "0300000000040001 0107"),
        ({"calling_ae_allow": ["GOODSCU"]}, {"calling": b"BADSCU"}, "0300000000040001 0103"),
        ({}, {"version": 2}, "0300000000040001 0202"),
        ({}, {"app_context": b"1.2.3.4"}, "0300000000040001 0102"),
    ],
    ids=["called-ae", "calling-ae", "protocol-version", "application-context"],
)
def test_associate_rejections(serve, config, rq_args, expected):
    server = serve(**config)
    with raw_connect(server.port) as sock:
        sock.sendall(associate_rq(**rq_args))
        assert recv_exact(sock, 10) == bytes.fromhex(expected.replace(" ", ""))
        sock.close()
    assert wait_until(lambda: server.connections == 0)


def test_called_ae_accepted_when_right(serve):
    server = serve(require_called_ae=True, calling_ae_allow=["RAWSCU"])
    with raw_connect(server.port) as sock:
        sock.sendall(associate_rq(called=b"  DICOMACCEL"))  # leading spaces are insignificant
        pdu_type, ac = recv_pdu(sock)
        assert pdu_type == 0x02
        sock.sendall(bytes.fromhex("05000000000400000000"))
        assert recv_exact(sock, 10) == bytes.fromhex("06000000000400000000")


def test_too_many_associations_then_64_at_once(serve):
    server = serve(max_associations=2)
    socks = [raw_connect(server.port) for _ in range(3)]
    try:
        for sock in socks[:2]:
            sock.sendall(associate_rq())
            assert recv_pdu(sock)[0] == 0x02
        socks[2].sendall(associate_rq())
        # Rejected-transient, source 3 (presentation), local limit exceeded.
        assert recv_exact(socks[2], 10) == bytes.fromhex("03000000000400020302")
    finally:
        for sock in socks:
            sock.close()
    assert wait_until(lambda: server.connections == 0)

    server = serve()  # default max_associations=64
    socks = [raw_connect(server.port) for _ in range(64)]
    try:
        for sock in socks:
            sock.sendall(associate_rq())
        for sock in socks:
            assert recv_pdu(sock)[0] == 0x02
        assert server.active_associations == 64
        echo = command_set((0x0002, b"1.2.840.10008.1.1\x00"), (0x0100, b"\x30\x00"), (0x0110, b"\x01\x00"),
                           (0x0800, b"\x01\x01"))
        for sock in socks:
            sock.sendall(p_data(1, 0x03, echo))
        for sock in socks:
            pdu_type, body = recv_pdu(sock)
            assert pdu_type == 0x04
            # C-ECHO-RSP, Status 0: (0000,0900) US 0 is in the command PDV
            assert body[5] == 0x03 and struct.pack("<HHLH", 0, 0x0900, 2, 0) in body
        for sock in socks:
            sock.sendall(bytes.fromhex("05000000000400000000"))
        for sock in socks:
            assert recv_exact(sock, 10) == bytes.fromhex("06000000000400000000")
    finally:
        for sock in socks:
            sock.close()
    assert wait_until(lambda: server.connections == 0 and server.active_associations == 0)


def test_artim_closes_idle_unassociated_connection(serve):
    server = serve(artim_timeout=0.2)
    with raw_connect(server.port) as sock:
        assert closed_by_peer(sock)
    assert wait_until(lambda: server.connections == 0)


def test_artim_after_reject_closes_if_peer_stays(serve):
    server = serve(artim_timeout=0.2, require_called_ae=True)
    with raw_connect(server.port) as sock:
        sock.sendall(associate_rq(called=b"WRONG"))
        assert recv_exact(sock, 10)[0] == 0x03
        assert closed_by_peer(sock)  # Sta13: ARTIM expiry closes the transport (AA-2)


def test_peer_vanishes_mid_sub_operation(serve, loop):
    outcome = {}
    started = threading.Event()
    big = dataset_bytes(ct_instance(8 * 1024 * 1024))

    async def handle_get(assoc, request):
        (context,) = assoc.storage_contexts(CTImageStorage)
        started.set()
        try:
            await assoc.send_c_store(context, sop_class_uid=CTImageStorage, sop_instance_uid="1.2.3", dataset=big)
        except asyncio.CancelledError:
            outcome["result"] = "cancelled"
            raise
        except AssociationClosedError:
            outcome["result"] = "closed"
            raise
        outcome["result"] = "completed"

    server = serve(handlers={messages.C_GET_RQ: handle_get})
    get_cmd = command_set((0x0002, GET.encode() + b"\x00"), (0x0100, b"\x10\x00"), (0x0110, b"\x07\x00"),
                          (0x0700, b"\x00\x00"), (0x0800, b"\x01\x00"))
    identifier = dataset_bytes(_get_identifier(), implicit=True)
    ct = CTImageStorage.encode()
    sock = raw_connect(server.port)
    sock.sendall(associate_rq(
        contexts=((1, GET.encode(), (b"1.2.840.10008.1.2",)), (3, ct, (b"1.2.840.10008.1.2.1",))),
        roles=((ct, 0, 1),),
    ))
    assert recv_pdu(sock)[0] == 0x02
    sock.sendall(p_data(1, 0x03, get_cmd) + p_data(1, 0x02, identifier))
    assert started.wait(10)
    assert recv_pdu(sock)[0] == 0x04  # the C-STORE-RQ command, then data set PDVs
    # Vanish: reset the connection without a release or an abort.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    assert wait_until(lambda: "result" in outcome)
    assert outcome["result"] in ("cancelled", "closed")
    assert wait_until(lambda: server.connections == 0 and server.active_associations == 0)
    assert echo_works(server.port)


def test_release_collision_free_peer_abort(serve):
    # A-ABORT from the peer after association: the server closes without answering.
    server = serve()
    with raw_connect(server.port) as sock:
        sock.sendall(associate_rq())
        assert recv_pdu(sock)[0] == 0x02
        sock.sendall(bytes.fromhex("07000000000400000000"))
        assert closed_by_peer(sock)
    assert wait_until(lambda: server.connections == 0)


def test_byte_at_a_time_and_pdv_packing(serve):
    # Framing across TCP chunks, and PS3.8 Annex E packing: a command split over two PDUs,
    # then the last command fragment and the whole data set as two PDVs of one P-DATA-TF.
    got = {}

    async def handle_get(assoc, request):
        got["dataset"] = request.dataset
        got["command"] = request.command
        return Status.SUCCESS

    server = serve(handlers={messages.C_GET_RQ: handle_get})
    get_cmd = command_set((0x0002, GET.encode() + b"\x00"), (0x0100, b"\x10\x00"), (0x0110, b"\x09\x00"),
                          (0x0700, b"\x02\x00"), (0x0800, b"\x01\x00"))
    identifier = dataset_bytes(_get_identifier(), implicit=True)
    pdv = lambda control, payload: struct.pack(">LBB", len(payload) + 2, 1, control) + payload  # noqa: E731
    tail = pdv(0x03, get_cmd[20:]) + pdv(0x00, identifier[:10]) + pdv(0x02, identifier[10:])
    stream = (
        associate_rq(contexts=((1, GET.encode(), (b"1.2.840.10008.1.2",)),))
        + p_data(1, 0x01, get_cmd[:20])
        + struct.pack(">BxL", 0x04, len(tail)) + tail
    )
    with raw_connect(server.port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(stream)):
            sock.send(stream[i : i + 1])
        assert recv_pdu(sock)[0] == 0x02
        pdu_type, body = recv_pdu(sock)
        assert pdu_type == 0x04
        assert struct.pack("<HHLH", 0, 0x0900, 2, 0) in body and struct.pack("<HHLH", 0, 0x0120, 2, 9) in body
    assert got["dataset"] == identifier
    assert got["command"]["MessageID"] == 9 and got["command"]["Priority"] == 2


def test_idle_timeout_spares_our_own_work_but_not_a_silent_peer(serve):
    outcome = {}

    async def slow_then_store(assoc, request):
        await asyncio.sleep(0.8)  # our own work, longer than the idle timeout: no abort
        outcome["after_work"] = assoc.is_established
        (context,) = assoc.storage_contexts(CTImageStorage)
        small = ct_instance(64)
        start = time.monotonic()
        try:
            await assoc.send_c_store(context, sop_class_uid=CTImageStorage,
                                     sop_instance_uid=small.SOPInstanceUID, dataset=dataset_bytes(small))
        finally:
            # Ended by the abort, not by the peer's answer 5 s later.
            outcome["store_seconds"] = time.monotonic() - start

    server = serve(handlers={messages.C_GET_RQ: slow_then_store}, idle_timeout=0.3)

    def on_store(event):
        time.sleep(5)  # a peer that never answers in time
        return 0x0000

    ae = scu(contexts=())
    ae.add_requested_context(GET)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", server.port, ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    list(assoc.send_c_get(_get_identifier(), GET))
    assert wait_until(lambda: assoc.is_aborted)
    assert outcome["after_work"] is True
    assert wait_until(lambda: "store_seconds" in outcome)
    assert outcome["store_seconds"] < 4.0  # the idle timeout is 0.3 s, the peer answers after 5 s
    assert wait_until(lambda: server.active_associations == 0)


def test_non_ascii_affected_sop_class_is_answered_and_the_association_goes_on(serve):
    server = serve()

    def echo_rq(message_id: int, uid: bytes) -> bytes:
        return p_data(1, 0x03, command_set((0x0002, uid), (0x0100, b"\x30\x00"),
                                           (0x0110, struct.pack("<H", message_id)), (0x0800, b"\x01\x01")))

    with raw_connect(server.port) as sock:
        sock.sendall(associate_rq())
        assert recv_pdu(sock)[0] == 0x02
        sock.sendall(echo_rq(1, b"1.2.840.10008.1.\xe9\x00"))
        pdu_type, body = recv_pdu(sock)
        assert pdu_type == 0x04
        assert b"1.2.840.10008.1.1" in body  # answered with the context's SOP Class
        sock.sendall(echo_rq(2, b"1.2.840.10008.1.1\x00"))
        assert recv_pdu(sock)[0] == 0x04  # and the next request is served


def test_tiny_maximum_length_is_rejected(serve):
    # A peer asking for 16-byte PDUs would make us send 12 header bytes per 2-4 bytes of data;
    # below 4096 the association is rejected (1, 1, 1). 4096 itself is accepted; 0 means no limit.
    server = serve()
    for max_length, expected in ((16, 0x03), (4095, 0x03), (4096, 0x02), (0, 0x02)):
        with raw_connect(server.port) as sock:
            sock.sendall(associate_rq(max_length=max_length))
            pdu_type, body = recv_pdu(sock)
            assert pdu_type == expected, max_length
            if expected == 0x03:
                assert body[1:4] == bytes((1, 1, 1))  # permanent, service user, no reason


def test_ae_permissions_refuse_the_contexts_an_ae_may_not_use(server_factory, tmp_path):
    # From the configuration file: WORKSTATION may retrieve, MODALITY may not (its C-GET
    # context is refused, result 1, while Verification on the same association works).
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

    config = tmp_path / "dicomaccel.toml"
    config.write_text('[ae-permissions]\nWORKSTATION = ["get"]\nMODALITY = []\n')
    server = server_factory("--config", str(config))
    for calling, expected in (("WORKSTATION", True), ("MODALITY", False), ("UNLISTED", False)):
        ae = AE(ae_title=calling)
        ae.add_requested_context(Verification)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="DICOMACCEL")
        assert assoc.is_established
        get_ok = any(cx.abstract_syntax == StudyRootQueryRetrieveInformationModelGet
                     for cx in assoc.accepted_contexts)
        assert get_ok == expected, calling
        rejected = [cx.result for cx in assoc.rejected_contexts
                    if cx.abstract_syntax == StudyRootQueryRetrieveInformationModelGet]
        assert rejected == ([] if expected else [0x01])
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()


def test_streamed_data_set_arrives_as_views_the_reads_never_overwrite(serve):
    # The kernel reads into buffers of the connection's own and the data set's PDV payloads
    # are handed up as views of them (association.READ_FIRST). PDUs from 3 bytes to 1 MiB
    # (the largest our Maximum Length allows), split across writes at odd places, and a
    # second C-STORE-RQ sent in the same write as the first one's last bytes: every view is
    # read-only, the two data sets arrive whole and in order, and every view still holds at
    # the end what it held when handed up (no buffer was written twice).
    from dicomaccel.dimse.association import READ_FIRST

    ct = str(CTImageStorage)
    seen = []  # (view, its bytes when handed up), per request
    done = threading.Event()

    async def handle_store(assoc, request):
        mine = []
        while fragments := await request.stream.read():
            mine += [(f, bytes(f)) for f in fragments]
        seen.append(mine)
        if len(seen) == 2:
            done.set()
        return Status.SUCCESS

    server = serve(supported_abstract_syntaxes=[ct], handlers={messages.C_STORE_RQ: handle_store},
                   stream_commands=[messages.C_STORE_RQ])
    rng = __import__("random").Random(7)
    sizes = [[3, READ_FIRST + 1, (1 << 20) - 6, 4099, 200_001], [17, READ_FIRST - 6, 3]]
    datasets = [rng.randbytes(sum(s)) for s in sizes]

    def c_store(message_id, dataset, split):
        out = p_data(1, 0x03, command_set(
            (0x0002, ct.encode() + b"\x00"), (0x0100, b"\x01\x00"), (0x0110, struct.pack("<H", message_id)),
            (0x0700, b"\x00\x00"), (0x0800, b"\x00\x00"), (0x1000, b"1.2.3.%d\x00" % message_id)))
        pos = 0
        for i, n in enumerate(split):
            out += p_data(1, 0x02 if i == len(split) - 1 else 0x00, dataset[pos:pos + n])
            pos += n
        return out

    stream = (associate_rq(contexts=((1, ct.encode(), (b"1.2.840.10008.1.2.1",)),), max_length=0)
              + c_store(1, datasets[0], sizes[0]) + c_store(2, datasets[1], sizes[1]))
    with raw_connect(server.port) as sock:
        pos = 0
        for step in itertools.cycle((65_521, 7, 300_007, 1)):
            if pos >= len(stream):
                break
            sock.sendall(stream[pos:pos + step])
            pos += step
        assert recv_pdu(sock)[0] == 0x02
        for message_id in (1, 2):
            pdu_type, body = recv_pdu(sock)
            assert pdu_type == 0x04 and struct.pack("<HHLH", 0, 0x0120, 2, message_id) in body
            assert struct.pack("<HHLH", 0, 0x0900, 2, 0) in body
        assert done.wait(10)
    for dataset, mine in zip(datasets, seen):
        assert b"".join(held for _, held in mine) == dataset
        for view, held in mine:
            # A view of a read buffer (before: of the transport's bytes, or of their join).
            assert isinstance(view, memoryview) and view.readonly and type(view.obj) is bytearray
            assert view == held
