"""What an evaluation says: each recipe's cross-validated scores and its paired difference from the first recipe.

Every recipe is scored on every fold's held-out images; the fold scores of two recipes are paired (same
images), and the mean of their J = R x K differences gets Nadeau and Bengio's corrected resampled t interval,
which widens the naive one for the overlap of the folds' training sets (:func:`experiments.paired.
corrected_resampled_t`). Per class: the same on each class's recall.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from experiments.crossval.folds import Fold
from experiments.paired import PAIRED_METRICS, CorrectedT, corrected_resampled_t
from experiments.training.evaluation import classification_metrics

#: Metrics summarised per fold (their names in ``classification_metrics``).
FOLD_METRICS: tuple[str, ...] = PAIRED_METRICS


@dataclass(frozen=True)
class RecipeScores:
    """One recipe's fold scores: ``scores[metric]`` and ``recall[slug]`` are arrays over the folds (in fold order)."""

    name: str
    scores: Mapping[str, np.ndarray]
    recall: Mapping[str, np.ndarray]
    seconds: np.ndarray

    def mean(self, metric: str) -> float:
        return float(np.mean(self.scores[metric]))

    def sd(self, metric: str) -> float:
        return float(np.std(self.scores[metric], ddof=1)) if len(self.scores[metric]) > 1 else 0.0


@dataclass(frozen=True)
class RecipeDifference:
    """A recipe against the first (baseline) recipe: per metric and per class, the corrected t interval."""

    name: str
    baseline: str
    metrics: Mapping[str, CorrectedT]
    recall: Mapping[str, CorrectedT | None]


@dataclass(frozen=True)
class EvaluationSummary:
    """Every recipe's scores and its differences from the baseline (the first recipe)."""

    recipes: tuple[RecipeScores, ...]
    differences: tuple[RecipeDifference, ...]
    repeats: int
    folds: int
    n_images: int
    n_train: float  # the images a recipe learned from (fewer than the fold's training images with a label fraction)
    n_test: float
    n_pool: float  # the fold's training images (everything not held out): the correction's n_train
    class_names: tuple[str, ...]
    class_slugs: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "repeats": self.repeats,
            "folds": self.folds,
            "n_images": self.n_images,
            "mean_train_images": self.n_train,
            "mean_test_images": self.n_test,
            "mean_fold_training_pool": self.n_pool,
            "interval": "Nadeau-Bengio corrected resampled t over the R x K fold differences, 95%",
            "class_names": list(self.class_names),
            "recipes": {
                r.name: {
                    "mean": {m: r.mean(m) for m in FOLD_METRICS},
                    "sd": {m: r.sd(m) for m in FOLD_METRICS},
                    "folds": {m: [float(v) for v in r.scores[m]] for m in FOLD_METRICS},
                    "recall_mean": {s: float(np.nanmean(v)) for s, v in r.recall.items()},
                    "seconds_per_fold": float(np.mean(r.seconds)),
                }
                for r in self.recipes
            },
            "differences": {
                d.name: {
                    "baseline": d.baseline,
                    "metrics": {m: t.as_dict() for m, t in d.metrics.items()},
                    "recall": {s: None if t is None else t.as_dict() for s, t in d.recall.items()},
                }
                for d in self.differences
            },
        }


def fold_scores(
    name: str,
    labels: np.ndarray,
    folds: Sequence[Fold],
    probs: Mapping[str, np.ndarray],
    seconds: Mapping[str, float],
    class_slugs: Sequence[str],
) -> RecipeScores:
    """A recipe's metrics on each fold's held-out images (``probs[fold.cell]``)."""
    scores: dict[str, list[float]] = {m: [] for m in FOLD_METRICS}
    recall: dict[str, list[float]] = {s: [] for s in class_slugs}
    for fold in folds:
        y = labels[fold.test]
        m = classification_metrics(y, probs[fold.cell], class_slugs)
        for key in FOLD_METRICS:
            scores[key].append(m[key])
        for k, slug in enumerate(class_slugs):
            recall[slug].append(m[f"recall_{slug}"] if np.any(y == k) else np.nan)
    return RecipeScores(
        name,
        {k: np.asarray(v) for k, v in scores.items()},
        {k: np.asarray(v) for k, v in recall.items()},
        np.asarray([seconds.get(f.cell, np.nan) for f in folds], dtype=np.float64),
    )


