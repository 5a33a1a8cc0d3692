"""``ServeConfig``: every default of ``dicomaccel serve`` in one place.

The command line and a TOML file fill it (defaults, then the file given with ``--config``,
then the ``DICOMACCEL_INDEX`` environment variable for ``index``, then flags). The library entry points (``Archive``, ``create_app``, ``start_dimse_server``)
take their keyword defaults from :data:`DEFAULTS`, so a value is written once.

A configuration file uses the long option names as keys::

    # dicomaccel.toml
    data = "/var/lib/dicomaccel"
    index = "postgresql://dicomaccel@db.example:5432/dicomaccel"   # default: SQLite in data
    host = "0.0.0.0"
    http-port = 8080
    workers = 2
    calling-ae = ["MODALITY1", "WORKSTATION"]
    max-instance-size = "2G"
    fsync = "always"

    [[move_destination]]          # --move-destination WS1=10.0.0.5:104
    ae = "WS1"
    host = "10.0.0.5"
    port = 104

    [[move_destination]]          # --move-destination PACS2=dicom+tls://pacs2.example:2762
    ae = "PACS2"
    host = "pacs2.example"        # its certificate must name it and chain to tls-ca
    port = 2762
    tls = true
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .syntaxes import is_valid_uid
from .urls import check_public_url

__all__ = ["ServeConfig", "DEFAULTS", "ConfigError", "parse_size", "load_toml", "merged", "LOG_LEVELS",
           "VALIDATION_MODES", "WORKER_CPU_AFFINITY", "as_toml", "QIDO_MAX_RESULTS", "check_index_url", "check_node_id",
           "without_password", "MoveDestination", "parse_move_destination"]


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message says which and why."""


class MoveDestination(NamedTuple):
    """A C-MOVE destination (also where Storage Commitment reports go on a new association):
    its AE title, where it listens and whether the association is opened over TLS (PS3.15
    B.9, :func:`dicomaccel.tls.client_context` with ``tls-ca`` and ``tls-cert``/``tls-key``)."""

    ae: str
    host: str
    port: int
    tls: bool = False


