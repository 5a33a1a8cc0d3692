"""WADO-RS metadata, bulk data, rendered images and transport (PS3.18 §10.4, Annex F; PS3.19
§A.1) against a real server, read by dicomweb-client and `requests`; metadata compared with
pydicom's own JSON of the stored file."""

from __future__ import annotations

import email.utils
import gzip
import io
import xml.etree.ElementTree as ET
from email.parser import BytesParser
from email.policy import HTTP

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, generate_uid

from dicomaccel.testing import files as dicomgen
from dicomaccel.testing import multipart, post
from dicomaccel.testing.files import compressed_file, to_bytes

NATIVE_XML = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"


def _rich_ct(study: str, series: str, number: int, *, syntax: str = pydicom.uid.ExplicitVRLittleEndian) -> bytes:
    """A 16x16 CT with a window, known pixels, a long LT, a private OB over the 1 KiB bulk data
    threshold (and one under it) and an Icon Image Sequence whose 4 KiB of pixels are bulk data
    too (a nested BulkDataURI)."""
    ds = pydicom.dcmread(io.BytesIO(dicomgen.ct_instance(study, series, number, 16, 16)))
    ds.PixelData = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 10).tobytes()
    ds.WindowCenter, ds.WindowWidth = 100, 400
    ds.ImageComments = "long comment " * 160  # LT, 2080 bytes
    ds.add_new(0x00090010, "LO", "DICOMACCEL TEST")
    ds.add_new(0x00091001, "OB", bytes(range(256)) * 8)  # 2048 bytes, private
    ds.add_new(0x00091002, "OB", b"small\0")  # stays inline
    icon = Dataset()
    icon.SamplesPerPixel, icon.PhotometricInterpretation = 1, "MONOCHROME2"
    icon.Rows = icon.Columns = 64
    icon.BitsAllocated = icon.BitsStored = 8
    icon.HighBit, icon.PixelRepresentation = 7, 0
    icon.PixelData = bytes(i % 251 for i in range(64 * 64))
    ds.IconImageSequence = Sequence([icon])
    ds.ReferencedImageSequence = Sequence([])  # an empty sequence
    return to_bytes(ds, syntax)


@pytest.fixture(scope="module")
def loaded(shared_server):
    study, series = generate_uid(), generate_uid()
    cts = [_rich_ct(study, series, 1), _rich_ct(study, series, 2, syntax=ImplicitVRLittleEndian),
           _rich_ct(study, series, 3), _rich_ct(study, series, 4, syntax=DeflatedExplicitVRLittleEndian)]
    mono1 = pydicom.dcmread(io.BytesIO(cts[0]))
    mono1.SOPInstanceUID, mono1.SeriesInstanceUID = generate_uid(), generate_uid()
    mono1.PhotometricInterpretation = "MONOCHROME1"
    rgb = dicomgen.multiframe_instance(3, 8, 8, bits=8, samples=3, study_uid=study)
    rle = compressed_file(RLELossless, frames=2, rows=8, columns=8)
    files = [*cts, to_bytes(mono1), rgb, rle]
    status, _, body = post(shared_server, multipart(files))
    assert status in (200, 202), body[:300]
    datasets = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(io.BytesIO(f)) for f in files)}
    by_sop = {pydicom.dcmread(io.BytesIO(f), stop_before_pixels=True).SOPInstanceUID: f for f in files}
    return shared_server, study, series, files, datasets, by_sop


def _url(server, ds) -> str:
    return (f"{server.stow_url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}")


def _raw_value(ds: Dataset, tag: int) -> bytes:
    elem = ds.get_item(tag)
    return elem.value if isinstance(elem, RawDataElement) else elem.value


