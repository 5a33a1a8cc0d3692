"""Corpora: the files every workload sends or retrieves, generated once and cached.

- CT: a series of ``n`` 512x512x16 bit instances (0.5 MB each), Explicit VR Little Endian;
- multi-frame: native 512x512x16 bit instances of 170..250 frames (89-131 MB);
- JPEG 2000: lossless multi-frame instances of a textured phantom (pylibjpeg-openjpeg);
- pydicom-data: the real files of pydicom's test data that pydicom reads and that have a SOP
  Class (used in place, ingest only).

The builders come from :mod:`dicomaccel.testing.files`, the same ones the test suite uses.
A corpus is written to a temporary directory and renamed into the cache when complete.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from dicomaccel.testing import files as dicomgen

MULTIFRAME_FRAMES = (170, 195, 220, 250)  # 512x512x16 bit: 89, 102, 115 and 131 MB
CACHE_VERSION = 1
FRAME_STEP = 10


@dataclass
class Corpus:
    """Files on disk that one workload sends or retrieves."""

    name: str
    label: str
    files: list[Path]
    sop_uids: list[str] = field(default_factory=list)
    sop_classes: list[str] = field(default_factory=list)
    transfer_syntax: str = ExplicitVRLittleEndian
    study_uid: str = ""
    series_uid: str = ""
    frames: list[int] = field(default_factory=list)  # Number of Frames per file, multi-frame only
    syntaxes: list[str] = field(default_factory=list)  # per file, when they differ

    def syntax_of(self, i: int) -> str:
        return self.syntaxes[i] if self.syntaxes else self.transfer_syntax

    @property
    def retrievable(self) -> bool:
        """One study of one series: what a STUDY or SERIES level C-GET fetches whole."""
        return bool(self.study_uid)

    @property
    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    def head(self, n: int = 1) -> "Corpus":
        """The first ``n`` instances, as a corpus of their own."""
        return replace(self, files=self.files[:n], sop_uids=self.sop_uids[:n], frames=self.frames[:n],
                       syntaxes=self.syntaxes[:n])

    def describe(self) -> dict:
        return {"name": self.name, "label": self.label, "instances": len(self.files), "bytes": self.nbytes,
                "transfer_syntax": self.transfer_syntax, "sop_classes": self.sop_classes}


def _cached(cache: Path, key: str, build) -> Corpus:
    """The corpus ``key`` from ``cache``, built by ``build(directory)`` into it on a miss."""
    where = cache / key
    manifest = where / "manifest.json"
    if not manifest.exists():
        tmp = Path(tempfile.mkdtemp(prefix=key + ".", dir=cache))
        try:
            meta = build(tmp)
            (tmp / "manifest.json").write_text(json.dumps(meta, indent=1))
            shutil.rmtree(where, ignore_errors=True)
            tmp.rename(where)  # readers only ever see a complete corpus
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    meta = json.loads(manifest.read_text())
    meta["files"] = [where / f for f in meta["files"]]
    return Corpus(**meta)


def _save(directory: Path, datasets, name: str, label: str, ts: str) -> dict:
    files, sops, classes, frames = [], [], set(), []
    study = series = ""
    for i, ds in enumerate(datasets):
        data = dicomgen.to_bytes(ds, ts) if ts == ExplicitVRLittleEndian else _encoded(ds)
        (directory / f"{i:05d}.dcm").write_bytes(data)
        files.append(f"{i:05d}.dcm")
        sops.append(str(ds.SOPInstanceUID))
        classes.add(str(ds.SOPClassUID))
        study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        if "NumberOfFrames" in ds:
            frames.append(int(ds.NumberOfFrames))
    return {"name": name, "label": label, "files": files, "sop_uids": sops, "sop_classes": sorted(classes),
            "transfer_syntax": ts, "study_uid": study, "series_uid": series, "frames": frames}


def _encoded(ds: Dataset) -> bytes:
    """PS3.10 bytes of an already compressed dataset (its file meta names the transfer syntax)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def ct_corpus(cache: Path, n: int) -> Corpus:
    def build(directory: Path) -> dict:
        study, series = generate_uid(), generate_uid()
        datasets = (dcmread(io.BytesIO(dicomgen.ct_instance(study, series, i + 1))) for i in range(n))
        return _save(directory, datasets, "ct", f"CT {n} x 512x512x16", ExplicitVRLittleEndian)
    return _cached(cache, f"ct-{n}-v{CACHE_VERSION}", build)


