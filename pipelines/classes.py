"""The Galaxy10 DECaLS class table: the one place that names the ten classes."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import DataError


@dataclass(frozen=True)
class GalaxyClass:
    """One Galaxy10 class: its label index, display name and short slug."""

    index: int
    name: str
    slug: str


CLASSES: tuple[GalaxyClass, ...] = (
    GalaxyClass(0, "Disturbed", "disturbed"),
    GalaxyClass(1, "Merging", "merging"),
    GalaxyClass(2, "Round Smooth", "round"),
    GalaxyClass(3, "In-between Round Smooth", "in_between"),
    GalaxyClass(4, "Cigar Shaped Smooth", "cigar"),
    GalaxyClass(5, "Barred Spiral", "barred"),
    GalaxyClass(6, "Unbarred Tight Spiral", "tight_spiral"),
    GalaxyClass(7, "Unbarred Loose Spiral", "loose_spiral"),
    GalaxyClass(8, "Edge-on without Bulge", "edge_on_no_bulge"),
    GalaxyClass(9, "Edge-on with Bulge", "edge_on_bulge"),
)

NUM_CLASSES: int = len(CLASSES)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
CLASS_SLUGS: tuple[str, ...] = tuple(c.slug for c in CLASSES)

#: Images per class in the official Galaxy10 DECaLS release (17,736 in total).
GALAXY10_COUNTS: tuple[int, ...] = (1081, 1853, 2645, 2027, 334, 2043, 1829, 2628, 1423, 1873)

#: SHA-256 of the official ``Galaxy10_DECals.h5`` (Zenodo record 10845026).
OFFICIAL_SHA256: str = "19aefc477c41bb7f77ff07599a6b82a038dc042f889a111b0d4d98bb755c1571"

#: The reference project's published test figures (81.1% accuracy), per-class recall by slug.
REFERENCE_ACCURACY: float = 0.811
REFERENCE_RECALL: dict[str, float] = {
    "disturbed": 0.31,
    "merging": 0.89,
    "round": 0.92,
    "in_between": 0.92,
    "cigar": 0.71,
    "barred": 0.89,
    "tight_spiral": 0.70,
    "loose_spiral": 0.66,
    "edge_on_no_bulge": 0.94,
    "edge_on_bulge": 0.91,
}


def class_index(key: str | int) -> int:
    """Return the label index for a slug, display name or index (case-insensitive).

    Raises
    ------
    DataError
        If ``key`` names no Galaxy10 class.
    """
    if isinstance(key, int) or (isinstance(key, str) and key.strip().lstrip("-").isdigit()):
        idx = int(key)
        if 0 <= idx < NUM_CLASSES:
            return idx
        raise DataError(f"class index {idx} is outside 0..{NUM_CLASSES - 1}; use a Galaxy10 label 0-9")
    norm = key.strip().lower().replace("-", "_").replace(" ", "_")
    for c in CLASSES:
        if norm in (c.slug, c.name.lower().replace("-", "_").replace(" ", "_")):
            return c.index
    raise DataError(f"unknown class {key!r}; use an index 0-9 or one of: {', '.join(CLASS_SLUGS)}")


def slugify(name: str) -> str:
    """A class name as a lowercase, metric-name-safe slug (``"Round Smooth"`` -> ``round_smooth``)."""
    return re.sub(r"[^a-z0-9]+", "_", str(name).strip().lower()).strip("_") or "class"


def _norm(key: str) -> str:
    return key.strip().lower().replace("-", "_").replace(" ", "_")


@dataclass(frozen=True)
class ClassSet:
    """The classes of a data file: display names and slugs in label order.

    Galaxy10's when the file is Galaxy10-schema without ``class_names``, else the file's own
    (:func:`ClassSet.from_names`). Every model stores it; targeting, metrics, reports, the gallery,
    ``predict`` and the web page name classes through it.
    """

    names: tuple[str, ...]
    slugs: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.slugs) or not self.names:
            raise DataError(
                f"a class set needs one slug per name, got {len(self.names)} names, {len(self.slugs)} slugs"
            )

    @classmethod
    def from_names(cls, names: tuple[str, ...] | list[str]) -> ClassSet:
        """Galaxy10's set for the Galaxy10 names, else slugs made from the names."""
        names = tuple(str(n) for n in names)
        if names == CLASS_NAMES:
            return GALAXY10
        return cls(names, tuple(slugify(n) for n in names))

    @property
    def n(self) -> int:
        """Number of classes."""
        return len(self.names)

    @property
    def is_galaxy10(self) -> bool:
        """Whether this is the Galaxy10 DECaLS class table."""
        return self.names == CLASS_NAMES

    def index(self, key: str | int) -> int:
        """Label index of a slug, display name or index (case-insensitive, ``-``/space = ``_``).

        Raises
        ------
        DataError
            One line naming this set's classes.
        """
        if self.is_galaxy10:
            return class_index(key)
        if isinstance(key, bool):
            key = str(key)
        if isinstance(key, int) or (isinstance(key, str) and key.strip().lstrip("-").isdigit()):
            idx = int(key)
            if 0 <= idx < self.n:
                return idx
            raise DataError(f"class index {idx} is outside 0..{self.n - 1}; this data has {self.n} classes")
        norm = _norm(str(key))
        for k, (name, slug) in enumerate(zip(self.names, self.slugs)):
            if norm in (slug, _norm(name)):
                return k
        raise DataError(
            f"unknown class {key!r}; this data's classes are: {', '.join(self.slugs)} (or an index 0-{self.n - 1})"
        )


#: The Galaxy10 DECaLS class set.
GALAXY10 = ClassSet(CLASS_NAMES, CLASS_SLUGS)


def absent_classes(y_true: Any, class_slugs: Sequence[str]) -> list[str]:
    """Slugs of the classes with no image in ``y_true``: macro metrics average over the others."""
    support = np.bincount(np.asarray(y_true, dtype=np.int64), minlength=len(class_slugs))
    return [slug for slug, n in zip(class_slugs, support) if n == 0]
