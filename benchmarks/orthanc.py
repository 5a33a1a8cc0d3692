"""Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) as a benchmark peer.

    apt-get install -y orthanc orthanc-dicomweb

:class:`OrthancPeer` has the interface of the peers in :mod:`benchmarks.peers`: ``start(files)``
runs ``/usr/sbin/Orthanc`` on a configuration generated in its work directory (storage and index
there, the DICOMweb plugin loaded, free HTTP and DICOM ports, no authentication), loads ``files``
over STOW-RS and returns; ``stop()`` ends it by PID. Orthanc's C-GET SCP answers only callers
listed in ``DicomModalities``, so the configuration lists the AE titles of the benchmark's SCUs.

Orthanc 1.10 binds its HTTP and DICOM ports on every interface and has no option to bind one
address: run it in a network namespace that has only loopback (``unshare -n``), as
:mod:`benchmarks.run` does.
"""

from __future__ import annotations

import glob
import http.client
import json
import os
import subprocess
import time
from pathlib import Path

from benchmarks.peers import Peer, PeerUnavailable, _Lines, dcmtk_env, free_port, listening, spawn, stow

ORTHANC = "/usr/sbin/Orthanc"
# Debian installs the plugin as /usr/lib/orthanc/libOrthancDicomWeb.so.<version> and links it
# into /usr/share/orthanc/plugins, the folder its packaged configuration loads.
PLUGIN_GLOBS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so*", "/usr/lib/orthanc/libOrthancDicomWeb.so*")
STOW_ROOT = "/dicom-web/"


def dicomweb_plugin() -> str | None:
    """Path of the DICOMweb plugin shared library, or None if ``orthanc-dicomweb`` is absent."""
    for pattern in PLUGIN_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def version() -> str:
    """``Orthanc x.y.z + DICOMweb plugin a.b`` as dpkg reports them, or '' if not installed."""
    out = []
    for package in ("orthanc", "orthanc-dicomweb"):
        done = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True)
        if done.returncode == 0 and done.stdout:
            out.append(f"{package} {done.stdout}")
    return ", ".join(out)


class OrthancPeer(Peer):
    """Orthanc with the DICOMweb plugin: STOW-RS, C-STORE SCP and C-GET SCP."""

    name = "orthanc"
    ae_title = "ORTHANC"
    # Callers Orthanc must know for C-GET (and for C-STORE, which it would accept anyway).
    client_titles = {"getscu": "GETSCU", "storescu": "STORESCU", "pynetdicom": "PYNETDICOM", "findscu": "FINDSCU"}

    @classmethod
    def unavailable(cls) -> str | None:
        if not os.access(ORTHANC, os.X_OK):
            return "Orthanc not installed (apt-get install -y orthanc orthanc-dicomweb)"
        if dicomweb_plugin() is None:
            return "Orthanc DICOMweb plugin not installed (apt-get install -y orthanc-dicomweb)"
        return None

    def config(self) -> dict:
        """The configuration Orthanc runs with; every option not set here keeps Orthanc's default."""
        store = self.workdir / "db"
        return {
            "Name": "dicomaccel-compare",
            "StorageDirectory": str(store),
            "IndexDirectory": str(store),
            "Plugins": [dicomweb_plugin()],
            # QidoCaseSensitive: the plugin's default (true) matches Patient Name case-sensitively;
            # PS3.4 C.2.2.2.4 lets PN matching ignore case and dicomaccel does, so Orthanc is
            # configured alike and a QIDO-RS search finds the same studies on both.
            "DicomWeb": {"Enable": True, "Root": STOW_ROOT, "EnableWado": False, "QidoCaseSensitive": False},
            "HttpPort": self.http_port,
            "DicomPort": self.port,
            "DicomAet": self.ae_title,
            "AuthenticationEnabled": False,
            # Only clients on this host talk to it (and its namespace has only loopback).
            "RemoteAccessAllowed": False,
            "DicomModalities": {key: [title, "127.0.0.1", 104] for key, title in self.client_titles.items()},
            # Jobs and the Orthanc Explorer play no part in STOW-RS, C-STORE or C-GET; saving the
            # jobs registry would only add writes at shutdown.
            "SaveJobs": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "HttpCompressionEnabled": False,
            # Defaults spelled out because the report quotes them: files are fsync'ed before a
            # store is acknowledged, uncompressed on disk, and instances are not transcoded.
            "SyncStorageArea": True,
            "StorageCompression": False,
        }

    def start(self, files: list[Path]) -> None:
        if reason := self.unavailable():
            raise PeerUnavailable(reason)
        self.http_port, self.port = free_port(), free_port()
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=2))
        # Orthanc's DICOM side is DCMTK's dcmnet, which leaves Nagle's algorithm on unless
        # TCP_NODELAY=1 is in the environment (its HTTP side has the TcpNoDelay option, on by default).
        self.proc = spawn([ORTHANC, "--no-jobs", str(cfg)], log=self.log, env=dcmtk_env(), cwd=self.workdir)
        _Lines(self.proc, self.log)  # drains stdout into the log so the pipe never fills
        deadline = time.monotonic() + 60
        while not (listening(self.port) and self._http_ready()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise PeerUnavailable(f"Orthanc did not start: {self.log_tail(800)}")
            time.sleep(0.05)
        if files:
            stow(self.http_port, files, path=STOW_ROOT + "studies")

    def _http_ready(self) -> bool:
        try:
            return self.get_json("/system") is not None
        except (OSError, http.client.HTTPException):
            return False

    def get_json(self, path: str):
        """GET ``path`` from the REST API; the decoded JSON, or None unless 200."""
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=30)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        return json.loads(body) if resp.status == 200 else None

    def instance_count(self) -> int:
        """Instances in Orthanc's index (REST ``/statistics``)."""
        return int(self.get_json("/statistics")["CountInstances"])
