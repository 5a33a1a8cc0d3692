"""The DICOM Upper Layer state machine, as tables (PS3.8 §9.2, Tables 9-9 and 9-10).

Names are the standard's: states ``Sta1``..``Sta13``, events ``Evt1``..``Evt19`` and actions
``AE-1``..``AA-8``. :data:`TRANSITIONS` maps ``(event, state)`` to an action; :data:`ACTIONS`
gives each action's description and next state (``None`` where PS3.8 makes it depend on the
outcome: AE-6 and AR-8). A pair missing from :data:`TRANSITIONS` is a state/event combination
PS3.8 leaves blank; for local primitives (Evt1, Evt7-9, Evt11, Evt14, Evt15) that is a usage
error of the caller, never something a peer can cause: every event a peer can trigger
(Evt3, Evt4, Evt6, Evt10, Evt12, Evt13, Evt16, Evt17, Evt19) has an entry for every state an
acceptor can be in.

The table is complete (requestor states included) so that it can be checked against the
standard line by line; :mod:`dicomaccel.dimse.association` implements the acceptor's actions.
"""

from __future__ import annotations

from typing import NamedTuple

STATES = {
    "Sta1": "Idle",
    "Sta2": "Transport connection open (awaiting A-ASSOCIATE-RQ PDU)",
    "Sta3": "Awaiting local A-ASSOCIATE response primitive",
    "Sta4": "Awaiting transport connection opening to complete",
    "Sta5": "Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU",
    "Sta6": "Association established and ready for data transfer",
    "Sta7": "Awaiting A-RELEASE-RP PDU",
    "Sta8": "Awaiting local A-RELEASE response primitive",
    "Sta9": "Release collision requestor side; awaiting A-RELEASE response primitive",
    "Sta10": "Release collision acceptor side; awaiting A-RELEASE-RP PDU",
    "Sta11": "Release collision requestor side; awaiting A-RELEASE-RP PDU",
    "Sta12": "Release collision acceptor side; awaiting A-RELEASE response primitive",
    "Sta13": "Awaiting Transport Connection Close Indication",
}

EVENTS = {
    "Evt1": "A-ASSOCIATE request (local user)",
    "Evt2": "Transport connect confirmation (local transport service)",
    "Evt3": "A-ASSOCIATE-AC PDU (received on transport connection)",
    "Evt4": "A-ASSOCIATE-RJ PDU (received on transport connection)",
    "Evt5": "Transport connection indication (local transport service)",
    "Evt6": "A-ASSOCIATE-RQ PDU (received on transport connection)",
    "Evt7": "A-ASSOCIATE response primitive (accept)",
    "Evt8": "A-ASSOCIATE response primitive (reject)",
    "Evt9": "P-DATA request primitive",
    "Evt10": "P-DATA-TF PDU (received on transport connection)",
    "Evt11": "A-RELEASE request primitive",
    "Evt12": "A-RELEASE-RQ PDU (received on transport connection)",
    "Evt13": "A-RELEASE-RP PDU (received on transport connection)",
    "Evt14": "A-RELEASE response primitive",
    "Evt15": "A-ABORT request primitive",
    "Evt16": "A-ABORT PDU (received on transport connection)",
    "Evt17": "Transport connection closed indication (local transport service)",
    "Evt18": "ARTIM timer expired (Association reject/release timer)",
    "Evt19": "Unrecognized or invalid PDU received",
}


class Action(NamedTuple):
    description: str
    next_state: str | None


