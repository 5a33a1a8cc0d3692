"""FRAME-level C-GET of a large multi-frame instance: the server's resident set grows by a few
MiB, not by the size of the new instance.

PS3.4 Annex Y makes the new instance of frames of the stored one; retrieve/extraction.py
leaves those frames as views of the mapped file and retrieve/cget.py sends them as PDVs,
dropping the pages behind what it has sent (``_WindowedMap``). Holding the new instance
whole would cost its size twice (the frames copied, and the source pages they were copied
from); this test asks for 64 MiB of frames and allows :data:`BOUND`.

The server is a ``dicomaccel serve`` process of its own; its peak resident set (VmHWM,
reset through clear_refs, proc(5)) counts file-backed pages of the mapped instance too.
"""

from __future__ import annotations

import io
import struct

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import CompositeInstanceRootRetrieveGet

from dicomaccel.archive import Archive
from dicomaccel.testing import files as dicomgen
from dicomaccel.testing import memory_kib
from dicomaccel.testing.scu import assert_counts, c_get, identifier
from dicomaccel.testing.server import start_server

pytestmark = pytest.mark.timeout(180)

FRAMES, ROWS, COLUMNS = 256, 512, 512  # 16 bits: 512 KiB a frame, 128 MiB of Pixel Data
FRAME_BYTES = ROWS * COLUMNS * 2
WANTED = list(range(1, FRAMES + 1, 2))  # every other frame: 64 MiB
# What the server may grow by while sending them: the slack and release step behind the
# sent position (3 MiB), a large page-cache folio or two the faults map beyond it (2 MiB
# each), the transport's write buffer (1.25 MiB) and the new header. Measured: 5-8 MiB.
BOUND = 16 << 20


def store_large_instance(data) -> tuple[str, str]:
    """A native multi-frame instance of FRAMES zero frames, written into the archive at
    ``data`` a MiB at a time; (SOP Class UID, SOP Instance UID)."""
    ds = pydicom.dcmread(io.BytesIO(dicomgen.multiframe_instance(1, ROWS, COLUMNS)))
    ds.NumberOfFrames = FRAMES
    del ds.PixelData
    pixels = FRAMES * FRAME_BYTES
    # Pixel Data (7FE0,0010) OW, Explicit VR Little Endian: 4-byte length after 2 reserved bytes.
    header = dicomgen.to_bytes(ds) + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixels)
    zeros = bytes(1 << 20)
    with Archive(data, fsync=False, min_free_bytes=0) as archive:
        incoming = archive.begin()
        incoming.write(header)
        for _ in range(pixels // len(zeros)):
            incoming.write(zeros)
        incoming.commit()
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID)


def frame_get(port: int, sop_class: str, uid: str, frames: list[int]):
    ident = identifier("FRAME", SOPInstanceUID=uid)
    ident.SimpleFrameList = frames
    return c_get(port, CompositeInstanceRootRetrieveGet, ident, storage=[(sop_class, (ExplicitVRLittleEndian,))])


def test_frame_get_of_a_large_instance_keeps_rss_flat(tmp_path):
    data = tmp_path / "data"
    sop_class, uid = store_large_instance(data)
    server = start_server(data, "--workers", "1", "--fsync", "never")
    try:
        pid = server.process.pid
        # One small retrieve first: everything a FRAME retrieve imports and starts is there.
        assert_counts(frame_get(server.dimse_port, sop_class, uid, [1]).final, 1)
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS (proc(5))
        before = memory_kib(pid, "VmRSS")
        result = frame_get(server.dimse_port, sop_class, uid, WANTED)
        grown = (memory_kib(pid, "VmHWM") - before) << 10
    finally:
        server.stop()
    assert_counts(result.final, 1)
    (received,) = result.received
    new = received.dataset()
    assert int(new.NumberOfFrames) == len(WANTED)
    assert len(new.PixelData) == len(WANTED) * FRAME_BYTES
    assert grown < BOUND, (f"RSS grew by {grown >> 20} MiB sending {len(WANTED) * FRAME_BYTES >> 20} MiB "
                           f"of frames (bound {BOUND >> 20} MiB)")