def _compare(ours: dict, ds: Dataset, theirs: dict, client: DICOMwebClient, path: str = "") -> int:
    """Assert ``ours`` (the server's JSON) equals ``theirs`` (pydicom's to_json_dict of the
    same data set) but for bulk values, which must be served byte for byte; returns the number
    of bulk values checked."""
    checked = 0
    assert set(ours) == set(theirs), path
    for key, element in ours.items():
        tag = int(key, 16)
        if "BulkDataURI" in element:
            assert element["vr"] == theirs[key]["vr"] or ds[tag].VR in ("OB or OW", "US or SS or OW")
            assert element["BulkDataURI"].endswith("/bulkdata/" + path + key)
            got = client.retrieve_bulkdata(element["BulkDataURI"])
            assert got == [_raw_value(ds, tag)], key
            checked += 1
        elif element["vr"] == "SQ":
            items = element.get("Value", [])
            assert len(items) == len(ds[tag].value)
            for i, (item, item_ds, item_theirs) in enumerate(zip(items, ds[tag].value, theirs[key]["Value"]), 1):
                checked += _compare(item, item_ds, item_theirs, client, f"{path}{key}/{i}/")
        else:
            assert element == theirs[key], key
    return checked


def test_metadata_equals_pydicoms_json_and_bulk_data_is_served(loaded):
    server, study, series, files, datasets, by_sop = loaded
    client = DICOMwebClient(url=server.stow_url)
    series_meta = client.retrieve_series_metadata(study, series)
    assert len(series_meta) == 4
    checked = 0
    for meta in series_meta:
        stored = by_sop[meta["00080018"]["Value"][0]]
        ds = pydicom.dcmread(io.BytesIO(stored))  # values left raw: the bytes bulk data must equal
        theirs = pydicom.dcmread(io.BytesIO(stored), stop_before_pixels=True).to_json_dict()
        without_pixels = {k: v for k, v in meta.items() if k != "7FE00010"}
        checked += _compare(without_pixels, ds, theirs, client)
        assert meta["7FE00010"]["vr"] == "OW"
        assert client.retrieve_bulkdata(meta["7FE00010"]["BulkDataURI"]) == [ds.PixelData]
        assert meta["00091002"]["InlineBinary"]  # under the threshold: inline
        assert "BulkDataURI" in meta["00091001"] and "BulkDataURI" in meta["00204000"]
    assert checked == 4 * 3  # LT, private OB, icon pixels, in each (Implicit VR and deflated included)
    one = datasets[series_meta[1]["00080018"]["Value"][0]]
    assert client.retrieve_instance_metadata(study, series, one.SOPInstanceUID) == series_meta[1]
    study_meta = client.retrieve_study_metadata(study)
    assert len(study_meta) == len(files) - 1  # the RLE file is in a study of its own
    assert {m["00080018"]["Value"][0] for m in study_meta} >= {m["00080018"]["Value"][0] for m in series_meta}


def test_metadata_as_native_dicom_model_xml(loaded):
    server, study, series, files, datasets, by_sop = loaded
    resp = requests.get(f"{server.stow_url}/studies/{study}/series/{series}/metadata",
                        headers={"Accept": 'multipart/related; type="application/dicom+xml"'}, timeout=30)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith('multipart/related; type="application/dicom+xml"')
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {resp.headers['Content-Type']}\r\n\r\n".encode() + resp.content)
    parts = [p for p in message.iter_parts()]
    assert len(parts) == 4 and all(p.get_content_type() == "application/dicom+xml" for p in parts)
    for part in parts:
        root = ET.fromstring(part.get_payload(decode=True))
        assert root.tag == f"{NATIVE_XML}NativeDicomModel"
        attrs = {a.get("tag"): a for a in root.findall(f"{NATIVE_XML}DicomAttribute")}
        sop = attrs["00080018"].find(f"{NATIVE_XML}Value").text
        ds = datasets[sop]
        assert attrs["00080018"].get("keyword") == "SOPInstanceUID"
        name = attrs["00100010"].find(f"{NATIVE_XML}PersonName/{NATIVE_XML}Alphabetic")
        assert name.find(f"{NATIVE_XML}FamilyName").text == ds.PatientName.family_name
        assert name.find(f"{NATIVE_XML}GivenName").text == ds.PatientName.given_name
        assert [v.text for v in attrs["00080008"].findall(f"{NATIVE_XML}Value")] == list(ds.ImageType)
        assert attrs["00091001"].get("privateCreator") == "DICOMACCEL TEST"
        assert attrs["7FE00010"].find(f"{NATIVE_XML}BulkData").get("uri").endswith("/bulkdata/7FE00010")
        icon = attrs["00880200"].find(f"{NATIVE_XML}Item")
        assert icon.get("number") == "1"
        nested = {a.get("tag"): a for a in icon.findall(f"{NATIVE_XML}DicomAttribute")}
        assert nested["7FE00010"].find(f"{NATIVE_XML}BulkData").get("uri").endswith("/bulkdata/00880200/1/7FE00010")
        assert nested["00280010"].find(f"{NATIVE_XML}Value").text == "64"


