"""Best-model reports: the one place where the TEST split is scored.

``build_report(study_name, ...)`` reads a finished Optuna study and its MLflow runs, scores the
most-frequent-class baseline, the study's best CNN and (when ``galaxy10 ensemble`` was run for the
study) the ensemble comparison's winner ONCE on the test split, with paired bootstrap 95% confidence
intervals, logs those test metrics to MLflow (a "report test scoring" child run under the study's
parent run, plus ``test_*`` metrics on the CNN's and the ensemble's own runs), and writes a
self-contained HTML page (figures embedded as base64 PNG), a Markdown version and the PNGs into
``--out`` atomically; the same files are logged under ``report/`` on the study's parent run.

The pieces are small and mostly pure: :func:`bootstrap_ci` (numpy), :func:`data_card`,
:func:`render_html` / :func:`render_markdown` (Jinja2 / strings) and :func:`write_report_dir`
(atomic folder write). MLflow is reached only through :mod:`experiments.tracking` and Optuna only
through :mod:`experiments.tuning`.
"""
from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import logging
import os
import shlex
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from experiments.evaluation import absent_classes, metric_from_counts
from experiments.search_space import DEFAULT_STORAGE
from pipelines.classes import REFERENCE_ACCURACY, REFERENCE_RECALL
from pipelines.errors import ConfigError, DataError, ModelError
from pipelines.outputs import check_output_dir, output_dir

log = logging.getLogger(__name__)

#: Bootstrap resamples for the confidence intervals (default and most).
DEFAULT_RESAMPLES = 1000
MAX_RESAMPLES = 100_000
#: How the reference project's figures are labelled unless the data is the official file.
REFERENCE_NOTE = "reference, not the same data"
REFERENCE_NOTE_OFFICIAL = "reference: same official file, its own split"
#: Name of the MLflow child run that holds the report's test scores.
SCORING_RUN_NAME = "report test scoring"
#: Artifact folder of the report on the study's parent run.
ARTIFACT_DIR = "report"
#: Metric prefixes of the three scored models (``test_<key>_accuracy`` on the scoring run).
MODEL_KEYS: tuple[str, ...] = ("baseline", "cnn", "refit", "ensemble")
#: Registered-model name of a study's ensemble winner (``galaxy10 ensemble``): ``<study>-ensemble``.
ENSEMBLE_MODEL_SUFFIX = "-ensemble"
ENSEMBLE_ALIAS = "champion"
GALLERY_CLASSES = 3
GALLERY_PER_CLASS = 6

EPOCH_HISTORY_KEYS: dict[str, str] = {
    "epoch_train_loss": "loss", "epoch_val_loss": "val_loss", "epoch_train_accuracy": "accuracy",
    "epoch_val_accuracy": "val_accuracy", "epoch_val_balanced_accuracy": "val_balanced_accuracy",
}


