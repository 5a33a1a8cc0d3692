"""`dicomaccel serve --config FILE`: a TOML file fills the options, flags override it, and a bad
file is refused with a plain message naming the key."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dicomaccel.config import DEFAULTS, ConfigError, load_toml, merged


def _serve(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dicomaccel.cli", "serve", *args],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)


def test_file_then_flags(tmp_path):
    path = tmp_path / "d.toml"
    path.write_text('data = "/srv/x"\nhttp-port = 9000\nworkers = 2\nfsync = "never"\n'
                    'calling-ae = ["A", "B"]\nmax-instance-size = "2G"\nbody-timeout = 5\n'
                    'worker-cpu-affinity = "off"\n')
    values = load_toml(path)
    config = merged(values, {"http_port": 9001})
    assert str(config.data) == "/srv/x" and config.workers == 2 and not config.fsync
    assert config.http_port == 9001  # the flag wins
    assert config.calling_ae_allow == ("A", "B") and config.max_instance_bytes == 2 << 30
    assert config.body_timeout == 5.0 and config.worker_cpu_affinity == "off"
    assert config.dimse_port == DEFAULTS.dimse_port  # untouched options keep their default


@pytest.mark.parametrize("text,message", [
    ("http-prot = 1\n", "unknown key 'http-prot'"),
    ("workers = 0\n", "workers must be an integer of at least 1"),
    ("fsync = true\n", 'fsync must be "always" or "never"'),
    ("worker-cpu-affinity = \"all\"\n", 'worker-cpu-affinity must be "auto" or "off"'),
    ("body-timeout = -1\n", "body-timeout must be a positive number of seconds"),
    ("pending-interval = -0.5\n", "pending-interval must be a number of seconds (0 or more)"),
    ("max-request-size = \"lots\"\n", "max-request-size: not a size"),
    ("http-port = 70000\n", "http-port must be a port number"),
    ("calling-ae = \"A\"\n", "calling-ae must be a list of strings"),
    ("workers = \n", "Invalid value"),
])
def test_bad_file_refused_with_the_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="bad.toml") as err:
        load_toml(path)
    assert message in str(err.value)
    done = _serve(tmp_path, "--config", str(path))
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_missing_file(tmp_path):
    done = _serve(tmp_path, "--config", str(tmp_path / "nope.toml"))
    assert done.returncode == 2 and "cannot read" in done.stderr


def test_server_runs_from_a_file(tmp_path):
    path = tmp_path / "d.toml"
    path.write_text(f'data = "{tmp_path / "archive"}"\nhttp-port = 0\ndimse-port = 0\n'
                    'log-level = "warning"\n')
    proc = subprocess.Popen([sys.executable, "-m", "dicomaccel.cli", "serve", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("dicomaccel: ready"):
                break
        assert any(f"archive in {tmp_path / 'archive'}" in line for line in lines), lines
        assert (tmp_path / "archive" / "index.sqlite3").exists()
    finally:
        proc.terminate()
        proc.wait(30)
