"""Protocol abuse against a real `dicomaccel serve`: it answers as PS3.8 says, keeps serving
others, and its memory returns to where it was."""

from __future__ import annotations

import socket
import struct
import threading
import time

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicomaccel.testing import files as dicomgen
from dicomaccel.testing import memory_kib, multipart, post
from dicomaccel.testing.pdu import associate_rq, command_set, dataset_bytes, p_data, recv_pdu
from dicomaccel.testing.scu import echo

STUDY_GET = b"1.2.840.10008.5.1.4.1.2.2.3"
MULTIFRAME = dicomgen.MULTIFRAME_CLASS.encode()




def answer(port: int, payload: bytes) -> int | None:
    """Send ``payload`` on a new connection; the type of the PDU we get back (None: closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        try:
            return recv_pdu(sock)[0]
        except (ConnectionError, OSError):
            return None


def vanish_mid_c_get(port: int, study_uid: str) -> None:
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = study_uid
    get_cmd = command_set((0x0002, STUDY_GET + b"\x00"), (0x0100, b"\x10\x00"), (0x0110, b"\x01\x00"),
                          (0x0700, b"\x00\x00"), (0x0800, b"\x01\x00"))
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(associate_rq(contexts=((1, STUDY_GET, (b"1.2.840.10008.1.2",)),
                                        (3, MULTIFRAME, (b"1.2.840.10008.1.2.1",))),
                              roles=((MULTIFRAME, 0, 1),)))
    assert recv_pdu(sock)[0] == 0x02
    sock.sendall(p_data(1, 0x03, get_cmd) + p_data(1, 0x02, dataset_bytes(ident, implicit=True)))
    assert recv_pdu(sock)[0] == 0x04  # the sub-operation has started
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # reset, no release, no abort


def test_abuse_is_answered_and_memory_returns(server_factory):
    server = server_factory("--max-associations", "64")
    port = server.dimse_port
    study = generate_uid()
    big = dicomgen.multiframe_instance(64, 512, 512, study_uid=study)  # 33 MB, many PDUs
    assert post(server, multipart([big]))[0] == 200

    vanish_mid_c_get(port, study)
    assert echo(port)
    time.sleep(0.5)
    baseline = memory_kib(server.process.pid) / 1024

    for _ in range(10):
        assert answer(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(64)) in (0x07, None)  # garbage
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(associate_rq()[:20])  # a truncated PDU, then the peer is gone
        assert answer(port, p_data(1, 0x03, b"\0" * 16)) == 0x07  # P-DATA before association
        assert answer(port, struct.pack(">BxL", 0x01, 0xFFFFFFF0)) == 0x07  # absurd length
        vanish_mid_c_get(port, study)

    results = []

    def one():
        results.append(echo(port))

    threads = [threading.Thread(target=one) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results.count(True) == 64

    assert echo(port)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and memory_kib(server.process.pid) / 1024 > baseline + 24:
        time.sleep(0.2)
    assert memory_kib(server.process.pid) / 1024 <= baseline + 24, (baseline, memory_kib(server.process.pid) / 1024)


def test_c_get_on_a_context_of_another_sop_class_is_refused(server_factory):
    server = server_factory()
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = "1.2.3"
    get_cmd = command_set((0x0002, STUDY_GET + b"\x00"), (0x0100, b"\x10\x00"), (0x0110, b"\x05\x00"),
                          (0x0700, b"\x00\x00"), (0x0800, b"\x01\x00"))
    with socket.create_connection(("127.0.0.1", server.dimse_port), timeout=10) as sock:
        sock.sendall(associate_rq())  # Verification only, on context 1
        assert recv_pdu(sock)[0] == 0x02
        sock.sendall(p_data(1, 0x03, get_cmd) + p_data(1, 0x02, dataset_bytes(ident, implicit=True)))
        pdu_type, body = recv_pdu(sock)
    assert pdu_type == 0x04
    # Status (0000,0900) US = 0x0122 SOP Class Not Supported, in the C-GET-RSP command.
    assert b"\x00\x00\x00\x09\x02\x00\x00\x00\x22\x01" in body


def _alive(socks) -> int:
    """How many of ``socks`` the server still holds open (b"" from recv: closed by it)."""
    alive = 0
    for sock in socks:
        sock.setblocking(False)
        try:
            alive += sock.recv(1) != b""
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    return alive


def test_connections_waiting_to_associate_are_capped(server_factory):
    # 40 connections each sending most of an A-ASSOCIATE-RQ that claims 256 KiB and never
    # finishing it: with --max-associations 4, only 4 + PENDING_SLACK (16) are admitted; the
    # rest are closed at once, so memory before association stays bounded. Once they are
    # gone, an association works again.
    from dicomaccel.testing import memory_kib, wait_until

    server = server_factory("--max-associations", "4")
    pid = server.process.pid
    before = memory_kib(pid, "VmRSS")
    partial = struct.pack(">BxL", 0x01, 256 * 1024) + b"\0" * (250 * 1024)
    held = []
    for _ in range(40):
        sock = socket.create_connection(("127.0.0.1", server.dimse_port), timeout=10)
        try:
            sock.sendall(partial)
            held.append(sock)
        except OSError:
            sock.close()
    assert wait_until(lambda: _alive(held) == 4 + 16, timeout=10), _alive(held)
    assert memory_kib(pid, "VmRSS") - before < 20 << 10  # at most 20 x 256 KiB buffered
    for sock in held:
        sock.close()
    ae = AE(ae_title="AFTER")
    ae.add_requested_context(Verification)

    def associates() -> bool:
        assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="DICOMACCEL")
        if assoc.is_established:
            assoc.release()
            return True
        return False

    assert wait_until(associates, timeout=10, interval=0.2)


def test_long_pdus_announced_and_trickled_hold_little_memory(server_factory):
    # 40 associations each announce a P-DATA-TF of our whole Maximum Length (1 MiB) and send
    # two bytes of it, in two reads: each holds its first read buffer (association.READ_FIRST,
    # 64 KiB), not a buffer of the PDU's length (40 MiB, zeroed) for bytes it has not sent.
    server = server_factory()
    port = server.dimse_port
    socks = []
    try:
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            socks.append(sock)
            sock.sendall(associate_rq())
            assert recv_pdu(sock)[0] == 0x02
        time.sleep(0.3)
        before = memory_kib(server.process.pid)
        for sock in socks:
            sock.sendall(struct.pack(">BxL", 0x04, 1 << 20) + b"\x00")
        time.sleep(0.3)
        for sock in socks:  # a second read, into the buffer the first one left
            sock.sendall(b"\x00")
        time.sleep(1)  # every association has read its bytes
        grown = memory_kib(server.process.pid) - before
        assert grown < 16 << 10, f"{grown} KiB"
    finally:
        for sock in socks:
            sock.close()
    assert echo(port)  # still serving
