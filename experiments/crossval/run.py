"""The evaluation run: every recipe on every fold, one MLflow parent run with a child per recipe and fold.

Each finished child keeps the recipe's probabilities on its fold's held-out images (``predictions.json``), so
an evaluation killed mid-way continues where it stopped: the same command finds its parent run by the
evaluation's key (data fingerprint, recipes, R, K, seed, budget), reuses every FINISHED child and redoes the
rest. The summary is computed from the kept predictions only, so a resumed evaluation gives the same numbers
as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from core.errors import ConfigError, ModelError
from core.outputs import check_output_dir, output_dir
from experiments.crossval.folds import (
    Budget,
    Fold,
    Recipe,
    check_counts,
    check_label_fraction,
    check_recipes,
    evaluation_key,
    load_recipe_config,
    repeated_folds,
)
from experiments.crossval.recipes import FoldResult, ensemble_config, run_train_recipe, run_tune_recipe
from experiments.crossval.summary import EvaluationSummary, summarize, summary_figure, summary_markdown
from experiments.settings.run import RunConfig
from experiments.settings.tune import TuneConfig
from experiments.tracking.base import git_commit, package_versions
from experiments.tracking.lookups import training_lookups
from experiments.tracking.mlflow_tracker import MlflowTracker, attach_run
from experiments.tracking.runs import download_run_artifact, find_runs, finish_run, get_run_facts
from experiments.tracking.workspace import Workspace
from pipelines.classes import CLASS_NAMES, ClassSet
from pipelines.reader import Galaxy10File, data_fingerprint
from pipelines.splits import find_groups

log = logging.getLogger(__name__)

EXPERIMENT = "galaxy10-evaluate"
PREDICTIONS = "predictions.json"
ENSEMBLE_ARTIFACT = "ensemble_config.yaml"


@dataclass(frozen=True)
class EvaluationResult:
    """What ``galaxy10 evaluate`` did: the summary, where it is, and how much was reused."""

    summary: EvaluationSummary
    parent_run_id: str
    key: str
    out: Path
    reused: int
    ran: int
    synthetic: bool
    seconds: float


def _first_train_recipe(recipes: Sequence[Recipe]) -> Recipe | None:
    return next((r for r in recipes if r.kind == "train"), None)


def _check_budget(recipes: Sequence[Recipe], budget: Budget | None) -> None:
    tune = [r.name for r in recipes if r.kind == "tune"]
    if tune and budget is None:
        raise ConfigError(
            f"recipe {tune[0]} is a tuning config (the catalog path): give --budget, a duration (20m) "
            "or a factor of the first run recipe's wall time on each fold (4x)"
        )
    if budget is not None and budget.factor is not None and _first_train_recipe(recipes) is None:
        raise ConfigError(
            f"--budget {budget.text()} is a factor of a run recipe's wall time, but every recipe is a "
            "tuning config; give a duration (e.g. --budget 20m)"
        )


def _done_cells(parent_id: str, ws: Workspace) -> dict[tuple[str, str], str]:
    """``(recipe, cell) -> run id`` of the parent's FINISHED children; children left unfinished are marked FAILED."""
    done = {}
    for child in find_runs({"evaluate.role": "fold"}, ws=ws, parent_run_id=parent_id):
        cell = (child.tags.get("evaluate.recipe", ""), child.tags.get("evaluate.cell", ""))
        if child.status == "FINISHED" and cell not in done:
            done[cell] = child.run_id
        elif child.status == "RUNNING":
            finish_run(
                child.run_id,
                "FAILED",
                ws=ws,
                tags={"evaluate.fail_reason": "the evaluation stopped before this fold finished; redone"},
            )
    return done


