"""EVT_C_STORE handler for a pynetdicom AE: received instances go into a dicomaccel archive
under its ingest policy, without pydicom decoding them (PS3.4 B.2.2, B.2.3).

pynetdicom receives a data set one of two ways, chosen for the whole process before any
data set arrives (a C-STORE-RQ does not say how long its data set is, PS3.7 9.3.1.1):

- in memory (pynetdicom's default): ``event.request.DataSet``, a BytesIO the handler reads
  through its buffer, without a copy. The fastest: per 0.5 MB CT instance about 1 ms less
  end to end than the temporary file (docs/embedding.md has the figures); memory is the
  instance's size per association receiving one.
- ``pynetdicom._config.STORE_RECV_CHUNKED_DATASET = True``: pynetdicom writes each data set
  to a temporary file as its P-DATA arrive (with pydicom's File Meta, a flush per PDV) and
  the event names it (``event.dataset_path``); the handler copies it in 1 MiB reads, then
  empties it. RSS stays flat whatever the size (a 1 GiB instance:
  tests/test_integrations_pynetdicom_rss.py). For AEs that receive instances of hundreds of
  MB. The file cannot become the stored one by a rename: its File Meta is pynetdicom's (its
  Implementation Class UID, 14 bytes shorter than ours) and ours must precede the data set.

Either way nothing is decoded, and the handler builds the PS3.10 file the archive stores: our File Meta group
(PS3.10 §7.1: Media Storage SOP Class and Instance UIDs from the request's Affected SOP
Class and Instance UIDs, PS3.7 9.1.1; Transfer Syntax UID of the accepted presentation
context, PS3.5 §10) followed by the data set bytes exactly as received, streamed into
:meth:`~dicomaccel.archive.Archive.begin` in 1 MiB writes; then it commits (scan, policy,
IOD check, duplicate rule, group commit and flush) and answers with the status the policy
decided:

====================  =============================================================
0000                  stored (or the same bytes were already stored)
B000 / B006 / B007    stored with coercion / elements discarded / IOD mismatch
                      (PS3.4 Table B.2-1)
0122                  SOP Class not supported by the policy (PS3.7 C.5.4)
0111                  Duplicate SOP Instance with different bytes (PS3.7 C.5.6)
0119                  Class-Instance conflict (PS3.7 C.5.7)
A700 / A710           out of resources: memory / storage space (A7xx)
A900                  data set does not match the SOP Class (IOD check ``reject``, or
                      UIDs that differ from the request's)
C000                  cannot understand (malformed data set, invalid UIDs)
0110                  processing failure (I/O error)
====================  =============================================================

Failures carry the archive's reason as Error Comment (0000,0902).
"""

from __future__ import annotations

import logging
import os

from pydicom.dataset import Dataset

from ...archive import Archive, StoreFailure
from ...retrieve.extraction import file_meta_bytes
from ...status import FailureReason

__all__ = ["ArchiveStoreHandler", "CHUNK"]

log = logging.getLogger("dicomaccel.integrations.pynetdicom")

# Bytes read from pynetdicom's temporary file per write into the archive.
CHUNK = 1 << 20


def _status(code: int, comment: str | None = None) -> Dataset | int:
    # pynetdicom takes a bare int as the response's Status (PS3.7 9.3.1.2): a Dataset only
    # when there is an Error Comment to carry (a Dataset with Status alone costs ~10 us).
    if not comment:
        return int(code)
    ds = Dataset()
    ds.Status = int(code)
    ds.ErrorComment = comment[:64]  # LO (PS3.7 C.4)
    return ds


def _dataset_start(f) -> int:
    """Offset of the data set in a PS3.10 file: 128-byte preamble, ``DICM``, then the File
    Meta group whose (0002,0000) File Meta Information Group Length, an Explicit VR Little
    Endian UL, counts the bytes after it (PS3.10 §7.1)."""
    head = f.read(144)
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:138] != b"\x02\x00\x00\x00UL":
        raise StoreFailure(FailureReason.CANNOT_UNDERSTAND, "received file has no File Meta group length")
    return 144 + int.from_bytes(head[140:144], "little")


class ArchiveStoreHandler:
    """EVT_C_STORE handler storing into a dicomaccel :class:`~dicomaccel.archive.Archive`::

        from pynetdicom import _config, evt
        # _config.STORE_RECV_CHUNKED_DATASET = True   # only if instances can be very large
        ae.start_server(("", 11112), evt_handlers=[(evt.EVT_C_STORE, ArchiveStoreHandler(archive))])

    The archive's :class:`~dicomaccel.policy.store.StorePolicy` decides (the same verdict
    STOW-RS gives); the handler blocks its association's thread until the instance is
    durable (``fsync=True``), then returns the status.

    Parameters
    ----------
    archive : Archive
    """

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    def __call__(self, event) -> Dataset | int:
        request = event.request
        meta = file_meta_bytes(str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID),
                               str(event.context.transfer_syntax))
        try:
            incoming = self.archive.begin()
            try:
                incoming.write(meta)
                try:
                    path = event.dataset_path  # STORE_RECV_CHUNKED_DATASET
                except AttributeError:
                    path = None
                if path is not None:
                    self._copy_file(incoming, path)
                else:
                    with request.DataSet.getbuffer() as view:
                        incoming.write(view)
            except BaseException:
                incoming.abort()
                raise
            outcome = incoming.commit()
        except StoreFailure as failure:
            log.info("C-STORE %s refused: %04X %s", request.AffectedSOPInstanceUID, failure.status,
                     failure.comment)
            return _status(failure.status, failure.comment)
        except OSError as exc:
            log.error("C-STORE: cannot read the received data set: %s", exc)
            return _status(FailureReason.PROCESSING_FAILURE, "cannot read the received data set")
        return _status(outcome.warning or 0x0000)

    @staticmethod
    def _copy_file(incoming, path: os.PathLike) -> None:
        # pynetdicom's file is preamble + its File Meta + the data set as received; ours
        # replaces its File Meta, the data set bytes go through unchanged.
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        with open(path, "r+b", buffering=0) as f:
            f.seek(_dataset_start(f))
            while True:
                n = f.readinto(buffer)
                if not n:
                    break
                incoming.write(view[:n])  # written before it returns: the buffer is reused
            # pynetdicom deletes the file once the handler returns, but until then its pages
            # are dirty: the archive's flush (syncfs, when the file system is the archive's)
            # would write them to disk first, about 0.6 ms per 0.5 MB instance
            # (docs/embedding.md). Emptied, they are dropped unwritten.
            os.ftruncate(f.fileno(), 0)
