"""Clients: every way a workload moves data to or from a server, each timed the same way.

Each function returns a dict with at least ``seconds`` (the timed span), ``first`` (seconds to
the first stored or received instance, or None) and ``accepted`` (instances the server stored
or sent); some add ``bytes``, ``client_cpu_s`` and ``failure_reasons``.

- STOW-RS: :func:`stow_run` (one process per client, each on one keep-alive ``http.client``
  connection) and :func:`large_upload_run` (one instance streamed with chunked encoding);
- DCMTK: :func:`storescu` and :func:`getscu_run`, timed from their own logs by
  :func:`dcmtk_log` (the one parser of DCMTK's log lines);
- raw: :func:`drain_run`, a socket SCU that reads PDUs, answers each C-STORE-RQ with Success
  and parses nothing else — what a server alone can push;
- pynetdicom: :func:`pynetdicom_run`, an SCU that counts what arrives without decoding it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import multiprocessing
import re
import resource
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from itertools import repeat
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CompositeInstanceRootRetrieveGet,
    StudyRootQueryRetrieveInformationModelGet,
)

from benchmarks.corpus import Corpus
from benchmarks.peers import Peer, dcmtk_env, dcmtk_program
from dicomaccel.dimse import messages, pdu
from dicomaccel.testing import pdu as rawpdu
from dicomaccel.testing.stow import multipart

RUN_TIMEOUT = 1800
GETSCU_TITLE = "GETSCU"
STORESCU_TITLE = "STORESCU"
SCU_TITLE = "PYNETDICOM"
DRAIN_TITLE = GETSCU_TITLE  # Orthanc answers C-GET only to the titles it lists (benchmarks/orthanc.py)


# --------------------------------------------------------------------------------------------
# STOW-RS

def _stow_counts(body: bytes) -> tuple[int, int]:
    """(stored, failed) from a STOW-RS response in JSON (PS3.18 Table 10.5.3-1)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return 0, 0
    if isinstance(doc, list):
        doc = doc[0] if doc else {}
    count = lambda tag: len((doc.get(tag) or {}).get("Value") or [])  # noqa: E731
    return count("00081199"), count("00081198")


STOW_BOUNDARY = "dicomaccel-bench"
STOW_CTYPE = f'multipart/related; type="application/dicom"; boundary={STOW_BOUNDARY}'


def stow_body(paths: list[Path]) -> bytes:
    """One STOW-RS request body holding the files ``paths``."""
    return multipart((p.read_bytes() for p in paths), STOW_BOUNDARY)


def _stow_client(port: int, path: str, mine: list[tuple[bytes, int]], barrier, results) -> None:
    """One STOW-RS client process: connect, wait for the others, POST ``mine`` on one keep-alive
    connection; put its counts, reasons, time stamps and own CPU seconds on ``results``."""
    out = {"stored": 0, "failed": 0, "errors": [], "reasons": {}, "first": None, "start": None, "end": None,
           "cpu": 0.0}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=RUN_TIMEOUT)
    try:
        conn.connect()
        barrier.wait(60)
        cpu = _cpu_s(resource.getrusage(resource.RUSAGE_SELF))
        out["start"] = time.perf_counter()
        for body, _ in mine:
            conn.request("POST", path, body=body, headers={"Content-Type": STOW_CTYPE,
                                                           "Accept": "application/dicom+json"})
            resp = conn.getresponse()
            text = resp.read()
            ok, bad = _stow_counts(text)
            for code in _failure_reasons(text):
                out["reasons"][code] = out["reasons"].get(code, 0) + 1
            if ok and out["first"] is None:
                out["first"] = time.perf_counter()
            out["stored"] += ok
            out["failed"] += bad
            if resp.status not in (200, 202, 409):
                out["errors"].append(f"HTTP {resp.status}")
        out["end"] = time.perf_counter()
        out["cpu"] = _cpu_s(resource.getrusage(resource.RUSAGE_SELF)) - cpu
    except (OSError, http.client.HTTPException, threading.BrokenBarrierError) as exc:
        barrier.abort()  # the others stop waiting for a client that will not come
        out["errors"].append(repr(exc))
    finally:
        conn.close()
        results.put(out)


def _cpu_s(usage: resource.struct_rusage) -> float:
    """User + system seconds of a ``resource.getrusage`` result."""
    return usage.ru_utime + usage.ru_stime