def multiframe_corpus(cache: Path, n: int) -> Corpus:
    frames = [MULTIFRAME_FRAMES[i % len(MULTIFRAME_FRAMES)] for i in range(n)]

    def build(directory: Path) -> dict:
        study, series = generate_uid(), generate_uid()

        def datasets():
            for count in frames:  # one at a time: up to 131 MB each
                ds = dicomgen.multiframe_dataset(count, 512, 512, study_uid=study)
                ds.SeriesInstanceUID = series
                yield ds
        label = f"multi-frame {n} x 512x512x16 ({min(frames)}-{max(frames)} frames)"
        return _save(directory, datasets(), "multiframe", label, ExplicitVRLittleEndian)
    return _cached(cache, f"multiframe-{n}-v{CACHE_VERSION}", build)


def phantom(frames: int, rows: int = 512, columns: int = 512, seed: int = 0) -> np.ndarray:
    """12-bit frames a lossless codec compresses as it would an image: smooth structure plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    body = 1024 + 1400 * np.exp(-((x - columns / 2) ** 2 + (y - rows / 2) ** 2) / (2 * (rows / 4) ** 2))
    out = np.empty((frames, rows, columns), np.uint16)
    for f in range(frames):
        ripple = 300 * np.sin((x + 7 * f) / 23.0) * np.cos((y - 5 * f) / 31.0)
        noise = rng.normal(0, 12, (rows, columns))
        out[f] = np.clip(body + ripple + noise, 0, 4095).astype(np.uint16)
    return out


def j2k_corpus(cache: Path, n: int, frames: int) -> Corpus:
    def build(directory: Path) -> dict:
        study, series = generate_uid(), generate_uid()

        def datasets():
            for i in range(n):
                ds = dicomgen.multiframe_dataset(1, 512, 512, study_uid=study)  # 1 frame: header only
                ds.SeriesInstanceUID = series
                ds.NumberOfFrames = frames
                ds.BitsStored, ds.HighBit = 12, 11
                ds.file_meta = pydicom.dataset.FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                ds.compress(JPEG2000Lossless, phantom(frames, seed=i), encoding_plugin="pylibjpeg")
                ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.file_meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
                yield ds
        return _save(directory, datasets(), "j2k", f"JPEG 2000 lossless {n} x {frames} frames 512x512x12",
                     JPEG2000Lossless)
    return _cached(cache, f"j2k-{n}x{frames}-v{CACHE_VERSION}", build)


def pydicom_data_corpus(limit: int) -> Corpus:
    """pydicom-data's test files that pydicom reads and that have a SOP Class (used in place)."""
    import warnings
    from pydicom.data import get_testdata_files

    files, classes, syntaxes = [], set(), []
    for name in sorted(get_testdata_files()):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = dcmread(name, stop_before_pixels=True)
            sop_class = ds.get("SOPClassUID") or ds.get("file_meta", {}).get("MediaStorageSOPClassUID")
            syntax = str(ds.file_meta.get("TransferSyntaxUID", ImplicitVRLittleEndian))
        except Exception:  # any file pydicom cannot read is out of the corpus by definition
            continue
        if sop_class:
            files.append(Path(name))
            classes.add(str(sop_class))
            syntaxes.append(syntax)
        if 0 <= limit <= len(files):
            break
    return Corpus("pydicom-data", f"pydicom-data {len(files)} real files", files,
                  sop_classes=sorted(classes), transfer_syntax=f"{len(set(syntaxes))} different",
                  syntaxes=syntaxes)



