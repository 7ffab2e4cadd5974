"""The comparison's table: one row per candidate, as CSV, Markdown and a figure."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from experiments.ensembling.context import Candidate

TABLE_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1", "log_loss")


def _row(candidate: Candidate, metrics: Mapping[str, Any], slugs: Sequence[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"candidate": candidate.name, "kind": candidate.kind}
    for key in TABLE_METRICS:
        row[f"val_{key}"] = round(float(metrics[key]), 4)
    for slug in slugs:
        row[f"val_recall_{slug}"] = round(float(metrics[f"recall_{slug}"]), 4)
    row["members"] = " ".join(candidate.members)
    row["estimate"] = candidate.estimate
    return row


def comparison_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """The comparison table as CSV text."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def comparison_markdown(rows: Sequence[Mapping[str, Any]], *, winner: str, select_metric: str, synthetic: bool) -> str:
    """The comparison table as Markdown (main metrics; the CSV has per-class recall too)."""
    wide = [f"oofval_{k}" for k in ("accuracy", "balanced_accuracy") if any(f"oofval_{k}" in r for r in rows)]
    paired = sorted({k for r in rows for k in r if k.startswith("d_")})
    paired += ["verdict"] if paired else []
    cols = [
        "candidate",
        "kind",
        "val_accuracy",
        "val_balanced_accuracy",
        "val_macro_f1",
        "val_log_loss",
        *wide,
        *paired,
        "estimate",
    ]
    lines = []
    if synthetic:
        lines += ["**SYNTHETIC data: these numbers say nothing about real galaxies.**", ""]
    where = (
        "Validation split; the fold-model candidates also on out-of-fold train + validation (oofval_*), "
        "where the champion rule judged them"
        if wide
        else "Validation split only"
    )
    lines += [
        f"{where}; winner by {select_metric}: **{winner}**."
        + (
            " d_* columns: the candidate minus cnn-best on the images the rule judged it on, with its "
            "paired interval (Bonferroni over the candidates); verdict on the selection metric."
            if paired
            else ""
        ),
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for r in rows:
        cells = [f"**{r[c]}**" if c == "candidate" and r[c] == winner else str(r.get(c, "")) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_figure(rows: Sequence[Mapping[str, Any]], *, title: str) -> Any:
    """Grouped bars: validation accuracy, balanced accuracy and macro-F1 per candidate."""
    from matplotlib.figure import Figure

    metrics = [
        ("val_accuracy", "accuracy"),
        ("val_balanced_accuracy", "balanced accuracy"),
        ("val_macro_f1", "macro-F1"),
    ]
    names = [r["candidate"] for r in rows]
    fig = Figure(figsize=(max(7.0, 1.1 * len(names) + 2), 4.5))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(names))
    width = 0.8 / len(metrics)
    for i, (key, label) in enumerate(metrics):
        vals = [float(r[key]) for r in rows]
        bars = ax.bar(x + (i - 1) * width, vals, width, label=label)
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in vals], fontsize=6, rotation=90, padding=2)
    lows = [min(float(r[k]) for k, _ in metrics) for r in rows]
    ax.set_ylim(max(0.0, min(lows) - 0.1), min(1.0, max(float(r[k]) for r in rows for k, _ in metrics) + 0.08))
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("validation split")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