def test_bulkdata_single_part_ranges_and_errors(loaded):
    server, study, series, files, datasets, by_sop = loaded
    ds = pydicom.dcmread(io.BytesIO(files[1]))  # Implicit VR: the walk without VRs
    url = f"{_url(server, ds)}/bulkdata/00880200/1/7FE00010"
    icon = ds.IconImageSequence[0].PixelData
    single = {"Accept": "application/octet-stream"}
    resp = requests.get(url, headers=single, timeout=30)
    assert resp.status_code == 200 and resp.content == icon
    assert resp.headers["Content-Type"] == "application/octet-stream" and resp.headers["Accept-Ranges"] == "bytes"
    resp = requests.get(url, headers={**single, "Range": "bytes=10-19"}, timeout=30)
    assert resp.status_code == 206 and resp.content == icon[10:20]
    assert resp.headers["Content-Range"] == f"bytes 10-19/{len(icon)}"
    resp = requests.get(url, headers={**single, "Range": "bytes=-5"}, timeout=30)
    assert resp.status_code == 206 and resp.content == icon[-5:]
    resp = requests.get(url, headers={**single, "Range": "bytes=4000-"}, timeout=30)
    assert resp.status_code == 206 and resp.content == icon[4000:]
    resp = requests.get(url, headers={**single, "Range": f"bytes={len(icon)}-"}, timeout=30)
    assert resp.status_code == 416 and "not satisfiable" in resp.text
    # An If-Range that no longer matches: the whole value.
    resp = requests.get(url, headers={**single, "Range": "bytes=0-1", "If-Range": '"old"'}, timeout=30)
    assert resp.status_code == 200 and resp.content == icon
    # The multipart form with a range, as dicomweb-client asks for it.
    client = DICOMwebClient(url=server.stow_url)
    assert client.retrieve_bulkdata(url, byte_range=(2, 9)) == [icon[2:10]]
    lt = f"{_url(server, ds)}/bulkdata/00204000"
    assert requests.get(lt, headers=single, timeout=30).content == _raw_value(ds, 0x00204000)
    for bad in ("zz", "00880200/0/7FE00010", "00880200/x", "7FE00010/1"):
        resp = requests.get(f"{_url(server, ds)}/bulkdata/{bad}", timeout=30)
        assert resp.status_code in (400, 404), bad
    resp = requests.get(f"{_url(server, ds)}/bulkdata/0088020", timeout=30)
    assert resp.status_code == 400 and "8 hex digits" in resp.text
    resp = requests.get(f"{_url(server, ds)}/bulkdata/00880200/2/7FE00010", timeout=30)
    assert resp.status_code == 404 and "No bulk data" in resp.text
    resp = requests.get(f"{_url(server, ds)}/bulkdata/00100011", timeout=30)
    assert resp.status_code == 404
    assert requests.get(url, headers={"Accept": "image/png"}, timeout=30).status_code == 406


def test_encapsulated_pixel_data_bulk_uri_gives_the_frames(loaded):
    server, study, series, files, datasets, by_sop = loaded
    enc = pydicom.dcmread(io.BytesIO(files[-1]))
    client = DICOMwebClient(url=server.stow_url)
    meta = client.retrieve_instance_metadata(enc.StudyInstanceUID, enc.SeriesInstanceUID, enc.SOPInstanceUID)
    assert meta["7FE00010"]["vr"] == "OB"
    resp = requests.get(meta["7FE00010"]["BulkDataURI"], timeout=30)
    assert resp.status_code == 200 and 'type="image/x-dicom-rle"' in resp.headers["Content-Type"]
    for k in range(2):
        assert pydicom.encaps.get_frame(enc.PixelData, k, number_of_frames=2) in resp.content


def _png(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image)


