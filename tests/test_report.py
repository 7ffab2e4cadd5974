"""Best-model reports: bootstrap intervals, atomic output, errors, and a report of a real tiny study."""

from __future__ import annotations

import base64
import html as html_lib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import TinyStudy, count_registry_lookups, keep_mlflow_tracking_uri, tiny_study_in
from sklearn.metrics import f1_score

from core.errors import DataError
from experiments.cli import main as cli_main
from experiments.reporting.bootstrap import accuracy_macro_f1, bootstrap_ci, confusion_stack
from experiments.reporting.build import build_report
from experiments.reporting.scoring import SCORING_RUN_NAME

SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "smoke.yaml"


# --------------------------------------------------------------------------------------------
# Pure pieces
# --------------------------------------------------------------------------------------------
def test_accuracy_macro_f1_matches_sklearn() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 10, 300)
    pred = np.where(rng.random(300) < 0.6, y, rng.integers(0, 10, 300))
    pred[pred == 4] = 5  # class 4 never predicted: F1 0 for it
    counts = confusion_stack(y, pred, np.arange(300)[None, :], 10)[0]
    acc, f1 = accuracy_macro_f1(counts)
    assert acc == pytest.approx(np.mean(y == pred))
    assert f1 == pytest.approx(f1_score(y, pred, labels=np.arange(10), average="macro", zero_division=0))


def test_bootstrap_intervals_bracket_the_estimate_and_are_seeded() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 1000)
    good = np.where(rng.random(1000) < 0.7, y, (y + 1) % 10)
    perfect = y.copy()
    ci = bootstrap_ci(y, {"good": good, "perfect": perfect}, 10, n_resamples=500, seed=3)
    lo, hi = ci["good"]["accuracy"]
    acc = np.mean(good == y)
    # binomial standard error at n=1000, p=0.7 is ~0.0145: the 95% interval is about +-0.028
    assert lo < acc < hi
    assert 0.035 < hi - lo < 0.08
    f_lo, f_hi = ci["good"]["macro_f1"]
    assert f_lo < f1_score(y, good, average="macro") < f_hi
    assert ci["perfect"] == {"accuracy": (1.0, 1.0), "macro_f1": (1.0, 1.0)}
    assert bootstrap_ci(y, {"good": good}, 10, n_resamples=500, seed=3)["good"] == ci["good"]
    assert bootstrap_ci(y, {"good": good}, 10, n_resamples=500, seed=4)["good"] != ci["good"]


def test_bootstrap_rejects_mismatched_predictions() -> None:
    with pytest.raises(DataError, match=r"model 'm' predicted \(4,\) labels for \(5,\) test images"):
        bootstrap_ci(np.zeros(5, dtype=int), {"m": np.zeros(4, dtype=int)}, 10, n_resamples=10)


# --------------------------------------------------------------------------------------------
# Errors: one clear line each
# --------------------------------------------------------------------------------------------
def test_missing_tracking_db_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = cli_main(["report", "--study", "s", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == (
        f"galaxy10: error: no MLflow tracking database at {tmp_path / 'none.db'}; run `galaxy10 tune` "
        "first or pass --tracking-uri of the store the study logged to"
    )
    assert not (tmp_path / "none.db").exists()


def _empty_tracking_db(tmp_path: Path) -> str:
    """A tracking-store file that exists (the study errors come before MLflow reads it)."""
    (tmp_path / "mlflow.db").touch()
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_unknown_study_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import optuna

    uri = _empty_tracking_db(tmp_path)
    optuna.create_study(study_name="other", storage="sqlite:///optuna.db")
    capsys.readouterr()
    code = cli_main(["report", "--study", "nope", "--tracking-uri", uri])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0] == ("galaxy10: error: study 'nope' not found in sqlite:///optuna.db; known studies: other")


def test_study_without_completed_trial_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import optuna

    uri = _empty_tracking_db(tmp_path)
    study = optuna.create_study(study_name="s", storage="sqlite:///optuna.db")
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)
    capsys.readouterr()
    code = cli_main(["report", "--study", "s", "--tracking-uri", uri])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0] == (
        "galaxy10: error: study 's' has no COMPLETE trial (1 fail, 1 pruned); finish one with "
        "`galaxy10 tune --study s ...` before asking for a report"
    )


