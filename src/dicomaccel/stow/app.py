"""STOW-RS (PS3.18 §10.5) as a plain ASGI application.

A request body is fed to the multipart scanner as it arrives; each part's bytes (the
scanner's memoryviews of the body chunks) go to the archive's writer threads a MiB at a time
(:meth:`IncomingInstance.feed`), so the event loop never writes a file and memory stays
bounded whatever the upload size. A part is committed (parsed, validated, then published,
indexed and flushed by the archive's group commit) in a worker thread while the next part
streams in.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable

from ..archive import Archive, StoreFailure, StoreOutcome, is_valid_uid
from ..config import DEFAULTS
from ..errors import LimitExceeded, ParseError
from ..multipart import PART_BEGIN, PART_DATA, PART_END, MultipartScanner, parse_content_type
from ..status import FailureReason
from .gate import GateBusy, StoreGate
from .response import JSON_MEDIA_TYPE, FailedInstance, StoredInstance, StoreResponse, choose_media_type

log = logging.getLogger("dicomaccel.stow")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

ACCEPTED_REQUEST_TYPE = 'multipart/related; type="application/dicom"; boundary=...'


class _ClientGone(Exception):
    pass


class _RequestTooLarge(Exception):
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
    executor: ThreadPoolExecutor | None = None,
) -> "StowApp":
    """Build the STOW-RS ASGI application over ``archive``.

    Parameters
    ----------
    archive : Archive
        Where instances are stored (shared with the C-GET service).
    base_path : str
        Mount point; the service answers ``POST {base_path}/studies[/{StudyInstanceUID}]``.
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
        Parts of one request being committed in worker threads while the body keeps streaming.
    body_timeout : float, optional
        Seconds a request may go without sending body data before it is answered 408 and
        its store slot freed (a stalled client must not hold a slot); ``None``: no limit.
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
        executor=executor,
    )


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
        executor: ThreadPoolExecutor | None,
    ) -> None:
        self.archive = archive
        self.base_path = base_path.rstrip("/")
        self.gate = gate
        self.max_request_bytes = max_request_bytes
        self.max_instance_bytes = max_instance_bytes
        self.max_parts = max_parts
        self.commits_in_flight = max(1, commits_in_flight)
        self.body_timeout = body_timeout
        self._own_executor = executor is None
        self.executor = executor or ThreadPoolExecutor(
            max_workers=max(4, gate.limit * self.commits_in_flight), thread_name_prefix="stow-commit"
        )
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
                self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def close(self) -> None:
        if self._own_executor:
            self.executor.shutdown(wait=True)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = self._route.match(scope["path"])
        if not match:
            await _plain(send, 404, "Not found. STOW-RS accepts POST {}/studies[/{{StudyInstanceUID}}]".format(self.base_path))
            return
        if scope["method"] != "POST":
            await _plain(send, 405, "Method not allowed: STOW-RS accepts POST", [(b"allow", b"POST")])
            return
        study_uid = match.group(1)
        if study_uid is not None and not is_valid_uid(study_uid):
            await _plain(send, 400, f"Invalid Study Instance UID in the request path: {study_uid[:80]!r}")
            return

        headers = _headers(scope)
        media = choose_media_type(headers.get("accept"))
        if media is None:
            await _plain(send, 406, "Not acceptable: the response is application/dicom+json or application/dicom+xml")
            return
        boundary = self._check_request_type(headers)
        if isinstance(boundary, tuple):
            await _plain(send, *boundary)
            return
        if self.max_request_bytes is not None:
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_request_bytes:
                await _plain(send, 413, f"Request body of {declared} bytes exceeds the limit of {self.max_request_bytes}")
                return

        try:
            await self.gate.acquire()
        except GateBusy as busy:
            await _plain(send, 503, f"Busy: {busy}", [(b"retry-after", str(busy.retry_after).encode())])
            return
        try:
            if not self.archive.writable():
                await _plain(send, 503, "The archive cannot accept writes (storage space below the reserve)",
                             [(b"retry-after", b"60")])
                return
            result = await self._store(receive, boundary, study_uid, _base_url(scope, headers))
        finally:
            self.gate.release()

        if isinstance(result, tuple):
            await _plain(send, *result)
            return
        status = result.http_status()
        if media == JSON_MEDIA_TYPE:
            body = json.dumps(result.to_json(), separators=(",", ":")).encode()
        else:
            body = result.to_xml().encode()
        # PS3.18 §8.5 / RFC 9110 §10.2.3: a 503 says when to come back.
        await _respond(send, status, media, body, [(b"retry-after", b"60")] if status == 503 else ())

    def _check_request_type(self, headers: dict[str, str]) -> str | tuple:
        raw = headers.get("content-type")
        accepted = f"Accepted: Content-Type: {ACCEPTED_REQUEST_TYPE}, one PS3.10 instance per part"
        if not raw:
            return (415, f"Missing Content-Type. {accepted}")
        try:
            media_type, params = parse_content_type(raw)
        except ParseError as exc:
            return (400, f"Malformed Content-Type header: {exc}")
        if media_type != "multipart/related":
            return (415, f"Unsupported media type {media_type!r}. {accepted}")
        part_type = params.get("type", "application/dicom").strip().lower()
        if part_type != "application/dicom":
            return (415, f"Unsupported multipart/related type {part_type!r}. {accepted}")
        if headers.get("content-encoding", "identity").strip().lower() not in ("identity", ""):
            return (415, f"Unsupported Content-Encoding {headers['content-encoding']!r}; send the body unencoded")
        boundary = params.get("boundary")
        if not boundary:
            return (400, "multipart/related Content-Type without a boundary parameter")
        return boundary

    async def _store(self, receive: Receive, boundary: str, study_uid: str | None, base_url: str):
        try:
            scanner = MultipartScanner(boundary, max_parts=self.max_parts)
        except ValueError as exc:
            return (400, f"Invalid multipart boundary: {exc}")
        loop = asyncio.get_running_loop()
        base_url += self.base_path
        commits: list[asyncio.Future] = []
        order: list[FailedInstance | asyncio.Future] = []
        incoming = None
        part_bytes = 0
        request_bytes = 0
        error: tuple[int, str] | None = None
        other: list[FailedInstance] = []

        def begin_part(headers: list[tuple[str, str]]) -> None:
            nonlocal incoming, part_bytes
            part_bytes = 0
            part_type = dict(headers).get("content-type")
            if part_type is not None:
                try:
                    kind = parse_content_type(part_type)[0]
                except ParseError:
                    kind = part_type
                if kind != "application/dicom":
                    other.append(FailedInstance(FailureReason.CANNOT_UNDERSTAND,
                                                comment=f"part of type {kind[:40]!r} is not application/dicom"))
                    return
            try:
                incoming = self.archive.begin()
            except StoreFailure as failure:  # e.g. A710: the reserve was reached meanwhile
                order.append(_failed(failure))

        async def handle(events: list) -> None:
            nonlocal incoming, part_bytes
            for kind, value in events:
                if kind == PART_DATA:
                    if incoming is None:
                        continue
                    part_bytes += len(value)
                    if self.max_instance_bytes is not None and part_bytes > self.max_instance_bytes:
                        raise _RequestTooLarge(f"an instance exceeds the limit of {self.max_instance_bytes} bytes")
                    try:
                        await incoming.feed(value)
                    except StoreFailure as failure:
                        incoming.abort()
                        incoming = None
                        order.append(_failed(failure))
                elif kind == PART_BEGIN:
                    begin_part(value)
                elif kind == PART_END:
                    if incoming is not None:
                        fut = loop.run_in_executor(self.executor, _commit, incoming, study_uid)
                        incoming = None
                        commits.append(fut)
                        order.append(fut)
                        # Bound the parts of one request held in flight (disk, threads).
                        pending = [c for c in commits if not c.done()]
                        if len(pending) >= self.commits_in_flight:
                            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                # CLOSE needs nothing: finish() checks that it came.

        # One timer for the whole body, armed while we wait for the client and disarmed while
        # we work (wait_for() per chunk would create a Task per chunk).
        stall = asyncio.timeout(None)
        try:
            async with stall:
                while True:
                    if self.body_timeout is not None:
                        stall.reschedule(loop.time() + self.body_timeout)
                    message = await receive()
                    stall.reschedule(None)
                    if message["type"] == "http.disconnect":
                        raise _ClientGone
                    chunk = message.get("body", b"")
                    request_bytes += len(chunk)
                    if self.max_request_bytes is not None and request_bytes > self.max_request_bytes:
                        raise _RequestTooLarge(f"request body exceeds the limit of {self.max_request_bytes} bytes")
                    try:
                        events = scanner.feed(chunk)
                    except ParseError as exc:
                        # Parts completed in this chunk before the bad bytes are whole: commit them
                        # before the error ends the body (PS3.18 §10.5.3: stored instances are reported).
                        await handle(exc.events)
                        raise
                    await handle(events)
                    if not message.get("more_body", False):
                        break
            scanner.finish()
        except TimeoutError:
            if not stall.expired():
                raise
            error = (408, f"Request timeout: no body data for {self.body_timeout:g} s")
        except LimitExceeded as exc:  # too many parts or a header block too long: 413 (PS3.18 §8.5)
            error = (413, f"Multipart body exceeds a limit: {exc}")
        except ParseError as exc:
            error = (400, f"Malformed multipart body: {exc}")
        except _RequestTooLarge as exc:
            error = (413, str(exc).capitalize())
        finally:
            if incoming is not None:
                incoming.abort()
            # Every started commit finishes either way: an instance whose bytes all arrived is
            # complete, and abandoning its thread would leave the store half done.
            if commits:
                await asyncio.wait(commits)

        response = StoreResponse(study_retrieve_url=None)
        studies = set()
        for entry in order:
            if isinstance(entry, FailedInstance):
                response.failed.append(entry)
                continue
            outcome = entry.result()
            if isinstance(outcome, StoreFailure):
                response.failed.append(_failed(outcome))
                continue
            rec = outcome.record
            studies.add(rec.study_uid)
            response.stored.append(StoredInstance(
                sop_class_uid=rec.sop_class_uid,
                sop_instance_uid=rec.sop_instance_uid,
                retrieve_url=f"{base_url}/studies/{rec.study_uid}/series/{rec.series_uid}/instances/{rec.sop_instance_uid}",
                warning_reason=outcome.warning,
            ))
        response.other_failures.extend(other)
        if error is not None:
            if not response.stored:
                return error
            # Instances committed before the body went bad stay stored and are reported; the
            # rest of the body is one failure not tied to an instance (PS3.18 (0008,119A)).
            response.other_failures.append(FailedInstance(FailureReason.CANNOT_UNDERSTAND, comment=error[1]))
        if not response.stored and not response.failed and not response.other_failures:
            return (400, "The multipart body holds no parts")
        study = study_uid or (studies.pop() if len(studies) == 1 else None)
        if study:
            response.study_retrieve_url = f"{base_url}/studies/{study}"
        return response


