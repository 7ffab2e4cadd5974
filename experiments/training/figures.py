"""Figures of one run, drawn wherever a run is scored (training, ensembles, reports): the normalised
confusion matrix and the learning curves.

Figures are built with the object-oriented API on an Agg canvas (no display, no global pyplot
state), so they are safe in worker processes and tests.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def confusion_figure(confusion: np.ndarray, class_names: Sequence[str], title: str = "Confusion matrix") -> Figure:
    """Heat map of a row-normalised ``(C, C)`` confusion matrix (rows: true class, columns: predicted)."""
    cm = np.asarray(confusion, dtype=float)
    n = len(class_names)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix shape {cm.shape} does not match {n} class names")
    width = max(5.0, 1.2 + 0.62 * n)
    fig = _figure(width, 1.6 + 0.55 * n)
    ax = fig.add_subplot()
    image = ax.imshow(cm, vmin=0.0, vmax=1.0, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(n), labels=class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels=class_names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    # wrapped to the figure's width (about 9 characters per inch at this size), so no title is cut off
    ax.set_title("\n".join(textwrap.wrap(title, width=int(9 * width))), fontsize=10)
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                f"{cm[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if cm[i, j] > 0.5 else "black",
            )
    return fig


def learning_curves_figure(history: Mapping[str, Sequence[float]], best_epoch: int | None = None) -> Figure:
    """Loss and accuracy per epoch, train vs validation (keys ``loss``, ``val_loss``, ``accuracy``, ...).

    ``best_epoch`` (1-based) is marked with a vertical line.
    """
    fig = _figure(10, 4)
    panels = (("loss", "loss (cross-entropy)"), ("accuracy", "accuracy"))
    for i, (key, label) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, 2, i)
        for name, style in ((key, "-"), (f"val_{key}", "--")):
            values = list(history.get(name, []))
            if values:
                ax.plot(
                    range(1, len(values) + 1),
                    values,
                    style,
                    marker="o",
                    markersize=3,
                    label="train" if name == key else "validation",
                )
        if key == "accuracy" and history.get("val_balanced_accuracy"):
            values = list(history["val_balanced_accuracy"])
            ax.plot(range(1, len(values) + 1), values, ":", marker="s", markersize=3, label="validation (balanced)")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linewidth=1, label=f"best epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig
