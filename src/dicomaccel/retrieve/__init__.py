"""C-GET SCP (PS3.4 Annex C, Y, Z) over the archive: ``CGetSCP(archive)`` handles C-GET-RQs.

``extract_frames`` builds the new instance of a FRAME-level retrieve (PS3.4 Y.3.3) from a
stored file or archive record, for embedders that serve frames over other transports.
"""

from .cget import CGetSCP
from .extraction import ExtractedInstance, extract_frames
from .framelist import FrameExtractionError
from .identifier import GET_SOP_CLASSES

__all__ = ["GET_SOP_CLASSES", "CGetSCP", "ExtractedInstance", "FrameExtractionError", "extract_frames"]
