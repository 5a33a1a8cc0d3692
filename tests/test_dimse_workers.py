"""DIMSE on every worker of ``dicomaccel serve --workers 2``: associations spread over the
workers, ``--max-associations`` exact across them, C-STORE, C-GET, C-MOVE and Storage
Commitment, a stopped worker and a killed one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (CTImageStorage, StorageCommitmentPushModel,
                                  StudyRootQueryRetrieveInformationModelGet,
                                  StudyRootQueryRetrieveInformationModelMove)

from dicomaccel.testing import at_once, connections_held, dcmtk_program, multipart, post, wait_until, worker_pids
from dicomaccel.testing import files as dicomgen
from dicomaccel.testing.pdu import associate_rq, recv_exact, recv_pdu
from dicomaccel.testing.scu import assert_counts, c_get, echo, identifier

AC, RJ = 0x02, 0x03
# A-ASSOCIATE-RJ body: reserved, rejected-transient (2), service-provider presentation related
# (3), local limit exceeded (2): PS3.8 9.3.4, what one process answers beyond the limit.
LIMIT_EXCEEDED = bytes((0, 2, 3, 2))
RELEASE_RQ, RELEASE_RP = bytes.fromhex("05000000000400000000"), bytes.fromhex("06000000000400000000")
STORESCU = dcmtk_program("storescu")


def _together(port: int, count: int) -> list[tuple[socket.socket, int, bytes]]:
    """``count`` connections made at the same instant (threads at a barrier), each sending an
    A-ASSOCIATE-RQ: (socket, PDU type answered, its body)."""
    def one() -> tuple:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(associate_rq())
        return (sock, *recv_pdu(sock))

    return at_once(count, one)


def _held(workers: list[int], port: int) -> list[int]:
    return [connections_held(pid, port) for pid in workers]


def _close_all(socks, workers: list[int], port: int) -> None:
    for sock, *_ in socks:
        sock.close()
    # Closed by the workers too, not only by us (CLOSE_WAIT: the worker has yet to see it).
    assert wait_until(lambda: sum(connections_held(pid, port, ("01", "08")) for pid in workers) == 0,
                      timeout=30)


def _both_accepting(workers: list[int], port: int) -> bool:
    """True once two associations made together land one on each worker (a worker still
    starting is not on the DIMSE board, and the other takes both). Associations, not bare
    connections: a worker's first association keeps its event loop several ms longer than
    the next ones (first-time set-up, more on a loaded machine), which would otherwise make
    the other worker take a connection it deferred (accept.MAX_DEFER) in the test that
    follows."""
    socks = _together(port, 2)
    try:
        return wait_until(lambda: sum(_held(workers, port)) == 2, timeout=10) and \
            sorted(_held(workers, port)) == [1, 1]
    finally:
        _close_all(socks, workers, port)


def _serving(server_factory, *args: str) -> tuple:
    server = server_factory("--workers", "2", *args)
    workers = worker_pids(server.process.pid)
    assert len(workers) == 2
    assert wait_until(lambda: _both_accepting(workers, server.dimse_port), timeout=60)
    return server, workers


def test_associations_spread_over_the_workers(server_factory):
    """Four associations opened together are served two by each worker, not 3 + 1 or all by
    one (before, worker 0 served every association on one core)."""
    server, workers = _serving(server_factory)
    port = server.dimse_port
    for _ in range(5):
        socks = _together(port, 4)
        try:
            assert [answer for _, answer, _ in socks] == [AC] * 4
            assert sorted(_held(workers, port)) == [2, 2]
        finally:
            _close_all(socks, workers, port)


def test_association_limit_holds_across_workers(server_factory):
    """``--max-associations 2`` over two workers: of ten associations requested at the same
    instant, over both workers, exactly two are accepted, the others get the A-ASSOCIATE-RJ one
    process gives; a third while two are held is refused whichever worker takes it; a release
    makes room again."""
    server, workers = _serving(server_factory, "--max-associations", "2")
    port = server.dimse_port
    socks = _together(port, 10)
    try:
        assert sorted(answer for _, answer, _ in socks) == [AC] * 2 + [RJ] * 8
        assert all(body == LIMIT_EXCEEDED for _, answer, body in socks if answer == RJ)
        assert min(_held(workers, port)) > 0  # both workers took some: the limit is not one worker's
        accepted = [sock for sock, answer, _ in socks if answer == AC]
        for _ in range(4):  # each new connection goes to either worker
            with socket.create_connection(("127.0.0.1", port), timeout=30) as third:
                third.sendall(associate_rq())
                assert recv_exact(third, 10) == bytes.fromhex("030000000004") + LIMIT_EXCEEDED
        accepted[0].sendall(RELEASE_RQ)
        assert recv_exact(accepted[0], 10) == RELEASE_RP
        assert wait_until(lambda: echo(port), timeout=30, interval=0.1)
    finally:
        _close_all(socks, workers, port)


def test_a_killed_workers_associations_are_given_back(server_factory):
    """A worker killed while it holds the only association allowed: the supervisor clears its
    counts, so the limit does not stay reached (the kernel closed its connections)."""
    server, workers = _serving(server_factory, "--max-associations", "1")
    port = server.dimse_port
    ((sock, answer, _),) = _together(port, 1)
    try:
        assert answer == AC
        (holder,) = [pid for pid in workers if connections_held(pid, port) == 1]
        os.kill(holder, signal.SIGKILL)
        assert wait_until(lambda: echo(port), timeout=60, interval=0.2)
    finally:
        sock.close()


def test_a_stopped_worker_does_not_hold_up_new_associations(server_factory):
    """A worker that does not accept (stopped with SIGSTOP; in life, a long C-FIND or a busy
    store) only delays a new association (accept.MAX_DEFER): the other worker serves it."""
    server, workers = _serving(server_factory)
    port = server.dimse_port
    os.kill(workers[0], signal.SIGSTOP)
    try:
        socks = _together(port, 3)
        assert [answer for _, answer, _ in socks] == [AC] * 3
        assert connections_held(workers[1], port) == 3
        assert echo(port)
        for sock, *_ in socks:
            sock.close()
    finally:
        os.kill(workers[0], signal.SIGCONT)


@pytest.mark.skipif(STORESCU is None, reason="DCMTK storescu not installed")
def test_storescu_in_parallel_then_c_get(server_factory, tmp_path):
    """Four storescu associations at once into two workers, then one C-GET of the study
    (served by either worker) returns every instance."""
    server, _ = _serving(server_factory)
    study = generate_uid()
    folders = []
    for n in range(4):
        folder = tmp_path / f"in{n}"
        folder.mkdir()
        series = generate_uid()
        for i in range(5):
            (folder / f"{i}.dcm").write_bytes(dicomgen.ct_instance(study, series, i + 1, 64, 64))
        folders.append(folder)
    runs = [subprocess.Popen([STORESCU, "-aec", "DICOMACCEL", "+sd", "127.0.0.1", str(server.dimse_port),
                              str(folder)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for folder in folders]
    for run in runs:
        out, _ = run.communicate(timeout=120)
        assert run.returncode == 0, out
    result = c_get(server.dimse_port, StudyRootQueryRetrieveInformationModelGet,
                   identifier("STUDY", StudyInstanceUID=study))
    assert_counts(result.final, 20)
    assert len({r.sop_instance_uid for r in result.received}) == 20


def test_move_and_commitment_served_by_either_worker(server_factory):
    """C-MOVE (to a destination the worker associates with) and Storage Commitment (report on
    the requester's association) from each of two workers: one association held on each."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dest_port = s.getsockname()[1]
    received: list[str] = []
    dest = AE(ae_title="DEST")
    dest.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    listener = dest.start_server(("127.0.0.1", dest_port), block=False, evt_handlers=[
        (evt.EVT_C_STORE, lambda event: received.append(event.request.AffectedSOPInstanceUID) or 0)])
    server, workers = _serving(server_factory, "--move-destination", f"DEST=127.0.0.1:{dest_port}")
    port = server.dimse_port
    study, series = generate_uid(), generate_uid()
    files = [dicomgen.ct_instance(study, series, n, 16, 16) for n in (1, 2, 3)]
    assert post(server, multipart(files))[0] == 200
    sops = [(CTImageStorage, dicomgen.sop_of(f)) for f in files]
    reports: list = []
    held: list = []

    def associate():
        ae = AE(ae_title="MODALITY")
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 30
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", port, evt_handlers=[
            (evt.EVT_N_EVENT_REPORT, lambda event: reports.append(event.request.EventTypeID) or (0, None))])
        assert assoc.is_established
        return assoc

    try:
        for _ in range(5):  # one association on each worker (the board spreads them)
            held = [associate(), associate()]
            if sorted(_held(workers, port)) == [1, 1]:
                break
            for assoc in held:
                assoc.release()
        assert sorted(_held(workers, port)) == [1, 1]
        for n, assoc in enumerate(held, 1):
            responses = list(assoc.send_c_move(identifier("STUDY", StudyInstanceUID=study), "DEST",
                                               StudyRootQueryRetrieveInformationModelMove))
            final = responses[-1][0]
            assert final.Status == 0x0000
            assert_counts(final, len(files))
            info = Dataset()
            info.TransactionUID = generate_uid()
            info.ReferencedSOPSequence = []
            for sop_class, sop_instance in sops:
                item = Dataset()
                item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
                info.ReferencedSOPSequence.append(item)
            status, _ = assoc.send_n_action(info, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
            assert status.Status == 0x0000
            assert wait_until(lambda: len(reports) == n, timeout=20)
        assert reports == [1, 1]  # Event Type 1: every instance committed
        assert sorted(received) == sorted([sop for _, sop in sops] * 2)
    finally:
        for assoc in held:
            assoc.release()
        listener.shutdown()
