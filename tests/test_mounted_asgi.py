"""dicomaccel's ASGI apps mounted in Starlette and FastAPI (examples/), through the framework's
TestClient and under uvicorn with dicomweb-client: the host keeps its middleware,
authentication and lifespan; Retrieve URLs and BulkDataURIs carry the mount prefix, or the
public URL."""

from __future__ import annotations

import importlib.util
import io
import socket
import threading
import time
from pathlib import Path

import pydicom
import pytest

starlette = pytest.importorskip("starlette")
fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from dicomweb_client.api import DICOMwebClient  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.routing import Mount  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from dicomaccel.archive import Archive  # noqa: E402
from dicomaccel.integrations.asgi import create_dicomweb_app  # noqa: E402
from dicomaccel.stow import create_app  # noqa: E402
from dicomaccel.testing import files as dicomgen  # noqa: E402
from dicomaccel.testing import multipart  # noqa: E402
from dicomaccel.testing.files import dataset_part, sop_of  # noqa: E402
from dicomaccel.testing.stow import CONTENT_TYPE  # noqa: E402

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
JSON = "application/dicom+json"
RETRIEVE_URL = "00081190"


def example(name: str):
    spec = importlib.util.spec_from_file_location(f"dicomaccel_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stow(client, path: str, files: list[bytes], **headers):
    return client.post(path, content=multipart(files),
                       headers={"content-type": CONTENT_TYPE, "accept": JSON, **headers})


def retrieve_url(response) -> str:
    return response.json()[RETRIEVE_URL]["Value"][0]


# -------------------------------------------------------------- the framework's TestClient


def test_starlette_example(tmp_path):
    app = example("starlette_app").build_app(str(tmp_path / "data"), token="tok")
    study, files = dicomgen.ct_series(2, 16, 16)
    auth = {"authorization": "Bearer tok"}
    with TestClient(app) as client:
        # The host's authentication is in front of the mounted services.
        assert stow(client, "/dicomweb/studies", files).status_code == 401
        response = stow(client, "/dicomweb/studies", files, **auth)
        assert response.status_code == 200
        assert response.headers["x-served-by"] == "host-app"  # the host's middleware
        assert retrieve_url(response) == f"http://testserver/dicomweb/studies/{study}"
        found = client.get(f"/dicomweb/studies?StudyInstanceUID={study}", headers=auth).json()
        assert found[0][RETRIEVE_URL]["Value"] == [f"http://testserver/dicomweb/studies/{study}"]
        metadata = client.get(f"/dicomweb/studies/{study}/metadata", headers=auth).json()
        uris = [v["BulkDataURI"] for m in metadata for v in m.values() if "BulkDataURI" in v]
        assert uris and all(u.startswith(f"http://testserver/dicomweb/studies/{study}/series/") for u in uris)
        bulk = client.get(uris[0].removeprefix("http://testserver"), headers=auth)
        assert bulk.status_code == 200
        assert client.get("/health", headers=auth).json() == {"instances": 2}
    # The host's lifespan closed the archive: a new one opens the same data cleanly.
    with Archive(tmp_path / "data") as archive:
        assert len(archive.find(study_uids=[study])) == 2


def test_fastapi_example(tmp_path):
    app = example("fastapi_app").build_app(str(tmp_path / "data"), api_key="k")
    study, files = dicomgen.ct_series(1, 16, 16)
    with TestClient(app) as client:
        response = stow(client, "/stow/studies", files, origin="https://viewer.example")
        assert response.status_code == 200
        assert retrieve_url(response) == f"http://testserver/stow/studies/{study}"
        # FastAPI's CORS middleware wraps the mounted app too.
        assert response.headers["access-control-allow-origin"] == "https://viewer.example"
        patient = pydicom.dcmread(io.BytesIO(files[0])).PatientID
        assert client.get(f"/patients/{patient}/instances").status_code == 401
        assert client.get(f"/patients/{patient}/instances", headers={"x-api-key": "k"}).json() == [sop_of(files[0])]
        got = client.get(f"/dicomweb/studies/{study}/series/x/instances/{sop_of(files[0])}")
        assert got.status_code == 404  # routed below the mount point, unknown series


def test_nested_mount_and_public_url(tmp_path):
    with Archive(tmp_path / "data", fsync=False) as archive:
        study, files = dicomgen.ct_series(1, 16, 16)
        public = "https://pacs.example.org/gateway/dicomweb/"
        inner = Starlette(routes=[
            Mount("/dicomweb", create_dicomweb_app(archive)),
            Mount("/public", create_dicomweb_app(archive, public_url=public)),
            Mount("/stow-only", create_app(archive, base_path="")),
        ])
        host = Starlette(routes=[Mount("/pacs", inner)])
        with TestClient(host) as client:
            response = stow(client, "/pacs/dicomweb/studies", files)
            assert retrieve_url(response) == f"http://testserver/pacs/dicomweb/studies/{study}"
            response = stow(client, "/pacs/stow-only/studies", files)  # already stored: 200
            assert retrieve_url(response) == f"http://testserver/pacs/stow-only/studies/{study}"
            response = stow(client, "/pacs/public/studies", files)
            assert retrieve_url(response) == f"https://pacs.example.org/gateway/dicomweb/studies/{study}"
            found = client.get(f"/pacs/public/studies?StudyInstanceUID={study}").json()
            assert found[0][RETRIEVE_URL]["Value"] == [f"https://pacs.example.org/gateway/dicomweb/studies/{study}"]
            metadata = client.get(f"/pacs/public/studies/{study}/metadata").json()
            uris = [v["BulkDataURI"] for m in metadata for v in m.values() if "BulkDataURI" in v]
            assert uris and all(u.startswith("https://pacs.example.org/gateway/dicomweb/studies/") for u in uris)


def test_public_url_is_checked(tmp_path):
    with Archive(tmp_path / "data", fsync=False) as archive:
        with pytest.raises(ValueError):
            create_app(archive, public_url="pacs.example.org")
        with pytest.raises(ValueError):
            create_dicomweb_app(archive, public_url="https://pacs.example.org/?x=1")


# -------------------------------------------------------------------- under uvicorn


class Uvicorn:
    """``app`` served by uvicorn on 127.0.0.1, an ephemeral port, in a thread."""

    def __init__(self, app) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "Uvicorn":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        self.sock.close()


@pytest.mark.parametrize("name", ["starlette_app", "fastapi_app"])
def test_dicomweb_client_against_the_mounted_path(tmp_path, name):
    app = example(name).build_app(str(tmp_path / "data"))
    study, files = dicomgen.ct_series(2, 16, 16)
    datasets = [pydicom.dcmread(io.BytesIO(d)) for d in files]
    with Uvicorn(app) as server:
        base = f"http://127.0.0.1:{server.port}/dicomweb"
        client = DICOMwebClient(url=base)
        response = client.store_instances(datasets)
        # dicomweb-client sends a Host without the port: the URL still names it.
        assert response.RetrieveURL == f"{base}/studies/{study}"
        assert {str(r.ReferencedSOPInstanceUID) for r in response.ReferencedSOPSequence} == \
            {sop_of(d) for d in files}
        found = client.search_for_studies(search_filters={"StudyInstanceUID": study})
        assert found[0][RETRIEVE_URL]["Value"] == [f"{base}/studies/{study}"]
        series = str(datasets[0].SeriesInstanceUID)
        got = client.retrieve_instance(study, series, sop_of(files[0]),
                                       media_types=(("application/dicom", "*"),))
        out = io.BytesIO()
        got.save_as(out, enforce_file_format=True)
        assert dataset_part(out.getvalue()) == dataset_part(files[0])
        metadata = client.retrieve_study_metadata(study)
        uris = [v["BulkDataURI"] for m in metadata for v in m.values() if "BulkDataURI" in v]
        assert uris and all(u.startswith(f"{base}/studies/{study}/") for u in uris)


def test_public_url_under_uvicorn(tmp_path):
    public = "https://pacs.example.org/dicomweb"
    app = example("starlette_app").build_app(str(tmp_path / "data"), public_url=public)
    study, files = dicomgen.ct_series(1, 16, 16)
    with Uvicorn(app) as server:
        client = DICOMwebClient(url=f"http://127.0.0.1:{server.port}/dicomweb")
        response = client.store_instances([pydicom.dcmread(io.BytesIO(files[0]))])
        assert response.RetrieveURL == f"{public}/studies/{study}"


def test_public_url_setting(tmp_path):
    from dicomaccel.cli import _parser
    from dicomaccel.config import ConfigError, load_toml, merged

    file = tmp_path / "dicomaccel.toml"
    file.write_text('public-url = "https://pacs.example.org/"\n')
    assert merged(load_toml(file), {}).public_url == "https://pacs.example.org"
    file.write_text('public-url = "pacs.example.org"\n')
    with pytest.raises(ConfigError, match="public-url"):
        load_toml(file)
    args = _parser().parse_args(["serve", "--public-url", "https://gw.example/pacs"])
    assert args.public_url == "https://gw.example/pacs"
    with pytest.raises(SystemExit):
        _parser().parse_args(["serve", "--public-url", "ftp://x"])
