"""Cross-origin access to the DICOMweb paths for browser viewers (the Fetch standard's CORS
protocol): ``--cors-origin ORIGIN`` (repeatable; ``*`` for any origin).

An ASGI wrapper placed outermost (before authentication: a browser's preflight carries no
credentials). Under the DICOMweb base path it answers ``OPTIONS`` preflights itself and adds
``Access-Control-Allow-Origin`` to every response (errors included, so a viewer can read a
401 or 404) for an allowed ``Origin``; other paths and origins pass through untouched.
"""

from __future__ import annotations

__all__ = ["with_cors", "ALLOWED_METHODS", "ALLOWED_HEADERS", "EXPOSED_HEADERS", "MAX_AGE"]

ALLOWED_METHODS = b"GET, POST, OPTIONS"
ALLOWED_HEADERS = b"Accept, Accept-Encoding, Authorization, Content-Type, If-Modified-Since, If-None-Match, If-Range, Range"
# Response headers a viewer's script may read beyond the CORS-safelisted ones.
EXPOSED_HEADERS = b"Content-Encoding, Content-Length, Content-Range, ETag, Last-Modified, Location, Warning, Accept-Ranges"
MAX_AGE = b"600"  # seconds a browser may cache a preflight answer


def with_cors(app, origins: tuple[str, ...], base_path: str = "/dicomweb"):
    """``app`` answering CORS for ``origins`` on ``base_path``; ``app`` itself if none."""
    if not origins:
        return app
    base = base_path.rstrip("/")
    allowed = frozenset(o.rstrip("/") for o in origins)
    any_origin = "*" in allowed

    async def cors_app(scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == base or path.startswith(base + "/")):
            await app(scope, receive, send)
            return
        origin = next((v for k, v in scope.get("headers", ()) if k == b"origin"), None)
        if origin is None or not (any_origin or origin.decode("latin-1") in allowed):
            await app(scope, receive, send)
            return
        preflight = scope.get("method") == "OPTIONS" and any(
            k == b"access-control-request-method" for k, _ in scope.get("headers", ()))
        common = [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
        if preflight:
            await send({"type": "http.response.start", "status": 204, "headers": [
                *common, (b"access-control-allow-methods", ALLOWED_METHODS),
                (b"access-control-allow-headers", ALLOWED_HEADERS),
                (b"access-control-max-age", MAX_AGE), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return

        async def cors_send(message):
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"vary"]
                vary = [v for k, v in message.get("headers", ()) if k.lower() == b"vary"]
                headers += [(b"access-control-allow-origin", origin),
                            (b"access-control-expose-headers", EXPOSED_HEADERS),
                            (b"vary", b", ".join([*vary, b"origin"]))]
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, cors_send)

    return cors_app
