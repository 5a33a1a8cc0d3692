"""What a stored instance leaves in the page cache (``--page-cache``): STOW-RS and C-STORE into
a running server, the stored files' resident pages counted with mincore(2)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from dicomaccel.archive import Archive
from dicomaccel.archive.store import drops_stored_pages, hypervisor_reclaims_free_pages
from dicomaccel.testing import files as dicomgen
from dicomaccel.testing import resident_pages
from dicomaccel.testing.files import sop_of

def _stored_path(server, uid: str) -> Path:
    archive = Archive(server.data, index=server.index, recover=False)  # the server is running
    try:
        record = archive.get(uid)
        assert record is not None, uid
        return Path(record.path)
    finally:
        archive.close()


def _store_both_ways(server) -> list[Path]:
    """One CT instance over STOW-RS (dicomweb-client), one over C-STORE (pynetdicom); the
    stored files."""
    study, series = generate_uid(), generate_uid()
    web, dimse = (dicomgen.ct_instance(study, series, n, 256, 256) for n in (1, 2))
    DICOMwebClient(url=server.stow_url).store_instances(datasets=[dcmread(DicomBytesIO(web))])
    ae = AE(ae_title="CACHETEST")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ds = dcmread(DicomBytesIO(dimse))
    ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", server.dimse_port)
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    return [_stored_path(server, sop_of(data)) for data in (web, dimse)]


@pytest.mark.parametrize("args,resident", [
    (("--page-cache", "drop"), False),
    (("--page-cache", "keep"), True),
    # Not flushed when answered: the pages are dirty and stay, whatever the mode.
    (("--page-cache", "drop", "--fsync", "never"), True),
])
def test_stored_pages_after_the_answer(server_factory, args, resident):
    server = server_factory(*args)
    for path in _store_both_ways(server):
        cached, pages = resident_pages(path)
        assert pages > 30
        if resident:
            assert cached == pages, path.name
        else:
            assert cached == 0, path.name


def test_auto_is_announced_as_decided(server_factory):
    server = server_factory()
    drops = drops_stored_pages("auto")
    wanted = "leave the page cache once durable" if drops else "stay in the page cache"
    assert wanted in server.announced, server.announced
    cached = [resident_pages(p)[0] for p in _store_both_ways(server)]
    assert (max(cached) == 0) if drops else min(cached) > 0


def _balloons(tmp_path: Path, *features: str) -> Path:
    root = tmp_path / "virtio_balloon"
    root.mkdir()
    (root / "bind").write_text("")  # the driver directory holds more than its devices
    for i, bits in enumerate(features):
        (root / f"virtio{i}").mkdir()
        (root / f"virtio{i}" / "features").write_text(bits + "\n")
    return root


@pytest.mark.parametrize("features,reclaims", [
    ((), False),
    (("0110000000000000",), False),            # statistics and deflate-on-OOM only
    (("0110010000000000",), True),             # bit 5: free page reporting (Virtio 1.1 §5.5.3)
    (("01100", "0000010000"), True),           # the second balloon reports
    (("0000",), False),                        # too few bits to name the feature
])
def test_free_page_reporting_read_from_the_balloons_feature_bits(tmp_path, features, reclaims):
    assert hypervisor_reclaims_free_pages(str(_balloons(tmp_path, *features))) is reclaims


def test_no_balloon_driver_means_no_reclaim(tmp_path):
    assert hypervisor_reclaims_free_pages(str(tmp_path / "absent")) is False


def test_modes():
    assert drops_stored_pages("drop") is True
    assert drops_stored_pages("keep") is False
    assert drops_stored_pages("auto") is hypervisor_reclaims_free_pages()
    with pytest.raises(ValueError, match="auto, keep, drop"):
        drops_stored_pages("evict")