def _linear(x: np.ndarray, c: float, w: float) -> np.ndarray:
    # PS3.3 C.11.2.1.2.1, onto 0..255
    return np.clip(np.rint(((x - (c - 0.5)) / (w - 1) + 0.5) * 255), 0, 255).astype(np.uint8)


def test_rendered_jpeg_png_window_viewport(loaded):
    server, study, series, files, datasets, by_sop = loaded
    ct = pydicom.dcmread(io.BytesIO(files[0]))
    client = DICOMwebClient(url=server.stow_url)
    jpeg = client.retrieve_instance_rendered(study, series, ct.SOPInstanceUID)
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG" and image.size == (16, 16)
    hu = np.arange(256, dtype=np.float64).reshape(16, 16) * 10 - 1024  # Rescale Intercept -1024
    png = client.retrieve_instance_rendered(study, series, ct.SOPInstanceUID, media_types=("image/png",))
    assert (_png(png) == _linear(hu, 100, 400)).all()  # the instance's window
    got = client.retrieve_instance_rendered(study, series, ct.SOPInstanceUID, media_types=("image/png",),
                                            params={"window": "500,1000,linear"})
    assert (_png(got) == _linear(hu, 500, 1000)).all()
    sigmoid = _png(client.retrieve_instance_rendered(study, series, ct.SOPInstanceUID, media_types=("image/png",),
                                                     params={"window": "0,200,sigmoid"}))
    assert sigmoid[0, 0] < 5 and sigmoid[-1, -1] > 250 and (np.diff(sigmoid.ravel().astype(int)) >= 0).all()
    url = _url(server, ct)
    resp = requests.get(f"{url}/rendered", params={"viewport": "64,32", "quality": "50"}, timeout=30)
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(resp.content)).size == (32, 32)  # scaled to fit, square kept
    resp = requests.get(f"{url}/rendered", params={"viewport": "8,8,0,0,8,8", "accept": "image/png"}, timeout=30)
    assert (_png(resp.content) == _linear(hu, 100, 400)[:8, :8]).all()  # the top-left region
    mono1 = next(d for d in datasets.values() if d.PhotometricInterpretation == "MONOCHROME1")
    resp = requests.get(f"{_url(server, mono1)}/rendered", headers={"Accept": "image/png"}, timeout=30)
    assert (_png(resp.content) == 255 - _linear(hu, 100, 400)).all()
    rgb = next(d for d in datasets.values() if d.PhotometricInterpretation == "RGB")
    resp = requests.get(f"{_url(server, rgb)}/frames/2/rendered", headers={"Accept": "image/png"}, timeout=30)
    assert (_png(resp.content) == rgb.pixel_array[1]).all()
    rle = pydicom.dcmread(io.BytesIO(files[-1]))
    resp = requests.get(f"{_url(server, rle)}/frames/2/rendered", headers={"Accept": "image/png"}, timeout=30)
    assert resp.status_code == 200 and _png(resp.content).shape == (8, 8)


def test_rendered_refusals_are_readable(loaded):
    server, study, series, files, datasets, by_sop = loaded
    url = _url(server, pydicom.dcmread(io.BytesIO(files[0])))
    for params, word in (({"window": "1"}, "window"), ({"window": "1,0"}, "width"),
                         ({"window": "1,100,cubic"}, "function"), ({"viewport": "0,10"}, "viewport"),
                         ({"viewport": "a,b"}, "viewport"), ({"quality": "101"}, "quality")):
        resp = requests.get(f"{url}/rendered", params=params, timeout=30)
        assert resp.status_code == 400 and word in resp.text.lower(), params
        assert resp.headers["Content-Type"].startswith("text/plain")
    resp = requests.get(f"{url}/rendered", headers={"Accept": "image/gif"}, timeout=30)
    assert resp.status_code == 406 and "image/jpeg" in resp.text
    assert requests.get(f"{url}/frames/2/rendered", timeout=30).status_code == 404
    assert requests.get(f"{url}/frames/1,1/rendered", timeout=30).status_code == 400
    resp = requests.get(f"{url}/metadata", headers={"Accept": "application/pdf"}, timeout=30)
    assert resp.status_code == 406 and "dicom+json" in resp.text
    assert requests.get(f"{server.stow_url}/studies/1.2.3/metadata", timeout=30).status_code == 404


