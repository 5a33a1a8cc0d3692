"""`dicomaccel serve` refuses bad options and busy ports with a plain message, not a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


def serve(*args: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dicomaccel.cli", "serve", "--data", str(tmp_path / "d"), *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args,message", [
    (("--max-request-size", "-5"), "cannot be negative"),
    (("--max-concurrent-stores", "0"), "at least 1"),
    (("--body-timeout", "0"), "positive number of seconds"),
    (("--pending-interval", "-1"), "0 or more"),
    (("--fsync", "sometimes"), "invalid choice"),
])
def test_bad_options(tmp_path, args, message):
    done = serve(*args, tmp_path=tmp_path)
    assert done.returncode == 2 and message in done.stderr


@pytest.mark.parametrize("which", ["http", "dimse"])
def test_busy_port(server_factory, tmp_path, which):
    running = server_factory()
    http_port = running.http_url.rsplit(":", 1)[1] if which == "http" else "0"
    dimse_port = str(running.dimse_port) if which == "dimse" else "0"
    done = serve("--http-port", http_port, "--dimse-port", dimse_port, tmp_path=tmp_path)
    assert done.returncode == 1
    assert "in use" in done.stderr and "Traceback" not in done.stderr
