"""The GalSim synthetic Galaxy10 generator (``synth.generator``) and the gallery."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from core.errors import ConfigError, DataError
from experiments.cli import main
from pipelines.classes import CLASS_SLUGS, GALAXY10_COUNTS, NUM_CLASSES, class_index
from pipelines.gallery import gallery_title, make_gallery, pick_examples
from pipelines.reader import provenance, validate_galaxy10
from synth.generator import GENERATOR, GENERATOR_VERSION, render_dataset, synthetic_labels
from synth.params import class_counts
from synth.render import render_image

N, SIZE = 50, 64


@pytest.fixture(scope="module")
def synth_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 50-image, 64 px synthetic file rendered in this process, shared by the module."""
    return render_dataset(tmp_path_factory.mktemp("synth") / "s.h5", n=N, size=SIZE, seed=3, workers=1, progress=False)


def _read(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f.keys()}


def test_schema_and_attributes(synth_file: Path) -> None:
    with h5py.File(synth_file, "r") as f:
        images = f["images"]
        assert images.shape == (N, SIZE, SIZE, 3) and images.dtype == np.uint8
        assert images.chunks == (1, SIZE, SIZE, 3) and images.compression is not None
        assert f["ans"].dtype == np.uint8 and f["ans"].shape == (N,)
        assert f["ra"].dtype == np.float64 and f["dec"].dtype == np.float64
        assert f["redshift"].dtype == np.float32 and f["pxscale"].dtype == np.float32
        np.testing.assert_allclose(f["pxscale"][()], 0.262 * 256 / SIZE, rtol=1e-6)
        attrs = dict(f.attrs)
        pairs = np.stack([f["ra"][()], f["dec"][()]], axis=1)
        redshift = f["redshift"][()]
    assert len(np.unique(pairs, axis=0)) == N  # positions are unique
    assert np.all((redshift > 0) & (redshift < 0.5))
    assert attrs["synthetic"] and attrs["generator"] == GENERATOR
    assert attrs["generator_version"] == GENERATOR_VERSION
    assert attrs["seed"] == 3 and attrs["n"] == N and attrs["size"] == SIZE and attrs["difficulty"] == 0.5
    assert attrs["galsim_version"].count(".") >= 1
    params = json.loads(attrs["parameters"])
    assert set(params["ranges"]) == {"common", *CLASS_SLUGS}
    assert params["ranges"]["cigar"]["q"][1] < params["ranges"]["round"]["q"][1]
    info = validate_galaxy10(synth_file)  # the platform's own reader accepts it
    assert info.synthetic and info.n_images == N and info.image_size == SIZE
    assert provenance(synth_file) == "synthetic"


def test_class_counts_largest_remainder() -> None:
    assert tuple(class_counts(sum(GALAXY10_COUNTS))) == GALAXY10_COUNTS
    # n = 50: exact shares 3.05 5.22 7.46 5.71 0.94 5.76 5.16 7.41 4.01 5.28 -> floors sum to 46,
    # the four largest remainders (0.94, 0.76, 0.71, 0.46: classes 4, 5, 3, 2) get one more each
    assert class_counts(50).tolist() == [3, 5, 8, 6, 1, 6, 5, 7, 4, 5]
    for n in (10, 37, 4000):
        counts = class_counts(n)
        assert counts.sum() == n
        assert np.all(np.abs(counts - n * np.asarray(GALAXY10_COUNTS) / sum(GALAXY10_COUNTS)) < 1)


def test_labels_follow_proportions_and_are_shuffled(synth_file: Path) -> None:
    labels = _read(synth_file)["ans"]
    assert np.bincount(labels, minlength=NUM_CLASSES).tolist() == class_counts(N).tolist()
    assert not np.all(np.diff(labels.astype(int)) >= 0)  # not sorted by class
    np.testing.assert_array_equal(labels, synthetic_labels(N, 3))


