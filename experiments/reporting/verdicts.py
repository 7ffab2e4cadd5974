"""The report's paired verdicts: every model against the reference trial and the best CNN, image by image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments.paired import PAIRED_METRICS, compare_predictions
from experiments.reporting.contents import PairedRow, Report, ScoredModel

#: Short names of the paired metrics in tables.
METRIC_LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced acc.", "macro_f1": "macro-F1"}


def paired_rows(
    models: Sequence[ScoredModel],
    y_true: np.ndarray,
    class_slugs: Sequence[str],
    *,
    n_resamples: int,
    seed: int,
    level: float = 0.95,
) -> list[PairedRow]:
    """Each scored model (but the majority baseline) against the reference trial and against the best CNN.

    The reference is the study's reference trial (``reference``, or the best CNN itself when the reference
    trial is the study's best); each pair is compared once. The bootstrap resamples the images once for both
    models (:func:`experiments.paired.compare_predictions`).
    """
    by_key = {m.key: m for m in models}
    anchors = [k for k in ("reference", "cnn") if k in by_key]
    pairs: list[tuple[str, str]] = []
    for m in models:
        if m.key == "baseline":
            continue
        for anchor in anchors:
            if m.key != anchor and (m.key, anchor) not in pairs and (anchor, m.key) not in pairs:
                pairs.append((m.key, anchor))
    return [
        PairedRow(
            a,
            b,
            compare_predictions(
                y_true,
                by_key[a].y_pred,
                by_key[b].y_pred,
                class_slugs,
                a=by_key[a].label,
                b=by_key[b].label,
                n_resamples=n_resamples,
                seed=seed,
                level=level,
            ),
        )
        for a, b in pairs
    ]


def _pts(d: Any) -> str:
    return f"{100 * d.diff:+.1f} [{100 * d.lo:+.1f}, {100 * d.hi:+.1f}]"


def verdict_rows(report: Report) -> list[dict[str, Any]]:
    """Table rows: model, against, per metric the difference in points with its interval and verdict, McNemar."""
    rows = []
    for p in report.paired:
        c = p.comparison
        row: dict[str, Any] = {"model": c.a, "against": c.b, "n_images": c.n_images}
        for m in PAIRED_METRICS:
            d = c.differences[m]
            row[m] = _pts(d)
            row[f"{m}_verdict"] = d.verdict
        mc = c.mcnemar
        row["mcnemar"] = f"{mc.a_only} / {mc.b_only}, p = {mc.p_value:.3g}"
        rows.append(row)
    return rows


def recall_difference_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Per-class recall differences (points): header (class, then one column per pair) and rows."""
    header = ["Class"] + [f"{p.comparison.a} - {p.comparison.b}" for p in report.paired]
    rows = []
    for name, slug in zip(report.data.class_names, report.data.class_slugs):
        cells = [name]
        for p in report.paired:
            v = p.comparison.recall_diff.get(slug)
            cells.append("–" if v is None else f"{100 * v:+.1f}")
        rows.append(cells)
    return header, rows


VERDICT_TEXT = (
    "Differences are in points (model minus the one it is set against) on the same test images, with "
    "a paired bootstrap 95% interval (the images resampled once for both models); the verdict says "
    "better or worse only when the interval excludes 0. McNemar: images only the model gets right / "
    "only the other gets right, exact two-sided p. With a few hundred images most differences are noise."
)
