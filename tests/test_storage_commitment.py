"""Storage Commitment Push Model SCP (PS3.4 Annex J): a real `dicomaccel serve` on 127.0.0.1
driven by pynetdicom as the SCU: N-ACTION-RQ, then the N-EVENT-REPORT-RQ on the same
association, or on a new one to a pynetdicom listener once the requester released; failure
reasons, malformed requests, the reference limit, and the [ae-permissions] entry."""

from __future__ import annotations

import socket
import threading
import time
from io import BytesIO

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.dimse_primitives import N_ACTION
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    StorageCommitmentPushModel,
    Verification,
)

from dicomaccel.commitment_scp import MAX_PENDING_REPORTS, MAX_REFERENCES
from dicomaccel.testing import wait_until

pytestmark = pytest.mark.timeout(120)

WELL_KNOWN = "1.2.840.10008.1.20.1.1"
PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"  # refused by the server's store policy below


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ae(title: str) -> AE:
    ae = AE(ae_title=title)
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 30
    return ae


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A server knowing MODALITY as a destination, with CT_small and MR_small stored over
    C-STORE; PDF storage refused by policy."""
    from dicomaccel.testing import start_server

    port = _free_port()
    server = start_server(tmp_path_factory.mktemp("commit") / "data",
                          "--move-destination", f"MODALITY=127.0.0.1:{port}",
                          "--reject-sop-class", PDF_STORAGE)
    stored = {}
    ae = _ae("MODALITY")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", server.dimse_port)
    assert assoc.is_established
    try:
        for name in ("CT_small.dcm", "MR_small.dcm"):
            ds = pydicom.dcmread(get_testdata_file(name))
            status = assoc.send_c_store(ds)
            assert status.Status == 0x0000
            stored[name] = (str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    finally:
        assoc.release()
    yield server, port, stored
    server.stop()


def action_information(references, transaction_uid: str | None = None) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction_uid or generate_uid()
    items = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


class Reports:
    """N-EVENT-REPORT-RQs received (by a requester association or a listener)."""

    def __init__(self) -> None:
        self.received: list[tuple] = []
        self.arrived = threading.Event()

    def __call__(self, event):
        info = event.event_information
        self.received.append((event.request.EventTypeID, info, event.assoc.requestor.ae_title,
                              str(event.request.AffectedSOPInstanceUID)))
        self.arrived.set()
        return 0x0000, None


def commit(port: int, references, *, ae_title: str = "MODALITY", wait_report: bool = True,
           transaction_uid: str | None = None, roles=()):
    """N-ACTION-RQ on a new association; with ``wait_report`` the report is awaited on it
    before release, otherwise the association is aborted at once (no handler for reports).
    Aborted, not released: a report our server sends while pynetdicom's release is under way
    stops pynetdicom's reactor (it answers in Sta7, an invalid event for its state machine)
    and its release() then waits 30 s for nothing; our server is not concerned, it takes a
    release or an abort alike and reports on a new association.
    Returns (N-ACTION-RSP status, reports received on this association, transaction UID)."""
    reports = Reports()
    ae = _ae(ae_title)
    ae.add_requested_context(StorageCommitmentPushModel)
    handlers = [(evt.EVT_N_EVENT_REPORT, reports)] if wait_report else []
    assoc = ae.associate("127.0.0.1", port, ext_neg=list(roles), evt_handlers=handlers)
    assert assoc.is_established
    ds = action_information(references, transaction_uid)
    try:
        status, _ = assoc.send_n_action(ds, 1, StorageCommitmentPushModel, WELL_KNOWN)
        if wait_report and status.Status == 0x0000:
            assert reports.arrived.wait(20), "no N-EVENT-REPORT on the same association"
    finally:
        if wait_report:
            assoc.release()
        else:
            assoc.abort()
    return status, reports, str(ds.TransactionUID)


def refs(info: Dataset, keyword: str) -> list[tuple]:
    return [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID), i.get("FailureReason"))
            for i in info.get(keyword, [])]


def test_all_committed_is_event_type_1_on_the_same_association(archive):
    server, _, stored = archive
    references = [stored["CT_small.dcm"], stored["MR_small.dcm"]]
    status, reports, transaction = commit(server.dimse_port, references)
    assert status.Status == 0x0000
    assert len(reports.received) == 1
    event_type, info, _, instance = reports.received[0]
    assert event_type == 1 and instance == WELL_KNOWN
    assert info.TransactionUID == transaction
    assert refs(info, "ReferencedSOPSequence") == [(c, i, None) for c, i in references]
    assert "FailedSOPSequence" not in info
    assert info.RetrieveAETitle == "DICOMACCEL"


def test_role_selection_proposed_by_the_requester(archive):
    """A requester proposing both roles (PS3.7 D.3.3.4) gets both; the report still comes on
    its association."""
    server, _, stored = archive
    status, reports, _ = commit(server.dimse_port, [stored["CT_small.dcm"]],
                                roles=[build_role(StorageCommitmentPushModel, scu_role=True, scp_role=True)])
    assert status.Status == 0x0000
    assert [r[0] for r in reports.received] == [1]


def test_failures_are_event_type_2_with_their_reasons(archive):
    server, _, stored = archive
    ct_class, ct_uid = stored["CT_small.dcm"]
    unknown = generate_uid()
    references = [
        (ct_class, ct_uid),                    # committed
        (ct_class, unknown),                   # 0112 No such object instance
        (MRImageStorage, ct_uid),              # 0119 Class/Instance conflict
        (PDF_STORAGE, generate_uid()),         # 0122 Referenced SOP Class not supported
    ]
    status, reports, transaction = commit(server.dimse_port, references)
    assert status.Status == 0x0000
    event_type, info, _, _ = reports.received[0]
    assert event_type == 2
    assert info.TransactionUID == transaction
    assert refs(info, "ReferencedSOPSequence") == [(ct_class, ct_uid, None)]
    failed = refs(info, "FailedSOPSequence")
    assert failed == [(ct_class, unknown, 0x0112), (MRImageStorage, ct_uid, 0x0119),
                      (references[3][0], references[3][1], 0x0122)]


def test_nothing_committed_leaves_out_the_referenced_sequence(archive):
    server, _, _ = archive
    status, reports, _ = commit(server.dimse_port, [(CTImageStorage, generate_uid())])
    event_type, info, _, _ = reports.received[0]
    assert event_type == 2 and "ReferencedSOPSequence" not in info
    assert [r[2] for r in refs(info, "FailedSOPSequence")] == [0x0112]


class Listener:
    """The requester's own SCP for reports on a new association (PS3.4 J.3.3.1.3): it accepts
    the SCP role proposed by the Storage Commitment SCP, unless ``accept_scp_role`` is False."""

    def __init__(self, port: int, ae_title: str = "MODALITY", accept_scp_role: bool = True,
                 ssl_context=None) -> None:
        self.reports = Reports()
        self.associations = []
        ae = _ae(ae_title)
        if accept_scp_role:
            ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
        else:
            ae.add_supported_context(StorageCommitmentPushModel)
        self.server = ae.start_server(("127.0.0.1", port), block=False, ssl_context=ssl_context, evt_handlers=[
            (evt.EVT_N_EVENT_REPORT, self.reports),
            (evt.EVT_ACCEPTED, lambda event: self.associations.append(event.assoc.requestor.ae_title))])

    def close(self) -> None:
        self.server.shutdown()


def test_requester_gone_before_the_report_gets_it_from_the_configured_destination(archive):
    server, port, stored = archive
    listener = Listener(port)
    try:
        references = [stored["CT_small.dcm"], (CTImageStorage, generate_uid())]
        status, on_request, transaction = commit(server.dimse_port, references, wait_report=False)
        assert status.Status == 0x0000
        assert listener.reports.arrived.wait(20), "no report on a new association"
        assert on_request.received == []
        assert len(listener.reports.received) == 1
        event_type, info, calling, instance = listener.reports.received[0]
        assert (event_type, calling, instance) == (2, "DICOMACCEL", WELL_KNOWN)
        assert info.TransactionUID == transaction
        assert refs(info, "ReferencedSOPSequence") == [(*stored["CT_small.dcm"], None)]
        assert [r[2] for r in refs(info, "FailedSOPSequence")] == [0x0112]
        # The association is released once the report is answered.
        assert wait_until(lambda: not listener.server.active_associations, 10)
    finally:
        listener.close()


def test_failure_answer_on_the_same_association_is_retried_on_a_new_one(archive):
    """A requester that cannot take the report on its own association (it answers 0110) gets
    it on a new one (PS3.4 J.3.3.1.3: an SCU shall be capable of receiving it there)."""
    server, port, stored = archive
    listener = Listener(port)
    refused = Reports()
    try:
        ae = _ae("MODALITY")
        ae.add_requested_context(StorageCommitmentPushModel)

        def on_report(event):
            refused(event)
            return 0x0110, None

        assoc = ae.associate("127.0.0.1", server.dimse_port, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
        ds = action_information([stored["MR_small.dcm"]])
        try:
            status, _ = assoc.send_n_action(ds, 1, StorageCommitmentPushModel, WELL_KNOWN)
            assert status.Status == 0x0000
            assert refused.arrived.wait(20) and listener.reports.arrived.wait(20)
        finally:
            assoc.release()
        assert [r[0] for r in refused.received] == [1] and [r[0] for r in listener.reports.received] == [1]
        assert listener.reports.received[0][1].TransactionUID == ds.TransactionUID
    finally:
        listener.close()


def test_destination_refusing_the_scp_role_gets_no_report(archive):
    """PS3.7 D.3.3.4: without the SCP role granted we may not send the N-EVENT-REPORT."""
    server, port, stored = archive
    listener = Listener(port, accept_scp_role=False)
    try:
        _, _, transaction = commit(server.dimse_port, [stored["CT_small.dcm"]], wait_report=False)
        assert wait_until(lambda: _logged(server, transaction, "dropped"), 20)
        assert "did not accept the SCP role" in _logged(server, transaction, "dropped")
        assert listener.associations == ["DICOMACCEL"] and listener.reports.received == []
    finally:
        listener.close()


def _logged(server, *words: str) -> str | None:
    """The first line of the server's log holding every one of ``words``."""
    return next((x for x in server.log.read_text().splitlines() if all(w in x for w in words)), None)


