"""The DICOMweb services as one ASGI app, to mount in another framework.

::

    from starlette.applications import Starlette
    from dicomaccel.archive import Archive
    from dicomaccel.integrations.asgi import create_dicomweb_app

    archive = Archive("/var/lib/dicom")
    app = Starlette(...)                                  # the host's routes, middleware, lifespan
    app.mount("/dicomweb", create_dicomweb_app(archive))  # WADO-RS, QIDO-RS, STOW-RS

Requests go to WADO-RS, then QIDO-RS, then STOW-RS, as in ``dicomaccel serve``. Paths are
matched below the mount point (ASGI ``root_path``), and the URLs in responses (STOW-RS and
QIDO-RS Retrieve URLs, WADO-RS BulkDataURIs) carry it, or ``public_url`` when given
(:mod:`dicomaccel.urls`). The host framework keeps its middleware (authentication, CORS) in
front and its own lifespan: the app needs no start-up or shut-down of its own; close the
archive in the host's lifespan.
"""

from __future__ import annotations

from ..archive import Archive
from ..qido import create_qido_app
from ..stow import create_app
from ..urls import check_public_url, presented_at
from ..wado import create_wado_app

__all__ = ["create_dicomweb_app"]


def create_dicomweb_app(archive: Archive, *, base_path: str = "", public_url: str | None = None,
                        **stow_options):
    """WADO-RS, QIDO-RS and STOW-RS over ``archive`` as one ASGI app.

    Parameters
    ----------
    archive : Archive
    base_path : str
        Path of the services below the mount point: ``""`` (default) serves
        ``{mount}/studies...``.
    public_url : str, optional
        The URL clients reach the mount point at (e.g. ``https://pacs.example.org/dicomweb``),
        written into responses instead of the request's scheme, Host and ``root_path``.
    **stow_options
        Further keyword arguments of :func:`dicomaccel.stow.create_app` (store limits).
    """
    public_url = check_public_url(public_url)
    stow = create_app(archive, base_path=base_path, public_url=public_url, **stow_options)
    # QIDO-RS routes on scope["path"] and builds URLs from the request: presented_at gives it
    # the path below the mount point, and the public URL as the request's address.
    qido = presented_at(create_qido_app(archive, base_path=base_path, fallback=stow), public_url)
    return create_wado_app(archive, base_path=base_path, fallback=qido, public_url=public_url)