# --------------------------------------------------------------------------------------------
# Pure pieces: bootstrap, atomic folder
# --------------------------------------------------------------------------------------------
def confusion_stack(y_true: np.ndarray, y_pred: np.ndarray, resamples: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion-count matrices ``(B, C, C)`` of ``B`` resamples (rows of index array ``resamples``)."""
    codes = (np.asarray(y_true, dtype=np.int64) * n_classes + np.asarray(y_pred, dtype=np.int64))[resamples]
    codes += (np.arange(len(resamples), dtype=np.int64) * n_classes * n_classes)[:, None]
    counts = np.bincount(codes.ravel(), minlength=len(resamples) * n_classes * n_classes)
    return counts.reshape(len(resamples), n_classes, n_classes)


def accuracy_macro_f1(counts: np.ndarray, present: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy and macro-F1 of confusion counts; macro-F1 averages over the classes in ``present``.

    ``present`` (boolean ``(C,)``) defaults to the classes with true images in ``counts``: the
    convention of :func:`experiments.evaluation.classification_metrics` (a bootstrap passes the classes
    present in the whole test split, so every resample averages over the same classes). Works on one
    ``(C, C)`` matrix or a stack ``(B, C, C)``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if present is None:
        present = counts.sum(axis=-1).reshape(-1, counts.shape[-1]).sum(axis=0) > 0
    present = np.asarray(present, dtype=bool)
    return metric_from_counts(counts, "accuracy", present), metric_from_counts(counts, "macro_f1", present)


#: Resamples drawn (and held in memory) at a time by :func:`bootstrap_ci`.
_BOOTSTRAP_CHUNK = 200


def bootstrap_ci(y_true: np.ndarray, predictions: Mapping[str, np.ndarray], n_classes: int, *,
                 n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                 level: float = 0.95) -> dict[str, dict[str, tuple[float, float]]]:
    """Percentile bootstrap intervals of accuracy and macro-F1 for each model's predicted labels.

    The same resampled test sets (seeded) are used for every model (paired bootstrap), so their
    intervals are comparable. Resamples are drawn :data:`_BOOTSTRAP_CHUNK` at a time, so memory
    does not grow with ``n_resamples`` (at most :data:`MAX_RESAMPLES`). Returns
    ``{model: {"accuracy": (lo, hi), "macro_f1": (lo, hi)}}``.
    """
    y = np.asarray(y_true, dtype=np.int64)
    if y.ndim != 1 or len(y) == 0:
        raise DataError("bootstrap needs a non-empty 1-D label array (the test split is empty)")
    check_resamples(n_resamples)
    if not 0 < level < 1:
        raise ConfigError(f"bootstrap needs 0 < level < 1, got {level}")
    preds = {}
    for name, pred in predictions.items():
        pred = np.asarray(pred, dtype=np.int64)
        if pred.shape != y.shape:
            raise DataError(f"model {name!r} predicted {pred.shape} labels for {y.shape} test images")
        preds[name] = pred
    present = np.bincount(y, minlength=n_classes)[:n_classes] > 0
    rng = np.random.default_rng(seed)
    acc: dict[str, list[np.ndarray]] = {name: [] for name in preds}
    f1: dict[str, list[np.ndarray]] = {name: [] for name in preds}
    for start in range(0, n_resamples, _BOOTSTRAP_CHUNK):
        chunk = rng.integers(0, len(y), size=(min(_BOOTSTRAP_CHUNK, n_resamples - start), len(y)))
        for name, pred in preds.items():
            a, f = accuracy_macro_f1(confusion_stack(y, pred, chunk, n_classes), present)
            acc[name].append(a)
            f1[name].append(f)
    tail = 100 * (1 - level) / 2
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for name in preds:
        acc_all, f1_all = np.concatenate(acc[name]), np.concatenate(f1[name])
        out[name] = {
            "accuracy": (float(np.percentile(acc_all, tail)), float(np.percentile(acc_all, 100 - tail))),
            "macro_f1": (float(np.percentile(f1_all, tail)), float(np.percentile(f1_all, 100 - tail))),
        }
    return out


def check_resamples(n_resamples: int) -> int:
    """``n_resamples`` if it lies in 1..:data:`MAX_RESAMPLES`, else one ``ConfigError`` line."""
    if not 1 <= n_resamples <= MAX_RESAMPLES:
        raise ConfigError(f"--bootstrap {n_resamples} is out of range; use 1-{MAX_RESAMPLES:,} resamples "
                          f"(e.g. --bootstrap {DEFAULT_RESAMPLES}; the intervals settle by a few thousand)")
    return n_resamples


# --------------------------------------------------------------------------------------------
# What the report holds
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataCard:
    """The data the numbers come from."""

    path: str
    provenance: str  # official | modified | synthetic
    fingerprint: str
    n_images: int
    image_size: int
    class_names: tuple[str, ...]
    class_slugs: tuple[str, ...]
    class_counts: tuple[int, ...]
    test_counts: tuple[int, ...]
    split_sizes: Mapping[str, int]
    split_seed: int
    max_images: int | None
    generator: str | None

    @property
    def synthetic(self) -> bool:
        """True for a synthetic file."""
        return self.provenance == "synthetic"


@dataclass
class ScoredModel:
    """One model scored on the test split."""

    key: str  # baseline | cnn | ensemble
    label: str
    description: str
    run_id: str | None
    model_uri: str | None
    y_pred: np.ndarray
    metrics: dict[str, Any]
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)

    def recalls(self, slugs: Sequence[str]) -> list[float | None]:
        """Per-class test recall in label order (None for a class absent from the test split)."""
        support = np.asarray(self.metrics["confusion_counts"]).sum(axis=1)
        return [float(self.metrics[f"recall_{s}"]) if support[k] > 0 else None for k, s in enumerate(slugs)]


@dataclass(frozen=True)
class EnsembleInfo:
    """The study's ensemble comparison (``galaxy10 ensemble``), or why there is none."""

    found: bool
    reason: str = ""
    comparison_run_id: str | None = None
    winner_name: str | None = None
    winner_run_id: str | None = None
    model_uri: str | None = None
    table_columns: tuple[str, ...] = ()
    table_rows: tuple[tuple[str, ...], ...] = ()
    table_artifact: str | None = None
    notes: tuple[str, ...] = ()
    mode: str | None = None


@dataclass
class Report:
    """Everything the page shows; figures are PNG bytes keyed by file name."""

    study_name: str
    storage_url: str
    tracking_uri: str
    parent_run_id: str
    experiment_name: str
    metric: str
    counts: Mapping[str, int]
    best_trial: int
    best_value: float
    best_params: Mapping[str, Any]
    best_run_id: str
    data: DataCard
    models: list[ScoredModel]
    ensemble: EnsembleInfo
    n_resamples: int
    seed: int
    scoring_run_id: str | None = None
    trials: list[tuple[int, str, float | None]] = field(default_factory=list)
    gallery_model: str | None = None
    gallery_classes: list[str] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)
    figure_notes: dict[str, str] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    created: str = ""
    git_commit: str = ""

    @property
    def reference_note(self) -> str:
        """How the reference column is labelled."""
        return REFERENCE_NOTE_OFFICIAL if self.data.provenance == "official" else REFERENCE_NOTE

    def model(self, key: str) -> ScoredModel | None:
        """The scored model with ``key`` (baseline, cnn, ensemble), if any."""
        return next((m for m in self.models if m.key == key), None)


# --------------------------------------------------------------------------------------------
# Reading the study and its runs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StudyFacts:
    """The study side of a report: where it lives, its best trial and its trials."""

    name: str
    storage_url: str
    metric: str
    direction_max: bool
    counts: Mapping[str, int]
    parent_run_id: str
    recorded_tracking_uri: str | None
    best_number: int
    best_value: float
    best_params: Mapping[str, Any]
    best_run_id: str
    best_model_uri: str
    trials: tuple[tuple[int, str, float | None], ...]
    refit_model_uri: str | None = None
    refit_run_id: str | None = None
    refit_of_trial: int | None = None


