"""Association negotiation as acceptor: A-ASSOCIATE-RQ in, A-ASSOCIATE-AC or -RJ out.

Pure functions of the decoded request and the :class:`~dicomaccel.dimse.config.ServerConfig`;
the protocol decides *when* (PS3.8 AE-6/AE-7/AE-8), this module decides *what*.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import pdu
from .config import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    IMPLICIT_VR_LITTLE_ENDIAN,
    ServerConfig,
)
from .messages import VERIFICATION_SOP_CLASS

EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"  # PS3.5 A.3 (retired)


@dataclass(slots=True)
class PresentationContext:
    """A presentation context as negotiated.

    Attributes
    ----------
    id : int
        Presentation context ID (odd, 1-255).
    abstract_syntax : str
        The SOP Class UID proposed for it.
    transfer_syntax : str or None
        The transfer syntax we accepted; ``None`` if the context was rejected.
    result : int
        PS3.8 Table 9-18: 0 acceptance, 3 abstract syntax not supported, 4 transfer
        syntaxes not supported.
    scu_role : bool
        The peer may invoke operations on this context (send us requests).
    scp_role : bool
        The peer accepted to act as SCP on this context, so we may send it requests: the
        C-STORE sub-operations of a C-GET (PS3.4 C.5.3, PS3.7 D.3.3.4).
    proposed_transfer_syntaxes : tuple of str
        What the peer proposed, in its order.
    """

    id: int
    abstract_syntax: str
    transfer_syntax: str | None
    result: int
    scu_role: bool = True
    scp_role: bool = False
    proposed_transfer_syntaxes: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.result == pdu.PC_ACCEPTANCE


@dataclass(frozen=True, slots=True)
class Rejection:
    """An A-ASSOCIATE-RJ to send (PS3.8 Table 9-21)."""

    result: int
    source: int
    reason: int


@dataclass(slots=True)
class Acceptance:
    """An A-ASSOCIATE-AC to send and what it established."""

    pdu: bytes
    contexts: dict[int, PresentationContext]
    peer_max_pdu: int


# The smallest Maximum Length (PS3.8 D.1) we accept from a peer; DCMTK's own floor is the same.
MIN_PEER_MAX_PDU = 4096


def check_provider(rq: pdu.AssociateRQ, active_associations: int, config: ServerConfig) -> Rejection | None:
    """The service-provider's checks of AE-6 (PS3.8 §9.2.2): protocol version and capacity."""
    # PS3.8 Table 9-11: bit 0 set means version 1; the other bits are not tested.
    if not rq.protocol_version & 1:
        return Rejection(pdu.RJ_PERMANENT, pdu.RJ_SOURCE_ACSE, pdu.RJ_ACSE_PROTOCOL_VERSION_NOT_SUPPORTED)
    if active_associations >= config.max_associations:
        return Rejection(
            pdu.RJ_TRANSIENT, pdu.RJ_SOURCE_PRESENTATION, pdu.RJ_PRESENTATION_LOCAL_LIMIT_EXCEEDED
        )
    return None


def check_certificate(rq: pdu.AssociateRQ, config: ServerConfig, peer_cert: dict | None) -> Rejection | None:
    """On a TLS connection, the rejection (1, 1, 3) of a Calling AE Title the peer's client
    certificate may not use (``config.tls_client_ae``: subject Common Name -> AE titles);
    None if it may, or if no mapping is configured. PS3.15 B.1 lets the certificate, not
    the name the peer chooses, identify it. ``peer_cert`` is ``SSLSocket.getpeercert()``."""
    if config.tls_client_ae is None:
        return None
    names = [value for rdn in (peer_cert or {}).get("subject", ()) for key, value in rdn
             if key == "commonName"]
    if any(rq.calling_ae in config.tls_client_ae.get(name, ()) for name in names):
        return None
    return Rejection(pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, pdu.RJ_USER_CALLING_AE_NOT_RECOGNIZED)


