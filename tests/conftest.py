"""Fixtures shared by the service tests: a real `dicomaccel serve` process on 127.0.0.1."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

_LISTEN = re.compile(r"dicomaccel: (STOW-RS|C-GET SCP) on (\S+)")


@dataclass
class RunningServer:
    process: subprocess.Popen
    data: Path
    log: Path
    http_url: str | None = None
    dimse_port: int | None = None

    @property
    def stow_url(self) -> str:
        return f"{self.http_url}/dicomweb"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def start_server(data: Path, *args: str, timeout: float = 30) -> RunningServer:
    """Start ``dicomaccel serve`` on ephemeral 127.0.0.1 ports and wait until it listens."""
    data.mkdir(parents=True, exist_ok=True)
    log = data.parent / f"{data.name}-server.log"
    cmd = [sys.executable, "-m", "dicomaccel.cli", "serve", "--data", str(data), "--host", "127.0.0.1",
           "--http-port", "0", "--log-level", "warning", *args]
    if "--dimse-port" not in args:
        cmd += ["--dimse-port", "0"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "ab") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, text=True)
    server = RunningServer(proc, data, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line or line.startswith("dicomaccel: ready"):
            break
        m = _LISTEN.search(line)
        if m:
            if m.group(1) == "STOW-RS":
                server.http_url = m.group(2).split("/dicomweb")[0]
            else:
                server.dimse_port = int(m.group(2).rsplit(":", 1)[1].split()[0])
    if server.http_url is None:
        server.stop(signal.SIGKILL)
        raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")
    return server


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
