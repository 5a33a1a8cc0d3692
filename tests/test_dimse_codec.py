"""PDU, command-set and negotiation codecs of dicomaccel.dimse, checked against pydicom and
pynetdicom's independent encoders/decoders and against hand-built bytes (PS3.8, PS3.7)."""

from __future__ import annotations

import struct
from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SOPClassExtendedNegotiation,
)
from pynetdicom.presentation import build_context, build_role
from pynetdicom.transport import AddressInformation

from dicomaccel.dimse import fsm, messages, pdu
from dicomaccel.dimse.config import IMPLEMENTATION_CLASS_UID, ServerConfig
from dicomaccel.dimse.negotiation import Acceptance, Rejection, check_provider, negotiate
from dicomaccel.errors import ParseError

VERIFICATION = "1.2.840.10008.1.1"
PATIENT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
JPEG = "1.2.840.10008.1.2.4.50"


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BxH", item_type, len(value)) + value


def _rq_body(items: bytes, version: int = 1) -> memoryview:
    fixed = struct.pack(">H", version) + b"\0\0" + b"DICOMACCEL".ljust(16) + b"SCU".ljust(16) + bytes(32)
    return memoryview(fixed + items)


def _pynetdicom_rq(contexts, user_info) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "STORESCU"
    primitive.called_ae_title = "DICOMACCEL"
    primitive.calling_presentation_address = AddressInformation("127.0.0.1", 1)
    primitive.called_presentation_address = AddressInformation("127.0.0.1", 2)
    for i, cx in enumerate(contexts):
        cx.context_id = 2 * i + 1
    primitive.presentation_context_definition_list = contexts
    primitive.user_information = user_info
    rq = A_ASSOCIATE_RQ()
    rq.from_primitive(primitive)
    return rq.encode()


def _user_info(max_length=16382, extra=()):
    ml = MaximumLengthNotification()
    ml.maximum_length_received = max_length
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.3.0.4"
    name = ImplementationVersionNameNotification()
    name.implementation_version_name = "PYNETDICOM_304"
    return [ml, impl, name, *extra]


# ------------------------------------------------------------------------- A-ASSOCIATE-RQ


def test_decode_pynetdicom_associate_rq():
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = 5
    window.maximum_number_operations_performed = 3
    ext = SOPClassExtendedNegotiation()
    ext.sop_class_uid = PATIENT_GET
    ext.service_class_application_information = b"\x01\x01"
    raw = _pynetdicom_rq(
        [build_context(VERIFICATION), build_context(CT, [EXPLICIT, IMPLICIT]), build_context(PATIENT_GET)],
        _user_info(extra=[window, build_role(CT, scp_role=True), ext]),
    )
    pdu_type, length = struct.unpack_from(">BxL", raw)
    assert pdu_type == pdu.A_ASSOCIATE_RQ and length == len(raw) - 6
    rq = pdu.decode_associate_rq(memoryview(raw)[6:])
    assert rq.protocol_version == 1
    assert (rq.called_ae, rq.calling_ae) == ("DICOMACCEL", "STORESCU")
    assert rq.called_ae_raw == b"DICOMACCEL      "
    assert rq.application_context == pdu.DICOM_APPLICATION_CONTEXT
    assert [(c.id, c.abstract_syntax) for c in rq.contexts] == [(1, VERIFICATION), (3, CT), (5, PATIENT_GET)]
    assert rq.contexts[1].transfer_syntaxes == [EXPLICIT, IMPLICIT]
    assert rq.max_length == 16382
    assert rq.implementation_class_uid == "1.2.826.0.1.3680043.9.3811.3.0.4"
    assert rq.implementation_version_name == "PYNETDICOM_304"
    assert rq.async_window == (5, 3)
    assert rq.roles == {CT: (0, 1)}
    assert rq.extended == {PATIENT_GET: b"\x01\x01"}


