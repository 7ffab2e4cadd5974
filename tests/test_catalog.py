"""``galaxy10 catalog``: rows for every input kind, error rows, workers, resume after SIGKILL, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from catalog_fakes import CLASSES, fake_predictor, views
from conftest import png_bytes, write_galaxy10_h5

from augment.tta import mean_of_views
from core.errors import DataError
from experiments.catalog.columns import entropy, probability_columns, view_disagreement
from experiments.catalog.inputs import plan_catalog_inputs
from experiments.catalog.job import KILL_AFTER_ENV, parts_dir, run_catalog

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def survey(tmp_path: Path) -> dict[str, Path]:
    """An HDF5 file (12 rows with ra/dec), a folder of 5 PNGs of two sizes plus one broken file, and a
    CSV list of 3 paths (one missing) with ids and coordinates."""
    h5 = write_galaxy10_h5(tmp_path / "cutouts.h5", n=12, size=32, seed=3)
    folder = tmp_path / "pngs"
    (folder / "deep").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        side = 40 if i % 2 else 48
        target = folder / ("deep" if i >= 3 else ".") / f"g{i}.png"
        target.write_bytes(png_bytes(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG")
    (folder / "notes.txt").write_text("not an image, not a row")
    listing = tmp_path / "list.csv"
    pd.DataFrame(
        {
            "path": ["pngs/g0.png", "pngs/deep/g3.png", "pngs/gone.png"],
            "id": ["A", "B", "C"],
            "ra": ["10.5", "", "12"],
            "dec": ["-1", "", "2.5"],
        }
    ).to_csv(listing, index=False)
    return {"h5": h5, "folder": folder, "list": listing}


def _catalog(survey: dict[str, Path], out: Path, **kwargs) -> pd.DataFrame:
    inputs = plan_catalog_inputs([str(survey["h5"]), str(survey["folder"]), str(survey["list"])])
    run_catalog(inputs, fake_predictor(), out, **kwargs)
    return pq.read_table(out).to_pandas()


def test_catalog_rows_errors_and_columns(survey: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cat.parquet"
    df = _catalog(survey, out, chunk_size=4, workers=2)
    assert len(df) == 12 + 6 + 3 and list(df["row"]) == list(range(21))
    assert list(df["id"][:2]) == ["cutouts.h5[0]", "cutouts.h5[1]"]
    assert df["id"][12:18].tolist() == ["broken.png", "g0.png", "g1.png", "g2.png", "deep/g3.png", "deep/g4.png"]
    assert df["id"][18:].tolist() == ["A", "B", "C"]
    errors = df[df["error"].notna()]
    assert errors["id"].tolist() == ["broken.png", "C"]  # a damaged file and a missing one: rows, not a crash
    assert errors["predicted"].isna().all() and errors[probability_columns(CLASSES)].isna().all().all()
    good = df[df["error"].isna()]
    probs = good[probability_columns(CLASSES)].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (good["predicted"] == [CLASSES[i] for i in probs.argmax(axis=1)]).all()
    assert (good["n_views"] == 8).all() and (good["view_disagreement"] >= 0).all()
    # coordinates: from the HDF5 file and the list (empty cells are null); none for a folder
    with pd.option_context("mode.chained_assignment", None):
        assert df["ra"][:12].notna().all() and df["ra"][12:18].isna().all()
    assert df["ra"][18] == 10.5 and pd.isna(df["ra"][19]) and df["dec"][20] == 2.5
    meta = json.loads(pq.read_schema(out).metadata[b"galaxy10"])
    assert meta["model_uri"] == "models:/fake@champion" and meta["class_names"] == list(CLASSES)
    assert meta["n_rows"] == 21 and len(meta["inputs_fingerprint"]) == 64
    assert not parts_dir(out).exists()  # the job's own parts are gone once merged


def test_probabilities_and_uncertainty_match_the_predictor(survey: dict[str, Path], tmp_path: Path) -> None:
    df = _catalog(survey, tmp_path / "cat.parquet", chunk_size=5)
    import h5py

    with h5py.File(survey["h5"]) as f:
        images = f["images"][()]
    v = views(images)
    np.testing.assert_allclose(df[probability_columns(CLASSES)][:12].to_numpy(), mean_of_views(v), rtol=1e-6)
    np.testing.assert_allclose(df["entropy"][:12], entropy(mean_of_views(v)), rtol=1e-5)
    np.testing.assert_allclose(df["view_disagreement"][:12], view_disagreement(v), rtol=1e-4, atol=1e-7)


def test_view_disagreement_is_zero_for_agreeing_views_and_nan_for_one() -> None:
    same = np.tile(np.array([[[0.7, 0.2, 0.1]]]), (8, 2, 1))
    assert np.allclose(view_disagreement(same), 0.0)
    split = np.concatenate([np.tile([[[1.0, 0.0, 0.0]]], (4, 1, 1)), np.tile([[[0.0, 1.0, 0.0]]], (4, 1, 1))])
    assert view_disagreement(split)[0] == pytest.approx(np.log(2), rel=1e-6)
    assert np.isnan(view_disagreement(same[:1])).all()


def test_same_catalog_for_any_worker_count_and_chunk_size(survey: dict[str, Path], tmp_path: Path) -> None:
    one = _catalog(survey, tmp_path / "one.parquet", chunk_size=4, workers=1)
    two = _catalog(survey, tmp_path / "two.parquet", chunk_size=4, workers=2)
    pd.testing.assert_frame_equal(one, two)
    big = _catalog(survey, tmp_path / "big.parquet", chunk_size=1000, workers=3)
    pd.testing.assert_frame_equal(one, big)


KILLED_JOB = """
import sys
sys.path.insert(0, {tests!r})
from catalog_fakes import fake_predictor
from experiments.catalog.inputs import plan_catalog_inputs
from experiments.catalog.job import run_catalog
run_catalog(plan_catalog_inputs({inputs!r}), fake_predictor(), {out!r}, chunk_size=3, workers=2)
"""


def test_sigkill_then_resume_gives_every_row_exactly_once(survey: dict[str, Path], tmp_path: Path) -> None:
    args = [str(survey["h5"]), str(survey["folder"]), str(survey["list"])]
    out = tmp_path / "killed.parquet"
    code = KILLED_JOB.format(tests=str(ROOT / "tests"), inputs=args, out=str(out))
    env = {**os.environ, KILL_AFTER_ENV: "2", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == -9, proc.stderr[-2000:]  # SIGKILL while writing the third part
    parts = sorted(p.name for p in parts_dir(out).iterdir())
    assert [n for n in parts if not n.startswith(".")] == ["job.json", "part-000000.parquet", "part-000001.parquet"]
    assert any(name.startswith(".part-000002") for name in parts)  # the unfinished temporary part
    assert not out.exists()
    env.pop(KILL_AFTER_ENV)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    resumed = pq.read_table(out).to_pandas()
    whole = _catalog(survey, tmp_path / "whole.parquet", chunk_size=3)
    pd.testing.assert_frame_equal(resumed, whole)
    assert not parts_dir(out).exists()


def test_resume_refuses_other_inputs_and_restart_discards(survey: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cat.parquet"
    folder = parts_dir(out)
    folder.mkdir()
    (folder / "job.json").write_text(json.dumps({"inputs": "0" * 64, "model": "models:/other@1"}))
    inputs = plan_catalog_inputs([str(survey["h5"])])
    with pytest.raises(DataError, match="other inputs, model"):
        run_catalog(inputs, fake_predictor(), out)
    assert folder.is_dir() and not out.exists()
    run_catalog(inputs, fake_predictor(), out, restart=True)
    assert len(pq.read_table(out)) == 12 and not folder.exists()


def test_the_inputs_fingerprint_sees_a_changed_image(survey: dict[str, Path]) -> None:
    """A resumed job must not mix images: replacing one image of a folder or of a list (same name) changes
    the fingerprint that ``job.json`` has to match; planning the same files again does not."""
    for source in ("folder", "list"):
        before = plan_catalog_inputs([str(survey[source])]).fingerprint()
        assert plan_catalog_inputs([str(survey[source])]).fingerprint() == before
        image = survey["folder"] / "g0.png"
        stat = image.stat()
        image.write_bytes(png_bytes(np.full((48, 48, 3), 7 if source == "folder" else 9, np.uint8)))
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        assert plan_catalog_inputs([str(survey[source])]).fingerprint() != before, source


def test_a_folder_galaxy10_did_not_write_is_never_deleted(survey: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cat.parquet"
    folder = parts_dir(out)
    folder.mkdir()
    (folder / "mine.txt").write_text("user data")
    with pytest.raises(DataError, match="no catalog job description"):
        run_catalog(plan_catalog_inputs([str(survey["h5"])]), fake_predictor(), out, restart=True)
    assert (folder / "mine.txt").read_text() == "user data"


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: str(p / "missing.h5"), ["does not exist"]),
        (lambda p: (p / "x.txt").write_text("hi") and str(p / "x.txt"), ["not an HDF5 file", "PNG/JPEG"]),
        (lambda p: (p / "e").mkdir() or str(p / "e"), ["holds no", "images"]),
        (
            lambda p: pd.DataFrame({"name": ["a.png"]}).to_csv(p / "l.csv", index=False) or str(p / "l.csv"),
            ["no path column", "path"],
        ),
        (lambda p: pd.DataFrame({"path": []}).to_csv(p / "l.csv", index=False) or str(p / "l.csv"), ["no rows"]),
        (
            lambda p: (
                pd.DataFrame({"path": ["a.png"], "ra": ["east"]}).to_csv(p / "l.csv", index=False) or str(p / "l.csv")
            ),
            ["column ra", "not a number"],
        ),
        (lambda p: (p / "bad.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64) and str(p / "bad.h5"), ["bad.h5"]),
    ],
)
def test_bad_inputs_are_one_clear_line(tmp_path: Path, make, words) -> None:
    with pytest.raises(DataError) as err:
        plan_catalog_inputs([make(tmp_path)])
    assert "\n" not in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_cli_bad_output_is_exit_2_and_writes_nothing(survey: dict[str, Path], tmp_path: Path, capsys) -> None:
    from experiments.cli import main

    assert main(["catalog", str(survey["h5"]), "--out", str(tmp_path / "cat.csv")]) == 2
    assert "galaxy10: error: --out" in capsys.readouterr().err
    mine = tmp_path / "mine.parquet"
    mine.write_bytes(b"PAR1 user data")
    assert main(["catalog", str(survey["h5"]), "--out", str(mine)]) == 2
    assert "not written by galaxy10" in capsys.readouterr().err and mine.read_bytes() == b"PAR1 user data"
    assert main(["catalog", str(survey["h5"]), "--out", str(tmp_path / "c.parquet"), "--chunk-size", "0"]) == 2
    assert not (tmp_path / "c.parquet").exists() and not parts_dir(tmp_path / "c.parquet").exists()


@pytest.mark.slow
def test_cli_catalog_with_a_logged_model(smoke_model, survey: dict[str, Path], tmp_path: Path, capsys) -> None:
    """The whole command with a model from MLflow: probabilities equal `galaxy10 predict`'s path."""
    from experiments.cli import main
    from experiments.serving.predictor import load_predictor, predict_file_rows

    out = tmp_path / "cat.parquet"
    ref = f"{smoke_model.registered_name}@champion"
    code = main(
        [
            "catalog",
            str(survey["h5"]),
            str(survey["folder"]),
            "--out",
            str(out),
            "--model",
            ref,
            "--tracking-uri",
            smoke_model.tracking_uri,
            "--chunk-size",
            "5",
        ]
    )
    assert code == 0, capsys.readouterr().err
    df = pq.read_table(out).to_pandas()
    printed = capsys.readouterr().out
    assert f"{len(df)} rows, 1 errors, {int(df['ood_flag'].sum())} flagged out-of-distribution" in printed
    predictor = load_predictor(ref, ws=smoke_model.ws)
    cols = probability_columns(predictor.card.class_names)
    raw = predict_file_rows(predictor, survey["h5"], range(12))
    np.testing.assert_allclose(df[cols][:12].to_numpy(), predictor.calibrate(raw), rtol=1e-5, atol=1e-6)
    assert (df["predicted_index"][:12] == raw.argmax(axis=1)).all()  # calibration changes no prediction
    meta = json.loads(pq.read_schema(out).metadata[b"galaxy10"])
    assert meta["model_version"] == "1" and meta["model_synthetic"] is True
    assert meta["calibration"]["temperature"] == predictor.card.temperature != 1.0  # fitted at training time
    assert df["error"].notna().sum() == 1
    # the same command again refuses nothing: the catalog is galaxy10's own file and is replaced
    assert (
        main(
            [
                "catalog",
                str(survey["h5"]),
                "--out",
                str(out),
                "--model",
                ref,
                "--tracking-uri",
                smoke_model.tracking_uri,
            ]
        )
        == 0
    )
    assert len(pq.read_table(out)) == 12


