"""The comparison run: every candidate scored on validation, logged, the table, the registered winner."""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.files import pid_alive
from ensembles.calibration import calibration_metrics
from ensembles.ensemble_model import save_ensemble
from experiments.ensembling.candidates import build_candidates
from experiments.ensembling.champion import BASELINE_CANDIDATE, choose_champion
from experiments.ensembling.context import Candidate
from experiments.ensembling.evidence import (
    WIDE_METRICS,
    add_judgements,
    evidence_note,
    oof_labels,
    rule_settings,
    small_validation_note,
    wide_metrics,
)
from experiments.ensembling.members import load_study_data, study_members
from experiments.ensembling.second_stage_tuning import validate_config
from experiments.ensembling.table import TABLE_METRICS, _row, comparison_csv, comparison_figure, comparison_markdown
from experiments.settings.ensemble import EnsembleConfig, to_dict
from experiments.tracking.base import git_commit, package_versions
from experiments.tracking.mlflow_tracker import MlflowTracker
from experiments.tracking.model_registry import register_champion
from experiments.tracking.pyfunc import log_ensemble_model
from experiments.tracking.runs import find_runs, finish_run, set_run_tags
from experiments.tracking.workspace import Workspace
from experiments.training import data_tags
from experiments.training.evaluation import classification_metrics, per_class_csv, prefixed
from experiments.training.figures import confusion_figure
from experiments.tuning.budget import plan_ensemble
from pipelines.dataset import TrainData
from pipelines.preprocess import PREPROCESS_VERSION
from pipelines.reader import Galaxy10File

log = logging.getLogger(__name__)


COMPARISON_RUN_NAME = "ensemble comparison"
REGISTERED_SUFFIX = "-ensemble"


@dataclass(frozen=True)
class ComparisonReport:
    """What ``galaxy10 ensemble`` did."""

    study_name: str
    mode: str
    parent_run_id: str
    experiment_name: str
    tracking_uri: str
    columns: tuple[str, ...]
    rows: tuple[dict[str, Any], ...]
    winner: str
    winner_run_id: str
    registered: str
    child_run_ids: Mapping[str, str]
    model_uris: Mapping[str, str]
    notes: tuple[str, ...]
    synthetic: bool
    seconds: float
    candidates: tuple[Candidate, ...] = ()


def _example_image(data: TrainData) -> np.ndarray:
    """One raw validation image from the file, the pyfunc models' input example."""

    with Galaxy10File(data.path) as f:
        return np.asarray(f.images(np.asarray(data.val[:1])))


def _model_meta(
    candidate: Candidate, data: TrainData, study_name: str, mode: str, temperature: float
) -> dict[str, Any]:
    first = candidate.model.branches[0]
    return {
        "temperature": round(float(temperature), 6),
        "size": int(first.size),
        "crop": int(first.crop),
        "preprocess_version": PREPROCESS_VERSION,
        "class_names": list(data.class_names),
        "class_slugs": list(data.class_slugs),
        "num_classes": data.num_classes,
        "data_fingerprint": data.fingerprint,
        "synthetic": bool(data.synthetic),
        "provenance": data.provenance,
        "tta": bool(first.tta),
        "kind": candidate.kind,
        "members": candidate.members,
        "candidate": candidate.name,
        "study": study_name,
        "ensemble_mode": mode,
        "input": "uint8 (N, H, W, 3) raw RGB images of any size (square-cropped and resized per member)",
    }


def close_abandoned_comparisons(study_name: str, ws: Workspace) -> list[str]:
    """Mark FAILED the study's comparison runs (and their candidate runs) left RUNNING by a killed command.

    A comparison run records the host and process id of the command that made it (``run.host``,
    ``run.pid``); one that is still RUNNING although that process is gone from this host was killed
    (SIGKILL, power loss) before it could end its runs. Runs from other hosts, or whose process still
    exists, are left alone. Returns the run ids closed.
    """

    host = socket.gethostname()
    reason = "the galaxy10 ensemble command that logged this run stopped without ending it (killed)"
    closed = []
    for run in find_runs({"ensemble.role": "comparison", "optuna.study": study_name}, ws=ws):
        pid = run.tags.get("run.pid", "")
        if run.status != "RUNNING" or run.tags.get("run.host") != host or not pid.isdigit() or pid_alive(int(pid)):
            continue
        for child in find_runs({}, ws=ws, parent_run_id=run.run_id):
            if child.status == "RUNNING":
                finish_run(child.run_id, "FAILED", ws=ws, tags={"ensemble.fail_reason": reason})
                closed.append(child.run_id)
        finish_run(run.run_id, "FAILED", ws=ws, tags={"ensemble.fail_reason": reason})
        closed.append(run.run_id)
        log.warning(
            "ensemble comparison run %s of study %s was left RUNNING by process %s, which is gone; "
            "marked it and its unfinished candidate runs FAILED",
            run.run_id,
            study_name,
            pid,
        )
    return closed


