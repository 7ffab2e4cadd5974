"""Class targeting: which classes get extra, freshly augmented copies, and how many (the multipliers).

A multiplier ``m_k >= 1`` means each image of class ``k`` appears ``m_k`` times per epoch on average;
``pipelines.sampling`` draws each epoch's sample from the multipliers, and the input pipeline augments
every sample independently, so each extra copy gets its own random augmentation. Multipliers come from
named targets (:func:`multipliers_from_targets`) or from measured per-class recall
(:func:`auto_multipliers`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from core.errors import ConfigError, Galaxy10Error
from pipelines.classes import GALAXY10, ClassSet

log = logging.getLogger(__name__)


def check_targets(targets: Any) -> None:
    """Check the shape of ``augment.targets`` without a class set: a mapping of class to number >= 1.

    The class names are resolved later, against the data's own classes (:func:`multipliers_from_targets`).

    Raises
    ------
    ConfigError
        For a non-mapping, a key that is not a name or index, or a bad multiplier.
    """
    if not isinstance(targets, Mapping):
        raise ConfigError(
            f"augment targets must be a mapping of class slug to multiplier, got {type(targets).__name__}; "
            "write e.g. targets: {disturbed: 3, cigar: 2.5}"
        )
    for key, value in targets.items():
        if isinstance(key, bool) or not isinstance(key, (str, int)) or (isinstance(key, str) and not key.strip()):
            raise ConfigError(f"augment targets key {key!r} is not a class slug, name or index")
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float, np.integer, np.floating))
            or not math.isfinite(float(value))
            or float(value) < 1.0
        ):
            raise ConfigError(
                f"augment targets {key!r}: multiplier {value!r} must be a finite number >= 1 "
                "(1 = no extra copies, 2.5 = 1.5 extra copies per image on average)"
            )


def multipliers_from_targets(targets: Mapping[str | int, float] | None, classes: ClassSet = GALAXY10) -> np.ndarray:
    """Turn ``{class slug/name/index: multiplier}`` into a ``(classes.n,)`` array, 1.0 for classes not named.

    Keys are resolved against ``classes``: Galaxy10's by default, or the data file's own class set.

    Raises
    ------
    ConfigError
        For an unknown class (naming the data's classes), a class named twice, or a multiplier that is
        not a finite number >= 1.
    """
    out = np.ones(classes.n, dtype=np.float64)
    if targets is None:
        return out
    check_targets(targets)
    seen: dict[int, Any] = {}
    for key, value in targets.items():
        try:
            k = classes.index(key)
        except Galaxy10Error as err:
            raise ConfigError(f"augment targets key {key!r}: {err}") from None
        if k in seen:
            raise ConfigError(
                f"augment targets name class {classes.slugs[k]!r} twice ({seen[k]!r} and {key!r}); keep one"
            )
        seen[k] = key
        out[k] = float(value)
    return out


def auto_multipliers(
    recall: Sequence[float] | Mapping[str, float],
    *,
    max_multiplier: float = 4.0,
    floor: float = 0.05,
    classes: ClassSet | None = None,
    top_k: int | None = None,
) -> np.ndarray:
    """Derive multipliers from per-class validation recall (of an earlier run or a warm-up).

    ``m_k = clip(recall_best / max(recall_k, floor), 1, max_multiplier)``: the best class gets 1, a
    class with half the best recall gets 2, and weaker classes get more, never above
    ``max_multiplier``. It is non-increasing in ``recall_k``; ``floor`` keeps a zero recall finite.
    ``recall`` is one number per class in label order, or a mapping with every class of ``classes``
    (Galaxy10's by default). With ``top_k`` only the ``k`` classes of lowest recall are targeted.
    """
    if (
        isinstance(max_multiplier, bool)
        or not isinstance(max_multiplier, (int, float))
        or not math.isfinite(max_multiplier)
        or max_multiplier < 1.0
    ):
        raise ConfigError(f"max_multiplier={max_multiplier!r} must be a finite number >= 1")
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0.0 < floor <= 1.0:
        raise ConfigError(f"floor={floor!r} must be a number in (0, 1]")
    if isinstance(recall, Mapping):
        classes = classes or GALAXY10
        by_index: dict[int, float] = {}
        for key, value in recall.items():
            try:
                by_index[classes.index(key)] = value
            except Galaxy10Error as err:
                raise ConfigError(f"recall key {key!r}: {err}") from None
        missing = [classes.slugs[k] for k in range(classes.n) if k not in by_index]
        if missing:
            raise ConfigError(f"recall lacks class(es) {', '.join(missing)}; give all {classes.n} classes")
        recall = [by_index[k] for k in range(classes.n)]
    try:
        r = np.asarray(recall, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"recall {recall!r} is not a list of numbers; pass one recall in 0..1 per class") from None
    n = classes.n if classes is not None else (r.shape[0] if r.ndim == 1 else 0)
    if r.ndim != 1 or r.shape != (n,) or n == 0:
        raise ConfigError(f"recall needs {n or 'one'} value(s) per class in label order, got shape {r.shape}")
    slugs = classes.slugs if classes is not None else tuple(str(k) for k in range(n))
    bad = [slugs[k] for k in range(n) if not (np.isfinite(r[k]) and 0.0 <= r[k] <= 1.0)]
    if bad:
        raise ConfigError(
            f"recall of {', '.join(bad)} is not a number in [0, 1]; rerun evaluation with every class in "
            "the validation split"
        )
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ConfigError(f"auto_top_k={top_k!r} must be a positive number of classes or null")
    best = max(float(r.max()), floor)
    m = np.clip(best / np.maximum(r, floor), 1.0, float(max_multiplier))
    if top_k is not None and top_k < n:
        keep = np.argsort(r, kind="stable")[:top_k]
        mask = np.zeros(n, dtype=bool)
        mask[keep] = True
        m = np.where(mask, m, 1.0)
    return m
