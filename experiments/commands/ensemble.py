"""``galaxy10 ensemble``: compare CNN voting, gradient-boosted embeddings and stacking for a study in MLflow."""

from __future__ import annotations

import argparse

from experiments.commands.common import (
    add_data_argument,
    add_overrides_argument,
    add_storage_argument,
    add_study_argument,
    add_tracking_uri_argument,
    workspace,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``galaxy10 ensemble``."""
    parser = subparsers.add_parser(
        "ensemble",
        help="ensembles of a study's CNNs (voting, embeddings + XGBoost/sklearn, stacking) compared in MLflow",
        description="Build the candidates in --config from the study's best trials, score each on the validation "
        "split only (cross-fitted or cross-validated so no model scores images it was fit on), log one "
        "'ensemble comparison' MLflow run with a nested run and a pyfunc model per candidate, and register "
        "the winner as <study>-ensemble@champion. The test split is never used.",
    )
    add_study_argument(parser)
    parser.add_argument("--config", required=True, help="ensemble YAML, e.g. experiments/configs/ensemble.yaml")
    add_storage_argument(parser)
    add_tracking_uri_argument(parser)
    add_data_argument(parser, study=True)
    parser.add_argument(
        "--budget",
        metavar="DURATION",
        help="wall-clock budget, e.g. 10m: cross-fit fold CNNs only when they fit, else mode val_cv",
    )
    add_overrides_argument(parser, "the ensemble config", "mode=crossfit")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the comparison and print its table, the winner and where everything was logged."""
    from pathlib import Path

    import yaml

    from experiments.ensembling.comparison import run_comparison
    from experiments.names import check_study_name
    from experiments.settings.ensemble import config_from_dict, read_config_yaml
    from experiments.settings.run import apply_overrides

    study = check_study_name(args.study)
    budget = None
    if args.budget is not None:
        import time

        from experiments.settings.checks import parse_duration
        from experiments.startup import STARTED

        budget = parse_duration(args.budget) - (time.time() - STARTED)
    raw = apply_overrides(read_config_yaml(args.config), list(args.overrides))
    cfg = config_from_dict(raw)
    text = Path(args.config).read_text()
    if args.overrides:
        text += "\n# --set " + " --set ".join(args.overrides) + "\n# resolved:\n" + yaml.safe_dump(raw, sort_keys=False)
    report = run_comparison(study, cfg, ws=workspace(args), data_path=args.data, config_text=text, budget=budget)
    if report.synthetic:
        print("SYNTHETIC data: these numbers say nothing about real galaxies")
    print(f"ensemble comparison of study {report.study_name} (mode {report.mode}), validation split:")
    w = max([22, *(len(r["candidate"]) for r in report.rows)])  # names like gbm-logreg-backbones+prior
    wide = any("oofval_accuracy" in r for r in report.rows)  # out-of-fold train + validation (oof_selection)
    header = f"  {'candidate':<{w}} {'kind':<6} {'accuracy':>8} {'bal.acc':>8} {'macro-F1':>8} {'log loss':>8}"
    print(header + ("  | oof+val: accuracy  bal.acc" if wide else ""))
    for r in report.rows:
        mark = "  <- winner" if r["candidate"] == report.winner else ""
        extra = ""
        if wide:
            extra = (
                f"  | {r['oofval_accuracy']:>17.4f} {r['oofval_balanced_accuracy']:>8.4f}"
                if "oofval_accuracy" in r
                else f"  | {'-':>17} {'-':>8}"
            )
        print(
            f"  {r['candidate']:<{w}} {r['kind']:<6} {r['val_accuracy']:>8.4f} {r['val_balanced_accuracy']:>8.4f} "
            f"{r['val_macro_f1']:>8.4f} {r['val_log_loss']:>8.4f}{extra}{mark}"
        )
    judged = [r for r in report.rows if "verdict" in r]
    if judged:
        keys = [k for k in judged[0] if k.startswith("d_")]
        print(
            "  paired against cnn-best (difference [interval], Bonferroni over the candidates; verdict on "
            f"{keys[0][2:]}):"
        )
        for r in judged:
            print(f"    {r['candidate']:<{w}} " + "  ".join(f"{k[2:]} {r[k]}" for k in keys) + f"  -> {r['verdict']}")
    print(f"  winner: {report.winner} registered as {report.registered}")
    print(
        f"  MLflow: parent run {report.parent_run_id} '{report.experiment_name}' with {len(report.rows)} "
        "nested runs; "
        f"mlflow ui --backend-store-uri {report.tracking_uri}"
    )
    for note in report.notes:
        print(f"  note: {note}")
    print(f"  ({report.seconds:.0f} s)")
    return 0
