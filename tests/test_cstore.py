"""C-STORE SCP (PS3.4 Annex B): DCMTK storescu and pynetdicom into a running server; statuses,
streaming, aborts, crash safety."""

from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.sop_class import SecondaryCaptureImageStorage, Verification

from dicomaccel.archive import Archive
from dicomaccel.testing import dcmtk_program, memory_kib, wait_until
from dicomaccel.testing import files as dicomgen
from dicomaccel.testing import pdu as rawpdu
from dicomaccel.testing.files import dataset_part, retag, sop_of
from dicomaccel.testing.scu import assert_counts, c_get, identifier

STORESCU = dcmtk_program("storescu")
needs_dcmtk = pytest.mark.skipif(STORESCU is None, reason="DCMTK storescu not installed")
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"


def _tmp_files(server) -> list[Path]:
    return [p for p in server.data.rglob("*") if p.is_file() and "tmp" in p.relative_to(server.data).parts]


def _stored(server, uid: str) -> bytes | None:
    archive = Archive(server.data, recover=False)  # the server recovered; it may be writing
    try:
        record = archive.get(uid)
        return None if record is None else Path(record.path).read_bytes()
    finally:
        archive.close()


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _ae(title: str = "STORETEST") -> AE:
    ae = AE(ae_title=title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


def pynetdicom_store(port: int, files: list[Path], syntaxes=(ExplicitVRLittleEndian,), title: str = "STORETEST"):
    """Each file over one association; the C-STORE-RSP status data sets."""
    ae = _ae(title)
    for cls in {pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID for f in files}:
        ae.add_requested_context(cls, list(syntaxes))
    assoc = ae.associate("127.0.0.1", port)
    assert assoc.is_established
    try:
        return [assoc.send_c_store(f) for f in files]
    finally:
        assoc.release()


# ---------------------------------------------------------------- DCMTK storescu


@needs_dcmtk
def test_storescu_directory_compressed_and_multiframe(server_factory, tmp_path):
    server = server_factory()
    study, series = generate_uid(), generate_uid()
    folder = tmp_path / "in"
    folder.mkdir()
    sent = {}
    for i in range(3):
        sent[f"ct{i}.dcm"] = dicomgen.ct_instance(study, series, i + 1, 64, 64)
    sent["j2k.dcm"] = dicomgen.compressed_file(JPEG2000Lossless)
    sent["mf.dcm"] = dicomgen.multiframe_instance(40, 128, 128)  # 1.3 MB: many PDUs, > 1 MiB spill
    for name, data in sent.items():
        _write(folder, name, data)
    rle = _write(tmp_path, "rle.dcm", dicomgen.compressed_file(RLELossless))
    sent["rle.dcm"] = rle.read_bytes()
    # +sd: a directory; -xv: propose JPEG 2000 Lossless (and the uncompressed syntaxes).
    run = subprocess.run([STORESCU, "-xv", "+sd", "127.0.0.1", str(server.dimse_port), str(folder)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    run = subprocess.run([STORESCU, "-xr", "127.0.0.1", str(server.dimse_port), str(rle)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    for name, data in sent.items():
        stored = _stored(server, sop_of(data))
        assert stored is not None, name
        # The data set exactly as sent, in the transfer syntax it was sent in.
        assert dataset_part(stored) == dataset_part(data), name
        meta = pydicom.dcmread(io.BytesIO(stored), stop_before_pixels=True).file_meta
        assert meta.TransferSyntaxUID == pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID
    assert not _tmp_files(server)


@needs_dcmtk
def test_large_instance_streams_flat_in_rss(server_factory, tmp_path):
    """A 48 MiB multi-frame instance: the server's peak RSS grows by far less than its size."""
    server = server_factory()
    data = dicomgen.multiframe_instance(96, 512, 1024, bits=8)
    big = _write(tmp_path, "big.dcm", data)
    pid = server.process.pid
    # One small store first so that everything the store path imports is loaded.
    small = _write(tmp_path, "small.dcm", dicomgen.ct_instance(generate_uid(), generate_uid(), 1, 64, 64))
    subprocess.run([STORESCU, "127.0.0.1", str(server.dimse_port), str(small)], check=True, timeout=60)
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = memory_kib(pid, "VmRSS")
    subprocess.run([STORESCU, "127.0.0.1", str(server.dimse_port), str(big)], check=True, timeout=120)
    peak = memory_kib(pid, "VmHWM")
    assert _stored(server, sop_of(data)) is not None
    assert (peak - before) < 32 * 1024, f"RSS grew by {(peak - before) >> 10} MiB for a {len(data) >> 20} MB instance"


# ---------------------------------------------------------------- statuses (pynetdicom)


def test_statuses_duplicate_idempotent_and_iod_warning(server_factory, tmp_path):
    server = server_factory()
    port = server.dimse_port
    original = dicomgen.ct_instance(generate_uid(), generate_uid(), 1, 64, 64)
    uid = sop_of(original)
    first = _write(tmp_path, "a.dcm", original)
    same = _write(tmp_path, "b.dcm", original)
    different = _write(tmp_path, "c.dcm", retag(original, PatientName="Other^Name"))
    statuses = pynetdicom_store(port, [first, same, different])
    assert [s.Status for s in statuses] == [0x0000, 0x0000, 0x0111]
    assert statuses[2].ErrorComment
    assert dataset_part(_stored(server, uid)) == dataset_part(original)

    # Default policy (validation "warn"): an IOD problem is stored with B007 and named.
    ds = pydicom.dcmread(io.BytesIO(dicomgen.ct_instance(generate_uid(), generate_uid(), 2, 64, 64)))
    del ds.Modality  # Type 1 of the General Series module
    ds.SOPInstanceUID = generate_uid()
    bad = tmp_path / "iod.dcm"
    ds.save_as(bad, enforce_file_format=True)
    (status,) = pynetdicom_store(port, [bad])
    assert status.Status == 0xB007
    assert "IOD" in status.ErrorComment and 0x00080060 in _tags(status.get("OffendingElement"))
    assert _stored(server, ds.SOPInstanceUID) is not None
    assert not _tmp_files(server)


def _tags(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, pydicom.multival.MultiValue)) else [int(value)]


def test_rejected_sop_class(server_factory, tmp_path):
    server = server_factory("--reject-sop-class", SecondaryCaptureImageStorage)
    # Negotiation refuses the context (PS3.8 result 3), so a conforming SCU cannot send it...
    ae = _ae()
    ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", server.dimse_port)
    assert assoc.is_established
    assert [c.abstract_syntax for c in assoc.accepted_contexts] == [CTImageStorage]
    assoc.release()
    # ... and one that sends it on another class's context gets 0122 with a comment.
    data = dicomgen.ct_instance(generate_uid(), generate_uid(), 1, 64, 64)
    rsp = raw_store(server.dimse_port, data, command_class=SecondaryCaptureImageStorage)
    assert rsp["status"] == 0x0122 and b"presentation context" in rsp["comment"]
    assert _stored(server, sop_of(data)) is None


def test_affected_sop_instance_uid_must_match(server_factory):
    server = server_factory()
    data = dicomgen.ct_instance(generate_uid(), generate_uid(), 1, 64, 64)
    rsp = raw_store(server.dimse_port, data, command_instance=generate_uid())
    assert rsp["status"] == 0xA900 and b"Affected SOP Instance UID" in rsp["comment"], rsp
    assert _stored(server, sop_of(data)) is None
    rsp = raw_store(server.dimse_port, data)
    assert rsp["status"] == 0x0000, rsp
    assert not _tmp_files(server)


def test_stored_instance_is_retrievable_by_c_get_and_wado(server_factory, tmp_path):
    server = server_factory()
    data = dicomgen.ct_instance(generate_uid(), generate_uid(), 1, 64, 64)
    ds = pydicom.dcmread(io.BytesIO(data))
    (status,) = pynetdicom_store(server.dimse_port, [_write(tmp_path, "a.dcm", data)],
                                 syntaxes=(ImplicitVRLittleEndian,))
    assert status.Status == 0
    result = c_get(server.dimse_port, STUDY_ROOT_GET,
                   identifier("IMAGE", StudyInstanceUID=ds.StudyInstanceUID,
                              SeriesInstanceUID=ds.SeriesInstanceUID, SOPInstanceUID=ds.SOPInstanceUID),
                   storage=((CTImageStorage, (ImplicitVRLittleEndian,)),))
    assert_counts(result.final, 1)
    assert result.received[0].raw == dataset_part(
        dicomgen.to_bytes(pydicom.dcmread(io.BytesIO(data)), ImplicitVRLittleEndian))
    url = (f"{server.stow_url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}")
    resp = requests.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
                        timeout=30)
    assert resp.status_code == 200
    back = pydicom.dcmread(io.BytesIO(resp.content.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]))
    assert back.SOPInstanceUID == ds.SOPInstanceUID and back.PixelData == ds.PixelData


def test_ae_permissions_store(server_factory, tmp_path):
    config = tmp_path / "perm.toml"
    config.write_text('[ae-permissions]\nMODALITY = ["store"]\nVIEWER = ["get"]\n')
    server = server_factory("--config", str(config))
    data = dicomgen.ct_instance(generate_uid(), generate_uid(), 1, 64, 64)
    path = _write(tmp_path, "a.dcm", data)
    assert pynetdicom_store(server.dimse_port, [path], title="MODALITY")[0].Status == 0
    ae = _ae("VIEWER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.dimse_port)
    assert [c.abstract_syntax for c in assoc.accepted_contexts] == [Verification]
    assoc.release()


# ---------------------------------------------------------------- raw peers


def _ui(uid: str) -> bytes:
    raw = uid.encode()
    return raw + b"\0" if len(raw) % 2 else raw


def _associate_ct(port: int, max_length: int = 65536) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(rawpdu.associate_rq(
        contexts=((1, CTImageStorage.encode(), (ExplicitVRLittleEndian.encode(),)),), max_length=max_length))
    pdu_type, _ = rawpdu.recv_pdu(sock)
    assert pdu_type == 0x02  # A-ASSOCIATE-AC
    return sock


def _store_command(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    return rawpdu.command_set(
        (0x0002, _ui(sop_class)), (0x0100, struct.pack("<H", 1)), (0x0110, struct.pack("<H", message_id)),
        (0x0700, struct.pack("<H", 0)), (0x0800, struct.pack("<H", 0)), (0x1000, _ui(sop_instance)))


def raw_store(port: int, data: bytes, command_class: str = CTImageStorage,
              command_instance: str | None = None) -> dict:
    """One C-STORE on context 1 (CT, Explicit VR LE) with the command's UIDs as given; the
    response's status and Error Comment."""
    sock = _associate_ct(port)
    try:
        sock.sendall(rawpdu.p_data(1, 0x03, _store_command(command_class, command_instance or sop_of(data))))
        body = dataset_part(data)
        for start in range(0, len(body), 16000):
            last = start + 16000 >= len(body)
            sock.sendall(rawpdu.p_data(1, 0x02 if last else 0x00, body[start:start + 16000]))
        pdu_type, rsp = rawpdu.recv_pdu(sock)
        assert pdu_type == 0x04, rsp
        command = rsp[6:]
        out = {}
        pos = 0
        while pos < len(command):
            _, elem, length = struct.unpack_from("<HHL", command, pos)
            value = command[pos + 8:pos + 8 + length]
            if elem == 0x0900:
                out["status"] = struct.unpack("<H", value)[0]
            elif elem == 0x0902:
                out["comment"] = value.rstrip(b" \0")
            pos += 8 + length
        sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-RELEASE-RQ
        return out
    finally:
        sock.close()


def test_abort_mid_dataset_stores_nothing(server_factory):
    server = server_factory()
    data = dicomgen.ct_instance(generate_uid(), generate_uid(), 1, 1024, 1024)  # 2 MB
    body = dataset_part(data)
    sock = _associate_ct(server.dimse_port)
    sock.sendall(rawpdu.p_data(1, 0x03, _store_command(CTImageStorage, sop_of(data))))
    # 1.5 MB of it: the first MiB reaches the temp file.
    for start in range(0, 1_500_000, 16000):
        sock.sendall(rawpdu.p_data(1, 0x00, body[start:start + 16000]))
    assert wait_until(lambda: _tmp_files(server), timeout=10)  # it was being written
    sock.sendall(b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-ABORT
    sock.close()
    assert wait_until(lambda: not _tmp_files(server), timeout=10), _tmp_files(server)
    assert _stored(server, sop_of(data)) is None
    # The server keeps serving.
    ct = dicomgen.ct_instance(generate_uid(), generate_uid(), 1, 64, 64)
    assert raw_store(server.dimse_port, ct)["status"] == 0


def test_peer_vanishing_mid_dataset_stores_nothing(server_factory):
    server = server_factory()
    data = dicomgen.ct_instance(generate_uid(), generate_uid(), 1, 256, 256)
    body = dataset_part(data)
    sock = _associate_ct(server.dimse_port)
    sock.sendall(rawpdu.p_data(1, 0x03, _store_command(CTImageStorage, sop_of(data))))
    sock.sendall(rawpdu.p_data(1, 0x00, body[:30000]))
    time.sleep(0.2)
    sock.close()  # no A-ABORT, no last fragment
    time.sleep(0.5)
    assert not _tmp_files(server) and _stored(server, sop_of(data)) is None
    assert raw_store(server.dimse_port, data)["status"] == 0


def test_instance_larger_than_limit_is_a700(server_factory):
    server = server_factory("--max-instance-size", "600K")
    data = dicomgen.ct_instance(generate_uid(), generate_uid(), 1, 1024, 512)  # 1 MB
    rsp = raw_store(server.dimse_port, data)
    assert rsp["status"] == 0xA700 and b"limit" in rsp["comment"], rsp
    assert _stored(server, sop_of(data)) is None and not _tmp_files(server)
    small = dicomgen.ct_instance(generate_uid(), generate_uid(), 1, 64, 64)
    assert raw_store(server.dimse_port, small)["status"] == 0


# ---------------------------------------------------------------- SIGKILL during ingest

CRASH_ROUNDS = int(os.environ.get("DICOMACCEL_CRASH_ROUNDS", "3"))  # scripts/crash_rounds.sh: 20


def test_crash_during_c_store_loses_nothing_acknowledged(server_factory, tmp_path):
    """SIGKILL during 4-association C-STORE ingest, CRASH_ROUNDS times on one archive: after
    each restart every acknowledged instance is indexed with the data set sent, every indexed
    file is whole, and tmp/ is empty."""
    import signal as sig

    data_dir = tmp_path / "crash"
    sent: dict[str, bytes] = {}
    for round_ in range(CRASH_ROUNDS + 1):
        server = server_factory(data=data_dir)
        _check_after_crash(server, data_dir, sent, round_)
        if round_ == CRASH_ROUNDS:
            assert len(sent) >= 4 * CRASH_ROUNDS
            break
        acknowledged: list[str] = []
        stop = threading.Event()
        lock = threading.Lock()

        def uploader(seed: int):
            ae = _ae(f"CRASH{seed}")
            # pynetdicom may notice the dead peer only at its timeouts: keep them short.
            ae.dimse_timeout = ae.network_timeout = 3
            ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
            try:
                assoc = ae.associate("127.0.0.1", server.dimse_port)
                for i in range(200):
                    if stop.is_set() or not assoc.is_established:
                        return
                    inst = dicomgen.ct_instance(generate_uid(), generate_uid(), seed * 1000 + i, 64, 64)
                    status = assoc.send_c_store(pydicom.dcmread(io.BytesIO(inst)))
                    if status and status.Status == 0:
                        with lock:
                            acknowledged.append(sop_of(inst))
                            sent[sop_of(inst)] = inst
            except Exception:
                return

        threads = [threading.Thread(target=uploader, args=(round_ * 10 + s,), daemon=True) for s in range(4)]
        for t in threads:
            t.start()
        assert wait_until(lambda: len(acknowledged) >= 4, timeout=60), "no store completed"
        server.stop(sig.SIGKILL)
        stop.set()
        for t in threads:
            t.join(30)


def _check_after_crash(server, data_dir: Path, sent: dict[str, bytes], round_: int) -> None:
    assert not _tmp_files(server), f"round {round_}: tmp/ not clean after recovery"
    archive = Archive(data_dir, recover=False)
    try:
        for uid, data in sent.items():
            record = archive.get(uid)
            assert record is not None, f"round {round_}: acknowledged {uid} lost"
            assert dataset_part(Path(record.path).read_bytes()) == dataset_part(data), f"round {round_}: {uid} differs"
        for record in archive.find():
            stored = Path(record.path).read_bytes()
            assert len(stored) == record.size
            ds = pydicom.dcmread(io.BytesIO(stored))
            assert ds.SOPInstanceUID == record.sop_instance_uid
            assert len(ds.PixelData) == 64 * 64 * 2
    finally:
        archive.close()
