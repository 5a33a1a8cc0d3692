"""The presentation contexts a pynetdicom AE needs to serve our handlers (PS3.7 D.3.3.2).

- C-GET SCP: the four Get models of PS3.4 C.4.3 / Y / Z (Patient Root, Study Root,
  Composite Instance Root Retrieve - GET, Composite Instance Retrieve Without Bulk Data -
  GET). The C-STORE sub-operations travel on the *same* association in the other direction
  (PS3.4 C.4.3.3), so each Storage SOP Class must also be supported with SCP/SCU Role
  Selection (PS3.7 D.3.3.4) accepting the requestor as SCP (``scp_role=True``).
- C-STORE SCP: each Storage SOP Class with the requestor as SCU (``scu_role=True``, the
  default role). A SOP Class supported both ways gets both roles.

The Storage SOP Classes are the archive's: PS3.6 Table A-1
(:data:`dicomaccel.policy.sop_classes.STORAGE_SOP_CLASSES`), over every transfer syntax of
PS3.5 Annex A that dicomaccel knows (:mod:`dicomaccel.syntaxes`).
"""

from __future__ import annotations

from collections.abc import Iterable

from ...policy.sop_classes import STORAGE_SOP_CLASSES
from ...retrieve.identifier import GET_SOP_CLASSES
from ...syntaxes import DEFLATED, ENCAPSULATED, EXPLICIT_VR_LE, IMPLICIT_VR_LE, NATIVE

__all__ = ["add_presentation_contexts", "ALL_TRANSFER_SYNTAXES"]

# pynetdicom accepts, of the transfer syntaxes a requestor proposes in one context, the first
# in this order. Explicit VR Little Endian first: what DCMTK proposes first and what most
# archives hold, so a C-GET sends it as stored; then the default, Implicit VR Little Endian
# (PS3.5 §10.1); then the others.
ALL_TRANSFER_SYNTAXES: tuple[str, ...] = (
    EXPLICIT_VR_LE, IMPLICIT_VR_LE,
    *sorted(NATIVE - {IMPLICIT_VR_LE, EXPLICIT_VR_LE}), *sorted(DEFLATED), *sorted(ENCAPSULATED),
)


def add_presentation_contexts(ae, *, get: bool = True, store: bool = True,
                              sop_classes: Iterable[str] | None = None,
                              transfer_syntaxes: Iterable[str] = ALL_TRANSFER_SYNTAXES) -> None:
    """Add to ``ae`` (a ``pynetdicom.AE``) the contexts our C-GET and C-STORE handlers need.

    Parameters
    ----------
    ae : pynetdicom.AE
        The server's application entity; contexts it already supports are updated.
    get : bool
        Serve C-GET: the Get models and the storage contexts with the requestor as SCP.
    store : bool
        Serve C-STORE: the storage contexts with the requestor as SCU.
    sop_classes : iterable of str, optional
        Storage SOP Class UIDs (default: every Storage SOP Class of PS3.6 Table A-1).
    transfer_syntaxes : iterable of str
        Transfer syntaxes accepted on the storage contexts (default: all). The Get models
        take Implicit and Explicit VR Little Endian, in which Identifiers are encoded.
    """
    syntaxes = list(transfer_syntaxes)
    if get:
        for uid in GET_SOP_CLASSES:
            ae.add_supported_context(uid, [IMPLICIT_VR_LE, EXPLICIT_VR_LE])
    if not (get or store):
        return
    for uid in (STORAGE_SOP_CLASSES if sop_classes is None else sop_classes):
        # PS3.7 D.3.3.4: accept the requestor as SCU (it stores to us) and/or as SCP (it
        # receives the C-STORE sub-operations of its C-GET).
        ae.add_supported_context(uid, syntaxes, scu_role=store, scp_role=get)