def test_unknown_requester_report_is_logged_and_dropped(archive):
    server, _, stored = archive
    status, _, transaction = commit(server.dimse_port, [stored["CT_small.dcm"]], ae_title="STRANGER",
                                    wait_report=False)
    assert status.Status == 0x0000
    assert wait_until(lambda: _logged(server, transaction, "dropped"), 20)
    line = _logged(server, transaction, "dropped")
    assert "STRANGER is not a configured destination" in line
    assert server.process.poll() is None
    # The server goes on serving.
    status, reports, _ = commit(server.dimse_port, [stored["MR_small.dcm"]])
    assert status.Status == 0x0000 and reports.received[0][0] == 1


def _raw_action(assoc, dataset_bytes, action_type=1, instance=WELL_KNOWN, class_uid=StorageCommitmentPushModel,
                msg_id=7):
    """Send an N-ACTION-RQ whose Action Information is ``dataset_bytes`` as given."""
    req = N_ACTION()
    req.MessageID = msg_id
    req.RequestedSOPClassUID = class_uid
    req.RequestedSOPInstanceUID = instance
    req.ActionTypeID = action_type
    if dataset_bytes is not None:
        req.ActionInformation = BytesIO(dataset_bytes)
    context = assoc._get_valid_context(StorageCommitmentPushModel, "", "scu")
    # As send_n_action does: hold the association's reactor so the response comes to us.
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(req, context.context_id)
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    return rsp


