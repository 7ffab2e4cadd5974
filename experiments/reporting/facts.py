"""Reading what a report is about: the study, its best trial, its data and its ensemble."""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import ConfigError, ModelError
from experiments.reporting.contents import DataCard, EnsembleInfo
from experiments.settings.tune import ATTR_INIT_FROM, ATTR_REFERENCE
from experiments.tracking.runs import download_run_artifact, find_runs, get_run_facts, list_run_artifacts
from experiments.tracking.workspace import ResolvedModel, Workspace
from experiments.tuning.pruning import describe_cuts
from experiments.tuning.refit import ATTR_REFIT_MODEL, ATTR_REFIT_RUN, ATTR_REFIT_TRIAL
from experiments.tuning.storage import open_storage
from experiments.tuning.study import (
    ATTR_METRIC,
    ATTR_PARENT_RUN,
    ATTR_TRACKING_URI,
    ATTR_TRIAL_RUN,
    best_trial,
    load_existing_study,
    maximizes,
    pareto_front,
    state_counts,
    trial_value,
)
from pipelines.dataset import TrainData
from pipelines.reader import validate_galaxy10

#: Registered-model name of a study's ensemble winner (``galaxy10 ensemble``): ``<study>-ensemble``.
ENSEMBLE_MODEL_SUFFIX = "-ensemble"
ENSEMBLE_ALIAS = "champion"


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
    best_cv_scores: tuple[float, ...] = ()
    pruned_cuts: tuple[str, ...] = ()  # where each PRUNED trial was cut and against what
    pareto: tuple[Any, ...] = ()  # tuning.study.ParetoPoint of every COMPLETE trial that measured its speed
    reference_number: int | None = None  # the study's reference trial (reference.yaml as shipped), if it has a model
    reference_run_id: str | None = None
    reference_model_uri: str | None = None
    pretrained: tuple[tuple[int, str], ...] = ()  # (trial, model) of trials fine-tuned from a pretrained model


def study_facts(study_name: str, ws: Workspace) -> StudyFacts:
    """Open the Optuna study read-only and collect what the report needs from it.

    Raises
    ------
    ConfigError
        Unknown study / storage, no COMPLETE trial, or a study without an MLflow parent run.
    ModelError
        The best trial logged no model.
    """

    storage = open_storage(ws.storage_url, must_exist=True)
    study = load_existing_study(study_name, storage)
    counts = state_counts(study)
    best = best_trial(study)
    if best is None:
        states = ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items())) or "no trials"
        raise ConfigError(
            f"study {study_name!r} has no COMPLETE trial ({states}); finish one with "
            f"`galaxy10 tune --study {study_name} ...` before asking for a report"
        )
    attrs = study.user_attrs
    parent = attrs.get(ATTR_PARENT_RUN)
    if not parent:
        raise ConfigError(
            f"study {study_name!r} has no MLflow parent run recorded; it was not made by "
            "`galaxy10 tune` (re-run galaxy10 tune on it)"
        )
    run_id = best.user_attrs.get(ATTR_TRIAL_RUN)
    model_uri = best.user_attrs.get("model_uri")
    if not run_id or not model_uri:
        raise ModelError(
            f"best trial {best.number} of study {study_name!r} has no logged model; "
            "re-run the study with `galaxy10 tune` so trials log their models"
        )
    reference = next(
        (
            t
            for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get(ATTR_REFERENCE)
            and t.state.name == "COMPLETE"
            and t.user_attrs.get("model_uri")
            and t.user_attrs.get(ATTR_TRIAL_RUN)
        ),
        None,
    )
    trials = []
    for t in study.get_trials(deepcopy=False):
        value = trial_value(t)
        if value is None and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
        trials.append((t.number, t.state.name, None if value is None else float(value)))
    return StudyFacts(
        name=study_name,
        storage_url=ws.storage_url,
        metric=str(attrs.get(ATTR_METRIC, "accuracy")),
        direction_max=maximizes(study),
        counts=counts,
        parent_run_id=str(parent),
        recorded_tracking_uri=attrs.get(ATTR_TRACKING_URI),
        best_number=best.number,
        best_value=float(trial_value(best)),
        best_run_id=str(run_id),
        best_params=(
            {"recipe": "experiments/configs/reference.yaml as shipped (the study's reference trial)"}
            if best.user_attrs.get(ATTR_REFERENCE)
            else dict(best.params)
        ),
        best_model_uri=str(model_uri),
        trials=tuple(trials),
        refit_model_uri=attrs.get(ATTR_REFIT_MODEL),
        refit_run_id=attrs.get(ATTR_REFIT_RUN),
        refit_of_trial=attrs.get(ATTR_REFIT_TRIAL),
        best_cv_scores=tuple(float(v) for v in best.user_attrs.get("cv_scores") or ()),
        pruned_cuts=tuple(describe_cuts(study.get_trials(deepcopy=False))),
        pareto=tuple(pareto_front(study.get_trials(deepcopy=False))),
        reference_number=None if reference is None else reference.number,
        reference_run_id=None if reference is None else str(reference.user_attrs[ATTR_TRIAL_RUN]),
        reference_model_uri=None if reference is None else str(reference.user_attrs["model_uri"]),
        pretrained=tuple(
            (t.number, str(t.user_attrs[ATTR_INIT_FROM]))
            for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get(ATTR_INIT_FROM)
        ),
    )


def _registered(ws: Workspace, uri: str) -> ResolvedModel | None:
    """The registry's answer for ``models:/NAME@alias`` (asked once per workspace), None if there is none."""
    try:
        return ws.resolve(uri)
    except ModelError:
        return None


