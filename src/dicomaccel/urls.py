"""Where an ASGI request was addressed, and the URLs our DICOMweb responses hand out.

PS3.18 responses carry absolute URLs: the Retrieve URL (0008,1190) of a STOW-RS response
(§10.5.3) and of QIDO-RS results, BulkDataURIs in WADO-RS metadata (§F.2.2). They must be
URLs the *client* can use, so they are built from, in this order:

1. ``public_url``: the URL the app's root is reachable at from clients (scheme, host, port
   and any path prefix a proxy or a host framework adds); set it behind a proxy that
   rewrites the Host, or when clients send a Host without the port.
2. otherwise the request: scheme, the Host header (else the server address), and the ASGI
   ``root_path``, the prefix the app is mounted under (``app.mount("/dicomweb", ...)`` in
   Starlette or FastAPI sets it).

The service's own paths (``{base_path}/studies/...``) follow either.

Routing uses the path *within* the app. ASGI servers and frameworks put the whole path in
``scope["path"]`` and the mount prefix in ``root_path`` (Starlette's Mount, uvicorn's
``--root-path``); some older ones stripped the prefix from ``path``; both are handled.

A leaf module: it imports nothing of ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

__all__ = ["route_path", "base_url", "check_public_url", "presented_at"]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def check_public_url(url: str | None) -> str | None:
    """``url`` without a trailing slash, or None for None/empty.

    Raises
    ------
    ValueError
        Not an absolute ``http``/``https`` URL, or one with a query or fragment.
    """
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"public URL must be an absolute http(s) URL without query or fragment: {url!r}")
    return url.rstrip("/")


def route_path(scope: Mapping) -> str:
    """The request path below the app's mount point (``root_path``)."""
    path = scope.get("path", "")
    root = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root):]
    return path


def base_url(scope: Mapping, headers: Mapping[str, str], public_url: str | None = None) -> str:
    """``scheme://host[:port]{root_path}`` as the client addressed the app, or ``public_url``.

    ``headers`` maps lower-case header names to values.
    """
    if public_url:
        return public_url
    scheme = scope.get("scheme", "http")
    host = headers.get("host", "")
    server = scope.get("server") or ("localhost", None)
    if not host:
        host = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
    elif (":" not in host or host.endswith("]")) and server[1] is not None \
            and server[1] != _DEFAULT_PORTS.get(scheme) \
            and not headers.get("x-forwarded-host") and not headers.get("forwarded"):
        # A Host without the port (dicomweb-client sends one) on a direct connection to a
        # non-default port: the URLs we hand out must name the port we listen on. Behind a
        # proxy (Forwarded / X-Forwarded-Host present) the Host is taken as it is.
        host = f"{host}:{server[1]}"
    return f"{scheme}://{host}{scope.get('root_path', '')}"


def presented_at(app, public_url: str | None = None):
    """``app`` for a service that routes on ``scope["path"]`` as the path within the app and
    builds its URLs from the request's scheme, Host and ``root_path`` alone: it sees
    ``path`` without the mount prefix, and the request as addressed to :func:`base_url`'s
    answer (``public_url``, or the request's address with the port a Host without one
    left out), as scheme, Host header and ``root_path``."""
    public_url = check_public_url(public_url)

    async def presented(scope, receive, send):
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        headers = scope.get("headers", ())
        url = urlsplit(base_url(scope, {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers},
                                public_url))
        await app({**scope, "path": route_path(scope), "scheme": url.scheme, "root_path": url.path,
                   "headers": [(b"host", url.netloc.encode("latin-1")),
                               *((k, v) for k, v in headers if k.lower() != b"host")]}, receive, send)

    return presented
