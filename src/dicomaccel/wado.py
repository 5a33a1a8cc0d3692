"""WADO-RS (PS3.18 §10.4): the instances and frames behind the Retrieve URLs STOW-RS hands out.

- ``GET {base}/studies/{study}[/series/{series}[/instances/{sop}]]``: the instances, as
  ``multipart/related; type="application/dicom"``, one PS3.10 file per part, streamed from
  the archive (memory does not grow with the study): where the ASGI host offers the Zero
  Copy Send extension (``dicomaccel serve`` does) each file goes as one message, which the
  front end hands to ``os.sendfile``; elsewhere in 1 MiB reads. A response of parts all as
  stored has a Content-Length (the sizes are known before the first byte). The transfer syntax is
  the ``transfer-syntax`` parameter of the Accept ``type``: ``*`` sends each instance as
  stored; absent, the default is Explicit VR Little Endian (PS3.18 §8.7.3.5.2), and an
  instance stored otherwise is transcoded (decoded with the pylibjpeg plugins), or left out
  if it cannot be.
- ``GET .../instances/{sop}/frames/{list}``: the frames (1-based, comma-separated) straight
  from the frame index, no data set parse: native frames as ``application/octet-stream``
  parts, encapsulated ones in their codestream's media type with the stored transfer syntax
  (or ``application/octet-stream; transfer-syntax=*``). A frame number that is not a positive
  integer is 400; one beyond the last frame is 404.

- ``GET .../metadata`` (study, series, instance): the DICOM JSON Model (PS3.18 Annex F),
  or with an XML Accept the Native DICOM Model (PS3.19 §A.1) one instance per part; built
  an instance at a time (:mod:`.wado_metadata`, :mod:`.native_xml`), gzip-coded on request.
- ``GET .../instances/{sop}/bulkdata/{tag path}``: one value, from its byte range in the file
  (:mod:`.wado_bulkdata`), multipart or single part, with byte ranges.
- ``GET .../instances/{sop}/rendered`` and ``.../frames/{n}/rendered``: JPEG or PNG
  (:mod:`.wado_rendered`).

Every 200 carries ``ETag`` and ``Last-Modified`` (:func:`.wado_http.validators`) and a
matching ``If-None-Match`` / ``If-Modified-Since`` gets 304. Nothing found is 404; an Accept
that allows no form we produce is 406; a malformed parameter is 400, with a plain-text reason.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import mmap
import os
import re

from .archive import Archive, InstanceRecord
from .memory import close_map
from .retrieve.extraction import file_meta_bytes
from .retrieve.transcode import TranscodeError, transcode
from .syntaxes import EXPLICIT_VR_LE
from .urls import check_public_url, route_path
from .wado_bulkdata import locate, parse_tag_path, read_value
from .wado_http import (GzipSend, Refused, Request, boundary_for, not_modified, parse_range, part_head,
                        send_not_modified, text_response, validators)
from .wado_metadata import MetadataCache
from .wado_rendered import render, render_options

__all__ = ["create_wado_app", "FRAME_MEDIA"]

log = logging.getLogger("dicomaccel.wado")

_UID = r"([0-9][0-9.]{0,63})"
READ_CHUNK = 1 << 20
# Instances whose metadata one worker-thread call builds (fewer hand-offs, bounded memory).
METADATA_BATCH = 8
# Media types of encapsulated frames by transfer syntax (PS3.18 Table 8.7.3-2).
FRAME_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.5": "image/x-dicom-rle",
}
_TAIL = re.compile(r"^(?:/(metadata|rendered)|/frames/([^/]+)(/rendered)?|/bulkdata/(.+?))?/?$")


def create_wado_app(archive: Archive, base_path: str = "/dicomweb", fallback=None,
                    public_url: str | None = None):
    """The WADO-RS ASGI app over ``archive``; requests it does not serve go to ``fallback``
    (the STOW-RS app on the same paths), or get 404.

    ``base_path`` is below the ASGI ``root_path`` (a host framework's mount point);
    ``public_url``, when given, starts the BulkDataURIs of metadata instead of the request's
    scheme, Host and ``root_path`` (:mod:`dicomaccel.urls`)."""
    base = base_path.rstrip("/")
    public_url = check_public_url(public_url)
    cache = MetadataCache()
    route = re.compile(rf"^{re.escape(base)}/studies/{_UID}(?:/series/{_UID}(?:/instances/{_UID})?)?(/.*)?$")

    async def app(scope, receive, send):
        match = route.match(route_path(scope)) if scope["type"] == "http" else None
        tail = _TAIL.match(match.group(4) or "") if match is not None else None
        if tail is not None:
            resource, frames, frames_rendered, bulk = tail.groups()
            if match.group(3) is None and (resource == "rendered" or frames or bulk):
                tail = None  # frames, bulk data and rendered are resources of an instance
        if tail is None or scope.get("method") != "GET":
            if fallback is not None:
                await fallback(scope, receive, send)
            else:
                await text_response(send, 404, "Not found")
            return
        study, series, sop = match.group(1), match.group(2), match.group(3)
        request = Request(scope)
        try:
            if resource == "metadata":
                await _metadata(send, request, archive, cache, base, study, series, sop, public_url)
            elif resource == "rendered" or frames_rendered:
                await _rendered(send, request, archive, study, series, sop, frames)
            elif frames is not None:
                await _frames(send, request, archive, study, series, sop, frames)
            elif bulk is not None:
                await _bulkdata(send, request, archive, study, series, sop, bulk)
            else:
                await _instances(send, request, archive, study, series, sop)
        except Refused as refused:
            await text_response(send, refused.status, refused.text)

    return app


def _wanted_syntax(accept: str, media: str) -> str | None:
    """The transfer syntax an Accept header asks for ``media`` in a multipart response ("*"
    for as stored, the PS3.18 default when absent); None when it accepts no such form."""
    if not accept.strip():
        return EXPLICIT_VR_LE if media == "application/dicom" else "*"
    for item in accept.split(","):
        parts = [p.strip() for p in item.split(";")]
        kind = parts[0].lower()
        params = {k.strip().lower(): v.strip().strip('"') for k, _, v in (p.partition("=") for p in parts[1:])}
        if kind in ("*/*", "multipart/*") or (kind == "multipart/related" and params.get("type", media) in (media, "*/*")):
            return params.get("transfer-syntax", EXPLICIT_VR_LE if media == "application/dicom" else "*")
    return None


async def _instance(archive: Archive, study: str, series: str | None, sop: str) -> InstanceRecord:
    """The record of one instance, 404 unless it is in that study (and series). One indexed
    row: read inline from an embedded index, on a worker thread from a database server."""
    if archive.index.remote:
        record = await asyncio.get_running_loop().run_in_executor(None, archive.get, sop)
    else:
        record = archive.get(sop)
    if record is None or record.study_uid != study or (series is not None and record.series_uid != series):
        raise Refused(404, "No such instance")
    return record


async def _start(send, request: Request, records, variant: str, content_type: str, headers: list = (),
                 gzip: bool = False):
    """Send the 200 response head with validators; ``content_type`` may hold ``{boundary}``.
    Returns ``(send for the body, boundary)``, the send gzip-coding if asked; or answers 304
    and returns ``(None, None)``."""
    loop = asyncio.get_running_loop()
    v = await loop.run_in_executor(None, validators, records, variant)
    if not_modified(request, v):
        await send_not_modified(send, v)
        return None, None
    boundary = boundary_for(v)
    if gzip:
        send = GzipSend(send)
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", content_type.replace("{boundary}", boundary).encode()), *headers, *v.headers()]})
    return send, boundary


async def _records(archive: Archive, study, series, sop):
    """The matching records, 404 if none: one query for the study, run off the event loop (a
    study of thousands of rows takes milliseconds). All of them at once: a response's
    validators (ETag, Content-Length) read every record before the first byte."""
    records = await asyncio.get_running_loop().run_in_executor(None, functools.partial(
        archive.find, study_uids=[study], series_uids=None if series is None else [series],
        sop_instance_uids=None if sop is None else [sop]))
    if not records:
        raise Refused(404, "No such study, series or instance")
    return records


async def _instances(send, request: Request, archive: Archive, study, series, sop) -> None:
    wanted = _wanted_syntax(request.header("accept"), "application/dicom")
    if wanted is None:
        raise Refused(406, 'Not acceptable: instances are multipart/related; type="application/dicom"')
    records = await _records(archive, study, series, sop)
    loop = asyncio.get_running_loop()
    sizes: list[int] = []
    v = await loop.run_in_executor(None, validators, records, f"dicom:{wanted}", sizes)
    if not_modified(request, v):
        await send_not_modified(send, v)
        return
    boundary = boundary_for(v)
    heads: dict[str, bytes] = {}  # part head by transfer syntax, built once per response

    def head(syntax: str) -> bytes:
        h = heads.get(syntax)
        if h is None:
            h = heads[syntax] = part_head(boundary, f"application/dicom; transfer-syntax={syntax}")
        return h

    stored = [wanted in ("*", record.transfer_syntax_uid) for record in records]
    # RFC 2046 §5.1.1: each part after the first starts with the CRLF that ends the one before.
    end = f"\r\n--{boundary}--\r\n".encode()
    headers = [(b"content-type", f'multipart/related; type="application/dicom"; boundary={boundary}'.encode()),
               (b"vary", b"accept"), *v.headers()]
    if all(stored):
        # All as stored: the length is known (RFC 9112 §6.2), no chunk framing per part.
        length = sum(len(head(r.transfer_syntax_uid)) for r in records) + sum(sizes) + 2 * (len(records) - 1) + len(end)
        headers.append((b"content-length", str(length).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    zerocopy = "http.response.zerocopysend" in request.scope.get("extensions", {})
    files = _FileBatches(loop, records, sizes, stored) if zerocopy else None
    sep = b""
    try:
        for i, record in enumerate(records):
            if stored[i]:
                body = sep + head(record.transfer_syntax_uid)
                if files is not None:
                    f = await files.file(i)
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                    try:
                        await send({"type": "http.response.zerocopysend", "file": f, "offset": 0,
                                    "count": sizes[i], "more_body": True})
                    finally:
                        f.close()
                else:
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                    await _stream_file(send, loop, record.path, sizes[i])
            else:
                try:
                    data = await loop.run_in_executor(None, _transcoded, record, wanted)
                except (TranscodeError, OSError):
                    continue  # PS3.18 10.4.1.3: an instance we cannot send in that syntax is left out
                await send({"type": "http.response.body", "body": sep + head(wanted) + data, "more_body": True})
            sep = b"\r\n"
    finally:
        if files is not None:
            await files.close()
    await send({"type": "http.response.body", "body": end if sep else end[2:]})


async def _stream_file(send, loop, path: str, size: int) -> None:
    """``size`` bytes of the file at ``path`` as body messages of at most READ_CHUNK bytes,
    read in the default executor (an ASGI host without the zero-copy extension)."""
    with open(path, "rb") as f:
        left = size
        while left:
            chunk = await loop.run_in_executor(None, f.read, min(READ_CHUNK, left))
            if not chunk:
                raise OSError(f"{path} ended {left} bytes short of its size")
            left -= len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})


# Files of a study opened per executor call, and bytes: one thread hand-off per batch.
OPEN_BATCH = 32
OPEN_BATCH_BYTES = 32 << 20


class _FileBatches:
    """The stored files of a response, opened in the default executor a batch ahead of the
    one being sent (with ``POSIX_FADV_WILLNEED``, so reading from disk starts before sendfile
    needs the bytes); at most two batches of descriptors are open."""

    def __init__(self, loop, records, sizes: list[int], stored: list[bool]) -> None:
        self.loop = loop
        self.batches: list[list[int]] = []
        batch: list[int] = []
        nbytes = 0
        for i, ok in enumerate(stored):
            if not ok:
                continue
            if batch and (len(batch) >= OPEN_BATCH or nbytes + sizes[i] > OPEN_BATCH_BYTES):
                self.batches.append(batch)
                batch, nbytes = [], 0
            batch.append(i)
            nbytes += sizes[i]
        if batch:
            self.batches.append(batch)
        self.paths = {i: records[i].path for b in self.batches for i in b}
        self.next = 0  # the next batch to open
        self.open: dict[int, object] = {}
        self.pending: asyncio.Future | None = None
        self._ahead()

    def _ahead(self) -> None:
        if self.next < len(self.batches):
            paths = [(i, self.paths[i]) for i in self.batches[self.next]]
            self.next += 1
            self.pending = self.loop.run_in_executor(None, _open_files, paths)

    async def file(self, i: int):
        while i not in self.open:
            pending, self.pending = self.pending, None
            self.open.update(await pending)
            self._ahead()
        return self.open.pop(i)

    async def close(self) -> None:
        for f in self.open.values():
            f.close()
        self.open.clear()
        if self.pending is not None:
            try:
                for f in (await self.pending).values():
                    f.close()
            except OSError:
                pass
            self.pending = None


def _open_files(paths: list[tuple[int, str]]) -> dict:
    out = {}
    try:
        for i, path in paths:
            f = out[i] = open(path, "rb", buffering=0)
            try:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)
            except (AttributeError, OSError):
                pass
    except BaseException:
        for f in out.values():
            f.close()
        raise
    return out


def _transcoded(record: InstanceRecord, target: str) -> bytes:
    with open(record.path, "rb") as f:
        dataset = transcode(f.read(), target)
    return file_meta_bytes(record.sop_class_uid, record.sop_instance_uid, target) + dataset


def _frame_numbers(frame_list: str) -> list[int]:
    try:
        numbers = [int(x) for x in frame_list.split(",")]
    except ValueError:
        raise Refused(400, f"Bad frame list {frame_list[:40]!r}: comma-separated numbers from 1") from None
    if not numbers or min(numbers) < 1:
        raise Refused(400, "Frame numbers start at 1")
    return numbers


async def _frames(send, request: Request, archive: Archive, study, series, sop, frame_list: str) -> None:
    numbers = _frame_numbers(frame_list)
    record = await _instance(archive, study, series, sop)
    await _send_frames(send, request, record, numbers, f"frames:{frame_list}")


async def _send_frames(send, request: Request, record: InstanceRecord, numbers: list[int], variant: str) -> None:
    if record.frame_index is None:
        raise Refused(404, "No such instance with frames")
    index = record.frame_index
    beyond = [n for n in numbers if n > index.number_of_frames]
    if beyond:
        raise Refused(404, f"Frame {beyond[0]} beyond the last ({index.number_of_frames})")
    syntax = record.transfer_syntax_uid
    accept = request.header("accept")
    if index.encapsulated:
        media = FRAME_MEDIA.get(syntax, "application/octet-stream")
        if _wanted_syntax(accept, media) is None and _wanted_syntax(accept, "application/octet-stream") is None:
            raise Refused(406, f'Not acceptable: these frames are multipart/related; type="{media}"')
        part_type = f"{media}; transfer-syntax={syntax}"
    else:
        if _wanted_syntax(accept, "application/octet-stream") is None:
            raise Refused(406, 'Not acceptable: native frames are multipart/related; type="application/octet-stream"')
        media, part_type = "application/octet-stream", "application/octet-stream"
    # Streamed a frame at a time: memory holds one frame, whatever the list asks for.
    send, boundary = await _start(send, request, [record], variant,
                                  f'multipart/related; type="{media}"; boundary={{boundary}}', [(b"vary", b"accept")])
    if send is None:
        return
    loop = asyncio.get_running_loop()
    head = part_head(boundary, part_type)
    for n in numbers:
        frame = await loop.run_in_executor(None, _read_frame, record, n - 1)
        await send({"type": "http.response.body", "body": head + frame + b"\r\n", "more_body": True})
    await send({"type": "http.response.body", "body": f"--{boundary}--\r\n".encode()})


def _read_frame(record: InstanceRecord, k: int) -> bytes:
    """Frame ``k`` (0-based) of a stored instance, from its frame index: the file ranges
    that hold it, shifted by the frames kernel when frames are not byte aligned."""
    index = record.frame_index
    with open(record.path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        if not index.encapsulated and not index.byte_aligned:
            return bytes(index.native_frames(mm).frame(k))
        return b"".join(mm[start:end] for start, end in index.frame_ranges(k))
    finally:
        close_map(mm)


# --- metadata ------------------------------------------------------------------------------


def _metadata_form(request: Request) -> str:
    """"json" or "xml" from the Accept header (PS3.18 §8.7.3: application/dicom+json, or
    multipart/related; type="application/dicom+xml"); 406 otherwise."""
    for media_range in request.accept():
        kind = media_range.type
        if kind in ("application/dicom+json", "application/json", "application/*", "*/*"):
            return "json"
        if kind == "application/dicom+xml" or (
                kind in ("multipart/related", "multipart/*")
                and media_range.params.get("type", "").lower() == "application/dicom+xml"):
            return "xml"
    raise Refused(406, 'Not acceptable: metadata is application/dicom+json or '
                       'multipart/related; type="application/dicom+xml"')


def _metadata_batch(cache: MetadataCache, records: list, base_url: str) -> list[bytes | None]:
    out = []
    for record in records:
        url = f"{base_url}/studies/{record.study_uid}/series/{record.series_uid}/instances/{record.sop_instance_uid}"
        try:
            out.append(cache.get(record, url))
        except Exception:  # a stored file pydicom cannot read: left out, not the whole study
            log.warning("metadata of %s: cannot read %s", record.sop_instance_uid, record.path, exc_info=True)
            out.append(None)
    return out


async def _metadata(send, request: Request, archive: Archive, cache: MetadataCache, base: str, study, series,
                    sop, public_url: str | None = None) -> None:
    import json

    from .native_xml import to_native_xml

    form = _metadata_form(request)
    records = await _records(archive, study, series, sop)
    gzip = request.accepts_gzip()
    content_type = "application/dicom+json" if form == "json" else \
        'multipart/related; type="application/dicom+xml"; boundary={boundary}'
    send, boundary = await _start(send, request, records, f"metadata:{form}:{'gzip' if gzip else ''}", content_type,
                                  [(b"vary", b"accept, accept-encoding")], gzip=gzip)
    if send is None:
        return
    loop = asyncio.get_running_loop()
    base_url = request.base_url(public_url) + base
    first = True
    if form == "json":
        await send({"type": "http.response.body", "body": b"[", "more_body": True})
    for i in range(0, len(records), METADATA_BATCH):
        batch = await loop.run_in_executor(None, _metadata_batch, cache, records[i:i + METADATA_BATCH], base_url)
        for data in batch:
            if data is None:
                continue
            if form == "xml":
                data = part_head(boundary, "application/dicom+xml") + to_native_xml(json.loads(data)) + b"\r\n"
            elif not first:
                data = b"," + data
            first = False
            await send({"type": "http.response.body", "body": data, "more_body": True})
    end = b"]" if form == "json" else f"--{boundary}--\r\n".encode()
    await send({"type": "http.response.body", "body": end})


# --- bulk data -----------------------------------------------------------------------------


def _bulk_form(request: Request) -> str:
    """"multipart" (PS3.18's form for bulk data, the default) or "single" (an Accept of
    application/octet-stream itself); 406 otherwise."""
    for media_range in request.accept():
        kind = media_range.type
        if kind == "application/octet-stream":
            return "single"
        if kind in ("*/*", "multipart/*") or (
                kind == "multipart/related"
                and media_range.params.get("type", "application/octet-stream").lower() in ("application/octet-stream", "*/*")):
            return "multipart"
    raise Refused(406, 'Not acceptable: bulk data is multipart/related; type="application/octet-stream" '
                       "or application/octet-stream")


async def _bulkdata(send, request: Request, archive: Archive, study, series, sop, tag_path: str) -> None:
    path = parse_tag_path(tag_path)
    record = await _instance(archive, study, series, sop)
    if path.steps == (record.pixel_tag,) and record.pixel_length < 0 and record.frame_index is not None:
        # Encapsulated Pixel Data: its frames, each in its compressed media type.
        numbers = list(range(1, record.frame_index.number_of_frames + 1))
        await _send_frames(send, request, record, numbers, f"bulk:{path}")
        return
    form = _bulk_form(request)
    loop = asyncio.get_running_loop()
    located = await loop.run_in_executor(None, locate, record, path)
    size = located.length
    v = await loop.run_in_executor(None, validators, [record], f"bulk:{path}:{form}")
    if not_modified(request, v):
        await send_not_modified(send, v)
        return
    if_range = request.header("if-range").strip()
    span = parse_range(request.header("range"), size) if not if_range or if_range == v.etag else None
    start, end = span if span is not None else (0, size)
    status = 206 if span is not None else 200
    content_range = f"bytes {start}-{end - 1}/{size}" if span is not None else None
    headers = [*v.headers(), (b"vary", b"accept"), (b"accept-ranges", b"bytes")]
    if form == "single":
        head, tail = b"", b""
        headers.append((b"content-type", b"application/octet-stream"))
        if content_range:
            headers.append((b"content-range", content_range.encode()))
    else:
        boundary = boundary_for(v)
        extra = (f"Content-Range: {content_range}",) if content_range else ()
        head = part_head(boundary, "application/octet-stream", *extra)
        tail = f"\r\n--{boundary}--\r\n".encode()
        headers.append((b"content-type",
                        f'multipart/related; type="application/octet-stream"; boundary={boundary}'.encode()))
    headers.append((b"content-length", str(len(head) + end - start + len(tail)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if head:
        await send({"type": "http.response.body", "body": head, "more_body": True})
    pos = start
    while pos < end:
        chunk = await loop.run_in_executor(None, read_value, record, located, pos, min(end, pos + READ_CHUNK))
        if not chunk:
            break
        pos += len(chunk)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": tail})


# --- rendered ------------------------------------------------------------------------------


async def _rendered(send, request: Request, archive: Archive, study, series, sop, frame_list) -> None:
    options = render_options(request)
    number = 1
    if frame_list is not None:
        numbers = _frame_numbers(frame_list)
        if len(numbers) != 1:
            raise Refused(400, "Rendered frames: one frame number at a time")
        number = numbers[0]
    record = await _instance(archive, study, series, sop)
    if not record.pixel_tag:
        raise Refused(406, f"Not acceptable: the instance has no Pixel Data to render as {options.media_type}")
    if number > max(1, record.number_of_frames):
        raise Refused(404, f"Frame {number} beyond the last ({record.number_of_frames})")
    loop = asyncio.get_running_loop()
    v = await loop.run_in_executor(None, validators, [record], f"{options.key()}:{number}")
    if not_modified(request, v):
        await send_not_modified(send, v)
        return
    image = await loop.run_in_executor(None, render, record.path, number - 1, options)
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", options.media_type.encode()), (b"content-length", str(len(image)).encode()),
        (b"vary", b"accept"), *v.headers()]})
    await send({"type": "http.response.body", "body": image})
