"""Operations endpoints beside the DICOMweb routes: ``/health``, ``/ready`` and ``/metrics``.

- ``GET /health``: liveness, 200 while the process serves HTTP (always open, no token);
- ``GET /ready``: 200 when the index answers and free space is above the reserve, else 503
  with the reason (a load balancer stops sending stores);
- ``GET /metrics``: :mod:`dicomaccel.metrics` in the Prometheus text format (scope ``admin``
  when tokens are configured).
"""

from __future__ import annotations

import asyncio
import json

from . import metrics
from .archive import Archive

__all__ = ["with_ops", "scope_needed"]

PROMETHEUS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def scope_needed(scope: dict) -> str | None:
    """The token scope an HTTP request needs (see :mod:`dicomaccel.access`); None: open."""
    path = scope.get("path", "")
    if path in ("/health", "/ready"):
        return None
    if path == "/metrics":
        return "admin"
    return "store" if scope.get("method") == "POST" else "read"


def with_ops(app, archive: Archive):
    """``app`` with the three operations routes in front of it."""

    async def routed(scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path == "/health":
            await _answer(send, 200, b"application/json", b'{"status":"ok"}')
        elif path == "/ready":
            reasons = []
            try:
                # One indexed read: the index answers (off the loop: a database server may
                # take its connect timeout to say it is gone).
                await asyncio.get_running_loop().run_in_executor(None, archive.index.lookup, "0")
            except Exception as exc:  # any failure means not ready; say which, not a traceback
                reasons.append(f"index: {exc.__class__.__name__}")
            if not archive.writable():
                reasons.append("free space below the reserve")
            body = json.dumps({"status": "ready" if not reasons else "not ready", "reasons": reasons}).encode()
            await _answer(send, 503 if reasons else 200, b"application/json", body)
        elif path == "/metrics":
            await _answer(send, 200, PROMETHEUS_TYPE, metrics.render(archive.files.free_bytes()))
        else:
            await app(scope, receive, send)

    return routed


async def _answer(send, status: int, media: bytes, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", media), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
