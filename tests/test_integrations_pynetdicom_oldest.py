"""Our pynetdicom handlers with the oldest pynetdicom they work with: 2.0.2.

What the handlers use of pynetdicom:

- ``_config.STORE_RECV_CHUNKED_DATASET`` and ``Event.dataset_path`` (the received data set
  written to a file): added in 2.0.0. In 2.0.0 and 2.0.1 the file is not flushed before the
  EVT_C_STORE handler runs, so a handler reading it by its path misses the tail of the data
  set (pynetdicom issue 765, fixed in 2.0.2 and 2.1.0); with 2.0.0 our C-STORE tests fail.
- Generator EVT_C_GET handlers yielding the count then ``(status, dataset)`` pairs,
  ``Event.is_cancelled``, ``Event.context``, ``Event.assoc.accepted_contexts`` with
  ``as_scu``: older than 2.0.
- 2.1.x require pydicom 2.4 (not 3, which dicomaccel needs); 2.0.x ask for pydicom >= 2.2 and
  run on pydicom 3 (with its deprecation warnings).

The test installs pynetdicom 2.0.2 alone (``pip install --no-deps --target``, the installed
pydicom is used) into a directory under the system temporary directory, kept for later runs,
and runs the handler tests (tests/test_integrations_pynetdicom.py: C-STORE chunked and in
memory, every C-GET level, FRAME level, cancel, storescu/getscu) and the byte-identity tests
against ``dicomaccel serve`` (tests/test_integrations_pynetdicom_parity.py) in a pytest
subprocess that imports it first (PYTHONPATH).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

OLDEST = "2.0.2"
HERE = Path(__file__).resolve().parent
MODULES = ("test_integrations_pynetdicom.py", "test_integrations_pynetdicom_parity.py")


@pytest.fixture(scope="module")
def oldest_pynetdicom() -> Path:
    """The directory holding pynetdicom ``OLDEST``, installed on first use."""
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    target = Path(tempfile.gettempdir()) / f"dicomaccel-pynetdicom-{OLDEST}-{tag}"
    if (target / "pynetdicom" / "__init__.py").is_file():
        return target
    partial = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                              "--no-deps", "--target", str(partial), f"pynetdicom=={OLDEST}"],
                             capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        shutil.rmtree(partial, ignore_errors=True)
        pytest.skip(f"pip could not install pynetdicom {OLDEST} in 180 s (no package index reachable?)")
    if out.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        pytest.skip(f"pip could not install pynetdicom {OLDEST} (no package index reachable?): "
                    f"{out.stderr.strip()[-300:]}")
    try:
        partial.rename(target)  # whole or not at all; another run may have won the race
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def test_handlers_with_the_oldest_pynetdicom(oldest_pynetdicom):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(oldest_pynetdicom), *filter(None, [os.environ.get("PYTHONPATH")])]))
    probe = subprocess.run([sys.executable, "-c", "import pynetdicom; print(pynetdicom.__version__, pynetdicom.__file__)"],
                           env=env, capture_output=True, text=True, timeout=60)
    version, path = probe.stdout.split()
    assert version == OLDEST and Path(path).is_relative_to(oldest_pynetdicom), probe.stdout + probe.stderr
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-W", "ignore::DeprecationWarning", *(str(HERE / m) for m in MODULES)],
                         env=env, cwd=HERE.parent, capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout.splitlines()[-1], run.stdout[-2000:]
