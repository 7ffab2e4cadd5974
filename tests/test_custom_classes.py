"""Any class set, end to end (issue 12): an imported 4-class catalog with a rare class of its own.

The catalog is made in a fixture (blobs whose shape depends on the class), imported with
``galaxy10 data import``, then: targeting with the file's own slug (the class mix of the targeted
epochs matches the multiplier), ``auto`` targeting (warm-up recall), a 3-trial study that tunes the
rare class's multiplier, an ensemble, a report, ``predict`` and the web page, all naming the file's
classes. Where ``../shared/data/realsamples`` is present the same targeting runs on the real ring set.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import keep_mlflow_tracking_uri, tiny_images
from PIL import Image

from experiments.cli import main as cli_main
from experiments.tracking.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "configs" / "smoke.yaml"
#: Class names as the catalog writes them (one with a space and capitals); the rare one is last.
NAMES = ("Spiral Arm", "smooth", "merger", "rare_ring")
COUNTS = (110, 100, 90, 20)
#: The importer orders the distinct label texts (sorted), so the file's label order is this:
FILE_NAMES = tuple(sorted(NAMES))
SLUGS = tuple(n.lower().replace(" ", "_") for n in FILE_NAMES)
RARE = FILE_NAMES.index("rare_ring")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder of 320 PNG cutouts in 4 classes (20 rare) and the imported HDF5 file; cwd, cache and
    tracking store in the same temporary folder."""
    root = tmp_path_factory.mktemp("custom_classes")
    folder = root / "cutouts"
    folder.mkdir()
    labels = np.repeat(np.arange(4), COUNTS)
    np.random.default_rng(0).shuffle(labels)
    images = tiny_images(labels * 3, 48, seed=3)  # classes 0, 3, 6, 9 of the blob family: distinct shapes
    rows = ["file,label"]
    for i, (k, img) in enumerate(zip(labels, images)):
        Image.fromarray(img).save(folder / f"obj{i:03d}.png")
        rows.append(f"obj{i:03d}.png,{NAMES[k]}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    with keep_mlflow_tracking_uri(), pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("GALAXY10_CACHE", str(root / "cache"))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        assert (
            cli_main(
                [
                    "-q",
                    "data",
                    "import",
                    str(folder),
                    "--labels",
                    str(folder / "labels.csv"),
                    "--size",
                    "48",
                    "--out",
                    str(root / "custom.h5"),
                ]
            )
            == 0
        )
        yield root / "custom.h5"


def _client():  # noqa: ANN202
    import mlflow

    return mlflow.tracking.MlflowClient()


def _history(run_id: str) -> dict:
    path = _client().download_artifacts(run_id, "history.json")
    return json.loads(Path(path).read_text())


def _train(data: Path, *sets: str) -> str:
    import mlflow

    argv = [
        "-q",
        "train",
        "--config",
        str(SMOKE),
        "--data",
        str(data),
        "--set",
        "data.max_images=null",
        "--set",
        "train.epochs=2",
        "--json",
    ]
    for s in sets:
        argv += ["--set", s]
    assert cli_main(argv) == 0
    return mlflow.search_runs(experiment_names=["galaxy10-smoke"], order_by=["start_time DESC"], max_results=1).iloc[0][
        "run_id"
    ]