def study_facts(study_name: str, storage_url: str) -> StudyFacts:
    """Open the Optuna study read-only and collect what the report needs from it.

    Raises
    ------
    ConfigError
        Unknown study / storage, no COMPLETE trial, or a study without an MLflow parent run.
    ModelError
        The best trial logged no model.
    """
    from experiments import tuning

    storage = tuning.open_storage(storage_url, must_exist=True)
    study = tuning.load_existing_study(study_name, storage)
    counts = tuning.state_counts(study)
    best = tuning.best_trial(study)
    if best is None:
        states = ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items())) or "no trials"
        raise ConfigError(f"study {study_name!r} has no COMPLETE trial ({states}); finish one with "
                          f"`galaxy10 tune --study {study_name} ...` before asking for a report")
    attrs = study.user_attrs
    parent = attrs.get(tuning.ATTR_PARENT_RUN)
    if not parent:
        raise ConfigError(f"study {study_name!r} has no MLflow parent run recorded; it was not made by "
                          "`galaxy10 tune` (re-run galaxy10 tune on it)")
    run_id = best.user_attrs.get(tuning.ATTR_TRIAL_RUN)
    model_uri = best.user_attrs.get("model_uri")
    if not run_id or not model_uri:
        raise ModelError(f"best trial {best.number} of study {study_name!r} has no logged model; "
                         "re-run the study with `galaxy10 tune` so trials log their models")
    trials = []
    for t in study.get_trials(deepcopy=False):
        value = t.value
        if value is None and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
        trials.append((t.number, t.state.name, None if value is None else float(value)))
    return StudyFacts(
        name=study_name, storage_url=storage_url, metric=str(attrs.get(tuning.ATTR_METRIC, "accuracy")),
        direction_max=study.direction.name == "MAXIMIZE", counts=counts, parent_run_id=str(parent),
        recorded_tracking_uri=attrs.get(tuning.ATTR_TRACKING_URI), best_number=best.number,
        best_value=float(best.value), best_params=dict(best.params), best_run_id=str(run_id),
        best_model_uri=str(model_uri), trials=tuple(trials),
        refit_model_uri=attrs.get(tuning.ATTR_REFIT_MODEL), refit_run_id=attrs.get(tuning.ATTR_REFIT_RUN),
        refit_of_trial=attrs.get(tuning.ATTR_REFIT_TRIAL),
    )


