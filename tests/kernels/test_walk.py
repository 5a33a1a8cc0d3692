"""The data set walk (``walk_impl``: the twin and the compiled module): offsets against
pydicom's own reading of its test files, every error with its message and byte offset, and
both implementations alike on all of it."""

from __future__ import annotations

import struct
import warnings

import pydicom
from pydicom.dataelem import RawDataElement
import pytest
from pydicom.data import get_testdata_file, get_testdata_files

from dicomaccel.archive.ingest import StoreFailure, _Scan, _scan_meta
from dicomaccel.elements import TruncatedElement
from dicomaccel.errors import ParseError
from dicomaccel.testing import implementations

WANTED = frozenset((0x00080016, 0x00080018, 0x00280010))
# pydicom's test files (with a pattern, get_testdata_files also asks the network: 15 s).
FILES = sorted(p for p in get_testdata_files() if p.endswith(".dcm"))
UNDEFINED = 0xFFFFFFFF


def explicit(tag: int, vr: bytes, value: bytes = b"", length: int | None = None) -> bytes:
    """One Explicit VR Little Endian element (PS3.5 §7.1.2); ``length`` overrides its length."""
    n = len(value) if length is None else length
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, vr, 0, n) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, n) + value


def implicit(tag: int, value: bytes = b"", length: int | None = None, little: bool = True) -> bytes:
    return struct.pack("<HHL" if little else ">HHL", tag >> 16, tag & 0xFFFF,
                       len(value) if length is None else length) + value


ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


def item(content: bytes, defined: bool = True) -> bytes:
    if defined:
        return implicit(ITEM, content)
    return implicit(ITEM, length=UNDEFINED) + content + implicit(ITEM_END, length=0)


def run(module, data: bytes, is_explicit: bool = True, little: bool = True, pos: int = 0):
    found: dict = {}
    pixel = module.walk(data, pos, len(data), is_explicit, little, WANTED, found)
    return pixel, found


def outcome(module, data, *args):
    found: dict = {}
    try:
        return "ok", module.walk(data, 0, len(data), *args, WANTED, found), found
    except ParseError as exc:
        return type(exc), exc.message, exc.offset, getattr(exc, "what", None), found


# --------------------------------------------------------------------------------------------
# Well-formed input
# --------------------------------------------------------------------------------------------

def test_sequences_of_every_encoding_are_stepped_over(walk_impl):
    uid = explicit(0x00080016, b"UI", b"1.2\x00")
    nested = explicit(0x00400275, b"SQ", item(explicit(0x00100010, b"PN", b"AB")), length=UNDEFINED)
    undefined_seq = (explicit(0x00081115, b"SQ", length=UNDEFINED)
                     + item(explicit(0x00081150, b"UI", b"1\x00") + nested + implicit(SEQ_END, length=0), False)
                     + item(b"") + implicit(SEQ_END, length=0))
    empty_seq = explicit(0x00081140, b"SQ", length=UNDEFINED) + implicit(SEQ_END, length=0)
    # UN of undefined length holds an Implicit VR Little Endian sequence (PS3.5 §6.2.2).
    un_seq = (explicit(0x00091010, b"UN", length=UNDEFINED)
              + item(implicit(0x00100020, b"ID"), False) + implicit(SEQ_END, length=0))
    rows = explicit(0x00280010, b"US", b"\x00\x02")
    pixel = explicit(0x7FE00010, b"OW", b"\x00" * 8)
    data = uid + undefined_seq + empty_seq + un_seq + rows + pixel + explicit(0x7FE10010, b"OB", b"zz")
    got_pixel, found = run(walk_impl, data)
    start = len(uid)
    assert found[0x00080016] == (8, 4)
    assert found[0x00081115] == (start + 12, len(undefined_seq) - 12 - 8)
    start += len(undefined_seq)
    assert found[0x00081140] == (start + 12, 0)  # present but empty, as with a defined length 0
    start += len(empty_seq)
    assert found[0x00091010] == (start + 12, len(un_seq) - 12 - 8)
    start += len(un_seq)
    assert found[0x00280010] == (start + 8, 2)
    start += len(rows)
    assert got_pixel == (0x7FE00010, start, start + 12, 8)
    assert found[0x7FE00010] == (start + 12, 8)
    assert 0x7FE10010 not in found  # the walk ends at the Pixel Data header
    assert list(found) == [0x00080016, 0x00081115, 0x00081140, 0x00091010, 0x00280010, 0x7FE00010]


