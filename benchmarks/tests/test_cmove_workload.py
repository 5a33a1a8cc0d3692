"""The cmove workload's parts that need no server: movescu's log, dcmqrscp's HostTable entry
for the destination, and the issue-12 target rows of the report."""

from __future__ import annotations

import pytest

from benchmarks import report
from benchmarks.cmove import parse_movescu_log
from benchmarks.peers import DcmqrscpPeer

# movescu -S at debug level (benchmarks.cmove.MOVESCU_LOG_CONFIG), abridged.
LOG = """\
10:00:00.000.000 INFO: Requesting Association
10:00:00.010.000 INFO: Sending Move Request
10:00:00.010.010 DEBUG: ===================== OUTGOING DIMSE MESSAGE ====================
10:00:00.015.000 INFO: Received Move Response 1
10:00:00.015.001 DEBUG: Remaining Suboperations       : 1
10:00:00.015.001 DEBUG: Completed Suboperations       : 1
10:00:00.020.000 INFO: Received Final Move Response
10:00:00.020.001 DEBUG: Message Type                  : C-MOVE RSP
10:00:00.020.001 DEBUG: Remaining Suboperations       : none
10:00:00.020.001 DEBUG: Completed Suboperations       : 2
10:00:00.020.001 DEBUG: Failed Suboperations          : 0
10:00:00.020.001 DEBUG: Warning Suboperations         : 0
10:00:00.020.001 DEBUG: DIMSE Status                  : 0x0000: Success: Sub-operations complete - No failures or warnings
10:00:00.020.010 INFO: Releasing Association
"""


def test_movescu_log_is_timed_to_the_final_response_with_its_counters():
    seconds, completed, failed, status = parse_movescu_log(LOG)
    assert seconds == pytest.approx(0.010)
    assert (completed, failed) == (2, 0)
    assert status.startswith("0x0000")
    with pytest.raises(RuntimeError, match="final response"):
        parse_movescu_log(LOG.split("10:00:00.020.000")[0])


def test_dcmqrscp_host_table_names_the_move_destination(tmp_path, monkeypatch):
    peer = DcmqrscpPeer(tmp_path)
    peer.port = 11112
    monkeypatch.setattr(DcmqrscpPeer, "move_destinations", {"MOVEDEST": ("127.0.0.1", 40123)})
    text = peer._write_config(1024).read_text()
    assert "(MOVEDEST, 127.0.0.1, 40123)" in text and "(MOVESCU, 127.0.0.1, 0)" in text


def test_issue12_targets_compare_with_dcmqrscp():
    def row(method, peer, seconds):
        return {"section": "move", "corpus": "ct", "label": "CT", "method": method, "peer": peer,
                "instances": 200, "bytes": 10**8,
                "runs": [{"seconds": s, "bytes": 10**8, "peak_mib": 50, "accepted": 200} for s in seconds]}
    data = {"rows": [row("C-MOVE STUDY, movescu to storescp --ignore", "dicomaccel", [0.1, 0.12, 0.1]),
                     row("C-MOVE STUDY, movescu to storescp --ignore", "dcmqrscp", [0.2, 0.25, 0.3])]}
    lines = report.targets(data, report.ISSUE12_TARGETS)
    assert len(lines) == 3 and "2.50x" in lines[2] and lines[2].endswith("| yes |")
    assert report.targets(data) == []  # not an issue-11 target
