"""The report's figures: confusion matrices, recall bars, curves, gallery, importance."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from experiments.reporting.contents import Report
from experiments.reporting.figures import (
    gallery_figure,
    history_figure,
    pareto_figure,
    png_bytes,
    recall_bars_figure,
    reliability_figure,
)
from experiments.tracking.runs import download_run_artifact, get_run_facts, list_run_artifacts, metric_histories
from experiments.tracking.workspace import Workspace
from experiments.training.figures import confusion_figure, learning_curves_figure
from pipelines.classes import REFERENCE_RECALL
from pipelines.dataset import TrainData
from pipelines.reader import Galaxy10File

GALLERY_CLASSES = 3
GALLERY_PER_CLASS = 6
EPOCH_HISTORY_KEYS: dict[str, str] = {
    "epoch_train_loss": "loss",
    "epoch_val_loss": "val_loss",
    "epoch_train_accuracy": "accuracy",
    "epoch_val_accuracy": "val_accuracy",
    "epoch_val_balanced_accuracy": "val_balanced_accuracy",
}


def make_figures(
    report: Report, *, data: TrainData, probs_by_key: Mapping[str, np.ndarray], ws: Workspace, workdir: Path
) -> None:
    """Fill ``report.figures`` (PNG bytes) and ``report.figure_notes``."""

    card = report.data
    names = list(card.class_names)
    series: dict[str, tuple[str, list[float | None]]] = {}
    for m in report.models:
        if m.key == "baseline":
            series["baseline"] = (m.label, m.recalls(card.class_slugs))
    if tuple(card.class_slugs) == tuple(REFERENCE_RECALL):
        series["reference"] = (
            f"reference project ({report.reference_note})",
            [REFERENCE_RECALL[s] for s in card.class_slugs],
        )
    for m in report.models:
        if m.key != "baseline":
            series[m.key] = (m.label, m.recalls(card.class_slugs))
    report.figures["recall_per_class.png"] = png_bytes(recall_bars_figure(names, series))

    for m in report.models:
        if m.key == "baseline":
            continue
        fig = confusion_figure(m.metrics["confusion"], names, title=f"{m.label}: test confusion (row-normalised)")
        report.figures[f"confusion_{m.key}.png"] = png_bytes(fig)

    if report.pareto:
        report.figures["pareto_front.png"] = png_bytes(pareto_figure(report.pareto, metric=report.metric))
    else:
        report.figure_notes["pareto_front.png"] = "no finished trial measured its inference speed"
    if report.calibration:
        report.figures["reliability.png"] = png_bytes(reliability_figure(report.calibration["curves"]))
    else:
        report.figure_notes["reliability.png"] = "the best trial's run logged no calibration temperature"

    history = metric_histories(report.best_run_id, list(EPOCH_HISTORY_KEYS), ws=ws)
    if history:
        curves = {EPOCH_HISTORY_KEYS[k]: [v for _, v in pts] for k, pts in history.items()}
        best_epoch = get_run_facts(report.best_run_id, ws=ws).metrics.get("best_epoch")
        fig = learning_curves_figure(curves, best_epoch=None if best_epoch is None else int(best_epoch))
        report.figures["learning_curves.png"] = png_bytes(fig)
    else:
        report.figure_notes["learning_curves.png"] = "the best trial's run has no per-epoch metrics"

    logged = set(list_run_artifacts(report.parent_run_id, "plots", ws=ws))
    for name in ("optimization_history", "param_importances"):
        artifact = f"plots/{name}.png"
        if artifact in logged:
            local = download_run_artifact(report.parent_run_id, artifact, workdir, ws=ws)
            report.figures[f"{name}.png"] = local.read_bytes()
        elif name == "optimization_history":
            numbers, states, values = zip(*[(n, s, v) for n, s, v in report.trials]) if report.trials else ((), (), ())
            fig = history_figure(numbers, values, states, metric=report.metric)
            report.figures["optimization_history.png"] = png_bytes(fig)
            report.figure_notes["optimization_history.png"] = (
                "redrawn from the study's trials (the parent run has no plots/optimization_history.png)"
            )
        else:
            report.figure_notes[f"{name}.png"] = _importance_note(report, ws)

    _gallery(report, data, probs_by_key, gallery_figure, png_bytes)


def _importance_note(report: Report, ws: Workspace) -> str:
    notes = ""
    if "notes.txt" in list_run_artifacts(report.parent_run_id, ws=ws):
        with tempfile.TemporaryDirectory(prefix="galaxy10-report-") as tmp:
            local = download_run_artifact(report.parent_run_id, "notes.txt", tmp, ws=ws)
            notes = " ".join(line.strip() for line in local.read_text().splitlines() if "importances" in line)
    return notes or (
        "not available: parameter importances need at least 2 COMPLETE trials with varying "
        "parameters (the tuning run logged none)"
    )


def _gallery(
    report: Report, data: TrainData, probs_by_key: Mapping[str, np.ndarray], gallery_figure: Any, png_bytes: Any
) -> None:
    """Misclassified test images of the final model's weakest classes (lowest test recall)."""

    final = report.model("ensemble") or report.model("cnn")
    if final is None:
        return
    probs = probs_by_key[final.key]
    y_true = data.labels[data.test]
    recalls = final.recalls(report.data.class_slugs)
    wrong = final.y_pred != y_true
    candidates = [k for k, r in enumerate(recalls) if r is not None and np.any(wrong & (y_true == k))]
    weakest = sorted(candidates, key=lambda k: (recalls[k], k))[:GALLERY_CLASSES]
    report.gallery_model = final.label
    report.gallery_classes = [report.data.class_names[k] for k in weakest]
    if not weakest:
        report.figure_notes["misclassified.png"] = "no misclassified test image"
        return
    picks, titles, rows = [], [], []
    names = report.data.class_names
    for row, k in enumerate(weakest):
        positions = np.flatnonzero(wrong & (y_true == k))
        # the most confident mistakes first: they say most about what the model confuses
        positions = positions[np.argsort(-probs[positions].max(axis=1), kind="stable")][:GALLERY_PER_CLASS]
        for pos in positions:
            pred = int(final.y_pred[pos])
            picks.append(int(data.test[pos]))
            titles.append(f"true: {short_name(names[k])}\npred: {short_name(names[pred])} ({probs[pos, pred]:.2f})")
            rows.append(row)
    with Galaxy10File(data.path) as f:
        images = list(f.images(np.asarray(picks, dtype=np.int64)))
    row_labels = [f"{names[k]}\nrecall {recalls[k]:.2f}" for k in weakest]
    columns = max(rows.count(r) for r in set(rows))
    fig = gallery_figure(images, titles, columns=columns, rows=rows, row_labels=row_labels)
    report.figures["misclassified.png"] = png_bytes(fig)


def short_name(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"
