"""``galaxy10 study list|show``: look at Optuna studies (trials, states, values, best parameters)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

from experiments.commands.common import add_storage_argument

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``galaxy10 study`` with ``list`` and ``show``."""
    parser = subparsers.add_parser("study", help="list Optuna studies or show one study's trials")
    sub = parser.add_subparsers(dest="study_command", metavar="STUDY_COMMAND")
    sub.required = True
    p_list = sub.add_parser("list", help="every study in the storage with trial counts and best value")
    add_storage_argument(p_list)
    p_list.set_defaults(func=run_list)
    p_show = sub.add_parser("show", help="one study: trials, states, values, best value and parameters")
    p_show.add_argument("name", help="study name")
    add_storage_argument(p_show)
    p_show.set_defaults(func=run_show)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned plain-text table."""
    cells = [list(map(str, header))] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_list(args: argparse.Namespace) -> int:
    """Print one line per study."""
    from experiments.tuning.storage import open_storage
    from experiments.tuning.study import list_studies

    storage = open_storage(args.storage, must_exist=True)
    studies = list_studies(storage)
    if not studies:
        print(
            f"no studies in {args.storage}; start one with: galaxy10 tune --config experiments/configs/tune_quick.yaml"
        )
        return 0
    rows = [
        (
            s.name,
            s.n_trials,
            s.counts.get("COMPLETE", 0),
            s.counts.get("PRUNED", 0),
            s.counts.get("FAIL", 0),
            s.counts.get("RUNNING", 0),
            s.metric,
            s.best_value,
            s.start,
        )
        for s in studies
    ]
    print(format_table(("study", "trials", "complete", "pruned", "fail", "running", "metric", "best", "started"), rows))
    print(f"\nshow one: galaxy10 study show NAME --storage {args.storage}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Print the study's trials table, its best trial and how to open the dashboards."""
    from experiments.settings.tune import ATTR_REFERENCE
    from experiments.training.evaluation import cv_spread
    from experiments.tuning.pruning import describe_cuts
    from experiments.tuning.storage import open_storage
    from experiments.tuning.study import (
        ATTR_EXPERIMENT,
        ATTR_METRIC,
        ATTR_PARENT_RUN,
        ATTR_TRACKING_URI,
        ATTR_TRIAL_RUN,
        guard_evidence,
        is_multi_objective,
        load_existing_study,
        maximizes,
        state_counts,
        trial_value,
    )

    storage = open_storage(args.storage, must_exist=True)
    study = load_existing_study(args.name, storage)
    trials = study.get_trials(deepcopy=False)
    names = sorted({k for t in trials for k in t.params})
    with_cv = any(t.user_attrs.get("cv_scores") for t in trials)
    rows = []
    for t in trials:
        duration = t.duration.total_seconds() if t.duration is not None else None
        last_step = len(t.intermediate_values) or None  # epochs reported (over all folds with CV)
        state = t.state.name + (" (reference)" if t.user_attrs.get(ATTR_REFERENCE) else "")
        rows.append(
            [t.number, state, trial_value(t), last_step, None if duration is None else f"{duration:.0f}s"]
            + ([cv_spread(t.user_attrs.get("cv_scores"))] if with_cv else [])
            + [t.params.get(n) for n in names]
        )
    attrs = study.user_attrs
    metric = attrs.get(ATTR_METRIC, "objective")
    counts = state_counts(study)
    states = "".join(f", {v} {k.lower()}" for k, v in sorted(counts.items()) if v)
    print(
        f"study {study.study_name} ({args.storage}): {len(trials)} trial{'' if len(trials) == 1 else 's'}"
        f"{states}; objective: val {metric} (maximize"
        + (", and inference images/s: multi-objective" if is_multi_objective(study) else "")
        + ")"
    )
    if trials:
        print(
            format_table(
                ["#", "state", "value", "epochs", "time"] + (["cv mean ± sd (folds)"] if with_cv else []) + names, rows
            )
        )
    cuts = describe_cuts(trials)
    if cuts:
        print(
            "\npruned trials, where each was cut and against what (trials are compared at equal epochs of equal folds):"
        )
        print("\n".join(f"  {line}" for line in cuts))
    best, evidence = guard_evidence(trials, str(attrs.get(ATTR_METRIC, "accuracy")), maximize=maximizes(study))
    if len(evidence) > 1:
        print("\nhow the best trial was chosen (the study's accuracy guard):")
        print("\n".join(f"  {line}" for line in evidence))
    if best is None:
        print("\nbest: no COMPLETE trial yet")
    else:
        spread = cv_spread(best.user_attrs.get("cv_scores"))
        kind = "cross-validated" if spread else "val"
        print(
            f"\nbest: trial {best.number}, {kind} {metric} = {trial_value(best):.4f}"
            + (f" ({spread})" if spread else "")
        )
        if best.user_attrs.get(ATTR_REFERENCE):
            print("  the reference recipe: experiments/configs/reference.yaml as shipped (study.reference_trial)")
        for k, v in best.params.items():
            print(f"  {k} = {_fmt(v)}")
        run_id = best.user_attrs.get(ATTR_TRIAL_RUN)
        if run_id:
            print(f"  MLflow run: {run_id}")
    tracking_uri = attrs.get(ATTR_TRACKING_URI, DEFAULT_TRACKING_URI)
    parent = attrs.get(ATTR_PARENT_RUN)
    print("\nopen the dashboards:")
    where = f"   # parent run {parent}, experiment id {attrs.get(ATTR_EXPERIMENT)}" if parent else ""
    if tracking_uri.startswith(("http://", "https://")):
        print(f"  open {tracking_uri} in a browser{where}")
    else:
        print(f"  mlflow ui --backend-store-uri {tracking_uri}{where}")
    print(f"  optuna-dashboard {args.storage}")
    return 0
