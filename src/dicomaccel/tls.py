"""TLS for both services: the server context `dicomaccel serve --tls-cert/--tls-key` builds.

DICOM over TLS follows the BCP 195 TLS Secure Transport Connection Profile (PS3.15 Annex B):
TLS 1.2 or later, and, for TLS 1.2, only the cipher suites RFC 7525 (BCP 195) recommends:
ephemeral (EC)DHE key exchange with AES-GCM (ChaCha20-Poly1305 besides). TLS 1.3 suites
are all acceptable. HTTPS uses the same context.
"""

from __future__ import annotations

import ssl

__all__ = ["server_context", "BCP195_TLS12_CIPHERS"]

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