def run_comparison(
    study_name: str,
    cfg: EnsembleConfig,
    *,
    ws: Workspace,
    data_path: str | Path | None = None,
    config_text: str | None = None,
    budget: float | None = None,
) -> ComparisonReport:
    """Build every candidate, log the comparison to MLflow and register the winner (see module docs).

    ``budget`` (seconds): keep cross-fitting only when it fits (``experiments.tuning.budget.plan_ensemble``);
    the plan is the first note.
    """

    started = time.perf_counter()
    validate_config(cfg)
    uri = ws.require_store()
    members = study_members(study_name, ws=ws, top_k=cfg.vote.top_k)
    plan = None
    requested_mode = cfg.mode
    if budget is not None:
        cfg, plan = plan_ensemble(cfg, members.best.metrics.get("train_seconds"), budget)
        log.info("plan: %s", plan)
    data = load_study_data(members, data_path)
    if data.synthetic:
        log.warning("ensemble comparison on SYNTHETIC data: %s", data.describe())
    candidates, notes, facts = build_candidates(cfg, members, data, ws=ws)
    if plan is not None:
        notes.insert(0, f"plan: {plan}")
    y_val = np.asarray(data.labels[data.val], dtype=np.int64)
    slugs, names = data.class_slugs, data.class_names
    thin = small_validation_note(y_val, names)
    if thin:
        notes.append(thin)
    experiment = members.best.cfg.experiment_name
    base_cand = next(c for c in candidates if c.name == BASELINE_CANDIDATE)
    y_train = oof_labels(base_cand, data.labels)
    wide_cols = tuple(f"oofval_{k}" for k in WIDE_METRICS) if y_train is not None else ()
    if y_train is not None:
        notes.append(
            f"candidates with out-of-fold train probabilities are also scored on {len(y_train)} "
            f"out-of-fold train + {len(y_val)} validation images (oofval_*), against cnn-best's "
            "recipe (its fold CNNs on train); the champion rule judges them there (oof_selection)"
        )
    columns = (
        "candidate",
        "kind",
        *(f"val_{k}" for k in TABLE_METRICS),
        *wide_cols,
        *(f"val_recall_{s}" for s in slugs),
        "members",
        "estimate",
        "run_id",
    )
    common_tags = {
        **data_tags(data),
        **git_commit(),
        **package_versions(),
        "optuna.study": study_name,
        "ensemble.mode": cfg.mode,
    }
    example = _example_image(data)
    rows, child_ids, model_uris = [], {}, {}
    close_abandoned_comparisons(study_name, ws)
    with MlflowTracker(
        experiment,
        COMPARISON_RUN_NAME,
        ws=ws,
        tags={**common_tags, "ensemble.role": "comparison", "run.host": socket.gethostname(), "run.pid": os.getpid()},
    ) as parent:
        parent.log_params(
            {
                **{f"ensemble.{k}": v for k, v in _flat(to_dict(cfg)).items()},
                "study.name": study_name,
                "study.storage": ws.study_storage(),
                "study.best_trial": members.best.trial_number,
                "members": " ".join(m.name for m in members.members),
            }
        )
        if config_text is not None:
            parent.log_text(config_text, "ensemble_config.yaml")
        parent.log_dict(json.loads(json.dumps(to_dict(cfg))), "ensemble_config_resolved.json")
        if facts:
            parent.log_dict(json.loads(json.dumps(facts, default=str)), "crossfit.json")
            if "crossfit_seconds" in facts:
                parent.log_metrics(
                    {
                        "crossfit_seconds": float(facts["crossfit_seconds"]),
                        "crossfit_cached_folds": float(facts["crossfit_cached_folds"]),
                    }
                )
        for cand in candidates:
            metrics = classification_metrics(y_val, cand.val_probs, slugs)
            wide = wide_metrics(cand, base_cand, y_train, y_val, slugs)
            tags = {
                **common_tags,
                "kind": cand.kind,
                "candidate": cand.name,
                "members": " ".join(cand.members),
                "ensemble.estimate": cand.estimate,
                "ensemble.description": cand.model.description,
            }
            with MlflowTracker(experiment, cand.name, ws=ws, parent_run_id=parent.run_id, tags=tags) as child:
                child.log_params(
                    {
                        "kind": cand.kind,
                        "n_branches": len(cand.model.branches),
                        **{k: str(v) for k, v in cand.params.items()},
                    }
                )
                # the candidate's temperature, fitted on its validation probabilities (out-of-fold where it was
                # fit on validation); ece_val*, not val_*, which the CNN runs share
                calibration = calibration_metrics(cand.val_probs, y_val)
                child.log_metrics({**prefixed(metrics, "val"), **wide, "build_seconds": cand.seconds, **calibration})
                child.log_text(per_class_csv(metrics, slugs, names), "per_class_metrics_val.csv")
                child.log_figure(
                    confusion_figure(
                        metrics["confusion"], names, title=f"{cand.name}: validation confusion (row-normalised)"
                    ),
                    "confusion_matrix_val.png",
                )
                with tempfile.TemporaryDirectory(prefix="galaxy10-ensemble-") as tmp:
                    folder = save_ensemble(cand.model, Path(tmp) / "ensemble")
                    model_uris[cand.name] = log_ensemble_model(
                        child,
                        folder,
                        meta=_model_meta(cand, data, study_name, cfg.mode, calibration["temperature"]),
                        input_example=example,
                        n_classes=data.num_classes,
                    )
                child_ids[cand.name] = child.run_id
            rows.append(
                {**_row(cand, metrics, slugs), **{k: round(v, 4) for k, v in wide.items()}, "run_id": child.run_id}
            )
            log.info(
                "%-22s val accuracy %.4f, balanced %.4f, macro-F1 %.4f (%s)",
                cand.name,
                metrics["accuracy"],
                metrics["balanced_accuracy"],
                metrics["macro_f1"],
                cand.estimate,
            )
        select_metric = members.metric if cfg.select_metric == "study" else cfg.select_metric
        key = f"val_{select_metric}"
        settings = rule_settings(cfg, select_metric)
        winner, rule, judgements = choose_champion(rows, candidates, y_val, data.num_classes, settings, y_train=y_train)
        log.info("champion: %s", rule)
        columns = add_judgements(rows, columns, judgements, settings)
        if winner["candidate"] == BASELINE_CANDIDATE and len(rows) > 1:
            notes.append(rule)
        thin_evidence = evidence_note(judgements, y_train, requested_mode != cfg.mode)
        if thin_evidence:
            notes.append(thin_evidence)
        parent.log_dict(
            {
                "settings": {
                    "metric": settings.metric,
                    "guard_metrics": list(settings.guard_metrics),
                    "guard_margin": settings.guard_margin,
                    "confidence": settings.confidence,
                    "n_judged": len(judgements),
                },
                "judgements": {
                    n: {
                        "evidence": j.evidence,
                        "wins": j.wins,
                        "clause": j.clause,
                        "differences": {m: d.as_dict() for m, d in j.differences.items()},
                    }
                    for n, j in judgements.items()
                },
            },
            "paired_evidence.json",
        )
        md = (
            comparison_markdown(rows, winner=winner["candidate"], select_metric=select_metric, synthetic=data.synthetic)
            + f"\nChampion rule: {rule}.\n"
        )
        parent.log_text(comparison_csv(rows, columns), "comparison.csv")
        parent.log_text(md, "comparison.md")
        parent.log_figure(
            comparison_figure(
                rows,
                title=f"study {study_name}: ensembles on the validation split"
                + (" (SYNTHETIC data)" if data.synthetic else ""),
            ),
            "comparison.png",
        )
        if notes:
            parent.log_text("\n".join(notes) + "\n", "notes.txt")
        name = f"{study_name}{REGISTERED_SUFFIX}"
        registered = register_champion(
            model_uris[winner["candidate"]],
            name,
            alias=cfg.alias,
            run_id=winner["run_id"],
            ws=ws,
            tags={
                "candidate": winner["candidate"],
                "kind": winner["kind"],
                key: f"{winner[key]:.4f}",
                "optuna.study": study_name,
            },
        )
        set_run_tags(winner["run_id"], {"ensemble.winner": "true"}, ws=ws)
        parent.set_tags(
            {
                "winner": winner["candidate"],
                "winner.run_id": winner["run_id"],
                "winner.registered_model": registered,
                "n_candidates": len(rows),
                "winner.rule": rule,
                "select_metric": select_metric,
            }
        )
        parent.log_metrics(
            {
                f"winner_{key}": float(winner[key]),
                "n_candidates": float(len(rows)),
                "comparison_seconds": time.perf_counter() - started,
            }
        )
    for note in notes:
        log.warning("%s", note)
    return ComparisonReport(
        study_name=study_name,
        mode=cfg.mode,
        parent_run_id=parent.run_id,
        experiment_name=experiment,
        tracking_uri=uri,
        columns=columns,
        rows=tuple(rows),
        winner=winner["candidate"],
        winner_run_id=winner["run_id"],
        registered=registered,
        child_run_ids=child_ids,
        model_uris=model_uris,
        notes=tuple(notes),
        synthetic=bool(data.synthetic),
        seconds=time.perf_counter() - started,
        candidates=tuple(candidates),
    )


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{key}."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(list(v))
        else:
            out[key] = "null" if v is None else str(v) if not isinstance(v, Mapping) else "{}"
    return out