def stow_run(port: int, path: str, bodies: list[tuple[bytes, int]], clients: int) -> dict:
    """POST every body, round robin over ``clients`` client processes (forked: they share the
    prebuilt bodies), each with one keep-alive connection; all start at one barrier. Time runs
    from the first client's start to the last client's end; ``client_cpu_s`` sums the clients'
    own CPU over that span."""
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(clients), ctx.SimpleQueue()
    procs = [ctx.Process(target=_stow_client, args=(port, path, bodies[i::clients], barrier, results), daemon=True)
             for i in range(clients)]
    for proc in procs:
        proc.start()
    try:
        outs = [results.get() for _ in procs]
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    errors = [e for o in outs for e in o["errors"]]
    stored = sum(o["stored"] for o in outs)
    if errors and not stored:
        raise RuntimeError(f"STOW-RS failed: {errors[:3]}")
    start = min(o["start"] for o in outs if o["start"] is not None)
    firsts = [o["first"] for o in outs if o["first"] is not None]
    reasons: dict[str, int] = {}
    for o in outs:
        for code, n in o["reasons"].items():
            reasons[code] = reasons.get(code, 0) + n
    return {"seconds": max(o["end"] or time.perf_counter() for o in outs) - start,
            "first": min(firsts) - start if firsts else None, "accepted": stored, "http_errors": len(errors),
            "failure_reasons": reasons, "client_cpu_s": sum(o["cpu"] for o in outs)}


def large_upload_run(port: int, path: str, file: Path, chunk: int = 1 << 20) -> dict:
    """POST one instance read from ``file`` in ``chunk``-byte pieces with chunked transfer
    coding, so neither side can know the size in advance and the client holds one chunk."""
    head = f"--{STOW_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()

    def body():
        yield head
        with open(file, "rb") as f:
            while data := f.read(chunk):
                yield data
        yield f"\r\n--{STOW_BOUNDARY}--\r\n".encode()

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=RUN_TIMEOUT)
    try:
        cpu = _cpu_s(resource.getrusage(resource.RUSAGE_SELF))
        start = time.perf_counter()
        conn.request("POST", path, body=body(), encode_chunked=True,
                     headers={"Content-Type": STOW_CTYPE, "Accept": "application/dicom+json"})
        resp = conn.getresponse()
        text = resp.read()
        seconds = time.perf_counter() - start
        cpu = _cpu_s(resource.getrusage(resource.RUSAGE_SELF)) - cpu
    finally:
        conn.close()
    stored, _ = _stow_counts(text)
    if resp.status not in (200, 202, 409):
        raise RuntimeError(f"large upload: HTTP {resp.status} {text[:300]!r}")
    reasons: dict[str, int] = {}
    for code in _failure_reasons(text):
        reasons[code] = reasons.get(code, 0) + 1
    return {"seconds": seconds, "first": seconds if stored else None, "accepted": stored,
            "failure_reasons": reasons, "client_cpu_s": cpu}


