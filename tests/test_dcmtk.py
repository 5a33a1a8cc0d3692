"""DCMTK's getscu against a real `dicomaccel serve` process loaded over STOW-RS."""

from __future__ import annotations

import io
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, generate_uid

from dicomaccel.testing import dcmtk_program, memory_kib, multipart, post
from dicomaccel.testing import files as dicomgen
from dicomaccel.testing.files import dataset_part, retag, sop_of

pytestmark = pytest.mark.timeout(120)


GETSCU = dcmtk_program("getscu")
pytestmark = [pytestmark, pytest.mark.skipif(GETSCU is None, reason="DCMTK getscu not installed")]


@pytest.fixture(scope="module")
def stored(shared_server):
    """Patient P: study S with series A (3 CT), B (2 CT), C (one JPEG 2000 multi-frame)."""
    patient, study, series_a, series_b, series_c = f"DCMTK-{generate_uid()[-8:]}", *(generate_uid() for _ in range(4))
    files = [retag(dicomgen.ct_instance(study, series_a, i, 64, 64), PatientID=patient) for i in range(1, 4)]
    files += [retag(dicomgen.ct_instance(study, series_b, i, 64, 64), PatientID=patient) for i in range(4, 6)]
    files.append(retag(dicomgen.multiframe_instance(3, 32, 32, transfer_syntax=JPEG2000Lossless),
                       PatientID=patient, StudyInstanceUID=study, SeriesInstanceUID=series_c))
    status, _, body = post(shared_server, multipart(files))
    assert status == 200, body[:500]
    return {
        "files": {sop_of(f): f for f in files},
        "series": {"A": [sop_of(f) for f in files[:3]], "B": [sop_of(f) for f in files[3:5]],
                   "C": [sop_of(files[5])]},
        "keys": {"PatientID": patient, "StudyInstanceUID": study, "A": series_a, "B": series_b, "C": series_c},
    }


def getscu(port: int, model: str, level: str, keys: dict, *options: str) -> subprocess.CompletedProcess:
    args = [GETSCU, "-v", model, "-to", "30", "-k", f"QueryRetrieveLevel={level}"]
    for keyword, value in keys.items():
        args += ["-k", f"{keyword}={value}"]
    return subprocess.run(args + list(options) + ["127.0.0.1", str(port)], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, TCP_NODELAY="1"))


def final_counts(done: subprocess.CompletedProcess) -> dict[str, int]:
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    report = log[log.index("Final status report"):]
    return {name: int(n) for name, n in re.findall(r"Number of (\w+) Suboperations\s*:\s*(\d+)", report)}


def level_keys(stored, level: str) -> dict:
    k = stored["keys"]
    if level == "PATIENT":
        return {"PatientID": k["PatientID"]}
    if level == "STUDY":
        return {"StudyInstanceUID": k["StudyInstanceUID"]}
    return {"StudyInstanceUID": k["StudyInstanceUID"], "SeriesInstanceUID": k["A"]}


@pytest.mark.parametrize("model, level, expected", [
    ("-P", "PATIENT", 6),
    ("-S", "STUDY", 6),
    ("-S", "SERIES", 3),
])
def test_getscu_ignore(shared_server, stored, model, level, expected):
    done = getscu(shared_server.dimse_port, model, level, level_keys(stored, level), "--ignore")
    assert final_counts(done) == {"Remaining": 0, "Completed": expected, "Failed": 0, "Warning": 0}
    assert (done.stdout + done.stderr).count("Received C-STORE Request") == expected


@pytest.mark.parametrize("level", ["STUDY", "SERIES"])
@pytest.mark.parametrize("mode", ["+B", "-B"])  # bit-preserving, and DCMTK's decode-then-write
def test_getscu_written_files_equal_stored(shared_server, stored, tmp_path, level, mode):
    out = tmp_path / "out"
    out.mkdir()
    done = getscu(shared_server.dimse_port, "-S", level, level_keys(stored, level), mode, "-od", str(out))
    expected = stored["series"]["A"] if level == "SERIES" else [u for s in "ABC" for u in stored["series"][s]]
    assert final_counts(done)["Completed"] == len(expected)
    written = {}
    for path in out.iterdir():
        data = path.read_bytes()
        written[sop_of(data)] = data
    assert sorted(written) == sorted(expected)
    transcoded = set(stored["series"]["C"])
    for uid, data in written.items():
        original = stored["files"][uid]
        if uid in transcoded:
            # getscu offers uncompressed syntaxes only: the JPEG 2000 instance was decoded.
            got = pydicom.dcmread(io.BytesIO(data))
            assert not got.file_meta.TransferSyntaxUID.is_compressed
            assert np.array_equal(got.pixel_array, pydicom.dcmread(io.BytesIO(original)).pixel_array)
        else:
            assert dataset_part(data) == dataset_part(original), uid




def test_large_instance_is_sent_in_windows(server_factory):
    """A 64 MiB instance leaves by C-GET while the server maps at most a few 8 MiB windows of
    it: its peak RSS grows by less than 32 MiB (without windows it grows by the whole file)."""
    server = server_factory()
    data = dicomgen.multiframe_instance(128, 512, 512)
    assert len(data) > 64 << 20
    status, _, _ = post(server, multipart([data]))
    assert status == 200
    study = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID
    pid = server.process.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM (proc(5))
    before = memory_kib(pid, "VmRSS")
    done = getscu(server.dimse_port, "-S", "STUDY", {"StudyInstanceUID": study}, "--ignore", "-pdu", "131072")
    assert final_counts(done)["Completed"] == 1
    assert memory_kib(pid, "VmHWM") - before < 32 << 10
