"""Native frame extraction: dicomaccel.frames against pydicom, measured in this run.

Workload: one 131 MB instance, 250 frames of 512 x 512 16-bit MONOCHROME2, written with pydicom
to a temporary file and memory-mapped. "frame N" is what FRAME-level retrieve and WADO frame
reads need: the bytes of one frame. Ours builds a NativeFrames once (the archive keeps the frame
geometry in its index) and takes a zero-copy view, or copies it out with ``bytes()``; pydicom's
``pixel_array(path, index=N)`` is the baseline. Timings are best-of-N with time.perf_counter.

    python -m benchmarks.ratios_frames
"""

from __future__ import annotations

import gc
import mmap
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pixel_array
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from benchmarks._timing import best, implementations

ROWS = COLUMNS = 512
FRAMES = 250  # 512 * 512 * 2 bytes * 250 = 131 072 000 bytes
INDEX = 137
GATHER = [3, 250 - 1, 17, 100, 101, 102, 200, 5, 64, 128]
TARGET = ">= 50x"
MF_GRAYSCALE_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"


def write_instance(path: Path) -> int:
    """Write the workload instance to `path`; return the Pixel Data value's file offset."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MF_GRAYSCALE_WORD_SC
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MF_GRAYSCALE_WORD_SC
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Rows = ROWS
    ds.Columns = COLUMNS
    ds.NumberOfFrames = FRAMES
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    # Distinct frames without spending time on random numbers.
    pixels = np.arange(ROWS * COLUMNS, dtype="<u2").reshape(1, ROWS, COLUMNS)
    ds.PixelData = (pixels + np.arange(FRAMES, dtype="<u2").reshape(FRAMES, 1, 1)).tobytes()
    ds.save_as(path, enforce_file_format=True)
    length = len(ds.PixelData)
    del ds, pixels
    # Pixel Data is the last element: its value ends the file, after a 12-byte explicit VR
    # header (PS3.5 §7.1.2: tag, "OW", 2 reserved bytes, 32-bit length).
    offset = path.stat().st_size - length
    with open(path, "rb") as fh:
        fh.seek(offset - 12)
        header = fh.read(12)
    if header != struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length):
        raise RuntimeError(f"unexpected Pixel Data header {header.hex()}")
    return offset


def open_frames(module, path: Path, offset: int):
    """Memory-map `path` and return ``(mmap, NativeFrames)`` for the workload geometry."""
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    nf = module.NativeFrames(
        mm, rows=ROWS, columns=COLUMNS, bits_allocated=16, number_of_frames=FRAMES,
        photometric_interpretation="MONOCHROME2", offset=offset,
    )
    return mm, nf


def measure() -> list[dict]:
    """Return one row per (benchmark, implementation): ours vs pydicom, ratio = baseline/ours."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "frames_250.dcm"
        offset = write_instance(path)
        gc.collect()

        base_frame = best(lambda: pixel_array(path, index=INDEX).tobytes(), number=1, repeat=15)
        base_gather = best(
            lambda: b"".join(pixel_array(path, index=i).tobytes() for i in GATHER),
            number=1, repeat=5,
        )
        baseline = "pydicom.pixels.pixel_array(path, index=N).tobytes()"

        for module in implementations("frames"):
            impl = module.__name__.rsplit("_", 1)[-1]
            mm, nf = open_frames(module, path, offset)
            assert bytes(nf.frame(INDEX)) == pixel_array(path, index=INDEX).tobytes()
            cases = [
                ("frame N, zero-copy view", best(lambda: nf.frame(INDEX), number=20000, repeat=7),
                 baseline, base_frame),
                ("frame N, copied to bytes",
                 best(lambda: bytes(nf.frame(INDEX)), number=200, repeat=7), baseline, base_frame),
                ("NativeFrames() + frame N view",
                 best(lambda: open_frames_view(module, mm, offset), number=5000, repeat=7),
                 baseline, base_frame),
                ("mmap + NativeFrames() + frame copy, new frame each call",
                 best(_cold_copy(module, path, offset), number=50, repeat=5),
                 baseline, base_frame),
                ("gather 10 frames",
                 best(lambda: nf.gather(GATHER), number=20, repeat=7),
                 "10 x pixel_array(index=i).tobytes(), joined", base_gather),
            ]
            for name, ours, base_name, base in cases:
                rows.append({
                    "name": f"frames: {name} ({impl})",
                    "ours_s": ours,
                    "baseline_name": base_name,
                    "baseline_s": base,
                    "ratio": base / ours,
                    "target": TARGET,
                })
            del nf
            mm.close()
    return rows


def _cold_copy(module, path: Path, offset: int) -> Callable[[], bytes]:
    """Per request from scratch: map the file, build the geometry, copy one frame out.

    The frame changes on every call, so page-table setup for the frame is included (a warm
    view of one frame would hide it); the file itself stays in the page cache, as it does for
    pydicom's reads.
    """
    frames = iter(range(10**9))

    def run() -> bytes:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            nf = module.NativeFrames(
                mm, rows=ROWS, columns=COLUMNS, bits_allocated=16, number_of_frames=FRAMES,
                photometric_interpretation="MONOCHROME2", offset=offset,
            )
            data = bytes(nf.frame(next(frames) * 37 % FRAMES))
            del nf
        return data

    return run


def open_frames_view(module, mm, offset: int):
    """Construct and take one frame view: the cost when geometry is not cached."""
    return module.NativeFrames(
        mm, rows=ROWS, columns=COLUMNS, bits_allocated=16, number_of_frames=FRAMES,
        photometric_interpretation="MONOCHROME2", offset=offset,
    ).frame(INDEX)


def main() -> None:
    for r in measure():
        print(
            f"{r['name']:<50} ours {r['ours_s'] * 1e6:10.2f} µs   {r['baseline_name']}: "
            f"{r['baseline_s'] * 1e6:10.2f} µs   ratio {r['ratio']:9.1f}x (target {r['target']})"
        )


if __name__ == "__main__":
    main()
