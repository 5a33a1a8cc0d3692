"""QIDO-RS (PS3.18 §10.6): search for studies, series and instances over the archive's index.

- ``GET {base}/studies``, ``{base}/studies/{study}/series``,
  ``{base}/studies/{study}/series/{series}/instances``, ``{base}/studies/{study}/instances``,
  ``{base}/series``, ``{base}/instances``.
- Matching keys by keyword or tag (``PatientName=DOE*``, ``00100010=DOE*``), with the
  matching of PS3.4 C.2.2.2 (:mod:`dicomaccel.query.matching`); a key given more than once,
  or a UID value with commas, is a list. ``includefield`` (keywords or tags, comma-separated
  or repeated; ``all``), ``limit``, ``offset``, ``fuzzymatching`` (false: literal matching,
  which is all we do; true: a Warning says so, PS3.18 §8.3.4.1).
- ``application/dicom+json`` (PS3.18 Annex F) by default, or ``multipart/related;
  type="application/dicom+xml"`` (one Native DICOM Model part per match, PS3.19 A.1) when the
  Accept header asks for it.
- At most :data:`dicomaccel.config.QIDO_MAX_RESULTS` matches per response; when matches are
  left over (that maximum or the request's ``limit``) a ``Warning: 299`` header says so
  (PS3.18 §8.3.4.4). No match is 204 No Content (PS3.18 §8.3.4.4.1).
- A parameter we cannot use is 400 with a plain-text body that says which and why.

Other requests fall through to ``fallback`` (STOW-RS on the same paths).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from urllib.parse import parse_qsl

from .config import QIDO_MAX_RESULTS
from .native_xml import to_native_xml
from .query import attributes as attrs
from .query.attributes import BY_TAG, LEVELS, QIDO_DEFAULTS
from .query.dicom_json import has_non_ascii, to_json_model
from .query.engine import Query, search
from .query.matching import MatchError, condition

__all__ = ["create_qido_app"]

_UID = r"([0-9][0-9.]{0,63})"
JSON_MEDIA_TYPE = "application/dicom+json"
XML_MEDIA_TYPE = "application/dicom+xml"
_CONTROL = {"limit", "offset", "fuzzymatching", "includefield", "accept"}
_FUZZY_WARNING = ('299 dicomaccel: "The fuzzymatching parameter is not supported. '
                  'Only literal matching has been performed."')
_CUT_WARNING = ('299 dicomaccel: "The number of results exceeded the maximum supported by the '
                'server or the limit of the request. Additional results can be requested."')


class _BadRequest(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


def create_qido_app(archive, base_path: str = "/dicomweb", fallback=None):
    """The QIDO-RS ASGI app over ``archive`` (its ``index``); requests it does not serve go
    to ``fallback``, or get 404."""
    base = re.escape(base_path.rstrip("/"))
    routes = (
        (re.compile(rf"^{base}/studies/?$"), "STUDY"),
        (re.compile(rf"^{base}/studies/{_UID}/series/?$"), "SERIES"),
        (re.compile(rf"^{base}/studies/{_UID}/series/{_UID}/instances/?$"), "IMAGE"),
        (re.compile(rf"^{base}/studies/{_UID}/instances/?$"), "IMAGE"),
        (re.compile(rf"^{base}/series/?$"), "SERIES"),
        (re.compile(rf"^{base}/instances/?$"), "IMAGE"),
    )
    root = base_path.rstrip("/")

    async def app(scope, receive, send):
        route = None
        if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD"):
            path = scope.get("path", "")
            for pattern, level in routes:
                m = pattern.match(path)
                if m:
                    route = level, m.groups()
                    break
        if route is None:
            if fallback is not None:
                await fallback(scope, receive, send)
            else:
                await _plain(send, 404, "Not found")
            return
        level, uids = route
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        try:
            params = parse_qsl(scope.get("query_string", b"").decode("utf-8"), keep_blank_values=True,
                               strict_parsing=False)
        except UnicodeDecodeError:
            await _plain(send, 400, "The query string is not UTF-8 (PS3.18 §8.3.4).")
            return
        try:
            query, warnings, accept = _parse(level, uids, params, headers.get("accept", ""))
            media = _media_type(accept)
            # On the loop when the index answers quickly (Index.read_quickly), else in a worker thread.
            result = archive.index.read_quickly(search, archive.index, query)
            if result is None:
                result = await asyncio.get_running_loop().run_in_executor(None, search, archive.index, query)
        except _BadRequest as bad:
            await _plain(send, bad.status, bad.text)
            return
        if result.more:
            warnings.append(_CUT_WARNING)
        extra = [(b"warning", w.encode("latin-1")) for w in warnings]
        if not result.matches:
            await send({"type": "http.response.start", "status": 204, "headers": extra})
            await send({"type": "http.response.body", "body": b""})
            return
        url = _base_url(scope, headers) + root
        models = [to_json_model(_complete(m, level, url)) for m in result.matches]
        if media == XML_MEDIA_TYPE:
            body, content_type = _multipart_xml(models)
        else:
            body = json.dumps(models, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            content_type = JSON_MEDIA_TYPE.encode()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", content_type), (b"content-length", str(len(body)).encode()), *extra]})
        await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})

    return app


def _parse(level: str, uids: tuple, params: list[tuple[str, str]], accept: str):
    """The engine's :class:`Query`, the Warning values and the Accept to honour."""
    depth = LEVELS.index(level)
    # What a resource's matches describe (PS3.18 Tables 10.6.3-3 to -5): its own level,
    # plus the levels above it that its path does not fix.
    top = {"STUDY": "STUDY", "SERIES": "SERIES" if uids else "STUDY",
           "IMAGE": ("IMAGE" if len(uids) == 2 else "SERIES") if uids else "STUDY"}[level]
    shown = LEVELS[LEVELS.index(top):depth + 1]
    values: dict[int, list[str]] = {}
    includes: list[str] = []
    limit, offset, warnings = None, 0, []
    for key, value in params:
        if key == "limit" or key == "offset":
            if not re.fullmatch(r"[0-9]{1,9}", value) or (key == "limit" and int(value) == 0):
                raise _BadRequest(400, f"{key}={value[:32]!r}: {key} must be a "
                                       f"{'positive' if key == 'limit' else 'non-negative'} integer")
            if key == "limit":
                limit = int(value)
            else:
                offset = int(value)
        elif key == "fuzzymatching":
            if value not in ("true", "false"):
                raise _BadRequest(400, f"fuzzymatching={value[:32]!r}: use true or false")
            if value == "true":
                warnings.append(_FUZZY_WARNING)
        elif key == "includefield":
            includes += [v.strip() for v in value.split(",") if v.strip()]
        elif key == "accept":
            accept = value
        else:
            tag = attrs.lookup(key)
            a = BY_TAG.get(tag) if tag is not None else None
            if a is None:
                raise _BadRequest(400, f"{key[:64]!r} is not an attribute this server can match on "
                                       f"(keywords or tags of PS3.18 Table 10.6.1-5)")
            if LEVELS.index(a.level) > depth:
                raise _BadRequest(400, f"{a.keyword} is a {a.level.lower()}-level attribute; a "
                                       f"{level.lower()}-level search cannot match on it")
            parts = value.split(",") if a.vr == "UI" or a.keyword == "ModalitiesInStudy" else [value]
            values.setdefault(tag, []).extend(parts)
    # The path's UIDs are matching keys too (PS3.18 §10.6.1.2).
    for uid, tag in zip(uids, (attrs.UNIQUE_KEYS["STUDY"], attrs.UNIQUE_KEYS["SERIES"])):
        values.setdefault(tag, []).append(uid)
    conditions = []
    for tag, vs in values.items():
        try:
            c = condition(BY_TAG[tag], vs)
        except MatchError as exc:
            raise _BadRequest(400, str(exc)) from None
        if c is not None and BY_TAG[tag].matching:
            conditions.append(c)
    returns = [t for lvl in shown for t in QIDO_DEFAULTS.get(lvl if lvl != "PATIENT" else "STUDY", ())]
    for key in includes:
        if key == "all":
            returns += [a.tag for a in attrs.ATTRIBUTES if LEVELS.index(a.level) <= depth]
            continue
        tag = attrs.lookup(key)
        if tag is None or attrs.keyword_vr(tag) is None:
            raise _BadRequest(400, f"includefield={key[:64]!r}: not an attribute this server returns")
        returns.append(tag)
    returns += list(values)
    # The UIDs the Retrieve URLs are made of.
    returns += [attrs.UNIQUE_KEYS[lvl] for lvl in ("STUDY", "SERIES", "IMAGE")[:depth]]
    limit = QIDO_MAX_RESULTS if limit is None else min(limit, QIDO_MAX_RESULTS)
    returns = tuple(dict.fromkeys(returns))
    return Query(level, tuple(conditions), returns, limit, offset), warnings, accept


