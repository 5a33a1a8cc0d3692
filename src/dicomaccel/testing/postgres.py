"""A throwaway PostgreSQL cluster for tests and measurements: Debian's ``postgresql`` package
(``initdb`` and ``pg_ctl``), a data directory in a temp directory, listening on 127.0.0.1 only.

PostgreSQL refuses to run as root, so under root the cluster belongs to the ``postgres`` system
user (``runuser``). Durability is off in the cluster (``fsync=off``) unless asked for: tests
kill dicomaccel nodes, never the database's host; measurements ask for it.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass

__all__ = ["PostgresCluster", "postgres_bin", "start_cluster"]

SUPERUSER = "dicomaccel"


def postgres_bin() -> str | None:
    """The directory of the newest installed ``initdb``/``pg_ctl``, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit() else 0)
    if found:
        return os.path.dirname(found[-1])
    which = shutil.which("pg_ctl")
    return os.path.dirname(which) if which else None


@dataclass
class PostgresCluster:
    bin_dir: str
    data_dir: str
    port: int
    run_as: list[str]
    options: str = ""  # the server's command-line options (postgres -c ...)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = "t" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # a generated identifier, not input
        return self.url(name)

    def pg_ctl(self, *args: str) -> None:
        subprocess.run([*self.run_as, os.path.join(self.bin_dir, "pg_ctl"), "-D", self.data_dir,
                        "-w", "-s", *args], check=True, capture_output=True, timeout=60)

    def restart(self, mode: str = "fast") -> None:
        """Stop (fast: sessions are ended; immediate: the server is killed and recovers from
        its log at start) and start again, with the same options."""
        self.pg_ctl("restart", "-m", mode, "-l", self._log)

    def halt(self, mode: str = "fast") -> None:
        """Stop the server, keeping the cluster (:meth:`start` starts it again)."""
        self.pg_ctl("stop", "-m", mode)

    def start(self, extra: str = "") -> None:
        """Start the stopped server with its options and ``extra`` ones (``-c name=value``,
        which beat ``postgresql.auto.conf``)."""
        self.pg_ctl("start", "-l", self._log, "-o", f"{self.options} {extra}".strip())

    @property
    def _log(self) -> str:
        return os.path.join(os.path.dirname(self.data_dir), "server.log")

    def stop(self) -> None:
        self.pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(os.path.dirname(self.data_dir), ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(durable: bool = False) -> PostgresCluster:
    """initdb and start a cluster on a free 127.0.0.1 port (no Unix socket); trust
    authentication for the superuser :data:`SUPERUSER`; ``durable``: PostgreSQL's defaults
    (commits flushed), else ``fsync=off``.

    Raises
    ------
    RuntimeError
        No PostgreSQL binaries, or (as root) no ``postgres`` user to run them as.
    """
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed (Debian package: postgresql)")
    run_as: list[str] = []
    base = tempfile.mkdtemp(prefix="dicomaccel-pg.")
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("running as root and there is no postgres user to run PostgreSQL as") from None
        os.chown(base, pw.pw_uid, pw.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data_dir = os.path.join(base, "data")
    subprocess.run([*run_as, os.path.join(bin_dir, "initdb"), "-D", data_dir, "-U", SUPERUSER,
                    "--auth=trust", "--no-sync", "--encoding=UTF8", "--locale=C"],
                   check=True, capture_output=True, timeout=120)
    port = _free_port()
    options = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories='' "
               "-c max_connections=200" + ("" if durable else " -c fsync=off -c full_page_writes=off"))
    cluster = PostgresCluster(bin_dir, data_dir, port, run_as, options)
    cluster.start()
    return cluster
