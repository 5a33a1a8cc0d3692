"""The attributes the query engine knows: tag, keyword, VR, level, and where the index holds them.

Matching and return keys of the Query/Retrieve Information Models (PS3.4 C.6.1.1 Patient
Root, C.6.2.1 Study Root: Tables C.6-1, C.6-2, C.6-5, C.6-6) and of QIDO-RS (PS3.18 Table
10.6.1-5 matching, Tables 10.6.3-3 to 10.6.3-5 return). Values come from index columns
(``column`` of ``table``: ``studies`` for the Patient and Study levels, ``series``,
``instances``) or are aggregates over the rows below an entity (``computed``): the Number of
... Related ... attributes and Modalities / SOP Classes in Study (PS3.4 C.6.1.1.4-C.6.1.1.5),
except a series' instance count, which its row keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Attribute", "ATTRIBUTES", "BY_TAG", "BY_KEYWORD", "LEVELS", "UNIQUE_KEYS",
           "LEVEL_COLUMN", "LEVEL_TABLE", "QIDO_DEFAULTS", "lookup", "tag_string", "SPECIFIC_CHARACTER_SET",
           "QUERY_RETRIEVE_LEVEL", "RETRIEVE_URL", "INSTANCE_AVAILABILITY"]

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
# The index table whose rows are a level's entities (a patient is the group of its studies).
LEVEL_TABLE = {"PATIENT": "studies", "STUDY": "studies", "SERIES": "series", "IMAGE": "instances"}


@dataclass(frozen=True)
class Attribute:
    """One key.

    Attributes
    ----------
    tag, keyword, vr, level
        Data dictionary facts (PS3.6) and the Query/Retrieve level it belongs to.
    column : str or None
        The index column it is matched on (and returned from, unless ``computed``).
    folded : str or None
        The case-folded column a PN value is matched on (PS3.4 C.2.2.2.1 lets PN matching
        ignore case).
    computed : str or None
        An aggregate over the ``table`` rows of an entity of the level (returned, not read
        from a row); it names its columns with the engine's aliases (``st``, ``se``, ``i``).
    matching : bool
        Whether a value in a request restricts the result (return-only keys are ignored as
        matching keys, which PS3.4 C.4.1.2.1 allows for keys the SCP does not match on).
    table : str
        The table ``column`` is in; by default the level's (:data:`LEVEL_TABLE`).
    """

    tag: int
    keyword: str
    vr: str
    level: str
    column: str | None = None
    folded: str | None = None
    computed: str | None = None
    matching: bool = True
    table: str = ""

    def __post_init__(self) -> None:
        if not self.table:
            object.__setattr__(self, "table", LEVEL_TABLE[self.level])


ATTRIBUTES = (
    # Patient level (PS3.4 Table C.6-1).
    Attribute(0x00100010, "PatientName", "PN", "PATIENT", "patient_name", "patient_name_folded"),
    Attribute(0x00100020, "PatientID", "LO", "PATIENT", "patient_id"),
    Attribute(0x00100030, "PatientBirthDate", "DA", "PATIENT", "patient_birth_date"),
    Attribute(0x00100040, "PatientSex", "CS", "PATIENT", "patient_sex"),
    # Over the patient's studies joined with their series.
    Attribute(0x00201200, "NumberOfPatientRelatedStudies", "IS", "PATIENT",
              computed="count(DISTINCT st.study_uid)", matching=False, table="series"),
    Attribute(0x00201202, "NumberOfPatientRelatedSeries", "IS", "PATIENT",
              computed="count(*)", matching=False, table="series"),
    Attribute(0x00201204, "NumberOfPatientRelatedInstances", "IS", "PATIENT",
              computed="sum(se.n_instances)", matching=False, table="series"),
    # Study level (PS3.4 Table C.6-5, PS3.18 Table 10.6.1-5).
    Attribute(0x0020000D, "StudyInstanceUID", "UI", "STUDY", "study_uid"),
    Attribute(0x00080020, "StudyDate", "DA", "STUDY", "study_date"),
    Attribute(0x00080030, "StudyTime", "TM", "STUDY", "study_time"),
    Attribute(0x00080050, "AccessionNumber", "SH", "STUDY", "accession_number"),
    Attribute(0x00080090, "ReferringPhysicianName", "PN", "STUDY", "referring_physician_name",
              "referring_physician_name_folded"),
    Attribute(0x00200010, "StudyID", "SH", "STUDY", "study_id"),
    Attribute(0x00081030, "StudyDescription", "LO", "STUDY", "study_description"),
    # Matched against any series (any instance) of the study (PS3.4 C.6.1.1.4.1: a study
    # matches if any of its series has one of the values); returned as the distinct values
    # of the study.
    Attribute(0x00080061, "ModalitiesInStudy", "CS", "STUDY", "modality",
              computed="group_concat(DISTINCT se.modality)", table="series"),
    Attribute(0x00080062, "SOPClassesInStudy", "UI", "STUDY", "sop_class_uid",
              computed="group_concat(DISTINCT i.sop_class_uid)", table="instances"),
    # Over the study's series rows (each holds its instance count).
    Attribute(0x00201206, "NumberOfStudyRelatedSeries", "IS", "STUDY",
              computed="count(*)", matching=False, table="series"),
    Attribute(0x00201208, "NumberOfStudyRelatedInstances", "IS", "STUDY",
              computed="sum(se.n_instances)", matching=False, table="series"),
    # Series level (PS3.4 Table C.6-6).
    Attribute(0x0020000E, "SeriesInstanceUID", "UI", "SERIES", "series_uid"),
    Attribute(0x00080060, "Modality", "CS", "SERIES", "modality"),
    Attribute(0x00200011, "SeriesNumber", "IS", "SERIES", "series_number"),
    Attribute(0x0008103E, "SeriesDescription", "LO", "SERIES", "series_description"),
    Attribute(0x00400244, "PerformedProcedureStepStartDate", "DA", "SERIES",
              "performed_procedure_step_start_date"),
    Attribute(0x00400245, "PerformedProcedureStepStartTime", "TM", "SERIES",
              "performed_procedure_step_start_time"),
    Attribute(0x00201209, "NumberOfSeriesRelatedInstances", "IS", "SERIES", "n_instances",
              matching=False),
    # Composite object instance level (PS3.4 Table C.6-7, PS3.18 Table 10.6.3-5).
    Attribute(0x00080018, "SOPInstanceUID", "UI", "IMAGE", "sop_instance_uid"),
    Attribute(0x00080016, "SOPClassUID", "UI", "IMAGE", "sop_class_uid"),
    Attribute(0x00200013, "InstanceNumber", "IS", "IMAGE", "instance_number"),
    Attribute(0x00280010, "Rows", "US", "IMAGE", "n_rows"),
    Attribute(0x00280011, "Columns", "US", "IMAGE", "n_columns"),
    Attribute(0x00280100, "BitsAllocated", "US", "IMAGE", "bits_allocated"),
    Attribute(0x00280008, "NumberOfFrames", "IS", "IMAGE", "number_of_frames"),
    Attribute(0x00083002, "AvailableTransferSyntaxUID", "UI", "IMAGE", "transfer_syntax_uid",
              matching=False),
)
BY_TAG = {a.tag: a for a in ATTRIBUTES}
BY_KEYWORD = {a.keyword: a for a in ATTRIBUTES}

# Return keys that are not in the index: filled by the engine's callers.
SPECIFIC_CHARACTER_SET = 0x00080005
QUERY_RETRIEVE_LEVEL = 0x00080052
INSTANCE_AVAILABILITY = 0x00080056  # always ONLINE here (PS3.3 C.4.23.1.1)
RETRIEVE_URL = 0x00081190  # QIDO-RS only (PS3.18 §10.6.3.3)

# The unique key of each level (PS3.4 C.6.1.1, C.6.2.1) and the index column that is it.
UNIQUE_KEYS = {"PATIENT": 0x00100020, "STUDY": 0x0020000D, "SERIES": 0x0020000E,
               "IMAGE": 0x00080018}
LEVEL_COLUMN = {"PATIENT": "patient_id", "STUDY": "study_uid", "SERIES": "series_uid",
                "IMAGE": "sop_instance_uid"}

# The attributes a QIDO-RS response holds without includefield (PS3.18 Tables 10.6.3-3,
# 10.6.3-4, 10.6.3-5), by level; Patient attributes are returned with the Study's.
QIDO_DEFAULTS = {
    "STUDY": (0x00080020, 0x00080030, 0x00080050, INSTANCE_AVAILABILITY, 0x00080061, 0x00080090,
              RETRIEVE_URL, 0x00100010, 0x00100020, 0x00100030, 0x00100040, 0x0020000D,
              0x00200010, 0x00201206, 0x00201208),
    "SERIES": (0x00080060, 0x0008103E, RETRIEVE_URL, 0x0020000E, 0x00200011, 0x00201209,
               0x00400244, 0x00400245),
    "IMAGE": (0x00080016, 0x00080018, INSTANCE_AVAILABILITY, RETRIEVE_URL, 0x00200013,
              0x00280010, 0x00280011, 0x00280100, 0x00280008),
}
_EXTRA = {SPECIFIC_CHARACTER_SET: ("SpecificCharacterSet", "CS"),
          QUERY_RETRIEVE_LEVEL: ("QueryRetrieveLevel", "CS"),
          INSTANCE_AVAILABILITY: ("InstanceAvailability", "CS"),
          RETRIEVE_URL: ("RetrieveURL", "UR")}
_EXTRA_BY_KEYWORD = {kw: tag for tag, (kw, _) in _EXTRA.items()}


def lookup(key: str) -> int | None:
    """The tag a query parameter names: a keyword or eight hex digits (PS3.18 §8.3.4.1)."""
    if len(key) == 8:
        try:
            return int(key, 16)
        except ValueError:
            pass
    a = BY_KEYWORD.get(key)
    if a is not None:
        return a.tag
    return _EXTRA_BY_KEYWORD.get(key)


def keyword_vr(tag: int) -> tuple[str, str] | None:
    """(keyword, VR) of a tag the engine returns, or None."""
    a = BY_TAG.get(tag)
    if a is not None:
        return a.keyword, a.vr
    return _EXTRA.get(tag)


def tag_string(tag: int) -> str:
    return f"{tag:08X}"
