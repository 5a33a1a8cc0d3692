"""The store policy over STOW-RS: each Warning and Failure Reason it decides, made to happen by a
real `dicomaccel serve` and read back by real clients (dicomweb-client, raw HTTP, pydicom).

- 0122: a SOP Class that is not a Storage SOP Class (Verification, an invented UID), and one
  removed with --reject-sop-class; --accept-sop-class lets an invented one in;
- 0119: a SOP Instance UID sent again with another SOP Class;
- B007 (--validation warn, the default) and A900 (--validation reject): a data set that breaks
  its IOD, with the attributes named in a Failed Attributes Sequence, in JSON and XML;
- A710 with the instance's UIDs; whole-request refusals as Store Instances Responses.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid

from dicomaccel.testing import multipart, post
from dicomaccel.testing.files import complete_iod, image_dataset, to_bytes

VERIFICATION = "1.2.840.10008.1.1"
INVENTED = "1.2.3.999.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
SC = "1.2.840.10008.5.1.4.1.1.7"
NS = {"d": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}


def _ct(**changes) -> pydicom.Dataset:
    ds = image_dataset(rows=4, columns=4)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def _items(doc: dict, tag: str) -> list[dict]:
    return doc.get(tag, {}).get("Value", [])


def _value(item: dict, tag: str):
    return (item.get(tag, {}).get("Value") or [None])[0]


def _store(server, *datasets, headers=None) -> tuple[int, dict]:
    status, _, body = post(server, multipart([to_bytes(ds) for ds in datasets]), headers=headers)
    return status, json.loads(body)


def test_sop_classes_outside_the_storage_classes_are_0122(server_factory):
    server = server_factory()
    verification, invented, ct = _ct(SOPClassUID=VERIFICATION), _ct(SOPClassUID=INVENTED), _ct()
    status, doc = _store(server, verification, invented, ct)
    assert status == 202
    failed = {_value(i, "00081155"): (_value(i, "00081150"), _value(i, "00081197")) for i in _items(doc, "00081198")}
    assert failed == {verification.SOPInstanceUID: (VERIFICATION, 0x0122),
                      invented.SOPInstanceUID: (INVENTED, 0x0122)}
    assert [_value(i, "00081155") for i in _items(doc, "00081199")] == [ct.SOPInstanceUID]


def test_accept_and_reject_sop_class_flags(server_factory):
    server = server_factory("--accept-sop-class", INVENTED, "--reject-sop-class", CT, "--validation", "off")
    invented, ct = _ct(SOPClassUID=INVENTED), _ct()
    status, doc = _store(server, invented, ct)
    assert status == 202
    assert [_value(i, "00081155") for i in _items(doc, "00081199")] == [invented.SOPInstanceUID]
    assert [(_value(i, "00081155"), _value(i, "00081197")) for i in _items(doc, "00081198")] == [
        (ct.SOPInstanceUID, 0x0122)]


def test_same_instance_uid_with_another_sop_class_is_0119(server_factory):
    server = server_factory()
    ct = _ct()
    assert _store(server, ct)[0] == 200
    sc = _ct(SOPClassUID=SC, SOPInstanceUID=ct.SOPInstanceUID)
    complete_iod(sc)
    status, doc = _store(server, sc)
    assert status == 409
    (item,) = _items(doc, "00081198")
    assert (_value(item, "00081150"), _value(item, "00081155"), _value(item, "00081197")) == (
        SC, ct.SOPInstanceUID, 0x0119)
    assert "SOP Class" in _value(item, "00000902")


def test_iod_violation_is_stored_with_b007_naming_the_attributes(server_factory):
    server = server_factory()  # --validation warn is the default
    broken = _ct(ImageType=None, PatientSex=None, Modality="XX")
    broken.ImageType = ["ORIGINAL"]  # VM 2-n in the CT Image Module
    client = DICOMwebClient(url=server.stow_url)
    # dicomweb-client takes 202 with a warning as stored, and returns the response data set.
    doc = client.store_instances([pydicom.dcmread(io.BytesIO(to_bytes(broken)))])
    (item,) = doc.ReferencedSOPSequence
    assert item.ReferencedSOPInstanceUID == broken.SOPInstanceUID
    assert item.WarningReason == 0xB007
    named = {int(a.SelectorAttribute): a.ErrorComment for a in item.FailedAttributesSequence}
    assert set(named) == {0x00080008, 0x00100040}
    assert named[0x00100040] == "PatientSex missing (Patient)"
    assert "multiplicity" in named[0x00080008]
    # Stored as received, and readable.
    status, _, _ = post(server, multipart([to_bytes(broken)]))
    assert status == 202  # same bytes: already stored, still with its warning


def test_iod_violation_in_xml(server_factory):
    server = server_factory()
    broken = _ct(PatientSex=None)
    status, headers, body = post(server, multipart([to_bytes(broken)]),
                                 headers={"Accept": "application/dicom+xml"})
    assert status == 202 and headers["content-type"].startswith("application/dicom+xml")
    root = ET.fromstring(body)
    warning = root.find(".//d:DicomAttribute[@tag='00081196']/d:Value", NS)
    assert int(warning.text) == 0xB007
    selector = root.find(".//d:DicomAttribute[@tag='00741048']//d:DicomAttribute[@tag='00720026']/d:Value", NS)
    assert selector.text == "00100040"


def test_iod_violation_is_a900_with_validation_reject(server_factory):
    server = server_factory("--validation", "reject")
    broken, good = _ct(PatientSex=None), _ct()
    status, doc = _store(server, broken, good)
    assert status == 202
    (item,) = _items(doc, "00081198")
    assert (_value(item, "00081155"), _value(item, "00081197")) == (broken.SOPInstanceUID, 0xA900)
    assert [_value(a, "00720026") for a in _items(item, "00741048")] == ["00100040"]
    assert [_value(i, "00081155") for i in _items(doc, "00081199")] == [good.SOPInstanceUID]


def test_validation_off_stores_without_warning(server_factory):
    server = server_factory("--validation", "off")
    assert _store(server, _ct(PatientSex=None))[0] == 200


def test_out_of_storage_failure_names_the_instance(server_factory):
    # Free space below the reserve once the request is under way: the reserve is checked
    # before the body (503) and every MiB while receiving (A710).
    server = server_factory()
    ds = image_dataset(rows=1024, columns=1024)  # 2 MiB of pixels: past a space check
    data = to_bytes(ds)
    big = server_factory("--min-free-space", "1T")  # no test disk has that much free
    status, headers, body = post(big, multipart([data]))
    assert status == 503 and headers["retry-after"]
    doc = json.loads(body)
    assert [_value(i, "00081197") for i in _items(doc, "0008119A")] == [0xA710]
    assert "reserve" in headers["warning"]
    # A710 inside the request (the archive turned unwritable while receiving) is tested in
    # test_archive.py at the archive level, where the moment can be chosen.
    assert _store(server, ds)[0] == 200


def test_check_config_prints_the_effective_settings(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('validation = "reject"\naccept-sop-class = ["1.2.3.999.1"]\n')
    done = subprocess.run([sys.executable, "-m", "dicomaccel.cli", "check-config", str(good)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert 'validation = "reject"' in done.stdout
    assert 'accept-sop-class = ["1.2.3.999.1"]' in done.stdout
    assert "http-port = 8080" in done.stdout  # defaults are printed too
    bad = tmp_path / "bad.toml"
    bad.write_text('accept-sop-class = ["not a uid"]\n')
    done = subprocess.run([sys.executable, "-m", "dicomaccel.cli", "check-config", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "accept-sop-class must be a list of UIDs" in done.stderr


@pytest.mark.parametrize("validation", ["warn", "reject"])
def test_real_files_get_their_verdict_and_nothing_is_lost(server_factory, validation):
    # pydicom's own test files: some break their IOD. Each is stored (warn) or refused (reject),
    # never both, and the response lists every one.
    from pydicom.data import get_testdata_file

    names = ["CT_small.dcm", "emri_small.dcm", "693_UNCI.dcm", "SC_rgb.dcm"]  # 2 complete, 2 not
    server = server_factory("--validation", validation)
    data = [pydicom.dcmread(get_testdata_file(n)) for n in names]
    for ds in data:
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    bodies = []
    for ds in data:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        bodies.append(buf.getvalue())
    status, _, body = post(server, multipart(bodies))
    doc = json.loads(body)
    stored = {_value(i, "00081155"): _value(i, "00081196") for i in _items(doc, "00081199")}
    failed = {_value(i, "00081155"): _value(i, "00081197") for i in _items(doc, "00081198")}
    assert set(stored) | set(failed) == {ds.SOPInstanceUID for ds in data}
    assert not set(stored) & set(failed)
    if validation == "warn":
        assert not failed and list(stored.values()) == [None, 0xB007, 0xB007, None]
    else:
        assert list(failed.values()) == [0xA900, 0xA900] and list(stored.values()) == [None, None]


def test_coercion_b000_and_discard_b006_from_the_configuration_file(server_factory, tmp_path):
    config = tmp_path / "dicomaccel.toml"
    config.write_text('''
[[coerce]]
tag = "InstitutionName"
value = "General Hospital"
[[discard]]
private_creator = "ACME 1.1"
''')
    server = server_factory("--config", str(config))
    coerced = _ct(InstitutionName="Somewhere")
    # Already what the rule sets: not coerced.
    discarded = _ct(InstitutionName="General Hospital")
    discarded.add_new(0x00090010, "LO", "ACME 1.1")
    discarded.add_new(0x00091001, "LO", "secret")
    untouched = _ct(InstitutionName="General Hospital")
    status, doc = _store(server, coerced, discarded, untouched)
    assert status == 202
    items = {_value(i, "00081155"): i for i in _items(doc, "00081199")}
    assert _value(items[coerced.SOPInstanceUID], "00081196") == 0xB000
    assert _value(items[discarded.SOPInstanceUID], "00081196") == 0xB006
    assert _value(items[untouched.SOPInstanceUID], "00081196") is None
    named = [(_value(a, "00720026"), _value(a, "00000902"))
             for a in _items(items[coerced.SOPInstanceUID], "00741048")]
    assert named == [("00080080", "InstitutionName coerced")]
    # The stored files, read back from the archive with pydicom.
    from dicomaccel.archive import Archive

    with Archive(server.data, recover=False) as archive:
        stored = pydicom.dcmread(archive.get(coerced.SOPInstanceUID).path)
        assert stored.InstitutionName == "General Hospital"
        item = stored.OriginalAttributesSequence[-1]
        assert item.ReasonForTheAttributeModification == "COERCE"
        assert item.ModifiedAttributesSequence[0].InstitutionName == "Somewhere"
        stored = pydicom.dcmread(archive.get(discarded.SOPInstanceUID).path)
        assert 0x00091001 not in stored
        assert stored.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0][0x00091001].value == "secret"


def test_processing_failure_0110_and_unknown_syntax_c122_name_the_instance(server_factory):
    server = server_factory()
    blocked, unknown_syntax = _ct(), _ct()
    # A plain file where the study's directory must go: publishing fails with an I/O error.
    (server.data / "instances").mkdir(exist_ok=True)
    (server.data / "instances" / blocked.StudyInstanceUID).write_text("in the way")
    data = to_bytes(unknown_syntax)
    data = data.replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.9\0", 1)  # File Meta (0002,0010)
    status, _, body = post(server, multipart([to_bytes(blocked), data]))
    assert status == 409
    failed = {_value(i, "00081155"): (_value(i, "00081150"), _value(i, "00081197"), _value(i, "00000902"))
              for i in _items(json.loads(body), "00081198")}
    assert failed[blocked.SOPInstanceUID][:2] == (CT, 0x0110)
    assert str(server.data) not in failed[blocked.SOPInstanceUID][2]  # no paths to the peer
    assert failed[unknown_syntax.SOPInstanceUID][:2] == (CT, 0xC122)
