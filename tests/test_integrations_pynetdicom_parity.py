"""The same C-GET gives the same bytes from a pynetdicom AE with our handlers
(:mod:`dicomaccel.integrations.pynetdicom`) as from our own DIMSE server (``dicomaccel serve``),
over the same archive content.

Two archives are filled with the same files (one study: CT in Explicit and Implicit VR Little
Endian, a native and an RLE Lossless multi-frame). One is served by ``dicomaccel serve``, the
other by a pynetdicom AE running :class:`~dicomaccel.integrations.pynetdicom.ArchiveGetHandler`
in this process. Each request goes to both and what arrives is compared byte for byte:

- With a pynetdicom SCU: the data set of every C-STORE-RQ sub-operation as it arrived in the
  P-DATA-TF PDUs (PS3.7 9.3.1.1: a C-STORE-RQ carries a data set, no File Meta Information),
  with the presentation context's transfer syntax, the Affected SOP Instance UID and the order
  of the sub-operations; and the final C-GET-RSP (Status, sub-operation counts).
- With DCMTK ``getscu +B`` (bit-preserving: the data set is written to disk as received): the
  whole files, File Meta included. That group is not sent by either server (PS3.10 §7.1: it
  is written by the application that makes the file, here getscu) so it could legitimately
  differ; it is the same because getscu builds it from the same inputs (both servers have
  the AE title DICOMACCEL), and comparing it costs nothing.

FRAME level (PS3.4 Annex Y, Composite Instance Root Retrieve - GET, which getscu does not
offer: pynetdicom SCU only) makes a new instance at each request: its SOP Instance UID
(0008,0018) is new (Y.3.3), Instance Creation Date/Time (0008,0012)/(0008,0013) and the
Contributing Equipment item's Contribution DateTime (0018,A002) are the time of extraction.
Those three values are replaced by the same placeholders in both data sets (each must occur
exactly once); every other byte is compared.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import read_dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import CompositeInstanceRootRetrieveGet, StudyRootQueryRetrieveInformationModelGet

from dicomaccel.archive import Archive
from dicomaccel.elements import encode_padded
from dicomaccel.integrations.pynetdicom import ArchiveGetHandler, add_presentation_contexts
from dicomaccel.testing import files as dicomgen
from dicomaccel.testing import start_server
from dicomaccel.testing.files import retag, sop_of
from dicomaccel.testing.scu import GetResult, c_get, identifier
from dicomaccel.testing.server import dcmtk_program

pytestmark = pytest.mark.timeout(180)

GETSCU = dcmtk_program("getscu")
STUDY_ROOT = StudyRootQueryRetrieveInformationModelGet
INSTANCE_ROOT = CompositeInstanceRootRetrieveGet
MULTIFRAME = dicomgen.MULTIFRAME_CLASS
AE_TITLE = "DICOMACCEL"  # dicomaccel serve's default

# Storage contexts the SCU proposes, one transfer syntax per context so that each acceptor
# has one choice per context (PS3.8 9.3.2.2: the acceptor picks one syntax of a context).
AS_STORED = ((CTImageStorage, (ExplicitVRLittleEndian,)), (CTImageStorage, (ImplicitVRLittleEndian,)),
             (MULTIFRAME, (ExplicitVRLittleEndian,)), (MULTIFRAME, (RLELossless,)))
# Explicit VR Little Endian only: the Implicit VR CT and the RLE multi-frame are transcoded.
EXPLICIT_ONLY = ((CTImageStorage, (ExplicitVRLittleEndian,)), (MULTIFRAME, (ExplicitVRLittleEndian,)))


@pytest.fixture(scope="module")
def content():
    study, s1, s2 = generate_uid(), generate_uid(), generate_uid()
    cts = [dicomgen.ct_instance(study, s, i + 1, 32, 32) for i, s in enumerate([s1, s1, s2])]
    implicit = dicomgen.to_bytes(pydicom.dcmread(io.BytesIO(dicomgen.ct_instance(study, s2, 4, 32, 32))),
                                 ImplicitVRLittleEndian)
    native = retag(dicomgen.multiframe_instance(12, 16, 16, study_uid=study), InstanceNumber=5)
    rle = retag(dicomgen.multiframe_instance(6, 16, 16, transfer_syntax=RLELossless, study_uid=study),
                InstanceNumber=6)
    return {"study": study, "files": [*cts, implicit, native, rle], "native": sop_of(native), "rle": sop_of(rle)}


def fill(directory: Path, files: list[bytes]) -> Archive:
    archive = Archive(directory, fsync=False)
    for data in files:
        archive.store_bytes(data)
    return archive


@pytest.fixture(scope="module")
def ports(content, tmp_path_factory):
    """{"pynetdicom": port of the AE with our handler, "dicomaccel": port of dicomaccel serve}."""
    root = tmp_path_factory.mktemp("parity")
    fill(root / "served", content["files"]).close()  # dicomaccel serve opens it afterwards
    server = start_server(root / "served")
    archive = fill(root / "embedded", content["files"])
    ae = AE(ae_title=AE_TITLE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    add_presentation_contexts(ae, store=False)
    scp = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_GET, ArchiveGetHandler(archive))])
    try:
        yield {"pynetdicom": scp.server_address[1], "dicomaccel": server.dimse_port}
    finally:
        scp.shutdown()
        archive.close()
        server.stop()


def summary(result: GetResult) -> dict:
    """What an SCU sees of one C-GET: each sub-operation's (SOP Instance UID, transfer syntax,
    data set bytes) in order, and the final response's status and counts."""
    final = result.final
    return {
        "received": [(r.sop_instance_uid, r.transfer_syntax, r.raw) for r in result.received],
        "final": (final.Status, final.get("NumberOfCompletedSuboperations"),
                  final.get("NumberOfFailedSuboperations"), final.get("NumberOfWarningSuboperations")),
    }


