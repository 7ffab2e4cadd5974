"""Does class targeting help? ``reference`` vs ``targeted`` at the same epoch budget, over several seeds.

Both recipes (``experiments/configs/reference.yaml`` and ``targeted.yaml``) are shrunk identically for
time: the same image size and crop, the same number of epochs, the same precision, the same seeds; the
data (the synthetic default unless ``--data``) is loaded once and every run trains on the training
split and is scored on the VALIDATION split only (the test split is never touched). Training goes
through ``experiments.training.train`` with a ``NullTracker`` (no MLflow).

Three arms are trained per seed:

- ``reference``: the reference recipe (``reference`` policy, no targeting, no TTA);
- ``policy only``: ``targeted`` minus its targets (``galaxy`` policy + 8-view TTA, no extra copies);
- ``policy, eq. samples``: the same with more epochs, so that it sees as many training samples as the
  targeted arm (a targeted epoch is ~1.3x longer: the extra copies are extra steps);
- ``targeted``: the targeted recipe (``galaxy`` policy, extra copies of disturbed/cigar/spirals, TTA).

Every trained model is scored with and without test-time augmentation (evaluation only), so the
difference between the recipes splits into the policy, TTA, the longer epochs and the targeting
itself. Printed: mean,
std and min-max over seeds of validation accuracy, balanced accuracy and the recall of each targeted
class, with the paired difference targeted - reference; the ablation table; the class mix the input
pipeline really produced per epoch (logged by the run) against the one the multipliers ask for;
samples per epoch, samples seen and best epochs; a check that
the extra copies of one image are augmented afresh; then float32 vs mixed_bfloat16 epoch time and
accuracy for the reference recipe, the two runs back to back in this process.

    python benchmarks/bench_targeting.py             # quick: synthetic 1000 rendered here, 2 seeds, 2 epochs
    python benchmarks/bench_targeting.py --data data/galaxy10_synthetic.h5 --full   # 3 seeds x 4 arms, 10 epochs
    python benchmarks/bench_targeting.py --seeds 5 --epochs 20 --size 128 --crop 88

Numbers on the synthetic file say nothing about real galaxies; timings depend on the machine's load
(printed), compare the figures of one run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np  # noqa: E402
from common import ROOT, add_full_flag, parse_with_full, synthetic_bed

CONFIGS = ROOT / "experiments" / "configs"
TARGETED_SLUGS: tuple[str, ...] = ("disturbed", "cigar", "loose_spiral", "tight_spiral")
METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", *(f"recall_{s}" for s in TARGETED_SLUGS))


@dataclass(frozen=True)
class Arm:
    """A recipe to train: its YAML and the overrides that make it this arm."""

    name: str
    config: Path
    overrides: tuple[str, ...] = ()
    equal_samples: bool = False  # more epochs, so it sees as many samples as the targeted arm


ARMS: tuple[Arm, ...] = (
    Arm("reference", CONFIGS / "reference.yaml"),
    Arm("policy only", CONFIGS / "targeted.yaml", ("augment.targets=null",)),
    Arm("policy, eq. samples", CONFIGS / "targeted.yaml", ("augment.targets=null",), equal_samples=True),
    Arm("targeted", CONFIGS / "targeted.yaml"),
)


@dataclass
class RunRecord:
    """What one training run gave: metrics with and without TTA, timing, epochs, class mixes."""

    arm: str
    seed: int
    precision: str
    tta: bool
    metrics: dict[str, float]
    metrics_other_tta: dict[str, float]
    epoch_seconds: list[float]
    best_epoch: int
    epochs_run: int
    samples_per_epoch: int
    mix: dict[str, float]
    seconds: float
    extra: dict = field(default_factory=dict)


def _epoch_timer():
    """A Keras callback recording each epoch's wall time (training + the validation pass)."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self._start = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.seconds.append(time.perf_counter() - self._start)

    return EpochTimer()


def _scalars(metrics: dict) -> dict[str, float]:
    return {k: float(metrics[k]) for k in METRICS}


def samples_ratio(common: list[str], data) -> float:
    """Samples per targeted epoch / samples per plain epoch (the expected oversampled count)."""
    from experiments.settings.run import load_config
    from experiments.training import resolve_multipliers

    multipliers = resolve_multipliers(load_config(CONFIGS / "targeted.yaml", common), data)
    return 1.0 if multipliers is None else float(multipliers[data.labels[data.train]].mean())


