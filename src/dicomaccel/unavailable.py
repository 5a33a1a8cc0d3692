"""What the read services answer when the index database cannot: one place for all of them.

A read of the index that meets a lost database raises
:class:`~dicomaccel.archive.index.IndexUnavailable` (where reads go:
:meth:`~dicomaccel.archive.postgres_index.PostgresIndex.read`). The services turn it into a
clear refusal with the same reason, never a 500 or a 0110 "internal error", and answer again
as soon as the database does (the index reconnects by itself):

- QIDO-RS and WADO-RS: ``503 Service Unavailable`` with ``Retry-After`` (PS3.18 §8.5, RFC 9110
  §15.6.4 and §10.2.3) and the reason as a ``text/plain`` body (:func:`http_refusal`);
- C-FIND: A700 "Refused: Out of Resources" (PS3.4 Table C.4-1), with the Error Comment
  (0000,0902) (:func:`dimse_refusal`);
- C-GET and C-MOVE: A701 "Refused: Out of Resources – Unable to calculate number of matches"
  (PS3.4 Tables C.4-2 and C.4-3): the index is read to find the matches before any
  sub-operation, so no sub-operation has started.

Stores name the same failure themselves (A720, STOW-RS 503: the group commit, see
:mod:`dicomaccel.archive.commit`).
"""

from __future__ import annotations

import logging

from .archive.index import IndexUnavailable
from .status import Status

__all__ = ["RETRY_AFTER", "dimse_refusal", "http_refusal", "FIND_STATUS", "RETRIEVE_STATUS"]

log = logging.getLogger("dicomaccel.archive")

# Seconds a refused HTTP client is told to wait (Retry-After).
RETRY_AFTER = 10
FIND_STATUS = 0xA700  # PS3.4 Table C.4-1: Refused: Out of Resources
RETRIEVE_STATUS = Status.OUT_OF_RESOURCES_MATCHES  # A701, PS3.4 Tables C.4-2 and C.4-3


def http_refusal(app):
    """``app`` (an ASGI app) answering 503 for a request whose index read raised
    :class:`IndexUnavailable` before its response started; after that the connection is
    closed (the response cannot change its status), as for any failure mid-response."""

    async def guarded(scope, receive, send):
        started = False

        async def tracking(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await app(scope, receive, tracking)
        except IndexUnavailable as exc:
            if started or scope["type"] != "http":
                raise
            log.warning("%s %s refused: %s", scope.get("method"), scope.get("path"), exc.comment)
            body = f"Service unavailable: {exc.comment}\n".encode()
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(RETRY_AFTER).encode())]})
            await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})

    return guarded


def dimse_refusal(handler, status: int):
    """A DIMSE request handler (``await handler(assoc, request)``) whose request is answered
    ``status`` with the Error Comment when an index read raised :class:`IndexUnavailable`: as
    the final response, also after Pending ones (a C-FIND's earlier pages)."""

    async def guarded(assoc, request):
        try:
            return await handler(assoc, request)
        except IndexUnavailable as exc:
            if request.responded:
                raise
            log.warning("request 0x%04X refused: %s", request.command_field, exc.comment)
            await assoc.respond(request, status, ErrorComment=exc.comment)
            return None

    # What a caller may look for on the handler (e.g. C-MOVE's engine, for tests).
    guarded.handler = handler
    return guarded