def both(ports, model, ident, storage) -> tuple[GetResult, GetResult]:
    return (c_get(ports["pynetdicom"], model, ident, storage=storage),
            c_get(ports["dicomaccel"], model, ident, storage=storage))


# ------------------------------------------------------------------- study level


@pytest.mark.parametrize("storage", [AS_STORED, EXPLICIT_ONLY], ids=["as-stored", "transcoded"])
def test_study_level_same_bytes(ports, content, storage):
    embedded, own = both(ports, STUDY_ROOT, identifier("STUDY", StudyInstanceUID=content["study"]), storage)
    assert own.final.Status == 0x0000 and len(own.received) == len(content["files"])
    got, expected = summary(embedded), summary(own)
    assert [r[:2] for r in got["received"]] == [r[:2] for r in expected["received"]]
    for (uid, _, data), (_, _, want) in zip(got["received"], expected["received"]):
        assert data == want, f"{uid}: data sets differ"
    assert got["final"] == expected["final"]
    if storage is AS_STORED:  # nothing was transcoded: the stored data sets themselves
        stored = {sop_of(d): dicomgen.dataset_part(d) for d in content["files"]}
        assert {uid: data for uid, _, data in got["received"]} == stored
    else:
        assert {syntax for _, syntax, _ in got["received"]} == {ExplicitVRLittleEndian}