def test_unknown_items_are_skipped():
    # PS3.8 §9.3.1: items of unrecognized types are ignored.
    pc = _item(0x20, bytes((1, 0, 0, 0)) + _item(0x30, VERIFICATION.encode()) + _item(0x77, b"xx") + _item(0x40, IMPLICIT.encode()))
    body = _rq_body(
        _item(0x10, b"1.2.840.10008.3.1.1.1") + _item(0x99, b"junk") + pc + _item(0x50, _item(0x5F, b"?") + _item(0x51, b"\0\0\x40\0"))
    )
    rq = pdu.decode_associate_rq(body)
    assert rq.contexts[0].transfer_syntaxes == [IMPLICIT]
    assert rq.max_length == 0x4000


@pytest.mark.parametrize(
    "items, reason, offset, text",
    [
        # An item claiming more bytes than the PDU has: invalid value, at the item.
        (_item(0x10, b"1.2.840.10008.3.1.1.1")[:-3], 6, 6 + 68, "exceeds"),
        (_item(0x10, b"1.2") + _item(0x10, b"1.2"), 5, 6 + 68 + 7, "second Application Context"),
        (_item(0x10, b"1.2") + _item(0x50, b""), 6, 6, "no Presentation Context"),
        (_item(0x10, b"1.2") + _item(0x20, bytes((2, 0, 0, 0)) + _item(0x30, b"1.2") + _item(0x40, b"1.2")), 6, 6 + 68 + 7 + 4, "not odd"),
        (_item(0x10, b"1.2") + _item(0x21, b"\x01\0\0\0"), 5, 6 + 68 + 7, "does not belong"),
        (_item(0x10, b"1.2") + _item(0x20, bytes((1, 0, 0, 0)) + _item(0x30, b"1.2")) + _item(0x50, b""), 6, 6 + 68 + 7, "no transfer syntax"),
        (b"\x10\x00\x00", 6, 6 + 68, "truncated item header"),
    ],
)
def test_associate_rq_errors(items, reason, offset, text):
    with pytest.raises(pdu.PDUParameterError) as info:
        pdu.decode_associate_rq(_rq_body(items))
    assert info.value.reason == reason
    assert info.value.offset == offset
    assert text in str(info.value)
    assert isinstance(info.value, ParseError)


def test_role_selection_length_mismatch():
    role = struct.pack(">H", 10) + CT.encode() + b"\x00\x01"  # UID length says 10, UID is longer
    body = _rq_body(
        _item(0x10, b"1.2.840.10008.3.1.1.1")
        + _item(0x20, bytes((1, 0, 0, 0)) + _item(0x30, CT.encode()) + _item(0x40, EXPLICIT.encode()))
        + _item(0x50, _item(0x54, role))
    )
    with pytest.raises(pdu.PDUParameterError, match="Role Selection") as info:
        pdu.decode_associate_rq(body)
    assert info.value.reason == 6


def test_short_fixed_part():
    with pytest.raises(pdu.PDUParameterError, match="fixed part"):
        pdu.decode_associate_rq(memoryview(bytes(40)))


# ------------------------------------------------------------------------- negotiation


def _negotiate(contexts, extra=(), **config):
    raw = _pynetdicom_rq(contexts, _user_info(extra=extra))
    rq = pdu.decode_associate_rq(memoryview(raw)[6:])
    cfg = ServerConfig(supported_abstract_syntaxes=frozenset({PATIENT_GET}), **config)
    return rq, negotiate(rq, cfg)


