"""WADO-RS (PS3.18 §10.4): the instances and frames behind the Retrieve URLs STOW-RS hands out.

- ``GET {base}/studies/{study}[/series/{series}[/instances/{sop}]]``: the instances, as
  ``multipart/related; type="application/dicom"``, one PS3.10 file per part, streamed from
  the archive in 1 MiB reads (memory does not grow with the study). The transfer syntax is
  the ``transfer-syntax`` parameter of the Accept ``type``: ``*`` sends each instance as
  stored; absent, the default is Explicit VR Little Endian (PS3.18 §8.7.3.5.2), and an
  instance stored otherwise is transcoded (decoded with the pylibjpeg plugins), or left out
  if it cannot be.
- ``GET .../instances/{sop}/frames/{list}``: the frames (1-based, comma-separated) straight
  from the frame index, no data set parse: native frames as ``application/octet-stream``
  parts, encapsulated ones in their codestream's media type with the stored transfer syntax
  (or ``application/octet-stream; transfer-syntax=*``). A frame number that is not a positive
  integer is 400; one beyond the last frame is 404.

Nothing found is 404; an Accept that allows no multipart form we produce is 406.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import re

from .archive import Archive, InstanceRecord
from .retrieve.extraction import file_meta_bytes
from .retrieve.transcode import TranscodeError, transcode
from .syntaxes import EXPLICIT_VR_LE

__all__ = ["create_wado_app"]

_UID = r"([0-9][0-9.]{0,63})"
READ_CHUNK = 1 << 20
# Media types of encapsulated frames by transfer syntax (PS3.18 Table 8.7.3-2).
FRAME_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.5": "image/x-dicom-rle",
}


class _Refused(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


def create_wado_app(archive: Archive, base_path: str = "/dicomweb", fallback=None):
    """The WADO-RS ASGI app over ``archive``; requests it does not serve go to ``fallback``
    (the STOW-RS app on the same paths), or get 404."""
    base = base_path.rstrip("/")
    route = re.compile(rf"^{re.escape(base)}/studies/{_UID}(?:/series/{_UID}(?:/instances/{_UID}"
                       rf"(?:/frames/([^/]+))?)?)?/?$")

    async def app(scope, receive, send):
        match = route.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None or scope.get("method") != "GET":
            if fallback is not None:
                await fallback(scope, receive, send)
            else:
                await _text(send, 404, "Not found")
            return
        study, series, sop, frames = match.groups()
        accept = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"accept"), "")
        try:
            if frames is not None:
                await _frames(send, archive, sop, frames, accept)
            else:
                await _instances(send, archive, study, series, sop, accept)
        except _Refused as refused:
            await _text(send, refused.status, refused.text)

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


async def _instances(send, archive: Archive, study, series, sop, accept: str) -> None:
    wanted = _wanted_syntax(accept, "application/dicom")
    if wanted is None:
        raise _Refused(406, 'Not acceptable: instances are multipart/related; type="application/dicom"')
    # Lazy: each row becomes a record (its frame index decoded) only when its part is sent.
    records = archive.find(study_uids=[study], series_uids=None if series is None else [series],
                           sop_instance_uids=None if sop is None else [sop], lazy=True)
    if not records:
        raise _Refused(404, "No such study, series or instance")
    boundary = os.urandom(12).hex()
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", f'multipart/related; type="application/dicom"; boundary={boundary}'.encode())]})
    loop = asyncio.get_running_loop()
    for record in records:
        if wanted in ("*", record.transfer_syntax_uid):
            syntax = record.transfer_syntax_uid
            head = _part_head(boundary, f"application/dicom; transfer-syntax={syntax}")
            await send({"type": "http.response.body", "body": head, "more_body": True})
            with open(record.path, "rb") as f:
                while chunk := await loop.run_in_executor(None, f.read, READ_CHUNK):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        else:
            try:
                data = await loop.run_in_executor(None, _transcoded, record, wanted)
            except (TranscodeError, OSError):
                continue  # PS3.18 10.4.1.3: an instance we cannot send in that syntax is left out
            head = _part_head(boundary, f"application/dicom; transfer-syntax={wanted}")
            await send({"type": "http.response.body", "body": head + data, "more_body": True})
        await send({"type": "http.response.body", "body": b"\r\n", "more_body": True})
    await send({"type": "http.response.body", "body": f"--{boundary}--\r\n".encode()})


def _transcoded(record: InstanceRecord, target: str) -> bytes:
    with open(record.path, "rb") as f:
        dataset = transcode(f.read(), target)
    return file_meta_bytes(record.sop_class_uid, record.sop_instance_uid, target) + dataset


async def _frames(send, archive: Archive, sop: str, frame_list: str, accept: str) -> None:
    try:
        numbers = [int(x) for x in frame_list.split(",")]
    except ValueError:
        raise _Refused(400, f"Bad frame list {frame_list[:40]!r}: comma-separated numbers from 1") from None
    if not numbers or min(numbers) < 1:
        raise _Refused(400, "Frame numbers start at 1")
    record = archive.get(sop)
    if record is None or record.frame_index is None:
        raise _Refused(404, "No such instance with frames")
    index = record.frame_index
    beyond = [n for n in numbers if n > index.number_of_frames]
    if beyond:
        raise _Refused(404, f"Frame {beyond[0]} beyond the last ({index.number_of_frames})")
    syntax = record.transfer_syntax_uid
    if index.encapsulated:
        media = FRAME_MEDIA.get(syntax, "application/octet-stream")
        if _wanted_syntax(accept, media) is None and _wanted_syntax(accept, "application/octet-stream") is None:
            raise _Refused(406, f'Not acceptable: these frames are multipart/related; type="{media}"')
        part_type = f"{media}; transfer-syntax={syntax}"
    else:
        if _wanted_syntax(accept, "application/octet-stream") is None:
            raise _Refused(406, 'Not acceptable: native frames are multipart/related; type="application/octet-stream"')
        media, part_type = "application/octet-stream", "application/octet-stream"
    # Streamed a frame at a time: memory holds one frame, whatever the list asks for.
    boundary = os.urandom(12).hex()
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", f'multipart/related; type="{media}"; boundary={boundary}'.encode())]})
    loop = asyncio.get_running_loop()
    head = _part_head(boundary, part_type)
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
        try:
            mm.close()
        except BufferError:  # a view of the kernel's is still alive; the map goes with it
            pass


def _part_head(boundary: str, content_type: str) -> bytes:
    return f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()


async def _text(send, status: int, text: str) -> None:
    body = (text + "\n").encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
