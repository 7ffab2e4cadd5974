"""Parameter ranges of the synthetic Galaxy10 generator and how ``difficulty`` widens them.

Every range is a :class:`Range`: a core interval that ``difficulty`` in [0, 1] widens on either
side, so that confusable classes (tight vs loose spirals, cigar vs in-between, edge-on with vs
without bulge, barred vs unbarred, disturbed vs merging) overlap more as the knob goes up.
Units: arcseconds for sizes, degrees for angles, fractions of the total flux for ``*_frac``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import ConfigError
from pipelines.classes import CLASS_SLUGS, GALAXY10_COUNTS, NUM_CLASSES


@dataclass(frozen=True)
class Range:
    """Core interval ``[lo, hi]``; ``difficulty`` d makes it ``[lo - d * widen_lo, hi + d * widen_hi]``."""

    lo: float
    hi: float
    widen_lo: float = 0.0
    widen_hi: float = 0.0

    def at(self, difficulty: float) -> tuple[float, float]:
        """The interval used at ``difficulty``."""
        return (self.lo - difficulty * self.widen_lo, self.hi + difficulty * self.widen_hi)


#: Settings shared by every image: seeing, sky noise, brightness, field sources.
COMMON: dict[str, Range] = {
    "psf_fwhm": Range(1.0, 1.5, 0.0, 0.4),  # arcsec, Kolmogorov seeing like DECaLS
    "sky_sigma": Range(0.7, 1.2, 0.0, 1.4),  # sky noise relative to the nominal level
    "log_brightness": Range(-0.15, 0.25, 0.35, 0.0),  # log10 flux scale of the target galaxy
    "n_stars": Range(0, 5),
    "n_background": Range(1, 7),  # faint background galaxies
    "offset": Range(0.0, 0.6, 0.0, 0.8),  # arcsec, centring error
}

#: Per-class ranges (keys by class slug).
CLASS_RANGES: dict[str, dict[str, Range]] = {
    "disturbed": {
        "hlr": Range(3.2, 7.5),
        "q": Range(0.4, 1.0),
        "lopsided": Range(0.35, 0.9, 0.3, 0.0),  # m=1 asymmetry of the host
        "n_clumps": Range(1, 3),  # offset secondary components
        "clump_offset": Range(0.5, 1.6),  # in host half-light radii
        "clump_frac": Range(0.12, 0.35, 0.08, 0.0),
        "n_knots": Range(5, 20),
        "knot_frac": Range(0.05, 0.2, 0.03, 0.0),
        "tidal_frac": Range(0.06, 0.3, 0.04, 0.0),
        "brightness_drop": Range(0.0, 0.5),  # disturbed systems are often faint, diffuse
        "bulge_frac": Range(0.0, 0.2),  # spiral hosts
        "arm_frac": Range(0.1, 0.35),
        "pitch": Range(18.0, 40.0),
    },
    "merging": {
        "hlr": Range(2.0, 5.0),
        "separation": Range(1.2, 3.0, 1.0, 0.0),  # in primary half-light radii
        "flux_ratio": Range(0.35, 1.0, 0.2, 0.0),
        "tail_frac": Range(0.1, 0.3, 0.06, 0.0),
        "bulge_frac": Range(0.2, 0.8, 0.15, 0.0),
    },
    "round": {"hlr": Range(2.0, 6.0), "sersic_n": Range(3.0, 4.5, 0.8, 0.5), "q": Range(0.82, 1.0, 0.08, 0.0)},
    "in_between": {"hlr": Range(2.2, 6.5), "sersic_n": Range(2.0, 4.0, 0.5, 0.5), "q": Range(0.5, 0.78, 0.1, 0.06)},
    "cigar": {"hlr": Range(2.8, 7.0), "sersic_n": Range(1.5, 3.5, 0.5, 0.5), "q": Range(0.2, 0.42, 0.0, 0.22)},
    "barred": {
        "hlr": Range(4.0, 9.0),
        "disk_q": Range(0.55, 1.0, 0.15, 0.0),
        "bulge_frac": Range(0.12, 0.35),
        "bar_frac": Range(0.12, 0.28, 0.09, 0.0),  # weak bars at high difficulty
        "bar_q": Range(0.2, 0.32, 0.0, 0.1),
        "bar_len": Range(0.7, 1.2),  # bar half-length in disk half-light radii
        "pitch": Range(12.0, 24.0, 4.0, 6.0),
        "arm_frac": Range(0.2, 0.4, 0.08, 0.0),
    },
    "tight_spiral": {
        "hlr": Range(3.8, 8.5),
        "disk_q": Range(0.55, 1.0, 0.15, 0.0),
        "bulge_frac": Range(0.25, 0.5, 0.1, 0.0),
        "bar_frac": Range(0.0, 0.0, 0.0, 0.08),  # faint bar-like oval only at high difficulty
        "pitch": Range(7.0, 14.0, 2.0, 9.0),
        "arm_frac": Range(0.15, 0.35, 0.07, 0.0),
    },
    "loose_spiral": {
        "hlr": Range(4.0, 9.0),
        "disk_q": Range(0.55, 1.0, 0.15, 0.0),
        "bulge_frac": Range(0.02, 0.15, 0.0, 0.12),
        "pitch": Range(20.0, 35.0, 9.0, 0.0),
        "arm_frac": Range(0.25, 0.5, 0.08, 0.0),
        "n_knots": Range(4, 20),
        "knot_frac": Range(0.03, 0.12, 0.0, 0.08),
        "lopsided": Range(0.0, 0.15, 0.0, 0.3),
    },
    "edge_on_no_bulge": {
        "hlr": Range(4.0, 9.0),
        "inclination": Range(83.0, 90.0, 8.0, 0.0),
        "h_over_r": Range(0.06, 0.14, 0.0, 0.06),
        "bulge_frac": Range(0.0, 0.03, 0.0, 0.1),
    },
    "edge_on_bulge": {
        "hlr": Range(4.0, 9.0),
        "inclination": Range(80.0, 90.0, 6.0, 0.0),
        "h_over_r": Range(0.07, 0.18, 0.0, 0.05),
        "bulge_frac": Range(0.18, 0.5, 0.1, 0.0),
        "bulge_q": Range(0.55, 0.95),
        "dust": Range(0.0, 0.6),  # dust-lane depth (0 = none)
    },
}


#: Hosts of the Disturbed class and their probabilities (disturbed irregulars, smooth and spiral
#: galaxies: the reason Disturbed overlaps with Merging and Loose Spiral in the real data).
DISTURBED_HOSTS: dict[str, float] = {"irregular": 0.35, "smooth": 0.25, "spiral": 0.4}


def resolved_ranges(difficulty: float) -> dict[str, dict[str, tuple[float, float]]]:
    """All ranges at ``difficulty``, keyed ``"common"`` and by class slug (what the file records)."""
    out: dict[str, dict[str, tuple[float, float]]] = {"common": {k: r.at(difficulty) for k, r in COMMON.items()}}
    for slug in CLASS_SLUGS:
        out[slug] = {k: r.at(difficulty) for k, r in CLASS_RANGES[slug].items()}
    return out


def parameters_record(difficulty: float) -> dict[str, Any]:
    """JSON-ready description of the ranges used (stored in the file's ``parameters`` attribute)."""
    return {
        "units": {"sizes": "arcsec", "angles": "deg", "*_frac": "fraction of galaxy flux"},
        "difficulty": difficulty,
        "ranges": {
            g: {k: [round(v[0], 4), round(v[1], 4)] for k, v in d.items()}
            for g, d in resolved_ranges(difficulty).items()
        },
        "disturbed_hosts": DISTURBED_HOSTS,
    }


def check_difficulty(difficulty: float) -> float:
    """Return ``difficulty`` as a float; raise ConfigError unless it lies in [0, 1]."""
    value = float(difficulty)
    if not 0.0 <= value <= 1.0 or np.isnan(value):
        raise ConfigError(f"difficulty {difficulty} is outside [0, 1]; pass e.g. --difficulty 0.5")
    return value


def class_counts(n: int, weights: tuple[int, ...] = GALAXY10_COUNTS) -> np.ndarray:
    """Split ``n`` images over the classes in proportion to ``weights`` (largest-remainder rounding).

    Ties in the remainder go to the lower class index, so the result is deterministic.
    """
    w = np.asarray(weights, dtype=np.float64)
    exact = n * w / w.sum()
    counts = np.floor(exact).astype(np.int64)
    short = n - int(counts.sum())
    order = np.lexsort((np.arange(NUM_CLASSES), -(exact - counts)))
    counts[order[:short]] += 1
    return counts
