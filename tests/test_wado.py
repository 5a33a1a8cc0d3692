"""WADO-RS on the STOW-RS port (PS3.18 §10.4): the Retrieve URLs of a STOW-RS response answer,
read by dicomweb-client and `requests`; frames come from the frame index."""

from __future__ import annotations

import io

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

from dicomaccel.testing import multipart, post
from dicomaccel.testing import files as dicomgen
from dicomaccel.testing.files import compressed_file

# The index matters here: tests using index_backend run on SQLite and on PostgreSQL
# (tests/conftest.py).
pytestmark = pytest.mark.indexes("sqlite", "postgresql")


def _load(server):
    study, series = generate_uid(), generate_uid()
    cts = [dicomgen.ct_instance(study, series, i + 1, 16, 16) for i in range(3)]
    mf = dicomgen.multiframe_instance(5, 8, 8, study_uid=study)
    rle = compressed_file(RLELossless, frames=4, rows=8, columns=8)
    status, _, body = post(server, multipart([*cts, mf, rle]))
    assert status in (200, 202), body[:300]
    return study, series, cts, mf, rle


def test_dicomweb_client_reads_back_what_was_stored(server_factory):
    server = server_factory()
    study, series, cts, mf, rle = _load(server)
    client = DICOMwebClient(url=server.stow_url)
    got = client.retrieve_study(study)
    assert sorted(ds.SOPInstanceUID for ds in got) == sorted(
        pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID for d in [*cts, mf])
    one = pydicom.dcmread(io.BytesIO(cts[1]))
    ds = client.retrieve_instance(study, series, one.SOPInstanceUID)
    assert ds.PixelData == one.PixelData
    # As stored, byte for byte, with transfer-syntax=*.
    resp = requests.get(f"{server.stow_url}/studies/{study}/series/{series}/instances/{one.SOPInstanceUID}",
                        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
                        timeout=30)
    assert resp.status_code == 200 and cts[1] in resp.content


def test_compressed_instance_is_decompressed_unless_asked_as_stored(server_factory):
    server = server_factory()
    _, _, _, _, rle = _load(server)
    enc = pydicom.dcmread(io.BytesIO(rle))
    client = DICOMwebClient(url=server.stow_url)
    ds = client.retrieve_instance(enc.StudyInstanceUID, enc.SeriesInstanceUID, enc.SOPInstanceUID,
                                  media_types=(("application/dicom", "1.2.840.10008.1.2.1"),))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"  # decompressed for us
    assert (ds.pixel_array == enc.pixel_array).all()
    url = f"{server.stow_url}/studies/{enc.StudyInstanceUID}/series/{enc.SeriesInstanceUID}/instances/{enc.SOPInstanceUID}"
    resp = requests.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
                        timeout=30)
    assert rle in resp.content and b"transfer-syntax=1.2.840.10008.1.2.5" in resp.content
    # No transfer-syntax parameter: Explicit VR Little Endian, the PS3.18 §8.7.3.5.2 default.
    resp = requests.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'}, timeout=30)
    assert b"transfer-syntax=1.2.840.10008.1.2.1\r\n" in resp.content and rle not in resp.content


def test_frames_native_and_encapsulated(server_factory):
    server = server_factory()
    study, series, cts, mf, rle = _load(server)
    client = DICOMwebClient(url=server.stow_url)
    src = pydicom.dcmread(io.BytesIO(mf))
    size = 8 * 8 * 2
    frames = client.retrieve_instance_frames(study, src.SeriesInstanceUID, src.SOPInstanceUID, [2, 5])
    assert frames == [src.PixelData[size:2 * size], src.PixelData[4 * size:5 * size]]
    enc = pydicom.dcmread(io.BytesIO(rle))
    url = f"{server.stow_url}/studies/{enc.StudyInstanceUID}/series/{enc.SeriesInstanceUID}/instances/{enc.SOPInstanceUID}"
    resp = requests.get(f"{url}/frames/3", headers={"Accept": 'multipart/related; type="image/x-dicom-rle"'},
                        timeout=30)
    assert resp.status_code == 200
    assert 'type="image/x-dicom-rle"' in resp.headers["Content-Type"]
    assert b"transfer-syntax=1.2.840.10008.1.2.5" in resp.content
    expected = pydicom.encaps.get_frame(enc.PixelData, 2, number_of_frames=4)
    assert expected in resp.content


def test_errors(server_factory):
    server = server_factory()
    study, series, cts, mf, rle = _load(server)
    src = pydicom.dcmread(io.BytesIO(mf))
    url = f"{server.stow_url}/studies/{study}/series/{src.SeriesInstanceUID}/instances/{src.SOPInstanceUID}"
    assert requests.get(f"{url}/frames/0", timeout=30).status_code == 400
    assert requests.get(f"{url}/frames/x", timeout=30).status_code == 400
    assert requests.get(f"{url}/frames/6", timeout=30).status_code == 404
    assert requests.get(f"{server.stow_url}/studies/1.2.3", timeout=30).status_code == 404
    resp = requests.get(f"{server.stow_url}/studies/{study}", headers={"Accept": "application/pdf"}, timeout=30)
    assert resp.status_code == 406


