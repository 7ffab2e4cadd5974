"""The platform's whole workflow against its own reference recipe, on the same split, at a stated budget.

For each test bed and seed: ``galaxy10 train`` with ``reference.yaml`` as shipped (the reference recipe at its
own resolution and epoch budget) and the full workflow - ``galaxy10 tune`` (whose trial 0 is that same recipe)
(``--trials N`` of a tuning config, cross-validated selection where the
config's ``study.cv_folds`` says so, the refit) -> ``galaxy10 ensemble`` -> ``galaxy10 report``. Every model
is scored once on the test split of the same saved split: test accuracy, balanced accuracy and the recall
of the rarest training class, with 95% bootstrap CIs over the test images. Everything runs in a temporary
folder through the CLI (its own MLflow and Optuna stores); nothing is written elsewhere.

Test beds: ``gz2`` (the real Galaxy Zoo 2 set, ``../shared/data/realsamples/gz2_hart16_sdss``, 928 SDSS
galaxies in 6 classes), ``rings`` (the real DECaLS ring set with rings made rare: 30 rings vs 235 others),
``synthetic`` (``galaxy10 data synth``, SYNTHETIC, ``--synthetic-n`` images).

    python benchmarks/bench_workflow.py            # quick: synthetic 600, 1 seed, 2 trials, 2 epochs
    python benchmarks/bench_workflow.py --full     # gz2 and rings, 2 seeds, 4 trials, 8 epochs
    python benchmarks/bench_workflow.py --tune-config experiments/configs/tune_backbones.yaml   # backbone arm
    python benchmarks/bench_workflow.py --beds gz2 --seeds 2 --budget-factor 4   # the catalog path, --budget
    python benchmarks/bench_workflow.py --beds gz2 --seeds 2 --budget-factor 1   # at equal wall-clock (no
                                                                                   # reference trial: no room)
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from common import REALSAMPLES, ROOT, add_full_flag, parse_with_full

G10 = [sys.executable, "-m", "experiments.cli", "-q"]
#: Shares of ``--budget-factor`` x the reference's wall time given to ``tune --budget`` and
#: ``ensemble --budget`` (the rest is the report and the commands' start-up).
TUNE_SHARE, ENSEMBLE_SHARE = 0.82, 0.08
#: Below this ``--budget-factor`` the study cannot hold its reference trial (about 1x by itself) and runs
#: without it (``study.reference_trial: false``): the equal-wall-clock arm.
REFERENCE_TRIAL_MIN_FACTOR = 2.0


def galaxy10(*args: str, cwd: Path, env: dict[str, str]) -> str:
    """Run one CLI command in ``cwd``; its stdout, or SystemExit with its last lines on failure."""
    proc = subprocess.run([*G10, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench_workflow: `galaxy10 {' '.join(args)}` failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def make_bed(name: str, work: Path, env: dict[str, str], synthetic_n: int, size: int = 128) -> Path:
    """The test bed's HDF5 file in ``work`` (imported from the real samples at ``size`` px, or synthetic)."""
    out = work / f"{name}.h5"
    px = str(size)
    if name == "gz2":
        src = REALSAMPLES / "gz2_hart16_sdss"
        galaxy10("data", "import", str(src), "--labels", str(src / "labels.csv"), "--size", px, "--out",
                 str(out), cwd=work, env=env)
    elif name == "rings":
        src = REALSAMPLES / "gz_decals_zoobot_rings"
        with (src / "catalog.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        rings = [r for r in rows if r["ring"] == "1"][:30]
        others = [r for r in rows if r["ring"] == "0"]
        labels = work / "rare_rings.csv"
        labels.write_text("file,label\n" + "".join(
            f"{r['file']},{'ring' if r['ring'] == '1' else 'not_ring'}\n" for r in rings + others))
        galaxy10("data", "import", str(src), "--labels", str(labels), "--size", px, "--out", str(out),
                 cwd=work, env=env)
    elif name == "rings_all":  # every ring and non-ring (235 each): a ring detector's best case
        src = REALSAMPLES / "gz_decals_zoobot_rings"
        galaxy10("data", "import", str(src), "--labels", str(src / "catalog.csv"), "--label-column", "ring",
                 "--class-names", "not_ring,ring", "--size", px, "--out", str(out), cwd=work, env=env)
    elif name == "synthetic":
        galaxy10("data", "synth", "--n", str(synthetic_n), "--size", px, "--seed", "0", "--out", str(out),
                 cwd=work, env=env)
    else:
        raise SystemExit(f"bench_workflow: unknown test bed {name!r}; use gz2, rings, rings_all or synthetic")
    return out


def score(model_uri: str, data_path: Path, tracking_uri: str, rows: np.ndarray) -> np.ndarray:
    """Test-split probabilities of a logged model through the one predictor."""
    from experiments.serving.predictor import load_predictor, predict_file_rows

    return predict_file_rows(load_predictor(model_uri, tracking_uri=tracking_uri), data_path, rows)


def metrics_with_ci(y: np.ndarray, probs: np.ndarray, rare: int, n_classes: int, seed: int,
                    resamples: int = 1000) -> dict[str, tuple[float, float, float]]:
    """Accuracy, balanced accuracy and rare-class recall, each with a 95% bootstrap CI over test images."""
    pred = probs.argmax(axis=1)
    rng = np.random.default_rng(seed)

    def values(idx: np.ndarray) -> tuple[float, float, float]:
        yt, yp = y[idx], pred[idx]
        present = [c for c in range(n_classes) if (yt == c).any()]
        recalls = [float((yp[yt == c] == c).mean()) for c in present]
        rare_recall = float((yp[yt == rare] == rare).mean()) if (yt == rare).any() else float("nan")
        return float((yt == yp).mean()), float(np.mean(recalls)), rare_recall

    point = values(np.arange(len(y)))
    boot = np.array([values(rng.integers(0, len(y), len(y))) for _ in range(resamples)])
    out = {}
    for i, key in enumerate(("accuracy", "balanced_accuracy", "rare_recall")):
        lo, hi = np.nanpercentile(boot[:, i], [2.5, 97.5])
        out[key] = (point[i], float(lo), float(hi))
    return out


def study_config(args: argparse.Namespace, folder: Path) -> Path:
    """The tuning YAML of the workflow arm: ``--tune-config``, its trials' budget changed where
    ``--size``, ``--crop`` or ``--epochs`` say so (in the YAML, so the study's reference trial keeps the
    reference recipe's own budget)."""
    from experiments.settings.run import read_yaml

    source = ROOT / args.tune_config
    doc = read_yaml(source)
    if doc.get("base") is not None:
        doc["base"] = str((source.parent / doc["base"]).resolve())
    run = doc.setdefault("run", {})
    for section, key, value in (("data", "size", args.size), ("data", "crop", args.crop),
                                ("train", "epochs", args.epochs)):
        if value is not None:
            run.setdefault(section, {})[key] = value
    if args.budget_factor and args.budget_factor < REFERENCE_TRIAL_MIN_FACTOR:
        # the reference trial alone takes about the whole of such a budget: the study runs without it
        doc.setdefault("study", {})["reference_trial"] = False
    out = folder / "tune.yaml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def run_bed(name: str, seed: int, args: argparse.Namespace, work: Path) -> list[dict]:
    """The reference recipe and the workflow on one bed and seed; one row per scored model."""
    from pipelines.reader import Galaxy10File
    from pipelines.splits import ensure_split

    folder = work / f"{name}-seed{seed}"
    folder.mkdir()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    env = {**os.environ, "GALAXY10_CACHE": str(folder / "cache"), "MLFLOW_TRACKING_URI": uri,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    data = make_bed(name, folder, env, args.synthetic_n)
    seeds = ["--set", f"train.seed={seed}", "--set", f"data.split_seed={seed}"]  # the same split for all
    timings = {}
    t0 = time.perf_counter()
    out = galaxy10("train", "--config", str(ROOT / "experiments/configs/reference.yaml"), "--data", str(data),
                   "--json", *seeds, cwd=folder, env=env)
    reference = json.loads(out)  # reference.yaml as shipped: its own resolution and epochs
    timings["reference"] = time.perf_counter() - t0
    study = f"bench-{name}-{seed}"
    t0 = time.perf_counter()
    if args.budget_factor:  # the README's catalog path: budgets, not trial counts
        total = args.budget_factor * timings["reference"]
        tune_budget, ensemble_budget = TUNE_SHARE * total, ENSEMBLE_SHARE * total
        out = galaxy10("tune", "--config", str(study_config(args, folder)), "--data", str(data), "--study", study,
                       "--budget", f"{tune_budget:.0f}s", "--storage", f"sqlite:///{folder / 'optuna.db'}", *seeds,
                       cwd=folder, env=env)
        print("  " + next((line for line in out.splitlines() if line.startswith("plan:")), "no plan printed"),
              flush=True)
        budget_args = ["--budget", f"{ensemble_budget:.0f}s"]
    else:
        galaxy10("tune", "--config", str(study_config(args, folder)), "--data", str(data), "--study", study,
                 "--trials", str(args.trials), "--storage", f"sqlite:///{folder / 'optuna.db'}", *seeds,
                 cwd=folder, env=env)
        budget_args = []
    comparison = galaxy10("ensemble", "--study", study, "--config", str(ROOT / "experiments/configs/ensemble.yaml"),
                          "--storage", f"sqlite:///{folder / 'optuna.db'}", *budget_args, cwd=folder, env=env)
    print(f"  {name} seed {seed}: the ensemble comparison (validation)\n{comparison}", flush=True)
    galaxy10("report", "--study", study, "--out", str(folder / "report"), "--storage",
             f"sqlite:///{folder / 'optuna.db'}", "--bootstrap", "200", cwd=folder, env=env)
    timings["workflow"] = time.perf_counter() - t0
    print(f"  {name} seed {seed}: reference {timings['reference']:.0f} s, workflow {timings['workflow']:.0f} s "
          f"(x{timings['workflow'] / timings['reference']:.1f} the reference's wall time)", flush=True)
    report = json.loads((folder / "report" / "report.json").read_text())
    best = report.get("best_trial", {})
    print(f"  {name} seed {seed}: study best trial {best.get('number')} {best.get('params')}; ensemble champion "
          f"{report['ensemble']['winner']}", flush=True)

    with Galaxy10File(data) as f:
        labels = np.asarray(f.labels()).astype(np.int64)
        class_names = list(f.info.class_names) if getattr(f.info, "class_names", None) else None
    split = ensure_split(data, seed=seed)
    rows = np.asarray(split.test)
    y = labels[rows]
    n_classes = int(labels.max()) + 1
    rare = int(np.argmin(np.bincount(labels[split.train], minlength=n_classes)))
    models = {"reference recipe": (reference["model_uri"], timings["reference"])}
    for key, m in report["models"].items():
        if key != "baseline" and m.get("model_uri"):
            models[f"workflow: {m['label']}"] = (m["model_uri"], timings["workflow"])
    results = []
    for label, (model_uri, seconds) in models.items():
        probs = score(model_uri, data, uri, rows)
        results.append({"bed": name, "seed": seed, "model": label, "seconds": seconds,
                        "rare_class": class_names[rare] if class_names else str(rare),
                        "n_test": len(rows), **metrics_with_ci(y, probs, rare, n_classes, seed)})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beds", default="synthetic", help="comma-separated: gz2, rings, synthetic")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--trials", type=int, default=2, help="trials of the study (the workflow's budget)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the study's trials (the reference recipe, "
                        "alone and as the study's trial 0, keeps its own; default: the tune config's)")
    parser.add_argument("--size", type=int, help="image size of the study's trials (default: the tune config's)")
    parser.add_argument("--crop", type=int, help="crop of the study's trials (default: the tune config's)")
    parser.add_argument("--tune-config", default="experiments/configs/tune_catalog.yaml")
    parser.add_argument("--budget-factor", type=float,
                        help="run the workflow with `tune --budget` and `ensemble --budget` summing to this many times "
                             "the reference's measured wall time (the README's catalog path; --trials is then unused)")
    parser.add_argument("--synthetic-n", type=int, default=600)
    parser.add_argument("--json-out", help="also write every row as JSON to this file")
    add_full_flag(parser, {"beds": "gz2,rings", "seeds": 2, "trials": 4, "epochs": 8, "synthetic_n": 1500})
    args = parse_with_full(parser)
    if args.budget_factor and "--epochs" not in sys.argv[1:]:
        args.epochs = None  # a budgeted workflow runs the config's epochs (its plan may cut them)
    beds = [b.strip() for b in args.beds.split(",") if b.strip()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-workflow-") as tmp:
        for bed in beds:
            for seed in range(args.seeds):
                start = time.perf_counter()
                bed_rows = run_bed(bed, seed, args, Path(tmp))
                rows += bed_rows
                for r in bed_rows:
                    print(f"  {bed} seed {seed} {r['model']:<45} acc {r['accuracy'][0]:.3f} "
                          f"bal {r['balanced_accuracy'][0]:.3f} rare({r['rare_class']}) {r['rare_recall'][0]:.2f}",
                          flush=True)
                print(f"  {bed} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))
    if args.budget_factor:
        print(f"\nbudget: reference.yaml as shipped; the workflow with --budget = {args.budget_factor:g} x the "
              "reference's "
              f"wall time ({TUNE_SHARE:.0%} tune, {ENSEMBLE_SHARE:.0%} ensemble)")
    print(f"\nbudget: reference.yaml as shipped; {args.trials} trials of {args.tune_config} (trial 0 the reference "
          f"recipe), their epochs {args.epochs or 'as configured'}, size {args.size or 'as configured'}, crop "
          f"{args.crop or 'as configured'}; seeds 0..{args.seeds - 1} (split seed = seed)")
    print("\n| bed | model | seeds | test accuracy [95% CI] | balanced accuracy [95% CI] | "
          "rare-class recall [95% CI] |")
    print("|---|---|---|---|---|---|")
    for bed in beds:
        for model in dict.fromkeys(r["model"] for r in rows if r["bed"] == bed):
            rs = [r for r in rows if r["bed"] == bed and r["model"] == model]

            def cell(key: str, rs: list[dict] = rs) -> str:
                vals = [r[key] for r in rs]
                return " / ".join(f"{v[0]:.3f} [{v[1]:.2f}, {v[2]:.2f}]" for v in vals)

            print(f"| {bed} | {model} | {len(rs)} | {cell('accuracy')} | {cell('balanced_accuracy')} | "
                  f"{cell('rare_recall')} ({rs[0]['rare_class']}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
