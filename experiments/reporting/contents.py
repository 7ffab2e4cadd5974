"""What a report holds: the data card, scored models, the ensemble and the report itself."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from experiments.training.evaluation import cv_spread
from pipelines.classes import REFERENCE_RECALL

#: How the reference project's figures are labelled unless the data is the official file.
REFERENCE_NOTE = "reference, not the same data"
REFERENCE_NOTE_OFFICIAL = "reference: same official file, its own split"


@dataclass(frozen=True)
class DataCard:
    """The data the numbers come from."""

    path: str
    provenance: str  # official | modified | imported | synthetic
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
    source_folder: str | None = None  # imported: the image folder and labels file it came from
    labels_csv: str | None = None

    @property
    def synthetic(self) -> bool:
        """True for a synthetic file."""
        return self.provenance == "synthetic"

    @property
    def galaxy10_classes(self) -> bool:
        """Whether the class set is Galaxy10's ten: only then do the reference project's numbers apply."""
        return tuple(self.class_slugs) == tuple(REFERENCE_RECALL)

    @property
    def provenance_text(self) -> str:
        """What the provenance tag means, in words."""
        if self.provenance == "official":
            return "the Zenodo Galaxy10 DECaLS release (SHA-256 verified)"
        if self.provenance == "imported":
            return (
                f"imported by `galaxy10 data import` from {self.source_folder or '?'} "
                f"(labels: {self.labels_csv or '?'})"
            )
        if self.provenance == "synthetic":
            return "rendered, not observed"
        return "Galaxy10 schema, not the official release (SHA-256 differs)"


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
class PairedRow:
    """One model against another on the same test images (keys of :class:`ScoredModel`)."""

    a_key: str
    b_key: str
    comparison: Any  # experiments.paired.PairedComparison


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
    best_cv_scores: tuple[float, ...] = ()
    pruned_cuts: tuple[str, ...] = ()
    calibration: dict[str, Any] = field(default_factory=dict)  # the best CNN's temperature, ECE before/after
    pareto: tuple[Any, ...] = ()  # trials' (metric, inference images/s), Pareto front marked
    paired: list[PairedRow] = field(default_factory=list)  # models against the reference trial and the best CNN
    pools: list[dict[str, Any]] = field(default_factory=list)  # unlabelled pools behind pretrained start points
    gallery_model: str | None = None
    gallery_classes: list[str] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)
    figure_notes: dict[str, str] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    created: str = ""
    git_commit: str = ""

    @property
    def best_value_text(self) -> str:
        """``val accuracy = 0.8120`` or, for a cross-validated study, the mean with its spread over the folds."""
        spread = cv_spread(list(self.best_cv_scores))
        if spread:
            return f"{self.metric} cross-validated on the train split = {spread} (mean ± SD (folds))"
        return f"val {self.metric} = {self.best_value:.4f}"

    @property
    def reference_note(self) -> str:
        """How the reference column is labelled ("" where the class set is not Galaxy10's: no reference)."""
        if not self.data.galaxy10_classes:
            return ""
        return REFERENCE_NOTE_OFFICIAL if self.data.provenance == "official" else REFERENCE_NOTE

    def model(self, key: str) -> ScoredModel | None:
        """The scored model with ``key`` (baseline, cnn, ensemble), if any."""
        return next((m for m in self.models if m.key == key), None)
