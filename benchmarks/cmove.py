"""The ``cmove`` workload (issue 12): a Study Root C-MOVE (PS3.4 C.4.2) of a whole corpus by
DCMTK ``movescu`` to one DCMTK ``storescp --ignore`` that the harness starts, from every peer
with a C-MOVE SCP (dicomaccel, dcmqrscp). Both servers know the destination from their
configuration (``--move-destination``, dcmqrscp's HostTable).

The run is timed from movescu's log (debug level, so that the final response's counters are
in it): from the C-MOVE request to the final response, which both SCPs send after the last
sub-operation's C-STORE response (PS3.4 C.4.2.1.5); association set-up and release are outside
the timing, as for C-GET. The run counts only if the final response is Success with every
instance a completed sub-operation.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.clients import DCMTK_LOG_CONFIG, dcmtk_log, run_dcmtk
from benchmarks.corpus import Corpus
from benchmarks.peers import Peer, StorescpIgnorePeer, dcmtk_program

DESTINATION_TITLE = "MOVEDEST"
MOVESCU_TITLE = "MOVESCU"
MOVE_PEERS = ("dicomaccel", "dcmqrscp")
# movescu logs the sub-operation counters of its responses at debug level only.
MOVESCU_LOG_CONFIG = DCMTK_LOG_CONFIG.replace("rootLogger = INFO", "rootLogger = DEBUG")


class Destination(StorescpIgnorePeer):
    """DCMTK ``storescp --ignore`` on a free 127.0.0.1 port: it accepts every C-STORE and
    discards the data set (a sink that costs the senders nothing). Without the ``cstore``
    ceiling's options: storescp's defaults (one association at a time, a Maximum Length of
    16384 bytes), which every C-MOVE run so far was measured against."""

    name = "move-destination"
    ae_title = DESTINATION_TITLE
    options = ()

    @classmethod
    def unavailable(cls) -> str | None:
        missing = [p for p in ("storescp", "movescu") if dcmtk_program(p) is None]
        return f"DCMTK {', '.join(missing)} not installed (Debian package dcmtk)" if missing else None


def parse_movescu_log(text: str) -> tuple[float, int, int, str]:
    """From a movescu log at debug level: (seconds from the C-MOVE request to the final
    response, its Completed and Failed Sub-operations, its DIMSE Status text)."""
    sent = final = None
    completed = failed = 0
    status = ""
    for t, message in dcmtk_log(text):
        if message.startswith("Sending Move Request"):
            sent = t
        elif message.startswith("Received Final Move Response"):
            final = t
        elif final is not None and ":" in message:
            key, value = (s.strip() for s in message.split(":", 1))
            if key == "Completed Suboperations":
                completed = int(value) if value.isdigit() else 0
            elif key == "Failed Suboperations":
                failed = int(value) if value.isdigit() else 0
            elif key == "DIMSE Status" and not status:
                status = value
    if sent is None or final is None:
        raise RuntimeError(f"movescu log lacks the C-MOVE request or the final response:\n{text[-1500:]}")
    return final - sent, completed, failed, status


def movescu_run(peer: Peer, corpus: Corpus, log_config: Path) -> dict:
    """One Study Root C-MOVE of ``corpus``'s study to :data:`DESTINATION_TITLE`."""
    cmd = [dcmtk_program("movescu"), "--log-config", str(log_config), "-S", "-aet", MOVESCU_TITLE,
           "-aec", peer.ae_title, "-aem", DESTINATION_TITLE, "-k", "QueryRetrieveLevel=STUDY",
           "-k", f"StudyInstanceUID={corpus.study_uid}", "127.0.0.1", str(peer.port)]
    exit_status, log = run_dcmtk(cmd)
    seconds, completed, failed, status = parse_movescu_log(log)
    if exit_status != 0 or not status.startswith("0x0000") or completed != len(corpus.files):
        raise RuntimeError(f"movescu: final status {status or '?'}, {completed} completed and {failed} failed "
                           f"of {len(corpus.files)} (exit status {exit_status})")
    return {"seconds": seconds, "first": None, "accepted": completed}