@pytest.mark.slow
def test_data_info_names_the_file_classes(catalog: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["data", "info", str(catalog), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [c["slug"] for c in doc["classes"]] == list(SLUGS) and doc["class_set"] == "custom"
    assert [c["count"] for c in doc["classes"]] == [COUNTS[NAMES.index(n)] for n in FILE_NAMES]


@pytest.mark.slow
def test_targeting_with_the_file_slug_multiplies_the_rare_class(catalog: Path) -> None:
    from pipelines.splits import ensure_split

    run_id = _train(catalog, "augment.targets={rare_ring: 4}")
    params = _client().get_run(run_id).data.params
    assert params["multiplier.rare_ring"] == "4" and params["multiplier.smooth"] == "1"
    mixes = _history(run_id)["class_mix_per_epoch"]
    assert len(mixes) == 2 and set(mixes[0]) == set(SLUGS)
    split = ensure_split(catalog, test_fraction=None, val_fraction=None, seed=None)
    from pipelines.reader import Galaxy10File

    with Galaxy10File(catalog) as f:
        train_labels = f.labels()[split.train]
    n_rare, n = int((train_labels == RARE).sum()), len(train_labels)
    expected = 4 * n_rare / (n + 3 * n_rare)  # each rare image 4 times per epoch
    for mix in mixes:
        assert mix["rare_ring"] == pytest.approx(expected, abs=1.5 / (n + 3 * n_rare))
        assert sum(mix.values()) == pytest.approx(1.0)


@pytest.mark.slow
def test_galaxy10_slug_on_the_catalog_is_one_line(catalog: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["-q", "train", "--config", str(SMOKE), "--data", str(catalog)])  # smoke targets disturbed
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"unknown class 'disturbed'; this data's classes are: {', '.join(SLUGS)}" in err


@pytest.mark.slow
def test_auto_targeting_from_a_warmup_on_the_catalog(catalog: Path) -> None:
    run_id = _train(
        catalog,
        "augment.targets=auto",
        "augment.auto_warmup_epochs=1",
        "augment.auto_top_k=2",
        "augment.max_multiplier=6",
    )
    params = _client().get_run(run_id).data.params
    multipliers = {s: float(params[f"multiplier.{s}"]) for s in SLUGS}
    assert sum(m > 1 for m in multipliers.values()) <= 2 and max(multipliers.values()) <= 6


@pytest.mark.slow
def test_study_ensemble_report_predict_and_page_on_the_catalog(
    catalog: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = catalog.parent
    run = {
        "experiment_name": "custom-study",
        "data": {"size": 48, "crop": 32},
        "augment": {"policy": "none"},
        "model": {"filters": [8, 16], "dense_units": 16},
        "train": {"epochs": 1, "batch_size": 32, "patience": None, "monitor": "val_accuracy"},
    }
    space = {
        "train.learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
        "augment.targets": {"type": "categorical", "choices": {"none": None, "rare": {}}},
        "augment.targets.rare_ring": {"type": "float", "low": 1.0, "high": 6.0, "when": {"augment.targets": "rare"}},
    }
    tune_yaml = root / "tune_custom.yaml"
    tune_yaml.write_text(
        yaml.safe_dump(
            {
                "run": run,
                "search_space": space,
                "study": {
                    "name": "custom",
                    "n_trials": 3,
                    "pruner": "none",
                    "log_models": "all",
                    "metric": "balanced_accuracy",
                    "sampler": {"name": "random", "seed": 1},
                    "reference_trial": False,
                },
            }
        )
    )
    assert cli_main(["-q", "tune", "--config", str(tune_yaml), "--data", str(catalog)]) == 0
    ens = root / "ens.yaml"
    ens.write_text("mode: val_cv\ncv_folds: 2\nvote: {top_k: 2}\nsecond_stage: {logreg: {}}\n")
    assert cli_main(["-q", "ensemble", "--study", "custom", "--config", str(ens)]) == 0
    assert cli_main(["-q", "report", "--study", "custom", "--out", str(root / "rep"), "--bootstrap", "50"]) == 0
    report_md = (root / "rep" / "report.md").read_text()
    assert "cross-validated on the train split" in report_md  # study.cv_folds: auto on a small catalog
    capsys.readouterr()
    assert cli_main(["study", "show", "custom"]) == 0
    shown = capsys.readouterr().out
    assert "cv mean ± sd (folds)" in shown and "(3)" in shown
    for name in NAMES:
        assert name in report_md or name.replace(" ", "_").lower() in report_md
    assert "Disturbed" not in report_md
    capsys.readouterr()

    png = root / "one.png"
    Image.fromarray(tiny_images(np.array([9]), 48, seed=5)[0]).save(png)
    assert cli_main(["-q", "predict", str(png), "--model", "custom@champion", "--format", "json", "--top", "4"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert sorted(doc[0]["probabilities"]) == sorted(NAMES)

    from experiments.serving.predictor import load_predictor
    from experiments.serving.web import create_app

    app = create_app(load_predictor("custom@champion", ws=Workspace()))
    resp = app.test_client().post(
        "/api/predict", data={"file": (io.BytesIO(png.read_bytes()), "one.png")}, content_type="multipart/form-data"
    )
    assert resp.status_code == 200, resp.data
    body = resp.get_json()
    assert all(name in json.dumps(body) for name in NAMES), body

    gallery = root / "g.png"
    assert (
        cli_main(["-q", "data", "gallery", str(catalog), "--out", str(gallery), "--per-class", "2", "--thumb", "16"])
        == 0
        and gallery.stat().st_size > 0
    )


@pytest.mark.slow
def test_real_ring_set_with_rare_rings(realsamples: Path, tmp_path: Path) -> None:
    """The real DECaLS ring set, rings made rare (30 of 265), targeted by the file's own slug."""
    import csv

    src = realsamples / "gz_decals_zoobot_rings"
    with (src / "catalog.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    file_col = next(c for c in rows[0] if c.lower() in ("file", "filename", "path", "image"))
    rings = [r for r in rows if r["ring"] == "1"][:30]
    others = [r for r in rows if r["ring"] == "0"]
    labels = tmp_path / "rare_rings.csv"
    labels.write_text(
        "file,label\n"
        + "".join(f"{r[file_col]},{'ring' if r['ring'] == '1' else 'not_ring'}\n" for r in rings + others)
    )
    out = tmp_path / "rings.h5"
    assert cli_main(["-q", "data", "import", str(src), "--labels", str(labels), "--size", "64", "--out", str(out)]) == 0
    run_id = _train(out, "augment.targets={ring: 5}", "data.size=48", "train.epochs=1")
    params = _client().get_run(run_id).data.params
    assert params["multiplier.ring"] == "5" and params["multiplier.not_ring"] == "1"
    mix = _history(run_id)["class_mix_per_epoch"][0]
    assert mix["ring"] > 2.5 * 30 / 265  # about 5x the ring share of the training split
