"""TLS on both services: HTTPS for STOW-RS (`requests` verifying our test CA) and DICOM TLS
(PS3.15 Annex B, BCP 195 profile) for the DIMSE port, spoken to by DCMTK's echoscu and by
pynetdicom with an ssl_context (C-ECHO and C-GET). Certificates are made by the test."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys

import pytest
import requests
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet, Verification

from dicomaccel.testing import dcmtk_program, multipart
from dicomaccel.testing.files import ct_instance
from dicomaccel.testing.pdu import associate_rq, recv_pdu
from dicomaccel.testing.scu import c_get, identifier
from dicomaccel.testing.tls import make_certificates

ECHOSCU = dcmtk_program("echoscu")
CT_TYPE = 'multipart/related; type="application/dicom"; boundary=BOUNDARY'


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("tls"))


def _tls_args(certs, *extra: str) -> list[str]:
    return ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key),
            "--dimse-tls-port", "0", *extra]


@pytest.mark.parametrize("workers", ["1", "2"])  # 2: connections accepted by accept.Acceptor
def test_https_stow_with_a_verified_certificate(server_factory, certs, workers):
    server = server_factory(*_tls_args(certs, "--workers", workers))
    assert server.http_url.startswith("https://")
    study, series = generate_uid(), generate_uid()
    body = multipart([ct_instance(study, series, 1, 16, 16)])
    resp = requests.post(f"{server.stow_url}/studies", data=body, headers={"Content-Type": CT_TYPE},
                         verify=str(certs.ca), timeout=30)
    assert resp.status_code == 200, resp.text[:300]
    assert resp.json()["00081190"]["Value"][0].startswith("https://")  # Retrieve URLs say https
    with pytest.raises(requests.exceptions.SSLError):  # an unknown CA is refused by the client
        requests.post(f"{server.stow_url}/studies", data=body, headers={"Content-Type": CT_TYPE}, timeout=30)
    plain = server.http_url.replace("https://", "http://")
    with pytest.raises(requests.exceptions.ConnectionError):  # no plain HTTP on that port
        requests.post(f"{plain}/dicomweb/studies", data=body, headers={"Content-Type": CT_TYPE}, timeout=30)
    # Failed handshakes are the peer's problem: logged quietly, the server still serves.
    resp = requests.post(f"{server.stow_url}/studies", data=body, headers={"Content-Type": CT_TYPE},
                         verify=str(certs.ca), timeout=30)
    assert resp.status_code == 200
    assert "Traceback" not in server.log.read_text()


@pytest.mark.skipif(ECHOSCU is None, reason="DCMTK not installed")
@pytest.mark.parametrize("workers", ["1", "2"])  # 2: associations accepted by accept.Acceptor
def test_echoscu_and_a_c_get_over_tls(server_factory, certs, workers):
    server = server_factory(*_tls_args(certs, "--workers", workers))
    study, series = generate_uid(), generate_uid()
    body = multipart([ct_instance(study, series, 1, 16, 16)])
    assert requests.post(f"{server.stow_url}/studies", data=body, headers={"Content-Type": CT_TYPE},
                         verify=str(certs.ca), timeout=30).status_code == 200
    # DCMTK: TLS without a client certificate, the server's verified against our CA. (Debian's
    # getscu is built without TLS options; the C-GET goes over pynetdicom below.)
    done = subprocess.run([ECHOSCU, "+tla", "+cf", str(certs.ca), "-aec", "DICOMACCEL", "127.0.0.1",
                           str(server.dimse_tls_port)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs.ca))
    result = c_get(server.dimse_tls_port, StudyRootQueryRetrieveInformationModelGet,
                   identifier("STUDY", StudyInstanceUID=study), tls_args=(ctx, "localhost"))
    assert result.final.Status == 0x0000 and len(result.received) == 1
    # The plain DIMSE port still speaks plain DICOM; the TLS port does not.
    assert subprocess.run([ECHOSCU, "-aec", "DICOMACCEL", "127.0.0.1", str(server.dimse_port)],
                          capture_output=True, timeout=60).returncode == 0
    assert subprocess.run([ECHOSCU, "-aec", "DICOMACCEL", "-to", "5", "127.0.0.1", str(server.dimse_tls_port)],
                          capture_output=True, timeout=60).returncode != 0


def test_pynetdicom_over_tls_and_client_certificates_required(server_factory, certs):
    server = server_factory(*_tls_args(certs, "--tls-ca", str(certs.ca), "--tls-require-client-cert"))
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs.ca))
    ctx.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.dimse_tls_port, ae_title="DICOMACCEL", tls_args=(ctx, "localhost"))
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    # Without a client certificate the handshake fails (TLS 1.3 reports it on first use) and
    # the connection closes: nothing reaches the DICOM layer.
    bare = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs.ca))
    got = b""
    with socket.create_connection(("127.0.0.1", server.dimse_tls_port), timeout=10) as raw:
        try:
            with bare.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"\x01\x00\x00\x00\x00\x00")
                got = tls.recv(1)
        except (ssl.SSLError, OSError):
            pass
    assert got == b""


def test_tls_options_are_checked_together(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dicomaccel.cli", "serve", "--data", str(tmp_path),
                           "--dimse-tls-port", "2762"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "need tls-cert and tls-key" in done.stderr
    config = tmp_path / "c.toml"
    config.write_text('[tls-client-ae]\nMODALITY1 = ["MOD1"]\n')
    done = subprocess.run([sys.executable, "-m", "dicomaccel.cli", "check-config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "tls-client-ae needs dimse-tls-port and tls-ca" in done.stderr
    config.write_text('[tls-client-ae]\nMODALITY1 = "MOD1"\n')
    done = subprocess.run([sys.executable, "-m", "dicomaccel.cli", "check-config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "certificate Common Name = [AE titles]" in done.stderr


def test_client_certificate_names_the_calling_ae_titles(server_factory, certs, tmp_path):
    # [tls-client-ae]: the certificate's subject Common Name (MODALITY1) may only use the AE
    # titles listed for it on the TLS port; the plain port is not affected.
    config = tmp_path / "dicomaccel.toml"
    config.write_text('[tls-client-ae]\nMODALITY1 = ["MOD1", "MOD1B"]\nSOMEONE-ELSE = ["OTHER"]\n')
    server = server_factory(*_tls_args(certs, "--tls-ca", str(certs.ca), "--config", str(config)))
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs.ca))
    ctx.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    bare = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs.ca))

    def associate(title, port, tls):
        ae = AE(ae_title=title)
        ae.add_requested_context(Verification)
        return ae.associate("127.0.0.1", port, ae_title="DICOMACCEL", tls_args=tls)

    assoc = associate("MOD1B", server.dimse_tls_port, (ctx, "localhost"))
    assert assoc.is_established
    assoc.release()
    for title, tls in (("OTHER", (ctx, "localhost")), ("MOD1", (bare, "localhost"))):
        for _ in range(3):
            assoc = associate(title, server.dimse_tls_port, tls)
            # Once in a CI run under load, pynetdicom aborted its own request before any
            # answer (nothing logged of a refusal or of a connection error): asked again.
            if not assoc.is_aborted:
                break
        assert assoc.is_rejected
        rj = assoc.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (1, 1, 3)
    assoc = associate("OTHER", server.dimse_port, None)
    assert assoc.is_established
    assoc.release()


def test_plain_and_tls_associations_share_the_limit_across_workers(server_factory, certs):
    """``--max-associations 1`` over two workers: a plain association held, one over TLS is
    refused (2, 3, 2: PS3.8 9.3.4, local limit exceeded) whichever worker takes it."""
    server = server_factory(*_tls_args(certs, "--workers", "2", "--max-associations", "1"))
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs.ca))

    def associate(tls: bool) -> bytes:
        sock = socket.create_connection(("127.0.0.1", server.dimse_tls_port if tls else server.dimse_port),
                                        timeout=30)
        if tls:
            sock = ctx.wrap_socket(sock, server_hostname="localhost")
        held.append(sock)
        sock.sendall(associate_rq())
        return recv_pdu(sock)

    held: list = []
    try:
        assert associate(tls=False)[0] == 0x02
        for _ in range(4):
            assert associate(tls=True) == (0x03, bytes((0, 2, 3, 2)))
    finally:
        for sock in held:
            sock.close()
