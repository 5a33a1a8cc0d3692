"""The C-GET baseline: a pynetdicom SCP written the way a pynetdicom user would write one.

    python -m benchmarks.pynetdicom_scp --dir DIR [--port 11113] [--ae-title PYNETDICOM_SCP]

At start-up it reads the header of every file under DIR with pydicom and builds a dict from
Patient ID / Study / Series / SOP Instance UID to file paths. Its EVT_C_GET handler yields the
number of matches, then each matching dataset read with ``pydicom.dcmread``; pynetdicom encodes
it in the accepted transfer syntax and sends it as a C-STORE sub-operation on the same
association. FRAME level (PS3.4 Annex Y) on Composite Instance Root Retrieve – GET, with a
Simple Frame List only, is added the way a pynetdicom user would add it: read the source with
pydicom, build the new instance with pydicom (:func:`new_instance`). The one departure from
defaults: TCP_NODELAY on accepted sockets (see :func:`nodelay`). Binds 127.0.0.1 only. Prints ``pynetdicom-scp: C-GET SCP on dicom://127.0.0.1:PORT``
then ``pynetdicom-scp: ready``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
from collections import defaultdict
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (
    CompositeInstanceRootRetrieveGet,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)

# The unique key of each Query/Retrieve level (PS3.4 C.6.1.1 and C.6.2.1).
LEVEL_KEYS = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}

Index = dict[str, dict[str, list[Path]]]


def build_index(root: Path) -> Index:
    """Map each level's unique key value to the files holding it, from every DICOM file under ``root``.

    Parameters
    ----------
    root : pathlib.Path
        Directory searched recursively; files pydicom cannot read as DICOM are skipped.

    Returns
    -------
    dict
        ``index[level][value]`` is the list of paths, in sorted path order, for each level of
        :data:`LEVEL_KEYS`.
    """
    index: Index = {level: defaultdict(list) for level in LEVEL_KEYS}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=list(LEVEL_KEYS.values()))
        except InvalidDicomError:
            continue
        for level, keyword in LEVEL_KEYS.items():
            if keyword in ds:
                index[level][str(ds[keyword].value)].append(path)
    return index


def matches(index: Index, identifier) -> list[Path] | None:
    """Files matching a C-GET identifier by its level's unique key (single value or UID list).

    Parameters
    ----------
    index : dict
        From :func:`build_index`.
    identifier : pydicom.dataset.Dataset
        The C-GET-RQ identifier.

    Returns
    -------
    list of pathlib.Path or None
        None when the identifier has no known QueryRetrieveLevel or lacks that level's key.
    """
    level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    keyword = LEVEL_KEYS.get(level)
    if keyword is None or keyword not in identifier:
        return None
    value = identifier[keyword].value
    values = [value] if isinstance(value, str) else list(value)
    return [path for v in values for path in index[level].get(str(v), [])]


def new_instance(path: Path, frames: list[int]) -> Dataset:
    """The frames (1-based) of ``path`` as a new instance, built the plain pydicom way, with its
    Frame Extraction Sequence item (PS3.4 Y.3.3)."""
    ds = dcmread(path)
    n = int(ds.NumberOfFrames)
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        ds.PixelData = encapsulate([get_frame(ds.PixelData, f - 1, number_of_frames=n) for f in frames])
    else:
        size = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
        pixels = ds.PixelData
        ds.PixelData = b"".join(pixels[(f - 1) * size:f * size] for f in frames)
    item = Dataset()
    item.MultiFrameSourceSOPInstanceUID = ds.SOPInstanceUID
    item.SimpleFrameList = frames
    ds.FrameExtractionSequence = [item]
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.NumberOfFrames = len(frames)
    return ds


def handle_frames(ident, index: Index):
    """FRAME level: one sub-operation, the new instance of the Simple Frame List's frames."""
    found = index["IMAGE"].get(str(ident.get("SOPInstanceUID", "")))
    yield 1
    if not found or "SimpleFrameList" not in ident:
        yield 0xC000, None
        return
    value = ident.SimpleFrameList
    yield 0xFF00, new_instance(found[0], [int(value)] if isinstance(value, int) else [int(v) for v in value])


def handle_get(event, index: Index):
    """EVT_C_GET handler: the number of sub-operations, then one (status, dataset) per match."""
    if str(event.identifier.get("QueryRetrieveLevel", "")).strip().upper() == "FRAME":
        yield from handle_frames(event.identifier, index)
        return
    found = matches(index, event.identifier)
    if found is None:
        # 0xA900 Identifier Does Not Match SOP Class (PS3.4 C.4.3.1.3.1), after one announced
        # sub-operation because pynetdicom reads the count before any status.
        yield 1
        yield 0xA900, None
        return
    yield len(found)
    for path in found:
        if event.is_cancelled:
            yield 0xFE00, None
            return
        yield 0xFF00, dcmread(path)


def nodelay(event) -> None:
    """EVT_CONN_OPEN handler: turn Nagle's algorithm off on the accepted socket.

    pynetdicom writes each PDU on its own, so a C-STORE-RQ command PDU followed by data PDUs
    would wait for the peer's delayed ACK (about 40 ms on Linux) at every sub-operation. The
    DCMTK peers run with TCP_NODELAY=1 and asyncio sets TCP_NODELAY itself, so the baseline
    gets the same.
    """
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def make_ae(ae_title: str) -> AE:
    """An AE accepting Verification, Patient and Study Root GET, Composite Instance Root GET, and every storage SOP class with
    both roles, so the SCU's SCP role for the C-STORE sub-operations can be accepted (PS3.4 C.5.3)."""
    ae = AE(ae_title=ae_title)
    ae.add_supported_context(Verification)
    ae.add_supported_context(PatientRootQueryRetrieveInformationModelGet)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_supported_context(CompositeInstanceRootRetrieveGet)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, scu_role=True, scp_role=True)
    ae.maximum_associations = 16
    ae.dimse_timeout = ae.network_timeout = 600
    return ae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, required=True, help="directory of DICOM files to serve")
    parser.add_argument("--port", type=int, default=11113, help="port on 127.0.0.1 (0: ephemeral)")
    parser.add_argument("--ae-title", default="PYNETDICOM_SCP")
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING)  # pynetdicom's handler errors reach the log
    index = build_index(args.dir)
    ae = make_ae(args.ae_title)
    server = ae.start_server(("127.0.0.1", args.port), block=False,
                             evt_handlers=[(evt.EVT_C_GET, handle_get, [index]), (evt.EVT_CONN_OPEN, nodelay)])
    port = server.socket.getsockname()[1]
    print(f"pynetdicom-scp: C-GET SCP on dicom://127.0.0.1:{port}", flush=True)
    print(f"pynetdicom-scp: {sum(len(v) for v in index['IMAGE'].values())} instances", flush=True)
    print("pynetdicom-scp: ready", flush=True)
    serve_until_stopped(server)


def serve_until_stopped(server, *closing) -> None:
    """Wait for SIGINT or SIGTERM while ``server`` (a pynetdicom server: it runs on its own
    thread) serves; then shut it down and close ``closing``."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        for thing in closing:
            thing.close()


if __name__ == "__main__":
    main()
