"""The STOW-RS app driven in-process through its ASGI interface, over a real archive.

For what a socket cannot stage deterministically: the disk reserve being crossed between two
parts of one request.
"""

from __future__ import annotations

import json

from pydicom.uid import generate_uid

from dicomaccel.archive import Archive
from dicomaccel.stow import create_app
from dicomaccel.testing import files as dicomgen
from dicomaccel.testing import multipart, run_asgi


def test_reserve_crossed_between_parts_fails_the_rest_with_a710(tmp_path):
    archive = Archive(tmp_path / "a", min_free_bytes=0)
    app = create_app(archive)
    first = dicomgen.ct_instance(generate_uid(), generate_uid(), 1, 32, 32)
    second = dicomgen.ct_instance(generate_uid(), generate_uid(), 2, 32, 32)
    body = multipart([first, second])
    cut = body.index(b"--BOUNDARY", 20)
    pieces = [body[:cut], body[cut:]]

    def squeeze(remaining):
        if remaining == 1:  # the first part is complete: now the disk "fills up"
            archive.min_free_bytes = 1 << 62

    status, resp = run_asgi(app, pieces, squeeze)
    assert status == 202
    doc = json.loads(resp)
    assert [i["00081197"]["Value"][0] for i in doc["00081198"]["Value"]] == [0xA710]
    assert len(doc["00081199"]["Value"]) == 1
    assert not any((tmp_path / "a" / "tmp").iterdir())
    archive.close()