@pytest.mark.skipif(GETSCU is None, reason="DCMTK getscu not installed")
def test_study_level_same_files_with_getscu(ports, content, tmp_path):
    out = {}
    for name, port in ports.items():
        directory = tmp_path / name
        directory.mkdir()
        # +B: the data set goes to disk as received; getscu proposes uncompressed syntaxes
        # only, so the RLE multi-frame is transcoded by both servers.
        run = subprocess.run([GETSCU, "+B", "-aec", AE_TITLE, "-S", "-k", "QueryRetrieveLevel=STUDY",
                              "-k", f"StudyInstanceUID={content['study']}", "-od", str(directory),
                              "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        out[name] = {p.name: p.read_bytes() for p in directory.iterdir()}
    assert len(out["dicomaccel"]) == len(content["files"])
    assert sorted(out["pynetdicom"]) == sorted(out["dicomaccel"])
    for name, data in out["dicomaccel"].items():
        assert out["pynetdicom"][name] == data, f"{name}: files differ"


# ------------------------------------------------------------------- FRAME level


def with_placeholders(received, source_uid: str) -> bytes:
    """The data set of a new FRAME-level instance with the values made anew at each
    extraction (PS3.4 Y.3.3) replaced by fixed ones: SOP Instance UID, Instance Creation
    Date/Time, Contribution DateTime."""
    ds = received.dataset()
    implicit = received.transfer_syntax == ImplicitVRLittleEndian
    assert ds.SOPInstanceUID == received.sop_instance_uid != source_uid
    stamp = ds.ContributingEquipmentSequence[-1].ContributionDateTime
    data = received.raw
    for tag, vr, value, placeholder in [
        (0x00080018, b"UI", ds.SOPInstanceUID, "1.2.3.4"),
        (0x00080012, b"DA", ds.InstanceCreationDate, "19000101"),
        (0x00080013, b"TM", ds.InstanceCreationTime, "0" * len(ds.InstanceCreationTime)),
        # In a sequence item: the placeholder keeps the value's length, so the item's and the
        # sequence's lengths are not changed by the replacement.
        (0x0018A002, b"DT", stamp, "0" * len(stamp)),
    ]:
        element = encode_padded(tag, vr, str(value).encode("ascii"), implicit)
        assert data.count(element) == 1, f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {value!r}"
        data = data.replace(element, encode_padded(tag, vr, placeholder.encode("ascii"), implicit))
    return data


@pytest.mark.parametrize("name, syntax", [("native", ExplicitVRLittleEndian), ("rle", RLELossless),
                                          ("rle", ExplicitVRLittleEndian)],
                         ids=["native", "rle", "rle-transcoded"])
@pytest.mark.parametrize("keys", [dict(SimpleFrameList=[2, 4, 5]), dict(CalculatedFrameList=[1, 0xFFFFFFFF, 2])],
                         ids=["simple", "calculated"])
def test_frame_level_same_bytes(ports, content, name, syntax, keys):
    source = content[name]
    ident = identifier("FRAME", SOPInstanceUID=source, **keys)
    embedded, own = both(ports, INSTANCE_ROOT, ident, ((MULTIFRAME, (syntax,)),))
    assert own.final.Status == 0x0000
    assert summary(embedded)["final"] == summary(own)["final"]
    (got,), (expected,) = embedded.received, own.received
    assert got.transfer_syntax == expected.transfer_syntax == syntax
    assert got.sop_instance_uid != expected.sop_instance_uid  # two new instances
    assert with_placeholders(got, source) == with_placeholders(expected, source)


# ------------------------------------------------------------------- failures


def final_response(result: GetResult) -> tuple:
    """Status, Error Comment, Offending Element and Failed SOP Instance UID List of the final
    C-GET-RSP. pynetdicom always sends an Identifier with a Failed SOP Instance UID List in a
    Failure response (empty when no sub-operation failed), our server none in that case
    (PS3.4 C.4.3.1.3.2 asks for the list when sub-operations failed): both read as no failed
    instance. The counts are not compared: pynetdicom counts the one announced sub-operation
    as failed (see :mod:`dicomaccel.integrations.pynetdicom.get`)."""
    final = result.final
    failed = result.identifier.get("FailedSOPInstanceUIDList") if result.identifier is not None else None
    failed = [failed] if isinstance(failed, str) and failed else list(failed or [])
    return final.Status, final.get("ErrorComment"), final.get("OffendingElement"), failed


@pytest.mark.parametrize("model, ident", [
    (STUDY_ROOT, identifier("STUDY")),
    (STUDY_ROOT, identifier("SERIES", StudyInstanceUID="1.2.3")),
    (INSTANCE_ROOT, identifier("FRAME", SOPInstanceUID="1.2.3.4", SimpleFrameList=[1])),
], ids=["no-study-uid", "no-series-uid", "unknown-frame-source"])
def test_failures_same_status(ports, content, model, ident):
    embedded, own = both(ports, model, ident, ((MULTIFRAME, (ExplicitVRLittleEndian,)),))
    assert own.final.Status != 0x0000
    assert final_response(embedded) == final_response(own)


def test_frame_outside_the_source_same_status(ports, content):
    ident = identifier("FRAME", SOPInstanceUID=content["native"], SimpleFrameList=[99])
    embedded, own = both(ports, INSTANCE_ROOT, ident, ((MULTIFRAME, (ExplicitVRLittleEndian,)),))
    assert own.final.Status == 0xAA00  # PS3.4 Y.4.2.3: frame range out of the source's frames
    assert final_response(embedded) == final_response(own)