def test_undefined_length_pixel_data_and_no_pixel_data(walk_impl):
    encapsulated = explicit(0x7FE00010, b"OB", length=UNDEFINED) + item(b"") + implicit(SEQ_END, length=0)
    assert run(walk_impl, encapsulated)[0] == (0x7FE00010, 0, 12, -1)
    assert run(walk_impl, encapsulated)[1][0x7FE00010] == (12, 1)  # present
    assert run(walk_impl, explicit(0x00100010, b"PN", b"AB")) == ((0, -1, -1, -1), {0x00100010: (8, 2)})
    assert run(walk_impl, b"") == ((0, -1, -1, -1), {})


@pytest.mark.parametrize("little", [True, False], ids=["little", "big"])
def test_implicit_vr_either_byte_order(walk_impl, little):
    data = (implicit(0x00080016, b"1.2\x00", little=little)
            + implicit(0x00081115, length=UNDEFINED, little=little)
            + implicit(ITEM, length=4, little=little) + b"abcd" + implicit(SEQ_END, length=0, little=little)
            + implicit(0x7FE00010, b"\x01\x02", little=little))
    pixel, found = run(walk_impl, data, False, little)
    assert found[0x00080016] == (8, 4) and found[0x00081115] == (20, 12)
    assert pixel == (0x7FE00010, 40, 48, 2)


def test_explicit_vr_big_endian(walk_impl):
    data = struct.pack(">HH2sH", 0x0028, 0x0010, b"US", 2) + b"\x02\x00" \
        + struct.pack(">HH2sHL", 0x7FE0, 0x0010, b"OW", 0, 4) + b"abcd"
    assert run(walk_impl, data, True, False) == ((0x7FE00010, 10, 22, 4), {0x00280010: (8, 2), 0x7FE00010: (22, 4)})


def test_offsets_are_pydicoms(walk_impl):
    # Every top-level element pydicom reads before the Pixel Data (its own parser, its own
    # offsets) is where the walk says, with its length; sequences of undefined length too.
    checked, refused = 0, []
    for path in FILES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:
                continue
        ts = getattr(ds, "file_meta", None) and ds.file_meta.get("TransferSyntaxUID")
        data = open(path, "rb").read()
        if not ts or ts.is_deflated or data[128:132] != b"DICM":
            continue
        try:
            _, start = _scan_meta(_Scan(data, len(data)))
            pixel, found = run(walk_impl, data, not ts.is_implicit_VR, ts.is_little_endian, start)
        except (ParseError, StoreFailure) as exc:
            refused.append((path.rsplit("/", 1)[-1], str(exc)))
            continue
        for tag, elem in ds._dict.items():
            if pixel[0] and tag >= pixel[0]:
                continue
            # Still raw: where pydicom found the value and its length; read already (the
            # character set, say): where the value was read from.
            raw = isinstance(elem, RawDataElement)
            assert found[tag][0] == (elem.value_tell if raw else elem.file_tell), (path, hex(tag))
            if raw and elem.length != UNDEFINED:
                assert found[tag][1] == elem.length, (path, hex(tag))
        checked += 1
    assert checked > 50 and len(refused) <= 8, refused


# --------------------------------------------------------------------------------------------
# Errors: type, message, offset (and what was found before them)
# --------------------------------------------------------------------------------------------

