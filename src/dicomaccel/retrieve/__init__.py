"""C-GET SCP (PS3.4 Annex C, Y, Z) over the archive: ``CGetSCP(archive)`` handles C-GET-RQs."""

from .cget import CGetSCP
from .identifier import GET_SOP_CLASSES

__all__ = ["CGetSCP", "GET_SOP_CLASSES"]