def test_deterministic_for_seed_whatever_the_workers(tmp_path: Path, synth_file: Path) -> None:
    again = render_dataset(tmp_path / "two_workers.h5", n=N, size=SIZE, seed=3, workers=2, progress=False)
    a, b = _read(synth_file), _read(again)
    for key in ("images", "ans", "ra", "dec", "redshift", "pxscale"):
        assert a[key].tobytes() == b[key].tobytes(), key


def test_different_seeds_differ(tmp_path: Path, synth_file: Path) -> None:
    other = _read(render_dataset(tmp_path / "seed4.h5", n=N, size=SIZE, seed=4, workers=1, progress=False))
    base = _read(synth_file)
    assert not np.array_equal(other["images"], base["images"])
    assert not np.array_equal(other["ans"], base["ans"])
    assert not np.array_equal(other["ra"], base["ra"])


def _galaxy_stats(image: np.ndarray) -> tuple[float, float, float]:
    """Central galaxy's (axis ratio from second moments, centre-minus-sky brightness, red/blue)."""
    lum = image.astype(np.float64).mean(axis=-1)
    s = lum.shape[0]
    sky = np.median(np.concatenate([lum[:8, :8].ravel(), lum[-8:, -8:].ravel()]))
    c = slice(s // 4, 3 * s // 4)
    core = np.clip(lum[c, c] - sky, 0, None)
    w = np.where(core > 0.25 * core.max(), core, 0.0)  # the galaxy's bright body, not stars or noise
    yy, xx = np.mgrid[0 : w.shape[0], 0 : w.shape[1]]
    m = w.sum()
    cx, cy = (w * xx).sum() / m, (w * yy).sum() / m
    cov = np.cov(np.stack([xx.ravel() - cx, yy.ravel() - cy]), aweights=w.ravel())
    ev = np.linalg.eigvalsh(cov)
    rgb = image[c, c].astype(np.float64)[w > 0]
    return float(np.sqrt(ev[0] / ev[1])), float(core.max()), float(rgb[:, 0].mean() / rgb[:, 2].mean())


def test_each_class_renders_its_shape_and_colour() -> None:
    seeds = np.random.SeedSequence(11).spawn(NUM_CLASSES * 8)
    stats = {}
    for k in range(NUM_CLASSES):
        rows = [_galaxy_stats(render_image(k, seeds[8 * k + j], 128, 0.5)[0]) for j in range(8)]
        stats[CLASS_SLUGS[k]] = np.array(rows).mean(axis=0)
    for slug, (_, contrast, _) in stats.items():
        assert contrast > 40, f"{slug} has no bright galaxy in the centre"
    q = {slug: v[0] for slug, v in stats.items()}
    assert q["cigar"] < q["in_between"] < q["round"]
    assert q["edge_on_no_bulge"] < q["in_between"] and q["edge_on_bulge"] < q["in_between"]
    red_over_blue = {slug: v[2] for slug, v in stats.items()}
    assert red_over_blue["round"] > red_over_blue["loose_spiral"]  # bulges red, arms and knots blue
    # and the images of different classes are not the same pixels
    a, _ = render_image(class_index("round"), seeds[0], 64, 0.5)
    b, _ = render_image(class_index("loose_spiral"), seeds[0], 64, 0.5)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"n": 5}, ConfigError, "--n 5 is out of range; render 10-1,000,000 images (e.g. --n 4000)"),
        ({"size": 16}, ConfigError, "--size 16 is out of range; use 32-2048 px (Galaxy10 images are 256)"),
        ({"difficulty": 1.5}, ConfigError, "difficulty 1.5 is outside [0, 1]; pass e.g. --difficulty 0.5"),
        ({"difficulty": -0.1}, ConfigError, "difficulty -0.1 is outside [0, 1]; pass e.g. --difficulty 0.5"),
        ({"workers": 0}, ConfigError, "--workers 0 is out of range; use 1-256, or omit it to use every CPU core"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, error: type, message: str) -> None:
    args = {"n": 20, "size": 32, "workers": 1, "progress": False, **kwargs}
    with pytest.raises(error) as exc:
        render_dataset(tmp_path / "x.h5", **args)
    assert str(exc.value) == message
    assert list(tmp_path.iterdir()) == []


