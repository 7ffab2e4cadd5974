"""TPE + median pruning vs random search without pruning, at an equal compute budget (total epochs).

Both arms search the space of ``experiments/configs/tune_quick.yaml`` (learning rate, dropout,
depth/width, batch size, augmentation policy; 64 px images cropped to 48 px, at most 6 epochs per
trial) on the same data, loaded once. The TPE arm uses that study's sampler and pruner (seeded
multivariate TPE, median pruning); the random arm a seeded random sampler and no pruning. Each arm
runs trials until it has trained ``--budget`` epochs in total; the last trial is cut to the epochs
left, so both arms spend exactly the same number.
Printed per arm: best validation accuracy of a COMPLETE trial, epochs spent, trials (complete /
pruned), wall time; then the ratios, and how many epochs TPE+pruning needed to match random
search's final best.

    python benchmarks/bench_tuning.py                      # quick: synthetic 800 rendered here, 12 epochs per arm
    python benchmarks/bench_tuning.py --full --data FILE   # 48 epochs per arm (8 full random trials)

No MLflow: trials log to a NullTracker, so only training time counts. Timings depend on the
machine; compare the figures of one run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from common import ROOT, add_full_flag, parse_with_full, synthetic_bed

CONFIG = ROOT / "experiments" / "configs" / "tune_quick.yaml"


@dataclass
class Arm:
    """One search strategy and what it achieved."""

    name: str
    sampler: object  # experiments.settings.search_space.SamplerConfig
    pruner: object  # experiments.settings.search_space.PrunerConfig
    best: float = float("nan")
    epochs: int = 0
    complete: int = 0
    pruned: int = 0
    seconds: float = 0.0
    trace: list[tuple[int, float]] | None = None  # (cumulative epochs, best so far) after each COMPLETE trial
    params: list[dict] | None = None  # every trial's parameters, in order


def run_arm(arm: Arm, tune, data, budget: int, workdir: Path) -> Arm:
    """Run trials of ``arm`` until ``budget`` epochs are spent; fill in its results."""
    from experiments.settings.search_space import suggest
    from experiments.settings.trial import resolve_run_config
    from experiments.tracking.base import NullTracker
    from experiments.training import TrainOptions, prepare_run, train
    from experiments.tuning.objective import TrialPruned, pruning_callback
    from experiments.tuning.storage import open_storage
    from experiments.tuning.study import open_study

    study_cfg = replace(
        tune.study,
        name=arm.name,
        storage=f"sqlite:///{workdir / (arm.name + '.db')}",
        sampler=arm.sampler,
        pruner=arm.pruner,
    )
    arm_tune = replace(tune, study=study_cfg)
    study = open_study(arm_tune, open_storage(study_cfg.storage))
    max_epochs = resolve_run_config(arm_tune, {})[0].train.epochs
    arm.trace, arm.params = [], []
    start = time.perf_counter()

    def objective(trial) -> float:
        params = suggest(trial, arm_tune.space)
        arm.params.append(params)
        epochs = min(max_epochs, budget - arm.epochs)
        cfg, _ = resolve_run_config(arm_tune, params, extra_overrides=[f"train.epochs={epochs}"])
        report = pruning_callback(trial, "accuracy")

        def count_and_report(epoch: int, metrics) -> None:
            arm.epochs += 1
            report(epoch, metrics)

        try:
            result = train(
                prepare_run(cfg, data),
                NullTracker(),
                TrainOptions(epoch_callback=count_and_report, log_model=False, verbose=0),
            )
        except TrialPruned:
            arm.pruned += 1
            raise
        value = float(result.val_metrics["accuracy"])
        arm.complete += 1
        arm.best = value if arm.complete == 1 else max(arm.best, value)
        arm.trace.append((arm.epochs, arm.best))
        logging.info(
            "%s trial %d: val accuracy %.4f after %d epochs; %d/%d epochs spent",
            arm.name,
            trial.number,
            value,
            result.fit.epochs_run,
            arm.epochs,
            budget,
        )
        return value

    while arm.epochs < budget:
        study.optimize(objective, n_trials=1)
    arm.seconds = time.perf_counter() - start
    return arm


def epochs_to_reach(trace: list[tuple[int, float]], target: float) -> int | None:
    """First cumulative epoch count at which the best-so-far reached ``target``."""
    return next((epochs for epochs, best in trace if best >= target), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", help="HDF5 file (default: a synthetic set of --synthetic-n images rendered for the run)"
    )
    parser.add_argument("--synthetic-n", type=int, default=800, help="images of the default synthetic set")
    parser.add_argument("--budget", type=int, default=12, help="epochs per arm (default 12 = 2 full random trials)")
    add_full_flag(parser, {"budget": 48})
    args = parse_with_full(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("experiments.training", "pipelines", "optuna", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from experiments.settings.trial import resolve_run_config
    from experiments.settings.tune import load_tune_config
    from experiments.training import load_training_data

    tune = load_tune_config(CONFIG)
    base_cfg, _ = resolve_run_config(tune, {})
    with tempfile.TemporaryDirectory(prefix="bench-tuning-data-") as tmp:
        os.environ["GALAXY10_CACHE"] = str(Path(tmp) / "cache")
        data_path = args.data or str(synthetic_bed(Path(tmp), n=args.synthetic_n, size=64))
        data = load_training_data(base_cfg.data, data_path)
        return compare(args, tune, base_cfg, data)


def compare(args: argparse.Namespace, tune, base_cfg, data) -> int:  # noqa: ANN001
    """Both arms at ``args.budget`` epochs each on ``data``; prints the table and the ratios."""
    from experiments.settings.tune import PrunerConfig, SamplerConfig
    from experiments.tuning.samplers import describe

    print(f"data: {data.describe()}")
    print(
        f"search space of {CONFIG.name}: {', '.join(tune.space.names)}; <= {base_cfg.train.epochs} epochs/trial, "
        f"{base_cfg.data.size} px -> {base_cfg.data.crop} px; budget {args.budget} epochs per arm"
    )
    arms = [
        Arm("tpe+pruning", sampler=tune.study.sampler, pruner=tune.study.pruner),
        Arm("random", sampler=SamplerConfig("random", {"seed": 0}), pruner=PrunerConfig("none", {})),
    ]
    for arm in arms:
        print(f"{arm.name}: sampler {describe(arm.sampler)}, pruner {describe(arm.pruner)}")
    with tempfile.TemporaryDirectory(prefix="bench-tuning-") as tmp:
        for arm in arms:
            run_arm(arm, tune, data, args.budget, Path(tmp))
    print(f"\n{'arm':<12} {'best val acc':>12} {'epochs':>7} {'complete':>9} {'pruned':>7} {'wall s':>8}")
    for arm in arms:
        print(
            f"{arm.name:<12} {arm.best:>12.4f} {arm.epochs:>7d} {arm.complete:>9d} {arm.pruned:>7d} {arm.seconds:>8.0f}"
        )
    tpe, rnd = arms
    print(f"\nbest val accuracy ratio, TPE+pruning / random: {tpe.best / rnd.best:.3f}")
    print(f"epochs spent ratio, TPE+pruning / random: {tpe.epochs / rnd.epochs:.3f}")
    shared = next(
        (i for i, (a, b) in enumerate(zip(tpe.params, rnd.params)) if a != b), min(len(tpe.params), len(rnd.params))
    )
    print(
        f"the first {shared} trials of both arms drew the same parameters (TPE starts with seeded random "
        "sampling), so the arms differ only after them"
    )
    reach = epochs_to_reach(tpe.trace or [], rnd.best)
    if reach is None:
        print(f"TPE+pruning did not reach random search's best ({rnd.best:.4f}) within {tpe.epochs} epochs")
    else:
        print(
            f"TPE+pruning reached random search's best ({rnd.best:.4f}) after {reach} of {tpe.epochs} epochs "
            f"(ratio {reach / rnd.epochs:.3f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
