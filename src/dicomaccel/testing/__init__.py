"""Test helpers for dicomaccel and for code that embeds it.

Imported from here (standard library only):

- :func:`implementations`: the kernel modules in use, the pure-Python twin (``"py"``) and the
  compiled module (``"c"``), as the environment switches of :mod:`dicomaccel._compat` select them;
- :func:`start_server` / :class:`RunningServer`: ``dicomaccel serve`` on ephemeral 127.0.0.1 ports;
  :class:`SmallFilesystem`: a small disk of its own for it, to fill up;
- :func:`multipart`, :func:`post`, :func:`run_asgi`: STOW-RS request bodies and two ways to send them;
  :func:`warnings_only`: whether a STOW-RS answer stored everything;
- :func:`dcmtk_program`, :func:`wait_until`; :func:`worker_pids`, :func:`connections_held` and
  :func:`at_once`: which worker of ``serve --workers N`` takes connections opened together.

Submodules that need the declared dependencies: :mod:`dicomaccel.testing.files` (pydicom, NumPy:
data sets and PS3.10 files), :mod:`dicomaccel.testing.pdu` (pydicom: hand-built PS3.8 bytes),
:mod:`dicomaccel.testing.scu` (pynetdicom: a C-GET SCU); :mod:`dicomaccel.testing.query_index` (a
synthetic index of many studies, for search latency).
"""

from __future__ import annotations

from .kernels import implementations
from .server import (RunningServer, SmallFilesystem, at_once, connections_held, dcmtk_program, memory_kib, start_server,
                     wait_until, worker_pids)
from .stow import BOUNDARY, CONTENT_TYPE, multipart, post, run_asgi, warnings_only

__all__ = [
    "BOUNDARY",
    "CONTENT_TYPE",
    "RunningServer",
    "SmallFilesystem",
    "at_once",
    "connections_held",
    "dcmtk_program",
    "memory_kib",
    "implementations",
    "multipart",
    "post",
    "run_asgi",
    "start_server",
    "wait_until",
    "warnings_only",
    "worker_pids",
]