ACTIONS = {
    "AE-1": Action("Issue TRANSPORT CONNECT request primitive to local transport service", "Sta4"),
    "AE-2": Action("Send A-ASSOCIATE-RQ PDU", "Sta5"),
    "AE-3": Action("Issue A-ASSOCIATE confirmation (accept) primitive", "Sta6"),
    "AE-4": Action("Issue A-ASSOCIATE confirmation (reject) primitive and close transport connection", "Sta1"),
    "AE-5": Action("Issue Transport connection response primitive; start ARTIM timer", "Sta2"),
    "AE-6": Action(
        "Stop ARTIM timer and if A-ASSOCIATE-RQ acceptable by service-provider: issue A-ASSOCIATE "
        "indication primitive (next state Sta3); otherwise issue A-ASSOCIATE-RJ-PDU and start ARTIM "
        "timer (next state Sta13)",
        None,
    ),
    "AE-7": Action("Send A-ASSOCIATE-AC PDU", "Sta6"),
    "AE-8": Action("Send A-ASSOCIATE-RJ PDU and start ARTIM timer", "Sta13"),
    "DT-1": Action("Send P-DATA-TF PDU", "Sta6"),
    "DT-2": Action("Send P-DATA indication primitive", "Sta6"),
    "AR-1": Action("Send A-RELEASE-RQ PDU", "Sta7"),
    "AR-2": Action("Issue A-RELEASE indication primitive", "Sta8"),
    "AR-3": Action("Issue A-RELEASE confirmation primitive, and close transport connection", "Sta1"),
    "AR-4": Action("Issue A-RELEASE-RP PDU and start ARTIM timer", "Sta13"),
    "AR-5": Action("Stop ARTIM timer", "Sta1"),
    "AR-6": Action("Issue P-DATA indication", "Sta7"),
    "AR-7": Action("Issue P-DATA-TF PDU", "Sta8"),
    "AR-8": Action(
        "Issue A-RELEASE indication (release collision): if association-requestor, next state is "
        "Sta9, if not next state is Sta10",
        None,
    ),
    "AR-9": Action("Send A-RELEASE-RP PDU", "Sta11"),
    "AR-10": Action("Issue A-RELEASE confirmation primitive", "Sta12"),
    "AA-1": Action("Send A-ABORT PDU (service-user source) and start (or restart if already started) ARTIM timer", "Sta13"),
    "AA-2": Action("Stop ARTIM timer if running. Close transport connection", "Sta1"),
    "AA-3": Action(
        "If (service-user initiated abort): issue A-ABORT indication and close transport connection; "
        "otherwise (service-provider initiated abort): issue A-P-ABORT indication and close transport "
        "connection",
        "Sta1",
    ),
    "AA-4": Action("Issue A-P-ABORT indication primitive", "Sta1"),
    "AA-5": Action("Stop ARTIM timer", "Sta1"),
    "AA-6": Action("Ignore PDU", "Sta13"),
    "AA-7": Action("Send A-ABORT PDU", "Sta13"),
    "AA-8": Action(
        "Send A-ABORT PDU (service-provider source), issue an A-P-ABORT indication, and start ARTIM timer",
        "Sta13",
    ),
}

_ASSOCIATED = ("Sta6", "Sta7", "Sta8", "Sta9", "Sta10", "Sta11", "Sta12")


def _assoc(action: str) -> dict[str, str]:
    return dict.fromkeys(_ASSOCIATED, action)


def _build() -> dict[tuple[str, str], str]:
    # One row per event of PS3.8 Table 9-10; a blank cell is a missing key. Later keys of a
    # row override the "all associated states" default.
    rows: dict[str, dict[str, str]] = {
        "Evt1": {"Sta1": "AE-1"},
        "Evt2": {"Sta4": "AE-2"},
        "Evt3": {"Sta2": "AA-1", "Sta3": "AA-8", "Sta5": "AE-3", **_assoc("AA-8"), "Sta13": "AA-6"},
        "Evt4": {"Sta2": "AA-1", "Sta3": "AA-8", "Sta5": "AE-4", **_assoc("AA-8"), "Sta13": "AA-6"},
        "Evt5": {"Sta1": "AE-5"},
        "Evt6": {"Sta2": "AE-6", "Sta3": "AA-8", "Sta5": "AA-8", **_assoc("AA-8"), "Sta13": "AA-7"},
        "Evt7": {"Sta3": "AE-7"},
        "Evt8": {"Sta3": "AE-8"},
        "Evt9": {"Sta6": "DT-1", "Sta8": "AR-7"},
        "Evt10": {
            "Sta2": "AA-1", "Sta3": "AA-8", "Sta5": "AA-8", **_assoc("AA-8"),
            "Sta6": "DT-2", "Sta7": "AR-6", "Sta13": "AA-6",
        },
        "Evt11": {"Sta6": "AR-1"},
        "Evt12": {
            "Sta2": "AA-1", "Sta3": "AA-8", "Sta5": "AA-8", **_assoc("AA-8"),
            "Sta6": "AR-2", "Sta7": "AR-8", "Sta13": "AA-6",
        },
        "Evt13": {
            "Sta2": "AA-1", "Sta3": "AA-8", "Sta5": "AA-8", **_assoc("AA-8"),
            "Sta7": "AR-3", "Sta10": "AR-10", "Sta11": "AR-3", "Sta13": "AA-6",
        },
        "Evt14": {"Sta8": "AR-4", "Sta9": "AR-9", "Sta12": "AR-4"},
        "Evt15": {"Sta3": "AA-1", "Sta4": "AA-2", "Sta5": "AA-1", **_assoc("AA-1")},
        "Evt16": {"Sta2": "AA-2", "Sta3": "AA-3", "Sta5": "AA-3", **_assoc("AA-3"), "Sta13": "AA-2"},
        "Evt17": {"Sta2": "AA-5", "Sta3": "AA-4", "Sta4": "AA-4", "Sta5": "AA-4", **_assoc("AA-4"), "Sta13": "AR-5"},
        "Evt18": {"Sta2": "AA-2", "Sta13": "AA-2"},
        "Evt19": {"Sta2": "AA-1", "Sta3": "AA-8", "Sta5": "AA-8", **_assoc("AA-8"), "Sta13": "AA-7"},
    }
    return {(event, state): action for event, cells in rows.items() for state, action in cells.items()}


TRANSITIONS: dict[tuple[str, str], str] = _build()