def _encoded(ds: Dataset) -> bytes:
    buf = pydicom.filebase.DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(buf, ds)
    return buf.getvalue()


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_malformed_requests_get_failure_statuses_and_the_association_stays_usable(archive):
    server, _, stored = archive
    ae = _ae("MODALITY")
    ae.add_requested_context(StorageCommitmentPushModel, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    reports = Reports()
    assoc = ae.associate("127.0.0.1", server.dimse_port, evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports)])
    assert assoc.is_established
    good = action_information([stored["CT_small.dcm"]])
    try:
        def check(status, expected, comment_part):
            assert status.Status == expected, status
            assert comment_part.lower() in str(status.get("ErrorComment", "")).lower(), status

        # PS3.4 J.3.2.1.2: Action Type ID 1 only.
        status, _ = assoc.send_n_action(good, 2, StorageCommitmentPushModel, WELL_KNOWN)
        check(status, 0x0123, "Action Type ID")
        # The well-known instance only: another UID is no such instance, a non-UID invalid.
        status, _ = assoc.send_n_action(good, 1, StorageCommitmentPushModel, "1.2.3.4")
        check(status, 0x0112, WELL_KNOWN)
        rsp = _raw_action(assoc, _encoded(good), instance="1.2.x")
        assert rsp.Status == 0x0117
        # No Transaction UID; an empty sequence; an item without its instance UID.
        no_transaction = action_information([stored["CT_small.dcm"]])
        del no_transaction.TransactionUID
        status, _ = assoc.send_n_action(no_transaction, 1, StorageCommitmentPushModel, WELL_KNOWN)
        check(status, 0x0115, "Transaction UID")
        status, _ = assoc.send_n_action(action_information([]), 1, StorageCommitmentPushModel, WELL_KNOWN)
        check(status, 0x0115, "Referenced SOP Sequence")
        half = action_information([stored["CT_small.dcm"]])
        del half.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        status, _ = assoc.send_n_action(half, 1, StorageCommitmentPushModel, WELL_KNOWN)
        check(status, 0x0115, "Instance UID")
        # Not a data set at all, and none at all.
        rsp = _raw_action(assoc, b"\x08\x00\x95\x11UI\xff\xff" + b"1" * 20)
        assert rsp.Status == 0x0110 and "cannot be decoded" in rsp.ErrorComment
        rsp = _raw_action(assoc, None)
        assert rsp.Status == 0x0115
        # Beyond the documented limit: 0213, no report.
        too_many = [(CTImageStorage, f"1.2.826.0.1.3680043.10.1.{n}") for n in range(MAX_REFERENCES + 1)]
        status, _ = assoc.send_n_action(action_information(too_many), 1, StorageCommitmentPushModel, WELL_KNOWN)
        check(status, 0x0213, str(MAX_REFERENCES))
        assert reports.received == []
        # Still usable: Verification, and a good request with its report.
        assert assoc.send_c_echo().Status == 0x0000
        status, _ = assoc.send_n_action(good, 1, StorageCommitmentPushModel, WELL_KNOWN)
        assert status.Status == 0x0000
        assert reports.arrived.wait(20) and [r[0] for r in reports.received] == [1]
    finally:
        assoc.release()
    assert "Traceback" not in server.log.read_text()


