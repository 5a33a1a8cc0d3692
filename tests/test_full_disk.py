"""A real full disk under a running server: the data directory is a small tmpfs of its own
(:class:`~dicomaccel.testing.SmallFilesystem`), filled by C-STORE and STOW-RS until writes fail
with ENOSPC. Every store either succeeds and stays whole or fails with an out-of-resources
status (PS3.4 Table B.2-1 A7xx, PS3.18 Table I.2-1) and an Error Comment; nothing half written
remains; the server keeps serving, and starts again on the full disk after a SIGKILL."""

from __future__ import annotations

import io
import json
import os
import signal

import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from dicomaccel.testing import SmallFilesystem, start_server
from dicomaccel.testing.files import ct_file, dataset_part, sop_of
from dicomaccel.testing.scu import c_get, echo, identifier
from dicomaccel.testing.stow import multipart, post

STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
DISK = 12 << 20  # the data directory's file system: room for ~30 of the instances below
ROWS = 384  # 16-bit CT of 288 KiB of pixels


@pytest.fixture
def disk(tmp_path):
    try:
        fs = SmallFilesystem(tmp_path / "disk", DISK)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    yield fs
    fs.close()


def _serve(disk):
    # No reserve: the stores must meet ENOSPC itself, not the free-space check before it.
    return start_server(disk.directory / "data", "--min-free-space", "0", filesystem=disk)


@pytest.fixture
def full_disk_server(disk):
    server = _serve(disk)
    yield server
    server.stop()


def _instances(study: str, count: int) -> list[bytes]:
    series = generate_uid()
    return [ct_file(rows=ROWS, columns=ROWS, seed=i, study=study, series=series) for i in range(count)]


def _leftovers(disk) -> list[str]:
    """Files in the archive's tmp/: temp files and markers of stores still under way or lost."""
    return sorted(os.listdir(disk.path("data/tmp")))


def _assert_study_holds(server, study: str, stored: dict[str, bytes]) -> None:
    """A C-GET of the study returns exactly the acknowledged instances, byte for byte."""
    result = c_get(server.dimse_port, STUDY_ROOT_GET, identifier("STUDY", StudyInstanceUID=study))
    assert result.final.Status == 0x0000, result.final
    got = {r.sop_instance_uid: r.raw for r in result.received}
    assert got.keys() == stored.keys()
    for uid, data in stored.items():
        assert got[uid] == dataset_part(data), uid


def _c_store(port: int, files: list[bytes]) -> list[tuple[int, str | None]]:
    """(Status, Error Comment) of each file stored over one association."""
    ae = AE(ae_title="FULLDISK")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMACCEL")
    assert assoc.is_established
    statuses = []
    try:
        for data in files:
            rsp = assoc.send_c_store(pydicom.dcmread(io.BytesIO(data)))
            statuses.append((rsp.Status, rsp.get("ErrorComment")))
    finally:
        assoc.release()
    return statuses


def test_c_store_fills_the_disk_and_loses_nothing(disk, full_disk_server):
    server = full_disk_server
    study = generate_uid()
    files = _instances(study, 60)  # ~17 MiB for a 12 MiB disk
    statuses = _c_store(server.dimse_port, files)
    codes = [status for status, _ in statuses]
    assert codes.count(0x0000) >= 10, statuses  # the disk took some
    refused = [(status, comment) for status, comment in statuses if status != 0x0000]
    assert refused, "the disk never filled"
    for status, comment in refused:
        # A7xx Refused: Out of Resources, with the reason in the Error Comment.
        assert 0xA700 <= status <= 0xA7FF and comment, statuses
    stored = {sop_of(data): data for data, (status, _) in zip(files, statuses) if status == 0x0000}
    assert _leftovers(disk) == []
    assert echo(server.dimse_port)
    _assert_study_holds(server, study, stored)

    # Killed while full, it starts again on the same full disk (start-up recovery needs no
    # space) and holds what it acknowledged; a new store is still refused for space.
    server.stop(signal.SIGKILL)
    assert disk.free_bytes() < len(files[0])
    server = _serve(disk)
    try:
        _assert_study_holds(server, study, stored)
        assert [status for status, _ in _c_store(server.dimse_port, files[-1:])] == [0xA710]
        assert _leftovers(disk) == []
    finally:
        server.stop()


def test_stow_rs_fills_the_disk_and_loses_nothing(disk, full_disk_server):
    server = full_disk_server
    study = generate_uid()
    files = _instances(study, 60)
    stored, failed = {}, []
    for start in range(0, len(files), 4):  # 4 instances per request
        batch = files[start:start + 4]
        status, _, body = post(server, multipart(batch), headers={"Accept": "application/dicom+json"})
        response = json.loads(body)
        # PS3.18 Table 10.5.3-1 and §8.5: 200 all stored, 202 some, 503 none for want of resources.
        assert status == (200 if "00081198" not in response else 202 if "00081199" in response else 503), \
            (status, body[:300])
        for item in response.get("00081199", {}).get("Value", []):
            uid = item["00081155"]["Value"][0]
            stored[uid] = next(data for data in batch if sop_of(data) == uid)
        for item in response.get("00081198", {}).get("Value", []):
            reason = item["00081197"]["Value"][0]
            comment = item.get("00000902", {}).get("Value", [""])[0]
            failed.append((reason, comment))
    assert len(stored) >= 10 and failed, (len(stored), failed)
    for reason, comment in failed:
        assert 0xA700 <= reason <= 0xA7FF and comment, failed
    assert len(stored) + len(failed) == len(files)
    assert _leftovers(disk) == []
    _assert_study_holds(server, study, stored)
