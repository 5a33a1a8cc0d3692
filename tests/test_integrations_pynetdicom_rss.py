"""A 1 GiB instance stored through a pynetdicom AE with ArchiveStoreHandler: the server's
resident set stays flat (the data set goes to pynetdicom's file, then into the archive in
1 MiB writes; PS3.7 9.3.1.1's data set is never held whole).

The AE runs in a process of its own (its peak RSS is read from /proc, proc(5)); DCMTK storescu
sends a sparse file (a native multi-frame header, PS3.5 §7.1.2, then 1 GiB of zero frames),
so building it costs no disk; receiving it writes pynetdicom's temporary file and the
archive's file (2 GiB).
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomaccel.archive import Archive
from dicomaccel.testing import files as dicomgen
from dicomaccel.testing import memory_kib
from dicomaccel.testing.files import sop_of
from dicomaccel.testing.server import dcmtk_program

pytestmark = pytest.mark.timeout(180)

STORESCU = dcmtk_program("storescu")
FRAMES, ROWS, COLUMNS = 2048, 512, 512  # 16 bits: 1 GiB of Pixel Data
PIXELS = FRAMES * ROWS * COLUMNS * 2

SERVER = """
import sys, time
from pynetdicom import AE, _config, evt
from dicomaccel.archive import Archive
from dicomaccel.integrations.pynetdicom import ArchiveStoreHandler, add_presentation_contexts
_config.STORE_RECV_CHUNKED_DATASET = True
archive = Archive(sys.argv[1], fsync=False)
ae = AE(ae_title="ACCEL")
add_presentation_contexts(ae, get=False)
server = ae.start_server(("127.0.0.1", 0), block=False,
                         evt_handlers=[(evt.EVT_C_STORE, ArchiveStoreHandler(archive))])
print(server.server_address[1], flush=True)
while True:
    time.sleep(60)
"""


def sparse_instance(path: Path) -> str:
    """A native multi-frame file of FRAMES zero frames, written sparse; its SOP Instance UID."""
    ds = pydicom.dcmread(io.BytesIO(dicomgen.multiframe_instance(1, ROWS, COLUMNS)))
    ds.NumberOfFrames = FRAMES
    del ds.PixelData
    # Pixel Data (7FE0,0010) OW, Explicit VR Little Endian: 4-byte length after 2 reserved bytes.
    header = dicomgen.to_bytes(ds) + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, PIXELS)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + PIXELS)
    return str(ds.SOPInstanceUID)


@pytest.mark.skipif(STORESCU is None, reason="DCMTK storescu not installed")
def test_one_gib_instance_stores_flat_in_rss(tmp_path):
    free = min(shutil.disk_usage(tmp_path).free, shutil.disk_usage(tempfile.gettempdir()).free)
    if free < 3 * (PIXELS + (64 << 20)):
        pytest.skip(f"{free >> 20} MiB free: the test writes 2 GiB")
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(tmp_path / "data")], stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        port = proc.stdout.readline().strip()
        assert port.isdigit(), "server did not start"
        small = tmp_path / "small.dcm"
        small.write_bytes(dicomgen.ct_instance(generate_uid(), generate_uid(), 1, 64, 64))
        # One small store first, so that everything the store path imports is loaded.
        subprocess.run([STORESCU, "-aec", "ACCEL", "127.0.0.1", port, str(small)], check=True, timeout=60)
        big = tmp_path / "big.dcm"
        uid = sparse_instance(big)
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (proc(5))
        before = memory_kib(proc.pid, "VmRSS")
        subprocess.run([STORESCU, "-aec", "ACCEL", "127.0.0.1", port, str(big)], check=True, timeout=150)
        grown = memory_kib(proc.pid, "VmHWM") - before
    finally:
        proc.kill()
        proc.wait(30)
    big.unlink()
    with Archive(tmp_path / "data", fsync=False) as archive:
        record = archive.get(uid)
        assert record is not None and archive.get(sop_of(small.read_bytes())) is not None
        assert Path(record.path).stat().st_size >= PIXELS
        Path(record.path).unlink()  # 1 GiB: not kept until the temporary directory goes
    assert grown < 64 << 10, f"RSS grew by {grown >> 10} MiB while storing a {PIXELS >> 20} MiB instance"
