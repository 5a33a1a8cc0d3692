"""A pynetdicom C-GET SCU that keeps every C-STORE it is sent and every response."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import Verification

CT_EXPLICIT = ((CTImageStorage, (ExplicitVRLittleEndian,)),)


@dataclass
class Received:
    sop_instance_uid: str
    transfer_syntax: str
    raw: bytes
    priority: int

    def dataset(self) -> Dataset:
        syntax = pydicom.uid.UID(self.transfer_syntax)
        ds = read_dataset(io.BytesIO(self.raw), syntax.is_implicit_VR, syntax.is_little_endian)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
        return ds


@dataclass
class GetResult:
    responses: list[tuple[Dataset, Dataset | None]]
    received: list[Received]

    @property
    def final(self) -> Dataset:
        return self.responses[-1][0]

    @property
    def identifier(self) -> Dataset | None:
        return self.responses[-1][1]

    @property
    def pending(self) -> list[Dataset]:
        return [s for s, _ in self.responses[:-1]]

    def uids(self) -> list[str]:
        return [r.sop_instance_uid for r in self.received]


def identifier(level: str, **keys) -> Dataset:
    """A C-GET identifier: Query/Retrieve Level and the given keys."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def echo(port: int) -> bool:
    """A C-ECHO on a new association to 127.0.0.1:``port``: True if it was accepted and answered
    Success (a server still serving associations)."""
    ae = AE(ae_title="ECHO")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMACCEL")
    if not assoc.is_established:
        return False
    ok = assoc.send_c_echo().Status == 0
    assoc.release()
    return ok


def associate(port: int, model, storage, on_store, ae_title: str = "CGETTEST", tls_args=None):
    """An established association to 127.0.0.1:``port`` offering ``model``, Verification and, as
    SCP, each (SOP Class, transfer syntaxes) of ``storage``; over TLS with ``tls_args``
    (pynetdicom's ``(ssl_context, server_hostname)``)."""
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(model)
    ae.add_requested_context(Verification)
    for sop_class, syntaxes in storage:
        ae.add_requested_context(sop_class, list(syntaxes))
    roles = [build_role(sop_class, scp_role=True) for sop_class in dict(storage)]
    assoc = ae.associate("127.0.0.1", port, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)],
                         tls_args=tls_args)
    assert assoc.is_established
    return assoc


def c_get(port: int, model, ident: Dataset, storage=CT_EXPLICIT, priority: int = 0, on_store=None,
          msg_id: int = 7, tls_args=None) -> GetResult:
    """One C-GET on a new association; ``on_store(event, received)`` may answer each C-STORE
    (default: Success)."""
    received: list[Received] = []

    def handler(event):
        rq = event.request
        received.append(Received(rq.AffectedSOPInstanceUID, event.context.transfer_syntax,
                                 rq.DataSet.getvalue(), rq.Priority))
        return on_store(event, received) if on_store else 0x0000

    assoc = associate(port, model, storage, handler, tls_args=tls_args)
    try:
        responses = list(assoc.send_c_get(ident, model, msg_id=msg_id, priority=priority))
    finally:
        assoc.release()
    return GetResult(responses, received)


def assert_counts(status: Dataset, completed: int, failed: int = 0, warning: int = 0) -> None:
    assert (status.NumberOfCompletedSuboperations, status.NumberOfFailedSuboperations,
            status.NumberOfWarningSuboperations) == (completed, failed, warning)


def failed_list(result: GetResult) -> list[str]:
    """Failed SOP Instance UID List (0008,0058) of the final response; pydicom gives VM 1 as a str."""
    value = result.identifier.get("FailedSOPInstanceUIDList") if result.identifier is not None else None
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)