@dataclass
class ServeConfig:
    """Options of ``dicomaccel serve`` (the README's configuration table explains each)."""

    data: Path = Path("dicomaccel-data")
    # The index: None for the embedded SQLite file in the data directory, or a PostgreSQL URL
    # (postgresql://USER@HOST:PORT/DB) several nodes share, with the data directory.
    index: str | None = None
    # This node's name among the nodes sharing a data directory (its temp files carry it).
    node_id: str = dataclasses.field(default_factory=socket.gethostname)
    host: str = "127.0.0.1"
    http_port: int = 8080
    dimse_port: int = 11112
    ae_title: str = "DICOMACCEL"
    max_associations: int = 64
    require_called_ae: bool = False
    calling_ae_allow: tuple[str, ...] | None = None
    artim_timeout: float = 30.0
    idle_timeout: float = 300.0
    # At most one Pending C-GET / C-MOVE response per this many seconds (PS3.4 C.4.2.3.1 and
    # C.4.3.3 make them optional); 0: one after every sub-operation.
    pending_interval: float = 0.1
    fsync: bool = True
    # STOW-RS requests storing at once per worker; None: twice the CPU count.
    max_concurrent_stores: int | None = None
    store_queue_limit: int = 64
    store_queue_wait: float = 30.0
    max_request_bytes: int | None = None
    max_instance_bytes: int | None = None
    body_timeout: float = 60.0
    min_upload_rate: int = 8 << 10  # bytes/s a STOW-RS body must average after 10 s; 0: none
    # The HTTP front end (dicomaccel.http_server): what one connection may hold.
    header_timeout: float = 10.0
    max_header_bytes: int = 64 << 10
    keepalive_timeout: float = 75.0
    max_connections: int = 1024
    min_free_bytes: int = 256 * 2**20
    log_level: str = "info"
    log_format: str = "text"
    workers: int = 1
    # WORKER_CPU_AFFINITY: "auto" runs each worker process, all its threads, on one CPU of those
    # the server may use (worker k on the k-th, round robin); "off" leaves it to the scheduler.
    worker_cpu_affinity: str = "auto"
    # TLS (dicomaccel.tls): HTTPS on the HTTP port, DICOM TLS on dimse_tls_port.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_require_client_cert: bool = False
    dimse_tls_port: int | None = None
    # [tls-client-ae] table: client certificate subject Common Name -> the calling AE titles
    # it may use on the DICOM TLS port. None: any (the allow-list and permissions still apply).
    tls_client_ae: dict[str, tuple[str, ...]] | None = None
    # Bearer tokens for the HTTP services (dicomaccel.access); None: no authentication.
    auth_token_file: Path | None = None
    # OAuth2/OIDC bearer JWTs checked against a local JWKS file (all three or none).
    jwt_jwks: Path | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    # Store policy (dicomaccel.policy.store): IOD validation and the accepted SOP Classes.
    validation: str = "warn"
    accept_sop_classes: tuple[str, ...] = ()
    reject_sop_classes: tuple[str, ...] = ()
    # [ae-permissions] table of the configuration file: calling AE title -> what it may do
    # over DIMSE (DIMSE_PERMISSIONS: "get", "find", "store", "move", "commit"). None: everything.
    ae_permissions: dict[str, tuple[str, ...]] | None = None
    # [[coerce]] and [[discard]] tables of the configuration file (dicomaccel.policy.rules).
    coerce: tuple[dict, ...] = ()
    discard: tuple[dict, ...] = ()
    # C-MOVE destinations (--move-destination AE=HOST:PORT or AE=dicom+tls://HOST:PORT,
    # [[move_destination]] tables): a C-MOVE to any other AE gets A801.
    move_destinations: tuple[MoveDestination, ...] = ()
    # Origins browser viewers may read the DICOMweb services from (dicomaccel.cors); "*" for
    # any; empty: no CORS headers.
    cors_origins: tuple[str, ...] = ()
    # The URL clients reach the HTTP services at (dicomaccel.urls): written into Retrieve URLs
    # and BulkDataURIs instead of the request's scheme, Host and root_path. None: the request's.
    public_url: str | None = None


DEFAULTS = ServeConfig()

# QIDO-RS: the most matches one response holds; a request's limit may ask for fewer, and more
# matches than are returned are announced with a Warning header (PS3.18 §8.3.4.4).
QIDO_MAX_RESULTS = 1000

