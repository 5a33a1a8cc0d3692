"""dicomaccel inside servers that are not ours.

- :mod:`dicomaccel.integrations.pynetdicom`: ``evt_handlers`` for an existing
  ``pynetdicom.AE``: C-GET (every level, FRAME included) from an archive or from the
  server's own storage, and C-STORE into an archive under our ingest policy.
- :mod:`dicomaccel.integrations.asgi`: the DICOMweb services (WADO-RS, QIDO-RS, STOW-RS) as
  one ASGI app to mount in Starlette, FastAPI or any ASGI framework.

docs/embedding.md has runnable examples of both.
"""