def test_one_bit_frames_are_repacked_from_their_bit_offset(server_factory):
    from pydicom.pixels import pack_bits, pixel_array

    server = server_factory()
    data = dicomgen.multiframe_instance(3, 5, 5, bits=1)  # 25 bits a frame: not byte aligned
    assert post(server, multipart([data]))[0] in (200, 202)
    src = pydicom.dcmread(io.BytesIO(data))
    client = DICOMwebClient(url=server.stow_url)
    got = client.retrieve_instance_frames(src.StudyInstanceUID, src.SeriesInstanceUID, src.SOPInstanceUID, [2, 3])
    assert got == [pack_bits(pixel_array(src, index=k)) for k in (1, 2)]


def test_a_slow_reader_does_not_make_the_server_buffer_the_study(server_factory):
    # 52 MB streamed to a client that reads 64 KiB and stops: the server waits on the socket
    # (write back-pressure) instead of queueing the rest of the file in memory.
    import socket
    import time
    from urllib.parse import urlsplit

    from dicomaccel.testing import memory_kib

    server = server_factory()
    data = dicomgen.multiframe_instance(400, 256, 256)
    assert post(server, multipart([data]))[0] in (200, 202)
    src = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    pid = server.process.pid
    before = memory_kib(pid, "VmRSS")
    url = urlsplit(server.http_url)
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    sock.sendall(f"GET /dicomweb/studies/{src.StudyInstanceUID} HTTP/1.1\r\nHost: x\r\n"
                 'Accept: multipart/related; type="application/dicom"; transfer-syntax=*\r\n\r\n'.encode())
    assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    time.sleep(1.5)  # the server has had time to read the whole file, if it were to
    grew = memory_kib(pid, "VmRSS") - before
    sock.close()
    assert grew < 24 << 10, f"server RSS grew {grew} KiB"
    assert post(server, multipart([dicomgen.ct_instance(generate_uid(), generate_uid(), 1, 8, 8)]))[0] == 200


def _get_in_process(app, path: str, accept: str, zerocopy: bool):
    """GET ``path`` from the WADO-RS ASGI ``app`` in-process: (status, headers, body). With
    ``zerocopy`` the scope offers the ASGI Zero Copy Send extension and the file messages are
    read here, as a server would send them."""
    import asyncio
    import os

    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": b"", "headers": [(b"host", b"test"), (b"accept", accept.encode())],
             "scheme": "http", "server": ("test", 80)}
    if zerocopy:
        scope["extensions"] = {"http.response.zerocopysend": {}}
    out = {"body": bytearray(), "files": 0}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"], out["headers"] = message["status"], dict(message["headers"])
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")
        else:
            assert message["type"] == "http.response.zerocopysend" and zerocopy
            out["files"] += 1
            out["body"] += os.pread(message["file"].fileno(), message["count"], message["offset"])

    asyncio.run(app(scope, receive, send))
    return out["status"], out["headers"], bytes(out["body"]), out["files"]


def test_study_as_stored_is_the_same_with_and_without_zero_copy_send(tmp_path):
    # The bytes of a study retrieved as stored: one part per file, the files whole, a
    # Content-Length that counts them; the same from an ASGI host without the extension
    # (reads in the executor) as from dicomaccel serve's front end (file messages).
    from email.parser import BytesParser
    from email.policy import HTTP

    from dicomaccel.archive import Archive
    from dicomaccel.wado import create_wado_app

    study, series = generate_uid(), generate_uid()
    files = [dicomgen.ct_instance(study, series, i + 1, 64, 64) for i in range(5)]
    with Archive(tmp_path / "a", fsync=False) as archive:
        for data in files:
            archive.store_bytes(data)
        app = create_wado_app(archive)
        stored = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        zc = _get_in_process(app, f"/dicomweb/studies/{study}", stored, True)
        plain = _get_in_process(app, f"/dicomweb/studies/{study}", stored, False)
        # Transcoding asked (Explicit VR LE is how these are stored: no transcoding needed)
        default = _get_in_process(app, f"/dicomweb/studies/{study}", 'multipart/related; type="application/dicom"', True)
    assert zc[0] == plain[0] == 200 and zc[3] == 5 and plain[3] == 0
    assert zc[2] == plain[2] and zc[1] == plain[1]
    assert int(zc[1][b"content-length"]) == len(zc[2])
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + zc[1][b"content-type"] + b"\r\n\r\n" + zc[2])
    parts = [p.get_payload(decode=True) for p in message.iter_parts()]
    assert sorted(parts) == sorted(files)
    assert default[0] == 200 and sorted(
        p.get_payload(decode=True) for p in BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + default[1][b"content-type"] + b"\r\n\r\n" + default[2]).iter_parts()) == sorted(files)


@pytest.mark.parametrize("syntax, media", [(JPEG2000Lossless, "image/jp2"), (RLELossless, "image/x-dicom-rle")])
def test_dicomweb_client_frames_of_encapsulated_instances_equal_pydicoms(server_factory, syntax, media):
    # PS3.18 §8.7.3.3.2: each frame in its codestream's media type, as stored; the bytes equal
    # the frame pydicom finds in the stored Pixel Data.
    server = server_factory()
    data = compressed_file(syntax, frames=4)
    assert post(server, multipart([data]))[0] in (200, 202)
    src = pydicom.dcmread(io.BytesIO(data))
    client = DICOMwebClient(url=server.stow_url)
    got = client.retrieve_instance_frames(src.StudyInstanceUID, src.SeriesInstanceUID, src.SOPInstanceUID,
                                          [1, 4], media_types=((media, syntax),))
    assert got == [pydicom.encaps.get_frame(src.PixelData, k, number_of_frames=4) for k in (0, 3)]
