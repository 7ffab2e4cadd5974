"""How a comparison's choice is backed: the champion rule's settings and judgements, the evidence notes
(thin validation, cross-fitting cut by the budget) and the widest out-of-fold evidence of each candidate."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from experiments.ensembling.champion import Judgement, RuleSettings
from experiments.ensembling.context import Candidate
from experiments.settings.ensemble import EnsembleConfig
from experiments.training.evaluation import classification_metrics

#: Metrics of the out-of-fold train + validation evidence (``oofval_<metric>``).
WIDE_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1")


def rule_settings(cfg: EnsembleConfig, select_metric: str) -> RuleSettings:
    """The champion rule's settings from the config (``accuracy_guard: false`` drops accuracy from the guards)."""
    guards = tuple(g for g in cfg.guard_metrics if cfg.accuracy_guard or g != "accuracy")
    return RuleSettings(
        metric=select_metric,
        guard_metrics=guards,
        guard_margin=cfg.guard_margin,
        confidence=cfg.confidence,
        seed=cfg.seed,
    )


def add_judgements(
    rows: Sequence[dict[str, Any]],
    columns: tuple[str, ...],
    judgements: Mapping[str, Judgement],
    settings: RuleSettings,
) -> tuple[str, ...]:
    """Put each candidate's paired differences against ``cnn-best`` and its verdict into its row; the columns
    with them (after the validation metrics)."""
    for row in rows:
        j = judgements.get(row["candidate"])
        if j is not None:
            row.update(j.cells())
    extra = (*(f"d_{m}" for m in settings.judged), "verdict")
    at = columns.index("members")
    return (*columns[:at], *extra, *columns[at:])


def evidence_note(judgements: Mapping[str, Judgement], y_train: np.ndarray | None, budget_cut: bool) -> str | None:
    """How little evidence a validation-only choice rests on (no out-of-fold train images), else None."""
    if y_train is not None or not judgements:
        return None
    j = next(iter(judgements.values()))
    acc = j.differences.get("accuracy") or next(iter(j.differences.values()))
    half = (acc.hi - acc.lo) / 2
    why = "cross-fitting was skipped for the budget" if budget_cut else "no out-of-fold train predictions (val_cv)"
    return (
        f"the champion rule judged every candidate on {j.evidence} only ({why}): at the corrected level "
        f"{100 * acc.level:.2f}% a difference in {acc.metric} must exceed about {100 * half:.1f} points to be "
        "told from noise, so the best CNN (then a clear vote) is kept unless the evidence is that clear"
    )


def oof_labels(base: Candidate, labels: np.ndarray) -> np.ndarray | None:
    """Labels of ``cnn-best``'s out-of-fold train rows, or None when it has none (``val_cv``, or
    ``oof_selection: false``)."""
    if base.train_rows is None or base.train_probs is None:
        return None
    return np.asarray(labels[base.train_rows], dtype=np.int64)


def wide_metrics(
    cand: Candidate, base: Candidate, y_train: np.ndarray | None, y_val: np.ndarray, slugs: Sequence[str]
) -> dict[str, float]:
    """``oofval_<metric>`` of ``cand`` on out-of-fold train + validation; empty when it has no out-of-fold
    train probabilities on ``cnn-best``'s rows."""
    if (
        y_train is None
        or cand.train_probs is None
        or cand.train_rows is None
        or not np.array_equal(cand.train_rows, base.train_rows)
    ):
        return {}
    m = classification_metrics(
        np.concatenate([y_train, y_val]), np.concatenate([cand.train_probs, cand.val_probs]), slugs
    )
    return {f"oofval_{k}": float(m[k]) for k in WIDE_METRICS}


#: Below this many validation images of a class, the comparison says its estimates are thin.
THIN_CLASS_IMAGES = 10


def small_validation_note(y_val: np.ndarray, class_names: Sequence[str]) -> str | None:
    """A note when some class has fewer than :data:`THIN_CLASS_IMAGES` validation images, else None.

    With 3 images of a class one image moves its recall by 0.33: the comparison's ranking (and the
    bootstrap standard error behind the champion rule) rests on a handful of images.
    """
    counts = np.bincount(y_val, minlength=len(class_names))[: len(class_names)]
    thin = [(int(n), name) for n, name in zip(counts, class_names) if 0 < n < THIN_CLASS_IMAGES]
    if not thin:
        return None
    n, name = min(thin)
    listed = ", ".join(f"{k} {c}" for k, c in sorted(thin))
    return (
        f"the validation split holds few images of some classes ({listed}): one image of {name} moves its "
        f"recall by {1 / n:.2f}, so the comparison and the champion rule rest on a handful of images; a "
        "larger data.val_fraction (or more images of those classes) makes the choice more reliable"
    )
