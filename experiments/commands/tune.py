"""``galaxy10 tune``: run or continue an Optuna study; every trial is a nested MLflow run."""

from __future__ import annotations

import argparse
import logging

from experiments.commands.common import (
    add_data_argument,
    add_overrides_argument,
    add_storage_argument,
    add_tracking_uri_argument,
    workspace,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``galaxy10 tune``."""
    parser = subparsers.add_parser(
        "tune",
        help="run or continue an Optuna tuning study (pruning, parallel workers, MLflow child runs)",
        description="Create or continue the study in the config until it has --trials COMPLETE+PRUNED trials. "
        "Re-running the same command continues it; trials left RUNNING by a killed worker are "
        "failed once their heartbeat is older than the grace period.",
    )
    parser.add_argument("--config", required=True, help="tuning YAML, e.g. experiments/configs/tune_cnn.yaml")
    parser.add_argument("--study", help="study name (default: study.name in the YAML, else the file name)")
    parser.add_argument(
        "--trials", type=int, help="total COMPLETE+PRUNED trials the study should reach (default: study.n_trials)"
    )
    parser.add_argument(
        "--timeout", type=float, help="stop starting new trials after this many seconds (default: study.timeout)"
    )
    parser.add_argument(
        "--budget",
        metavar="DURATION",
        help="wall-clock budget, e.g. 20m, 1h or 1h30m: measure this machine's speed and plan the "
        "folds, trials and refit to fit it (replaces --trials as the count; --trials caps it)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="worker processes sharing the study, each loading the data once (default: study.workers, 1)",
    )
    add_storage_argument(parser, default=None)
    add_tracking_uri_argument(parser)
    parser.add_argument(
        "--no-refit",
        dest="refit",
        action="store_false",
        help="skip the final refit of the best configuration on train + validation (study.refit)",
    )
    add_data_argument(parser, help="HDF5 data file (default: data.path of the config, else the default file)")
    parser.add_argument(
        "--unlabeled",
        nargs="+",
        metavar="INPUT",
        help="unlabelled images (HDF5 files, folders, CSV/Parquet lists): pretrain the first start "
        "point's backbone on them (galaxy10 pretrain; a quarter of --budget) and queue that start "
        "point fine-tuned from it right after the reference trial",
    )
    parser.add_argument(
        "--pretrained",
        metavar="REF",
        help="a model registered by galaxy10 pretrain (e.g. pretrain-d4_cnn@pretrained): queue the first start "
        "point fine-tuned from it right after the reference trial, spending none of --budget on pretraining "
        "(instead of --unlabeled)",
    )
    parser.add_argument(
        "--pretrain-epochs",
        type=int,
        default=30,
        help="most pretraining epochs with --unlabeled (default 30; --budget may stop it earlier)",
    )
    add_overrides_argument(parser, "the base run config", "train.epochs=3")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the study and print its summary; exit 1 if a worker died."""
    from dataclasses import replace

    from core.errors import ConfigError
    from experiments.names import check_study_name
    from experiments.settings.tune import load_tune_config
    from experiments.tuning.run import run_study

    tune = load_tune_config(args.config)
    if args.study is not None:
        tune = replace(tune, study=replace(tune.study, name=check_study_name(args.study)))
    if not args.refit:
        tune = replace(tune, study=replace(tune.study, refit=False))
    budget = None
    if args.budget is not None:
        import time

        from experiments.settings.checks import parse_duration
        from experiments.startup import STARTED

        budget = parse_duration(args.budget) - (time.time() - STARTED)  # the command's start-up counts too
        if args.timeout is not None:
            raise ConfigError("--budget plans the time itself; give --budget or --timeout, not both")
    level = logging.getLogger().getEffectiveLevel()
    pretrained = None
    if not 1 <= args.pretrain_epochs <= 10_000:
        raise ConfigError(f"--pretrain-epochs {args.pretrain_epochs} is out of range; use 1-10,000")
    from experiments.settings.tune import unlabeled_inputs

    pool = args.unlabeled or unlabeled_inputs(tune)
    if args.pretrained is not None:
        from experiments.tracking.workspace import ModelRef

        if pool:
            raise ConfigError(
                "--pretrained names an encoder already pretrained; give it or an unlabelled pool "
                "(--unlabeled / study.unlabeled), not both"
            )
        if not tune.study.start_points:
            raise ConfigError(
                "--pretrained fine-tunes the study's first start point, but the config has no "
                "study.start_points; add one (e.g. tune_catalog.yaml's D4 CNN)"
            )
        workspace(args).resolve(ModelRef.parse(args.pretrained))  # a missing model is one line, before any trial
        pretrained = args.pretrained.strip()
    elif pool:
        from experiments.tuning.unlabeled import pretrain_for_study

        pretrained, budget = pretrain_for_study(
            tune,
            pool,
            data_path=args.data,
            overrides=tuple(args.overrides),
            epochs=args.pretrain_epochs,
            budget=budget,
            ws=workspace(args),
        )
        print(f"pretrained: {pretrained}")
    report = run_study(
        tune,
        n_trials=args.trials,
        timeout=args.timeout,
        workers=args.workers,
        ws=workspace(args),
        data_path=args.data,
        overrides=tuple(args.overrides),
        log_level=level,
        budget=budget,
        pretrained=pretrained,
    )
    if report.plan:
        print(f"plan: {report.plan}")
    counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(report.counts.items())) or "no trials"
    print(f"study {report.study_name}: {counts} ({report.trials_this_run} new this run, {report.seconds:.0f} s)")
    if report.stale_failed:
        print(f"  stale trials failed on start-up: {', '.join(map(str, report.stale_failed))}")
    if report.best_number is None:
        print("  best: no COMPLETE trial yet")
    else:
        print(f"  best: trial {report.best_number}, val {tune.study.metric} = {report.best_value:.4f}")
        for key, value in report.best_params.items():
            print(f"    {key} = {value}")
        if report.registered:
            print(f"  registered model: {report.registered}")
        if report.refit:
            print(f"  refit on train + validation: {report.refit} (scored on test by `galaxy10 report`)")
    print(
        f"  MLflow: parent run {report.parent_run_id} (experiment {report.experiment_id}); "
        f"mlflow ui --backend-store-uri {report.tracking_uri}"
    )
    print(
        f"  Optuna: galaxy10 study show {report.study_name} --storage {report.storage_url}; "
        f"optuna-dashboard {report.storage_url}"
    )
    for note in report.notes:
        print(f"  note: {note}")
    return 1 if any(n.startswith("worker ") for n in report.notes) else 0