def data_card(data: Any, max_images: int | None, split_seed: int) -> DataCard:
    """Describe a loaded ``experiments.training.TrainData`` (whole-file class counts, split sizes)."""
    from pipelines.reader import validate_galaxy10

    info = validate_galaxy10(data.path)
    n = data.num_classes
    generator = info.attrs.get("generator") if data.synthetic else None
    return DataCard(
        path=str(data.path), provenance=str(data.provenance), fingerprint=str(data.fingerprint),
        n_images=int(info.n_images), image_size=int(info.image_size), class_names=tuple(data.class_names),
        class_slugs=tuple(data.class_slugs), class_counts=tuple(int(c) for c in info.class_counts),
        test_counts=tuple(int(c) for c in np.bincount(data.labels[data.test], minlength=n)),
        split_sizes={"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        split_seed=int(split_seed), max_images=max_images, generator=None if generator is None else str(generator),
    )


def find_ensemble(study_name: str, tracking_uri: str) -> EnsembleInfo:
    """The study's newest finished ensemble comparison (``galaxy10 ensemble``): winner, model, table.

    Comparison runs are found by their tags (``ensemble.role=comparison``, ``optuna.study``); the
    winner's registered model is the parent's ``winner.registered_model`` tag. Without such a run the
    registry alias ``<study>-ensemble@champion`` is used, if it exists.
    """
    from experiments import tracking

    runs = [r for r in tracking.find_runs({"ensemble.role": "comparison", "optuna.study": study_name},
                                          tracking_uri=tracking_uri)
            if r.status == "FINISHED" and r.tags.get("winner.registered_model")]
    notes: list[str] = []
    mode = None
    if runs:
        comparison: str | None = runs[0].run_id
        mode = runs[0].tags.get("ensemble.mode")
        model_uri = runs[0].tags["winner.registered_model"]
        winner_run = runs[0].tags.get("winner.run_id") or None
        name, _, alias = model_uri.removeprefix("models:/").partition("@")
        version = tracking.registered_alias_version(name, alias, tracking_uri=tracking_uri) if alias else None
        if version is None:
            return EnsembleInfo(found=False, reason=(
                f"no ensemble comparison found for study {study_name!r}: the winner's registered model {model_uri} "
                f"of comparison run {comparison} is gone; re-run `galaxy10 ensemble --study {study_name} ...`"))
        if winner_run and version["run_id"] != winner_run:
            notes.append(f"{model_uri} now points at run {version['run_id']}, not the newest comparison's winner "
                         f"{winner_run}; the report scores the registered model")
            winner_run = version["run_id"]
    else:
        name, alias = f"{study_name}{ENSEMBLE_MODEL_SUFFIX}", ENSEMBLE_ALIAS
        model_uri = f"models:/{name}@{alias}"
        version = tracking.registered_alias_version(name, alias, tracking_uri=tracking_uri)
        if version is None:
            return EnsembleInfo(found=False, reason=(
                f"no ensemble comparison found for study {study_name!r} (no 'ensemble comparison' run and no "
                f"registered model {name}@{alias}); run `galaxy10 ensemble --study {study_name} "
                "--config experiments/configs/ensemble.yaml` to add one"))
        winner_run = version["run_id"] or None
        comparison = None
    winner = tracking.get_run_facts(winner_run, tracking_uri=tracking_uri) if winner_run else None
    if comparison is None and winner is not None:
        comparison = winner.tags.get("mlflow.parentRunId")
    columns: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    table_artifact = None
    if comparison:
        csvs = [p for p in tracking.list_run_artifacts(comparison, tracking_uri=tracking_uri) if p.endswith(".csv")]
        if csvs:
            table_artifact = sorted(csvs, key=lambda p: ("comparison" not in p, p))[0]
            with tempfile.TemporaryDirectory(prefix="galaxy10-report-") as tmp:
                local = tracking.download_run_artifact(comparison, table_artifact, tmp, tracking_uri=tracking_uri)
                parsed = list(csv.reader(io.StringIO(local.read_text())))
            if parsed:
                columns, rows = table_columns(parsed[0], [r for r in parsed[1:] if r])
    winner_name = None
    if winner is not None:
        winner_name = winner.tags.get("candidate") or winner.run_name or winner.run_id
    return EnsembleInfo(found=True, comparison_run_id=comparison, winner_name=winner_name, winner_run_id=winner_run,
                        model_uri=model_uri, table_columns=columns, table_rows=rows, table_artifact=table_artifact,
                        notes=tuple(notes), mode=mode)


def table_columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> tuple[tuple[str, ...],
                                                                                   tuple[tuple[str, ...], ...]]:
    """The comparison table without its per-class recall columns (the CSV artifact keeps them)."""
    keep = [i for i, c in enumerate(header) if not c.startswith("val_recall_") and c != "members"]
    return tuple(header[i] for i in keep), tuple(tuple(r[i] if i < len(r) else "" for i in keep) for r in rows)


# --------------------------------------------------------------------------------------------
# Scoring on the test split
# --------------------------------------------------------------------------------------------
def score_baseline_model(data: Any, cfg: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Test predictions of the most-frequent-class baseline (``pipelines.baseline``) and its summary."""
    from pipelines.baseline import baseline_metrics, score_baseline
    from pipelines.splits import ensure_split

    if cfg.data.max_images is None:
        split = ensure_split(data.path, test_fraction=cfg.data.test_fraction, val_fraction=cfg.data.val_fraction,
                             seed=cfg.data.split_seed)
        summary = score_baseline(data.path, split)
        if len(split.test) != len(data.test) or not np.array_equal(np.sort(split.test), np.sort(data.test)):
            raise DataError(f"the split of {data.path} changed since the study ran; re-run the study on this split")
    else:  # the study used the first max_images images: score the baseline on the same test images
        summary = baseline_metrics(data.labels[data.train], data.labels[data.test], tuple(data.class_names))
    y_pred = np.full(len(data.test), int(summary["majority_class"]), dtype=np.int64)
    return y_pred, summary


def score_logged_model(model_uri: str, data_path: Path, indices: np.ndarray) -> np.ndarray:
    """Test probabilities of a logged model (Keras CNN or pyfunc ensemble) from the raw file images,
    through the one :class:`experiments.predict.Predictor` that ``galaxy10 predict`` and the web page use."""
    from experiments import tracking
    from experiments.predict import predict_file_rows, predictor_from_loaded

    predictor = predictor_from_loaded(tracking.load_prediction_model(model_uri))
    probs = predict_file_rows(predictor, data_path, indices, desc="score on test")
    if probs.ndim != 2 or probs.shape[0] != len(indices):
        raise ModelError(f"model {model_uri} returned {probs.shape} for {len(indices)} images; "
                         "expected class probabilities (N, n_classes)")
    return probs


def _scored(key: str, label: str, description: str, run_id: str | None, model_uri: str | None,
            y_true: np.ndarray, probs: np.ndarray, slugs: Sequence[str]) -> ScoredModel:
    from experiments.evaluation import classification_metrics

    metrics = classification_metrics(y_true, probs, slugs)
    return ScoredModel(key, label, description, run_id, model_uri, np.asarray(probs).argmax(axis=1), metrics)


def log_test_scores(report: Report, *, experiment_name: str, tracking_uri: str) -> str:
    """Log every test number: a "report test scoring" child run, plus ``test_*`` on the models' runs."""
    from experiments import tracking
    from experiments.evaluation import prefixed

    tags = {"report.kind": "test_scoring", "optuna.study": report.study_name,
            "data.fingerprint": report.data.fingerprint, "data.provenance": report.data.provenance,
            "data.synthetic": str(report.data.synthetic).lower(), "data.path": report.data.path,
            "report.bootstrap": f"{report.n_resamples} resamples, seed {report.seed}, paired, percentile 95%",
            **{f"report.{m.key}.run_id": m.run_id or "" for m in report.models},
            **{f"report.{m.key}.model_uri": m.model_uri or "" for m in report.models},
            **tracking.git_commit()}
    with tracking.MlflowTracker(experiment_name, SCORING_RUN_NAME, tracking_uri=tracking_uri,
                                parent_run_id=report.parent_run_id, tags=tags) as run:
        metrics: dict[str, float] = {"test_n_images": float(report.data.split_sizes["test"])}
        for m in report.models:
            metrics.update(prefixed(m.metrics, f"test_{m.key}"))
            for name, (lo, hi) in m.ci.items():
                metrics[f"test_{m.key}_{name}_ci_low"] = lo
                metrics[f"test_{m.key}_{name}_ci_high"] = hi
        run.log_metrics(metrics)
        scoring_run = str(run.run_id)
    for m in report.models:
        if m.run_id and m.key != "baseline":
            tracking.log_metrics_to_run(m.run_id, {**prefixed(m.metrics, "test"),
                                                   **{f"test_{k}_ci_low": v[0] for k, v in m.ci.items()},
                                                   **{f"test_{k}_ci_high": v[1] for k, v in m.ci.items()}},
                                        tracking_uri=tracking_uri)
            tracking.set_run_tags(m.run_id, {"report.test_scoring_run": scoring_run}, tracking_uri=tracking_uri)
    return scoring_run


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
def make_figures(report: Report, *, data: Any, probs_by_key: Mapping[str, np.ndarray], tracking_uri: str,
                 workdir: Path) -> None:
    """Fill ``report.figures`` (PNG bytes) and ``report.figure_notes``."""
    from experiments import tracking
    from experiments.plots import confusion_figure, learning_curves_figure
    from experiments.report_figures import gallery_figure, history_figure, png_bytes, recall_bars_figure

    card = report.data
    names = list(card.class_names)
    series: dict[str, tuple[str, list[float | None]]] = {}
    for m in report.models:
        if m.key == "baseline":
            series["baseline"] = (m.label, m.recalls(card.class_slugs))
    if tuple(card.class_slugs) == tuple(REFERENCE_RECALL):
        series["reference"] = (f"reference project ({report.reference_note})",
                               [REFERENCE_RECALL[s] for s in card.class_slugs])
    for m in report.models:
        if m.key != "baseline":
            series[m.key] = (m.label, m.recalls(card.class_slugs))
    report.figures["recall_per_class.png"] = png_bytes(recall_bars_figure(names, series))

    for m in report.models:
        if m.key == "baseline":
            continue
        fig = confusion_figure(m.metrics["confusion"], names, title=f"{m.label}: test confusion (row-normalised)")
        report.figures[f"confusion_{m.key}.png"] = png_bytes(fig)

    history = tracking.metric_histories(report.best_run_id, list(EPOCH_HISTORY_KEYS), tracking_uri=tracking_uri)
    if history:
        curves = {EPOCH_HISTORY_KEYS[k]: [v for _, v in pts] for k, pts in history.items()}
        best_epoch = tracking.get_run_facts(report.best_run_id, tracking_uri=tracking_uri).metrics.get("best_epoch")
        fig = learning_curves_figure(curves, best_epoch=None if best_epoch is None else int(best_epoch))
        report.figures["learning_curves.png"] = png_bytes(fig)
    else:
        report.figure_notes["learning_curves.png"] = "the best trial's run has no per-epoch metrics"

    logged = set(tracking.list_run_artifacts(report.parent_run_id, "plots", tracking_uri=tracking_uri))
    for name in ("optimization_history", "param_importances"):
        artifact = f"plots/{name}.png"
        if artifact in logged:
            local = tracking.download_run_artifact(report.parent_run_id, artifact, workdir, tracking_uri=tracking_uri)
            report.figures[f"{name}.png"] = local.read_bytes()
        elif name == "optimization_history":
            numbers, states, values = zip(*[(n, s, v) for n, s, v in report.trials]) if report.trials else ((), (), ())
            fig = history_figure(numbers, values, states, metric=report.metric)
            report.figures["optimization_history.png"] = png_bytes(fig)
            report.figure_notes["optimization_history.png"] = ("redrawn from the study's trials (the parent run "
                                                               "has no plots/optimization_history.png)")
        else:
            report.figure_notes[f"{name}.png"] = _importance_note(report, tracking_uri)

    _gallery(report, data, probs_by_key, gallery_figure, png_bytes)


def _importance_note(report: Report, tracking_uri: str) -> str:
    from experiments import tracking

    notes = ""
    if "notes.txt" in tracking.list_run_artifacts(report.parent_run_id, tracking_uri=tracking_uri):
        with tempfile.TemporaryDirectory(prefix="galaxy10-report-") as tmp:
            local = tracking.download_run_artifact(report.parent_run_id, "notes.txt", tmp, tracking_uri=tracking_uri)
            notes = " ".join(line.strip() for line in local.read_text().splitlines() if "importances" in line)
    return notes or ("not available: parameter importances need at least 2 COMPLETE trials with varying "
                     "parameters (the tuning run logged none)")


def _gallery(report: Report, data: Any, probs_by_key: Mapping[str, np.ndarray], gallery_figure: Any,
             png_bytes: Any) -> None:
    """Misclassified test images of the final model's weakest classes (lowest test recall)."""
    from pipelines.reader import Galaxy10File

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
            titles.append(f"true: {_short(names[k])}\npred: {_short(names[pred])} ({probs[pos, pred]:.2f})")
            rows.append(row)
    with Galaxy10File(data.path) as f:
        images = list(f.images(np.asarray(picks, dtype=np.int64)))
    row_labels = [f"{names[k]}\nrecall {recalls[k]:.2f}" for k in weakest]
    columns = max(rows.count(r) for r in set(rows))
    fig = gallery_figure(images, titles, columns=columns, rows=rows, row_labels=row_labels)
    report.figures["misclassified.png"] = png_bytes(fig)


def _short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else name[:limit - 1] + "…"


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def _ci(ci: tuple[float, float] | None) -> str:
    return "–" if not ci else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def summary_rows(report: Report) -> list[dict[str, str]]:
    """One row per scored model (and the reference): accuracy and macro-F1 with 95% CIs, run ids."""
    rows = []
    for m in report.models:
        rows.append({
            "model": m.label, "description": m.description,
            "accuracy": _pct(m.metrics["accuracy"]), "accuracy_ci": _ci(m.ci.get("accuracy")),
            "balanced_accuracy": _pct(m.metrics["balanced_accuracy"]),
            "macro_f1": _pct(m.metrics["macro_f1"]), "macro_f1_ci": _ci(m.ci.get("macro_f1")),
            "run_id": m.run_id or (report.scoring_run_id or "") , "reference": "",
        })
    rows.append({"model": "Reference project (published)", "description": report.reference_note,
                 "accuracy": _pct(REFERENCE_ACCURACY), "accuracy_ci": "–", "balanced_accuracy": "–",
                 "macro_f1": "–", "macro_f1_ci": "–", "run_id": "", "reference": report.reference_note})
    return rows


def class_rows(report: Report) -> list[dict[str, str]]:
    """Per-class recall: test support, each model and the reference (marked as such)."""
    card = report.data
    out = []
    recalls = {m.key: m.recalls(card.class_slugs) for m in report.models}
    for k, (name, slug) in enumerate(zip(card.class_names, card.class_slugs)):
        row = {"class": name, "count": str(card.class_counts[k]), "support": str(card.test_counts[k]),
               "reference": f"{REFERENCE_RECALL[slug]:.2f}" if slug in REFERENCE_RECALL else "–"}
        for key in MODEL_KEYS:
            values = recalls.get(key)
            row[key] = "–" if values is None or values[k] is None else f"{values[k]:.2f}"
        out.append(row)
    return out


def run_id_rows(report: Report) -> list[tuple[str, str]]:
    """(what, run id) pairs: every MLflow run behind a number on the page."""
    rows = [("Study parent run (tuning; report artifacts under report/)", report.parent_run_id),
            (f"Best trial {report.best_trial} (best CNN, learning curves, test_* metrics)", report.best_run_id)]
    if report.scoring_run_id:
        rows.append((f"'{SCORING_RUN_NAME}' (every test number on this page)", report.scoring_run_id))
    if report.ensemble.found:
        if report.ensemble.comparison_run_id:
            rows.append(("Ensemble comparison parent run", report.ensemble.comparison_run_id))
        if report.ensemble.winner_run_id:
            rows.append((f"Ensemble winner {report.ensemble.winner_name} (test_* metrics)",
                         report.ensemble.winner_run_id))
    return rows


def _context(report: Report, embed: bool) -> dict[str, Any]:
    figures = {name: (f"data:image/png;base64,{base64.b64encode(data).decode('ascii')}" if embed else name)
               for name, data in report.figures.items()}
    card = report.data
    return {
        "r": report, "card": card, "figures": figures, "notes": report.figure_notes,
        "summary": summary_rows(report), "classes": class_rows(report), "run_ids": run_id_rows(report),
        "has_ensemble": report.model("ensemble") is not None, "reference_note": report.reference_note,
        "counts": ", ".join(f"{v} {k.lower()}" for k, v in sorted(report.counts.items())),
        "split": ", ".join(f"{k} {v}" for k, v in card.split_sizes.items()),
        "class_counts": list(zip(card.class_names, card.class_counts, card.test_counts)),
        "pct": _pct,
    }


def render_html(report: Report) -> str:
    """The self-contained HTML page (figures inlined as base64 PNG, no external resources)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2").render(**_context(report, embed=True))


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(text: Any) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: Report) -> str:
    """The Markdown version (figures referenced as the PNG files beside it)."""
    card = report.data
    out: list[str] = []
    if card.synthetic:
        out += ["# ⚠ SYNTHETIC DATA — these numbers say nothing about real galaxies", ""]
    out += [f"# Galaxy10 best-model report: study `{report.study_name}`", "",
            f"Generated {report.created} (git {report.git_commit or 'unknown'}). Every test number below was "
            f"scored once by this report and logged to MLflow run `{report.scoring_run_id}`.", ""]
    out += ["## Data card", "",
            _md_table(["", ""], [
                ("Source file", f"`{card.path}`"), ("Provenance", card.provenance.upper()),
                ("Fingerprint (SHA-256)", f"`{card.fingerprint}`"),
                ("Images", f"{card.n_images} at {card.image_size} px" +
                 (f" (study used the first {card.max_images})" if card.max_images else "")),
                ("Split (seed {})".format(card.split_seed), ", ".join(f"{k} {v}" for k, v in card.split_sizes.items())),
            ] + ([("Generator", card.generator)] if card.generator else [])), "",
            _md_table(["Class", "Images in file", "Test images"],
                      [(n, str(c), str(t)) for n, c, t in zip(card.class_names, card.class_counts, card.test_counts)]),
            ""]
    out += ["## Test-split results", "",
            f"Accuracy and macro-F1 with bootstrap 95% confidence intervals ({report.n_resamples} paired resamples "
            f"of the {card.split_sizes['test']} test images, seed {report.seed}). The reference project's figures are "
            f"its published test numbers ({report.reference_note}).", ""]
    out.append(_md_table(["Model", "What", "Accuracy", "95% CI", "Balanced acc.", "Macro-F1", "95% CI", "MLflow run"],
                         [(r["model"], r["description"], r["accuracy"], r["accuracy_ci"], r["balanced_accuracy"],
                           r["macro_f1"], r["macro_f1_ci"], f"`{r['run_id']}`" if r["run_id"] else "")
                          for r in summary_rows(report)]))
    if not report.ensemble.found:
        out += ["", f"**{report.ensemble.reason}**"]
    out += ["", "### Per-class recall", "",
            _md_table(["Class", "Test images", "Baseline", f"Reference ({report.reference_note})", "Best CNN",
                       "Best ensemble"],
                      [(r["class"], r["support"], r["baseline"], r["reference"], r["cnn"], r["ensemble"])
                       for r in class_rows(report)]), ""]
    out += _md_figure(report, "recall_per_class.png", "Per-class recall")
    for m in report.models:
        if m.key != "baseline":
            out += _md_figure(report, f"confusion_{m.key}.png", f"{m.label}: test confusion matrix")
    out += ["## Best trial and study", "",
            f"Study `{report.study_name}` ({', '.join(f'{v} {k.lower()}' for k, v in sorted(report.counts.items()))}); "
            f"best trial {report.best_trial}: val {report.metric} = {report.best_value:.4f}.", "",
            _md_table(["Parameter", "Value"], [(k, str(v)) for k, v in report.best_params.items()]), ""]
    out += _md_figure(report, "learning_curves.png", "Learning curves of the best trial")
    out += _md_figure(report, "optimization_history.png", "Optuna optimisation history")
    out += _md_figure(report, "param_importances.png", "Optuna parameter importances")
    out += ["## Ensemble comparison", ""]
    if report.ensemble.found:
        out.append(f"Winner: **{report.ensemble.winner_name}** (`{report.ensemble.model_uri}`); validation-split "
                   f"numbers from the comparison run `{report.ensemble.comparison_run_id}`.")
        out.append("")
        if report.ensemble.table_rows:
            out.append(_md_table(report.ensemble.table_columns, report.ensemble.table_rows))
        else:
            out.append("The comparison run has no CSV table artifact.")
    else:
        out.append(f"**{report.ensemble.reason}**")
    out += ["", "## Misclassified test images", ""]
    if report.gallery_classes:
        out.append(f"Weakest classes of the {report.gallery_model}: {', '.join(report.gallery_classes)}.")
        out.append("")
    out += _md_figure(report, "misclassified.png", "Misclassified test images")
    out += ["## MLflow runs behind the numbers", "", _md_table(["What", "Run id"], [(w, f"`{r}`") for w, r in
                                                                                run_id_rows(report)]), "",
            f"Tracking URI: `{report.tracking_uri}`; Optuna storage: `{report.storage_url}`.", "",
            "## Reproduce", "", "```sh", *report.commands, "```", ""]
    if report.notes:
        out += ["## Notes", "", *[f"- {n}" for n in report.notes], ""]
    return "\n".join(out)


def _md_figure(report: Report, name: str, title: str) -> list[str]:
    if name in report.figures:
        return [f"![{title}]({name})", ""]
    note = report.figure_notes.get(name)
    return [f"*{title}: {note}*", ""] if note else []


def write_report_dir(report: Report, out: str | os.PathLike, *, force: bool = False) -> Path:
    """Write ``report.html``, ``report.md``, the PNGs and ``report.json`` into ``out`` atomically.

    ``out`` follows :func:`pipelines.outputs.output_dir`: a new folder or a previous report is replaced,
    any other non-empty folder is refused unless ``force`` (then the report's files are added to it).
    """
    import json

    from experiments.evaluation import scalar_metrics

    html = render_html(report)
    markdown = render_markdown(report)
    numbers = {
        "study": report.study_name, "scoring_run_id": report.scoring_run_id, "parent_run_id": report.parent_run_id,
        "data": {"path": report.data.path, "provenance": report.data.provenance,
                 "fingerprint": report.data.fingerprint, "split_sizes": dict(report.data.split_sizes)},
        "bootstrap": {"resamples": report.n_resamples, "seed": report.seed, "level": 0.95},
        "models": {m.key: {"label": m.label, "run_id": m.run_id, "model_uri": m.model_uri,
                           "test": scalar_metrics(m.metrics), "ci95": {k: list(v) for k, v in m.ci.items()}}
                   for m in report.models},
        "reference": {"accuracy": REFERENCE_ACCURACY, "recall": REFERENCE_RECALL, "note": report.reference_note},
        "ensemble": {"found": report.ensemble.found, "reason": report.ensemble.reason,
                     "winner": report.ensemble.winner_name, "model_uri": report.ensemble.model_uri},
        "commands": report.commands,
    }
    with output_dir(out, what="report", force=force) as tmp:
        (tmp / "report.html").write_text(html, encoding="utf-8")
        (tmp / "report.md").write_text(markdown, encoding="utf-8")
        (tmp / "report.json").write_text(json.dumps(numbers, indent=2) + "\n", encoding="utf-8")
        for name, data in report.figures.items():
            (tmp / name).write_bytes(data)
    return Path(out)


# --------------------------------------------------------------------------------------------
# The whole report
# --------------------------------------------------------------------------------------------
def reproduce_commands(study: StudyFacts, *, tracking_uri: str, data_path: str, out: str,
                       parent_tags: Mapping[str, str], tune_config: str | None, ensemble: EnsembleInfo) -> list[str]:
    """Shell lines that rebuild the study, the ensemble comparison and this report (with comments)."""
    q = shlex.quote
    common = f"--storage {q(study.storage_url)} --tracking-uri {q(tracking_uri)}"
    trials = parent_tags.get("study.n_trials")
    cmds = [f"# the study's tuning YAML is logged as tune_config/ on run {study.parent_run_id}",
            f"galaxy10 tune --config {q(tune_config or 'TUNE_CONFIG.yaml')} --study {q(study.name)} {common} "
            f"--data {q(data_path)}" + (f" --trials {trials}" if trials else "")]
    if ensemble.found:
        if ensemble.comparison_run_id:
            cmds.append(f"# the comparison's config is logged as ensemble_config.yaml on run {ensemble.comparison_run_id}")
        mode = f" --set mode={q(ensemble.mode)}" if ensemble.mode else ""
        cmds.append(f"galaxy10 ensemble --study {q(study.name)} --config experiments/configs/ensemble.yaml{mode} "
                    f"{common}")
    cmds.append(f"galaxy10 report --study {q(study.name)} --out {q(out)} {common}")
    return cmds


def _tune_config_path(parent_run_id: str, tracking_uri: str) -> str | None:
    from experiments import tracking

    logged = tracking.list_run_artifacts(parent_run_id, "tune_config", tracking_uri=tracking_uri)
    if not logged:
        return None
    name = Path(logged[0]).name
    shipped = Path(__file__).parent / "configs" / name
    return f"experiments/configs/{name}" if shipped.is_file() else name


def build_report(study_name: str, *, out: str | os.PathLike | None = None, storage_url: str = DEFAULT_STORAGE,
                 tracking_uri: str | None = None, data_path: str | os.PathLike | None = None,
                 n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0, log_artifacts: bool = True,
                 force: bool = False) -> Report:
    """Score the study's models on the test split, log the numbers, write the report into ``out``.

    Parameters
    ----------
    study_name
        An Optuna study made by ``galaxy10 tune``.
    out
        Output folder (default ``reports/<study>``): new, empty or a previous report (replaced atomically);
        any other folder is refused before any work unless ``force``.
    data_path
        Where the data file is now, if it moved since the study ran (its fingerprint must match).
    log_artifacts
        Also log the report files under ``report/`` on the study's parent run.
    """
    from experiments import tracking
    from experiments.training import load_training_data

    out = Path(out) if out is not None else Path("reports") / study_name
    check_output_dir(out, what="report", force=force)
    uri = tracking.require_tracking_store(tracking_uri)
    study = study_facts(study_name, storage_url)
    try:
        parent = tracking.get_run_facts(study.parent_run_id, tracking_uri=uri)
    except ModelError:
        hint = f" (the study logged to {study.recorded_tracking_uri})" if study.recorded_tracking_uri else ""
        raise ConfigError(f"the study's MLflow parent run {study.parent_run_id} is not at {uri}{hint}; "
                          "pass --tracking-uri of the store the study logged to") from None
    best_run = tracking.get_run_facts(study.best_run_id, tracking_uri=uri)

    with tempfile.TemporaryDirectory(prefix="galaxy10-report-") as tmp:
        workdir = Path(tmp)
        cfg = tracking.logged_run_config(study.best_run_id, tracking_uri=uri)
        path = Path(data_path) if data_path is not None else Path(best_run.tags.get("data.path") or "")
        if not str(path) or not path.is_file():
            raise DataError(f"the study's data file {str(path) or '(not recorded)'} is missing; pass --data FILE "
                            "pointing at the file the study was trained on")
        data = load_training_data(cfg.data, path)
        recorded = best_run.tags.get("data.fingerprint")
        if recorded and recorded != data.fingerprint:
            raise DataError(f"{path} has fingerprint {data.fingerprint[:12]} but the study was trained on "
                            f"{recorded[:12]}; pass --data with the original file")
        if len(data.test) == 0:
            raise DataError(f"the test split of {path} is empty; nothing to score")
        card = data_card(data, cfg.data.max_images, cfg.data.split_seed)
        if card.synthetic:
            log.warning("report on SYNTHETIC data (%s): the numbers say nothing about real galaxies", path)
        y_true = data.labels[data.test]
        slugs = data.class_slugs
        n_classes = data.num_classes

        base_pred, base_summary = score_baseline_model(data, cfg)
        majority = base_summary["majority_class_name"]
        models = [_scored("baseline", "Baseline (most frequent class)", f"always predicts {majority}", None, None,
                          y_true, np.eye(n_classes)[base_pred], slugs)]
        probs_by_key: dict[str, np.ndarray] = {}
        log.info("scoring the best CNN (trial %d, %s) on %d test images", study.best_number, study.best_model_uri,
                 len(data.test))
        probs_by_key["cnn"] = score_logged_model(study.best_model_uri, data.path, data.test)
        models.append(_scored("cnn", "Best CNN", f"study best trial {study.best_number} "
                              f"(val {study.metric} {study.best_value:.4f})", study.best_run_id,
                              study.best_model_uri, y_true, probs_by_key["cnn"], slugs))
        if study.refit_model_uri and study.refit_of_trial == study.best_number:
            log.info("scoring the refit of trial %d (%s) on the test split", study.best_number, study.refit_model_uri)
            probs_by_key["refit"] = score_logged_model(study.refit_model_uri, data.path, data.test)
            models.append(_scored("refit", "Refit CNN (train + validation)",
                                  f"trial {study.best_number}'s configuration retrained on train + validation",
                                  study.refit_run_id, study.refit_model_uri, y_true, probs_by_key["refit"], slugs))
        ensemble = find_ensemble(study_name, uri)
        if ensemble.found and ensemble.model_uri:
            log.info("scoring the ensemble winner %s (%s) on the test split", ensemble.winner_name, ensemble.model_uri)
            probs_by_key["ensemble"] = score_logged_model(ensemble.model_uri, data.path, data.test)
            models.append(_scored("ensemble", "Best ensemble", f"comparison winner {ensemble.winner_name}",
                                  ensemble.winner_run_id, ensemble.model_uri, y_true, probs_by_key["ensemble"], slugs))
        else:
            log.info("%s", ensemble.reason)

        cis = bootstrap_ci(y_true, {m.key: m.y_pred for m in models}, n_classes, n_resamples=n_resamples, seed=seed)
        for m in models:
            m.ci = cis[m.key]
        commit = tracking.git_commit()
        report = Report(
            study_name=study_name, storage_url=storage_url, tracking_uri=uri, parent_run_id=study.parent_run_id,
            experiment_name=parent.experiment_name, metric=study.metric, counts=study.counts,
            best_trial=study.best_number, best_value=study.best_value, best_params=study.best_params,
            best_run_id=study.best_run_id, data=card, models=models, ensemble=ensemble, n_resamples=n_resamples,
            seed=seed, trials=list(study.trials),
            created=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            git_commit=commit.get("git.commit", "")[:12] + (" (dirty)" if commit.get("git.dirty") == "true" else ""),
        )
        report.scoring_run_id = log_test_scores(report, experiment_name=parent.experiment_name, tracking_uri=uri)
        report.commands = reproduce_commands(study, tracking_uri=uri, data_path=str(path), out=str(out),
                                             parent_tags=parent.tags,
                                             tune_config=_tune_config_path(study.parent_run_id, uri),
                                             ensemble=ensemble)
        report.notes.extend(ensemble.notes)
        absent = absent_classes(y_true, slugs)
        if absent:
            report.notes.append(f"the test split has no image of {', '.join(absent)}: macro metrics average over the "
                                f"{n_classes - len(absent)} classes present")
        if cfg.data.max_images:
            report.notes.append(f"the study used only the first {cfg.data.max_images} images of the file "
                                f"(data.max_images); all {len(models)} models are scored on the same test images")
        make_figures(report, data=data, probs_by_key=probs_by_key, tracking_uri=uri, workdir=workdir)
        write_report_dir(report, out, force=force)
    if log_artifacts:
        tracking.log_artifacts_to_run(study.parent_run_id, out, ARTIFACT_DIR, tracking_uri=uri)
        tracking.set_run_tags(study.parent_run_id, {"report.test_scoring_run": report.scoring_run_id},
                              tracking_uri=uri)
    log.info("report written to %s (test scoring run %s)", out, report.scoring_run_id)
    return report