def test_missing_optuna_storage_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    uri = _empty_tracking_db(tmp_path)
    capsys.readouterr()
    code = cli_main(["report", "--study", "s", "--tracking-uri", uri])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("galaxy10: error: no Optuna storage at optuna.db; run galaxy10 tune first")


# --------------------------------------------------------------------------------------------
# A real tiny study, reported
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyStudy]:
    """A 2-trial study (smoke CNN, 48 px / crop 32) on a 200-image synthetic file, via the tuning code."""
    with tiny_study_in(
        tmp_path_factory.mktemp("report_study"), n_images=200, n_trials=2, log_all_models=False, refit=True
    ) as study:
        assert study.best_run_id is not None and study.best_model_uri is not None
        yield study


def _report(study: TinyStudy, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    code = cli_main(
        [
            "report",
            "--study",
            "tiny",
            "--out",
            str(out),
            "--storage",
            study.storage,
            "--tracking-uri",
            study.tracking_uri,
            "--bootstrap",
            "300",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


@pytest.fixture(scope="module")
def first_report(tiny_study: TinyStudy) -> Iterator[Path]:
    """The report of the tiny study before any ensemble comparison exists."""
    out = tiny_study.root / "reports" / "tiny"
    with keep_mlflow_tracking_uri(), pytest.MonkeyPatch.context() as mp:
        mp.chdir(tiny_study.root)
        mp.setenv("GALAXY10_CACHE", str(tiny_study.root / "cache"))
        build_report("tiny", out=out, ws=tiny_study.ws, n_resamples=300)
        snapshot = tiny_study.root / "first_report"
        shutil.copytree(out, snapshot)
    yield snapshot


@pytest.mark.slow
def test_report_has_every_section(tiny_study: TinyStudy, first_report: Path) -> None:
    from pipelines.reader import data_fingerprint

    html = html_lib.unescape((first_report / "report.html").read_text())
    md = (first_report / "report.md").read_text()
    numbers = json.loads((first_report / "report.json").read_text())
    # the study's best trial and its parameters, as in report.md's table
    assert numbers["best_trial"]["params"] and all(k in md for k in numbers["best_trial"]["params"])
    assert isinstance(numbers["best_trial"]["number"], int)
    # the SYNTHETIC banner comes first, in large type
    banner = html.index('id="synthetic-banner"')
    assert banner < html.index("Data card") and "SYNTHETIC DATA" in html[banner : banner + 200]
    assert re.search(r"\.banner \.big \{[^}]*font-size: 2\.\d+rem", html)
    assert md.startswith("# ⚠ SYNTHETIC DATA")
    # data card: file, provenance, fingerprint, class counts, split sizes
    assert str(tiny_study.data) in html and data_fingerprint(tiny_study.data) in html
    assert "SYNTHETIC</span>" in html and "train 160, val 20, test 20" in html
    assert html.count('<td class="num">20</td>') >= 10  # 20 images of each class in the file
    # baseline and best CNN rows with intervals, next to the reference marked as such
    for key, label in (
        ("baseline", "Baseline (most frequent class)"),
        ("cnn", "Best CNN"),
        ("refit", "Refit CNN (train + validation)"),
    ):  # issue 13: the refit is scored too
        m = numbers["models"][key]
        lo, hi = m["ci95"]["accuracy"]
        assert lo <= m["test"]["accuracy"] <= hi
        row = re.search(rf"<td>{re.escape(label)}</td>(.*?)</tr>", html, re.S).group(1)
        assert f"{100 * m['test']['accuracy']:.1f}%" in row and f"[{100 * lo:.1f}, {100 * hi:.1f}]" in row
    assert numbers["models"]["cnn"]["run_id"] == tiny_study.best_run_id
    assert "reference, not the same data" in html and "81.1%" in html
    # the refit has a column in the per-class table and a confusion matrix, like the best CNN
    table = re.search(r'<table id="recall-table">(.*?)</table>', html, re.S).group(1)
    assert re.findall(r'<th class="num">(.*?)</th>', table) == [
        "Test images",
        "Baseline (most frequent class)",
        "Reference (reference, not the same data)",
        "Best CNN",
        "Refit CNN (train + validation)",
    ]
    assert "confusion_refit.png" in md and (first_report / "confusion_refit.png").exists()
    assert "no ensemble comparison found for study 'tiny'" in html and "no ensemble comparison found" in md
    # figures: embedded in the HTML, written as files, referenced by the Markdown
    for name in (
        "recall_per_class.png",
        "confusion_cnn.png",
        "learning_curves.png",
        "optimization_history.png",
        "misclassified.png",
    ):
        data = (first_report / name).read_bytes()
        assert data.startswith(b"\x89PNG")
        assert base64.b64encode(data).decode()[:200] in html
        assert f"]({name})" in md
    # self-contained: no external resources
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    # run ids and the reproduce command
    scoring = numbers["scoring_run_id"]
    for run_id in (tiny_study.parent_run_id, tiny_study.best_run_id, scoring):
        assert run_id in html and run_id in md
    assert "galaxy10 tune --config" in html and "--study tiny" in html
    assert "galaxy10 report --study tiny" in md


@pytest.mark.slow
def test_report_numbers_are_logged_to_mlflow(tiny_study: TinyStudy, first_report: Path) -> None:
    from mlflow import MlflowClient

    from pipelines.baseline import score_baseline
    from pipelines.splits import ensure_split

    numbers = json.loads((first_report / "report.json").read_text())
    client = MlflowClient(tiny_study.tracking_uri)
    scoring = client.get_run(numbers["scoring_run_id"])
    assert scoring.info.run_name == SCORING_RUN_NAME
    assert scoring.data.tags["mlflow.parentRunId"] == tiny_study.parent_run_id
    for key in ("baseline", "cnn"):
        for metric in ("accuracy", "macro_f1", "balanced_accuracy"):
            assert scoring.data.metrics[f"test_{key}_{metric}"] == pytest.approx(numbers["models"][key]["test"][metric])
        assert scoring.data.metrics[f"test_{key}_accuracy_ci_low"] == pytest.approx(
            numbers["models"][key]["ci95"]["accuracy"][0]
        )
    # the baseline is pipelines.baseline's, on the same split
    split = ensure_split(tiny_study.data)
    assert numbers["models"]["baseline"]["test"]["accuracy"] == pytest.approx(
        score_baseline(tiny_study.data, split)["accuracy"]
    )
    # test_* metrics on the best trial's own run
    best = client.get_run(tiny_study.best_run_id)
    assert best.data.metrics["test_accuracy"] == pytest.approx(numbers["models"]["cnn"]["test"]["accuracy"])
    assert best.data.tags["report.test_scoring_run"] == numbers["scoring_run_id"]
    # the report files are artifacts of the study's parent run
    logged_files = {f.path for f in client.list_artifacts(tiny_study.parent_run_id, "report")}
    for name in (
        "report.html",
        "report.md",
        "report.json",
        "recall_per_class.png",
        "confusion_cnn.png",
        "reliability.png",
    ):
        assert f"report/{name}" in logged_files
    # calibration: the best trial's temperature (its run's metric) and the test ECE before/after, logged
    cal = numbers["calibration"]
    assert cal["temperature"] == pytest.approx(best.data.metrics["temperature"]) and cal["run_id"] == best.info.run_id
    assert scoring.data.metrics["test_cnn_ece"] == pytest.approx(cal["test_ece"])
    assert scoring.data.metrics["test_cnn_ece_calibrated"] == pytest.approx(cal["test_ece_calibrated"])
    assert f"T = {cal['temperature']:.3f}" in (first_report / "report.md").read_text()
    # accuracy against speed: every finished trial's images/s, the same number on its run; a Pareto front
    pareto = numbers["pareto"]
    assert pareto and any(p["on_front"] for p in pareto) and all(p["images_per_second"] > 0 for p in pareto)
    for p in pareto:
        logged = client.get_run(p["run_id"]).data.metrics["inference_images_per_second"]
        assert p["images_per_second"] == pytest.approx(logged, rel=1e-3)
    assert "report/pareto_front.png" in logged_files


@pytest.mark.slow
def test_report_with_an_ensemble_winner(
    tiny_study: TinyStudy, first_report: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A comparison run tagged as ``galaxy10 ensemble`` tags it, with a registered winner, is scored and shown.

    The winner here is the best CNN's own Keras model registered as ``tiny-ensemble@champion``: the
    report scores it from the raw file images through ``load_prediction_model``.
    """
    from mlflow import MlflowClient

    from experiments.tracking.mlflow_tracker import MlflowTracker
    from experiments.tracking.model_registry import register_champion

    client = MlflowClient(tiny_study.tracking_uri)
    with keep_mlflow_tracking_uri(), pytest.MonkeyPatch.context() as mp:
        mp.chdir(tiny_study.root)
        mp.setenv("GALAXY10_CACHE", str(tiny_study.root / "cache"))
        tags = {"ensemble.role": "comparison", "optuna.study": "tiny", "ensemble.mode": "val_cv"}
        with MlflowTracker("ens", "ensemble comparison", ws=tiny_study.ws, tags=tags) as parent:
            columns = "candidate,kind,val_accuracy,val_recall_disturbed,members,estimate,run_id"
            parent.log_text(
                f"{columns}\nvote-top2,vote,0.5,0.25,a b,val,r1\ncnn-best,cnn,0.4,0.5,a,val,r2\n", "comparison.csv"
            )
            with MlflowTracker(
                "ens",
                "vote-top2",
                ws=tiny_study.ws,
                parent_run_id=parent.run_id,
                tags={"kind": "vote", "candidate": "vote-top2"},
            ) as winner:
                pass
            register_champion(tiny_study.best_model_uri, "tiny-ensemble", run_id=winner.run_id, ws=tiny_study.ws)
            parent.set_tags(
                {"winner.registered_model": "models:/tiny-ensemble@champion", "winner.run_id": winner.run_id}
            )
        out = tiny_study.root / "reports" / "with-ensemble"
        lookups = count_registry_lookups(mp)
        printed = _report(tiny_study, out, capsys)
    # the report finds the winner by its alias, describes and scores it: one registry look-up for it
    assert lookups == {("tiny-ensemble", "champion"): 1}
    html = html_lib.unescape((out / "report.html").read_text())
    md = (out / "report.md").read_text()
    numbers = json.loads((out / "report.json").read_text())
    assert "Best ensemble" in printed
    assert "no ensemble comparison found" not in html
    assert numbers["ensemble"]["model_uri"] == "models:/tiny-ensemble@champion"
    assert numbers["models"]["ensemble"]["run_id"] == winner.run_id
    # the same Keras model scored from the raw file images agrees with the CNN scored from the cache
    assert numbers["models"]["ensemble"]["test"]["accuracy"] == pytest.approx(
        numbers["models"]["cnn"]["test"]["accuracy"], abs=0.051
    )
    assert (out / "confusion_ensemble.png").read_bytes().startswith(b"\x89PNG")
    # the comparison table, winner highlighted, per-class columns left to the CSV
    assert '<tr class="winner"><td class="col-candidate">vote-top2</td>' in html
    assert "val_recall_disturbed" not in html and "| vote-top2 | vote | 0.5 | val | r1 |" in md
    assert parent.run_id in html and winner.run_id in html
    assert "galaxy10 ensemble --study tiny --config experiments/configs/ensemble.yaml --set mode=val_cv" in md
    assert client.get_run(winner.run_id).data.metrics["test_accuracy"] == pytest.approx(
        numbers["models"]["ensemble"]["test"]["accuracy"]
    )


IMPORTED_CLASSES = ("smooth", "featured disk", "edge-on", "rare ring")


@pytest.fixture(scope="module")
def imported_report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TinyStudy, Path]]:
    """The report of a tiny study (with its refit) on an imported 4-class catalog, not Galaxy10's classes."""
    with tiny_study_in(
        tmp_path_factory.mktemp("imported_study"),
        n_images=160,
        n_trials=1,
        log_all_models=False,
        refit=True,
        imported_classes=IMPORTED_CLASSES,
    ) as study:
        out = study.root / "reports" / "imported"
        build_report("tiny", out=out, ws=study.ws, n_resamples=100)
        yield study, out


@pytest.mark.slow
def test_report_on_an_imported_catalog_tells_the_truth(imported_report: tuple[TinyStudy, Path]) -> None:
    """Provenance IMPORTED with where it came from; no published Galaxy10 reference on another class set;
    the refit in the per-class table; confusion titles inside their figures."""
    study, out = imported_report
    html = html_lib.unescape((out / "report.html").read_text())
    md = (out / "report.md").read_text()
    numbers = json.loads((out / "report.json").read_text())
    folder, labels = study.root / "cutouts", study.root / "cutouts" / "labels.csv"
    assert numbers["data"]["provenance"] == "imported"
    assert "IMPORTED</span>" in html and f"imported by `galaxy10 data import` from {folder} (labels: {labels})" in html
    assert f"IMPORTED: imported by `galaxy10 data import` from {folder}" in md
    assert "MODIFIED</span>" not in html and "not the official release" not in html and "SYNTHETIC DATA" not in html
    for text in ("81.1%", "Reference project", "reference, not the same data", "published"):
        assert text not in html and text not in md, text
    table = re.search(r'<table id="recall-table">(.*?)</table>', html, re.S).group(1)
    assert re.findall(r'<th class="num">(.*?)</th>', table) == [
        "Test images",
        "Baseline (most frequent class)",
        "Best CNN",
        "Refit CNN (train + validation)",
    ]
    refit = numbers["models"]["refit"]["test"]
    for name in IMPORTED_CLASSES:
        row = re.search(rf"<tr><td>{re.escape(name)}</td>(.*?)</tr>", table, re.S).group(1)
        cells = re.findall(r'<td class="num">(.*?)</td>', row)
        assert len(cells) == 4 and cells[3] != ""
    slug = "rare_ring"
    assert f"{refit[f'recall_{slug}']:.2f}" in re.search(r"<tr><td>rare ring</td>(.*?)</tr>", table, re.S).group(1)
    for key in ("cnn", "refit"):
        assert (out / f"confusion_{key}.png").read_bytes().startswith(b"\x89PNG")
    # report.json carries no Galaxy10 published reference on another class set
    assert "reference" not in numbers
    # the paired verdict: the refit against the best CNN on the same test images, in words
    (pair,) = numbers["paired"]
    assert (pair["a"], pair["b"], pair["n_images"]) == ("refit", "cnn", numbers["data"]["split_sizes"]["test"])
    acc = pair["differences"]["accuracy"]
    assert acc["diff"] == pytest.approx(refit["accuracy"] - numbers["models"]["cnn"]["test"]["accuracy"])
    assert acc["ci"][0] <= acc["diff"] <= acc["ci"][1]
    words = {"better", "worse", f"not distinguishable on {pair['n_images']} images"}
    assert acc["verdict"] in words and len(pair["recall_diff"]) == len(IMPORTED_CLASSES)
    paired = re.search(r'<table id="paired-verdicts">(.*?)</table>', html, re.S).group(1)
    assert "Refit CNN (train + validation)" in paired and "Best CNN" in paired and acc["verdict"] in paired
    assert f"{100 * acc['diff']:+.1f} [{100 * acc['ci'][0]:+.1f}, {100 * acc['ci'][1]:+.1f}]" in paired
    assert "### Paired differences (same test images)" in md and acc["verdict"] in md


@pytest.mark.parametrize("n", [2, 4, 10])
def test_confusion_titles_fit_their_figure(n: int) -> None:
    from experiments.training.figures import confusion_figure

    fig = confusion_figure(
        np.eye(n),
        [f"class name {k}" for k in range(n)],
        title="Refit CNN (train + validation): test confusion (row-normalised)",
    )
    fig.canvas.draw()
    title = fig.axes[0].title.get_window_extent(fig.canvas.get_renderer())
    assert fig.bbox.x0 <= title.x0 and title.x1 <= fig.bbox.x1 and title.y1 <= fig.bbox.y1


@pytest.mark.slow
def test_imported_report_in_chromium(imported_report: tuple[TinyStudy, Path], tmp_path: Path) -> None:
    """What a browser shows of the imported catalog's report: provenance, no Galaxy10 reference, the refit."""
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("/usr/bin/chromium is not installed (apt-get install -y chromium)")
    _, out = imported_report
    done = subprocess.run(
        [
            str(chromium),
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            (out / "report.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = html_lib.unescape(done.stdout)
    assert '<span class="tag imported">IMPORTED</span>' in dom and "imported by `galaxy10 data import` from" in dom
    assert "81.1%" not in dom and "Reference project" not in dom
    table = re.search(r'<table id="recall-table">(.*?)</table>', dom, re.S).group(1)
    assert "Refit CNN (train + validation)" in table
    assert dom.count('alt="Confusion matrix') == 2  # best CNN and refit
    paired = re.search(r'<table id="paired-verdicts">(.*?)</table>', dom, re.S).group(1)
    assert re.search(
        r'<span class="verdict verdict-(better|worse|not)">(better|worse|not distinguishable on '
        r"\d+ images)</span>",
        paired,
    ), paired


@pytest.mark.slow
def test_report_renders_in_chromium(first_report: Path, tmp_path: Path) -> None:
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("/usr/bin/chromium is not installed (apt-get install -y chromium)")
    from PIL import Image

    shot = tmp_path / "report.png"
    subprocess.run(
        [
            str(chromium),
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1280,900",
            (first_report / "report.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    image = np.asarray(Image.open(shot).convert("RGB"))
    banner = np.all(np.abs(image.astype(int) - (0xB3, 0x26, 0x1E)) < 12, axis=-1)
    rows = np.flatnonzero(banner.mean(axis=1) > 0.5)
    assert rows.size > 60 and rows.min() < 60  # a tall red banner at the very top


@pytest.mark.slow
def test_report_scores_a_self_trained_student_and_checks_its_pool(
    tiny_study: TinyStudy,
    first_report: Path,
    make_h5,
    tmp_path: Path,  # noqa: ANN001
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``report --model`` adds a student of ``galaxy10 self-train``: scored with paired verdicts, its pool named
    (sources, size, fingerprint); a pool that changed since, or that holds the test images, is refused with one
    line. (The toy generator draws galaxies of a class almost alike: only exact copies count as the same galaxy.)"""
    from experiments.selftrain import pseudo
    from experiments.selftrain import run as selftrain_run

    monkeypatch.setattr(pseudo, "SAME_GALAXY_CORRELATION", 0.9999)
    monkeypatch.chdir(tiny_study.root)
    monkeypatch.setenv("GALAXY10_CACHE", str(tiny_study.root / "cache"))
    pool = make_h5(name="pool.h5", n=40, size=64, seed=11)
    common = [
        "--config",
        str(SMOKE),
        "--data",
        str(tiny_study.data),
        "--teacher",
        tiny_study.best_model_uri,
        "--tracking-uri",
        tiny_study.tracking_uri,
        "--set",
        "train.epochs=1",
        "--set",
        "data.size=48",
        "--set",
        "data.crop=32",
        "--threshold",
        "0.05",
    ]
    assert cli_main(["-q", "self-train", "--unlabeled", str(pool), *common, "--name", "st"]) == 0
    report = [
        "report",
        "--study",
        "tiny",
        "--storage",
        tiny_study.storage,
        "--tracking-uri",
        tiny_study.tracking_uri,
        "--bootstrap",
        "200",
        "--model",
        "st@student",
    ]
    capsys.readouterr()
    assert cli_main([*report, "--out", str(tmp_path / "r1")]) == 0
    assert "test accuracy" in capsys.readouterr().out
    doc = json.loads((tmp_path / "r1" / "report.json").read_text())
    pools = [p for p in doc["unlabeled_pools"] if p.get("kind") == "self-training"]
    assert len(pools) == 1 and pools[0]["model"] == "models:/st@student" and str(pool) in pools[0]["sources"]
    assert pools[0]["images"] == 40 and len(pools[0]["fingerprint"]) >= 12
    md = (tmp_path / "r1" / "report.md").read_text()
    assert "self-trained on pseudo-labels of 40 unlabelled images" in md
    assert doc["models"]["model-1"]["model_uri"] == "models:/st@student"
    assert {(p["a"], p["b"]) for p in doc["paired"]} >= {("model-1", "cnn")}

    make_h5(name="pool.h5", n=40, size=64, seed=12)  # the pool changed since the student learned from it
    assert cli_main(["-q", *report, "--out", str(tmp_path / "r2")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "SYNTHETIC" not in line]
    assert len(err) == 1 and "changed since the model learned from it" in err[0] and not (tmp_path / "r2").exists()

    monkeypatch.setattr(selftrain_run, "refuse_scored_images", lambda *a, **k: None)  # a student made elsewhere
    assert cli_main(["-q", "self-train", "--unlabeled", str(tiny_study.data), *common, "--name", "leaky"]) == 0
    capsys.readouterr()
    assert cli_main(["-q", *report[:-1], "leaky@student", "--out", str(tmp_path / "r3")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "SYNTHETIC" not in line]
    assert len(err) == 1 and "must not contain the images a score is computed on" in err[0]
    assert cli_main(["-q", *report[:-1], "not a ref!", "--out", str(tmp_path / "r4")]) == 2
    assert "cannot read model reference" in capsys.readouterr().err
