"""The C-FIND SCP's own Identifier reader and response writer (retrieve/cfind.py over
elements.py) against the pydicom path they replace: same query, same returned keys, same
refusals (status and Offending Element), byte-identical responses (PS3.5 §6.2 padding)."""

from __future__ import annotations

import random

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from dicomaccel.retrieve import cfind
from dicomaccel.retrieve.cfind import (
    PATIENT_ROOT_FIND,
    STUDY_ROOT_FIND,
    ResponsePlan,
    parse_find_elements,
    parse_find_identifier,
    read_find_identifier,
)
from dicomaccel.retrieve.identifier import IdentifierError, decode_identifier
from dicomaccel.syntaxes import EXPLICIT_VR_LE, IMPLICIT_VR_LE

SYNTAXES = (EXPLICIT_VR_LE, IMPLICIT_VR_LE)


def _encode(ds: Dataset, syntax: str) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = syntax == IMPLICIT_VR_LE
    write_dataset(fp, ds)
    if getattr(ds, "_bad_is", False):  # Instance Number "abc ": not an IS, pydicom will not write it
        fp.write((b"\x20\x00\x13\x00" + (b"IS\x04\x00" if syntax == EXPLICIT_VR_LE else b"\x04\x00\x00\x00"))
                 + b"abc ")
    return fp.getvalue()


def _bad_is(ds: Dataset) -> Dataset:
    ds._bad_is = True
    return ds


def _outcome(parse):
    try:
        return parse()
    except IdentifierError as err:
        return ("refused", err.status, err.offending)


def _pydicom(sop_class, data, syntax):
    return _outcome(lambda: parse_find_identifier(sop_class, decode_identifier(data, syntax)))


def _walk(sop_class, data, syntax):
    """The SCP's reading: None when the walk hands the Identifier to pydicom."""
    try:
        return _outcome(lambda: parse_find_elements(sop_class, read_find_identifier(data, syntax)))
    except cfind._Unsure:
        return None


def _ident(level, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _item(**keys) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


IDENTIFIERS = [
    # Universal and wildcard keys, odd-length values (padded), empty values.
    (STUDY_ROOT_FIND, _ident("STUDY", PatientName="Tes*", PatientID="", StudyInstanceUID="", StudyDate="",
                             StudyTime="", AccessionNumber="", StudyID="")),
    (STUDY_ROOT_FIND, _ident("STUDY", PatientName="doe^j?hn", StudyDate="20250101-", AccessionNumber="A1",
                             ModalitiesInStudy=["CT", "MR"], NumberOfStudyRelatedInstances="")),
    (STUDY_ROOT_FIND, _ident("STUDY", StudyInstanceUID=["1.2.3", "1.2.345"], StudyTime="-1230")),
    (STUDY_ROOT_FIND, _ident("SERIES", StudyInstanceUID="1.2.3", Modality="MR", SeriesNumber="7",
                             SeriesInstanceUID="", NumberOfSeriesRelatedInstances="")),
    (STUDY_ROOT_FIND, _ident("IMAGE", StudyInstanceUID="1.2.3", SeriesInstanceUID="1.2.3.4", SOPInstanceUID="",
                             InstanceNumber=" 12", Rows=512, Columns=None)),
    (PATIENT_ROOT_FIND, _ident("PATIENT", PatientID="FIND-*", PatientName="", NumberOfPatientRelatedStudies="",
                               PatientBirthDate="19700101")),
    (PATIENT_ROOT_FIND, _ident("STUDY", PatientID="P1", StudyInstanceUID="", StudyDescription="Head ")),
    # Sequence keys: empty, and one item (defined length in Implicit VR, undefined in Explicit).
    (STUDY_ROOT_FIND, _ident("STUDY", PatientName="X*", ReferencedStudySequence=Sequence(), StudyInstanceUID="")),
    (STUDY_ROOT_FIND, _ident("STUDY", ReferencedStudySequence=Sequence([_item(ReferencedSOPInstanceUID="1.2",
                                                                              ReferencedSOPClassUID="1.3")]),
                             StudyInstanceUID="", StudyID="1")),
    # An attribute the engine does not know: returned empty; private and unknown tags too.
    (STUDY_ROOT_FIND, _ident("STUDY", InstitutionName="", PatientWeight="70.5", StudyInstanceUID="")),
    # Non-ASCII names with a Specific Character Set (PS3.5 §6.1): pydicom decodes those.
    (STUDY_ROOT_FIND, _ident("STUDY", SpecificCharacterSet="ISO_IR 192", PatientName="Müller^Jürgen",
                             StudyInstanceUID="")),
    (STUDY_ROOT_FIND, _ident("STUDY", SpecificCharacterSet="ISO_IR 100", PatientName="Gérard*",
                             StudyInstanceUID="")),
    # Refusals: no level, a level the model lacks, a unique key above the level missing or
    # wild, a value its VR does not allow as a key, an IS that is not a number.
    (STUDY_ROOT_FIND, _ident("PATIENT", PatientID="")),
    (STUDY_ROOT_FIND, _ident("SERIES", SeriesInstanceUID="")),
    (STUDY_ROOT_FIND, _ident("SERIES", StudyInstanceUID="1.2.*", SeriesInstanceUID="")),
    (STUDY_ROOT_FIND, _ident("STUDY", StudyDate="last week")),
    (STUDY_ROOT_FIND, _bad_is(_ident("IMAGE", StudyInstanceUID="1", SeriesInstanceUID="2"))),
    (STUDY_ROOT_FIND, _ident("", PatientName="x")),
    (STUDY_ROOT_FIND, _ident("STUDY\\SERIES", PatientName="x")),
]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("case", range(len(IDENTIFIERS)))
def test_identifier_reader_agrees_with_pydicom(case, syntax):
    sop_class, ds = IDENTIFIERS[case]
    data = _encode(ds, syntax)
    want = _pydicom(sop_class, data, syntax)
    got = _walk(sop_class, data, syntax)
    non_ascii = "SpecificCharacterSet" in ds
    if non_ascii or getattr(ds, "_bad_is", False):  # pydicom reads the IS "abc" as text: it decides
        assert got is None or got == want
    else:
        assert got == want
    if case == 0:
        assert got is not None  # the common identifier never needs pydicom


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("syntax", SYNTAXES)
def test_malformed_identifiers(syntax):
    explicit = syntax == EXPLICIT_VR_LE
    good = _encode(_ident("STUDY", PatientName="A*", StudyInstanceUID=""), syntax)
    bad = [good[:-3], good[:5], good + b"\x08\x00", good[::-1],
           b"\x08\x00\x52\x00\xff\xff\xff\x7fSTUDY",
           # Out of tag order, a value past its end.
           _encode(_ident("STUDY"), syntax) + _encode(_item(PatientName="x"), syntax)[:0]
           + (b"\x08\x00\x20\x00DA\x00\x00" if explicit else b"\x08\x00\x20\x00\x00\x00\x00\x00"),
           good[:-2] + b"\xff\x00"]
    for data in bad:
        want = _pydicom(STUDY_ROOT_FIND, data, syntax)
        got = _walk(STUDY_ROOT_FIND, data, syntax)
        assert got is None or got == want, data


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("syntax", SYNTAXES)
def test_mutated_identifiers(syntax):
    """Random byte flips of real identifiers: wherever the walk answers, pydicom agrees."""
    rng = random.Random(11)
    seeds = [_encode(ds, syntax) for _, ds in IDENTIFIERS[:10]]
    answered = 0
    for _ in range(1500):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] = rng.choice((0, 0x20, 0x2A, 0x5C, 0xFF, rng.randrange(256)))
        data = bytes(data)
        got = _walk(STUDY_ROOT_FIND, data, syntax)
        if got is None:
            continue
        answered += 1
        assert got == _pydicom(STUDY_ROOT_FIND, data, syntax), data
    assert answered > 500