def negotiate(rq: pdu.AssociateRQ, config: ServerConfig) -> Rejection | Acceptance:
    """The service-user's answer to an A-ASSOCIATE indication.

    Rejects (source 1) an unknown application context (reason 2), a wrong called AE title
    when ``require_called_ae`` is set (reason 7), a calling AE title outside
    ``calling_ae_allow`` (reason 3) and a Maximum Length below :data:`MIN_PEER_MAX_PDU`
    (reason 1). With ``ae_permissions``, a context whose abstract syntax needs a permission
    (``context_permissions``) the calling AE lacks is refused (result 1), unless the peer
    proposed the SCP role for it (a C-GET SCU's storage contexts): then it is accepted with
    the peer as SCP only. Otherwise accepts, answering every proposed context:

    - an abstract syntax in ``supported_abstract_syntaxes`` (Verification always is) gets
      the first of *our* ``transfer_syntaxes`` the peer proposed, unless
      ``peer_ordered_syntaxes`` lists it (the Storage SOP Classes of the C-STORE SCP): then
      the first transfer syntax *the peer* proposed that the listed set allows, Explicit
      VR Little Endian beating an Implicit VR Little Endian first choice (what we receive
      is stored as received, so the sender's preference wins; PS3.4 B.4.1);
    - any other abstract syntax the peer proposed the SCP role for (a 54H item with SCP-role
      1: a storage SOP class for C-GET sub-operations) gets the first transfer syntax *the
      peer* proposed that ``storage_transfer_syntaxes`` allows (any, if that is ``None``),
      since the peer is the one that decodes what we send — except that Explicit VR Little
      Endian beats an Implicit VR Little Endian first choice (stored DICOMweb instances then
      need no transcoding);
    - anything else is result 3; no common transfer syntax is result 4.

    Role selection answers (PS3.7 D.3.3.4) accept a proposed SCP role for accepted
    contexts, accept a proposed SCU role only for supported abstract syntaxes, and never
    return 1 for a role that was not proposed. SOP Class Extended Negotiation is answered
    with zeros (relational retrieval and the other options declined), one byte per byte
    offered, for accepted abstract syntaxes only. The Asynchronous Operations Window is
    answered 1/1 when proposed.
    """
    if rq.application_context != pdu.DICOM_APPLICATION_CONTEXT:
        return Rejection(pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, pdu.RJ_USER_APPLICATION_CONTEXT_NOT_SUPPORTED)
    if config.require_called_ae and rq.called_ae != config.ae_title:
        return Rejection(pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, pdu.RJ_USER_CALLED_AE_NOT_RECOGNIZED)
    if config.calling_ae_allow is not None and rq.calling_ae not in config.calling_ae_allow:
        return Rejection(pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, pdu.RJ_USER_CALLING_AE_NOT_RECOGNIZED)
    if rq.max_length and rq.max_length < MIN_PEER_MAX_PDU:
        # PS3.8 D.1 sets no lower bound, but each P-DATA-TF costs 12 bytes of headers and
        # one PDU of work: a peer asking for tiny PDUs makes us send more headers than data.
        return Rejection(pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, pdu.RJ_USER_NO_REASON)

    contexts: dict[int, PresentationContext] = {}
    results: list[tuple[int, int, str | None]] = []
    accepted_syntaxes: set[str] = set()
    granted = None if config.ae_permissions is None else config.ae_permissions.get(rq.calling_ae, frozenset())
    for pc in rq.contexts:
        proposed = tuple(pc.transfer_syntaxes)
        needed = config.context_permissions.get(pc.abstract_syntax)
        role = rq.roles.get(pc.abstract_syntax)
        denied = granted is not None and needed is not None and needed not in granted
        if denied and not (role is not None and role[1]):
            # The calling AE may not use this service: its context is refused, result 1
            # user-rejection (PS3.8 Table 9-18), and the rest of the association stands.
            contexts[pc.id] = PresentationContext(
                pc.id, pc.abstract_syntax, None, pdu.PC_USER_REJECTION, False, False, proposed
            )
            results.append((pc.id, pdu.PC_USER_REJECTION, proposed[0]))
            continue
        supported = not denied and (pc.abstract_syntax == VERIFICATION_SOP_CLASS
                                     or pc.abstract_syntax in config.supported_abstract_syntaxes)
        ts: str | None = None
        peer_ordered = config.peer_ordered_syntaxes.get(pc.abstract_syntax)
        if peer_ordered is not None and (supported or (role is not None and role[1])):
            ts = _peer_choice(proposed, peer_ordered)
        elif supported:
            ts = next((t for t in config.transfer_syntaxes if t in proposed), None)
        elif role is not None and role[1]:
            ts = _peer_choice(proposed, config.storage_transfer_syntaxes)
        else:
            contexts[pc.id] = PresentationContext(
                pc.id, pc.abstract_syntax, None, pdu.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED, False, False, proposed
            )
            results.append((pc.id, pdu.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED, proposed[0]))
            continue
        if ts is None:
            contexts[pc.id] = PresentationContext(
                pc.id, pc.abstract_syntax, None, pdu.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED, False, False, proposed
            )
            results.append((pc.id, pdu.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED, proposed[0]))
            continue
        if role is None:
            # PS3.7 D.3.3.4: without a role item the requestor is SCU, the acceptor SCP.
            scu, scp = True, False
        else:
            scu, scp = bool(role[0]) and supported, bool(role[1])
        contexts[pc.id] = PresentationContext(pc.id, pc.abstract_syntax, ts, pdu.PC_ACCEPTANCE, scu, scp, proposed)
        results.append((pc.id, pdu.PC_ACCEPTANCE, ts))
        accepted_syntaxes.add(pc.abstract_syntax)

    user_info = [
        pdu.sub_maximum_length(config.max_pdu),
        pdu.sub_uid(pdu.SUB_IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_CLASS_UID),
    ]
    if rq.async_window is not None:
        user_info.append(pdu.sub_async_window(1, 1))
    for uid, (scu_role, scp_role) in rq.roles.items():
        if uid in accepted_syntaxes:
            supported = uid == VERIFICATION_SOP_CLASS or uid in config.supported_abstract_syntaxes
            user_info.append(pdu.sub_role_selection(uid, 1 if scu_role and supported else 0, 1 if scp_role else 0))
    user_info.append(pdu.sub_uid(pdu.SUB_IMPLEMENTATION_VERSION_NAME, IMPLEMENTATION_VERSION_NAME))
    for uid, info in rq.extended.items():
        if uid in accepted_syntaxes:
            user_info.append(pdu.sub_extended_negotiation(uid, bytes(len(info))))
    return Acceptance(
        pdu.encode_associate_ac(rq, results, user_info),
        contexts,
        rq.max_length or 0,
    )


def _peer_choice(proposed: tuple[str, ...], allowed: frozenset[str] | tuple[str, ...] | None) -> str | None:
    """The first of ``proposed`` that ``allowed`` (None: any) has, Explicit rather than
    Implicit VR Little Endian when both are offered: DICOMweb stores Explicit (PS3.18 §8.7.3
    forbids Implicit), so instances go out again untranscoded. Explicit VR Big Endian (retired,
    PS3.5 A.3) only when nothing else is offered."""
    choices = [t for t in proposed if allowed is None or t in allowed]
    if len(choices) > 1 and EXPLICIT_VR_BIG_ENDIAN in choices:
        choices.remove(EXPLICIT_VR_BIG_ENDIAN)
    ts = next(iter(choices), None)
    if ts == IMPLICIT_VR_LITTLE_ENDIAN and EXPLICIT_VR_LITTLE_ENDIAN in choices:
        ts = EXPLICIT_VR_LITTLE_ENDIAN
    return ts
