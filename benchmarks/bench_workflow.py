"""The catalog path against the reference recipe as shipped, judged by repeated cross-validation.

Runs ``galaxy10 evaluate`` on a whole test bed: ``reference.yaml`` as shipped (its own resolution and epoch
budget, trained on each fold) against the README's catalog path (``tune_catalog.yaml`` with ``tune --budget``
and ``ensemble --budget`` summing to ``--budget-factor`` x the reference's wall time on the same fold; the
champion it registers predicts the held-out fold). Every image is held out once per repetition; the paired
differences carry Nadeau-Bengio corrected intervals (see ``galaxy10 evaluate``).

Test beds: ``gz2`` (the real Galaxy Zoo 2 set, ``../shared/data/realsamples/gz2_hart16_sdss``, 928 SDSS
galaxies in 6 classes, imported at 128 px), ``rings`` (the real DECaLS ring set with rings made rare: 30 rings
vs 235 others), ``synthetic`` (``galaxy10 data synth``, SYNTHETIC, ``--synthetic-n`` images).

    python benchmarks/bench_workflow.py                      # quick: synthetic 300, 1 x 3 folds, 2x budget
    python benchmarks/bench_workflow.py --bed gz2 --repeats 3 --folds 5 --budget-factor 4 --work /tmp/wf4
    python benchmarks/bench_workflow.py --full --repeats 1 --unlabeled POOL --work /tmp/wfu   # with vs without

With ``--unlabeled POOL`` a third recipe joins: the same catalog path with ``study.unlabeled: [POOL]`` (``tune
--unlabeled``: a quarter of the tuning budget pretrains the first start point's backbone on the pool, and the
pretrained start point is queued after the reference trial), at the same budget; the catalog path without the
pool is then the first recipe, the baseline of the paired differences.

With ``--work DIR`` the evaluation's stores stay there, and the same command continues a killed run (or adds
repetitions to a finished one); without it everything runs in a temporary folder.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml
from common import ROOT, add_full_flag, cli_env, galaxy10, make_bed, parse_with_full

#: Below this ``--budget-factor`` the study cannot hold its reference trial (about 1x by itself) and runs
#: without it (``study.reference_trial: false``): the equal-wall-clock arm.
REFERENCE_TRIAL_MIN_FACTOR = 2.0


def recipes(work: Path, factor: float, unlabeled: str | None = None) -> list[str]:
    """``--recipe`` arguments: the shipped reference, and the shipped catalog tuning config (copied unchanged,
    but without its reference trial below :data:`REFERENCE_TRIAL_MIN_FACTOR`, where it would not fit); with
    ``unlabeled``, first the catalog path, then it with the pool, then the reference."""
    configs = ROOT / "experiments" / "configs"
    catalog = configs / "tune_catalog.yaml"
    doc = yaml.safe_load(catalog.read_text())
    doc["base"] = str((configs / doc["base"]).resolve())
    if factor < REFERENCE_TRIAL_MIN_FACTOR:
        doc.setdefault("study", {})["reference_trial"] = False
        catalog = work / "tune_catalog_no_reference.yaml"
        catalog.write_text(yaml.safe_dump(doc, sort_keys=False))
    reference = ["--recipe", f"reference={configs / 'reference.yaml'}"]
    if unlabeled is None:
        return [*reference, "--recipe", f"catalog={catalog}"]
    doc.setdefault("study", {})["unlabeled"] = [str(Path(unlabeled).resolve())]
    with_pool = work / "tune_catalog_unlabeled.yaml"
    with_pool.write_text(yaml.safe_dump(doc, sort_keys=False))
    return ["--recipe", f"catalog={catalog}", "--recipe", f"catalog-unlabeled={with_pool}", *reference]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bed", default="synthetic", help="gz2, rings or synthetic")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument(
        "--budget-factor",
        type=float,
        default=2.0,
        help="the catalog path's budget per fold, in multiples of the reference's wall time there",
    )
    parser.add_argument("--synthetic-n", type=int, default=300)
    parser.add_argument("--unlabeled", help="an unlabelled pool: adds the catalog path with --unlabeled POOL")
    parser.add_argument("--work", help="keep the stores here (resumable); default: a temporary folder")
    add_full_flag(parser, {"bed": "gz2", "repeats": 3, "folds": 5, "budget_factor": 4.0})
    args = parse_with_full(parser)
    with tempfile.TemporaryDirectory(prefix="bench-workflow-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        env = cli_env(work)
        data = make_bed(args.bed, work, env, synthetic_n=args.synthetic_n)
        folder = work / f"eval-{args.bed}{'-unlabeled' * bool(args.unlabeled)}"
        out = galaxy10(
            "evaluate",
            "--data",
            str(data),
            *recipes(work, args.budget_factor, args.unlabeled),
            "--budget",
            f"{args.budget_factor:g}x",
            "--repeats",
            str(args.repeats),
            "--folds",
            str(args.folds),
            "--out",
            str(folder),
            cwd=work,
            env=env,
        )
        print(out, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