def run_one(arm: Arm, seed: int, common: list[str], data, *, epochs: int | None = None) -> RunRecord:
    """Train ``arm`` with ``seed`` (``epochs`` overrides the common count); score validation with/without TTA."""
    from experiments.settings.run import load_config
    from experiments.tracking.base import NullTracker
    from experiments.training import TrainOptions, evaluate, prepare_run, train

    extra = [] if epochs is None else [f"train.epochs={epochs}"]
    cfg = load_config(arm.config, [*common, *arm.overrides, *extra, f"train.seed={seed}"])
    timer = _epoch_timer()
    start = time.perf_counter()
    result = train(prepare_run(cfg, data), NullTracker(), TrainOptions(callbacks=[timer], log_model=False, verbose=0))
    other = evaluate(result.model, data, data.val, crop=cfg.data.crop, tta=not cfg.augment.tta)
    seconds = time.perf_counter() - start
    mixes = result.fit.class_mixes
    mix = {slug: float(np.mean([m[slug] for m in mixes])) for slug in data.class_slugs} if mixes else {}
    weights = (
        np.ones(len(data.train))
        if result.multipliers is None
        else np.asarray(result.multipliers)[data.labels[data.train]]
    )
    return RunRecord(
        arm=arm.name,
        seed=seed,
        precision=cfg.train.precision,
        tta=cfg.augment.tta,
        metrics=_scalars(result.val_metrics),
        metrics_other_tta=_scalars(other),
        epoch_seconds=timer.seconds,
        best_epoch=result.best_epoch,
        epochs_run=result.fit.epochs_run,
        samples_per_epoch=int(round(weights.sum())),
        mix=mix,
        seconds=seconds,
        extra={"multipliers": result.multipliers},
    )


def stats(values: list[float]) -> str:
    """``mean ± std [min, max]`` (sample std; 0 for one value)."""
    v = np.asarray(values, dtype=np.float64)
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return f"{v.mean():.3f} ± {std:.3f} [{v.min():.3f}, {v.max():.3f}]"


def signed_stats(values: list[float]) -> str:
    """Like :func:`stats` with signs, for differences."""
    v = np.asarray(values, dtype=np.float64)
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return f"{v.mean():+.3f} ± {std:.3f} [{v.min():+.3f}, {v.max():+.3f}]"


def _label(metric: str) -> str:
    return {"accuracy": "accuracy", "balanced_accuracy": "balanced acc"}.get(metric, metric.replace("recall_", "rec. "))


def print_comparison(records: list[RunRecord], a: str, b: str, seeds: list[int]) -> None:
    """Mean ± std [min, max] over seeds of each metric for arms ``a`` and ``b``, and the paired b - a."""
    by = {(r.arm, r.seed): r for r in records}
    print(f"\nvalidation, {len(seeds)} seeds: mean ± std [min, max]")
    print(f"  {'metric':<22}{a:<32}{b:<32}{b} - {a} (paired by seed)")
    for m in METRICS:
        va = [by[a, s].metrics[m] for s in seeds]
        vb = [by[b, s].metrics[m] for s in seeds]
        print(f"  {_label(m):<22}{stats(va):<32}{stats(vb):<32}{signed_stats([y - x for x, y in zip(va, vb)])}")


def print_ablation(records: list[RunRecord], seeds: list[int], arms: tuple[Arm, ...]) -> None:
    """Means over seeds of every trained arm, scored with and without TTA."""
    by = {(r.arm, r.seed): r for r in records}
    print("\nablation (means over seeds; each model scored without and with 8-view TTA, evaluation only)")
    print(f"  {'variant':<34}" + "".join(f"{_label(m):>19}" for m in METRICS))
    base = None
    for arm in arms:
        for tta in (False, True):
            rows = [by[arm.name, s] for s in seeds]
            vals = [r.metrics if r.tta == tta else r.metrics_other_tta for r in rows]
            mean = {m: float(np.mean([v[m] for v in vals])) for m in METRICS}
            base = mean if base is None else base
            recipe = " (recipe)" if rows[0].tta == tta else ""
            name = f"{arm.name}{' + TTA' if tta else ''}{recipe}"
            print(f"  {name:<34}" + "".join(f"{mean[m]:>11.3f} ({mean[m] - base[m]:+.3f})" for m in METRICS))
    print("  (in brackets: minus reference without TTA)")


