"""Bearer tokens in front of STOW-RS, and the operations endpoints (/health, /ready, /metrics),
against a real server with `requests`."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import requests
from pydicom.uid import generate_uid

from dicomaccel.testing import multipart
from dicomaccel.testing.files import ct_instance

CT_TYPE = 'multipart/related; type="application/dicom"; boundary=BOUNDARY'


def _tokens(tmp_path) -> str:
    path = tmp_path / "tokens"
    hashed = hashlib.sha256(b"admin-secret").hexdigest()
    path.write_text(f"# token scopes\nmodality-secret store\nviewer-secret read\nsha256:{hashed} admin store\n")
    return str(path)


def _samples(text: str) -> dict[tuple[str, str], float]:
    """Prometheus text samples as (name, labels without the worker label) -> value."""
    out = {}
    for line in text.splitlines():
        if not line.startswith("dicomaccel_") or "{" not in line:
            continue
        name, rest = line.split("{", 1)
        labels, value = rest.rsplit("} ", 1)
        kept = ",".join(p for p in labels.split(",") if not p.startswith("worker="))
        out[name, kept] = float(value)
    return out


def _stow(server, token=None):
    headers = {"Content-Type": CT_TYPE}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = multipart([ct_instance(generate_uid(), generate_uid(), 1, 8, 8)])
    return requests.post(f"{server.stow_url}/studies", data=body, headers=headers, timeout=30)


def test_tokens_scopes_and_nothing_touched_without_them(server_factory, tmp_path):
    server = server_factory("--auth-token-file", _tokens(tmp_path))
    for token in (None, "wrong", "sha256:" + "0" * 64):
        resp = _stow(server, token)
        assert resp.status_code == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
    resp = _stow(server, "viewer-secret")  # valid, but no store scope
    assert resp.status_code == 403 and 'scope="store"' in resp.headers["WWW-Authenticate"]
    assert not list((server.data / "instances").rglob("*.dcm"))  # nothing reached the archive
    assert not list((server.data / "tmp").iterdir())
    assert _stow(server, "modality-secret").status_code == 200
    assert _stow(server, "admin-secret").status_code == 200  # stored hashed in the file
    # Health and readiness stay open; metrics need the admin scope.
    assert requests.get(f"{server.http_url}/health", timeout=10).status_code == 200
    assert requests.get(f"{server.http_url}/ready", timeout=10).json()["status"] == "ready"
    assert requests.get(f"{server.http_url}/metrics", timeout=10).status_code == 401
    metrics = requests.get(f"{server.http_url}/metrics", headers={"Authorization": "Bearer admin-secret"},
                           timeout=10)
    assert metrics.status_code == 200 and metrics.headers["Content-Type"].startswith("text/plain")
    samples = _samples(metrics.text)
    assert samples[("dicomaccel_stow_instances_total", 'outcome="stored",reason="0000"')] == 2
    assert samples[("dicomaccel_free_bytes", "")] > 0


def test_metrics_count_outcomes_and_c_get(server_factory):
    server = server_factory()
    ok = _stow(server)
    assert ok.status_code == 200
    bad = requests.post(f"{server.stow_url}/studies", data=multipart([b"not dicom"]),
                        headers={"Content-Type": CT_TYPE}, timeout=30)
    assert bad.status_code == 409
    samples = _samples(requests.get(f"{server.http_url}/metrics", timeout=10).text)
    assert samples[("dicomaccel_stow_instances_total", 'outcome="failed",reason="C000"')] == 1
    assert samples[("dicomaccel_stow_requests_total", 'status="200"')] == 1
    assert samples[("dicomaccel_stow_requests_total", 'status="409"')] == 1
    assert samples[("dicomaccel_bytes_received_total", "")] > 0


def test_body_bytes_are_counted_exactly_once(server_factory):
    """Every body byte read goes into dicomaccel_bytes_received: a body of several MiB (counted
    a MiB at a time while it arrives) and a small one (at its end), summed over the workers."""
    server = server_factory()
    large = multipart([ct_instance(generate_uid(), generate_uid(), 1, 1100, 1100)])  # > 2 MiB
    small = multipart([ct_instance(generate_uid(), generate_uid(), 1, 8, 8)])
    for body in (large, small):
        resp = requests.post(f"{server.stow_url}/studies", data=body, headers={"Content-Type": CT_TYPE},
                             timeout=30)
        assert resp.status_code == 200
    text = requests.get(f"{server.http_url}/metrics", timeout=10).text
    counted = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith("dicomaccel_bytes_received_total{"))
    assert len(large) > 2 << 20 and counted == len(large) + len(small)


def test_a_bad_token_file_stops_the_server_with_a_message(tmp_path):
    bad = tmp_path / "tokens"
    bad.write_text("secret superuser\n")
    done = subprocess.run([sys.executable, "-m", "dicomaccel.cli", "serve", "--data", str(tmp_path / "d"),
                           "--auth-token-file", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown scope(s) ['superuser']" in done.stderr


def test_json_access_log_has_one_line_per_request_and_association(server_factory):
    import json as _json

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    from dicomaccel.testing import wait_until

    server = server_factory("--log-format", "json", "--log-level", "info")
    assert _stow(server).status_code == 200
    bad = requests.post(f"{server.stow_url}/studies", data=multipart([b"not dicom"]),
                        headers={"Content-Type": CT_TYPE}, timeout=30)
    assert bad.status_code == 409
    ae = AE(ae_title="LOGGER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title="DICOMACCEL")
    assert assoc.is_established
    assoc.release()

    def events():
        lines = [_json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
        return [e for e in lines if e["logger"] == "dicomaccel.access"]

    assert wait_until(lambda: len(events()) >= 3, timeout=10)
    stow = [e for e in events() if e["event"] == "stow"]
    assert [(e["status"], e["stored"], e["failed"], e["reasons"]) for e in stow] == [
        (200, 1, 0, []), (409, 0, 1, ["C000"])]
    assert stow[0]["bytes"] > 0 and stow[0]["path"] == "/dicomweb/studies"
    (association,) = [e for e in events() if e["event"] == "association"]
    assert association["calling_ae"] == "LOGGER" and association["outcome"] == "accepted"


def test_oidc_jwts_from_a_local_jwks(server_factory, tmp_path):
    import json as _json
    import time

    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = _json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", alg="RS256", use="sig")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(_json.dumps({"keys": [jwk]}))
    server = server_factory("--jwt-jwks", str(jwks), "--jwt-issuer", "https://idp.test",
                            "--jwt-audience", "dicomaccel")

    def token(signer=key, **claims):
        body = {"iss": "https://idp.test", "aud": "dicomaccel", "exp": int(time.time()) + 300,
                "scope": "store read", **claims}
        return jwt.encode(body, signer, algorithm="RS256", headers={"kid": "k1"})

    assert _stow(server, token()).status_code == 200
    assert _stow(server, token(scope="read")).status_code == 403
    for bad in (token(exp=int(time.time()) - 10), token(aud="someone-else"), token(iss="https://evil.test"),
                token(signer=other), jwt.encode({"scope": "store"}, "a-shared-secret-that-is-32-bytes-long", algorithm="HS256")):
        assert _stow(server, bad).status_code == 401
