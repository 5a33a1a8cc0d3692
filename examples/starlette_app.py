"""A Starlette application with dicomaccel's DICOMweb services mounted at ``/dicomweb``.

The host keeps its own routes, middleware (here: a bearer-token check in front of everything
and a header added to every response) and lifespan (which closes the archive)::

    pip install dicomaccel starlette uvicorn
    DICOM_DATA=/tmp/dicom DICOM_TOKEN=secret uvicorn examples.starlette_app:app --port 8000
    # STOW-RS:  POST http://127.0.0.1:8000/dicomweb/studies
    # WADO-RS:  GET  http://127.0.0.1:8000/dicomweb/studies/{study}
    # QIDO-RS:  GET  http://127.0.0.1:8000/dicomweb/studies?PatientID=...

``DICOM_PUBLIC_URL=https://pacs.example.org/dicomweb`` makes the Retrieve URLs and
BulkDataURIs start with that URL (behind a proxy) instead of the request's address.
"""

from __future__ import annotations

import contextlib
import os

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from dicomaccel.archive import Archive
from dicomaccel.integrations.asgi import create_dicomweb_app


class BearerToken:
    """Pure ASGI middleware (it does not buffer request bodies, so STOW-RS still streams):
    401 unless ``Authorization: Bearer <token>``, when a token is configured."""

    def __init__(self, app, token: str | None) -> None:
        self.app, self.expected = app, f"Bearer {token}".encode() if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.expected is not None \
                and dict(scope["headers"]).get(b"authorization") != self.expected:
            await JSONResponse({"detail": "not authenticated"}, 401)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class ServedBy:
    """Pure ASGI middleware adding ``X-Served-By`` to every response."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        async def send_with_header(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-served-by", b"host-app")]
            await send(message)

        await self.app(scope, receive, send_with_header)


def build_app(data: str, *, token: str | None = None, public_url: str | None = None) -> Starlette:
    archive = Archive(data)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        app.state.archive = archive  # the host's own routes may read the archive too
        yield
        archive.close()  # commits what is queued, then closes the index

    async def health(request):
        return JSONResponse({"instances": len(archive.find(lazy=True))})

    return Starlette(
        routes=[
            Route("/health", health),
            Mount("/dicomweb", create_dicomweb_app(archive, public_url=public_url)),
        ],
        middleware=[Middleware(ServedBy), Middleware(BearerToken, token=token)],
        lifespan=lifespan,
    )


def __getattr__(name: str):
    # ``uvicorn examples.starlette_app:app`` builds the app on first access (PEP 562), so
    # importing this module for build_app opens no archive.
    if name == "app":
        globals()["app"] = build_app(os.environ.get("DICOM_DATA", "dicom-data"),
                                     token=os.environ.get("DICOM_TOKEN"),
                                     public_url=os.environ.get("DICOM_PUBLIC_URL"))
        return globals()["app"]
    raise AttributeError(name)
