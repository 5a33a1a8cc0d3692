"""TLS for both services: the server context `dicomaccel serve --tls-cert/--tls-key` builds.

DICOM over TLS follows the BCP 195 TLS Secure Transport Connection Profile (PS3.15 Annex B):
TLS 1.2 or later, and, for TLS 1.2, only the cipher suites RFC 7525 (BCP 195) recommends:
ephemeral (EC)DHE key exchange with AES-GCM (ChaCha20-Poly1305 besides). TLS 1.3 suites
are all acceptable. HTTPS uses the same context.

Outgoing associations to a move destination marked ``tls`` (C-MOVE sub-operations, Storage
Commitment reports) use :func:`client_context`: the same profile as requestor (PS3.15 B.9),
the destination's certificate verified against the configured CA and its host name, our own
certificate offered for mutual authentication when one is configured.
"""

from __future__ import annotations

import ssl

__all__ = ["server_context", "client_context", "BCP195_TLS12_CIPHERS"]

BCP195_TLS12_CIPHERS = "ECDHE+AESGCM:DHE+AESGCM:ECDHE+CHACHA20"


def server_context(cert: str, key: str, ca: str | None = None,
                   require_client_cert: bool = False) -> ssl.SSLContext:
    """A server-side context from PEM files; client certificates are verified against ``ca``
    when given (and required with ``require_client_cert``)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(BCP195_TLS12_CIPHERS)
    ctx.load_cert_chain(cert, key)
    if ca is not None:
        ctx.load_verify_locations(ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    elif require_client_cert:
        raise ValueError("requiring client certificates needs a CA file (--tls-ca) to verify them")
    return ctx


def client_context(ca: str | None = None, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """A requestor-side context (PS3.15 B.9, BCP 195 profile): TLS 1.2 or later with the
    cipher suites above; the peer's certificate is verified against ``ca`` (PEM file; the
    system's trusted CAs when None) and must name the host connected to. ``cert``/``key``: our
    certificate, sent when the peer asks for one (mutual authentication; it then needs the
    clientAuth extended key usage, or none)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED by default
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(BCP195_TLS12_CIPHERS)
    if ca is not None:
        ctx.load_verify_locations(ca)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs its key, and the other way round")
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx
