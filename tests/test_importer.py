"""pipelines.importer and ``galaxy10 data import``: real ring set, class rules, bad files, resizing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.errors import DataError
from experiments.cli import main
from pipelines.classes import CLASS_NAMES
from pipelines.importer import import_folder, load_image, resolve_classes
from pipelines.reader import Galaxy10File, provenance, validate_galaxy10

RINGS = "gz_decals_zoobot_rings"


def save_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def make_folder(root: Path, labels: list, *, size: int = 20, extra: dict | None = None) -> tuple[Path, Path]:
    """Write ``len(labels)`` small PNGs and a catalog with ``file`` and ``label`` columns."""
    rng = np.random.default_rng(0)
    rows = []
    for i, lab in enumerate(labels):
        save_png(root / "img" / f"g{i}.png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        rows.append({"file": f"img/g{i}.png", "label": lab, **{k: v[i] for k, v in (extra or {}).items()}})
    csv = root / "labels.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return root, csv


# --- the real DECaLS ring set ---------------------------------------------------------------------


def test_import_real_ring_set(realsamples: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = realsamples / RINGS
    out = tmp_path / "data" / "rings.h5"
    rc = main(
        [
            "data",
            "import",
            str(folder),
            "--labels",
            str(folder / "catalog.csv"),
            "--label-column",
            "ring",
            "--out",
            str(out),
            "--size",
            "64",
        ]
    )
    assert rc == 0
    assert f"imported 470 images (64 px, custom classes) into {out}" in capsys.readouterr().out
    info = validate_galaxy10(out)
    assert info.n_images == 470 and info.image_size == 64
    assert info.class_names == ("0", "1") and info.class_counts == (235, 235) and info.is_custom
    assert info.attrs["synthetic"] is False and info.attrs["source"] == "import"
    assert info.attrs["created_by"] == "galaxy10 data import"
    assert info.attrs["source_folder"] == str(folder.resolve())
    assert json.loads(info.attrs["class_names"]) == ["0", "1"]
    assert provenance(out) == "imported"
    catalog = pd.read_csv(folder / "catalog.csv")
    with Galaxy10File(out) as g10:
        np.testing.assert_array_equal(g10.labels(), catalog["ring"].to_numpy())
        images = g10.images([0, 469])
    # row order is the CSV order, and the pixels are the real image, resized
    for row, img in zip([0, 469], images):
        np.testing.assert_array_equal(img, load_image(folder / catalog["file"][row], 64))
        assert img.std() > 5  # a real galaxy cutout, not a blank
    assert list(tmp_path.joinpath("data").iterdir()) == [out]  # no temp file left


def test_ring_set_with_class_names_and_skip_bad(
    realsamples: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    src = realsamples / RINGS
    catalog = pd.read_csv(src / "catalog.csv")
    few = pd.concat([catalog[catalog.ring == 0].head(3), catalog[catalog.ring == 1].head(3)])
    folder = tmp_path / "rings"
    for rel in few["file"]:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / rel, folder / rel)
    # a text file named .png, a truncated PNG and a listed-but-missing file
    (folder / "images_256" / "text.png").write_text("not an image")
    good = (folder / few["file"].iloc[0]).read_bytes()
    (folder / "images_256" / "cut.png").write_bytes(good[: len(good) // 3])
    bad_rows = pd.DataFrame(
        {"file": ["images_256/text.png", "images_256/cut.png", "images_256/gone.png"], "ring": [0, 1, 1]}
    )
    table = pd.concat([few[["file", "ring"]], bad_rows], ignore_index=True)
    table.to_csv(folder / "catalog.csv", index=False)
    out = tmp_path / "rings.h5"
    args = [
        "data",
        "import",
        str(folder),
        "--labels",
        str(folder / "catalog.csv"),
        "--label-column",
        "ring",
        "--class-names",
        "not_ring,ring",
        "--out",
        str(out),
        "--size",
        "32",
    ]

    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"galaxy10: error: 3 of 9 rows in {folder / 'catalog.csv'} are unusable (")
    assert "images_256/gone.png: file not found" in err
    assert "images_256/text.png: unreadable image (UnidentifiedImageError" in err
    assert "images_256/cut.png: unreadable image (OSError" in err
    assert err.endswith("fix or remove them, or pass --skip-bad to import the rest")
    assert "\n" not in err and not out.exists() and not list(tmp_path.glob(".rings.h5.*"))

    assert main(args + ["--skip-bad"]) == 0
    printed = capsys.readouterr().out
    assert "skipped 3 bad rows:" in printed and "images_256/cut.png: unreadable image" in printed
    info = validate_galaxy10(out)
    assert info.n_images == 6 and info.class_names == ("not_ring", "ring") and info.class_counts == (3, 3)
    assert info.attrs["n_skipped"] == 3


# --- class rules ----------------------------------------------------------------------------------


def test_resolve_classes_rules() -> None:
    assert resolve_classes(["barred", "Round Smooth", "cigar"])[:2] == ("galaxy10", CLASS_NAMES)
    assert resolve_classes(["barred", "Round Smooth"])[2] == {"barred": 5, "Round Smooth": 2}
    # bare integers are ambiguous: a custom set unless told they are Galaxy10 labels
    assert resolve_classes(["1", "0", "1"]) == ("custom", ("0", "1"), {"0": 0, "1": 1})
    assert resolve_classes(["3", "7"], "galaxy10")[2] == {"3": 3, "7": 7}
    assert resolve_classes(["10", "2", "9"]) == ("custom", ("2", "9", "10"), {"2": 0, "9": 1, "10": 2})
    assert resolve_classes(["ring", "smooth", "barred"])[:2] == ("custom", ("barred", "ring", "smooth"))
    assert resolve_classes(["0", "1"], class_names=["no", "yes"])[1:] == (("no", "yes"), {"0": 0, "1": 1})
    mode, names, mapping = resolve_classes(["barred", "blob"], "galaxy10")
    assert mapping == {"barred": 5}  # 'blob' is left for the caller to report
    with pytest.raises(DataError, match="unknown class mode 'x'"):
        resolve_classes(["1"], "x")
    with pytest.raises(DataError, match="--class-names names integer labels 0..K-1, but the labels include 'a'"):
        resolve_classes(["a"], "custom", ["x"])
    with pytest.raises(DataError, match="class names are fixed for Galaxy10 labels"):
        resolve_classes(["barred"], "auto", ["x"])


def test_galaxy10_slugs_import_as_galaxy10(tmp_path: Path) -> None:
    folder, csv = make_folder(tmp_path / "f", ["barred", "Round Smooth", "edge_on_bulge", "barred"])
    report = import_folder(folder, csv, tmp_path / "g.h5", size=16, progress=False)
    assert report.class_mode == "galaxy10" and report.class_names == CLASS_NAMES
    info = validate_galaxy10(tmp_path / "g.h5")
    assert not info.is_custom and info.class_counts[5] == 2 and info.class_counts[2] == 1
    with Galaxy10File(tmp_path / "g.h5") as g10:
        np.testing.assert_array_equal(g10.labels(), [5, 2, 9, 5])


def test_integer_labels_as_galaxy10_and_unknown_classes_named(tmp_path: Path) -> None:
    folder, csv = make_folder(tmp_path / "f", [3, 7, 12, 7])
    with pytest.raises(DataError) as err:
        import_folder(folder, csv, tmp_path / "g.h5", size=16, classes="galaxy10", progress=False)
    assert "img/g2.png: unknown class '12'" in str(err.value) and "1 of 4 rows" in str(err.value)
    report = import_folder(folder, csv, tmp_path / "g.h5", size=16, classes="galaxy10", skip_bad=True, progress=False)
    assert report.n_images == 3 and report.skipped == (("img/g2.png", "unknown class '12'"),)
    with Galaxy10File(tmp_path / "g.h5") as g10:
        np.testing.assert_array_equal(g10.labels(), [3, 7, 7])


def test_coordinates_columns_are_written(tmp_path: Path) -> None:
    folder, csv = make_folder(
        tmp_path / "f", ["a", "b", "a"], extra={"RA": [10.5, 11.0, 12.25], "Dec": [-1.0, 2.0, 3.5]}
    )
    import_folder(folder, csv, tmp_path / "c.h5", size=16, progress=False)
    with Galaxy10File(tmp_path / "c.h5") as g10:
        ra, dec = g10.coords()
    np.testing.assert_array_equal(ra, [10.5, 11.0, 12.25])
    np.testing.assert_array_equal(dec, [-1.0, 2.0, 3.5])


# --- errors ---------------------------------------------------------------------------------------


def test_missing_column_names_the_columns(tmp_path: Path) -> None:
    folder, csv = make_folder(tmp_path / "f", [0, 1])
    with pytest.raises(DataError) as err:
        import_folder(folder, csv, tmp_path / "x.h5", label_column="ring", progress=False)
    assert str(err.value) == (
        f"{csv} has no column 'ring' (columns: file, label); name the right ones with --file-column/--label-column"
    )


def test_missing_folder_and_csv(tmp_path: Path) -> None:
    folder, csv = make_folder(tmp_path / "f", [0, 1])
    with pytest.raises(DataError, match="image folder .*nope not found"):
        import_folder(tmp_path / "nope", csv, tmp_path / "x.h5")
    with pytest.raises(DataError, match="labels CSV .*none.csv not found"):
        import_folder(folder, tmp_path / "none.csv", tmp_path / "x.h5")


def test_all_bad_is_refused_even_with_skip_bad(tmp_path: Path) -> None:
    folder, csv = make_folder(tmp_path / "f", [0, 1])
    for p in (folder / "img").iterdir():
        p.write_text("junk")
    with pytest.raises(DataError, match=r"no usable images in .* \(2 bad: img/g0.png: unreadable image"):
        import_folder(folder, csv, tmp_path / "x.h5", skip_bad=True, progress=False)
    assert not (tmp_path / "x.h5").exists()


def test_error_lists_first_few_and_the_count(tmp_path: Path) -> None:
    folder, csv = make_folder(tmp_path / "f", list(range(8)))
    table = pd.read_csv(csv)
    table["file"] = [f"missing{i}.png" for i in range(8)]
    table.to_csv(csv, index=False)
    with pytest.raises(DataError) as err:
        import_folder(folder, csv, tmp_path / "x.h5", progress=False)
    msg = str(err.value)
    assert "8 of 8 rows" in msg and "missing4.png: file not found; ... and 3 more" in msg
    assert "missing5.png" not in msg


# --- pixels: crop, resize, colour ----------------------------------------------------------------


def test_centre_crop_to_square(tmp_path: Path) -> None:
    img = np.zeros((20, 30, 3), np.uint8)
    img[:, :5] = (255, 0, 0)  # the 5 columns cropped on each side are red, the centre green
    img[:, 25:] = (255, 0, 0)
    img[:, 5:25] = (0, 200, 0)
    got = load_image(save_png(tmp_path / "wide.png", img), 20)
    assert got.shape == (20, 20, 3)
    assert np.all(got == (0, 200, 0))
    tall = load_image(save_png(tmp_path / "tall.png", img.transpose(1, 0, 2).copy()), 20)
    assert np.all(tall == (0, 200, 0))


def test_resize_is_anti_aliased(tmp_path: Path) -> None:
    # a 1-pixel checkerboard shrunk 8x: nearest-neighbour would keep pure black/white pixels
    board = ((np.indices((64, 64)).sum(axis=0) % 2) * 255).astype(np.uint8)
    got = load_image(save_png(tmp_path / "board.png", np.stack([board] * 3, axis=-1)), 8)
    assert got.shape == (8, 8, 3)
    assert np.all(np.abs(got.astype(int) - 128) <= 3)


def test_grey_and_rgba_become_rgb(tmp_path: Path) -> None:
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((10, 10), 77, np.uint8), mode="L").save(grey)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.full((10, 10, 4), 90, np.uint8), mode="RGBA").save(rgba)
    jpg = tmp_path / "x.jpg"
    Image.fromarray(np.full((12, 12, 3), 150, np.uint8)).save(jpg)
    assert np.all(load_image(grey, 10) == 77)
    assert np.all(load_image(rgba, 10) == 90)
    assert load_image(jpg, 10).shape == (10, 10, 3)


def test_import_help_documents_the_class_rule(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["data", "import", "--help"])
    text = capsys.readouterr().out
    assert "--classes" in text and "bare integers" in text and "--skip-bad" in text


def test_output_is_h5_with_expected_layout(tmp_path: Path) -> None:
    folder, csv = make_folder(tmp_path / "f", ["x", "y", "y"], size=24)
    import_folder(folder, csv, tmp_path / "o.h5", size=12, progress=False)
    with h5py.File(tmp_path / "o.h5", "r") as f:
        assert f["images"].dtype == np.uint8 and f["images"].shape == (3, 12, 12, 3)
        assert f["ans"].dtype == np.uint8 and list(f["ans"][()]) == [0, 1, 1]
        assert "ra" not in f
        assert json.loads(f.attrs["class_names"]) == ["x", "y"]