def _failure_reasons(body: bytes) -> list[str]:
    """Failure Reason (0008,1197) of each Failed SOP Sequence item, as 0xXXXX ('none' if absent)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return []
    if isinstance(doc, list):
        doc = doc[0] if doc else {}
    out = []
    for item in (doc.get("00081198") or {}).get("Value") or []:
        value = (item.get("00081197") or {}).get("Value") or []
        out.append(f"0x{int(value[0]):04X}" if value else "none")
    return out



# --------------------------------------------------------------------------------------------
# DCMTK storescu and getscu, timed from their logs

# DCMTK's logger (log4cplus) pattern: %Q is milliseconds with a microsecond fraction.
DCMTK_LOG_CONFIG = """\
log4cplus.rootLogger = INFO, console
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = %D{%H:%M:%S.%Q} %p: %m%n
"""
_STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3})\.(\d{3}) (\w+): (.*)$")


def dcmtk_log(text: str) -> Iterator[tuple[float, str]]:
    """(seconds since midnight, message) of each line of a log written with
    :data:`DCMTK_LOG_CONFIG`; a log that crosses midnight keeps counting up."""
    day, previous = 0.0, None
    for line in text.splitlines():
        m = _STAMP.match(line)
        if not m:
            continue
        h, mi, s, ms, us = (int(g) for g in m.groups()[:5])
        t = h * 3600 + mi * 60 + s + ms / 1e3 + us / 1e6 + day
        if previous is not None and t < previous:
            day += 86400
            t += 86400
        previous = t
        yield t, m.group(7)


def storescu_times(text: str) -> tuple[float, float | None, float]:
    """(first Store Request, first successful Store Response or None, last Store Response), in
    seconds since midnight, from a storescu log."""
    sent = last = first = None
    for t, message in dcmtk_log(text):
        if message.startswith("Sending Store Request") and sent is None:
            sent = t
        elif message.startswith("Received Store Response"):
            last = t
            if first is None and "(Success" in message:
                first = t
    if sent is None or last is None:
        raise RuntimeError(f"storescu log has no Store Request and Response:\n{text[-1500:]}")
    return sent, first, last


def parse_storescu_log(text: str) -> tuple[float, float | None]:
    """(seconds from the first Store Request to the last Store Response, seconds to the first
    successful response) from a storescu log."""
    sent, first, last = storescu_times(text)
    return last - sent, None if first is None else first - sent


def parse_getscu_log(text: str) -> tuple[float, float, int, int]:
    """From a getscu log: (seconds from C-GET request to final response, seconds to the first
    complete instance, C-STORE sub-operations answered Success, Number of Completed
    Sub-operations in the final response)."""
    sent = first = final = None
    stored = completed = 0
    for t, message in dcmtk_log(text):
        if message.startswith("Sending C-GET Request"):
            sent = t
        elif message.startswith("Sending C-STORE Response (Success)"):
            stored += 1
            first = t if first is None else first
        elif message.startswith("Received C-GET Response") and "(Pending)" not in message:
            final = t
        elif message.strip().startswith("Number of Completed Suboperations"):
            completed = int(message.rsplit(":", 1)[1])
    if sent is None or final is None or first is None:
        raise RuntimeError(f"getscu log lacks the C-GET request, a stored instance or the final response:\n"
                           f"{text[-1500:]}")
    return final - sent, first - sent, stored, completed


# storescu proposes uncompressed syntaxes unless told which compressed one to propose; it does
# not propose a file's own syntax by itself. Syntaxes missing here go with the default proposal.
STORESCU_SYNTAX = {
    "1.2.840.10008.1.2.2": "-xb", "1.2.840.10008.1.2.1.99": "-xd", "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx", "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw", "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.5": "-xr",
}


def storescu_groups(corpus: Corpus) -> list[tuple[list[str], list[Path]]]:
    """(storescu transfer syntax options, files) per association: one per compressed syntax."""
    groups: dict[str, list[Path]] = {}
    for i, path in enumerate(corpus.files):
        groups.setdefault(STORESCU_SYNTAX.get(corpus.syntax_of(i), ""), []).append(path)
    return [([opt] if opt else [], files) for opt, files in groups.items()]


def storescu(peer: Peer, corpus: Corpus, log_config: Path, associations: int = 1) -> tuple[float, float | None]:
    """Send ``corpus`` with DCMTK ``storescu``, one transfer syntax group after the other, each
    group's files split in order over ``associations`` storescu processes run at once; (seconds
    summed over the groups, each from its first Store Request to its last Store Response in
    any of its associations, seconds to the first success in the first group)."""
    seconds, first, failed = 0.0, None, []
    for options, files in storescu_groups(corpus):
        # -R: propose only the SOP classes of the files (fewer than 128 contexts even for
        # pydicom-data's mix); -nh: carry on past a refused file.
        cmd = [dcmtk_program("storescu"), "--log-config", str(log_config), "-R", "-nh", *options,
               "-aet", STORESCU_TITLE, "-aec", peer.ae_title, "127.0.0.1", str(peer.port)]
        n = min(associations, len(files))
        parts = [files[len(files) * i // n:len(files) * (i + 1) // n] for i in range(n)]
        with contextlib.ExitStack() as stack:
            # Logs to files, not pipes: one storescu waiting on a full pipe would stall the run.
            logs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in parts]
            runs = [subprocess.Popen([*cmd, *map(str, part)], stdout=log, stderr=subprocess.STDOUT, text=True,
                                     env=dcmtk_env()) for part, log in zip(parts, logs)]
            for run in runs:
                run.wait(RUN_TIMEOUT)
            times = []
            for log in logs:
                log.seek(0)
                try:
                    times.append(storescu_times(log.read()))
                except RuntimeError as exc:
                    # storescu sent nothing in this association (it could not send the group's
                    # files): they count as not stored, the other groups still do.
                    failed.append(exc)
        if not times:
            continue
        sent = min(t[0] for t in times)
        successes = [t[1] for t in times if t[1] is not None]
        if first is None and successes:
            first = seconds + min(successes) - sent
        seconds += max(t[2] for t in times) - sent
    if first is None and failed:
        raise failed[0]
    return seconds, first


def cstore_run(peer: Peer, corpus: Corpus, log_config: Path, associations: int = 1) -> dict:
    """``corpus`` into an empty server by :func:`storescu`; counts what the server then holds."""
    seconds, first = storescu(peer, corpus, log_config, associations)
    return {"seconds": seconds, "first": first, "accepted": peer.instance_count()}


def run_dcmtk(cmd: list[str]) -> tuple[int, str]:
    """Run a DCMTK client to its end: ``(exit status, its log)``.

    The log goes to a file, read once the client has ended, as storescu's do: through a pipe,
    this process would wake at every line the client logs (one or more per request or
    instance) while the run is timed."""
    with tempfile.TemporaryFile("w+") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=dcmtk_env(),
                              timeout=RUN_TIMEOUT)
        log.seek(0)
        return done.returncode, log.read()


def getscu_run(peer: Peer, corpus: Corpus, level: str, max_pdu: int, log_config: Path) -> dict:
    """One C-GET by DCMTK ``getscu --ignore`` (timed from its log)."""
    keys = ["-k", f"QueryRetrieveLevel={level}", "-k", f"StudyInstanceUID={corpus.study_uid}"]
    if level == "SERIES":
        keys += ["-k", f"SeriesInstanceUID={corpus.series_uid}"]
    # +xv: accept JPEG 2000 lossless (besides uncompressed) so a compressed corpus can come as stored.
    syntax = ["+xv"] if corpus.transfer_syntax == JPEG2000Lossless else []
    cmd = [dcmtk_program("getscu"), "--log-config", str(log_config), "-S", "-aet", GETSCU_TITLE,
           "-aec", peer.ae_title, "-pdu", str(max_pdu), "--ignore", *syntax, *keys, "127.0.0.1", str(peer.port)]
    status, log = run_dcmtk(cmd)
    failed = [line.split(": ", 1)[-1] for line in log.splitlines()
              if "ERROR:" in line or "(Failed" in line or "(Refused" in line]
    if status != 0 or failed:
        raise RuntimeError(f"getscu: {' / '.join(dict.fromkeys(failed)) or f'exit status {status}'}")
    seconds, first, stored, completed = parse_getscu_log(log)
    if stored != len(corpus.files) or completed != len(corpus.files):
        raise RuntimeError(f"getscu received {stored}, final response reports {completed} completed, "
                           f"expected {len(corpus.files)}")
    return {"seconds": seconds, "first": first, "accepted": stored}


# --------------------------------------------------------------------------------------------
# C-GET: raw draining SCU, pynetdicom SCU


class RetrieveRefused(RuntimeError):
    """The peer refused the retrieve: association, presentation context or C-GET status."""


def identifiers(corpus: Corpus, level: str, frames: list[list[int]] | None = None) -> list[Dataset]:
    """The C-GET Identifiers (PS3.4 C.4.3.1.3) that fetch ``corpus`` at ``level``: one for STUDY
    or SERIES, one per instance for IMAGE, and for FRAME one per instance asking for
    ``frames[i]`` as a Simple Frame List (PS3.4 Y.6.1)."""
    out = []
    for sop, wanted in zip(corpus.sop_uids if level in ("IMAGE", "FRAME") else [None], frames or repeat(None)):
        q = Dataset()
        q.QueryRetrieveLevel = level
        q.StudyInstanceUID = corpus.study_uid
        if level != "STUDY":
            q.SeriesInstanceUID = corpus.series_uid
        if sop:
            q.SOPInstanceUID = sop
        if level == "FRAME":
            q.SimpleFrameList = wanted
        out.append(q)
    return out


def retrieve_model(level: str) -> str:
    """FRAME level exists only in Composite Instance Root Retrieve (PS3.4 Y); the rest: Study Root."""
    return CompositeInstanceRootRetrieveGet if level == "FRAME" else StudyRootQueryRetrieveInformationModelGet


def _accepted(ac: bytes) -> set[int]:
    """IDs of the presentation contexts an A-ASSOCIATE-AC body accepts (result 0, PS3.8 9.3.3.2)."""
    out, pos = set(), pdu.ASSOCIATE_FIXED_LENGTH
    while pos + pdu.ITEM_HEADER.size <= len(ac):
        kind, length = pdu.ITEM_HEADER.unpack_from(ac, pos)
        if kind == pdu.ITEM_PRESENTATION_CONTEXT_AC and ac[pos + 6] == pdu.PC_ACCEPTANCE:
            out.add(ac[pos + 4])
        pos += pdu.ITEM_HEADER.size + length
    return out


def drain_run(peer: Peer, corpus: Corpus, level: str, max_pdu: int, frames: list[list[int]] | None = None) -> dict:
    """C-GETs of ``corpus`` at ``level`` (see :func:`identifiers`) by a raw draining SCU on one
    association: it reads every PDU, keeps only PDV headers and command sets, throws the data
    set bytes away and answers each C-STORE-RQ with Success. Timed from sending the first
    C-GET-RQ to the last final C-GET-RSP; ``first`` is the time to the first complete
    instance, ``bytes`` the data set bytes received."""
    model = retrieve_model(level)
    syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    if corpus.transfer_syntax == JPEG2000Lossless:
        syntaxes.insert(0, JPEG2000Lossless)
    contexts = [(1, model.encode(), [ImplicitVRLittleEndian.encode()]),
                *((3 + 2 * i, uid.encode(), [ts.encode() for ts in syntaxes])
                  for i, uid in enumerate(corpus.sop_classes))]
    requests = [(rawpdu.dataset_bytes(q, implicit=True), i + 1) for i, q in enumerate(identifiers(corpus, level, frames))]
    sock = socket.create_connection(("127.0.0.1", peer.port), timeout=RUN_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stream = sock.makefile("rb", buffering=1 << 20)
    scratch = memoryview(bytearray(1 << 20))

    def read(n: int) -> bytes:
        data = stream.read(n)
        if len(data) != n:
            raise RuntimeError("drain: the peer closed the connection")
        return data

    def skip(n: int) -> None:
        while n:
            got = stream.readinto(scratch[:min(n, len(scratch))])
            if not got:
                raise RuntimeError("drain: the peer closed the connection")
            n -= got

    received = nbytes = 0
    first = None
    try:
        sock.sendall(rawpdu.associate_rq(peer.ae_title.encode(), DRAIN_TITLE.encode(), contexts,
                                         [(uid.encode(), 0, 1) for uid in corpus.sop_classes], max_pdu))
        kind, length = pdu.PDU_HEADER.unpack(read(6))
        body = read(length)
        if kind != pdu.A_ASSOCIATE_AC:
            raise RetrieveRefused("association rejected (A-ASSOCIATE-RJ)" if kind == pdu.A_ASSOCIATE_RJ
                                  else f"association answered with PDU type 0x{kind:02X}")
        if 1 not in _accepted(body):
            raise RetrieveRefused(f"presentation context {model.name} not accepted")
        start = time.perf_counter()
        for identifier, message_id in requests:
            request = messages.encode_command({
                "AffectedSOPClassUID": model, "CommandField": messages.C_GET_RQ, "MessageID": message_id,
                "Priority": messages.PRIORITY_MEDIUM, "CommandDataSetType": messages.DATASET_PRESENT})
            sock.sendall(rawpdu.p_data(1, 3, request) + rawpdu.p_data(1, 2, identifier))
            final = None
            command, fragments = {}, []
            while final is None:
                kind, length = pdu.PDU_HEADER.unpack(read(6))
                if kind != pdu.P_DATA_TF:
                    raise RetrieveRefused(f"PDU type 0x{kind:02X} during the C-GET (A-ABORT: 7)")
                while length:
                    pdv_length, pcid, control = pdu.PDV_HEADER.unpack(read(6))
                    length -= 4 + pdv_length
                    if control & 1:
                        fragments.append(read(pdv_length - 2))
                        if not control & 2:
                            continue
                        command = messages.decode_command(b"".join(fragments))
                        fragments.clear()
                        if messages.has_dataset(command):
                            continue  # answered when its data set has arrived
                    else:
                        skip(pdv_length - 2)
                        if command.get("CommandField") == messages.C_STORE_RQ:
                            nbytes += pdv_length - 2
                        if not control & 2:
                            continue
                    if command["CommandField"] == messages.C_STORE_RQ:
                        sock.sendall(rawpdu.p_data(pcid, 3, messages.encode_command({
                            "AffectedSOPClassUID": command["AffectedSOPClassUID"],
                            "CommandField": messages.C_STORE_RSP, "MessageIDBeingRespondedTo": command["MessageID"],
                            "CommandDataSetType": messages.NO_DATASET, "Status": 0x0000,
                            "AffectedSOPInstanceUID": command["AffectedSOPInstanceUID"]})))
                        received += 1
                        first = first or time.perf_counter() - start
                    elif command["CommandField"] == messages.C_GET_RSP and command["Status"] not in (0xFF00, 0xFF01):
                        final = command["Status"]
            if final != 0x0000:
                raise RetrieveRefused(f"C-GET final status 0x{final:04X} {command.get('ErrorComment', '')}".strip())
        seconds = time.perf_counter() - start
        sock.sendall(pdu.A_RELEASE_RQ_BYTES)
        while (reply := pdu.PDU_HEADER.unpack(read(6)))[0] != pdu.A_RELEASE_RP:
            skip(reply[1])
    except BaseException:
        with contextlib.suppress(OSError):
            sock.sendall(pdu.encode_abort(pdu.ABORT_SOURCE_USER, pdu.ABORT_REASON_NOT_SPECIFIED))
        raise
    finally:
        stream.close()
        sock.close()
    expected = len(requests) if level == "FRAME" else len(corpus.files)
    if received != expected:
        raise RuntimeError(f"drain received {received} instances, expected {expected}")
    return {"seconds": seconds, "first": first, "accepted": received, "bytes": nbytes}


def _scu(corpus: Corpus, model: str, max_pdu: int, on_store):
    ae = AE(ae_title=SCU_TITLE)
    ae.dimse_timeout = ae.network_timeout = ae.acse_timeout = RUN_TIMEOUT
    ae.add_requested_context(model)
    syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    if corpus.transfer_syntax == JPEG2000Lossless:
        syntaxes.insert(0, JPEG2000Lossless)
    for uid in corpus.sop_classes:
        ae.add_requested_context(uid, syntaxes)

    def on_open(event) -> None:
        # As TCP_NODELAY=1 does for DCMTK: no Nagle delay on the small command PDUs.
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    roles = [build_role(uid, scp_role=True) for uid in corpus.sop_classes]
    return ae, dict(ext_neg=roles, max_pdu=max_pdu,
                    evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_CONN_OPEN, on_open)])


def pynetdicom_run(peer: Peer, corpus: Corpus, level: str, max_pdu: int, frames: list[list[int]] | None = None) -> dict:
    """C-GETs of ``corpus`` at ``level`` (see :func:`identifiers`) by a pynetdicom SCU that counts
    what arrives without decoding it, all on one association."""
    received: list[float] = []
    nbytes = [0]

    def on_store(event) -> int:
        received.append(time.perf_counter())
        nbytes[0] += len(event.request.DataSet.getbuffer())
        return 0x0000

    model = retrieve_model(level)
    ae, kwargs = _scu(corpus, model, max_pdu, on_store)
    assoc = ae.associate("127.0.0.1", peer.port, ae_title=peer.ae_title, **kwargs)
    if assoc.is_rejected:
        raise RetrieveRefused("association rejected (A-ASSOCIATE-RJ)")
    if assoc.is_aborted or not assoc.is_established:
        raise RetrieveRefused("association aborted or not established")
    queries = identifiers(corpus, level, frames)
    try:
        if not any(cx.abstract_syntax == model for cx in assoc.accepted_contexts):
            raise RetrieveRefused(f"presentation context {model.name} not accepted")
        start = time.perf_counter()
        for q in queries:
            final = None
            for status, _ in assoc.send_c_get(q, model):
                if status is None or "Status" not in status:
                    raise RetrieveRefused("no C-GET response (timeout or abort)")
                if status.Status not in (0xFF00, 0xFF01):
                    final = status
            if final is None or final.Status != 0x0000:
                code = "none" if final is None else f"0x{final.Status:04X}"
                comment = final.get("ErrorComment", "") if final is not None else ""
                raise RetrieveRefused(f"C-GET final status {code} {comment}".strip())
        seconds = time.perf_counter() - start
    finally:
        if assoc.is_established:
            assoc.release()
    if len(received) != (len(queries) if level == "FRAME" else len(corpus.files)):
        raise RuntimeError(f"pynetdicom received {len(received)} instances")
    return {"seconds": seconds, "first": received[0] - start, "accepted": len(received), "bytes": nbytes[0]}


def forked(fn, *args):
    """``fn(*args)`` in a forked process (its own interpreter lock; its CPU counts as a child's):
    what it returns, or what it raises raised here."""
    ctx = multiprocessing.get_context("fork")
    reader, writer = ctx.Pipe(duplex=False)

    def child() -> None:
        try:
            writer.send((True, fn(*args)))
        except BaseException as exc:  # noqa: BLE001 - handed to the parent as is
            writer.send((False, exc))

    proc = ctx.Process(target=child, daemon=True)
    proc.start()
    writer.close()
    try:
        ok, value = reader.recv()
    except EOFError:
        raise RuntimeError(f"{fn.__name__}: its process ended without an answer") from None
    finally:
        proc.join()
    if not ok:
        raise value
    return value


# Besides getscu, which needs its log configuration. The drain SCU runs in a process of its own.
RETRIEVE_CLIENTS = {"pynetdicom": pynetdicom_run, "drain": lambda *args: forked(drain_run, *args)}



# --------------------------------------------------------------------------------------------
# HTTP GET: WADO-RS and QIDO-RS, one keep-alive client in a process of its own

def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0 < q <= 100) of ``values`` by the nearest-rank method: the
    smallest value that at least ``q`` % of the values do not exceed."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * q / 100) - 1)]


def multipart_boundary(content_type: str) -> str | None:
    """The ``boundary`` parameter of a multipart Content-Type (quoted or not), or None."""
    m = re.search(r';\s*boundary\s*=\s*(?:"([^"]*)"|([^;\s]+))', content_type or "", re.I)
    return (m.group(1) if m.group(1) is not None else m.group(2)) if m else None


class PartCounter:
    """Counts the body parts of a multipart body fed in chunks of any size: the delimiters
    (``--boundary``, RFC 2046 5.1.1) seen, less the close delimiter, which :attr:`closed`
    says was the last thing in the body."""

    def __init__(self, boundary: str) -> None:
        self.delimiter = b"--" + boundary.encode("latin-1")
        self.seen = 0
        self._tail = b""  # the last len(delimiter) + 3 bytes fed

    def feed(self, chunk, n: int | None = None) -> None:
        """Count the delimiters in the first ``n`` bytes of ``chunk`` (bytes or bytearray; all
        of it by default) without copying it: the client must not be what a benchmark of a
        server measures."""
        n = len(chunk) if n is None else n
        delimiter, keep = self.delimiter, len(self.delimiter) - 1
        if keep and self._tail:  # delimiters split between the previous chunk and this one
            self.seen += (self._tail[-keep:] + bytes(chunk[:min(keep, n)])).count(delimiter)
        self.seen += chunk.count(delimiter, 0, n)
        size = len(delimiter) + 4
        self._tail = (self._tail + bytes(chunk[max(0, n - size):n]))[-size:]

    @property
    def closed(self) -> bool:
        return self._tail.rstrip(b"\r\n").endswith(self.delimiter + b"--")

    @property
    def parts(self) -> int:
        return max(0, self.seen - 1) if self.closed else self.seen


def _http_get_loop(port: int, requests: list[tuple[str, dict[str, str]]], min_seconds: float,
                   min_requests: int, count_parts: bool, count_token: bytes | None) -> dict:
    """GET ``requests`` (path, headers) in turn on one keep-alive connection, cycling through
    them until both ``min_requests`` were sent and ``min_seconds`` have passed; each response
    read whole. With ``count_parts``, ``accepted`` counts the parts of multipart answers;
    ``matches`` is the mean count of ``count_token`` per answer (results of a search)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=RUN_TIMEOUT)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times, statuses, errors = [], {}, []
    buffer = bytearray(1 << 20)
    nbytes = ok = parts = matches = 0
    content_type = first = None
    cpu = _cpu_s(resource.getrusage(resource.RUSAGE_SELF))
    start = time.perf_counter()
    try:
        while len(times) < min_requests or time.perf_counter() - start < min_seconds:
            path, headers = requests[len(times) % len(requests)]
            t = time.perf_counter()
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            counter = PartCounter(multipart_boundary(resp.getheader("Content-Type", "")) or "-") \
                if count_parts else None
            while n := resp.readinto(buffer):  # one reused buffer: no allocation per read
                if first is None:
                    first = time.perf_counter() - start
                nbytes += n
                if count_token:
                    matches += buffer.count(count_token, 0, n)  # small answers: read in one piece
                if counter:
                    counter.feed(buffer, n)
                elif resp.status not in (200, 204) and len(errors) < 3:
                    errors.append(f"HTTP {resp.status} {path}: {bytes(buffer[:min(n, 200)])!r}")
            times.append(time.perf_counter() - t)
            statuses[str(resp.status)] = statuses.get(str(resp.status), 0) + 1
            content_type = content_type or resp.getheader("Content-Type")
            if resp.status in (200, 204):
                ok += 1
                parts += counter.parts if counter else 0
            elif not errors:
                errors.append(f"HTTP {resp.status} {path}")
    finally:
        seconds = time.perf_counter() - start
        cpu = _cpu_s(resource.getrusage(resource.RUSAGE_SELF)) - cpu
        conn.close()
    ms = [1e3 * t for t in times]
    return {"seconds": seconds, "first": first, "requests": len(times), "accepted": parts if count_parts else ok,
            "ok": ok, "bytes": nbytes, "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99),
            "statuses": statuses, "content_type": content_type, "errors": errors, "client_cpu_s": cpu,
            **({"matches": matches / len(times)} if count_token else {})}


