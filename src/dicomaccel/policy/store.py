"""``StorePolicy``: what the archive accepts, and what it does with a data set that breaks its IOD.

One policy serves every way in (STOW-RS today; C-STORE shares it), so the same instance gets
the same verdict whatever carried it.

- SOP Classes: by default the Storage SOP Classes of PS3.4 Annex B (PS3.6 Table A-1, in
  :mod:`dicomaccel.policy.sop_classes`); ``accept_sop_classes`` adds classes to that set and
  ``reject_sop_classes`` removes them (a class in both is rejected). Anything else fails with
  0122 (SOP Class not supported).
- Coercion and discard rules (:mod:`dicomaccel.policy.rules`): applied before the checks
  below, so the stored data set is what is checked; B000 or B006.
- IOD validation (:func:`dicomaccel.policy.iod.validate`): ``off`` skips it; ``warn`` stores
  the instance with Warning Reason B007 (Data Set does not match SOP Class, PS3.18 I.2) and
  names the attributes; ``reject`` fails it with A900 and the same list.

PS3.18 I.2 sends one Warning Reason per instance: B007 when the stored data set still breaks
its IOD, else B000 when a value was coerced, else B006 when elements were discarded. The
response item names every coerced, discarded and non-conforming attribute.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import DEFAULTS, VALIDATION_MODES
from ..status import WarningReason
from .rules import CoerceRule, DiscardRule, compile_rules
from .sop_classes import is_storage_sop_class

__all__ = ["StorePolicy", "VALIDATION_MODES"]


@dataclass(frozen=True)
class StorePolicy:
    """Parameters
    ----------
    validation : {"off", "warn", "reject"}
        What an IOD violation does (default ``warn``, from :data:`dicomaccel.config.DEFAULTS`).
    accept_sop_classes, reject_sop_classes : frozenset of str
        SOP Class UIDs added to, and removed from, the Storage SOP Classes.
    coerce, discard : tuple of CoerceRule / DiscardRule
        Changes made to each data set before it is stored (see :func:`compile_rules`).
    """

    validation: str = DEFAULTS.validation
    accept_sop_classes: frozenset[str] = frozenset()
    reject_sop_classes: frozenset[str] = frozenset()
    coerce: tuple[CoerceRule, ...] = ()
    discard: tuple[DiscardRule, ...] = ()

    def __post_init__(self) -> None:
        if self.validation not in VALIDATION_MODES:
            raise ValueError(f"validation must be one of {', '.join(VALIDATION_MODES)}, "
                             f"not {self.validation!r}")
        object.__setattr__(self, "accept_sop_classes", frozenset(self.accept_sop_classes))
        object.__setattr__(self, "reject_sop_classes", frozenset(self.reject_sop_classes))

    @classmethod
    def from_config(cls, config) -> "StorePolicy":
        """The policy a :class:`~dicomaccel.config.ServeConfig` describes."""
        coerce, discard = compile_rules(config.coerce, config.discard)
        return cls(config.validation, frozenset(config.accept_sop_classes),
                   frozenset(config.reject_sop_classes), coerce, discard)

    @property
    def validates(self) -> bool:
        return self.validation != "off"

    @property
    def rewrites(self) -> bool:
        return bool(self.coerce or self.discard)

    def warning(self, problems: tuple, changes: list) -> int | None:
        """The one Warning Reason of an instance stored with these problems and changes."""
        if problems:
            return WarningReason.DATASET_DOES_NOT_MATCH_SOP_CLASS
        if any(c.action == "coerced" for c in changes):
            return WarningReason.COERCION_OF_DATA_ELEMENTS
        return WarningReason.ELEMENTS_DISCARDED if changes else None

    def accepts(self, sop_class_uid: str) -> bool:
        """True if instances of this SOP Class may be stored."""
        if sop_class_uid in self.reject_sop_classes:
            return False
        return sop_class_uid in self.accept_sop_classes or is_storage_sop_class(sop_class_uid)
