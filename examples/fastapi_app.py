"""A FastAPI application with dicomaccel mounted: STOW-RS alone at ``/stow`` (``create_app``)
and all DICOMweb services at ``/dicomweb`` (``create_dicomweb_app``).

FastAPI's own routes keep their dependencies (here an API key), its middleware (CORS) wraps
the mounted apps too, and its lifespan closes the archive::

    pip install dicomaccel fastapi uvicorn
    DICOM_DATA=/tmp/dicom uvicorn examples.fastapi_app:app --port 8000
    # STOW-RS only:  POST http://127.0.0.1:8000/stow/studies
    # DICOMweb:      http://127.0.0.1:8000/dicomweb/studies...
"""

from __future__ import annotations

import contextlib
import os

from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.middleware.cors import CORSMiddleware

from dicomaccel.archive import Archive
from dicomaccel.integrations.asgi import create_dicomweb_app
from dicomaccel.stow import create_app


def build_app(data: str, *, api_key: str | None = None, public_url: str | None = None) -> FastAPI:
    archive = Archive(data)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        archive.close()

    def check_key(x_api_key: str | None = Header(default=None)) -> None:
        if api_key is not None and x_api_key != api_key:
            raise HTTPException(status_code=401, detail="bad API key")

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(CORSMiddleware, allow_origins=["https://viewer.example"], allow_methods=["*"],
                       allow_headers=["*"], expose_headers=["*"])

    @app.get("/patients/{patient_id}/instances", dependencies=[Depends(check_key)])
    def instances(patient_id: str) -> list[str]:
        return [r.sop_instance_uid for r in archive.find(patient_id=patient_id)]

    # STOW-RS alone: base_path="" so it answers {mount}/studies; its Retrieve URLs carry the
    # mount prefix (root_path) or public_url.
    app.mount("/stow", create_app(archive, base_path="", public_url=public_url,
                                  max_concurrent_stores=8))
    app.mount("/dicomweb", create_dicomweb_app(archive, public_url=public_url))
    return app


def __getattr__(name: str):
    if name == "app":  # built on first access (PEP 562): see examples/starlette_app.py
        globals()["app"] = build_app(os.environ.get("DICOM_DATA", "dicom-data"),
                                     api_key=os.environ.get("DICOM_API_KEY"),
                                     public_url=os.environ.get("DICOM_PUBLIC_URL"))
        return globals()["app"]
    raise AttributeError(name)