def http_run(port: int, requests: list[tuple[str, dict[str, str]]], min_seconds: float = 0.0,
             min_requests: int | None = None, count_parts: bool = False, count_token: bytes | None = None) -> dict:
    """:func:`_http_get_loop` in a forked process (its own interpreter lock and CPU count, as
    the STOW-RS clients): ``requests`` are GET in turn on one keep-alive ``http.client``
    connection, at least ``min_requests`` (default: each once) and for at least ``min_seconds``;
    latency per request from sending it to the end of its body; raises if none answered 200/204."""
    result = forked(_http_get_loop, port, requests, min_seconds, min_requests or len(requests), count_parts,
                    count_token)
    if not result["ok"]:
        raise RuntimeError(f"no request answered 200: {result['statuses']} {' / '.join(result['errors'])[:300]}")
    return result


# --------------------------------------------------------------------------------------------
# C-FIND: DCMTK findscu, timed from its log

FINDSCU_TITLE = "FINDSCU"


def parse_findscu_log(text: str) -> dict:
    """From a findscu log: seconds from the first Find Request to the last final Find Response,
    the requests sent, the final responses (and how many were Success), the Pending responses."""
    sent = final = None
    requests = finals = success = pending = 0
    for t, message in dcmtk_log(text):
        if message.startswith("Sending Find Request"):
            requests += 1
            sent = t if sent is None else sent
        elif message.startswith("Received Final Find Response"):
            finals += 1
            success += "(Success" in message
            final = t
        elif message.startswith("Find Response:") and "(Pending" in message:
            pending += 1
    if sent is None or final is None:
        raise RuntimeError(f"findscu log lacks a Find Request or a final response:\n{text[-1500:]}")
    return {"seconds": final - sent, "requests": requests, "finals": finals, "success": success,
            "pending": pending}