# Configuration file key (the long option name) -> field, and how its value is read.
LOG_LEVELS = ("debug", "info", "warning", "error")
VALIDATION_MODES = ("off", "warn", "reject")
WORKER_CPU_AFFINITY = ("auto", "off")
DIMSE_PERMISSIONS = ("get", "find", "store", "move", "commit")  # the DIMSE services an [ae-permissions] entry can grant
_KEYS = {
    "data": ("data", "path"),
    "index": ("index", "index"),
    "node-id": ("node_id", "node_id"),
    "host": ("host", "str"),
    "http-port": ("http_port", "port"),
    "dimse-port": ("dimse_port", "port"),
    "ae-title": ("ae_title", "str"),
    "max-associations": ("max_associations", "positive"),
    "require-called-ae": ("require_called_ae", "bool"),
    "calling-ae": ("calling_ae_allow", "list"),
    "artim-timeout": ("artim_timeout", "seconds"),
    "idle-timeout": ("idle_timeout", "seconds"),
    "pending-interval": ("pending_interval", "interval"),
    "fsync": ("fsync", "fsync"),
    "max-concurrent-stores": ("max_concurrent_stores", "positive"),
    "store-queue-limit": ("store_queue_limit", "positive"),
    "store-queue-wait": ("store_queue_wait", "seconds"),
    "max-request-size": ("max_request_bytes", "size"),
    "max-instance-size": ("max_instance_bytes", "size"),
    "body-timeout": ("body_timeout", "seconds"),
    "min-upload-rate": ("min_upload_rate", "size"),
    "header-timeout": ("header_timeout", "seconds"),
    "max-header-size": ("max_header_bytes", "size"),
    "keepalive-timeout": ("keepalive_timeout", "seconds"),
    "max-connections": ("max_connections", "positive"),
    "min-free-space": ("min_free_bytes", "size"),
    "log-level": ("log_level", "level"),
    "log-format": ("log_format", "log_format"),
    "workers": ("workers", "positive"),
    "worker-cpu-affinity": ("worker_cpu_affinity", "affinity"),
    "tls-cert": ("tls_cert", "path"),
    "tls-key": ("tls_key", "path"),
    "tls-ca": ("tls_ca", "path"),
    "tls-require-client-cert": ("tls_require_client_cert", "bool"),
    "dimse-tls-port": ("dimse_tls_port", "port"),
    "tls-client-ae": ("tls_client_ae", "ae_titles"),
    "auth-token-file": ("auth_token_file", "path"),
    "jwt-jwks": ("jwt_jwks", "path"),
    "jwt-issuer": ("jwt_issuer", "str"),
    "jwt-audience": ("jwt_audience", "str"),
    "validation": ("validation", "validation"),
    "accept-sop-class": ("accept_sop_classes", "uids"),
    "reject-sop-class": ("reject_sop_classes", "uids"),
    "ae-permissions": ("ae_permissions", "permissions"),
    "coerce": ("coerce", "tables"),
    "discard": ("discard", "tables"),
    "cors-origin": ("cors_origins", "list"),
    "move_destination": ("move_destinations", "destinations"),
    "public-url": ("public_url", "url"),
}


