"""One query engine behind QIDO-RS (PS3.18 §10.6) and C-FIND (PS3.4 Annex C).

- :mod:`.attributes`: the keys, their levels and index columns;
- :mod:`.matching`: a requested value to a condition (PS3.4 C.2.2.2);
- :mod:`.engine`: conditions to SQL over the index, and the computed attributes;
- :mod:`.dialect`: what differs in that SQL between the SQLite and the PostgreSQL index;
- :mod:`.dicom_json`: results as the DICOM JSON Model (PS3.18 Annex F).
"""

from .attributes import ATTRIBUTES, BY_KEYWORD, BY_TAG, LEVELS, Attribute, lookup
from .engine import Query, SearchResult, search
from .matching import Condition, MatchError, condition

__all__ = ["ATTRIBUTES", "BY_KEYWORD", "BY_TAG", "LEVELS", "Attribute", "Condition", "MatchError",
           "Query", "SearchResult", "condition", "lookup", "search"]