def test_negotiation_results_and_roles_read_back_by_pynetdicom():
    ext = SOPClassExtendedNegotiation()
    ext.sop_class_uid = PATIENT_GET
    ext.service_class_application_information = b"\x01"
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = 0
    window.maximum_number_operations_performed = 0
    rq, answer = _negotiate(
        [
            build_context(VERIFICATION),
            build_context(PATIENT_GET, [JPEG]),  # supported, no common transfer syntax -> 4
            build_context(PATIENT_GET),
            build_context(CT, [JPEG, EXPLICIT]),  # SCP role proposed -> accepted, peer's first TS
            build_context(MR),  # no role item, not supported -> 3
        ],
        extra=[build_role(CT, scu_role=True, scp_role=True), build_role(MR, scp_role=False, scu_role=True), window, ext],
    )
    assert isinstance(answer, Acceptance)
    assert answer.peer_max_pdu == 16382
    got = {c.id: (c.result, c.transfer_syntax, c.scu_role, c.scp_role) for c in answer.contexts.values()}
    assert got == {
        1: (0, EXPLICIT, True, False),
        3: (4, None, False, False),
        5: (0, EXPLICIT, True, False),
        7: (0, JPEG, False, True),
        9: (3, None, False, False),
    }
    ac = A_ASSOCIATE_AC()
    ac.decode(answer.pdu)
    assert ac.called_ae_title == "DICOMACCEL" and ac.calling_ae_title == "STORESCU"
    results = {item.context_id: (item.result, item.transfer_syntax) for item in ac.presentation_context}
    assert results[1] == (0, EXPLICIT) and results[7] == (0, JPEG)
    assert results[3][0] == 4 and results[9][0] == 3
    primitive = ac.to_primitive()
    by_type = {}
    for sub in primitive.user_information:
        by_type.setdefault(type(sub).__name__, []).append(sub)
    assert by_type["MaximumLengthNotification"][0].maximum_length_received == ServerConfig().max_pdu
    assert by_type["ImplementationClassUIDNotification"][0].implementation_class_uid == IMPLEMENTATION_CLASS_UID
    assert by_type["AsynchronousOperationsWindowNegotiation"][0].maximum_number_operations_invoked == 1
    roles = {r.sop_class_uid: (r.scu_role, r.scp_role) for r in by_type["SCP_SCU_RoleSelectionNegotiation"]}
    # CT: SCP accepted, SCU refused (we are no storage SCP); MR was not accepted: no answer.
    assert roles == {CT: (False, True)}
    (ext_ac,) = by_type["SOPClassExtendedNegotiation"]
    assert (ext_ac.sop_class_uid, ext_ac.service_class_application_information) == (PATIENT_GET, b"\x00")


def test_role_never_granted_when_not_proposed():
    # The peer proposes SCU only for the GET model: we may not answer SCP-role 1.
    _, answer = _negotiate([build_context(PATIENT_GET)], extra=[build_role(PATIENT_GET, scu_role=True)])
    ac = A_ASSOCIATE_AC()
    ac.decode(answer.pdu)
    (role,) = [s for s in ac.to_primitive().user_information if type(s).__name__ == "SCP_SCU_RoleSelectionNegotiation"]
    assert (role.scu_role, role.scp_role) == (True, False)
    assert answer.contexts[1].scu_role and not answer.contexts[1].scp_role


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"require_called_ae": True, "ae_title": "OTHER"}, (1, 1, 7)),
        ({"require_called_ae": True, "ae_title": "DICOMACCEL"}, None),
        ({"calling_ae_allow": frozenset({"GETSCU"})}, (1, 1, 3)),
        ({"calling_ae_allow": frozenset({"STORESCU"})}, None),
    ],
)
def test_negotiation_ae_checks(config, expected):
    _, answer = _negotiate([build_context(VERIFICATION)], **config)
    if expected is None:
        assert isinstance(answer, Acceptance)
    else:
        assert answer == Rejection(*expected)


def test_application_context_and_provider_checks():
    raw = _pynetdicom_rq([build_context(VERIFICATION)], _user_info())
    rq = pdu.decode_associate_rq(memoryview(raw)[6:])
    rq.application_context = "1.2.3"
    assert negotiate(rq, ServerConfig()) == Rejection(1, 1, 2)
    assert check_provider(rq, 0, ServerConfig()) is None
    assert check_provider(rq, 64, ServerConfig()) == Rejection(2, 3, 2)
    rq.protocol_version = 2  # bit 0 clear
    assert check_provider(rq, 0, ServerConfig()) == Rejection(1, 2, 2)


def test_fixed_pdus():
    assert pdu.encode_associate_rj(1, 2, 2) == bytes.fromhex("03000000000400010202")
    assert pdu.encode_abort(2, 6) == bytes.fromhex("07000000000400000206")
    assert pdu.A_RELEASE_RP_BYTES == bytes.fromhex("06000000000400000000")
    assert pdu.A_RELEASE_RQ_BYTES == bytes.fromhex("05000000000400000000")