def pretraining_pools(study: StudyFacts, ws: Workspace) -> list[dict[str, Any]]:
    """The unlabelled pools behind the study's pretrained start points: the pretraining run's tags (sources,
    image count, fingerprint), one entry per trial fine-tuned from a registered pretrained model."""
    out = []
    for number, ref in study.pretrained:
        version = _registered(ws, ref) if "@" in ref else None
        tags = get_run_facts(version.run_id, ws=ws).tags if version and version.run_id else {}
        out.append(
            {
                "trial": number,
                "model": ref,
                "run_id": version.run_id if version else None,
                "sources": tags.get("pool.sources", "unknown"),
                "images": tags.get("pool.images", "unknown"),
                "fingerprint": tags.get("pool.fingerprint", "unknown"),
            }
        )
    return out


def data_card(data: TrainData, max_images: int | None, split_seed: int) -> DataCard:
    """Describe a loaded ``experiments.training.TrainData`` (whole-file class counts, split sizes)."""

    info = validate_galaxy10(data.path)
    n = data.num_classes
    generator = info.attrs.get("generator") if data.synthetic else None
    return DataCard(
        path=str(data.path),
        provenance=str(data.provenance),
        fingerprint=str(data.fingerprint),
        n_images=int(info.n_images),
        image_size=int(info.image_size),
        class_names=tuple(data.class_names),
        class_slugs=tuple(data.class_slugs),
        class_counts=tuple(int(c) for c in info.class_counts),
        test_counts=tuple(int(c) for c in np.bincount(data.labels[data.test], minlength=n)),
        split_sizes={"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        split_seed=int(split_seed),
        max_images=max_images,
        generator=None if generator is None else str(generator),
        source_folder=info.attrs.get("source_folder") if data.provenance == "imported" else None,
        labels_csv=info.attrs.get("labels_csv") if data.provenance == "imported" else None,
    )


def find_ensemble(study_name: str, ws: Workspace) -> EnsembleInfo:
    """The study's newest finished ensemble comparison (``galaxy10 ensemble``): winner, model, table.

    Comparison runs are found by their tags (``ensemble.role=comparison``, ``optuna.study``); the
    winner's registered model is the parent's ``winner.registered_model`` tag. Without such a run the
    registry alias ``<study>-ensemble@champion`` is used, if it exists.
    """

    runs = [
        r
        for r in find_runs({"ensemble.role": "comparison", "optuna.study": study_name}, ws=ws)
        if r.status == "FINISHED" and r.tags.get("winner.registered_model")
    ]
    notes: list[str] = []
    mode = None
    if runs:
        comparison: str | None = runs[0].run_id
        mode = runs[0].tags.get("ensemble.mode")
        model_uri = runs[0].tags["winner.registered_model"]
        winner_run = runs[0].tags.get("winner.run_id") or None
        version = _registered(ws, model_uri) if "@" in model_uri else None
        if version is None:
            return EnsembleInfo(
                found=False,
                reason=(
                    f"no ensemble comparison found for study {study_name!r}: the winner's registered model {model_uri} "
                    f"of comparison run {comparison} is gone; re-run `galaxy10 ensemble --study {study_name} ...`"
                ),
            )
        if winner_run and version.run_id != winner_run:
            notes.append(
                f"{model_uri} now points at run {version.run_id}, not the newest comparison's winner "
                f"{winner_run}; the report scores the registered model"
            )
            winner_run = version.run_id
    else:
        name, alias = f"{study_name}{ENSEMBLE_MODEL_SUFFIX}", ENSEMBLE_ALIAS
        model_uri = f"models:/{name}@{alias}"
        version = _registered(ws, model_uri)
        if version is None:
            return EnsembleInfo(
                found=False,
                reason=(
                    f"no ensemble comparison found for study {study_name!r} (no 'ensemble comparison' run and no "
                    f"registered model {name}@{alias}); run `galaxy10 ensemble --study {study_name} "
                    "--config experiments/configs/ensemble.yaml` to add one"
                ),
            )
        winner_run = version.run_id or None
        comparison = None
    winner = get_run_facts(winner_run, ws=ws) if winner_run else None
    if comparison is None and winner is not None:
        comparison = winner.tags.get("mlflow.parentRunId")
    columns: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    table_artifact = None
    if comparison:
        csvs = [p for p in list_run_artifacts(comparison, ws=ws) if p.endswith(".csv")]
        if csvs:
            table_artifact = sorted(csvs, key=lambda p: ("comparison" not in p, p))[0]
            with tempfile.TemporaryDirectory(prefix="galaxy10-report-") as tmp:
                local = download_run_artifact(comparison, table_artifact, tmp, ws=ws)
                parsed = list(csv.reader(io.StringIO(local.read_text())))
            if parsed:
                columns, rows = table_columns(parsed[0], [r for r in parsed[1:] if r])
    winner_name = None
    if winner is not None:
        winner_name = winner.tags.get("candidate") or winner.run_name or winner.run_id
    return EnsembleInfo(
        found=True,
        comparison_run_id=comparison,
        winner_name=winner_name,
        winner_run_id=winner_run,
        model_uri=model_uri,
        table_columns=columns,
        table_rows=rows,
        table_artifact=table_artifact,
        notes=tuple(notes),
        mode=mode,
    )


def table_columns(
    header: Sequence[str], rows: Sequence[Sequence[str]]
) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """The comparison table without its per-class recall columns (the CSV artifact keeps them)."""
    keep = [i for i, c in enumerate(header) if not c.startswith("val_recall_") and c != "members"]
    return tuple(header[i] for i in keep), tuple(tuple(r[i] if i < len(r) else "" for i in keep) for r in rows)