def test_output_folder_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(DataError) as exc:
        render_dataset(blocker / "x.h5", n=20, size=32, workers=1, progress=False)
    assert str(exc.value) == (
        f"cannot write {blocker / 'x.h5'}: folder {blocker} is not writable; choose another --out"
    )
    with pytest.raises(DataError, match="is a folder; give a file name"):
        render_dataset(tmp_path, n=20, size=32, workers=1, progress=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_output_folder_read_only(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(DataError, match="is not writable; choose another --out"):
            render_dataset(ro / "x.h5", n=20, size=32, workers=1, progress=False)
    finally:
        ro.chmod(0o700)


def test_failure_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import synth.generator as synthetic

    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 20:
            raise KeyboardInterrupt
        return render_image(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        render_dataset(tmp_path / "x.h5", n=40, size=32, workers=1, progress=False)
    assert calls["n"] == 21
    assert list(tmp_path.iterdir()) == []


def test_cli_synth_and_gallery(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "data" / "syn.h5"
    assert (
        main(
            [
                "data",
                "synth",
                "--n",
                "20",
                "--size",
                "48",
                "--seed",
                "1",
                "--difficulty",
                "0.3",
                "--workers",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert f"wrote SYNTHETIC data {out}: 20 images of 48 px, seed 1, difficulty 0.3" in printed
    with h5py.File(out, "r") as f:
        assert f["images"].shape == (20, 48, 48, 3) and f.attrs["difficulty"] == 0.3
    png = tmp_path / "g.png"
    assert main(["data", "gallery", str(out), "--out", str(png), "--per-class", "2", "--thumb", "48"]) == 0
    assert f"wrote gallery {png}" in capsys.readouterr().out
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 2 * 48 and im.height > NUM_CLASSES * 48


def test_cli_reports_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "synth", "--n", "5", "--out", str(tmp_path / "x.h5")]) == 2
    assert capsys.readouterr().err.strip() == (
        "galaxy10: error: --n 5 is out of range; render 10-1,000,000 images (e.g. --n 4000)"
    )
    assert main(["data", "gallery", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "g.png")]) == 2
    assert "galaxy10: error:" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


def test_gallery_on_real_schema_file(make_h5, tmp_path: Path) -> None:
    real_like = make_h5("plain.h5", n=60, size=32, synthetic=False)
    small, big = tmp_path / "small.png", tmp_path / "big.png"
    make_gallery(real_like, small, per_class=2, thumb=32)
    make_gallery(real_like, big, per_class=5, thumb=32)
    with Image.open(small) as a, Image.open(big) as b:
        assert b.width > a.width and a.height == b.height
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    info = validate_galaxy10(real_like)
    assert gallery_title(info).startswith("Galaxy10 gallery: plain.h5")
    with pytest.raises(ConfigError, match="--per-class 0 is out of range; use 1-100"):
        make_gallery(real_like, tmp_path / "none.png", per_class=0)


def test_gallery_title_and_picks(synth_file: Path) -> None:
    title = gallery_title(validate_galaxy10(synth_file))
    assert title.startswith("SYNTHETIC Galaxy10 gallery: s.h5 (50 images")
    labels = np.array([0, 0, 0, 1, 2, 2], dtype=np.uint8)
    picks = pick_examples(labels, 4, per_class=2, seed=0)
    assert [len(p) for p in picks] == [2, 1, 2, 0]
    assert all(np.all(labels[p] == k) for k, p in enumerate(picks))
    assert [p.tolist() for p in picks] == [p.tolist() for p in pick_examples(labels, 4, per_class=2, seed=0)]
