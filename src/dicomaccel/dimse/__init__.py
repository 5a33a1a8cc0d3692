"""The DICOM upper layer on asyncio, as association acceptor (PS3.8, PS3.7).

Start a server on the running loop (run the loop on uvloop)::

    server = await start_dimse_server(
        "0.0.0.0", 11112,
        ae_title="DICOMACCEL",
        handlers={messages.C_GET_RQ: handle_c_get},
        supported_abstract_syntaxes=[PATIENT_ROOT_GET, STUDY_ROOT_GET],
    )

Service interface
-----------------
A handler is ``async def handler(assoc: Association, request: Request)``, registered by the
request's Command Field. For each association, requests run one at a time, in arrival order
(we grant an Asynchronous Operations Window of 1/1).

- ``request.command`` is the decoded command set, keyword -> value (``"MessageID"``,
  ``"AffectedSOPClassUID"``, ``"Priority"``, ...); ``request.dataset`` the data set bytes
  exactly as received (decode them with pydicom in ``request.context.transfer_syntax``);
  ``request.cancelled`` an :class:`asyncio.Event` set when a C-CANCEL-RQ for its Message ID
  arrives, even while the handler runs.
- The handler answers with ``await assoc.respond(request, status, dataset=None, **fields)``
  (e.g. ``NumberOfRemainingSuboperations=3``), as often as it needs: Pending responses, then
  one final one. ``assoc.send_response(context, command, dataset)`` sends any command set.
  Returning an ``int`` instead sends it as the final status. Returning without a final
  response, or raising, sends 0x0110 Processing Failure with an Error Comment (never a
  traceback); the association stays usable.
- C-GET sub-operations: ``assoc.storage_contexts(sop_class_uid)`` lists the accepted contexts
  for that storage SOP class on which the peer accepted the SCP role (PS3.4 C.5.3), one per
  transfer syntax; ``await assoc.send_c_store(context, sop_class_uid=..., sop_instance_uid=...,
  dataset=buffer_or_buffers)`` sends the data set as PDVs that are memoryview slices of the
  given buffers (an mmap of the stored file works; nothing is copied), honouring the peer's
  Maximum Length and the transport's flow control, and returns the C-STORE-RSP command set.
- ``assoc.release()`` / ``assoc.abort()`` end the association from our side. When it ends
  otherwise (peer release or abort, peer vanished, protocol error), the running handler is
  cancelled and pending ``send_c_store`` calls raise :class:`AssociationClosedError`.
- Unknown commands on an accepted context are answered 0x0211 Unrecognized Operation; a
  Message ID already outstanding 0x0210 Duplicate Invocation. C-ECHO is built in.

Negotiation rules, limits and timers are documented on :func:`start_dimse_server` and
:func:`dicomaccel.dimse.negotiation.negotiate`.
"""

from .association import Association, AssociationClosedError, DIMSEProtocol, Request
from .config import (
    DEFAULT_MAX_PDU,
    DICOMACCEL_UID_ROOT,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
)
from .negotiation import PresentationContext
from .server import DIMSEServer, start_dimse_server

__all__ = [
    "Association",
    "AssociationClosedError",
    "DEFAULT_MAX_PDU",
    "DICOMACCEL_UID_ROOT",
    "DIMSEProtocol",
    "DIMSEServer",
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "PresentationContext",
    "Request",
    "start_dimse_server",
]