# ------------------------------------------------------------------------- command sets


def test_encode_command_read_by_pydicom():
    raw = messages.encode_command(
        {
            "CommandField": messages.C_STORE_RQ,
            "AffectedSOPClassUID": CT,  # odd length: padded with NUL
            "MessageID": 7,
            "Priority": messages.PRIORITY_HIGH,
            "CommandDataSetType": messages.DATASET_PRESENT,
            "AffectedSOPInstanceUID": "1.2.3.4",
            "MoveOriginatorApplicationEntityTitle": "ORIG",
            "ErrorComment": None,  # None: left out
        }
    )
    ds = read_dataset(BytesIO(raw), is_implicit_VR=True, is_little_endian=True)
    tags = [int(e.tag) for e in ds]
    assert tags == sorted(tags) and tags[0] == 0
    assert ds.CommandGroupLength == len(raw) - 12
    assert ds.AffectedSOPClassUID == CT
    assert ds[0x00000002].value == CT and raw.count(CT.encode() + b"\x00") == 1
    assert (ds.CommandField, ds.MessageID, ds.Priority, ds.CommandDataSetType) == (1, 7, 1, 1)
    assert ds.AffectedSOPInstanceUID == "1.2.3.4"
    assert ds.MoveOriginatorApplicationEntityTitle == "ORIG"
    assert 0x00000902 not in ds


def test_decode_command_written_by_pydicom():
    ds = Dataset()
    ds.CommandGroupLength = 0  # value is not trusted
    ds.AffectedSOPClassUID = PATIENT_GET
    ds.CommandField = messages.C_GET_RSP
    ds.MessageIDBeingRespondedTo = 3
    ds.CommandDataSetType = messages.NO_DATASET
    ds.Status = 0xFF00
    ds.ErrorComment = "a comment"
    ds.OffendingElement = [0x00080052, 0x00100020]
    ds.NumberOfRemainingSuboperations = 2
    ds.add_new(0x00000903, "US", 9)
    ds.add_new(0x00005555, "UN", b"\x01\x02")  # not a known command element: raw bytes
    buf = DicomBytesIO()
    buf.is_implicit_VR = True
    buf.is_little_endian = True
    write_dataset(buf, ds)
    command = messages.decode_command(buf.getvalue())
    assert command == {
        "AffectedSOPClassUID": PATIENT_GET,
        "CommandField": 0x8010,
        "MessageIDBeingRespondedTo": 3,
        "CommandDataSetType": 0x0101,
        "Status": 0xFF00,
        "OffendingElement": [0x00080052, 0x00100020],
        "ErrorComment": "a comment",
        "ErrorID": 9,
        "NumberOfRemainingSuboperations": 2,
        0x5555: b"\x01\x02",
    }
    assert not messages.has_dataset(command) and not messages.is_request(command["CommandField"])


def test_command_round_trip_with_unknown_tag():
    original = {"CommandField": 0x0030, "MessageID": 1, "CommandDataSetType": 0x0101, 0x4444: b"ab"}
    assert messages.decode_command(messages.encode_command(original)) == original


@pytest.mark.parametrize(
    "raw, offset, text",
    [
        (struct.pack("<HHL", 0, 0x100, 2) + b"\x30", 100, "exceeds"),
        (struct.pack("<HHL", 8, 0x16, 2) + b"ab", 100, "in a command set"),
        (struct.pack("<HHL", 0, 0x100, 4) + b"\x30\0\0\0", 100, "US value is 4 bytes"),
        (struct.pack("<HHL", 0, 0x100, 2) + b"\x30\0" + b"\0\0\0", 110, "truncated"),
    ],
)
def test_decode_command_errors(raw, offset, text):
    with pytest.raises(ParseError, match=text) as info:
        messages.decode_command(raw, base=100)
    assert info.value.offset == offset


def test_encode_command_rejects_bad_input():
    with pytest.raises(KeyError):
        messages.encode_command({"NoSuchKeyword": 1})
    with pytest.raises(ValueError, match="not a command element"):
        messages.encode_command({0x00080016: b"xx"})
    with pytest.raises(ValueError, match="bad value"):
        messages.encode_command({"MessageID": 70000})


