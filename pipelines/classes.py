"""The Galaxy10 DECaLS class table: the one place that names the ten classes."""
from __future__ import annotations

from dataclasses import dataclass

from pipelines.errors import DataError


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
    "disturbed": 0.31, "merging": 0.89, "round": 0.92, "in_between": 0.92, "cigar": 0.71,
    "barred": 0.89, "tight_spiral": 0.70, "loose_spiral": 0.66, "edge_on_no_bulge": 0.94,
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
    raise DataError(
        f"unknown class {key!r}; use an index 0-9 or one of: {', '.join(CLASS_SLUGS)}"
    )
