"""Server configuration and the constants that identify dicomaccel on the wire."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping

from dicomaccel.config import DEFAULTS

# dicomaccel's UIDs and the two uncompressed syntaxes every association offers, from the one
# table (names kept: they are part of this package's API).
from dicomaccel.syntaxes import (  # noqa: F401
    DICOMACCEL_UID_ROOT,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
)
from dicomaccel.syntaxes import EXPLICIT_VR_LE as EXPLICIT_VR_LITTLE_ENDIAN
from dicomaccel.syntaxes import IMPLICIT_VR_LE as IMPLICIT_VR_LITTLE_ENDIAN

# Our Maximum Length (PS3.8 D.1) bounds the P-DATA-TF PDUs the peer sends us. An SCP mostly
# receives small messages (C-GET-RQ identifiers, C-STORE-RSPs), so the value costs nothing
# in the common case; 1 MiB keeps large incoming data sets to few PDUs while bounding what
# one PDU can make us buffer (max_associations x max_pdu in the worst case).
DEFAULT_MAX_PDU = 1 << 20
# Hard cap on an A-ASSOCIATE-RQ: 128 presentation contexts with a dozen transfer syntaxes
# each, role selection and extended negotiation for all of them stay well below this.
MAX_ASSOCIATE_RQ_LENGTH = 256 * 1024
# A command set is a few hundred bytes (PS3.7 Annex E); anything larger is hostile.
MAX_COMMAND_SET_LENGTH = 64 * 1024
# Peers that count the 6-byte PDV header into the Maximum Length send PDUs up to 6 bytes
# longer than negotiated; tolerate that, abort beyond it.
PDU_LENGTH_SLACK = 6
# Requests queued behind the running one. The window we grant is 1/1 (PS3.7 D.3.3.3), so a
# conforming peer never has more than one outstanding; this only stops a flood.
MAX_QUEUED_REQUESTS = 32

Handler = Callable[..., Awaitable[object]]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything that decides how an association is negotiated and served.

    See :func:`dicomaccel.dimse.start_dimse_server` for the meaning of each field.
    """

    ae_title: str = DEFAULTS.ae_title
    handlers: Mapping[int, Handler] = field(default_factory=dict)
    supported_abstract_syntaxes: frozenset[str] = frozenset()
    transfer_syntaxes: tuple[str, ...] = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
    storage_transfer_syntaxes: tuple[str, ...] | None = None
    # Abstract syntax -> the transfer syntaxes accepted for it, picked in the peer's order
    # (the C-STORE SCP's Storage SOP Classes: what we store as received).
    peer_ordered_syntaxes: Mapping[str, frozenset[str]] = field(default_factory=dict)
    max_associations: int = DEFAULTS.max_associations
    max_pdu: int = DEFAULT_MAX_PDU
    artim_timeout: float = DEFAULTS.artim_timeout
    idle_timeout: float | None = DEFAULTS.idle_timeout
    require_called_ae: bool = False
    calling_ae_allow: frozenset[str] | None = None
    max_dataset_size: int = 1 << 28
    # Command Fields whose data sets reach the handler as a DataSetStream while they arrive
    # (C-STORE-RQ), instead of joined and limited by max_dataset_size.
    stream_commands: frozenset[int] = frozenset()
    # Per-AE permissions: abstract syntax -> the permission it needs ("get", ...), and
    # calling AE title -> its permissions. None: every AE may use every service.
    context_permissions: Mapping[str, str] = field(default_factory=dict)
    ae_permissions: Mapping[str, frozenset[str]] | None = None
    # Client certificate subject Common Name -> the calling AE titles it may use, checked on
    # TLS connections (PS3.15 B.1: the certificate identifies the peer). None: not checked.
    tls_client_ae: Mapping[str, frozenset[str]] | None = None
