"""DICOMweb STOW-RS (PS3.18 §10.5) as an ASGI application: ``create_app(archive, ...)``."""

from .app import StowApp, create_app

__all__ = ["StowApp", "create_app"]
