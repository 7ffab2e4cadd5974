"""``galaxy10 data info``: provenance, class table, saved split, duplicate groups, JSON, errors."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from experiments.cli import main
from pipelines import reader


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    rc = main(["data", "info", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_synthetic_file_summary(tiny_h5: Path, capsys: pytest.CaptureFixture) -> None:
    rc, out, _ = run(capsys, str(tiny_h5))
    assert rc == 0
    lines = out.splitlines()
    assert "SYNTHETIC DATA" in lines[1]
    sha = hashlib.sha256(tiny_h5.read_bytes()).hexdigest()
    assert f"path         {tiny_h5}" in lines
    assert (
        "provenance   SYNTHETIC (generator tests.conftest.write_galaxy10_h5, seed 0): not real Galaxy10 DECaLS images"
    ) in lines
    assert f"sha256       {sha[:12]}" in lines
    assert "images       200 x 64x64x3 uint8" in lines
    assert "coordinates  ra, dec, redshift, pxscale" in lines
    assert "classes      10 (Galaxy10)" in lines
    rows = [ln.split() for ln in lines if ln.startswith("    ") and ln.split()[0].isdigit()]
    assert len(rows) == 10
    assert rows[5][:3] == ["5", "barred", "Barred"] and rows[5][-2:] == ["20", "10.0%"]
    assert "split        none saved (run `galaxy10 data split`)" in lines


def test_duplicate_groups_are_counted(make_h5: Callable[..., Path], capsys: pytest.CaptureFixture) -> None:
    path = make_h5("dup.h5", n=30)
    with h5py.File(path, "r+") as f:
        f["images"][5] = f["images"][0]  # identical pixels
        f["ra"][8], f["dec"][8] = f["ra"][7], f["dec"][7] + 0.2 / 3600  # 0.2 arcsec apart
    rc, out, _ = run(capsys, str(path))
    assert rc == 0
    assert "duplicates   2 groups of identical pixels or same sky position (within 1 arcsec)" in out
    rc, out, _ = run(capsys, str(path), "--no-groups")
    assert "duplicates   not checked (--no-groups)" in out


def test_saved_split_sizes(tiny_h5: Path, capsys: pytest.CaptureFixture) -> None:
    from pipelines.splits import ensure_split, split_path_for

    split = ensure_split(tiny_h5)
    rc, out, _ = run(capsys, str(tiny_h5))
    assert rc == 0
    assert (
        f"split        train {len(split.train)} / val {len(split.val)} / test {len(split.test)}  "
        f"({split_path_for(tiny_h5)}, seed 42, {split.n_groups} groups)"
    ) in out
    assert len(split.train) + len(split.val) + len(split.test) == 200
    # the data changes: the saved split no longer matches, and info says so instead of failing
    with h5py.File(tiny_h5, "r+") as f:
        f.attrs["note"] = "edited"
    rc, out, _ = run(capsys, str(tiny_h5))
    assert rc == 0 and "split        unusable: split " in out and "was made for data" in out


def test_json_output(tiny_h5: Path, capsys: pytest.CaptureFixture) -> None:
    rc, out, _ = run(capsys, str(tiny_h5), "--json")
    assert rc == 0
    doc = json.loads(out)
    assert doc["provenance"] == "synthetic" and doc["n_images"] == 200 and doc["image_size"] == 64
    assert doc["sha256"] == hashlib.sha256(tiny_h5.read_bytes()).hexdigest()
    assert doc["class_set"] == "galaxy10" and [c["count"] for c in doc["classes"]] == [20] * 10
    assert doc["classes"][9] == {
        "index": 9,
        "slug": "edge_on_bulge",
        "name": "Edge-on with Bulge",
        "count": 20,
        "percent": 10.0,
    }
    assert doc["split"] is None and doc["duplicate_groups"] == 0
    assert doc["attrs"]["seed"] == 0 and doc["has_coords"] is True


def test_modified_and_official(
    make_h5: Callable[..., Path], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_h5("mine.h5", n=20, synthetic=False)
    rc, out, _ = run(capsys, str(path), "--no-groups")
    assert "provenance   modified: Galaxy10 schema but not the official release" in out
    assert "SYNTHETIC" not in out
    monkeypatch.setattr(reader, "OFFICIAL_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    rc, out, _ = run(capsys, str(path), "--no-groups")
    assert "provenance   official Galaxy10 DECaLS release (SHA-256 matches Zenodo record 10845026)" in out


def test_custom_class_set_uses_the_file_names(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    rows = []
    for i, lab in enumerate(["Ring galaxy", "smooth", "smooth", "smooth"]):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
        rows.append({"file": f"{i}.png", "label": lab})
    pd.DataFrame(rows).to_csv(tmp_path / "l.csv", index=False)
    assert (
        main(
            [
                "data",
                "import",
                str(tmp_path / "imgs"),
                "--labels",
                str(tmp_path / "l.csv"),
                "--out",
                "custom.h5",
                "--size",
                "8",
            ]
        )
        == 0
    )
    capsys.readouterr()
    rc, out, _ = run(capsys, "custom.h5")
    assert rc == 0
    assert "classes      2 (custom set)" in out
    assert (
        f"provenance   imported by `galaxy10 data import` from {tmp_path / 'imgs'} (labels {tmp_path / 'l.csv'})"
    ) in out
    rows = [ln.split() for ln in out.splitlines() if ln.startswith("    ") and ln.split()[0].isdigit()]
    assert rows == [["0", "ring_galaxy", "Ring", "galaxy", "1", "25.0%"], ["1", "smooth", "smooth", "3", "75.0%"]]


def test_default_file_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc, _, err = run(capsys)  # cwd is tmp_path: no data/ folder, so the synthetic default is missing
    assert rc == 2
    assert err.strip() == (
        "galaxy10: error: data file data/galaxy10_synthetic.h5 not found; put Galaxy10_DECals.h5 at "
        "data/Galaxy10_DECals.h5 (official release: Zenodo record 10845026, "
        "https://zenodo.org/records/10845026) or run `galaxy10 data synth` for the synthetic default"
    )
    (tmp_path / "bad.h5").write_text("hello")
    rc, out, err = run(capsys, "bad.h5")
    assert rc == 2 and out == "" and err.count("\n") == 1 and "is not an HDF5 file" in err


def test_default_file_prefers_the_real_file(
    tmp_path: Path, make_h5: Callable[..., Path], capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "data").mkdir()
    make_h5("data/galaxy10_synthetic.h5", n=20)
    rc, out, _ = run(capsys, "--no-groups")
    assert rc == 0 and "path         data/galaxy10_synthetic.h5" in out
    make_h5("data/Galaxy10_DECals.h5", n=30, synthetic=False)
    rc, out, _ = run(capsys, "--no-groups")
    assert rc == 0 and "path         data/Galaxy10_DECals.h5" in out and "images       30 x" in out
