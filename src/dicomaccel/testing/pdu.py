"""PS3.8 bytes built by hand (no dicomaccel.dimse code), for raw-socket tests of a DIMSE server."""

from __future__ import annotations

import struct

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

APP_CONTEXT = b"1.2.840.10008.3.1.1.1"  # DICOM Application Context Name (PS3.7 A.2.1)


def item(item_type: int, value: bytes) -> bytes:
    """A PS3.8 9.3.2 item: type, reserved byte, 16-bit big-endian length, value."""
    return struct.pack(">BxH", item_type, len(value)) + value


def associate_rq(
    called=b"DICOMACCEL",
    calling=b"RAWSCU",
    contexts=((1, b"1.2.840.10008.1.1", (b"1.2.840.10008.1.2",)),),
    roles=(),
    max_length=16384,
    version=1,
    app_context=APP_CONTEXT,
) -> bytes:
    """A-ASSOCIATE-RQ (PS3.8 9.3.2): ``contexts`` are (id, abstract syntax, transfer syntaxes),
    ``roles`` (SOP Class UID, SCU role, SCP role) selection items."""
    variable = item(0x10, app_context)
    for pcid, abstract, syntaxes in contexts:
        sub = item(0x30, abstract) + b"".join(item(0x40, ts) for ts in syntaxes)
        variable += item(0x20, bytes((pcid, 0, 0, 0)) + sub)
    user = item(0x51, struct.pack(">L", max_length)) + item(0x52, b"1.2.3.4.5")
    for uid, scu_role, scp_role in roles:
        user += item(0x54, struct.pack(">H", len(uid)) + uid + bytes((scu_role, scp_role)))
    variable += item(0x50, user)
    fixed = struct.pack(">H", version) + b"\0\0" + called.ljust(16) + calling.ljust(16) + bytes(32)
    return struct.pack(">BxL", 0x01, len(fixed) + len(variable)) + fixed + variable


def recv_exact(sock, n) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


def recv_pdu(sock) -> tuple[int, bytes]:
    """One PDU from ``sock``: (PDU type, body after the length)."""
    pdu_type, length = struct.unpack(">BxL", recv_exact(sock, 6))
    return pdu_type, recv_exact(sock, length)


def command_set(*elements) -> bytes:
    """Implicit VR LE group 0000 from (element, raw value) pairs, with its group length."""
    body = b"".join(struct.pack("<HHL", 0, e, len(v)) + v for e, v in elements)
    return struct.pack("<HHLL", 0, 0, 4, len(body)) + body


def p_data(pcid: int, control: int, payload: bytes) -> bytes:
    """P-DATA-TF with one PDV; ``control`` is the message control header (PS3.8 E.2)."""
    pdv = struct.pack(">LBB", len(payload) + 2, pcid, control) + payload
    return struct.pack(">BxL", 0x04, len(pdv)) + pdv


def dataset_bytes(ds: Dataset, implicit=False) -> bytes:
    """``ds`` encoded little endian, without File Meta Information (as a P-DATA carries it)."""
    buf = DicomBytesIO()
    buf.is_implicit_VR = implicit
    buf.is_little_endian = True
    write_dataset(buf, ds)
    return buf.getvalue()