def findscu_run(peer: Peer, keys: list[str], repeat: int, log_config: Path) -> dict:
    """``repeat`` Study Root C-FINDs of the same identifier (``keys``: findscu ``-k`` values) on
    one association by DCMTK ``findscu --repeat``, timed from its log; ``matches`` is the Pending
    responses per request."""
    cmd = [dcmtk_program("findscu"), "--log-config", str(log_config), "-S", "-aet", FINDSCU_TITLE,
           "-aec", peer.ae_title, "--repeat", str(repeat), *(a for k in keys for a in ("-k", k)),
           "127.0.0.1", str(peer.port)]
    status, log = run_dcmtk(cmd)
    failed = [line.split(": ", 1)[-1] for line in log.splitlines() if " E: " in line or "ERROR:" in line]
    if status != 0 or failed:
        raise RuntimeError(f"findscu: {' / '.join(dict.fromkeys(failed))[:300] or f'exit status {status}'}")
    parsed = parse_findscu_log(log)
    if parsed["success"] != repeat:
        raise RuntimeError(f"findscu: {parsed['success']} of {repeat} C-FINDs ended in Success")
    return {"seconds": parsed["seconds"], "first": None, "requests": parsed["requests"],
            "accepted": parsed["success"], "bytes": 0, "matches": parsed["pending"] / parsed["requests"]}