SQ_OPEN = explicit(0x00081115, b"SQ", length=UNDEFINED)
CASES = {
    "header": (b"\x08\x00\x16\x00U", TruncatedElement, "element header", 0),
    "long header": (b"\x08\x00\x16\x00OB\x00\x00\x01", TruncatedElement, "element header", 0),
    "unknown VR": (explicit(0x00080016, b"ZZ", b"ab"), ParseError, "unknown VR b'ZZ' in element (0008,0016)", 0),
    "wanted undefined": (explicit(0x00080016, b"UN", length=UNDEFINED), TruncatedElement, "value of (0008,0016)", 12),
    "wanted too long": (explicit(0x00280010, b"US", b"\x01", length=2), TruncatedElement, "value of (0028,0010)", 8),
    "value too long": (explicit(0x00100010, b"PN", b"ab", length=4), TruncatedElement, "value of (0010,0010)", 8),
    "item at top level": (implicit(ITEM, length=0), ParseError, "unexpected (FFFE,E000) in the top-level data set", 0),
    "undefined OB": (explicit(0x00091001, b"OB", length=UNDEFINED), ParseError,
                     "undefined length on VR OB element (0009,1001)", 0),
    "no item": (SQ_OPEN + explicit(0x00100010, b"PN", b"ab"), ParseError,
                "expected an item tag (FFFE,E000) in a sequence, found (0010,0010)", 12),
    "sequence cut": (SQ_OPEN + b"\xfe\xff", TruncatedElement, "sequence item", 12),
    "item too long": (SQ_OPEN + implicit(ITEM, b"ab", length=4), TruncatedElement, "sequence item", 12),
    "delimiter in item": (SQ_OPEN + implicit(ITEM, length=UNDEFINED) + implicit(SEQ_END, length=0), ParseError,
                          "unexpected (FFFE,E0DD) inside an item", 20),
    "nested too deep": (b"".join(explicit(0x00081115, b"SQ", length=UNDEFINED) + implicit(ITEM, length=UNDEFINED)
                                 for _ in range(70)), ParseError, "sequences nested deeper than 64 levels",
                        64 * 20 + 12),
}


@pytest.mark.parametrize("name", CASES)
def test_errors_name_what_and_where(walk_impl, name):
    data, kind, message, offset = CASES[name]
    with pytest.raises(kind) as err:
        run(walk_impl, data)
    assert type(err.value) is kind
    said = err.value.what if kind is TruncatedElement else err.value.message
    assert said == message, said
    assert err.value.offset == offset


def test_found_keeps_what_came_before_an_error(walk_impl):
    # The caller names the instance in its failure report from the UIDs walked so far.
    uid = explicit(0x00080018, b"UI", b"1.2.3\x00")
    found: dict = {}
    with pytest.raises(ParseError):
        walk_impl.walk(uid + explicit(0x00100010, b"ZZ", b"ab"), 0, len(uid) + 10, True, True, WANTED, found)
    assert found == {0x00080018: (8, 6)}


def test_bounds_outside_the_buffer_are_refused(walk_impl):
    for pos, end in ((0, 9), (-1, 4)):
        with pytest.raises(ValueError, match="outside a buffer of 8 bytes"):
            walk_impl.walk(b"\x00" * 8, pos, end, True, True, WANTED, {})


def test_buffers_of_every_kind(walk_impl):
    import mmap

    data = explicit(0x00280010, b"US", b"\x00\x02") + explicit(0x7FE00010, b"OW", b"ab")
    expected = run(walk_impl, data)
    with mmap.mmap(-1, len(data)) as mm:
        mm[:] = data
        for buf in (bytearray(data), memoryview(data), mm):
            found: dict = {}
            assert (walk_impl.walk(buf, 0, len(data), True, True, WANTED, found), found) == expected


# --------------------------------------------------------------------------------------------
# Both implementations alike
# --------------------------------------------------------------------------------------------

def test_twin_and_compiled_agree_on_every_case_and_file():
    found = implementations("walk")
    if "c" not in found:
        pytest.skip("dicomaccel._walk_c is not in use")
    inputs = [(data, True, True) for data, *_ in CASES.values()]
    for path in FILES:
        data = open(path, "rb").read()
        if data[128:132] == b"DICM":
            # From the first element after the File Meta group, as every syntax could read it.
            inputs += [(data[132:], e, little) for e in (True, False) for little in (True, False)]
    inputs.append((open(get_testdata_file("CT_small.dcm"), "rb").read()[132:], True, True))
    for data, is_explicit, little in inputs:
        assert outcome(found["c"], data, is_explicit, little) == outcome(found["py"], data, is_explicit, little)