def parse_size(text: str | int) -> int:
    """A byte count with an optional binary suffix: ``512M``, ``2G``, ``2GiB``, or an int."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        raw = str(text).strip().lower()
        for suffix in ("ib", "b"):
            if raw.endswith(suffix) and len(raw) > len(suffix):
                raw = raw[: -len(suffix)]
                break
        units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
        try:
            value = int(float(raw[:-1]) * units[raw[-1]]) if raw and raw[-1] in units else int(raw)
        except ValueError:
            raise ConfigError(f"not a size: {text!r}") from None
    if value < 0:
        raise ConfigError(f"a size cannot be negative: {text!r}")
    return value


def load_toml(path: str | os.PathLike) -> dict:
    """The fields a TOML configuration file sets, checked: ``{field: value}``.

    Raises
    ------
    ConfigError
        Unreadable file, TOML syntax error, unknown key or a value of the wrong type.
    """
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    out = {}
    for key, value in doc.items():
        if key not in _KEYS:
            known = ", ".join(sorted(_KEYS))
            raise ConfigError(f"{path}: unknown key {key!r} (known: {known})")
        name, kind = _KEYS[key]
        out[name] = _convert(path, key, value, kind)
    return out


def _convert(path, key: str, value, kind: str):
    def wrong(expected: str) -> ConfigError:
        return ConfigError(f"{path}: {key} must be {expected}, not {value!r}")

    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind == "size":
        try:
            return parse_size(value)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {key}: {exc}") from None
    if kind == "fsync":
        if value not in ("always", "never"):
            raise wrong('"always" or "never"')
        return value == "always"
    if kind in ("level", "validation", "log_format", "affinity"):
        choices = {"level": LOG_LEVELS, "validation": VALIDATION_MODES, "log_format": ("text", "json"),
                   "affinity": WORKER_CPU_AFFINITY}[kind]
        if value not in choices:
            raise wrong(" or ".join(f'"{v}"' for v in choices))
        return value
    if kind == "permissions":
        if not isinstance(value, dict) or not all(
                isinstance(ae, str) and 0 < len(ae) <= 16 and isinstance(p, list)
                and all(x in DIMSE_PERMISSIONS for x in p) for ae, p in value.items()):
            raise wrong(f"a table of AE title = [permissions] ({', '.join(DIMSE_PERMISSIONS)})")
        return {ae: tuple(p) for ae, p in value.items()}
    if kind == "ae_titles":
        if not isinstance(value, dict) or not all(
                isinstance(name, str) and name and isinstance(aes, list)
                and all(isinstance(ae, str) and 0 < len(ae.strip()) <= 16 for ae in aes)
                for name, aes in value.items()):
            raise wrong("a table of certificate Common Name = [AE titles]")
        return {name: tuple(ae.strip() for ae in aes) for name, aes in value.items()}
    if kind == "destinations":
        return tuple(_destination(path, key, v) for v in (value if isinstance(value, list) else [None]))
    if kind == "tables":
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise wrong(f"an array of tables ([[{key}]])")
        return tuple(value)
    if kind == "uids":
        if not isinstance(value, list) or not all(isinstance(v, str) and is_valid_uid(v) for v in value):
            raise wrong("a list of UIDs")
        return tuple(value)
    if kind == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise wrong("a list of strings")
        return tuple(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if kind == "positive":
        if not is_int or value < 1:
            raise wrong("an integer of at least 1")
        return value
    if kind == "port":
        if not is_int or not 0 <= value <= 65535:
            raise wrong("a port number (0-65535)")
        return value
    if kind == "seconds":
        if not (is_int or isinstance(value, float)) or not value > 0:
            raise wrong("a positive number of seconds")
        return float(value)
    if kind == "interval":
        if not (is_int or isinstance(value, float)) or not value >= 0:
            raise wrong("a number of seconds (0 or more)")
        return float(value)
    if not isinstance(value, str):
        raise wrong("a string")
    if kind == "index":
        try:
            return check_index_url(value)
        except ValueError:
            raise wrong("a postgresql://USER@HOST:PORT/DB URL") from None
    if kind == "node_id":
        try:
            return check_node_id(value)
        except ValueError:
            raise wrong("1-64 letters, digits, '.', '_' or '-'") from None
    if kind == "url":
        try:
            return check_public_url(value)
        except ValueError:
            raise wrong("an absolute http(s) URL without query or fragment") from None
    return Path(value) if kind == "path" else value


def _destination(path, key: str, table) -> MoveDestination:
    """One [[move_destination]] table: ``ae``, ``host``, ``port``, optional ``tls`` (bool)."""
    ok = (isinstance(table, dict) and set(table) <= {"ae", "host", "port", "tls"}
          and isinstance(table.get("ae"), str) and 0 < len(table["ae"].strip()) <= 16
          and isinstance(table.get("host"), str) and table["host"]
          and isinstance(table.get("port"), int) and not isinstance(table["port"], bool)
          and 0 < table["port"] <= 65535 and isinstance(table.get("tls", False), bool))
    if not ok:
        raise ConfigError(f'{path}: each [[{key}]] needs ae = "AE" (1-16 characters), host = "HOST" and '
                          f"port = 1-65535, and may have tls = true or false, not {table!r}")
    return MoveDestination(table["ae"].strip(), table["host"], table["port"], table.get("tls", False))


def check_index_url(text: str) -> str:
    """``text`` if it names a PostgreSQL database (a libpq URI), else ValueError."""
    if not re.fullmatch(r"postgres(ql)?://\S+", text):
        raise ValueError(f"not a postgresql:// URL: {text!r}")
    return text


def check_node_id(text: str) -> str:
    """``text`` if it can be a node ID (part of temp file names), else ValueError."""
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", text):
        raise ValueError(f"a node ID is 1-64 letters, digits, '.', '_' or '-', not {text!r}")
    return text


def parse_move_destination(text: str) -> MoveDestination:
    """``AE=HOST:PORT``, or ``AE=dicom+tls://HOST:PORT`` for a destination reached over TLS
    (``AE=dicom://HOST:PORT`` is the plain one spelled out), the --move-destination flag."""
    ae, sep, address = text.partition("=")
    scheme, slashes, rest = address.partition("://")
    tls = bool(slashes) and scheme.lower() == "dicom+tls"
    if slashes and not tls and scheme.lower() != "dicom":
        raise ConfigError(f"not AE=HOST:PORT or AE=dicom+tls://HOST:PORT: {text!r}")
    host, colon, port = (rest if slashes else address).rpartition(":")
    if not (sep and colon and 0 < len(ae.strip()) <= 16 and host and port.isdigit() and 0 < int(port) <= 65535):
        raise ConfigError(f"not AE=HOST:PORT or AE=dicom+tls://HOST:PORT: {text!r}")
    return MoveDestination(ae.strip(), host.strip("[]"), int(port), tls)


def merged(file_values: dict, flag_values: dict) -> ServeConfig:
    """Defaults, then the file's values, then the flags'; checked as a whole."""
    config = dataclasses.replace(DEFAULTS, **{**file_values, **flag_values})
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("tls-cert and tls-key go together")
    if config.tls_cert is None and (config.dimse_tls_port is not None or config.tls_require_client_cert):
        raise ConfigError("dimse-tls-port and tls-require-client-cert need tls-cert and tls-key")
    if len({config.jwt_jwks is None, config.jwt_issuer is None, config.jwt_audience is None}) > 1:
        raise ConfigError("jwt-jwks, jwt-issuer and jwt-audience go together")
    if config.tls_client_ae is not None and not (config.dimse_tls_port is not None and config.tls_ca is not None):
        raise ConfigError("tls-client-ae needs dimse-tls-port and tls-ca (client certificates to map)")
    if config.tls_require_client_cert and config.tls_ca is None:
        raise ConfigError("tls-require-client-cert needs tls-ca to verify client certificates")
    return config


def as_toml(config: ServeConfig) -> str:
    """Every setting of ``config`` under its configuration-file key, in TOML; settings without
    a value (unlimited, or computed at start-up) are listed as comments."""
    lines = []
    for key, (name, kind) in _KEYS.items():
        value = getattr(config, name)
        if value is None:
            lines.append(f"# {key}: not set (unlimited or computed at start-up)")
        elif kind == "fsync":
            lines.append(f'{key} = "{"always" if value else "never"}"')
        elif isinstance(value, bool):
            lines.append(f"{key} = {str(value).lower()}")
        elif isinstance(value, (int, float)):
            lines.append(f"{key} = {value}")
        elif kind == "permissions":
            lines.append(f"[{key}]")
            lines += [f"{_quoted(ae)} = [{', '.join(_quoted(p) for p in perms)}]" for ae, perms in value.items()]
        elif kind == "destinations":
            for ae, host, port, tls in value:
                lines += [f"[[{key}]]", f"ae = {_quoted(ae)}", f"host = {_quoted(host)}", f"port = {port}"]
                if tls:
                    lines.append("tls = true")
        elif kind == "tables":
            for table in value:
                lines.append(f"[[{key}]]")
                lines += [f"{k} = {str(v).lower() if isinstance(v, bool) else _quoted(str(v))}" for k, v in table.items()]
        elif isinstance(value, tuple):
            lines.append(f"{key} = [{', '.join(_quoted(v) for v in value)}]")
        elif kind == "index":
            lines.append(f"{key} = {_quoted(without_password(value))}")
        else:
            lines.append(f"{key} = {_quoted(str(value))}")
    return "\n".join(lines) + "\n"


def without_password(url: str) -> str:
    """A database URL as it may be shown: a password in it replaced by ``***``."""
    return re.sub(r"^([a-z]+://[^:/@]*):[^@/]*@", r"\1:***@", url)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