def test_ood_detector_scores_far_points_higher_and_flags_about_one_percent() -> None:
    from experiments.catalog.ood import fit_detector

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (3, 8))
    labels = rng.integers(0, 3, 3000)
    train = centres[labels] + rng.normal(0, 1, (3000, 8))
    val = centres[rng.integers(0, 3, 2000)] + rng.normal(0, 1, (2000, 8))
    det = fit_detector(train, labels, val)
    assert 0.0 < det.val_flagged <= 0.011
    near = centres[rng.integers(0, 3, 200)] + rng.normal(0, 1, (200, 8))
    far = rng.normal(0, 1, (200, 8)) * 10 + 40
    assert np.mean(det.score(near) > det.threshold) < 0.05 and np.all(det.score(far) > det.threshold)
    with pytest.raises(DataError, match="too few images"):
        fit_detector(train[:3], labels[:3], val)


def test_catalog_ood_columns_and_a_resumed_job_keeps_its_detector(survey: dict[str, Path], tmp_path: Path) -> None:
    from experiments.catalog.ood import fit_detector

    rng = np.random.default_rng(1)
    det = fit_detector(rng.normal(0, 1, (300, 3)), rng.integers(0, 3, 300), rng.normal(0, 1, (100, 3)))
    predictor = fake_predictor(with_embedding=True)
    out = tmp_path / "cat.parquet"
    inputs = plan_catalog_inputs([str(survey["h5"]), str(survey["folder"])])
    calls = []
    run_catalog(inputs, predictor, out, chunk_size=4, ood=lambda: calls.append(1) or det)
    df = pq.read_table(out).to_pandas()
    good = df["error"].isna()
    emb = np.concatenate([predictor.embed(np.stack([img])) for img in _images(survey, df[good])])
    np.testing.assert_allclose(df["ood_score"][good], det.score(emb), rtol=1e-5)
    assert (df["ood_flag"][good] == (df["ood_score"][good] > det.threshold)).all()
    assert df["ood_score"][~good].isna().all() and calls == [1]
    meta = json.loads(pq.read_schema(out).metadata[b"galaxy10"])
    assert meta["ood"]["threshold"] == pytest.approx(det.threshold) and meta["ood"]["quantile"] == 0.99
    off = tmp_path / "off.parquet"
    run_catalog(inputs, predictor, off, chunk_size=4)
    assert pq.read_table(off).to_pandas()["ood_score"].isna().all()


