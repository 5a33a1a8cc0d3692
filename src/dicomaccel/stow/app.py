"""STOW-RS (PS3.18 §10.5) as a plain ASGI application.

A request body is fed to the multipart scanner as it arrives; each part's bytes (the
scanner's memoryviews of the body chunks) go to the archive's writer threads a MiB at a time
(:meth:`IncomingInstance.feed`), so the event loop never writes a file and memory stays
bounded whatever the upload size. A part is committed (parsed, validated, then published,
indexed and flushed by the archive's group commit) with
:meth:`IncomingInstance.commit_async` while the next part streams in.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import time
from typing import Any, Awaitable, Callable

from .. import metrics
from ..logs import access
from ..archive import Archive, StoreFailure, is_valid_uid
from ..config import DEFAULTS
from ..errors import LimitExceeded, ParseError
from ..multipart import PART_BEGIN, PART_DATA, PART_END, MultipartScanner, parse_content_type
from ..status import FailureReason
from ..urls import base_url, check_public_url, route_path
from .gate import GateBusy, StoreGate
from .response import JSON_MEDIA_TYPE, FailedInstance, StoredInstance, StoreResponse, choose_media_type

log = logging.getLogger("dicomaccel.stow")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

ACCEPTED_REQUEST_TYPE = 'multipart/related; type="application/dicom"; boundary=...'
# json.dumps with separators makes an encoder per call; one serves every response.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))
# Body bytes go into the metric every this many (and at the body's end): progress of a long
# upload without a counter update per read.
BYTES_METRIC_STEP = 1 << 20


class _ClientGone(Exception):
    pass


class _InstanceTooLarge(Exception):
    pass


def create_app(
    archive: Archive,
    *,
    base_path: str = "/dicomweb",
    max_concurrent_stores: int | None = None,
    queue_limit: int = DEFAULTS.store_queue_limit,
    queue_wait: float = DEFAULTS.store_queue_wait,
    max_request_bytes: int | None = None,
    max_instance_bytes: int | None = None,
    max_parts: int = 10000,
    commits_in_flight: int = 4,
    body_timeout: float | None = DEFAULTS.body_timeout,
    min_upload_rate: int = DEFAULTS.min_upload_rate,
    public_url: str | None = DEFAULTS.public_url,
) -> "StowApp":
    """Build the STOW-RS ASGI application over ``archive``.

    Parameters
    ----------
    archive : Archive
        Where instances are stored (shared with the C-GET service).
    base_path : str
        The service answers ``POST {base_path}/studies[/{StudyInstanceUID}]``, below the
        ASGI ``root_path`` (where a host framework mounted the app): mounted with
        ``app.mount("/dicomweb", create_app(archive, base_path=""))`` it answers
        ``/dicomweb/studies``.
    max_concurrent_stores : int, optional
        Requests storing at once; further requests wait in a FIFO queue. Default: 2 x CPUs.
    queue_limit, queue_wait : int, float
        Bound and wait limit of that queue; beyond either the client gets 503 with Retry-After.
    max_request_bytes, max_instance_bytes : int, optional
        Size limits (413 when exceeded); ``None`` means unlimited.
    max_parts : int
        Most parts accepted in one request (413 beyond, like a part header block over 16384
        bytes; 202 with an Other Failure if earlier parts were stored).
    commits_in_flight : int
        Parts of one request being committed (on the archive's threads) while the body keeps streaming.
    body_timeout : float, optional
        Seconds a request may go without sending body data before it is answered 408 and
        its store slot freed (a stalled client must not hold a slot); ``None``: no limit.
    min_upload_rate : int
        Bytes per second a body must average, from its start, once :data:`RATE_GRACE` seconds
        have passed; a slower one is answered 408 and its slot freed (a trickle must not hold
        a slot either). 0: no minimum.
    public_url : str, optional
        The URL clients reach the app's root at (e.g. ``https://pacs.example.org``); the
        Retrieve URLs of responses start with it. Default: the request's scheme, Host and
        ``root_path`` (see :mod:`dicomaccel.urls`).
    """
    return StowApp(
        archive,
        base_path=base_path,
        gate=StoreGate(
            2 * (os.cpu_count() or 1) if max_concurrent_stores is None else max_concurrent_stores,
            queue_limit=queue_limit,
            wait_timeout=queue_wait,
        ),
        max_request_bytes=max_request_bytes,
        max_instance_bytes=max_instance_bytes,
        max_parts=max_parts,
        commits_in_flight=commits_in_flight,
        body_timeout=body_timeout,
        min_upload_rate=min_upload_rate,
        public_url=public_url,
    )


# Seconds of a body's start exempt from the minimum upload rate (connection ramp-up, a
# client that builds the next part before sending it).
RATE_GRACE = 10.0
# Seconds after which the body watchdog looks again when a limit was passed while the
# request was working (writing or committing a part), not waiting for the client ...
WATCH_RETRY = 0.05
# ... and how early it may fire and still count a limit as passed (the event loop's clock
# has a resolution of a millisecond; without it the timer could set itself again at once).
WATCH_SLACK = 0.005


class StowApp:
    def __init__(
        self,
        archive: Archive,
        *,
        base_path: str,
        gate: StoreGate,
        max_request_bytes: int | None,
        max_instance_bytes: int | None,
        max_parts: int,
        commits_in_flight: int,
        body_timeout: float | None,
        min_upload_rate: int,
        public_url: str | None = None,
    ) -> None:
        self.archive = archive
        self.public_url = check_public_url(public_url)
        self.base_path = base_path.rstrip("/")
        self.gate = gate
        self.max_request_bytes = max_request_bytes
        self.max_instance_bytes = max_instance_bytes
        self.max_parts = max_parts
        self.commits_in_flight = max(1, commits_in_flight)
        self.body_timeout = body_timeout
        self.min_upload_rate = min_upload_rate
        self._route = re.compile(rf"^{re.escape(self.base_path)}/studies(?:/([^/]+))?/?$")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._http(scope, receive, send)
        except _ClientGone:
            log.info("client disconnected during a store")
        except Exception:
            # Never a traceback to the peer (the ASGI server answers 500 if nothing was sent).
            log.exception("STOW-RS request failed")
            raise

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.monotonic()
        report: dict = {"status": 500}
        try:
            await self._store(scope, receive, send, report)
        finally:
            seconds = time.monotonic() - started
            metrics.child(metrics.STOW_REQUESTS, str(report["status"])).inc()
            metrics.child(metrics.STORE_SECONDS).observe(seconds)
            client = scope.get("client") or ("", 0)
            access("stow", f'{client[0]} {scope.get("method")} {scope.get("path")} {report["status"]}',
                   client=client[0], method=scope.get("method"), path=scope.get("path"),
                   seconds=round(seconds, 6), **report)

    async def _store(self, scope: Scope, receive: Receive, send: Send, report: dict) -> None:
        """Answer one request; what happened goes into ``report`` (status, counts, reasons)."""
        headers = _headers(scope)
        media = None
        try:
            study_uid, media = self._check_request(scope, headers)
            boundary = self._check_body(headers)
            if not self.gate.try_acquire():
                metrics.child(metrics.QUEUE_DEPTH).set(self.gate.waiting + 1)
                waiting = time.monotonic()
                try:
                    await self.gate.acquire()
                except GateBusy as busy:
                    raise _Refusal(503, f"Busy: {busy}", [(b"retry-after", str(busy.retry_after).encode())]) from None
                finally:
                    metrics.child(metrics.QUEUE_DEPTH).set(self.gate.waiting)
                metrics.child(metrics.QUEUE_WAIT).observe(time.monotonic() - waiting)
            else:
                metrics.child(metrics.QUEUE_WAIT).observe(0.0)
            try:
                if not self.archive.writable():
                    raise _Refusal(503, "The archive cannot accept writes (storage space below the reserve)",
                                   [(b"retry-after", b"60")], FailureReason.OUT_OF_STORAGE)
                upload = _Upload(self, study_uid)
                result = await upload.run(receive, boundary,
                                          base_url(scope, headers, self.public_url) + self.base_path)
            finally:
                self.gate.release()
        except _Refusal as refusal:
            report.update(status=refusal.status, reason=f"{refusal.reason:04X}", error=refusal.text)
            await _refuse(send, refusal, media)
            return
        status = result.http_status()
        report.update(status=status, stored=sum(not s.warning_reason for s in result.stored),
                      warned=sum(bool(s.warning_reason) for s in result.stored), failed=len(result.failed),
                      reasons=sorted({f"{s.warning_reason:04X}" for s in result.stored if s.warning_reason}
                                     | {f"{f.failure_reason:04X}" for f in result.failed + result.other_failures}),
                      bytes=upload.received)
        for stored in result.stored:
            outcome = "warning" if stored.warning_reason else "stored"
            metrics.child(metrics.STOW_INSTANCES, outcome, f"{stored.warning_reason or 0:04X}").inc()
        for failed in result.failed:
            metrics.child(metrics.STOW_INSTANCES, "failed", f"{failed.failure_reason:04X}").inc()
        if media == JSON_MEDIA_TYPE:
            body = _COMPACT_JSON.encode(result.to_json()).encode()
        else:
            body = result.to_xml().encode()
        # PS3.18 §8.5 / RFC 9110 §10.2.3: a 503 says when to come back.
        await _respond(send, status, media, body, [(b"retry-after", b"60")] if status == 503 else ())

    def _check_request(self, scope: Scope, headers: dict[str, str]) -> tuple[str | None, str]:
        """``(study_uid, response media type)`` of a request to one of our resources.

        Raises
        ------
        _Refusal
            404, 405, 406 or 400 (a Study Instance UID that is not a UID), with the reason.
        """
        match = self._route.match(route_path(scope))
        if not match:
            raise _Refusal(404, f"Not found. STOW-RS accepts POST {self.base_path}/studies[/{{StudyInstanceUID}}]")
        if scope["method"] != "POST":
            raise _Refusal(405, "Method not allowed: STOW-RS accepts POST", [(b"allow", b"POST")])
        media = choose_media_type(headers.get("accept"))
        if media is None:
            raise _Refusal(406, "Not acceptable: the response is application/dicom+json or application/dicom+xml")
        study_uid = match.group(1)
        if study_uid is not None and not is_valid_uid(study_uid):
            raise _Refusal(400, f"Invalid Study Instance UID in the request path: {study_uid[:80]!r}")
        return study_uid, media

    def _check_body(self, headers: dict[str, str]) -> str:
        """The multipart boundary of an acceptable body (415, 400 or 413 otherwise)."""
        boundary = _boundary(headers)
        if self.max_request_bytes is not None:
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_request_bytes:
                raise _Refusal(413, f"Request body of {declared} bytes exceeds the limit of {self.max_request_bytes}")
        return boundary


# The Failure Reason (PS3.18 I.2) a whole-request refusal reports in its Other Failures
# Sequence item, by HTTP status: the body could not be understood, or resources ran out.
_REASON_OF_STATUS = {400: FailureReason.CANNOT_UNDERSTAND, 408: FailureReason.PROCESSING_FAILURE,
                     413: FailureReason.OUT_OF_MEMORY, 415: FailureReason.CANNOT_UNDERSTAND,
                     503: FailureReason.OUT_OF_MEMORY}


class _Refusal(Exception):
    """The whole request is answered with ``status``: a Store Instances Response whose Other
    Failures Sequence holds ``reason`` once the response media type is known, else plain text."""

    def __init__(self, status: int, text: str, headers=(), reason: int | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = tuple(headers)
        self.reason = _REASON_OF_STATUS.get(status, FailureReason.PROCESSING_FAILURE) if reason is None else reason


async def _refuse(send: Send, refusal: _Refusal, media: str | None) -> None:
    """Answer a refused request. PS3.18 §10.5.3 lets a failure carry the Store Instances
    Response, so once Accept has chosen its representation it does: one Other Failures
    Sequence item with the Failure Reason and an Error Comment (64 characters of LO). The
    whole reason also goes in a ``Warning`` header (RFC 9111 §5.5 form)."""
    if media is None:
        await _plain(send, refusal.status, refusal.text, refusal.headers)
        return
    response = StoreResponse(other_failures=[FailedInstance(refusal.reason, comment=refusal.text)])
    body = (_COMPACT_JSON.encode(response.to_json()) if media == JSON_MEDIA_TYPE
            else response.to_xml()).encode()
    warning = "299 dicomaccel " + json.dumps(refusal.text.encode("ascii", "replace").decode())
    await _respond(send, refusal.status, media, body, [*refusal.headers, (b"warning", warning.encode())])


@functools.lru_cache(maxsize=64)
def _media_type(content_type: str) -> str:
    """The media type of a part's Content-Type (the value itself if it does not parse).
    Cached: every part of every request sends the same few values."""
    try:
        return parse_content_type(content_type)[0]
    except ParseError:
        return content_type


def _boundary(headers: dict[str, str]) -> str:
    """The multipart boundary of an acceptable request's Content-Type (PS3.18 §10.5.1.1).

    Raises
    ------
    _Refusal
        415 for another media type, part type or a content coding; 400 if malformed.
    """
    raw = headers.get("content-type")
    accepted = f"Accepted: Content-Type: {ACCEPTED_REQUEST_TYPE}, one PS3.10 instance per part"
    if not raw:
        raise _Refusal(415, f"Missing Content-Type. {accepted}")
    try:
        media_type, params = parse_content_type(raw)
    except ParseError as exc:
        raise _Refusal(400, f"Malformed Content-Type header: {exc}") from None
    if media_type != "multipart/related":
        raise _Refusal(415, f"Unsupported media type {media_type!r}. {accepted}")
    part_type = params.get("type", "application/dicom").strip().lower()
    if part_type != "application/dicom":
        raise _Refusal(415, f"Unsupported multipart/related type {part_type!r}. {accepted}")
    if headers.get("content-encoding", "identity").strip().lower() not in ("identity", ""):
        raise _Refusal(415, f"Unsupported Content-Encoding {headers['content-encoding']!r}; send the body unencoded")
    boundary = params.get("boundary")
    if not boundary:
        raise _Refusal(400, "multipart/related Content-Type without a boundary parameter")
    return boundary


class _Upload:
    """One request body being stored: each part streams into an archive temp file and is
    committed on the archive's threads while the body goes on; the outcome of every part is kept
    in body order for the Store Instances Response."""

    def __init__(self, app: StowApp, study_uid: str | None) -> None:
        self.app = app
        self.study_uid = study_uid
        self.loop = asyncio.get_running_loop()
        self.commits: list[asyncio.Future] = []
        self.order: list[FailedInstance | asyncio.Future] = []
        self.other: list[FailedInstance] = []  # parts that are not instances
        self.incoming = None
        self.part_bytes = 0
        self.received = 0  # body bytes
        self.started = self.loop.time()  # the minimum upload rate counts from here
        self.waiting_since: float | None = None  # set while we wait for the client
        self.expired: str | None = None  # why the watchdog cut the body off
        self.watchdog: asyncio.TimerHandle | None = None

    async def run(self, receive: Receive, boundary: str, base_url: str) -> StoreResponse:
        """Store the body; the response to send.

        Raises
        ------
        _Refusal
            The body failed (400, 408, 413) before any instance was stored.
        """
        try:
            scanner = MultipartScanner(boundary, max_parts=self.app.max_parts)
        except ValueError as exc:
            raise _Refusal(400, f"Invalid multipart boundary: {exc}") from None
        try:
            error = await self._receive(receive, scanner)
        finally:
            if self.incoming is not None:
                self.incoming.abort()
            # Every started commit finishes either way: an instance whose bytes all arrived is
            # complete, and abandoning its thread would leave the store half done. (Awaited one
            # by one, not by asyncio.wait: a request usually holds one.)
            for commit in self.commits:
                try:
                    await commit
                except Exception:  # a failed store: _response reports it
                    pass
        return self._response(base_url, error)

    async def _receive(self, receive: Receive, scanner: MultipartScanner) -> tuple[int, str] | None:
        """Feed the body to the scanner and the parts to the archive; ``(status, reason)`` if
        the body went bad, None if it ended well."""
        app = self.app
        max_bytes = app.max_request_bytes
        loop = self.loop
        received = metrics.child(metrics.BYTES_IN)
        counted = 0  # body bytes in the metric so far
        task = asyncio.current_task()
        self._watch(task)
        try:
            while True:
                # The watchdog may cut the body off only while we wait for the client (not
                # while a part is written or committed); per chunk, one stamp, no timer.
                self.waiting_since = loop.time()
                message = await receive()
                self.waiting_since = None
                if message["type"] == "http.disconnect":
                    raise _ClientGone
                chunk = message.get("body", b"")
                if chunk:
                    self.received += len(chunk)
                    if self.received - counted >= BYTES_METRIC_STEP:
                        received.inc(self.received - counted)
                        counted = self.received
                    if max_bytes is not None and self.received > max_bytes:
                        return (413, f"Request body exceeds the limit of {max_bytes} bytes")
                try:
                    events = scanner.feed(chunk)
                except ParseError as exc:
                    # Parts completed in this chunk before the bad bytes are whole: commit them
                    # before the error ends the body (PS3.18 §10.5.3: stored instances are reported).
                    await self._handle(exc.events)
                    raise
                await self._handle(events)
                if not message.get("more_body", False):
                    break
            scanner.finish()
        except asyncio.CancelledError:
            # Ours only if no one else asked to cancel the request too (as asyncio.timeout).
            if self.expired is None or task.uncancel() > 0:
                raise
            return (408, self.expired)
        except LimitExceeded as exc:  # too many parts or a header block too long: 413 (PS3.18 §8.5)
            return (413, f"Multipart body exceeds a limit: {exc}")
        except ParseError as exc:
            return (400, f"Malformed multipart body: {exc}")
        except _InstanceTooLarge as exc:
            return (413, str(exc))
        finally:
            self.waiting_since = None
            if self.watchdog is not None:
                self.watchdog.cancel()
            if self.received > counted:
                received.inc(self.received - counted)
        return None

    def _watch(self, task: asyncio.Task) -> None:
        """One timer for the whole body (a timer moved per chunk cost more than the chunk's
        own work): when it fires it checks the two limits against the body so far and, while
        we wait for the client, cancels the request past either; otherwise it sets itself
        for the earliest moment one could be passed."""
        self.watchdog = None
        app, now = self.app, self.loop.time()
        deadlines = []
        if app.body_timeout is not None:
            since = self.waiting_since
            deadline = (now if since is None else since) + app.body_timeout
            if since is not None and now >= deadline - WATCH_SLACK:
                self.expired = f"Request timeout: no body data for {app.body_timeout:g} s"
            deadlines.append(deadline)
        if app.min_upload_rate:
            # The average rate since the body's start, after the grace period.
            deadline = self.started + RATE_GRACE + (self.received + 1) / app.min_upload_rate
            if now >= deadline - WATCH_SLACK:
                if self.waiting_since is not None and self.expired is None:
                    self.expired = f"Request timeout: the body arrives at less than {app.min_upload_rate} bytes/s"
                deadline = now + WATCH_RETRY  # passed while working: check once we wait again
            deadlines.append(deadline)
        if self.expired is not None:
            if task.cancelling():  # someone else is cancelling the request: that wins
                self.expired = None
            else:
                task.cancel()
        elif deadlines:
            self.watchdog = self.loop.call_at(min(deadlines), self._watch, task)

    async def _handle(self, events: list) -> None:
        for kind, value in events:
            if kind == PART_DATA:
                if self.incoming is None:
                    continue
                self.part_bytes += len(value)
                limit = self.app.max_instance_bytes
                if limit is not None and self.part_bytes > limit:
                    raise _InstanceTooLarge(f"An instance exceeds the limit of {limit} bytes")
                try:
                    await self.incoming.feed(value)
                except StoreFailure as failure:
                    self.incoming.abort()
                    self.incoming = None
                    self.order.append(_failed(failure))
            elif kind == PART_BEGIN:
                self._begin_part(value)
            elif kind == PART_END:
                if self.incoming is not None:
                    await self._commit_part()
            # CLOSE needs nothing: finish() checks that it came.

    def _begin_part(self, headers: list[tuple[str, str]]) -> None:
        self.part_bytes = 0
        part_type = dict(headers).get("content-type")
        if part_type is not None:
            kind = _media_type(part_type)
            if kind != "application/dicom":
                self.other.append(FailedInstance(FailureReason.CANNOT_UNDERSTAND,
                                                 comment=f"part of type {kind[:40]!r} is not application/dicom"))
                return
        try:
            self.incoming = self.app.archive.begin()
        except StoreFailure as failure:  # e.g. A710: the reserve was reached meanwhile
            self.order.append(_failed(failure))

    async def _commit_part(self) -> None:
        fut = self.incoming.commit_async(expected_study_uid=self.study_uid)
        self.incoming = None
        self.commits.append(fut)
        self.order.append(fut)
        # Bound the parts of one request held in flight (disk, threads).
        pending = [c for c in self.commits if not c.done()]
        if len(pending) >= self.app.commits_in_flight:
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)

    def _response(self, base_url: str, error: tuple[int, str] | None) -> StoreResponse:
        response = StoreResponse(study_retrieve_url=None)
        studies = set()
        for entry in self.order:
            if isinstance(entry, FailedInstance):
                response.failed.append(entry)
                continue
            failure = entry.exception()
            if failure is not None:
                if not isinstance(failure, StoreFailure):
                    raise failure
                response.failed.append(_failed(failure))
                continue
            outcome = entry.result()
            rec = outcome.record
            studies.add(rec.study_uid)
            response.stored.append(StoredInstance(
                sop_class_uid=rec.sop_class_uid,
                sop_instance_uid=rec.sop_instance_uid,
                retrieve_url=f"{base_url}/studies/{rec.study_uid}/series/{rec.series_uid}/instances/{rec.sop_instance_uid}",
                warning_reason=outcome.warning,
                problems=outcome.problems,
                changes=outcome.changes,
            ))
        response.other_failures.extend(self.other)
        if error is not None:
            if not response.stored:
                raise _Refusal(*error)
            # Instances committed before the body went bad stay stored and are reported; the
            # rest of the body is one failure not tied to an instance (PS3.18 (0008,119A)).
            response.other_failures.append(FailedInstance(FailureReason.CANNOT_UNDERSTAND, comment=error[1]))
        if not response.stored and not response.failed and not response.other_failures:
            raise _Refusal(400, "The multipart body holds no parts")
        study = self.study_uid or (studies.pop() if len(studies) == 1 else None)
        if study:
            response.study_retrieve_url = f"{base_url}/studies/{study}"
        return response


def _failed(failure: StoreFailure) -> FailedInstance:
    return FailedInstance(
        failure_reason=int(failure.status),
        sop_class_uid=failure.sop_class_uid,
        sop_instance_uid=failure.sop_instance_uid,
        comment=failure.comment,
        problems=failure.problems,
    )


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        out[name.decode("latin-1").lower()] = value.decode("latin-1")
    return out


async def _respond(send: Send, status: int, content_type: str, body: bytes, extra=()) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _plain(send: Send, status: int, text: str, extra=()) -> None:
    await _respond(send, status, "text/plain; charset=utf-8", (text + "\n").encode(), extra)
