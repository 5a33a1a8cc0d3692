"""dicomaccel's fast paths inside an existing ``pynetdicom.AE``.

::

    from pynetdicom import AE, _config, evt
    from dicomaccel.archive import Archive
    from dicomaccel.integrations.pynetdicom import add_presentation_contexts, handlers

    # C-STORE data sets arrive in memory (fastest); for instances of hundreds of MB:
    # _config.STORE_RECV_CHUNKED_DATASET = True    # to a temporary file, flat RSS
    archive = Archive("/var/lib/dicom")
    ae = AE(ae_title="ROUTER")
    add_presentation_contexts(ae)                 # Get models + storage with role selection
    ae.start_server(("0.0.0.0", 11112), evt_handlers=handlers(archive))

- :class:`ArchiveGetHandler` (EVT_C_GET): C-GET at every level, FRAME included (PS3.4
  Annex Y), from a dicomaccel archive; :class:`StorageGetHandler` the same from the
  server's own storage (a callback maps a SOP Instance UID to a path or buffer).
- :class:`ArchiveStoreHandler` (EVT_C_STORE): received data sets streamed into the archive
  under its ingest policy; the C-STORE status is the policy's.
- :func:`add_presentation_contexts`: the contexts and SCP/SCU role selections they need.

Tested with the pynetdicom version installed with dicomaccel (3.0) and with 2.0.2, the
oldest that works: ``STORE_RECV_CHUNKED_DATASET`` and ``event.dataset_path`` came in 2.0.0,
but before 2.0.2 the file is not flushed when the C-STORE handler runs (pynetdicom issue 765).
The other hooks (generator C-GET handlers, ``event.is_cancelled``) are older.
"""

from .contexts import ALL_TRANSFER_SYNTAXES, add_presentation_contexts
from .get import ArchiveGetHandler, Locate, Match, StorageGetHandler
from .store import ArchiveStoreHandler

__all__ = [
    "ALL_TRANSFER_SYNTAXES",
    "ArchiveGetHandler",
    "ArchiveStoreHandler",
    "Locate",
    "Match",
    "StorageGetHandler",
    "add_presentation_contexts",
    "handlers",
]


def handlers(archive, *, get: bool = True, store: bool = True) -> list[tuple]:
    """``evt_handlers`` for ``AE.start_server``: EVT_C_GET and/or EVT_C_STORE over ``archive``."""
    from pynetdicom import evt

    out: list[tuple] = []
    if get:
        out.append((evt.EVT_C_GET, ArchiveGetHandler(archive)))
    if store:
        out.append((evt.EVT_C_STORE, ArchiveStoreHandler(archive)))
    return out
