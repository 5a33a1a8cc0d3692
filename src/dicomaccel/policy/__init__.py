"""Archive policy: which SOP Classes are storage classes, and IOD conformance checks.

:mod:`~dicomaccel.policy.sop_classes` lists the Storage SOP Classes (PS3.4 Annex B,
PS3.6 Table A-1); :mod:`~dicomaccel.policy.iod` checks an instance's top-level attributes
against the mandatory modules of its IOD (PS3.3), using the tables in
:mod:`~dicomaccel.policy.iod_tables`.
"""

from .iod import Problem, has_iod, iod_attributes, validate
from .sop_classes import RETIRED, STORAGE_SOP_CLASSES, is_storage_sop_class

__all__ = [
    "Problem",
    "has_iod",
    "iod_attributes",
    "validate",
    "RETIRED",
    "STORAGE_SOP_CLASSES",
    "is_storage_sop_class",
]