def _check_same_ensemble(parent_id: str, text: str | None, ws: Workspace) -> None:
    """A continued evaluation's tuning recipes must run the ensemble config its first folds ran."""
    if text is None:
        return
    with tempfile.TemporaryDirectory(prefix="galaxy10-evaluate-") as tmp:
        try:
            logged = download_run_artifact(parent_id, ENSEMBLE_ARTIFACT, tmp, ws=ws).read_text()
        except ModelError:  # an evaluation begun before the config was kept: nothing to compare
            log.warning(
                "evaluation run %s kept no ensemble config; its earlier folds ran the one shipped then", parent_id
            )
            return
    if logged != text:
        raise ConfigError(
            "experiments/configs/ensemble.yaml changed since this evaluation began (its earlier folds "
            "ran the config logged on its MLflow run); restore it, or start a new evaluation with "
            "another --seed or --experiment"
        )


def _load_predictions(run_id: str, ws: Workspace, fold: Fold) -> FoldResult:
    with tempfile.TemporaryDirectory(prefix="galaxy10-evaluate-") as tmp:
        doc = json.loads(download_run_artifact(run_id, PREDICTIONS, tmp, ws=ws).read_text())
    if doc["rows"] != fold.test.tolist():
        raise ConfigError(
            f"run {run_id} holds predictions for other images than fold {fold.cell}; the evaluation's "
            "store was changed by hand: start over with another --experiment"
        )
    seconds = get_run_facts(run_id, ws=ws).metrics.get("seconds", float("nan"))
    return FoldResult(np.asarray(doc["probs"], dtype=np.float32), float(seconds), {})


def run_evaluation(
    data_path: str | Path,
    recipes: Sequence[Recipe],
    *,
    out: str | Path,
    repeats: int = 3,
    folds: int = 5,
    seed: int = 0,
    budget: Budget | None = None,
    ws: Workspace,
    experiment: str = EXPERIMENT,
    force: bool = False,
    label_fraction: float = 1.0,
) -> EvaluationResult:
    """Cross-validate ``recipes`` on ``data_path`` (see the module docs); write the summary into ``out``.

    ``label_fraction`` < 1: every recipe learns from the same stratified share of each fold's training images
    (a label-efficiency evaluation) and is scored on all of the fold's held-out images.
    """
    started = time.perf_counter()
    check_output_dir(out, what="evaluation", force=force)
    check_recipes(recipes)
    label_fraction = check_label_fraction(label_fraction)
    _check_budget(recipes, budget)
    configs = {r.name: load_recipe_config(r) for r in recipes}
    ensemble, ensemble_text = ensemble_config() if any(r.kind == "tune" for r in recipes) else (None, None)
    path = Path(data_path)
    with Galaxy10File(path) as f:
        info = f.info
        labels = np.asarray(f.labels()).astype(np.int64)
        classes = ClassSet.from_names(tuple(getattr(info, "class_names", None) or CLASS_NAMES))
        check_counts(repeats, folds, labels)
        groups, _ = find_groups(path, source=f)
    fingerprint = data_fingerprint(path)
    key = evaluation_key(fingerprint, recipes, folds=folds, seed=seed, budget=budget, label_fraction=label_fraction)
    plan = [
        f.with_labels(labels, label_fraction, seed)
        for f in repeated_folds(labels, groups, repeats=repeats, folds=folds, seed=seed)
    ]
    if info.synthetic:
        log.warning("evaluation on SYNTHETIC data (%s): the numbers say nothing about real galaxies", path)
    tags = {
        "evaluate.key": key,
        "evaluate.role": "parent",
        "data.fingerprint": fingerprint,
        "data.path": str(path),
        "data.synthetic": str(bool(info.synthetic)).lower(),
        **git_commit(),
        **package_versions(),
    }
    previous = [r for r in find_runs({"evaluate.key": key, "evaluate.role": "parent"}, ws=ws)]
    parent = attach_run(previous[0].run_id, ws=ws) if previous else None
    if parent is None:
        parent = MlflowTracker(
            experiment,
            f"evaluate {' vs '.join(r.name for r in recipes)}",
            ws=ws,
            tags={**tags, "run.host": socket.gethostname(), "run.pid": os.getpid()},
        ).start()
        parent.log_params(
            {
                "repeats": repeats,
                "folds": folds,
                "seed": seed,
                "budget": budget and budget.text(),
                "label_fraction": label_fraction,
                "recipes": " ".join(f"{r.name}={r.path}" for r in recipes),
                "n_images": len(labels),
            }
        )
        for r in recipes:
            parent.log_text(r.text, f"recipes/{r.name}.yaml")
        if ensemble_text is not None:
            parent.log_text(ensemble_text, ENSEMBLE_ARTIFACT)
        done: dict[tuple[str, str], str] = {}
    else:
        log.info("continuing evaluation %s (run %s)", key, parent.run_id)
        _check_same_ensemble(parent.run_id, ensemble_text, ws)
        done = _done_cells(parent.run_id, ws)
    status = "FAILED"
    try:
        ev = _Evaluation(
            path,
            labels,
            classes,
            parent,
            key,
            experiment,
            ws,
            seed,
            budget,
            ensemble,
            ws.cache_dir / "evaluate" / key,
            training_lookups(ws),
        )
        predictions, seconds, reused, ran = _run_cells(ev, plan, recipes, configs, done)
        summary = summarize(
            labels, plan, predictions, seconds, class_names=classes.names, class_slugs=classes.slugs, repeats=repeats
        )
        _publish(summary, parent, out=Path(out), synthetic=bool(info.synthetic), data_path=str(path), force=force)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        parent.end(status)
    return EvaluationResult(
        summary, parent.run_id, key, Path(out), reused, ran, bool(info.synthetic), time.perf_counter() - started
    )