def print_mix(records: list[RunRecord], data, arms: tuple[Arm, ...]) -> None:
    """Logged per-epoch class mix (mean over epochs and seeds) vs the mix the multipliers ask for."""
    train_counts = np.bincount(data.labels[data.train], minlength=data.num_classes).astype(np.float64)
    print(
        "\nclass mix of the training samples (fraction per epoch: logged by the input pipeline, mean over "
        "epochs and seeds | expected from the multipliers)"
    )
    print(
        f"  {'arm':<20}{'samples/epoch':>14}{'epochs':>7}{'samples seen':>13}  "
        + "".join(f"{s:>24}" for s in TARGETED_SLUGS)
    )
    for arm in arms:
        rows = [r for r in records if r.arm == arm.name and r.precision == records[0].precision]
        mult = rows[0].extra["multipliers"]
        weights = train_counts * (1.0 if mult is None else np.asarray(mult))
        expected = weights / weights.sum()
        cells = []
        for slug in TARGETED_SLUGS:
            k = data.class_slugs.index(slug)
            logged = float(np.mean([r.mix[slug] for r in rows]))
            m = 1.0 if mult is None else float(mult[k])
            cells.append(f"{logged:.3f} | {expected[k]:.3f} (x{m:g})")
        spe, epochs = rows[0].samples_per_epoch, rows[0].epochs_run
        print(f"  {arm.name:<20}{spe:>14d}{epochs:>7d}{spe * epochs:>13d}  " + "".join(f"{c:>24}" for c in cells))


