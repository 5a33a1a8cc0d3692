"""FRAME-level C-GET end to end: one or ten frames out of a big multi-frame instance.

    python -m benchmarks.frames_e2e [--runs 7] [--native-frames 250] [--j2k-frames 100]
                                    [--peers dicomaccel,dcmqrscp,pynetdicom] [--max-pdu 16384]

Sources (each in its own study, loaded into every peer):

- ``native``: ``--native-frames`` frames of 512x512x16 bit, Explicit VR Little Endian
  (``dicomgen.multiframe_instance``; 250 frames = 131 MB);
- ``j2k``: ``--j2k-frames`` frames of 512x512, 12 bits stored, JPEG 2000 lossless (textured
  images, so the codestreams are ~200 kB each, not incompressible noise).

Requests, each timed from ``send_c_get`` to the moment the SCU's C-STORE handler has the
whole data set (association set-up and release outside the timing):

- ``frame 1`` / ``frame 10``: Composite Instance Root GET, Query/Retrieve Level FRAME, Simple
  Frame List with the middle frame / ten frames spread over the instance;
- ``whole``: Study Root GET at IMAGE level of the same source instance.

Servers: ``dicomaccel serve`` (FRAME and whole); DCMTK ``dcmqrscp`` (whole; it has no FRAME
level), accepting JPEG 2000 so it can hold and send the j2k source; and the baseline in this
file (``python -m benchmarks.frames_e2e serve``): a pynetdicom EVT_C_GET handler that reads
the source with ``pydicom.dcmread``, builds the new instance with pydicom (the frames' bytes or
fragments, a new SOP Instance UID, Number of Frames, a Frame Extraction Sequence item) and
yields it. Receivers: a minimal SCU in this file speaking PS3.8 on a plain socket (see
:class:`RawSCU`: a pynetdicom SCU alone costs ~5 ms per C-GET) for every request, and DCMTK
``getscu`` for the whole native instance as a second view of the dcmqrscp baseline. Runs are
interleaved across servers; one warm-up request per cell is not counted. Figures: median
(min-max) ms, then the FRAME ratios and the targets (1 frame < 5 ms; >= 30x a whole-instance
C-GET from dcmqrscp; >= 10x the pynetdicom + pydicom handler).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pynetdicom
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (
    CompositeInstanceRootRetrieveGet,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)

from benchmarks.cget import GETSCU_LOG_CONFIG, Workload, get_with_getscu
from benchmarks.peers import (
    DcmqrscpPeer,
    DicomaccelPeer,
    Peer,
    PeerUnavailable,
    _Lines,
    dcmtk_env,
    dcmtk_program,
    free_port,
    install_signal_handlers,
    listening,
    spawn,
)

from dicomaccel.testing import files as dicomgen  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SCU_TITLE = "FRAMEBENCH"
TARGET_MS = 5.0  # one frame end to end
TARGETS = {"dcmqrscp": 30.0, "pynetdicom": 10.0}  # FRAME speed-up over these
TIMEOUT = 600


# ------------------------------------------------------------------------- sources


@dataclass
class Source:
    name: str
    path: Path
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    frames: int

    def workload(self) -> Workload:
        """The source as a one-instance study, for ``benchmarks.cget.get_with_getscu``."""
        return Workload(self.name, self.name, self.study_uid, [self.path], [self.sop_class_uid])


def _describe(name: str, path: Path) -> Source:
    ds = dcmread(path, stop_before_pixels=True)
    return Source(name, path, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID,
                  ds.file_meta.TransferSyntaxUID, int(ds.NumberOfFrames))


def make_sources(root: Path, native_frames: int, j2k_frames: int) -> list[Source]:
    root.mkdir(parents=True, exist_ok=True)
    native = root / "native.dcm"
    native.write_bytes(dicomgen.multiframe_instance(native_frames, 512, 512, study_uid=generate_uid()))
    ds = dicomgen.multiframe_dataset(j2k_frames, 8, 8)
    ds.Rows = ds.Columns = 512
    ds.BitsStored, ds.HighBit = 12, 11
    y, x = np.mgrid[0:512, 0:512]
    rng = np.random.default_rng(5)
    arr = np.stack([((x * 3 + y * 2 + 17 * k) % 4000 + rng.integers(0, 64, (512, 512))).astype(np.uint16)
                    for k in range(j2k_frames)])
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.compress(JPEG2000Lossless, arr, encoding_plugin="pylibjpeg")
    j2k = root / "j2k.dcm"
    j2k.write_bytes(dicomgen.to_bytes(ds, JPEG2000Lossless))
    return [_describe("native", native), _describe("j2k", j2k)]


def frame_list(source: Source, count: int) -> list[int]:
    """The middle frame, or ``count`` frames spread evenly over the instance."""
    if count == 1:
        return [(source.frames + 1) // 2]
    step = source.frames // count
    return [1 + i * step for i in range(count)]


# ------------------------------------------------------------------------- the pynetdicom + pydicom baseline


def build_index(root: Path) -> dict[str, Path]:
    """SOP Instance UID -> path for every DICOM file under ``root``."""
    index = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        index[str(ds.SOPInstanceUID)] = path
    return index


def new_instance(path: Path, frames: list[int]) -> Dataset:
    """The frames of ``path`` as a new instance, built the plain pydicom way."""
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


def handle_get(event, index: dict[str, Path]):
    """EVT_C_GET: FRAME level with a Simple Frame List, one sub-operation."""
    ident = event.identifier
    path = index.get(str(ident.get("SOPInstanceUID", "")))
    yield 1
    if path is None or ident.get("QueryRetrieveLevel") != "FRAME" or "SimpleFrameList" not in ident:
        yield 0xC000, None
        return
    value = ident.SimpleFrameList
    frames = [int(v) for v in (value if isinstance(value, (list, pydicom.multival.MultiValue)) else [value])]
    yield 0xFF00, new_instance(path, frames)


def serve(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.frames_e2e serve")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ae-title", default="PYNETDICOM_SCP")
    args = parser.parse_args(argv)
    index = build_index(args.dir)
    ae = AE(ae_title=args.ae_title)
    ae.add_supported_context(Verification)
    ae.add_supported_context(CompositeInstanceRootRetrieveGet)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    ae.dimse_timeout = ae.network_timeout = TIMEOUT

    def nodelay(event) -> None:  # as benchmarks.pynetdicom_scp does, for the same reason
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    server = ae.start_server(("127.0.0.1", args.port), block=False,
                             evt_handlers=[(evt.EVT_C_GET, handle_get, [index]), (evt.EVT_CONN_OPEN, nodelay)])
    print(f"frames-scp: C-GET SCP on dicom://127.0.0.1:{server.socket.getsockname()[1]}", flush=True)
    print("frames-scp: ready", flush=True)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()


class PynetdicomFramePeer(Peer):
    """The baseline above, in its own process (so it never shares the SCU's GIL)."""

    name = "pynetdicom"
    ae_title = "PYNETDICOM_SCP"

    def start(self, files: list[Path]) -> None:
        target = self.workdir / "files"
        target.mkdir(exist_ok=True)
        for i, path in enumerate(files):
            dest = target / f"{i:06d}-{path.name}"
            try:
                os.link(path, dest)
            except OSError:
                shutil.copyfile(path, dest)
        cmd = [sys.executable, "-m", "benchmarks.frames_e2e", "serve", "--dir", str(target),
               "--ae-title", self.ae_title]
        self.proc = spawn(cmd, log=self.log, env=dict(os.environ, PYTHONUNBUFFERED="1"), cwd=REPO)
        for line in _Lines(self.proc, self.log).until("frames-scp: ready", 60):
            if m := re.search(r"C-GET SCP on dicom://[\d.]+:(\d+)", line):
                self.port = int(m.group(1))
        if self.port is None:
            self.stop()
            raise PeerUnavailable(f"baseline FRAME SCP did not start: {self.log_tail(600)}")


class J2KDcmqrscpPeer(DcmqrscpPeer):
    """dcmqrscp accepting JPEG 2000 Lossless (``+xv``) as well as the uncompressed syntaxes."""

    def start(self, files: list[Path]) -> None:
        self.port = free_port()
        cfg = self._write_config(max(1024, 2 * sum(p.stat().st_size for p in files) >> 20))
        self.proc = spawn([dcmtk_program("dcmqrscp"), "+xv", "-c", str(cfg), str(self.port)], log=self.log,
                          env=dcmtk_env(), cwd=self.workdir)
        deadline = time.monotonic() + 30
        while not listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise PeerUnavailable(f"dcmqrscp did not listen on {self.port}: {self.log_tail(600)}")
            time.sleep(0.02)
        # storescu proposes uncompressed syntaxes unless told (-xv) to offer JPEG 2000 too.
        j2k = [p for p in files if dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEG2000Lossless]
        for group, option in (([p for p in files if p not in j2k], []), (j2k, ["-xv"])):
            if not group:
                continue
            done = subprocess.run(
                [dcmtk_program("storescu"), *option, "-aet", self.client_titles["storescu"], "-aec", self.ae_title,
                 "127.0.0.1", str(self.port), *map(str, group)],
                env=dcmtk_env(), capture_output=True, text=True, timeout=1800, check=False)
            if done.returncode != 0 or "E: " in done.stderr:
                raise RuntimeError(f"storescu into dcmqrscp failed ({done.returncode}): {done.stderr[-1000:]}")


PEERS = {"dicomaccel": DicomaccelPeer, "dcmqrscp": J2KDcmqrscpPeer, "pynetdicom": PynetdicomFramePeer}
# Which requests each server answers.
REQUESTS = {"dicomaccel": ("frame 1", "frame 10", "whole"), "dcmqrscp": ("whole",),
            "pynetdicom": ("frame 1", "frame 10")}


# ------------------------------------------------------------------------- the SCU

# A pynetdicom SCU costs ~5 ms per C-GET by itself (its reactor and DIMSE threads hand each
# message over queues polled at millisecond granularity), more than the whole FRAME retrieve
# we measure; so requests go out from this minimal SCU speaking PS3.8 on a plain socket.
APP_CONTEXT = b"1.2.840.10008.3.1.1.1"
IMPLEMENTATION_UID = b"1.2.826.0.1.3680043.9.7433.99"
GET_CONTEXT, STORE_CONTEXT = 1, 3


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BxH", item_type, len(value)) + value


def _uid(uid: str) -> bytes:
    raw = uid.encode()
    return raw + b"\0" * (len(raw) % 2)


def _associate_rq(called: str, calling: str, model: str, source: Source, max_pdu: int) -> bytes:
    # PS3.8 9.3.2; the SCP role for the storage SOP Class lets the C-GET send C-STORE-RQs to us (PS3.4 C.5.3).
    contexts = [(GET_CONTEXT, model, [ExplicitVRLittleEndian, "1.2.840.10008.1.2"]),
                (STORE_CONTEXT, source.sop_class_uid, [source.transfer_syntax])]
    variable = _item(0x10, APP_CONTEXT)
    for pcid, abstract, syntaxes in contexts:
        sub = _item(0x30, abstract.encode()) + b"".join(_item(0x40, ts.encode()) for ts in syntaxes)
        variable += _item(0x20, bytes((pcid, 0, 0, 0)) + sub)
    sop = source.sop_class_uid.encode()
    user = (_item(0x51, struct.pack(">L", max_pdu)) + _item(0x52, IMPLEMENTATION_UID)
            + _item(0x54, struct.pack(">H", len(sop)) + sop + b"\0\1"))
    variable += _item(0x50, user)
    fixed = struct.pack(">H", 1) + b"\0\0" + called.encode().ljust(16) + calling.encode().ljust(16) + bytes(32)
    return struct.pack(">BxL", 0x01, len(fixed) + len(variable)) + fixed + variable


def _accepted(ac: bytes) -> dict[int, str]:
    """Presentation context ID -> accepted transfer syntax, from an A-ASSOCIATE-AC body."""
    out = {}
    pos = 68
    while pos + 4 <= len(ac):
        item_type, length = struct.unpack_from(">BxH", ac, pos)
        if item_type == 0x21 and ac[pos + 6] == 0:
            ts = ac[pos + 8 + 4:pos + 4 + length].rstrip(b"\0").decode()
            out[ac[pos + 4]] = ts
        pos += 4 + length
    return out


def _encode(ds: Dataset, implicit: bool) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, implicit
    write_dataset(buf, ds)
    return buf.getvalue()


def _command(**fields) -> bytes:
    ds = Dataset()
    for keyword, value in fields.items():
        setattr(ds, keyword, value)
    body = _encode(ds, True)
    return struct.pack("<HHLL", 0, 0, 4, len(body)) + body


def _p_data(pcid: int, control: int, payload: bytes) -> bytes:
    return struct.pack(">BxLLBB", 0x04, len(payload) + 6, len(payload) + 2, pcid, control) + payload


class RawSCU:
    """One association to ``peer``: C-GET ``query`` and time the C-STORE sub-operation's arrival."""

    def __init__(self, peer: Peer, source: Source, model: str, max_pdu: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", peer.port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.sock.makefile("rb", buffering=1 << 20)
        self.sock.sendall(_associate_rq(peer.ae_title, SCU_TITLE, model, source, max_pdu))
        pdu_type, body = self._pdu()
        accepted = _accepted(body) if pdu_type == 0x02 else {}
        if GET_CONTEXT not in accepted or STORE_CONTEXT not in accepted:
            self.close()
            raise RuntimeError(f"{peer.name}: association not accepted as needed (PDU {pdu_type:#x}, {accepted})")
        self.model = model
        self.implicit = accepted[GET_CONTEXT] == "1.2.840.10008.1.2"

    def _pdu(self) -> tuple[int, bytes]:
        head = self.rfile.read(6)
        if len(head) < 6:
            raise RuntimeError("connection closed")
        pdu_type, length = struct.unpack(">BxL", head)
        return pdu_type, self.rfile.read(length)

    def get(self, query: Dataset) -> tuple[float, bytes, int]:
        """Send the C-GET-RQ; (seconds to the complete C-STORE data set, its first 64 KiB, final status)."""
        rq = _command(AffectedSOPClassUID=self.model, CommandField=0x0010, MessageID=1, Priority=0,
                      CommandDataSetType=0)
        message = _p_data(GET_CONTEXT, 0x03, rq) + _p_data(GET_CONTEXT, 0x02, _encode(query, self.implicit))
        arrived, head, status = None, b"", None
        command = b""
        start = time.perf_counter()
        self.sock.sendall(message)
        while status is None:
            pdu_type, body = self._pdu()
            if pdu_type != 0x04:
                raise RuntimeError(f"unexpected PDU {pdu_type:#x}")
            pos = 0
            while pos < len(body):
                length, pcid, control = struct.unpack_from(">LBB", body, pos)
                fragment = body[pos + 6:pos + 4 + length]
                pos += 4 + length
                if control & 0x01:
                    command += fragment
                    if not control & 0x02:
                        continue
                    cmd = read_dataset(DicomBytesIO(command), True, True)
                    command = b""
                    if cmd.CommandField == 0x8010 and cmd.Status not in (0xFF00, 0xFF01):
                        status = cmd.Status
                    elif cmd.CommandField == 0x0001:
                        store = cmd
                elif len(head) < 65536 or control & 0x02:
                    if len(head) < 65536:
                        head += fragment[:65536]
                    if control & 0x02 and status is None:
                        arrived = time.perf_counter()
                        rsp = _command(AffectedSOPClassUID=store.AffectedSOPClassUID, CommandField=0x8001,
                                       MessageIDBeingRespondedTo=store.MessageID, CommandDataSetType=0x0101,
                                       Status=0, AffectedSOPInstanceUID=store.AffectedSOPInstanceUID)
                        self.sock.sendall(_p_data(pcid, 0x03, rsp))
        if arrived is None:
            raise RuntimeError(f"no instance arrived; final status {status:#06x}")
        return arrived - start, head, status

    def close(self) -> None:
        try:
            self.sock.sendall(struct.pack(">BxL", 0x05, 4) + bytes(4))
            self._pdu()  # A-RELEASE-RP (or whatever comes first)
        except (OSError, RuntimeError):
            pass
        self.rfile.close()
        self.sock.close()


def get_with_raw_scu(peer: Peer, source: Source, request: str, max_pdu: int) -> float:
    """One C-GET of ``request``; seconds from the C-GET-RQ to the received instance (checked)."""
    frame = request.startswith("frame")
    model = CompositeInstanceRootRetrieveGet if frame else StudyRootQueryRetrieveInformationModelGet
    query = Dataset()
    frames = frame_list(source, int(request.split()[1])) if frame else []
    if frame:
        query.QueryRetrieveLevel = "FRAME"
        query.SOPInstanceUID = source.sop_instance_uid
        query.SimpleFrameList = frames
    else:
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = source.study_uid
        query.SeriesInstanceUID = source.series_uid
        query.SOPInstanceUID = source.sop_instance_uid
    scu = RawSCU(peer, source, model, max_pdu)
    try:
        seconds, head, status = scu.get(query)
    finally:
        scu.close()
    if status != 0x0000:
        raise RuntimeError(f"{peer.name} {request}: final status {status:#06x}")
    ds = read_dataset(DicomBytesIO(head), source.transfer_syntax == "1.2.840.10008.1.2", True,
                      stop_when=lambda tag, *_: tag > 0x00280008)
    expected = (len(frames), True) if frame else (source.frames, False)
    if (int(ds.NumberOfFrames), ds.SOPInstanceUID != source.sop_instance_uid) != expected:
        raise RuntimeError(f"{peer.name} {request}: wrong instance ({ds.NumberOfFrames} frames)")
    return seconds


# ------------------------------------------------------------------------- report


def cell(values: list[float]) -> str:
    ms = [v * 1e3 for v in values]
    med = statistics.median(ms)
    return f"{med:.3g} ({min(ms):.3g}-{max(ms):.3g})"


def report(results: dict, sources: list[Source], argv: list[str]) -> str:
    lines = ["| source | request | server | receiver | ms to the instance, median (min-max) |",
             "|---|---|---|---|---|"]
    for (src, request, server, receiver), runs in results.items():
        lines.append(f"| {src} | {request} | {server} | {receiver} | {cell(runs) if runs else 'failed'} |")

    def med(*key) -> float | None:
        runs = results.get(key)
        return statistics.median(runs) if runs else None

    header = ("| source | frames | dicomaccel FRAME ms | x dcmqrscp whole (getscu) | x dcmqrscp whole (raw) "
              "| x dicomaccel whole (raw) | x pynetdicom+pydicom FRAME (raw) |")
    lines += ["", header, "|---|---|---|---|---|---|---|"]
    verdicts = []
    for s in sources:
        for request in ("frame 1", "frame 10"):
            ours = med(s.name, request, "dicomaccel", "raw")
            if ours is None:
                continue
            ratios = []
            for key in ((s.name, "whole", "dcmqrscp", "getscu"), (s.name, "whole", "dcmqrscp", "raw"),
                        (s.name, "whole", "dicomaccel", "raw"), (s.name, request, "pynetdicom", "raw")):
                other = med(*key)
                ratios.append(f"{other / ours:.1f}x" if other else "-")
            lines.append(f"| {s.name} | {request.split()[1]} | {ours * 1e3:.2f} | " + " | ".join(ratios) + " |")
            if request == "frame 1":
                verdicts.append(f"- {s.name}, 1 frame: {ours * 1e3:.2f} ms (target < {TARGET_MS} ms: "
                                f"{'met' if ours * 1e3 < TARGET_MS else 'NOT met'})")
            for label, key in (("dcmqrscp", (s.name, "whole", "dcmqrscp", "getscu")),
                               ("dcmqrscp", (s.name, "whole", "dcmqrscp", "raw")),
                               ("pynetdicom", (s.name, request, "pynetdicom", "raw"))):
                other = med(*key)
                if other:
                    ratio = other / ours
                    what = f"{key[2]} {key[1]} ({key[3]})"
                    verdicts.append(f"- {s.name}, {request}: {ratio:.1f}x {what} (target >= {TARGETS[label]:g}x: "
                                    f"{'met' if ratio >= TARGETS[label] else 'NOT met'})")
    out = ["", *lines, "", "Targets:", *verdicts, "",
           f"command: {shlex.join(['python', '-m', 'benchmarks.frames_e2e', *argv])}"]
    return "\n".join(out)


# ------------------------------------------------------------------------- main


def _csv(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in PEERS]
    if unknown or not items:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(PEERS)} (got {text!r})")
    return items


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        serve(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="timed requests per cell (default 7)")
    parser.add_argument("--native-frames", type=int, default=250, help="frames of the native source (default 250)")
    parser.add_argument("--j2k-frames", type=int, default=100, help="frames of the JPEG 2000 source (default 100)")
    parser.add_argument("--peers", type=_csv, default=list(PEERS),
                        help="comma-separated servers (default: dicomaccel,dcmqrscp,pynetdicom)")
    parser.add_argument("--max-pdu", type=int, default=16384, help="receivers' Maximum Length (default 16384)")
    parser.add_argument("--workdir", type=Path, default=None, help="where sources and archives go")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.native_frames < 10 or args.j2k_frames < 10:
        parser.error("need --runs >= 1 and at least 10 frames per source")

    install_signal_handlers()
    getscu = dcmtk_program("getscu")
    print(f"{os.cpu_count()} CPUs; pydicom {pydicom.__version__}; pynetdicom {pynetdicom.__version__}; "
          f"getscu {'present' if getscu else 'absent'}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="dicomaccel-frames-", dir=args.workdir))
    started: dict[str, Peer] = {}
    try:
        t0 = time.perf_counter()
        sources = make_sources(work / "corpus", args.native_frames, args.j2k_frames)
        for s in sources:
            print(f"{s.name}: {s.frames} frames, {s.path.stat().st_size / 1e6:.1f} MB, {s.transfer_syntax}",
                  flush=True)
        print(f"sources written in {time.perf_counter() - t0:.1f} s", flush=True)
        for name in args.peers:
            cls = PEERS[name]
            reason = cls.unavailable()
            if reason:
                print(f"skipping {name}: {reason}", file=sys.stderr, flush=True)
                continue
            peer = cls(work / "peers")
            try:
                peer.start([s.path for s in sources])
            except (PeerUnavailable, RuntimeError) as exc:
                print(f"skipping {name}: {exc}", file=sys.stderr, flush=True)
                peer.stop()
                continue
            started[name] = peer
            print(f"{name}: listening on 127.0.0.1:{peer.port}", flush=True)

        log_config = work / "getscu-log.cfg"
        log_config.write_text(GETSCU_LOG_CONFIG)
        cells = []
        for s in sources:
            for request in ("frame 1", "frame 10", "whole"):
                for name in started:
                    if request in REQUESTS[name]:
                        cells.append((s.name, request, name, "raw"))
                        if request == "whole" and s.transfer_syntax == ExplicitVRLittleEndian and getscu:
                            cells.append((s.name, request, name, "getscu"))
        by_name = {s.name: s for s in sources}
        results: dict[tuple, list[float]] = {c: [] for c in cells}
        failed: set[tuple] = set()
        for i in range(args.runs + 1):  # run 0 warms every cell up and is not counted
            for c in cells:
                if c in failed:
                    continue
                src, request, name, receiver = c
                peer, source = started[name], by_name[src]
                try:
                    if receiver == "getscu":
                        seconds, _ = get_with_getscu(peer, source.workload(), args.max_pdu, log_config)
                    else:
                        seconds = get_with_raw_scu(peer, source, request, args.max_pdu)
                except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                    failed.add(c)
                    print(f"{c}: FAILED {' '.join(str(exc).split())[:300]}", flush=True)
                    continue
                if i:
                    results[c].append(seconds)
                    print(f"{src} {request} {name} ({receiver}) run {i}: {seconds * 1e3:.2f} ms", flush=True)
        print(report(results, sources, argv), flush=True)
        return 1 if failed else 0
    finally:
        for peer in started.values():
            peer.stop()
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