@dataclass
class _Evaluation:
    """What every cell of one evaluation shares (built once by :func:`run_evaluation`)."""

    path: Path
    labels: np.ndarray
    class_set: ClassSet
    parent: MlflowTracker
    key: str
    experiment: str
    ws: Workspace
    seed: int
    budget: Budget | None
    ensemble: Any  # the EnsembleConfig of tuning recipes (None without one)
    workdir: Path
    lookups: dict[str, Any] = field(default_factory=dict)
    data_by_size: dict[int, Any] = field(default_factory=dict)


def _run_cells(
    ev: _Evaluation,
    plan: Sequence[Fold],
    recipes: Sequence[Recipe],
    configs: dict[str, Any],
    done: dict[tuple[str, str], str],
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, float]], int, int]:
    predictions: dict[str, dict[str, np.ndarray]] = {r.name: {} for r in recipes}
    seconds: dict[str, dict[str, float]] = {r.name: {} for r in recipes}
    first_train = _first_train_recipe(recipes)
    reused = ran = 0
    bar = tqdm(total=len(plan) * len(recipes), desc="evaluate", unit="fit", disable=None)
    in_order = sorted(recipes, key=lambda r: r.kind != "train")  # a factor budget needs the run recipes' times
    for fold in plan:
        for recipe in in_order:
            bar.set_postfix_str(f"{recipe.name} {fold.cell}")
            run_id = done.get((recipe.name, fold.cell))
            if run_id is not None:
                result = _load_predictions(run_id, ev.ws, fold)
                reused += 1
            else:
                # the median over the folds so far (this one's included): a fold whose run recipe stopped early
                # does not starve a tuning recipe whose budget is a factor of it
                done_s = [v for v in seconds[first_train.name].values() if np.isfinite(v)] if first_train else []
                reference_s = float(np.median(done_s)) if done_s else None
                result = _run_one(ev, recipe, configs[recipe.name], fold, reference_s)
                ran += 1
            predictions[recipe.name][fold.cell] = result.probs
            seconds[recipe.name][fold.cell] = result.seconds
            bar.update(1)
    bar.close()
    return predictions, seconds, reused, ran


