"""Matplotlib figures of the best-model report that ``experiments.training.figures`` does not already draw.

Per-class recall bars (baseline, reference, best CNN, best ensemble), the optimisation history of a
study redrawn from its trials (when the tuning plots are missing on the parent run), and a gallery
of misclassified test images. Confusion matrices and learning curves come from
:mod:`experiments.training.figures`. Figures use the object-oriented API on an Agg canvas (no pyplot state).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

#: Bar colours per series; the reference is hatched grey (it is not our data).
SERIES_STYLE: dict[str, dict[str, object]] = {
    "baseline": {"color": "#b0b0b0"},
    "reference": {"color": "#ffffff", "edgecolor": "#555555", "hatch": "///"},
    "cnn": {"color": "#1f77b4"},
    "ensemble": {"color": "#ff7f0e"},
}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """The figure encoded as PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def recall_bars_figure(class_names: Sequence[str], series: Mapping[str, tuple[str, Sequence[float | None]]]) -> Figure:
    """Grouped bars of per-class recall, one group per class.

    Parameters
    ----------
    class_names
        Display names in label order.
    series
        ``{key: (legend label, recalls)}`` in drawing order; ``key`` picks the style
        (:data:`SERIES_STYLE`), a ``None`` recall leaves a gap (class absent from the test split).
    """
    n, k = len(class_names), len(series)
    if n == 0 or k == 0:
        raise ValueError("recall bars need at least one class and one series")
    fig = _figure(max(8.0, 1.2 * n + 1.0), 4.6)
    ax = fig.add_subplot()
    width = 0.84 / k
    x = np.arange(n)
    for i, (key, (label, recalls)) in enumerate(series.items()):
        if len(recalls) != n:
            raise ValueError(f"series {key!r} has {len(recalls)} recalls for {n} classes")
        values = np.array([np.nan if r is None else float(r) for r in recalls])
        style = SERIES_STYLE.get(key, {})
        ax.bar(
            x + (i - (k - 1) / 2) * width,
            np.nan_to_num(values),
            width=width * 0.92,
            label=label,
            linewidth=0.8,
            **({"edgecolor": "none"} | style),
        )
    ax.set_xticks(
        x, labels=[name.replace(" ", "\n", 1) if len(name) > 14 else name for name in class_names], fontsize=8
    )
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(0, 1.0)
    ax.set_ylabel("recall")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=min(k, 4), frameon=False)
    ax.set_title(
        "Per-class recall on the test split"
        + (" (reference: its published test recall)" if "reference" in series else "")
    )
    return fig


def history_figure(
    numbers: Sequence[int], values: Sequence[float | None], states: Sequence[str], *, metric: str, maximize: bool = True
) -> Figure:
    """Objective value per trial (COMPLETE dots, PRUNED crosses at their last report) and the best so far."""
    fig = _figure(8, 4)
    ax = fig.add_subplot()
    numbers = list(numbers)
    vals = np.array([np.nan if v is None else float(v) for v in values])
    states = list(states)
    done = np.array([s == "COMPLETE" for s in states])
    pruned = np.array([s == "PRUNED" for s in states])
    x = np.array(numbers)
    if done.any():
        ax.plot(x[done], vals[done], "o", color="#1f77b4", label="complete trial")
        best = np.full(len(x), np.nan)
        current = np.nan
        for i in range(len(x)):
            if done[i] and np.isfinite(vals[i]):
                current = vals[i] if np.isnan(current) else (max if maximize else min)(current, vals[i])
            best[i] = current
        ax.step(x, best, where="post", color="#d62728", label="best so far")
    if pruned.any() and np.isfinite(vals[pruned]).any():
        ax.plot(x[pruned], vals[pruned], "x", color="#7f7f7f", label="pruned (last report)")
    ax.set_xlabel("trial number")
    ax.set_ylabel(f"val {metric}")
    ax.set_title("Optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def gallery_figure(
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    *,
    columns: int = 6,
    row_labels: Sequence[str] | None = None,
    rows: Sequence[int] | None = None,
) -> Figure:
    """A grid of image thumbnails with a small title each (e.g. ``true: X / pred: Y``).

    ``rows[i]`` puts image ``i`` on that row (one row per class); by default images fill the grid in
    order. ``row_labels`` name the rows on the left.
    """
    if len(images) != len(titles):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    if not images:
        raise ValueError("the gallery needs at least one image")
    if rows is None:
        rows = [i // columns for i in range(len(images))]
    n_rows = max(rows) + 1
    fig = _figure(1.9 * columns + 0.6, 2.1 * n_rows + 0.3)
    grid = fig.add_gridspec(n_rows, columns)
    used: dict[int, int] = {}
    for image, title, row in zip(images, titles, rows):
        col = used.get(row, 0)
        if col >= columns:
            continue
        used[row] = col + 1
        ax = fig.add_subplot(grid[row, col])
        ax.imshow(np.asarray(image), interpolation="lanczos")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=6.5)
        if col == 0 and row_labels is not None:
            ax.set_ylabel(row_labels[row], fontsize=8, fontweight="bold")
    return fig


def reliability_figure(curves: Mapping[str, Any]) -> Figure:
    """Reliability diagram: accuracy against mean confidence per bin, one line per ``label -> Reliability``."""
    fig = _figure(5.2, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for label, rel in curves.items():
        filled = np.asarray(rel.count) > 0
        ax.plot(
            np.asarray(rel.confidence)[filled],
            np.asarray(rel.accuracy)[filled],
            marker="o",
            markersize=4,
            label=f"{label} (ECE {rel.ece:.3f})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability on the test split")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def pareto_figure(points: Sequence[Any], *, metric: str) -> Figure:
    """Each trial's validation metric against its inference speed; the Pareto front joined by a line."""
    fig = _figure(6.0, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    others = [p for p in points if not p.on_front]
    front = sorted((p for p in points if p.on_front), key=lambda p: p.images_per_second)
    if others:
        ax.scatter(
            [p.images_per_second for p in others],
            [p.value for p in others],
            color="#999999",
            s=18,
            label="dominated trials",
        )
    ax.plot(
        [p.images_per_second for p in front],
        [p.value for p in front],
        color="#d62728",
        marker="o",
        label="Pareto front",
    )
    for p in front:
        ax.annotate(
            f"#{p.number}", (p.images_per_second, p.value), textcoords="offset points", xytext=(4, 4), fontsize=7
        )
    ax.set_xscale("log")
    ax.set_xlabel("inference images/s on the training machine (log scale)")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title("Accuracy against speed: the trials' Pareto front")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
