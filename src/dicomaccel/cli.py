"""``dicomaccel`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__


def _size(text: str) -> int:
    """A byte count with an optional binary suffix: 512M, 2G, 2GiB."""
    value = text.strip().lower()
    for suffix in ("ib", "b"):
        if value.endswith(suffix) and len(value) > len(suffix):
            value = value[: -len(suffix)]
            break
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    try:
        size = int(float(value[:-1]) * units[value[-1]]) if value and value[-1] in units else int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if size < 0:
        raise argparse.ArgumentTypeError(f"a size cannot be negative: {text!r}")
    return size


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicomaccel", description="DICOM STOW-RS and C-GET engine")
    parser.add_argument("--version", action="version", version=f"dicomaccel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the services on the embedded archive")
    serve.add_argument("--data", type=Path, default=Path("dicomaccel-data"),
                       help="archive directory (default: ./dicomaccel-data)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--http-port", type=int, default=8080, help="STOW-RS port (default: 8080)")
    serve.add_argument("--dimse-port", type=int, default=11112, help="C-GET SCP port (default: 11112)")
    serve.add_argument("--ae-title", default="DICOMACCEL", help="our AE title (default: DICOMACCEL)")
    serve.add_argument("--require-called-ae", action="store_true",
                       help="reject associations whose Called AE Title is not ours (default: accept any)")
    serve.add_argument("--calling-ae", action="append", default=None, metavar="AE",
                       help="accept associations only from this Calling AE Title (repeatable; default: any)")
    serve.add_argument("--max-associations", type=_positive, default=64,
                       help="concurrent DICOM associations; beyond it A-ASSOCIATE-RJ (default: 64)")
    serve.add_argument("--artim-timeout", type=_seconds, default=30.0,
                       help="PS3.8 ARTIM timer in seconds (default: 30)")
    serve.add_argument("--idle-timeout", type=_seconds, default=300.0,
                       help="abort an association idle this many seconds (default: 300)")
    serve.add_argument("--fsync", choices=("always", "never"), default="always",
                       help="fsync each instance before acknowledging it (default: always)")
    serve.add_argument("--max-concurrent-stores", type=_positive, default=None,
                       help="STOW-RS requests storing at once; more wait in a FIFO queue (default: 2 x CPUs)")
    serve.add_argument("--store-queue-limit", type=_positive, default=64,
                       help="requests allowed to wait for a store slot before 503 (default: 64)")
    serve.add_argument("--store-queue-wait", type=_seconds, default=30.0,
                       help="seconds a request may wait for a store slot before 503 (default: 30)")
    serve.add_argument("--max-request-size", type=_size, default=None,
                       help="largest STOW-RS request body, e.g. 4G (default: unlimited)")
    serve.add_argument("--max-instance-size", type=_size, default=None,
                       help="largest single instance, e.g. 2G (default: unlimited)")
    serve.add_argument("--body-timeout", type=_seconds, default=60.0,
                       help="seconds a STOW-RS upload may send nothing before 408 (default: 60)")
    serve.add_argument("--min-free-space", type=_size, default=256 * 2**20,
                       help="free disk space kept in reserve; below it stores fail with A710 (default: 256M)")
    serve.add_argument("--workers", type=_positive, default=1,
                       help="processes serving STOW-RS on the shared port (the first also serves "
                            "DIMSE); store limits apply per worker (default: 1)")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from .server import ServeConfig, run

        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
        config = ServeConfig(
            data=args.data,
            host=args.host,
            http_port=args.http_port,
            dimse_port=args.dimse_port,
            ae_title=args.ae_title,
            require_called_ae=args.require_called_ae,
            calling_ae_allow=tuple(args.calling_ae) if args.calling_ae else None,
            max_associations=args.max_associations,
            artim_timeout=args.artim_timeout,
            idle_timeout=args.idle_timeout,
            fsync=args.fsync == "always",
            max_concurrent_stores=args.max_concurrent_stores,
            store_queue_limit=args.store_queue_limit,
            store_queue_wait=args.store_queue_wait,
            max_request_bytes=args.max_request_size,
            max_instance_bytes=args.max_instance_size,
            body_timeout=args.body_timeout,
            min_free_bytes=args.min_free_space,
            log_level=args.log_level,
            workers=args.workers,
        )
        return run(config)
    return 2


if __name__ == "__main__":
    sys.exit(main())