def _run_one(
    ev: _Evaluation, recipe: Recipe, cfg: RunConfig | TuneConfig, fold: Fold, reference_seconds: float | None
) -> FoldResult:
    """One recipe on one fold in its own child run, which keeps the held-out predictions."""
    from experiments.training.evaluation import classification_metrics, prefixed

    tags = {
        "evaluate.key": ev.key,
        "evaluate.role": "fold",
        "evaluate.recipe": recipe.name,
        "evaluate.kind": recipe.kind,
        "evaluate.cell": fold.cell,
    }
    with MlflowTracker(
        ev.experiment, f"{recipe.name} {fold.cell}", ws=ev.ws, parent_run_id=ev.parent.run_id, tags=tags
    ) as child:
        if recipe.kind == "train":
            size = cfg.data.size
            if size not in ev.data_by_size:
                from experiments.training import load_training_data

                ev.data_by_size[size] = load_training_data(cfg.data, ev.path)
            result = run_train_recipe(
                cfg, ev.data_by_size[size], fold, seed=ev.seed + fold.r, tracker=child, lookups=ev.lookups
            )
        else:
            budget = ev.budget.seconds if ev.budget.seconds is not None else ev.budget.factor * float(reference_seconds)
            result = run_tune_recipe(
                cfg,
                recipe,
                ev.path,
                fold,
                budget=budget,
                study_name=f"eval-{ev.key}-{recipe.name}-{fold.cell}",
                workdir=ev.workdir,
                ws=ev.ws,
                seed=ev.seed + fold.r,
                ensemble=ev.ensemble,
            )
            child.set_tags({f"evaluate.{k}": v for k, v in result.facts.items() if v is not None})
        metrics = classification_metrics(ev.labels[fold.test], result.probs, ev.class_set.slugs)
        child.log_metrics(
            {
                **prefixed({k: metrics[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")}, "heldout"),
                "seconds": result.seconds,
                "n_heldout": float(len(fold.test)),
            }
        )
        child.log_dict({"rows": fold.test.tolist(), "probs": np.round(result.probs, 6).tolist()}, PREDICTIONS)
    log.info(
        "%s %s: held-out accuracy %.4f, balanced %.4f (%.0f s)",
        recipe.name,
        fold.cell,
        metrics["accuracy"],
        metrics["balanced_accuracy"],
        result.seconds,
    )
    return FoldResult(np.round(result.probs, 6).astype(np.float32), result.seconds, result.facts)


def _publish(
    summary: EvaluationSummary, parent: MlflowTracker, *, out: Path, synthetic: bool, data_path: str, force: bool
) -> None:
    md = summary_markdown(summary, synthetic=synthetic, data_path=data_path)
    doc = {"synthetic": synthetic, "data": data_path, "parent_run_id": parent.run_id, **summary.as_dict()}
    title = (
        f"{summary.repeats} x {summary.folds}-fold CV of {Path(data_path).name}: paired differences, 95% "
        "corrected t" + (" (SYNTHETIC)" if synthetic else "")
    )
    fig = summary_figure(summary, title=title) if summary.differences else None
    with output_dir(out, what="evaluation", force=force) as tmp:
        (tmp / "evaluation.md").write_text(md, encoding="utf-8")
        (tmp / "evaluation.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        if fig is not None:
            fig.savefig(tmp / "evaluation.png", dpi=120)
    parent.log_text(md, "evaluation.md")
    parent.log_dict(doc, "evaluation.json")
    if fig is not None:
        parent.log_figure(fig, "evaluation.png")
    metrics = {}
    for r in summary.recipes:
        metrics.update({f"{r.name}_{m}_mean": r.mean(m) for m in ("accuracy", "balanced_accuracy", "macro_f1")})
    for d in summary.differences:
        for m, t in d.metrics.items():
            metrics.update(
                {f"diff_{d.name}_{m}": t.mean, f"diff_{d.name}_{m}_ci_low": t.lo, f"diff_{d.name}_{m}_ci_high": t.hi}
            )
    parent.log_metrics(metrics)
