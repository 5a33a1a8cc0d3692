"""Fixtures shared by the service tests: a real `dicomaccel serve` process on 127.0.0.1
(:func:`dicomaccel.testing.start_server`)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from dicomaccel.testing import RunningServer, start_server


@pytest.fixture
def server_factory(tmp_path):
    started: list[RunningServer] = []

    def factory(*args: str, data: Path | None = None) -> RunningServer:
        server = start_server(data or tmp_path / f"data{len(started)}", *args)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop(signal.SIGKILL if server.process.poll() is None else signal.SIGTERM)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One server for the tests of a module that do not need a fresh archive."""
    server = start_server(tmp_path_factory.mktemp("shared") / "data")
    yield server
    server.stop()