def test_exactly_the_limit_is_accepted(archive):
    server, _, stored = archive
    references = [stored["CT_small.dcm"]] + [(CTImageStorage, f"1.2.826.0.1.3680043.10.2.{n}")
                                              for n in range(MAX_REFERENCES - 1)]
    status, reports, _ = commit(server.dimse_port, references)
    assert status.Status == 0x0000
    event_type, info, _, _ = reports.received[0]
    assert event_type == 2
    assert len(info.ReferencedSOPSequence) == 1 and len(info.FailedSOPSequence) == MAX_REFERENCES - 1


def test_ae_permissions_commit(server_factory, tmp_path):
    """With [ae-permissions], an AE needs "commit" for the Storage Commitment context."""
    config = tmp_path / "perm.toml"
    config.write_text('[ae-permissions]\nMODALITY = ["store", "commit"]\nVIEWER = ["get"]\n')
    server = server_factory("--config", str(config))
    for title, accepted in (("MODALITY", True), ("VIEWER", False)):
        ae = _ae(title)
        ae.add_requested_context(StorageCommitmentPushModel)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", server.dimse_port)
        assert assoc.is_established
        try:
            contexts = {c.abstract_syntax: c for c in assoc.accepted_contexts}
            assert (StorageCommitmentPushModel in contexts) is accepted
            assert Verification in contexts
        finally:
            assoc.release()