def check_fresh_copies(data, crop: int, seed: int = 0) -> tuple[int, int, int]:
    """One targeted epoch through the real input pipeline: how many repeated images differ between copies.

    Returns ``(images shown more than once, of them with every copy different, identical copy pairs)``.
    """
    from experiments.settings.run import load_config
    from experiments.training import resolve_multipliers
    from experiments.training.fitting import make_augment_fn
    from pipelines.inputs import make_train_dataset

    cfg = load_config(CONFIGS / "targeted.yaml", [f"data.size={data.size}", f"data.crop={crop}"])
    planners: list = []
    ds = make_train_dataset(
        data.images,
        data.labels,
        batch_size=cfg.train.batch_size,
        crop=crop,
        augment_fn=make_augment_fn(cfg),
        multipliers=resolve_multipliers(cfg, data),
        seed=seed,
        indices=data.train,
        planner_out=planners,
    )
    out = np.concatenate([x.numpy() for x, _ in ds])  # the first epoch, in plan order
    rows, _ = planners[0].plan(0)  # the same plan again: it depends only on (seed, epoch)
    repeated, all_differ, identical = 0, 0, 0
    for row in np.unique(rows):
        where = np.flatnonzero(rows == row)
        if len(where) < 2:
            continue
        repeated += 1
        same = sum(np.array_equal(out[i], out[j]) for n, i in enumerate(where) for j in where[n + 1 :])
        identical += same
        all_differ += same == 0
    return repeated, all_differ, identical


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        help="HDF5 file (default: a synthetic set of --synthetic-n images rendered for "
        "the run; the published runs used data/galaxy10_synthetic.h5)",
    )
    parser.add_argument("--synthetic-n", type=int, default=1000, help="images of the default synthetic set")
    parser.add_argument("--seeds", type=int, default=2, help="training seeds 0..N-1 per arm (default 2)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run, the same for every arm (default 2)")
    parser.add_argument("--size", type=int, default=64, help="resize side in px (recipes: 128; default 64)")
    parser.add_argument("--crop", type=int, default=48, help="centre crop in px (recipes: 88; default 48)")
    parser.add_argument(
        "--precision",
        default="mixed_bfloat16",
        choices=("float32", "mixed_bfloat16"),
        help="precision of every arm (default mixed_bfloat16)",
    )
    parser.add_argument("--max-images", type=int, default=None, help="use only the first N images of the file")
    add_full_flag(parser, {"seeds": 3, "epochs": 10})
    args = parse_with_full(parser)
    if args.seeds < 1 or args.epochs < 1:
        parser.error("--seeds and --epochs must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("experiments.training", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    if args.data is None:
        with tempfile.TemporaryDirectory(prefix="bench-targeting-") as tmp:
            os.environ["GALAXY10_CACHE"] = str(Path(tmp) / "cache")
            return measure(args, synthetic_bed(Path(tmp), n=args.synthetic_n, size=max(64, args.size)))
    data_path = Path(args.data)
    if not data_path.is_file():
        print(
            f"bench_targeting: error: {data_path} not found; render it with `.venv/bin/galaxy10 data synth "
            f"--n 4000 --size 256 --seed 0 --out {data_path}` or leave out --data",
            file=sys.stderr,
        )
        return 2
    return measure(args, data_path)


def measure(args: argparse.Namespace, data_path: Path) -> int:
    """The arms, the ablation and the precision comparison on ``data_path``."""

    import tensorflow as tf

    from core.errors import Galaxy10Error
    from experiments.settings.run import load_config
    from experiments.training import load_training_data

    common = [
        f"data.size={args.size}",
        f"data.crop={args.crop}",
        f"train.epochs={args.epochs}",
        f"train.precision={args.precision}",
    ]
    if args.max_images is not None:
        common.append(f"data.max_images={args.max_images}")
    try:
        base = load_config(CONFIGS / "reference.yaml", common)
        data = load_training_data(base.data, data_path)
    except Galaxy10Error as err:
        print(f"bench_targeting: error: {err}", file=sys.stderr)
        return 2
    seeds = list(range(args.seeds))
    val_counts = np.bincount(data.labels[data.val], minlength=data.num_classes)
    print(f"data: {data.describe()}")
    print(
        "validation images of the targeted classes: "
        + ", ".join(f"{s} {val_counts[data.class_slugs.index(s)]}" for s in TARGETED_SLUGS)
        + " (one cigar image = {:.3f} of its recall)".format(1 / max(1, val_counts[data.class_slugs.index("cigar")]))
    )
    print(
        f"both recipes shrunk identically: {' '.join(common)}; seeds {seeds}; the same precision "
        f"({args.precision}) for every arm; early stopping as in the recipes (patience {base.train.patience} "
        f"on {base.train.monitor}, best-{base.train.monitor} weights restored); validation split only"
    )
    print(
        f"cpus: {os.cpu_count()}, TF intra-op threads {tf.config.threading.get_intra_op_parallelism_threads()}, "
        f"load average before: {os.getloadavg()[0]:.2f}"
    )

    ratio = samples_ratio(common, data)
    control_epochs = max(args.epochs, int(round(args.epochs * ratio)))
    print(
        f"a targeted epoch has {ratio:.3f}x the samples of a plain one; the equal-samples control trains "
        f"{control_epochs} epochs"
    )
    records: list[RunRecord] = []
    total = len(seeds) * len(ARMS) + 1
    started = time.perf_counter()
    fp32 = None
    for seed in seeds:
        for arm in ARMS:
            rec = run_one(arm, seed, common, data, epochs=control_epochs if arm.equal_samples else None)
            records.append(rec)
            print(
                f"[{len(records) + (fp32 is not None)}/{total}] {arm.name:<20} seed {seed}: val accuracy "
                f"{rec.metrics['accuracy']:.3f}, balanced {rec.metrics['balanced_accuracy']:.3f}, best epoch "
                f"{rec.best_epoch}/{rec.epochs_run}, {rec.seconds:.0f} s",
                flush=True,
            )
            if seed == seeds[0] and arm.name == "reference":
                # float32 vs mixed_bfloat16: the other precision right after this run, so both see the same load
                other = "float32" if args.precision == "mixed_bfloat16" else "mixed_bfloat16"
                fp32 = run_one(arm, seed, [*common, f"train.precision={other}"], data)
                print(
                    f"[{len(records) + 1}/{total}] {arm.name:<20} seed {seed} ({other}): val accuracy "
                    f"{fp32.metrics['accuracy']:.3f}, {fp32.seconds:.0f} s",
                    flush=True,
                )

    print_comparison(records, "reference", "targeted", seeds)
    print_ablation(records, seeds, ARMS)
    print_mix(records, data, ARMS)
    print("\nbest epochs (checkpoint on the recipes' monitor) and epoch times")
    for arm in ARMS:
        rows = [r for r in records if r.arm == arm.name]
        print(
            f"  {arm.name:<20} best epoch per seed {[r.best_epoch for r in rows]} of {rows[0].epochs_run}, "
            f"median epoch {np.median([t for r in rows for t in r.epoch_seconds[1:] or r.epoch_seconds]):.1f} s"
        )
    repeated, all_differ, identical = check_fresh_copies(data, args.crop)
    print(
        f"extra copies freshly augmented: {all_differ} of {repeated} images shown more than once in a targeted "
        f"epoch had every copy different ({identical} identical copy pairs)"
    )

    # Precision: the same recipe and seed, back to back.
    bf = records[0] if records[0].precision == "mixed_bfloat16" else fp32
    f32 = fp32 if bf is records[0] else records[0]
    t_bf = float(np.median(bf.epoch_seconds[1:] or bf.epoch_seconds))
    t_f32 = float(np.median(f32.epoch_seconds[1:] or f32.epoch_seconds))
    print(
        f"\nprecision (reference recipe, seed {seeds[0]}, the two runs back to back; median epoch time without "
        "the first epoch, which includes tracing)"
    )
    print(f"  {'precision':<16}{'epoch s':>9}{'accuracy':>10}{'balanced':>10}")
    for rec, t in ((f32, t_f32), (bf, t_bf)):
        m = rec.metrics
        print(f"  {rec.precision:<16}{t:>9.2f}{m['accuracy']:>10.3f}{m['balanced_accuracy']:>10.3f}")
    print(
        f"  epoch time ratio float32 / mixed_bfloat16: {t_f32 / t_bf:.2f}x; accuracy difference bf16 - fp32: "
        f"{bf.metrics['accuracy'] - f32.metrics['accuracy']:+.3f} (one seed)"
    )
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