MATCHES = [
    {0x0020000D: "1.2.3", 0x00100010: "Doe^John", 0x00100020: "PID-1", 0x00080020: "20250101",
     0x00080030: None, 0x00080050: "A1", 0x00200010: "1"},
    {0x0020000D: "1.2.34", 0x00100010: "Müller^Jürgen", 0x00100020: "P", 0x00080020: None,
     0x00080061: ["CT", "MR"], 0x00201208: 5, 0x00201206: 2},
    {0x0020000E: "1.2.3.4", 0x00080060: "MR", 0x00200011: 7, 0x00201209: 120, 0x0008103E: "Odd"},
    {0x00080018: "1.2.3.4.5", 0x00200013: 3, 0x00280010: 512, 0x00280011: 511, 0x00280100: 16,
     0x00280008: None, 0x00080016: "1.2.840.10008.5.1.4.1.1.2"},
]
RETURNS = {
    "STUDY": [(0x00080020, "DA"), (0x00080030, "TM"), (0x00080050, "SH"), (0x00080061, "CS"),
              (0x00081110, "SQ"), (0x00100010, "PN"), (0x00100020, "LO"), (0x00090010, "LO"),
              (0x00201206, "IS"), (0x00201208, "IS"), (0x00200010, "SH"), (0x0020000D, "UI")],
    "SERIES": [(0x00080060, "CS"), (0x0008103E, "LO"), (0x0020000E, "UI"), (0x00200011, "IS"),
               (0x00201209, "IS"), (0x00081250, "SQ"), (0x00110010, "UN")],
    "IMAGE": [(0x00080016, "UI"), (0x00080018, "UI"), (0x00200013, "IS"), (0x00280010, "US"),
              (0x00280011, "US"), (0x00280100, "US"), (0x00280008, "IS"), (0x00000000, "UL")],
}


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("case", range(len(MATCHES)))
def test_response_writer_agrees_with_pydicom(case, syntax):
    match = MATCHES[case]
    level = "IMAGE" if 0x00080018 in match else "SERIES" if 0x0020000E in match else "STUDY"
    returns = RETURNS[level]
    got = ResponsePlan(returns, level, syntax).encode(match)
    assert got == cfind._encode_with_pydicom(match, returns, level, syntax)
    assert len(got) % 2 == 0


def test_response_writer_keys_below_the_character_set():
    """A returned key below (0008,0005) stays in tag order when a value needs ISO_IR 192."""
    returns = [(0x00080000, "UL"), (0x00080001, "UL"), (0x00100010, "PN")]
    match = {0x00100010: "Ødegård^Åse"}
    for syntax in SYNTAXES:
        got = ResponsePlan(returns, "STUDY", syntax).encode(match)
        assert got == cfind._encode_with_pydicom(match, returns, "STUDY", syntax)