def summarize(
    labels: np.ndarray,
    folds: Sequence[Fold],
    predictions: Mapping[str, Mapping[str, np.ndarray]],
    seconds: Mapping[str, Mapping[str, float]],
    *,
    class_names: Sequence[str],
    class_slugs: Sequence[str],
    repeats: int,
    level: float = 0.95,
) -> EvaluationSummary:
    """Scores of every recipe (``predictions[recipe][cell]``, recipes in order; the first is the baseline)."""
    names = list(predictions)
    recipes = tuple(fold_scores(n, labels, folds, predictions[n], seconds.get(n, {}), class_slugs) for n in names)
    n_train = float(np.mean([len(f.train) for f in folds]))  # the images a recipe learned from
    n_test = float(np.mean([len(f.test) for f in folds]))
    # The correction's n_test / n_train stands for how much the folds' training sets overlap: that of the
    # K-fold partition (everything not held out), also when a label fraction draws a subset from it - a
    # subset's overlap is smaller, so the K-fold ratio is the conservative (wider) one. The subset's own size
    # would inflate the ratio (75 of 742 images: 2.5 instead of 0.25) and the interval with it.
    n_pool = float(np.mean([len(labels) - len(f.test) for f in folds]))
    base = recipes[0]
    diffs = []
    for r in recipes[1:]:
        metrics = {
            m: corrected_resampled_t(r.scores[m] - base.scores[m], n_train=n_pool, n_test=n_test, level=level)
            for m in FOLD_METRICS
        }
        recall: dict[str, CorrectedT | None] = {}
        for slug in class_slugs:
            d = r.recall[slug] - base.recall[slug]
            d = d[np.isfinite(d)]
            recall[slug] = corrected_resampled_t(d, n_train=n_pool, n_test=n_test, level=level) if len(d) > 1 else None
        diffs.append(RecipeDifference(r.name, base.name, metrics, recall))
    return EvaluationSummary(
        recipes,
        tuple(diffs),
        repeats,
        len(folds) // repeats,
        len(labels),
        n_train,
        n_test,
        n_pool,
        tuple(class_names),
        tuple(class_slugs),
    )


def _pts(t: CorrectedT) -> str:
    return f"{100 * t.mean:+.1f} [{100 * t.lo:+.1f}, {100 * t.hi:+.1f}]"


def summary_markdown(s: EvaluationSummary, *, synthetic: bool, data_path: str) -> str:
    """The evaluation as Markdown: scores, paired differences with verdicts, per-class recall differences."""
    lines = []
    if synthetic:
        lines += ["**SYNTHETIC data: these numbers say nothing about real galaxies.**", ""]
    lines += [
        f"Repeated cross-validation of {data_path}: {s.repeats} x {s.folds} stratified folds, every one of the "
        f"{s.n_images} images held out once per repetition (mean {s.n_train:.0f} training"
        + (f" - drawn from the fold's {s.n_pool:.0f} -" if s.n_pool and s.n_train < s.n_pool else "")
        + f" / {s.n_test:.0f} "
        "held-out images per fold).",
        "",
        "| recipe | accuracy mean ± sd (folds) | balanced accuracy | macro-F1 | seconds per fold |",
        "|---|---|---|---|---|",
    ]
    for r in s.recipes:
        cells = [f"{100 * r.mean(m):.1f}% ± {100 * r.sd(m):.1f}" for m in FOLD_METRICS]
        lines.append(f"| {r.name} | " + " | ".join(cells) + f" | {np.nanmean(r.seconds):.0f} |")
    if s.differences:
        lines += [
            "",
            "Paired differences from the first recipe (points; mean over the "
            f"{s.repeats * s.folds} folds, 95% corrected resampled t interval - Nadeau & Bengio - which "
            "accounts for the folds' overlapping training sets):",
            "",
            "| recipe - baseline | accuracy | verdict | balanced accuracy | verdict | macro-F1 | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for d in s.differences:
            cells = [c for m in FOLD_METRICS for c in (_pts(d.metrics[m]), d.metrics[m].verdict)]
            lines.append(f"| {d.name} - {d.baseline} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Per-class recall differences (points, same interval):",
            "",
            "| class | " + " | ".join(f"{d.name} - {d.baseline}" for d in s.differences) + " |",
            "|---|" + "---|" * len(s.differences),
        ]
        for name, slug in zip(s.class_names, s.class_slugs):
            cells = [
                "–" if d.recall[slug] is None else f"{_pts(d.recall[slug])} {d.recall[slug].verdict}"
                for d in s.differences
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary_figure(s: EvaluationSummary, *, title: str) -> Any:
    """Per metric: each recipe's fold differences from the baseline (dots) and the corrected interval (bar)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(FOLD_METRICS), 0.9 * max(2, len(s.differences)) + 1.8))
    for i, metric in enumerate(FOLD_METRICS):
        ax = fig.add_subplot(1, len(FOLD_METRICS), i + 1)
        base = s.recipes[0]
        for j, d in enumerate(s.differences):
            r = next(x for x in s.recipes if x.name == d.name)
            pts = 100 * (r.scores[metric] - base.scores[metric])
            ax.scatter(pts, np.full(len(pts), j) + np.linspace(-0.15, 0.15, len(pts)), s=10, color="#8a8f99")
            t = d.metrics[metric]
            color = "#1e7b34" if t.lo > 0 else "#b3261e" if t.hi < 0 else "#2e6f9e"
            ax.errorbar(
                100 * t.mean,
                j,
                xerr=[[100 * (t.mean - t.lo)], [100 * (t.hi - t.mean)]],
                fmt="o",
                color=color,
                capsize=4,
                lw=2,
            )
        ax.axvline(0, color="#555555", lw=1, ls="--")
        names = [d.name for d in s.differences] if i == 0 else [""] * len(s.differences)
        ax.set_yticks(range(len(s.differences)), names)
        ax.set_ylim(-0.6, len(s.differences) - 0.4)
        ax.set_xlabel(f"{metric.replace('_', ' ')}: minus {base.name} (points)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
