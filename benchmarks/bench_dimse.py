"""C-GET of one large instance to DCMTK's getscu: dicomaccel.dimse against pynetdicom as SCP.

Run: ``python -m pytest benchmarks/bench_dimse.py --benchmark-group-by=param:size`` (needs DCMTK).
Both servers run in this process and serve the same bytes to the same external client; the
instance is written to a file once, dicomaccel sends an mmap of it, pynetdicom a dataset read
from it (its own API). The client's time to write the file is part of both figures.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import shutil
import subprocess
import threading

import pytest
import uvloop
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, PatientRootQueryRetrieveInformationModelGet

from dicomaccel.dimse import messages, start_dimse_server
from dicomaccel.status import Status

GETSCU = "/usr/bin/getscu" if os.access("/usr/bin/getscu", os.X_OK) else shutil.which("getscu")
pytestmark = pytest.mark.skipif(GETSCU is None, reason="DCMTK getscu not installed")
GET = str(PatientRootQueryRetrieveInformationModelGet)


@pytest.fixture(scope="module", params=[8 << 20, 64 << 20], ids=["8MiB", "64MiB"])
def instance(request, tmp_path_factory):
    size = request.param
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = "BENCH"
    ds.Rows, ds.Columns, ds.BitsAllocated = size // 2048, 1024, 16
    ds.add_new(0x7FE00010, "OW", os.urandom(size))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path_factory.mktemp("bench") / "instance.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, _dataset_offset(path), ds.SOPInstanceUID


def _dataset_offset(path) -> int:
    """Where the data set starts: after the preamble, "DICM" and group 0002 (PS3.10 §7.1),
    whose length is the value of its first element, (0002,0000) UL."""
    with open(path, "rb") as f:
        head = f.read(144)
    return 144 + int.from_bytes(head[140:144], "little")


def _getscu(port: int, out) -> None:
    done = subprocess.run(
        [GETSCU, "-aec", "BENCH", "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=BENCH", "-od", str(out),
         "127.0.0.1", str(port)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert len(os.listdir(out)) == 1


@pytest.fixture(scope="module")
def loop():
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_cget_dicomaccel(benchmark, loop, instance, tmp_path):
    path, offset, sop_instance_uid = instance
    file = open(path, "rb")
    mm = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)

    async def handle_get(assoc, request):
        (context,) = [c for c in assoc.storage_contexts(CTImageStorage) if c.transfer_syntax == ExplicitVRLittleEndian]
        rsp = await assoc.send_c_store(context, sop_class_uid=CTImageStorage, sop_instance_uid=sop_instance_uid,
                                       dataset=memoryview(mm)[offset:])
        ok = rsp["Status"] == 0
        return await assoc.respond(request, Status.SUCCESS if ok else Status.WARNING,
                                   NumberOfCompletedSuboperations=int(ok), NumberOfFailedSuboperations=int(not ok),
                                   NumberOfWarningSuboperations=0)

    server = asyncio.run_coroutine_threadsafe(
        start_dimse_server("127.0.0.1", 0, ae_title="BENCH", handlers={messages.C_GET_RQ: handle_get},
                           supported_abstract_syntaxes=[GET]), loop).result()
    counter = iter(range(10**6))
    try:
        benchmark.pedantic(lambda: _getscu(server.port, _fresh(tmp_path, counter)), rounds=5, iterations=1)
    finally:
        asyncio.run_coroutine_threadsafe(server.__aexit__(None, None, None), loop).result()


def test_cget_pynetdicom(benchmark, instance, tmp_path):
    path, _, _ = instance
    ds = dcmread(path)

    def handle_get(event):
        yield 1
        yield 0xFF00, ds

    ae = AE(ae_title="BENCH")
    ae.add_supported_context(GET)
    ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian, scu_role=True, scp_role=True)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_GET, handle_get)])
    counter = iter(range(10**6))
    try:
        port = server.socket.getsockname()[1]
        benchmark.pedantic(lambda: _getscu(port, _fresh(tmp_path, counter)), rounds=5, iterations=1)
    finally:
        server.shutdown()


def _fresh(tmp_path, counter):
    out = tmp_path / f"out{next(counter)}"
    out.mkdir()
    return out
