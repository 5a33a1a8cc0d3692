"""Fixtures shared by the service tests: a real `dicomaccel serve` process on 127.0.0.1
(:func:`dicomaccel.testing.start_server`), on the index a test module asks for.

*Both indexes.* A module (or a test) marked ``@pytest.mark.indexes("sqlite", "postgresql")``
runs each test that uses ``index_backend`` (directly, or through ``server_factory`` and
``shared_server``) once per index: the embedded SQLite file, then a PostgreSQL database of
one throwaway cluster for the whole session (:func:`dicomaccel.testing.postgres.start_cluster`;
skipped where PostgreSQL is not installed), a new database per data directory. A test marked
``@pytest.mark.indexes("sqlite")`` in such a module runs once. ``DICOMACCEL_TEST_INDEXES``
(comma-separated) narrows the choice for a whole run.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from dicomaccel.testing import RunningServer, start_server

INDEXES = ("sqlite", "postgresql")


class IndexBackend:
    """The index of the archives and servers a test starts (see the module docstring)."""

    def __init__(self, name: str, cluster=None) -> None:
        self.name = name
        self._cluster = cluster
        self._urls: dict[Path, str] = {}

    def url(self, data: Path) -> str | None:
        """None (SQLite in ``data``), or the URL of the database of ``data`` (made at first use)."""
        if self._cluster is None:
            return None
        key = Path(data).resolve()
        if key not in self._urls:
            self._urls[key] = self._cluster.create_database()
        return self._urls[key]

    def args(self, data: Path) -> list[str]:
        """The ``dicomaccel serve`` options for this index."""
        url = self.url(data)
        return [] if url is None else ["--index", url]


def pytest_configure(config):
    config.addinivalue_line("markers", "indexes(*names): run the test on each of these indexes "
                            "(sqlite, postgresql) through the index_backend fixture")


def pytest_generate_tests(metafunc):
    marker = metafunc.definition.get_closest_marker("indexes")
    if marker is None or "index_backend" not in metafunc.fixturenames:
        return
    wanted = os.environ.get("DICOMACCEL_TEST_INDEXES")
    names = [n for n in marker.args if wanted is None or n in wanted.split(",")]
    if len(names) > 1 or names[:1] == ["postgresql"]:
        metafunc.parametrize("index_backend", names, indirect=True, scope="module")


@pytest.fixture(scope="session")
def postgres_cluster():
    """One throwaway PostgreSQL cluster for the session (started at its first use)."""
    pytest.importorskip("psycopg", reason="psycopg 3 is not installed (pip install 'psycopg[binary]' psycopg_pool)")
    from dicomaccel.testing.postgres import start_cluster

    try:
        cluster = start_cluster()
    except RuntimeError as exc:
        pytest.skip(f"no PostgreSQL to test on: {exc}")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def index_backend(request) -> IndexBackend:
    name = getattr(request, "param", "sqlite")
    if name == "sqlite":
        return IndexBackend(name)
    return IndexBackend(name, request.getfixturevalue("postgres_cluster"))


@pytest.fixture
def server_factory(tmp_path, index_backend):
    started: list[RunningServer] = []

    def factory(*args: str, data: Path | None = None) -> RunningServer:
        data = data or tmp_path / f"data{len(started)}"
        index = [] if "--index" in args else index_backend.args(data)
        server = start_server(data, *index, *args)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop(signal.SIGKILL if server.process.poll() is None else signal.SIGTERM)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory, index_backend):
    """One server for the tests of a module that do not need a fresh archive; it sends a
    Pending C-GET / C-MOVE response after every sub-operation, which tests count."""
    data = tmp_path_factory.mktemp("shared") / "data"
    server = start_server(data, *index_backend.args(data), "--pending-interval", "0")
    yield server
    server.stop()