def _commit(incoming, study_uid: str | None) -> StoreOutcome | StoreFailure:
    try:
        return incoming.commit(expected_study_uid=study_uid)
    except StoreFailure as failure:
        return failure
    except MemoryError:
        incoming.abort()
        return StoreFailure(FailureReason.OUT_OF_MEMORY, "out of memory while storing")
    except Exception:
        log.exception("unexpected failure committing an instance")
        incoming.abort()
        return StoreFailure(FailureReason.PROCESSING_FAILURE, "processing failure")


def _failed(failure: StoreFailure) -> FailedInstance:
    return FailedInstance(
        failure_reason=int(failure.status),
        sop_class_uid=failure.sop_class_uid,
        sop_instance_uid=failure.sop_instance_uid,
        comment=failure.comment,
    )


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        out[name.decode("latin-1").lower()] = value.decode("latin-1")
    return out


def _base_url(scope: Scope, headers: dict[str, str]) -> str:
    host = headers.get("host")
    if not host:
        server = scope.get("server") or ("localhost", None)
        host = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}"


async def _respond(send: Send, status: int, content_type: str, body: bytes, extra=()) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _plain(send: Send, status: int, text: str, extra=()) -> None:
    await _respond(send, status, "text/plain; charset=utf-8", (text + "\n").encode(), extra)
