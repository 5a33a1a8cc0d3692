"""Logging set-up of ``dicomaccel serve``, and the access log.

Every HTTP request and every DICOM association leaves one line on the ``dicomaccel.access``
logger at INFO, with its outcome: for STOW-RS the HTTP status, the instances stored, warned
and failed, each Warning and Failure Reason, the bytes received and the time; for an
association the AE titles, the peer and whether it was accepted. With ``--log-format json``
every line (access or not) is one JSON object, for log collectors.
"""

from __future__ import annotations

import json
import logging
import time

__all__ = ["ACCESS", "configure", "access"]

ACCESS = logging.getLogger("dicomaccel.access")
# LogRecord attributes that are not fields of the event.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and the record's extras."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(level: str, fmt: str) -> None:
    """Log to stderr at ``level`` as ``text`` (one readable line) or ``json``."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def access(event: str, message: str, **fields) -> None:
    """One access-log line: ``event`` (``"stow"``, ``"association"``) and its fields."""
    if ACCESS.isEnabledFor(logging.INFO):
        ACCESS.info(message, extra={"event": event, **fields})
