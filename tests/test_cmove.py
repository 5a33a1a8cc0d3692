"""C-MOVE SCP (PS3.4 C.4.2): DCMTK movescu with storescp as the destination, pynetdicom
send_c_move with a pynetdicom Storage SCP; counters, unknown and unreachable destinations,
cancel, a destination that aborts, FRAME level."""

from __future__ import annotations

import io
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    CompositeInstanceRootRetrieveMove,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelMove,
)

from dicomaccel.testing import dcmtk_program, multipart, post, wait_until, warnings_only
from dicomaccel.testing import files as dicomgen
from dicomaccel.testing.files import dataset_part, sop_of
from dicomaccel.testing.scu import identifier

pytestmark = pytest.mark.timeout(120)

MOVESCU = dcmtk_program("movescu")
STORESCP = dcmtk_program("storescp")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Study:
    def __init__(self, patient: str, files: list[bytes]) -> None:
        self.files = files
        first = pydicom.dcmread(io.BytesIO(files[0]), stop_before_pixels=True)
        self.uid = first.StudyInstanceUID
        self.patient = patient
        self.by_uid = {sop_of(f): f for f in files}


@pytest.fixture(scope="module")
def moving(tmp_path_factory):
    """A server with destinations DEST (pynetdicom, per test), DCMTK (storescp, per test),
    DOWN (nothing listens) and a study: 3 CT, one JPEG 2000 CT, one 12-frame instance."""
    from dicomaccel.testing import start_server

    ports = {"DEST": _free_port(), "DCMTK": _free_port(), "DOWN": _free_port()}
    args = [a for ae, port in ports.items() for a in ("--move-destination", f"{ae}=127.0.0.1:{port}")]
    server = start_server(tmp_path_factory.mktemp("move") / "data", *args, "--pending-interval", "0")
    study, series = generate_uid(), generate_uid()
    patient = "PID-MOVE"
    files = [dicomgen.ct_instance(study, series, i + 1, 64, 64) for i in range(3)]
    files = [dicomgen.retag(f, PatientID=patient) for f in files]
    j2k = pydicom.dcmread(io.BytesIO(dicomgen.compressed_file(JPEG2000Lossless)))
    j2k.StudyInstanceUID, j2k.PatientID = study, patient
    files.append(dicomgen.to_bytes(j2k, JPEG2000Lossless))
    mf = pydicom.dcmread(io.BytesIO(dicomgen.multiframe_instance(12, 32, 32)))
    mf.StudyInstanceUID, mf.PatientID = study, patient
    files.append(dicomgen.to_bytes(mf, ExplicitVRLittleEndian))
    status, _, body = post(server, multipart(files))
    assert status == 200 and warnings_only(status, body), body
    yield server, ports, Study(patient, files)
    server.stop()


class Destination:
    """A pynetdicom Storage SCP on ``port``: what it receives (C-STORE-RQ, context syntax, raw
    data set), answering ``answer(event)`` (default 0000)."""

    def __init__(self, port: int, ae_title: str = "DEST", answer=None, require_calling: str | None = None):
        self.received: list[tuple] = []
        self.answer = answer
        ae = AE(ae_title=ae_title)
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 30
        if require_calling:
            ae.require_calling_aet = [require_calling]
        storage = [CTImageStorage, "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7"]
        for cls in storage:
            ae.add_supported_context(cls, [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless])
        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event):
        self.received.append((event.request, event.context.transfer_syntax, event.request.DataSet.getvalue()))
        return self.answer(event) if self.answer else 0x0000

    def close(self) -> None:
        self.server.shutdown()


def send_move(port: int, model, ident, destination: str, on_pending=None, msg_id: int = 5):
    ae = AE(ae_title="MOVESCU")
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 30
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port)
    assert assoc.is_established
    responses = []
    try:
        for status, ds in assoc.send_c_move(ident, destination, model, msg_id=msg_id):
            responses.append((status, ds))
            if on_pending is not None and status.Status == 0xFF00:
                on_pending(assoc, status)
    finally:
        assoc.release()
    return responses


