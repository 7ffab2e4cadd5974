"""``galaxy10 ensemble``: compare CNN voting, gradient-boosted embeddings and stacking for a study in MLflow."""
from __future__ import annotations

import argparse

from experiments.tuning.search_space import DEFAULT_STORAGE


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``galaxy10 ensemble``."""
    parser = subparsers.add_parser(
        "ensemble", help="ensembles of a study's CNNs (voting, embeddings + XGBoost/sklearn, stacking) compared in MLflow",
        description="Build the candidates in --config from the study's best trials, score each on the validation "
                    "split only (cross-fitted or cross-validated so no model scores images it was fit on), log one "
                    "'ensemble comparison' MLflow run with a nested run and a pyfunc model per candidate, and register "
                    "the winner as <study>-ensemble@champion. The test split is never used.")
    parser.add_argument("--study", required=True, help="name of a study made by `galaxy10 tune`")
    parser.add_argument("--config", required=True, help="ensemble YAML, e.g. experiments/configs/ensemble.yaml")
    parser.add_argument("--storage", default=DEFAULT_STORAGE, help=f"Optuna storage URL (default {DEFAULT_STORAGE})")
    parser.add_argument("--tracking-uri",
                        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    parser.add_argument("--data", metavar="FILE",
                        help="the study's data file, if it moved since the study ran (its fingerprint must match)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override the ensemble config, e.g. --set mode=crossfit (repeatable)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the comparison and print its table, the winner and where everything was logged."""
    from pathlib import Path

    import yaml

    from ensembles.config import config_from_dict, read_config_yaml
    from experiments.config import apply_overrides, check_study_name
    from experiments.ensembling.comparison import run_comparison

    study = check_study_name(args.study)
    raw = apply_overrides(read_config_yaml(args.config), list(args.overrides))
    cfg = config_from_dict(raw)
    text = Path(args.config).read_text()
    if args.overrides:
        text += "\n# --set " + " --set ".join(args.overrides) + "\n# resolved:\n" + yaml.safe_dump(raw, sort_keys=False)
    report = run_comparison(study, cfg, storage_url=args.storage,
                            tracking_uri=args.tracking_uri, data_path=args.data, config_text=text)
    if report.synthetic:
        print("SYNTHETIC data: these numbers say nothing about real galaxies")
    print(f"ensemble comparison of study {report.study_name} (mode {report.mode}), validation split:")
    header = f"  {'candidate':<22} {'kind':<6} {'accuracy':>8} {'bal.acc':>8} {'macro-F1':>8} {'log loss':>8}"
    print(header)
    for r in report.rows:
        mark = "  <- winner" if r["candidate"] == report.winner else ""
        print(f"  {r['candidate']:<22} {r['kind']:<6} {r['val_accuracy']:>8.4f} {r['val_balanced_accuracy']:>8.4f} "
              f"{r['val_macro_f1']:>8.4f} {r['val_log_loss']:>8.4f}{mark}")
    print(f"  winner: {report.winner} registered as {report.registered}")
    print(f"  MLflow: parent run {report.parent_run_id} '{report.experiment_name}' with {len(report.rows)} nested runs; "
          f"mlflow ui --backend-store-uri {report.tracking_uri}")
    for note in report.notes:
        print(f"  note: {note}")
    print(f"  ({report.seconds:.0f} s)")
    return 0