def test_etag_last_modified_304_and_gzip(loaded):
    server, study, series, files, datasets, by_sop = loaded
    ct = pydicom.dcmread(io.BytesIO(files[0]))
    url = _url(server, ct)
    for target, headers in ((url, {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}),
                            (f"{url}/metadata", {}), (f"{url}/frames/1", {}),
                            (f"{server.stow_url}/studies/{study}/metadata", {}), (f"{url}/rendered", {})):
        first = requests.get(target, headers=headers, timeout=30)
        assert first.status_code == 200, target
        etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
        assert email.utils.parsedate_to_datetime(modified).timestamp() > 0
        again = requests.get(target, headers={**headers, "If-None-Match": etag}, timeout=30)
        assert again.status_code == 304 and again.content == b"" and again.headers["ETag"] == etag
        since = requests.get(target, headers={**headers, "If-Modified-Since": modified}, timeout=30)
        assert since.status_code == 304
        other = requests.get(target, headers={**headers, "If-None-Match": '"other"'}, timeout=30)
        assert other.status_code == 200 and other.content == first.content
    # The same URL in another representation has another ETag.
    xml = requests.get(f"{url}/metadata", headers={"Accept": 'multipart/related; type="application/dicom+xml"'},
                       timeout=30)
    assert xml.headers["ETag"] != requests.get(f"{url}/metadata", timeout=30).headers["ETag"]
    # gzip on request only, and the body is the same JSON.
    with requests.Session() as session:
        raw = session.get(f"{server.stow_url}/studies/{study}/metadata", headers={"Accept-Encoding": "gzip"},
                          stream=True, timeout=30)
        assert raw.headers["Content-Encoding"] == "gzip"
        body = gzip.decompress(raw.raw.read())
        plain = session.get(f"{server.stow_url}/studies/{study}/metadata",
                            headers={"Accept-Encoding": "identity"}, timeout=30)
        assert "Content-Encoding" not in plain.headers
        assert plain.json() == requests.models.complexjson.loads(body)
    # A 304 on a keep-alive connection leaves it usable (no stray body bytes).
    with requests.Session() as session:
        etag = session.get(f"{url}/metadata", timeout=30).headers["ETag"]
        for _ in range(3):
            assert session.get(f"{url}/metadata", headers={"If-None-Match": etag}, timeout=30).status_code == 304
            assert session.get(f"{url}/metadata", timeout=30).status_code == 200


def test_cors_preflight_and_headers(server_factory, tmp_path):
    config = tmp_path / "cors.toml"
    config.write_text('cors-origin = ["https://viewer.example"]\n')
    server = server_factory("--config", str(config), "--cors-origin", "https://other.example")
    data = dicomgen.ct_instance(generate_uid(), generate_uid(), 1, 8, 8)
    assert post(server, multipart([data]))[0] == 200
    ds = pydicom.dcmread(io.BytesIO(data))
    url = f"{_url(server, ds)}/metadata"
    # Flags override the file (ServeConfig: defaults, then the file, then flags).
    resp = requests.options(url, headers={"Origin": "https://other.example", "Access-Control-Request-Method": "GET",
                                          "Access-Control-Request-Headers": "authorization"}, timeout=30)
    assert resp.status_code == 204
    assert resp.headers["Access-Control-Allow-Origin"] == "https://other.example"
    assert "GET" in resp.headers["Access-Control-Allow-Methods"]
    assert "authorization" in resp.headers["Access-Control-Allow-Headers"].lower()
    resp = requests.get(url, headers={"Origin": "https://other.example"}, timeout=30)
    assert resp.status_code == 200 and resp.headers["Access-Control-Allow-Origin"] == "https://other.example"
    assert "ETag" in resp.headers["Access-Control-Expose-Headers"] and "origin" in resp.headers["Vary"].lower()
    resp = requests.get(url, headers={"Origin": "https://evil.example"}, timeout=30)
    assert resp.status_code == 200 and "Access-Control-Allow-Origin" not in resp.headers
    resp = requests.get(f"{server.stow_url}/studies/1.2.3/metadata", headers={"Origin": "https://other.example"},
                        timeout=30)
    assert resp.status_code == 404 and resp.headers["Access-Control-Allow-Origin"] == "https://other.example"