def test_report_to_a_tls_destination(tmp_path):
    """PS3.15 B.9: a requester configured as a TLS destination gets its report on a new
    association over TLS; it requires our certificate (mutual authentication)."""
    import ssl

    from dicomaccel.testing import start_server
    from dicomaccel.testing.tls import make_certificates

    certs = make_certificates(tmp_path / "tls")
    port = _free_port()
    server = start_server(tmp_path / "data", "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key),
                          "--tls-ca", str(certs.ca), "--move-destination", f"MODALITY=dicom+tls://127.0.0.1:{port}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs.ca))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(str(certs.server_cert), str(certs.server_key))  # names 127.0.0.1
    listener = Listener(port, ssl_context=context)
    try:
        ae = _ae("MODALITY")
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", server.dimse_port)
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()
        status, _, transaction = commit(server.dimse_port, [(str(ds.SOPClassUID), str(ds.SOPInstanceUID))],
                                        wait_report=False)
        assert status.Status == 0x0000
        assert listener.reports.arrived.wait(20), "no report over TLS"
        event_type, info, calling, _ = listener.reports.received[0]
        assert (event_type, calling, info.TransactionUID) == (1, "DICOMACCEL", transaction)
    finally:
        listener.close()
        server.stop()


def test_reports_under_way_are_bounded_and_the_server_recovers(archive):
    """A requester that asks again and again and never answers a report: past
    MAX_PENDING_REPORTS reports waiting for it, N-ACTION-RQs get 0213 Resource limitation;
    once it is gone, requests are served again."""
    import struct

    from dicomaccel.dimse.messages import decode_command
    from dicomaccel.testing.pdu import associate_rq, command_set, dataset_bytes, p_data, recv_pdu

    def ui(uid: str) -> bytes:
        raw = uid.encode()
        return raw + b"\0" * (len(raw) & 1)

    server, _, stored = archive
    sock = socket.create_connection(("127.0.0.1", server.dimse_port), timeout=30)
    try:
        sock.sendall(associate_rq(calling=b"RAWSCU", contexts=(
            (1, StorageCommitmentPushModel.encode(), (ImplicitVRLittleEndian.encode(),)),)))
        assert recv_pdu(sock)[0] == 0x02  # A-ASSOCIATE-AC
        statuses = []
        for message_id in range(1, MAX_PENDING_REPORTS + 2):
            command = command_set(
                (0x0003, ui(StorageCommitmentPushModel)), (0x0100, struct.pack("<H", 0x0130)),
                (0x0110, struct.pack("<H", message_id)), (0x0800, struct.pack("<H", 0x0001)),
                (0x1001, ui(WELL_KNOWN)), (0x1008, struct.pack("<H", 1)))
            info = dataset_bytes(action_information([stored["CT_small.dcm"]]), implicit=True)
            sock.sendall(p_data(1, 0x03, command) + p_data(1, 0x02, info))
            while True:  # skip the reports we never answer, up to this request's N-ACTION-RSP
                kind, body = recv_pdu(sock)
                assert kind == 0x04, kind
                length, control = struct.unpack(">L", body[:4])[0], body[5]
                if control & 0x01:
                    rsp = decode_command(body[6:4 + length])
                    if rsp.get("MessageIDBeingRespondedTo") == message_id:
                        statuses.append((rsp["Status"], rsp.get("ErrorComment")))
                        break
        assert [s for s, _ in statuses[:-1]] == [0x0000] * MAX_PENDING_REPORTS
        assert statuses[-1][0] == 0x0213 and "under way" in statuses[-1][1], statuses[-1]
    finally:
        sock.close()
    # Its reports end with its association (dropped: RAWSCU is no destination); others are
    # served again as soon as they have.
    answered: list = []

    def served() -> bool:
        status, reports, _ = commit(server.dimse_port, [stored["CT_small.dcm"]],
                                    wait_report=False)
        answered.append(status.Status)
        return status.Status == 0x0000

    assert wait_until(served, timeout=20, interval=0.2), answered
    status, reports, _ = commit(server.dimse_port, [stored["CT_small.dcm"]])
    assert status.Status == 0x0000 and reports.received and reports.received[0][0] == 1
