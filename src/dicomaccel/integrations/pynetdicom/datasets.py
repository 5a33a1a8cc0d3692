"""pydicom data sets that pynetdicom sends without anything being decoded.

A C-GET handler must yield :class:`pydicom.dataset.Dataset` objects; pynetdicom encodes
each with pydicom's writer, which copies a *raw* element's value bytes unchanged when the
data set's original encoding is the context's (PS3.5 §7.1). So the data sets built here hold
raw elements only: the header before Pixel Data is read by pydicom without converting any
value, and Pixel Data (or Float / Double Float Pixel Data) is one raw element whose value is
a view of the stored file (a slice of its mmap) or of a new FRAME-level instance (bytes
when encapsulated: pydicom checks its first item with ``bytes.startswith``), never decoded. The caller picks a context whose transfer syntax is the data set's
(:func:`dicomaccel.retrieve.cget.pick_context`), so pynetdicom never re-encodes.
"""

from __future__ import annotations

import mmap
from io import BytesIO

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.tag import Tag

from ... import encaps
from ...elements import UNDEFINED_LENGTH, read_header
from ...retrieve.extraction import ExtractedInstance
from ...syntaxes import DEFLATED, EXPLICIT_VR_BE, IMPLICIT_VR_LE

__all__ = ["stored_dataset", "extracted_dataset", "unsendable", "map_file"]


def map_file(path) -> mmap.mmap:
    """A read-only map of a stored file (closed when the last view of it goes)."""
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _encoding(transfer_syntax: str) -> tuple[bool, bool]:
    return transfer_syntax == IMPLICIT_VR_LE, transfer_syntax != EXPLICIT_VR_BE


def _with_meta(ds: Dataset, transfer_syntax: str) -> Dataset:
    # pynetdicom picks the presentation context by (0002,0010) Transfer Syntax UID.
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    return ds


def _pixel_element(view: memoryview, pos: int, implicit: bool, little: bool) -> tuple[RawDataElement, int]:
    """The Pixel Data element whose header is at ``pos`` as a raw element over ``view``, and
    the offset just past it (PS3.5 §7.1.2 defined length, A.4 encapsulated)."""
    end = view.nbytes
    tag, vr, length, value = read_header(view, pos, end, not implicit, little)
    if length == UNDEFINED_LENGTH:
        # A.4: items up to the Sequence Delimitation Item, which pydicom writes itself.
        # pydicom checks the first item tag with bytes.startswith: a copy (compressed data).
        after = encaps.parse_items(view, value)[3]
        data = view[value:after - 8].tobytes()
    else:
        after = value + length
        if after > end:
            raise ValueError("Pixel Data runs past the end of the data")
        data = view[value:after]
    vr_text = None if vr is None else bytes(vr).decode("ascii")
    return RawDataElement(Tag(tag), vr_text, length, data, value, implicit, little), after


def stored_dataset(buffer, transfer_syntax: str, dataset_offset: int, pixel_offset: int) -> Dataset:
    """The data set of a PS3.10 file held in ``buffer`` (an mmap, bytes), as raw elements.

    Parameters
    ----------
    buffer : bytes-like
        The whole file; Pixel Data stays a view of it.
    transfer_syntax : str
        Its Transfer Syntax UID.
    dataset_offset : int
        Offset of the first data set element (after the File Meta group).
    pixel_offset : int
        Offset of the top-level Pixel Data element header, or -1 if it has none.
    """
    view = memoryview(buffer).cast("B")
    if transfer_syntax in DEFLATED:
        # PS3.5 A.5: the data set is one deflate stream; pydicom inflates it.
        ds = dcmread(BytesIO(view.tobytes()), force=True)
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        return ds
    implicit, little = _encoding(transfer_syntax)
    head_end = pixel_offset if pixel_offset >= 0 else view.nbytes
    ds = read_dataset(BytesIO(view[dataset_offset:head_end]), implicit, little)
    if pixel_offset >= 0:
        element, after = _pixel_element(view, pixel_offset, implicit, little)
        ds[element.tag] = element
        if after < view.nbytes:  # elements after Pixel Data (e.g. Data Set Trailing Padding)
            for tag, elem in read_dataset(BytesIO(view[after:]), implicit, little).items():
                ds[tag] = elem
    return _with_meta(ds, transfer_syntax)


def extracted_dataset(instance: ExtractedInstance) -> Dataset:
    """The new instance of a FRAME-level retrieve as raw elements (frames not copied)."""
    header, pixel_header, value = instance.dataset
    implicit, little = _encoding(instance.transfer_syntax_uid)
    ds = read_dataset(BytesIO(header), implicit, little)
    tag, vr, length, _ = read_header(pixel_header, 0, len(pixel_header), not implicit, little)
    data = memoryview(value).cast("B")
    if length == UNDEFINED_LENGTH:
        # Without the Sequence Delimitation Item, which pydicom writes itself; pydicom checks
        # the first item tag with bytes.startswith, hence bytes.
        data = data[:-8].tobytes()
    vr_text = None if vr is None else bytes(vr).decode("ascii")
    ds[Tag(tag)] = RawDataElement(Tag(tag), vr_text, length, data, 0, implicit, little)
    return _with_meta(ds, instance.transfer_syntax_uid)


def unsendable(sop_class_uid: str | None, sop_instance_uid: str) -> Dataset:
    """A data set pynetdicom refuses to send (it has no Transfer Syntax UID): yielded for a
    sub-operation that cannot be made, pynetdicom counts it failed and lists its SOP
    Instance UID in the Failed SOP Instance UID List (PS3.4 C.4.3.1.3.2)."""
    ds = Dataset()
    ds.SOPClassUID = sop_class_uid or ""
    ds.SOPInstanceUID = sop_instance_uid
    return ds
