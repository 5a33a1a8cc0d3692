"""Both services in one event loop: STOW-RS under uvicorn and the C-GET SCP, sharing one archive."""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from .archive import Archive
from .dimse import start_dimse_server
from .dimse.messages import C_GET_RQ
from .retrieve import GET_SOP_CLASSES, CGetSCP
from .stow import create_app

log = logging.getLogger("dicomaccel")

MAX_IDENTIFIER_SIZE = 1 << 20


@dataclass
class ServeConfig:
    data: Path = Path("dicomaccel-data")
    host: str = "127.0.0.1"
    http_port: int = 8080
    dimse_port: int = 11112
    ae_title: str = "DICOMACCEL"
    max_associations: int = 64
    require_called_ae: bool = False
    calling_ae_allow: tuple[str, ...] | None = None
    artim_timeout: float = 30.0
    idle_timeout: float = 300.0
    fsync: bool = True
    max_concurrent_stores: int | None = None
    store_queue_limit: int = 64
    store_queue_wait: float = 30.0
    max_request_bytes: int | None = None
    max_instance_bytes: int | None = None
    body_timeout: float = 60.0
    min_free_bytes: int = 256 * 2**20
    log_level: str = "info"


async def serve(config: ServeConfig) -> None:
    """Run until SIGINT/SIGTERM.

    In-flight stores get uvicorn's graceful-shutdown window (30 s) to finish; parts whose
    bytes all arrived are committed before the archive closes, the rest are discarded.
    """
    archive = Archive(config.data, fsync=config.fsync, min_free_bytes=config.min_free_bytes)
    app = create_app(
        archive,
        max_concurrent_stores=config.max_concurrent_stores,
        queue_limit=config.store_queue_limit,
        queue_wait=config.store_queue_wait,
        max_request_bytes=config.max_request_bytes,
        max_instance_bytes=config.max_instance_bytes,
        body_timeout=config.body_timeout,
    )
    http = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.http_port,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            log_level=config.log_level,
            access_log=False,
            timeout_graceful_shutdown=30,
        )
    )
    try:
        dimse = await start_dimse_server(
            config.host,
            config.dimse_port,
            ae_title=config.ae_title,
            handlers={C_GET_RQ: CGetSCP(archive)},
            supported_abstract_syntaxes=GET_SOP_CLASSES,
            max_associations=config.max_associations,
            require_called_ae=config.require_called_ae,
            calling_ae_allow=config.calling_ae_allow,
            artim_timeout=config.artim_timeout,
            idle_timeout=config.idle_timeout,
            # We only ever receive Identifiers and responses (no Storage SCP): a few KiB.
            max_dataset_size=MAX_IDENTIFIER_SIZE,
        )
        try:
            # Bound here, not by uvicorn, so a busy port is an OSError we report plainly.
            listener = socket.create_server((config.host, config.http_port))
            task = asyncio.create_task(http.serve(sockets=[listener]))
            while not http.started and not task.done():
                await asyncio.sleep(0.01)
            host, port = listener.getsockname()[:2]
            print(f"dicomaccel: STOW-RS on http://{host}:{port}/dicomweb/studies", flush=True)
            print(f"dicomaccel: C-GET SCP on dicom://{config.host}:{dimse.port} (AE {config.ae_title})", flush=True)
            print(f"dicomaccel: archive in {Path(config.data).resolve()}", flush=True)
            print("dicomaccel: ready", flush=True)
            # uvicorn owns SIGINT/SIGTERM: when it returns, stop the DIMSE side too.
            await task
        finally:
            dimse.close()
            await dimse.wait_closed()
    finally:
        app.close()
        archive.close()