def large_corpus(cache: Path, size: int) -> Corpus:
    """One native multi-frame instance of about ``size`` bytes (512x512x16 bit frames of zeros),
    kept as a sparse file: its Pixel Data is a hole, so the corpus costs no disk space and
    reading it costs no disk I/O."""
    rows = columns = 512
    frame = rows * columns * 2
    frames = max(1, size // frame)

    def build(directory: Path) -> dict:
        ds = dicomgen.multiframe_dataset(1, rows, columns)  # header only: Pixel Data replaced below
        del ds.PixelData
        ds.NumberOfFrames = frames
        header = dicomgen.to_bytes(ds, ExplicitVRLittleEndian)
        # Pixel Data (7FE0,0010) OW in Explicit VR: tag, VR, 2 reserved bytes, 4-byte length
        # (PS3.5 7.1.2); its value is the hole that follows.
        header += struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, frames * frame)
        with open(directory / "large.dcm", "wb") as f:
            f.write(header)
            f.truncate(len(header) + frames * frame)
        return {"name": "large", "label": f"large: 1 x {frames} frames 512x512x16 "
                f"({(len(header) + frames * frame) / 1e9:.2f} GB)", "files": ["large.dcm"],
                "sop_uids": [str(ds.SOPInstanceUID)], "sop_classes": [str(ds.SOPClassUID)]}
    return _cached(cache, f"large-{frames}-v{CACHE_VERSION}", build)


def frame_lists(corpus: Corpus) -> list[list[int]]:
    """Every ``FRAME_STEP``-th frame (1-based, PS3.4 Y.6.1.1) of each instance."""
    return [list(range(1, n + 1, FRAME_STEP)) for n in corpus.frames]


def qido_corpus(cache: Path, n: int) -> Corpus:
    """``n`` small CT instances (4x4 pixels) carrying the attributes of
    :func:`dicomaccel.testing.query_index.synthetic_instances`: the same studies, patients and
    names as :func:`qido_index`'s rows, as files a peer can be loaded with (STOW-RS)."""
    from dicomaccel.testing.query_index import synthetic_instances

    def build(directory: Path) -> dict:
        template = dcmread(io.BytesIO(dicomgen.ct_instance(generate_uid(), generate_uid(), 1, 4, 4)))
        template.SpecificCharacterSet = "ISO_IR 192"  # some names are not ASCII
        files, sops = [], []
        for i, attrs in enumerate(synthetic_instances(n)):
            for keyword, value in attrs.items():
                setattr(template, keyword, value)
            name = f"{i:06d}.dcm"
            (directory / name).write_bytes(dicomgen.to_bytes(template, ExplicitVRLittleEndian))
            files.append(name)
            sops.append(attrs["SOPInstanceUID"])
        return {"name": f"qido-{len(files)}", "label": f"{len(files):,} small CT instances, {len(files) // 40:,} studies "
                f"(synthetic query corpus)", "files": files, "sop_uids": sops,
                "sop_classes": [str(template.SOPClassUID)]}
    return _cached(cache, f"qido-{n}-v{CACHE_VERSION}", build)


def qido_index(cache: Path, n: int) -> Path:
    """An ``index.sqlite3`` of ``n`` rows built directly (:func:`dicomaccel.testing.query_index.fill`),
    cached; ``dicomaccel serve --data`` on a directory holding a copy of it answers searches
    over them (the rows name files that do not exist: searches never read them)."""
    from dicomaccel.archive.index import SQLiteIndex
    from dicomaccel.testing.query_index import fill

    where = cache / f"qido-index-{n}-v{CACHE_VERSION}" / "index.sqlite3"
    if not where.exists():
        tmp = Path(tempfile.mkdtemp(prefix="qido-index.", dir=cache))
        try:
            index = SQLiteIndex(str(tmp / "index.sqlite3"), str(tmp), fsync=False)
            fill(index, str(tmp), n)
            index.close()  # the last connection's close checkpoints the WAL into the file
            where.parent.mkdir(exist_ok=True)
            (tmp / "index.sqlite3").rename(where)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return where
