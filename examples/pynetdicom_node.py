"""A pynetdicom AE with dicomaccel's handlers: C-STORE into a dicomaccel archive (under its
ingest policy, data sets never decoded) and C-GET from it at every level, FRAME included::

    python examples/pynetdicom_node.py /tmp/dicom 11112 [--chunked]
    storescu -aec ROUTER 127.0.0.1 11112 ct.dcm
    getscu -aec ROUTER -S -k QueryRetrieveLevel=STUDY -k StudyInstanceUID=... 127.0.0.1 11112
"""

from __future__ import annotations

import sys

from pynetdicom import AE, _config, evt

from dicomaccel.archive import Archive
from dicomaccel.integrations.pynetdicom import ArchiveGetHandler, ArchiveStoreHandler, add_presentation_contexts
from dicomaccel.policy.store import StorePolicy


def main(data: str, port: int, chunked: bool = False) -> None:
    # Received data sets stay in memory (pynetdicom's default, the fastest) unless --chunked:
    # pynetdicom then writes each to a temporary file first, so RSS stays flat for instances
    # of hundreds of MB. Either way the handler never decodes them.
    _config.STORE_RECV_CHUNKED_DATASET = chunked
    archive = Archive(data, policy=StorePolicy(validation="warn"))
    ae = AE(ae_title="ROUTER")
    add_presentation_contexts(ae)  # Get models + every Storage SOP Class, both roles
    handlers = [(evt.EVT_C_STORE, ArchiveStoreHandler(archive)),
                (evt.EVT_C_GET, ArchiveGetHandler(archive))]
    try:
        ae.start_server(("0.0.0.0", port), evt_handlers=handlers)  # blocks until Ctrl-C
    finally:
        archive.close()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--chunked"]
    main(args[0] if args else "dicom-data", int(args[1]) if len(args) > 1 else 11112, "--chunked" in sys.argv)