def _complete(match: dict, level: str, url: str) -> dict:
    """The keys the engine does not know: Retrieve URL, Instance Availability, Specific
    Character Set (the JSON is UTF-8: ISO_IR 192 when a value needs it)."""
    study = match.get(attrs.UNIQUE_KEYS["STUDY"])
    retrieve = f"{url}/studies/{study}"
    if level != "STUDY":
        retrieve += f"/series/{match.get(attrs.UNIQUE_KEYS['SERIES'])}"
    if level == "IMAGE":
        retrieve += f"/instances/{match.get(attrs.UNIQUE_KEYS['IMAGE'])}"
    if has_non_ascii(match):
        match[attrs.SPECIFIC_CHARACTER_SET] = "ISO_IR 192"
    match[attrs.RETRIEVE_URL] = retrieve
    match[attrs.INSTANCE_AVAILABILITY] = "ONLINE"
    return match


def _media_type(accept: str) -> str:
    """JSON unless the Accept header asks for multipart XML (PS3.18 §10.6.3.1); 406 if it
    allows neither."""
    if not accept.strip():
        return JSON_MEDIA_TYPE
    for item in accept.split(","):
        media = item.split(";")[0].strip().lower()
        if media in (JSON_MEDIA_TYPE, "application/json", "*/*", "application/*"):
            return JSON_MEDIA_TYPE
        if media == "multipart/related" and "dicom+xml" in item.lower():
            return XML_MEDIA_TYPE
    raise _BadRequest(406, "QIDO-RS answers application/dicom+json or "
                           'multipart/related; type="application/dicom+xml"')


def _multipart_xml(models: list[dict]) -> tuple[bytes, bytes]:
    boundary = os.urandom(12).hex()
    parts = []
    for model in models:
        parts.append(f"--{boundary}\r\nContent-Type: {XML_MEDIA_TYPE}\r\n\r\n".encode())
        parts.append(to_native_xml(model))
        parts.append(b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    content_type = f'multipart/related; type="{XML_MEDIA_TYPE}"; boundary={boundary}'
    return b"".join(parts), content_type.encode()


def _base_url(scope, headers: dict[str, str]) -> str:
    host = headers.get("host")
    if not host:
        server = scope.get("server") or ("localhost", None)
        host = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}"


async def _plain(send, status: int, text: str) -> None:
    body = (text + "\n").encode("utf-8")
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