def _images(survey: dict[str, Path], rows: pd.DataFrame) -> list[np.ndarray]:
    import h5py

    from pipelines.images import decode_image

    out = []
    with h5py.File(survey["h5"]) as f:
        for source, index in zip(rows["source"], rows["source_index"], strict=True):
            out.append(f["images"][int(index)] if source.endswith(".h5") else decode_image(source, source))
    return out


@pytest.mark.slow
def test_noise_and_blank_images_score_as_out_of_distribution(smoke_model, tmp_path: Path, capsys) -> None:
    """A CNN from MLflow, its own training file: noise and blank images score above held-out galaxies."""
    from experiments.cli import main
    from pipelines.splits import load_split, split_path_for

    odd = tmp_path / "odd"
    odd.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        (odd / f"noise{i}.png").write_bytes(png_bytes(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
        (odd / f"blank{i}.png").write_bytes(png_bytes(np.full((64, 64, 3), 40 * i, dtype=np.uint8)))
    split = load_split(split_path_for(smoke_model.data_path), smoke_model.data_path)
    out = tmp_path / "cat.parquet"
    code = main(
        [
            "catalog",
            str(smoke_model.data_path),
            str(odd),
            "--out",
            str(out),
            "--ood",
            "on",
            "--model",
            f"{smoke_model.registered_name}@champion",
            "--tracking-uri",
            smoke_model.tracking_uri,
            "--flag-uncertain",
            "5",
        ]
    )
    assert code == 0, capsys.readouterr().err
    page = (tmp_path / "cat-inspect" / "index.html").read_text()
    assert "noise" in page and "blank" in page  # out-of-distribution images are routed to a person
    df = pq.read_table(out).to_pandas()
    held_out = df.iloc[split.test]["ood_score"]
    odd_scores = df[df["source"].str.contains("/odd/")]["ood_score"]
    assert len(odd_scores) == 8 and odd_scores.notna().all()
    assert odd_scores.min() > held_out.median(), (odd_scores.tolist(), held_out.describe())
    print(f"held-out median {held_out.median():.1f}, odd images {sorted(odd_scores.round(1))}")
    assert df[df["source"].str.contains("/odd/")]["ood_flag"].mean() > df.iloc[split.test]["ood_flag"].mean()


def test_flag_uncertain_writes_a_gallery_of_the_most_uncertain(survey: dict[str, Path], tmp_path: Path) -> None:
    from experiments.catalog.inspect import write_inspection
    from experiments.catalog.ood import fit_detector

    rng = np.random.default_rng(1)
    det = fit_detector(rng.normal(0.5, 0.01, (300, 3)), rng.integers(0, 3, 300), rng.normal(0.5, 0.01, (100, 3)))
    predictor = fake_predictor(with_embedding=True)
    out = tmp_path / "cat.parquet"
    run_catalog(plan_catalog_inputs([str(survey["h5"]), str(survey["folder"])]), predictor, out, ood=det)
    df = pq.read_table(out).to_pandas()
    folder = write_inspection(out, CLASSES, tmp_path / "inspect", 3, title="test")
    page = (folder / "index.html").read_text()
    top = df[df["error"].isna()].sort_values(["entropy", "row"], ascending=[False, True])["id"].head(3)
    assert all(html_escape(i) in page for i in top) and "Most uncertain" in page and "Out of distribution" in page
    flagged = df[df["ood_flag"].eq(True).to_numpy()]
    assert len(flagged) > 0 and "(flagged)" in page
    assert (folder / "gallery.png").is_file() and len(list((folder / "img").glob("*.png"))) >= 3
    assert "broken.png" not in page  # error rows have no prediction to inspect


def html_escape(text: str) -> str:
    import html

    return html.escape(text)


@pytest.mark.slow
def test_spark_engine_in_local_mode_equals_the_native_catalog(
    smoke_model, survey: dict[str, Path], tmp_path: Path, capsys
) -> None:
    """The same inputs through ``--engine spark`` (local[2], the model run by mlflow.pyfunc.spark_udf) and the
    native job: same rows, ids, errors and predictions; probabilities, out-of-distribution scores and
    embeddings equal within float tolerance (the same detector, fitted on the model's validation split)."""
    import shutil

    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("no Java runtime for Spark (.ci/install_java.sh installs Java 17)")
    pytest.importorskip("pyspark", reason="pyspark is not installed (the dev extras install it)")
    from experiments.cli import main

    args = [
        str(survey["h5"]),
        str(survey["folder"]),
        str(survey["list"]),
        "--model",
        f"{smoke_model.registered_name}@champion",
        "--tracking-uri",
        smoke_model.tracking_uri,
    ]
    assert main(["catalog", *args, "--out", str(tmp_path / "native.parquet"), "--ood", "on", "--with-embedding"]) == 0
    assert (
        main(
            [
                "catalog",
                *args,
                "--out",
                str(tmp_path / "spark.parquet"),
                "--engine",
                "spark",
                "--with-embedding",
                "--spark-master",
                "local[2]",
                "--spark-partitions",
                "3",
                "--ood",
                "on",
            ]
        )
        == 0
    ), capsys.readouterr().err
    native = pq.read_table(tmp_path / "native.parquet")
    spark = pq.read_table(tmp_path / "spark.parquet")
    assert spark.schema.remove_metadata() == native.schema.remove_metadata()
    meta_native, meta_spark = (json.loads(t.schema.metadata[b"galaxy10"]) for t in (native, spark))
    assert meta_spark["engine"] == "spark" and meta_spark["ood"]["threshold"] == meta_native["ood"]["threshold"]
    a, b = native.to_pandas(), spark.to_pandas()
    floats = [c for c in a.columns if c.startswith("p_")] + ["max_probability", "entropy", "ood_score"]
    exact = [c for c in a.columns if c not in floats and c not in ("ood_flag", "embedding")]
    pd.testing.assert_frame_equal(a[exact], b[exact])
    ok = a["error"].isna().to_numpy()
    assert b.loc[~ok, "embedding"].isna().all()
    np.testing.assert_allclose(np.stack(a.loc[ok, "embedding"]), np.stack(b.loc[ok, "embedding"]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a[floats].to_numpy(dtype=float), b[floats].to_numpy(dtype=float), rtol=1e-4, atol=1e-6)
    assert b["error"].notna().sum() == 2
    assert b["ood_score"].notna().sum() == len(b) - 2 and b["ood_flag"].isna().sum() == 2
    threshold = meta_native["ood"]["threshold"]
    clear = (a["ood_score"] - threshold).abs() > 1e-3 * threshold  # flags agree away from the threshold itself
    assert clear.sum() >= len(a) - 3
    assert (a.loc[clear, "ood_flag"] == b.loc[clear, "ood_flag"]).all()


def test_fits_output_holds_the_same_rows(survey: dict[str, Path], tmp_path: Path) -> None:
    from astropy.io import fits

    from experiments.catalog.fits import write_fits

    out = tmp_path / "cat.parquet"
    df = _catalog(survey, out, chunk_size=8)
    path = write_fits(out, tmp_path / "cat.fits")
    with fits.open(path) as hdus:
        data, header = hdus["CATALOG"].data, hdus["CATALOG"].header
        assert len(data) == len(df) and list(data["id"]) == list(df["id"])
        np.testing.assert_allclose(
            np.asarray(data["p_round_smooth"])[df["error"].isna().to_numpy()],
            df["p_round_smooth"].dropna().to_numpy(),
            rtol=1e-6,
        )
        assert np.isnan(np.asarray(data["p_round_smooth"])[df["error"].notna().to_numpy()]).all()
        assert list(data["error"][df["error"].notna().to_numpy()]) == df["error"].dropna().tolist()
        assert header["MODELURI"] == "models:/fake@champion"


def test_with_embedding_adds_each_rows_embedding(survey: dict[str, Path], tmp_path: Path) -> None:
    from catalog_fakes import colour_embedding

    from experiments.catalog.columns import catalog_schema

    out = tmp_path / "cat.parquet"
    inputs = plan_catalog_inputs([str(survey["h5"]), str(survey["folder"])])
    run_catalog(inputs, fake_predictor(with_embedding=True), out, chunk_size=5, with_embedding=True)
    table = pq.read_table(out)
    assert table.schema.remove_metadata() == catalog_schema(CLASSES, embedding=True)
    df = table.to_pandas()
    good = df["error"].isna().to_numpy()
    emb = np.stack(df["embedding"][good].to_numpy())
    expected = np.concatenate([colour_embedding(img[None]) for img in _images(survey, df[good])])
    np.testing.assert_allclose(emb, expected, rtol=1e-6)
    assert df["embedding"][~good].isna().all()
    with pytest.raises(DataError, match="gives no embeddings"):
        run_catalog(inputs, fake_predictor(), tmp_path / "x.parquet", with_embedding=True)
    from astropy.io import fits

    from experiments.catalog.fits import write_fits

    with fits.open(write_fits(out, tmp_path / "cat.fits")) as hdus:
        np.testing.assert_allclose(np.asarray(hdus["CATALOG"].data["embedding"])[good], emb, rtol=1e-6)


def test_the_spark_model_of_a_d4_cnn_loads_where_galaxy10_was_not_imported(tmp_path: Path) -> None:
    """The pyfunc model the Spark engine hands to ``spark_udf`` registers the platform's layers itself: an
    executor that never imported ``models`` loads a D4 CNN (MLflow's keras flavour alone cannot) and predicts
    what the CNN predicts."""
    from experiments.settings.run import load_config
    from experiments.tracking.pyfunc import save_spark_cnn_model
    from models import build_model

    cnn = build_model(load_config(None, ["model.name=d4_cnn"]).model, input_size=64, num_classes=3, precision="float32")
    cnn.save(tmp_path / "cnn.keras")
    folder = save_spark_cnn_model(tmp_path / "cnn.keras", tmp_path / "spark-model", crop=64, n_classes=3)
    x = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = (
        "import sys, numpy as np, mlflow.pyfunc\n"
        "assert 'models' not in sys.modules\n"
        f"m = mlflow.pyfunc.load_model({str(folder)!r})\n"
        f"np.save({str(tmp_path / 'p.npy')!r}, m.predict(np.load({str(tmp_path / 'x.npy')!r})))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "step" not in proc.stdout  # no Keras progress bar
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), cnn.predict(x, verbose=0), rtol=1e-4, atol=1e-6)
