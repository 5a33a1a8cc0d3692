"""Who may use the HTTP services: bearer tokens with scopes, checked before anything else runs.

``--auth-token-file FILE`` holds one credential per line, optionally followed by its scopes::

    # token                                   scopes (default: store read)
    s3cret-modality-token                     store
    sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08  read admin

A line is a token as clients send it, or ``sha256:`` and the hex SHA-256 of the token, so the
file need not hold secrets. Tokens are compared in constant time (``hmac.compare_digest`` on
their SHA-256). Scopes: ``store`` (STOW-RS), ``read`` (retrieval and query), ``admin``
(metrics). A request without a valid ``Authorization: Bearer`` token gets 401 with
``WWW-Authenticate: Bearer`` (RFC 6750 §3); a valid token without the scope gets 403. Neither
touches the archive: the check runs before the application sees the request.

``--jwt-jwks FILE --jwt-issuer ISS --jwt-audience AUD`` accepts OAuth2/OIDC bearer JWTs too
(:class:`JWTVerifier`); a request passes with either kind of credential.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

from .config import ConfigError

__all__ = ["TokenFile", "JWTVerifier", "AnyOf", "credentials", "require", "SCOPES"]

SCOPES = ("store", "read", "admin")
DEFAULT_SCOPES = frozenset(("store", "read"))


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenFile:
    """The credentials of a token file: SHA-256 digest -> scopes."""

    def __init__(self, entries: list[tuple[bytes, frozenset[str]]]) -> None:
        self.entries = entries

    @classmethod
    def load(cls, path: str | Path) -> "TokenFile":
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {path}: {exc.strerror}") from None
        entries = []
        for number, line in enumerate(lines, 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            credential, scopes = words[0], frozenset(words[1:]) or DEFAULT_SCOPES
            unknown = scopes - set(SCOPES)
            if unknown:
                raise ConfigError(f"{path}:{number}: unknown scope(s) {sorted(unknown)} (known: {', '.join(SCOPES)})")
            if credential.startswith("sha256:"):
                try:
                    digest = bytes.fromhex(credential[7:])
                except ValueError:
                    digest = b""
                if len(digest) != 32:
                    raise ConfigError(f"{path}:{number}: sha256: must be followed by 64 hex digits")
            else:
                digest = _digest(credential)
            entries.append((digest, scopes))
        if not entries:
            raise ConfigError(f"{path}: no token in the file")
        return cls(entries)

    def scopes(self, authorization: str | None) -> frozenset[str] | None:
        """The scopes of a request's ``Authorization`` header value, or None if it holds no
        valid bearer token. Every entry is compared, so the time does not tell which matched."""
        token = _bearer(authorization)
        if token is None:
            return None
        digest = _digest(token)
        found = None
        for known, scopes in self.entries:
            if hmac.compare_digest(known, digest):
                found = scopes
        return found


class JWTVerifier:
    """OAuth2/OIDC bearer JWTs (RFC 7519), verified against a local JWKS file (RFC 7517).

    The signature must verify with the key of the token's ``kid`` (asymmetric algorithms
    only: RS*, PS*, ES*, EdDSA), and ``iss``, ``aud`` and ``exp`` must be present and right.
    The granted scopes are the ``scope`` claim's space-separated values (RFC 8693 §4.2).
    Nothing is fetched: the JWKS file is read once at start-up.
    """

    ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")

    def __init__(self, jwks_path: str | Path, issuer: str, audience: str) -> None:
        import jwt

        self._jwt = jwt
        try:
            self.keys = jwt.PyJWKSet.from_json(Path(jwks_path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read the JWKS file {jwks_path}: {exc.strerror}") from None
        except (jwt.PyJWKSetError, ValueError) as exc:
            raise ConfigError(f"{jwks_path}: not a usable JWKS: {exc}") from None
        self.issuer, self.audience = issuer, audience

    def scopes(self, authorization: str | None) -> frozenset[str] | None:
        token = _bearer(authorization)
        if token is None:
            return None
        jwt = self._jwt
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = next((k for k in self.keys.keys if kid is None or k.key_id == kid), None)
            if key is None:
                return None
            claims = jwt.decode(token, key.key, algorithms=list(self.ALGORITHMS), audience=self.audience,
                                issuer=self.issuer, options={"require": ["exp", "iss", "aud"]})
        except jwt.PyJWTError:
            return None
        scope = claims.get("scope", "")
        return frozenset(scope.split()) if isinstance(scope, str) else frozenset()


class AnyOf:
    """Credentials accepted by any of several checkers (a token file, a JWT verifier)."""

    def __init__(self, checkers) -> None:
        self.checkers = list(checkers)

    def scopes(self, authorization: str | None) -> frozenset[str] | None:
        for checker in self.checkers:
            granted = checker.scopes(authorization)
            if granted is not None:
                return granted
        return None


def credentials(config) -> AnyOf | None:
    """The credential checkers a :class:`~dicomaccel.config.ServeConfig` asks for, or None
    when authentication is off."""
    checkers = []
    if config.auth_token_file is not None:
        checkers.append(TokenFile.load(config.auth_token_file))
    if config.jwt_jwks is not None:
        checkers.append(JWTVerifier(config.jwt_jwks, config.jwt_issuer, config.jwt_audience))
    return AnyOf(checkers) if checkers else None


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    kind, _, token = authorization.strip().partition(" ")
    return token.strip() if kind.lower() == "bearer" and token.strip() else None


def require(app, tokens, scope_of):
    """``app`` behind the token check (``tokens``: anything with ``scopes(authorization)``).
    ``scope_of(asgi_scope)`` names the scope a request needs, or None when it is open."""

    async def guarded(scope, receive, send):
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        needed = scope_of(scope)
        if needed is None:
            await app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"authorization"), None)
        granted = tokens.scopes(header)
        if granted is None:
            await _deny(send, 401, "A valid bearer token is required",
                        [(b"www-authenticate", b'Bearer realm="dicomaccel"')])
        elif needed not in granted:
            await _deny(send, 403, f"The token lacks the {needed!r} scope",
                        [(b"www-authenticate", f'Bearer realm="dicomaccel", error="insufficient_scope", scope="{needed}"'.encode())])
        else:
            await app(scope, receive, send)

    return guarded


async def _deny(send, status: int, text: str, headers) -> None:
    body = json.dumps({"error": text}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})
