"""Memory under a huge STOW-RS upload: one native instance of about 2 GB, streamed.

    python -m benchmarks.large_upload [--gib 2]

The body is generated on the fly (chunked transfer coding), so the client holds no copy.
Prints the server's RSS before, its peak (VmHWM, reset before the upload) and the rise.
"""

from __future__ import annotations

import argparse
import http.client
import io
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from benchmarks.ingest import BOUNDARY, CONTENT_TYPE, Server

ROWS = COLUMNS = 512
FRAME = ROWS * COLUMNS * 2
CHUNK = 1 << 20


def header(frames: int) -> bytes:
    """A PS3.10 file up to and including the Pixel Data element header."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID = "LARGE"
    ds.Modality = "OT"
    ds.NumberOfFrames = frames
    ds.Rows, ds.Columns, ds.SamplesPerPixel = ROWS, COLUMNS, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    # Pixel Data (7FE0,0010) OW, Explicit VR: tag, VR, 2 reserved bytes, 4-byte length.
    return buf.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, frames * FRAME)


def body(frames: int):
    yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + header(frames)
    zeros = bytes(CHUNK)
    left = frames * FRAME
    while left:
        n = min(CHUNK, left)
        yield zeros[:n]
        left -= n
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def rss_mib(pid: int, field: str) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--fsync", choices=("always", "never"), default="never")
    args = parser.parse_args()
    frames = int(args.gib * 2**30) // FRAME
    work = Path(tempfile.mkdtemp(prefix="dicomaccel-large-"))
    server = Server([sys.executable, "-m", "dicomaccel.cli", "serve", "--data", str(work / "data"),
                     "--http-port", "0", "--dimse-port", "0", "--fsync", args.fsync, "--log-level", "warning"],
                    r"STOW-RS on http://[\d.]+:(\d+)")
    try:
        time.sleep(0.5)
        before = rss_mib(server.proc.pid, "VmRSS")
        server.reset_peak()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
        start = time.perf_counter()
        conn.request("POST", "/dicomweb/studies", body=body(frames), headers={"Content-Type": CONTENT_TYPE},
                     encode_chunked=True)
        resp = conn.getresponse()
        resp.read()
        elapsed = time.perf_counter() - start
        peak = server.peak_rss_mib()
        size = frames * FRAME / 1e9
        print(f"upload of {size:.2f} GB: HTTP {resp.status} in {elapsed:.1f} s ({size / elapsed * 1e3:.0f} MB/s, "
              f"fsync {args.fsync})")
        print(f"server RSS before {before:.0f} MiB, peak during upload {peak:.0f} MiB, rise {peak - before:.0f} MiB")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