def movescu_study(port: int, study_uid: str, destination: str, out: Path, expected: int) -> None:
    """DCMTK movescu: the study to ``destination``; its storescp writes ``expected`` files to ``out``."""
    run = subprocess.run([MOVESCU, "-S", "-aem", destination, "-k", "QueryRetrieveLevel=STUDY",
                          "-k", f"StudyInstanceUID={study_uid}", "127.0.0.1", str(port)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert wait_until(lambda: len(list(out.iterdir())) == expected, timeout=10), list(out.iterdir())


def _counts(status) -> tuple[int, int, int]:
    return (status.NumberOfCompletedSuboperations, status.NumberOfFailedSuboperations,
            status.NumberOfWarningSuboperations)


def _failed_uids(ds) -> list[str]:
    value = ds.get("FailedSOPInstanceUIDList") if ds is not None else None
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def test_pynetdicom_study_move_sends_stored_bytes(moving):
    server, ports, study = moving
    dest = Destination(ports["DEST"])
    try:
        responses = send_move(server.dimse_port, StudyRootQueryRetrieveInformationModelMove,
                              identifier("STUDY", StudyInstanceUID=study.uid), "DEST")
    finally:
        dest.close()
    final = responses[-1][0]
    assert final.Status == 0 and _counts(final) == (5, 0, 0)
    pending = [s for s, _ in responses[:-1]]
    assert [p.NumberOfRemainingSuboperations for p in pending] == [4, 3, 2, 1]
    assert len(dest.received) == 5
    for rq, syntax, raw in dest.received:
        sent = study.by_uid[rq.AffectedSOPInstanceUID]
        # Offered as stored (JPEG 2000 included): the data set goes out byte for byte.
        assert syntax == pydicom.dcmread(io.BytesIO(sent)).file_meta.TransferSyntaxUID
        assert raw == dataset_part(sent)
        assert rq.MoveOriginatorApplicationEntityTitle.strip() == "MOVESCU"
        assert rq.MoveOriginatorMessageID == 5


def test_patient_root_and_image_level(moving):
    server, ports, study = moving
    dest = Destination(ports["DEST"])
    try:
        responses = send_move(server.dimse_port, PatientRootQueryRetrieveInformationModelMove,
                              identifier("PATIENT", PatientID=study.patient), "DEST")
        assert _counts(responses[-1][0]) == (5, 0, 0)
        one = sop_of(study.files[1])
        series = pydicom.dcmread(io.BytesIO(study.files[1]), stop_before_pixels=True).SeriesInstanceUID
        responses = send_move(server.dimse_port, StudyRootQueryRetrieveInformationModelMove,
                              identifier("IMAGE", StudyInstanceUID=study.uid, SeriesInstanceUID=series,
                                         SOPInstanceUID=one), "DEST")
        assert _counts(responses[-1][0]) == (1, 0, 0)
    finally:
        dest.close()
    assert dest.received[-1][0].AffectedSOPInstanceUID == one


def test_unknown_destination_is_a801(moving):
    server, _, study = moving
    responses = send_move(server.dimse_port, StudyRootQueryRetrieveInformationModelMove,
                          identifier("STUDY", StudyInstanceUID=study.uid), "NOBODY")
    final = responses[-1][0]
    assert final.Status == 0xA801 and "NOBODY" in final.ErrorComment


def test_destination_down_fails_every_sub_operation_and_the_scp_keeps_serving(moving):
    server, ports, study = moving
    responses = send_move(server.dimse_port, StudyRootQueryRetrieveInformationModelMove,
                          identifier("STUDY", StudyInstanceUID=study.uid), "DOWN")
    final, ident = responses[-1]
    assert final.Status == 0xA702 and _counts(final) == (0, 5, 0) and final.ErrorComment
    assert sorted(_failed_uids(ident)) == sorted(study.by_uid)
    # A destination that rejects the association (wrong calling AE) is the same failure.
    dest = Destination(ports["DEST"], require_calling="SOMEONE")
    try:
        responses = send_move(server.dimse_port, StudyRootQueryRetrieveInformationModelMove,
                              identifier("STUDY", StudyInstanceUID=study.uid), "DEST")
    finally:
        dest.close()
    assert responses[-1][0].Status == 0xA702 and not dest.received
    # And the next move works.
    dest = Destination(ports["DEST"])
    try:
        responses = send_move(server.dimse_port, StudyRootQueryRetrieveInformationModelMove,
                              identifier("STUDY", StudyInstanceUID=study.uid), "DEST")
    finally:
        dest.close()
    assert responses[-1][0].Status == 0 and len(dest.received) == 5


def test_destination_failures_and_abort_are_counted(moving):
    server, ports, study = moving
    # The destination refuses one instance (A700) and warns on another (B000).
    answers = iter([0x0000, 0xA700, 0xB000, 0x0000, 0x0000])
    dest = Destination(ports["DEST"], answer=lambda event: next(answers))
    try:
        responses = send_move(server.dimse_port, StudyRootQueryRetrieveInformationModelMove,
                              identifier("STUDY", StudyInstanceUID=study.uid), "DEST")
    finally:
        dest.close()
    final, ident = responses[-1]
    assert final.Status == 0xB000 and _counts(final) == (3, 1, 1)
    assert _failed_uids(ident) == [dest.received[1][0].AffectedSOPInstanceUID]

    # A destination that aborts after its second instance: the rest fail, the SCP answers.
    def abort_second(event):
        if len(dest.received) == 2:
            threading.Timer(0.05, event.assoc.abort).start()
            time.sleep(0.5)
        return 0x0000

    dest = Destination(ports["DEST"], answer=abort_second)
    try:
        responses = send_move(server.dimse_port, StudyRootQueryRetrieveInformationModelMove,
                              identifier("STUDY", StudyInstanceUID=study.uid), "DEST")
    finally:
        dest.close()
    final, ident = responses[-1]
    assert final.Status == 0xB000 and _counts(final) == (1, 4, 0), final
    assert len(_failed_uids(ident)) == 4


def test_cancel_stops_sub_operations(moving):
    server, ports, study = moving
    dest = Destination(ports["DEST"])

    def cancel(assoc, status):
        if status.NumberOfCompletedSuboperations == 2:
            assoc.send_c_cancel(5, query_model=StudyRootQueryRetrieveInformationModelMove)
            time.sleep(0.2)  # let it arrive before the next sub-operation starts

    try:
        responses = send_move(server.dimse_port, StudyRootQueryRetrieveInformationModelMove,
                              identifier("STUDY", StudyInstanceUID=study.uid), "DEST", on_pending=cancel)
    finally:
        dest.close()
    final = responses[-1][0]
    assert final.Status == 0xFE00 and final.NumberOfRemainingSuboperations == 5 - len(dest.received)
    assert len(dest.received) < 5


def test_frame_level_move(moving):
    server, ports, study = moving
    source = pydicom.dcmread(io.BytesIO(study.files[-1]))
    dest = Destination(ports["DEST"])
    try:
        ident = identifier("FRAME", SOPInstanceUID=source.SOPInstanceUID)
        ident.SimpleFrameList = [2, 7]
        responses = send_move(server.dimse_port, CompositeInstanceRootRetrieveMove, ident, "DEST")
    finally:
        dest.close()
    assert responses[-1][0].Status == 0 and _counts(responses[-1][0]) == (1, 0, 0)
    rq, syntax, raw = dest.received[0]
    new = pydicom.dcmread(io.BytesIO(raw), force=True)
    assert new.NumberOfFrames == 2 and rq.AffectedSOPInstanceUID != source.SOPInstanceUID
    frames = np.frombuffer(source.PixelData, np.uint16).reshape(12, 32 * 32)
    assert bytes(new.PixelData) == frames[[1, 6]].tobytes()


@pytest.mark.skipif(MOVESCU is None or STORESCP is None, reason="DCMTK movescu/storescp not installed")
@pytest.mark.parametrize("accept_all", [True, False], ids=["as-stored", "transcoded"])
def test_movescu_to_storescp(moving, tmp_path, accept_all):
    server, ports, study = moving
    out = tmp_path / "out"
    out.mkdir()
    # +xa: storescp accepts every transfer syntax; by default only the uncompressed ones, so
    # the JPEG 2000 instance must be transcoded.
    cmd = [STORESCP, *(["+xa"] if accept_all else []), "-aet", "DCMTK", "-od", str(out), str(ports["DCMTK"])]
    scp = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_until(lambda: _listening(ports["DCMTK"]), timeout=10)
        movescu_study(server.dimse_port, study.uid, "DCMTK", out, 5)
    finally:
        scp.terminate()
        scp.wait(10)
    for path in out.iterdir():
        got = path.read_bytes()
        sent = study.by_uid[sop_of(got)]
        sent_ds, got_ds = pydicom.dcmread(io.BytesIO(sent)), pydicom.dcmread(io.BytesIO(got))
        if accept_all or sent_ds.file_meta.TransferSyntaxUID != JPEG2000Lossless:
            assert dataset_part(got) == dataset_part(sent), path.name
        else:
            assert got_ds.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
            assert np.array_equal(got_ds.pixel_array, sent_ds.pixel_array)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_move_destination_configuration(tmp_path):
    from dicomaccel.config import ConfigError, as_toml, load_toml, merged, parse_move_destination

    path = tmp_path / "c.toml"
    path.write_text('[[move_destination]]\nae = "WS1"\nhost = "10.0.0.5"\nport = 104\n'
                    '[[move_destination]]\nae = "WS2"\nhost = "ws2.example"\nport = 11112\n')
    config = merged(load_toml(path), {})
    assert config.move_destinations == (("WS1", "10.0.0.5", 104, False), ("WS2", "ws2.example", 11112, False))
    again = tmp_path / "again.toml"
    again.write_text(as_toml(config).split("[[move_destination]]", 1)[1].join(["[[move_destination]]", ""]))
    assert load_toml(again)["move_destinations"] == config.move_destinations
    path.write_text('[[move_destination]]\nae = "WS3"\nhost = "10.0.0.6"\nport = 2762\ntls = true\n')
    tls = merged(load_toml(path), {})
    assert tls.move_destinations == (("WS3", "10.0.0.6", 2762, True),)
    again.write_text(as_toml(tls).split("[[move_destination]]", 1)[1].join(["[[move_destination]]", ""]))
    assert load_toml(again)["move_destinations"] == tls.move_destinations
    for bad in ('ae = "WS1"\nport = 104', 'ae = "WS1"\nhost = "h"\nport = 0', 'ae = "WS1"\nhost = "h"\nport = 1\ntls = "yes"'):
        path.write_text("[[move_destination]]\n" + bad + "\n")
        with pytest.raises(ConfigError):
            load_toml(path)
    assert parse_move_destination("PACS=::1:104") == ("PACS", "::1", 104, False)
    assert parse_move_destination("WS=[fe80::1]:11112") == ("WS", "fe80::1", 11112, False)
    # The flag says TLS with a scheme, as the server announces its TLS listener.
    assert parse_move_destination("WS=dicom+tls://10.0.0.6:2762") == ("WS", "10.0.0.6", 2762, True)
    assert parse_move_destination("WS=dicom+tls://[::1]:2762") == ("WS", "::1", 2762, True)
    assert parse_move_destination("WS=dicom://h:104") == ("WS", "h", 104, False)
    for bad in ("WS:104", "WS=https://h:443", "WS=dicom+tls://h"):
        with pytest.raises(ConfigError):
            parse_move_destination(bad)


@pytest.mark.skipif(MOVESCU is None or STORESCP is None, reason="DCMTK movescu/storescp not installed")
def test_move_to_a_tls_destination(tmp_path):
    """PS3.15 B.9: a destination marked TLS is reached over TLS. DCMTK storescp +tls requires
    our certificate (mutual authentication); one whose certificate our CA did not sign fails
    every sub-operation at once (A702, the Error Comment says why), and the SCP keeps serving."""
    import requests

    from dicomaccel.testing import start_server
    from dicomaccel.testing.tls import make_certificates

    ours = make_certificates(tmp_path / "ours")
    other = make_certificates(tmp_path / "other")  # a CA we do not trust
    ports = {"TLSDEST": _free_port(), "UNTRUSTED": _free_port(), "DISTRUSTS": _free_port(), "PLAINTLS": _free_port()}
    # The configuration file's tls = true is test_move_destination_configuration's.
    server = start_server(tmp_path / "data", "--tls-cert", str(ours.server_cert), "--tls-key", str(ours.server_key),
                          "--tls-ca", str(ours.ca),
                          *(a for ae, port in ports.items()
                            for a in ("--move-destination", f"{ae}=dicom+tls://127.0.0.1:{port}")))
    scps = []
    try:
        study, series = generate_uid(), generate_uid()
        files = [dicomgen.ct_instance(study, series, i + 1, 64, 64) for i in range(3)]
        resp = requests.post(f"{server.stow_url}/studies", data=multipart(files), verify=str(ours.ca),
                             headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=BOUNDARY'},
                             timeout=60)
        assert resp.status_code == 200, resp.text[:300]
        out = tmp_path / "out"
        out.mkdir()

        def storescp(ae: str, certs, trusted) -> None:
            # Default peer authentication of storescp +tls: --require-peer-cert, checked
            # against +cf: we must offer a certificate signed by ``trusted``.
            cmd = [STORESCP, "+tls", str(certs.server_key), str(certs.server_cert), "-pw", "+cf", str(trusted.ca),
                   "-aet", ae, "-od", str(out), str(ports[ae])]
            scps.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            assert wait_until(lambda: _listening(ports[ae]), timeout=10)

        storescp("TLSDEST", ours, ours)
        storescp("UNTRUSTED", other, ours)  # its certificate is not signed by our CA
        storescp("DISTRUSTS", ours, other)  # it does not trust our certificate
        # A plain (not TLS) storescp where TLS is configured: the handshake fails too.
        scps.append(subprocess.Popen([STORESCP, "-aet", "PLAINTLS", "-od", str(out), str(ports["PLAINTLS"])],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        assert wait_until(lambda: _listening(ports["PLAINTLS"]), timeout=10)

        movescu_study(server.dimse_port, study, "TLSDEST", out, 3)
        by_uid = {sop_of(f): f for f in files}
        for path in out.iterdir():
            got = path.read_bytes()
            assert dataset_part(got) == dataset_part(by_uid[sop_of(got)]), path.name

        ident = identifier("STUDY", StudyInstanceUID=study)
        for destination, why in (("UNTRUSTED", "is not trusted"), ("DISTRUSTS", "TLS"), ("PLAINTLS", "over TLS")):
            started = time.monotonic()
            responses = send_move(server.dimse_port, StudyRootQueryRetrieveInformationModelMove, ident, destination)
            assert time.monotonic() - started < 20  # a failure, not a wait for the ARTIM timer
            final, ds = responses[-1]
            assert final.Status == 0xA702, final
            assert _counts(final) == (0, 3, 0)
            assert why in final.ErrorComment
            assert sorted(_failed_uids(ds)) == sorted(by_uid)
        assert len(list(out.iterdir())) == 3  # nothing reached the untrusted destinations
        # The SCP keeps serving: the trusted destination again.
        responses = send_move(server.dimse_port, StudyRootQueryRetrieveInformationModelMove, ident, "TLSDEST")
        assert responses[-1][0].Status == 0x0000 and _counts(responses[-1][0]) == (3, 0, 0)
        for p in scps:
            assert p.poll() is None  # the destinations survived too
    finally:
        for p in scps:
            p.terminate()
            p.wait(10)
        server.stop()
