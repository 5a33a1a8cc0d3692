"""``dicomaccel`` command line."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from . import __version__
from .config import DEFAULTS, LOG_LEVELS, VALIDATION_MODES, WORKER_CPU_AFFINITY, ConfigError, as_toml, load_toml, merged, parse_size
from .config import check_index_url, check_node_id, parse_move_destination
from .access import credentials
from .logs import configure
from .syntaxes import is_valid_uid
from .urls import check_public_url


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _interval(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, 0 or more: {text!r}")
    return value


def _destination(text: str) -> tuple[str, str, int]:
    try:
        return parse_move_destination(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _uid(text: str) -> str:
    if not is_valid_uid(text):
        raise argparse.ArgumentTypeError(f"not a UID: {text!r}")
    return text


def _public_url(text: str) -> str:
    try:
        return check_public_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _index_url(text: str) -> str:
    try:
        return check_index_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _node_id(text: str) -> str:
    try:
        return check_node_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _mib(n: int) -> str:
    return f"{n >> 20}M"


def _parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    parser = argparse.ArgumentParser(prog="dicomaccel", description="DICOM STOW-RS and C-GET engine")
    parser.add_argument("--version", action="version", version=f"dicomaccel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    # Options default to "not given" so that a --config file can set what the flags do not;
    # the defaults shown come from dicomaccel.config.DEFAULTS, their one source.
    serve = sub.add_parser("serve", help="run the services on the embedded archive",
                           argument_default=argparse.SUPPRESS)
    serve.add_argument("--config", type=Path, default=None, metavar="FILE",
                       help="TOML file of options (keys are the long option names); flags override it")
    serve.add_argument("--data", metavar="DIR", type=Path, help=f"archive directory (default: ./{d.data})")
    serve.add_argument("--index", metavar="URL", type=_index_url,
                       help="the index: postgresql://USER@HOST:PORT/DB, shared by every node on the same "
                            "--data directory (also DICOMACCEL_INDEX; default: the embedded SQLite file "
                            "in --data)")
    serve.add_argument("--node-id", metavar="NAME", type=_node_id,
                       help="this node's name among those sharing --data with a shared --index; start-up "
                            "cleans only its temp files (default: the host name)")
    serve.add_argument("--host", help=f"address to bind (default: {d.host})")
    serve.add_argument("--http-port", metavar="PORT", type=int, help=f"STOW-RS port (default: {d.http_port})")
    serve.add_argument("--dimse-port", metavar="PORT", type=int, help=f"C-GET SCP port (default: {d.dimse_port})")
    serve.add_argument("--ae-title", metavar="AE", help=f"our AE title (default: {d.ae_title})")
    serve.add_argument("--require-called-ae", action="store_true",
                       help="reject associations whose Called AE Title is not ours (default: accept any)")
    serve.add_argument("--calling-ae", action="append", dest="calling_ae_allow", metavar="AE",
                       help="accept associations only from this Calling AE Title (repeatable; default: any)")
    serve.add_argument("--max-associations", metavar="N", type=_positive,
                       help=f"concurrent DICOM associations, all workers together; beyond it A-ASSOCIATE-RJ "
                            f"(default: {d.max_associations})")
    serve.add_argument("--artim-timeout", metavar="S", type=_seconds,
                       help=f"PS3.8 ARTIM timer in seconds (default: {d.artim_timeout:g})")
    serve.add_argument("--idle-timeout", metavar="S", type=_seconds,
                       help=f"abort an association idle this many seconds (default: {d.idle_timeout:g})")
    serve.add_argument("--pending-interval", metavar="S", type=_interval,
                       help=f"at most one Pending C-GET/C-MOVE response per S seconds; 0: one after "
                            f"every sub-operation (default: {d.pending_interval:g})")
    serve.add_argument("--fsync", choices=("always", "never"),
                       help="make each instance durable before acknowledging it (default: always)")
    serve.add_argument("--max-concurrent-stores", metavar="N", type=_positive,
                       help="STOW-RS requests storing at once per worker; more wait in a FIFO queue "
                            "(default: 2 x CPUs)")
    serve.add_argument("--store-queue-limit", metavar="N", type=_positive,
                       help=f"requests allowed to wait for a store slot before 503 (default: {d.store_queue_limit})")
    serve.add_argument("--store-queue-wait", metavar="S", type=_seconds,
                       help=f"seconds a request may wait for a store slot before 503 (default: {d.store_queue_wait:g})")
    serve.add_argument("--max-request-size", metavar="SIZE", type=_size, dest="max_request_bytes",
                       help="largest STOW-RS request body, e.g. 4G (default: unlimited)")
    serve.add_argument("--max-instance-size", metavar="SIZE", type=_size, dest="max_instance_bytes",
                       help="largest single instance, e.g. 2G (default: unlimited)")
    serve.add_argument("--body-timeout", metavar="S", type=_seconds,
                       help=f"seconds a STOW-RS upload may send nothing before 408 (default: {d.body_timeout:g})")
    serve.add_argument("--min-upload-rate", metavar="SIZE", type=_size,
                       help=f"bytes/s a STOW-RS body must average once 10 s have passed; slower gets 408 "
                            f"and frees its slot, 0 for none (default: {d.min_upload_rate >> 10}K)")
    serve.add_argument("--header-timeout", metavar="S", type=_seconds,
                       help=f"seconds a request's header section may take to arrive before 408 "
                            f"(default: {d.header_timeout:g})")
    serve.add_argument("--max-header-size", metavar="SIZE", type=_size, dest="max_header_bytes",
                       help=f"largest request header section; beyond it 431 (default: {d.max_header_bytes >> 10}K)")
    serve.add_argument("--keepalive-timeout", metavar="S", type=_seconds,
                       help=f"close an idle keep-alive connection after this many seconds "
                            f"(default: {d.keepalive_timeout:g})")
    serve.add_argument("--max-connections", metavar="N", type=_positive,
                       help=f"open HTTP connections per worker; beyond it 503 (default: {d.max_connections})")
    serve.add_argument("--min-free-space", metavar="SIZE", type=_size, dest="min_free_bytes",
                       help=f"free disk space kept in reserve; below it stores fail with A710 "
                            f"(default: {_mib(d.min_free_bytes)})")
    serve.add_argument("--workers", metavar="N", type=_positive,
                       help="processes each serving DICOMweb and DIMSE on the shared ports; "
                            f"store limits apply per worker (default: {d.workers})")
    serve.add_argument("--worker-cpu-affinity", choices=WORKER_CPU_AFFINITY,
                       help="auto: each worker process runs, with all its threads, on one CPU of those "
                            "the server may use (worker k on the k-th, round robin), so its threads hand "
                            "work to each other without waking another CPU; off: the scheduler places "
                            f"them (default: {d.worker_cpu_affinity})")
    serve.add_argument("--tls-cert", metavar="FILE", type=Path,
                       help="PEM certificate (chain): serve HTTPS on the HTTP port (default: plain HTTP)")
    serve.add_argument("--tls-key", metavar="FILE", type=Path, help="PEM private key of --tls-cert")
    serve.add_argument("--tls-ca", metavar="FILE", type=Path, help="PEM CA certificates that client certificates are checked against")
    serve.add_argument("--tls-require-client-cert", action="store_true", help="refuse TLS clients without a valid certificate")
    serve.add_argument("--dimse-tls-port", metavar="PORT", type=int,
                       help="also accept DICOM over TLS on this port (2762 is registered for it)")
    serve.add_argument("--auth-token-file", metavar="FILE", type=Path,
                       help="require a bearer token from this file (one per line, optional scopes: store, "
                            "read, admin; 'sha256:HEX' for a hashed token); default: no authentication")
    serve.add_argument("--jwt-jwks", metavar="FILE", type=Path,
                       help="also accept OAuth2/OIDC bearer JWTs signed by a key of this JWKS file "
                            "(scopes from the 'scope' claim); needs --jwt-issuer and --jwt-audience")
    serve.add_argument("--jwt-issuer", metavar="ISS", help="the 'iss' every JWT must carry")
    serve.add_argument("--jwt-audience", metavar="AUD", help="the 'aud' every JWT must carry")
    serve.add_argument("--validation", choices=VALIDATION_MODES,
                       help="an instance that does not match its IOD: stored with warning B007 (warn), "
                            f"refused with A900 (reject), or not checked (off) (default: {d.validation})")
    serve.add_argument("--accept-sop-class", action="append", dest="accept_sop_classes", metavar="UID",
                       type=_uid, help="also accept this SOP Class (repeatable; default: the Storage SOP "
                                       "Classes of PS3.4 Annex B)")
    serve.add_argument("--reject-sop-class", action="append", dest="reject_sop_classes", metavar="UID",
                       type=_uid, help="refuse this SOP Class with 0122 (repeatable)")
    serve.add_argument("--move-destination", action="append", dest="move_destinations", metavar="AE=HOST:PORT",
                       type=_destination, help="a C-MOVE destination, also where Storage Commitment reports "
                                               "go (repeatable; others get A801; AE=dicom+tls://HOST:PORT: "
                                               "over TLS, verified against --tls-ca, offering --tls-cert; "
                                               "default: none)")
    serve.add_argument("--cors-origin", action="append", dest="cors_origins", metavar="ORIGIN",
                       help="let browser viewers from this origin (e.g. https://viewer.example:3000, or *) "
                            "use the DICOMweb services: CORS headers and OPTIONS preflight (repeatable; "
                            "default: none)")
    serve.add_argument("--public-url", metavar="URL", type=_public_url,
                       help="the URL clients reach the HTTP services at (e.g. https://pacs.example.org), "
                            "written into Retrieve URLs and BulkDataURIs (default: the request's scheme, "
                            "Host and root path)")
    serve.add_argument("--log-level", choices=LOG_LEVELS, help=f"(default: {d.log_level}); info adds the access log")
    serve.add_argument("--log-format", choices=("text", "json"),
                       help=f"one readable line, or one JSON object, per log record (default: {d.log_format})")

    check = sub.add_parser("check-config", help="check a configuration file and print the effective settings")
    check.add_argument("file", type=Path, metavar="FILE")

    index = sub.add_parser("index", help="copy an archive's index to PostgreSQL, or check it against the files")
    tools = index.add_subparsers(dest="index_command", required=True)
    migrate = tools.add_parser("migrate", help="copy an SQLite index into a PostgreSQL database (the files stay "
                                              "where they are); run it with no server writing")
    migrate.add_argument("--from", dest="source", metavar="sqlite:PATH", required=True,
                         help="the SQLite index file, e.g. sqlite:/var/lib/dicomaccel/index.sqlite3")
    migrate.add_argument("--to", dest="target", metavar="URL", type=_index_url, required=True,
                         help="postgresql://USER@HOST:PORT/DB")
    verify = tools.add_parser("verify", help="check the index against the files: rows whose file is missing or "
                                            "differs, files no row names; exit status 1 if any")
    verify.add_argument("--data", metavar="DIR", type=Path, default=d.data, help=f"archive directory (default: ./{d.data})")
    verify.add_argument("--index", metavar="URL", type=_index_url, default=d.index,
                        help="postgresql://USER@HOST:PORT/DB (also DICOMACCEL_INDEX; default: the SQLite file in --data)")
    verify.add_argument("--checksums", action="store_true", help="also compare every file's CRC-32 (reads every file)")
    return parser


def _index_command(args: dict) -> int:
    from .archive.maintenance import copy_index, verify

    if args["index_command"] == "migrate":
        from .archive.index import SQLiteIndex
        from .archive.postgres_index import PostgresIndex

        kind, _, path = args["source"].partition(":")
        if kind != "sqlite" or not os.path.isfile(path):
            print(f"dicomaccel: --from must be sqlite:PATH of an existing index file, not {args['source']!r}",
                  file=sys.stderr)
            return 2
        root = os.path.dirname(os.path.abspath(path))  # rows name files relative to the data directory
        source = SQLiteIndex(path, root, fsync=False)
        try:
            target = PostgresIndex(args["target"], root)
        except OSError as exc:
            source.close()
            print(f"dicomaccel: {exc}", file=sys.stderr)
            return 1
        try:
            copied, skipped = copy_index(source, target)
        finally:
            target.close()
            source.close()
        print(f"dicomaccel: {copied} row(s) copied, {skipped} already there")
        return 0
    from .archive import Archive

    url = args["index"] or os.environ.get("DICOMACCEL_INDEX") or None
    if not os.path.isdir(args["data"]):
        print(f"dicomaccel: no archive directory {args['data']}", file=sys.stderr)
        return 2
    try:
        # No recovery: a server may be running on the archive.
        archive = Archive(args["data"], index=url, recover=False)
    except OSError as exc:
        print(f"dicomaccel: {exc}", file=sys.stderr)
        return 1
    try:
        found = verify(archive.root, archive.index, checksums=args["checksums"])
    finally:
        archive.close()
    for sop, rel in found.missing:
        print(f"missing file: {rel} (SOP Instance UID {sop})")
    for sop, rel in found.damaged:
        print(f"file differs from its row: {rel} (SOP Instance UID {sop})")
    for rel in found.orphans:
        print(f"orphan (no row): {rel}")
    print(f"dicomaccel: {found.rows} row(s), {found.files} file(s): {len(found.missing)} missing, "
          f"{len(found.damaged)} differing, {len(found.orphans)} orphan(s)")
    return 0 if found.clean else 1


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = vars(parser.parse_args(argv))
    command = args.pop("command")
    if command == "check-config":
        try:
            config = merged(load_toml(args["file"]), {})
        except ConfigError as exc:
            print(f"dicomaccel: {exc}", file=sys.stderr)
            return 2
        print(f"# {args['file']}: valid; the effective settings (defaults where it sets nothing)")
        print(as_toml(config), end="")
        return 0
    if command == "index":
        return _index_command(args)
    if command == "serve":
        from .server import run

        config_file = args.pop("config")
        if "fsync" in args:
            args["fsync"] = args["fsync"] == "always"
        for listed in ("calling_ae_allow", "accept_sop_classes", "reject_sop_classes", "cors_origins",
                       "move_destinations"):
            if listed in args:
                args[listed] = tuple(args[listed])
        try:
            file_values = load_toml(config_file) if config_file else {}
            # The environment's index comes between the file's and the flag's.
            if os.environ.get("DICOMACCEL_INDEX"):
                try:
                    file_values["index"] = check_index_url(os.environ["DICOMACCEL_INDEX"])
                except ValueError as exc:
                    raise ConfigError(f"DICOMACCEL_INDEX: {exc}") from None
            config = merged(file_values, args)
            if config.index is not None and importlib.util.find_spec("psycopg_pool") is None:
                raise ConfigError("the PostgreSQL index needs psycopg 3: pip install 'dicomaccel[postgresql]'")
            credentials(config)  # refuse a bad token or JWKS file before serving
        except ConfigError as exc:
            print(f"dicomaccel: {exc}", file=sys.stderr)
            return 2
        configure(config.log_level, config.log_format)
        return run(config)
    return 2


if __name__ == "__main__":
    sys.exit(main())