# ------------------------------------------------------------------------- state machine


def test_fsm_table_matches_ps3_8():
    t = fsm.TRANSITIONS
    assert len(t) == 123  # the non-blank cells of PS3.8 Table 9-10
    assert set(t.values()) <= set(fsm.ACTIONS)
    assert {s for _, s in t} <= set(fsm.STATES) and {e for e, _ in t} == set(fsm.EVENTS)
    # Cells an acceptor goes through, cited from Table 9-10.
    assert t[("Evt5", "Sta1")] == "AE-5"
    assert t[("Evt6", "Sta2")] == "AE-6"
    assert t[("Evt7", "Sta3")] == "AE-7" and t[("Evt8", "Sta3")] == "AE-8"
    assert t[("Evt10", "Sta6")] == "DT-2" and t[("Evt10", "Sta2")] == "AA-1" and t[("Evt10", "Sta13")] == "AA-6"
    assert t[("Evt12", "Sta6")] == "AR-2" and t[("Evt14", "Sta8")] == "AR-4"
    assert t[("Evt12", "Sta7")] == "AR-8" and t[("Evt13", "Sta10")] == "AR-10" and t[("Evt14", "Sta12")] == "AR-4"
    assert t[("Evt17", "Sta13")] == "AR-5" and t[("Evt17", "Sta2")] == "AA-5" and t[("Evt17", "Sta6")] == "AA-4"
    assert t[("Evt18", "Sta2")] == "AA-2" and t[("Evt18", "Sta13")] == "AA-2"
    assert t[("Evt19", "Sta6")] == "AA-8" and t[("Evt19", "Sta13")] == "AA-7"
    assert ("Evt9", "Sta7") not in t  # no P-DATA after we asked for release
    # Every event a peer can cause is defined in every state an acceptor can be in.
    acceptor_states = ["Sta2", "Sta3"] + [f"Sta{i}" for i in (6, 7, 8, 10, 12, 13)]
    for event in ("Evt3", "Evt4", "Evt6", "Evt10", "Evt12", "Evt13", "Evt16", "Evt17", "Evt19"):
        for state in acceptor_states:
            assert (event, state) in t, (event, state)
    assert {a.next_state for a in fsm.ACTIONS.values()} - {None} <= set(fsm.STATES)


def test_storage_context_prefers_explicit_over_implicit_vr():
    rq, answer = _negotiate(
        [build_context(CT, [IMPLICIT, EXPLICIT]), build_context(MR, [IMPLICIT])],
        extra=[build_role(CT, scp_role=True), build_role(MR, scp_role=True)],
    )
    chosen = {c.abstract_syntax: c.transfer_syntax for c in answer.contexts.values()}
    assert chosen == {CT: EXPLICIT, MR: IMPLICIT}


@pytest.mark.parametrize("sop, move", [
    ("1.2.840.10008.5.1.4.1.1.2", None),                      # odd-length UI: padded
    ("1.2.840.10008.5.1.4.1.1.20", ("MOVESCU", 7)),           # even, with a move originator
    ("1.2.3", ("ODD", 0xFFFF)),
])
def test_c_store_rq_template_equals_the_general_encoder(sop, move):
    command = {"AffectedSOPClassUID": sop, "CommandField": messages.C_STORE_RQ, "MessageID": 513,
               "Priority": messages.PRIORITY_MEDIUM, "CommandDataSetType": messages.DATASET_PRESENT,
               "AffectedSOPInstanceUID": "1.2.826.0.1.3680043.8.498.1234567"}
    if move is not None:
        command["MoveOriginatorApplicationEntityTitle"], command["MoveOriginatorMessageID"] = move
    fast = messages.encode_c_store_rq(sop, 513, messages.PRIORITY_MEDIUM, command["AffectedSOPInstanceUID"], move)
    assert fast == messages.encode_command(command)
    with pytest.raises(ValueError):
        messages.encode_c_store_rq(sop, 1 << 16, 0, "1.2")
