"""Bad input at every entry point: ONE clear ``galaxy10: error: ...`` line, exit 2, and no trace left.

A table of (entry point x bad input). Each case writes its inputs into ``tmp_path``, snapshots the
folder, runs ``experiments.cli.main`` and checks that

- it returns 2 and stderr is exactly one line, ``galaxy10: error: <message>``, naming the problem;
- no file appeared in ``tmp_path`` (no database, cache, split, half-written output or temp file);
- it failed fast: before any model was built or any MLflow run / Optuna study was created.

The web page (``galaxy10 serve``) is exercised through Flask's test client with a stub predictor
(input rejection happens before the model is called): every bad upload gets a 4xx and a message.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from conftest import bomb_png, png_bytes, write_galaxy10_h5
from PIL import Image

from experiments.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "configs" / "smoke.yaml"
ENSEMBLE = ROOT / "experiments" / "configs" / "ensemble.yaml"
REFERENCE = ROOT / "experiments" / "configs" / "reference.yaml"
TUNE_CATALOG = ROOT / "experiments" / "configs" / "tune_catalog.yaml"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

# --------------------------------------------------------------------------------------------------
# Bad data files (each writer returns the path it made in tmp_path)


def _h5(path: Path, images: np.ndarray | None, ans: np.ndarray | None) -> Path:
    with h5py.File(path, "w") as f:
        if images is not None:
            f.create_dataset("images", data=images)
        if ans is not None:
            f.create_dataset("ans", data=ans)
    return path


def good_file(tmp: Path) -> Path:
    return write_galaxy10_h5(tmp / "good.h5", n=60, size=32)


def corrupt_h5(tmp: Path) -> Path:
    """The HDF5 signature followed by garbage (a file damaged after its first bytes)."""
    rng = np.random.default_rng(0)
    path = tmp / "corrupt.h5"
    path.write_bytes(HDF5_SIGNATURE + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def truncated_h5(tmp: Path) -> Path:
    full = write_galaxy10_h5(tmp / "full.h5", n=60, size=32).read_bytes()
    (tmp / "full.h5").unlink()
    path = tmp / "truncated.h5"
    path.write_bytes(full[: len(full) // 2])
    return path


def zero_byte_h5(tmp: Path) -> Path:
    path = tmp / "empty.h5"
    path.write_bytes(b"")
    return path


def text_as_h5(tmp: Path) -> Path:
    path = tmp / "notes.h5"
    path.write_text("this is not an HDF5 file\n")
    return path


def nan_float_images(tmp: Path) -> Path:
    return _h5(tmp / "nan.h5", np.full((20, 32, 32, 3), np.nan, dtype=np.float32), np.arange(20, dtype=np.uint8) % 10)


def rank3_images(tmp: Path) -> Path:
    return _h5(tmp / "rank3.h5", np.zeros((20, 32, 32), np.uint8), np.arange(20, dtype=np.uint8) % 10)


def non_square_images(tmp: Path) -> Path:
    return _h5(tmp / "wide.h5", np.zeros((20, 32, 48, 3), np.uint8), np.arange(20, dtype=np.uint8) % 10)


def rgba_images(tmp: Path) -> Path:
    return _h5(tmp / "rgba.h5", np.zeros((20, 32, 32, 4), np.uint8), np.arange(20, dtype=np.uint8) % 10)


def labels_out_of_range(tmp: Path) -> Path:
    ans = np.arange(20, dtype=np.uint8) % 10
    ans[[3, 7]] = [12, 200]
    return _h5(tmp / "labels.h5", np.zeros((20, 32, 32, 3), np.uint8), ans)


def label_count_mismatch(tmp: Path) -> Path:
    return _h5(tmp / "count.h5", np.zeros((20, 32, 32, 3), np.uint8), np.arange(19, dtype=np.uint8) % 10)


def no_images_key(tmp: Path) -> Path:
    return _h5(tmp / "nokey.h5", None, np.arange(20, dtype=np.uint8) % 10)


def zero_images(tmp: Path) -> Path:
    return _h5(tmp / "none.h5", np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.uint8))


def a_folder(tmp: Path) -> Path:
    path = tmp / "folder.h5"
    path.mkdir()
    return path


def missing(tmp: Path) -> Path:
    return tmp / "missing.h5"


#: (writer, words the error line must contain)
BAD_FILES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "corrupt": (corrupt_h5, "corrupt"),
    "truncated": (truncated_h5, "truncated"),
    "zero-byte": (zero_byte_h5, "empty file (0 bytes)"),
    "not-hdf5": (text_as_h5, "not an HDF5 file"),
    "nan-float-images": (nan_float_images, "dtype float32, expected uint8"),
    "rank-3": (rank3_images, "rank 3"),
    "non-square": (non_square_images, "not square"),
    "rgba": (rgba_images, "4 channels"),
    "labels-out-of-range": (labels_out_of_range, "outside 0..9"),
    "label-count": (label_count_mismatch, "19 labels but 'images' has 20"),
    "no-images-key": (no_images_key, "lacks the HDF5 dataset(s) 'images'"),
    "zero-images": (zero_images, "holds 0 images"),
    "a-folder": (a_folder, "is a directory"),
    "missing": (missing, "not found"),
}


def tune_yaml(tmp: Path, *, space: object = None, **study: object) -> Path:
    doc = {
        "base": str(SMOKE),
        "run": {"train": {"epochs": 1}},
        "study": {"name": "bad", "n_trials": 2, **study},
        "search_space": {"model.dropout": {"type": "float", "low": 0.0, "high": 0.5}} if space is None else space,
    }
    path = tmp / "tune.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


#: How ``predict`` (which also takes PNG/JPEG files) words the file-level problems.
PREDICT_WORDS = {
    "zero-byte": "is empty (0 bytes)",
    "not-hdf5": "not a PNG or JPEG image",
    "a-folder": "is a folder",
    "missing": "does not exist",
}

#: Every command that reads a Galaxy10 file, with the file's path substituted for {f}.
DATA_COMMANDS: dict[str, Callable[[Path], list[str]]] = {
    "data-info": lambda f: ["data", "info", str(f), "--no-groups"],
    "data-split": lambda f: ["data", "split", str(f)],
    "data-gallery": lambda f: ["data", "gallery", str(f), "--out", str(f.parent / "gallery.png")],
    "baseline": lambda f: ["baseline", "--data", str(f)],
    "train": lambda f: ["train", "--config", str(SMOKE), "--data", str(f)],
    "tune": lambda f: ["tune", "--config", str(tune_yaml(f.parent)), "--data", str(f)],
    "predict": lambda f: ["predict", str(f)],
    "evaluate": lambda f: [
        "evaluate",
        "--data",
        str(f),
        "--recipe",
        f"a={REFERENCE}",
        "--recipe",
        f"b={REFERENCE}",
        "--out",
        str(f.parent / "ev"),
    ],
}


# --------------------------------------------------------------------------------------------------
# The checks


def snapshot(root: Path) -> set[str]:
    """Every file and folder under ``root`` (relative paths)."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def running_mlflow_runs(db: Path) -> int:
    """Runs still RUNNING in an MLflow SQLite store (0 when there is no store)."""
    import sqlite3

    if not db.is_file():
        return 0
    with sqlite3.connect(db) as conn:
        try:
            return int(conn.execute("SELECT COUNT(*) FROM runs WHERE status = 'RUNNING'").fetchone()[0])
        except sqlite3.Error:
            return 0


def fails_cleanly(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], *, expect: str) -> str:
    """Run the CLI on bad input; assert one error line containing ``expect``, exit 2, no new files."""
    capsys.readouterr()
    before = snapshot(tmp_path)
    code = cli_main(["-q", *argv])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit {code}; stderr: {err}"
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert lines[0].startswith("galaxy10: error: "), lines[0]
    assert expect.lower() in lines[0].lower(), f"{expect!r} not in {lines[0]!r}"
    assert out == "", f"stdout should be empty on a refused input, got: {out!r}"
    new = snapshot(tmp_path) - before
    assert not new, f"left behind: {sorted(new)}"
    assert running_mlflow_runs(tmp_path / "mlflow.db") == 0
    return lines[0]


@pytest.mark.parametrize("command", sorted(DATA_COMMANDS))
@pytest.mark.parametrize("bad", sorted(BAD_FILES))
def test_bad_data_file_at_every_entry_point(
    command: str, bad: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    writer, expect = BAD_FILES[bad]
    if command == "predict":  # predict also takes PNG/JPEG files, and says so
        expect = PREDICT_WORDS.get(bad, expect)
    path = writer(tmp_path)
    argv = DATA_COMMANDS[command](path)  # may write its config file next to the data (an input)
    line = fails_cleanly(argv, tmp_path, capsys, expect=expect)
    assert path.name in line  # the line names the file


# --------------------------------------------------------------------------------------------------
# Bad options, configs and search spaces (data is fine: the problem is elsewhere)


@dataclass(frozen=True)
class Case:
    """One bad invocation: ``setup(tmp, good_h5)`` writes inputs and returns argv."""

    setup: Callable[[Path, Path], list[str]]
    expect: str


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _yaml(path: Path, doc: object) -> Path:
    return _write(path, yaml.safe_dump(doc, sort_keys=False))


def _png(path: Path, size: tuple[int, int] = (40, 40)) -> Path:
    Image.fromarray(np.full((size[1], size[0], 3), 120, np.uint8)).save(path)
    return path


def import_case(
    rows: list[tuple[str, str]], files: dict[str, bytes | None] | None = None, *extra: str
) -> Callable[[Path, Path], list[str]]:
    """``data import`` of a folder holding ``files`` (None: a real PNG) with a CSV of ``rows``."""

    def setup(tmp: Path, _: Path) -> list[str]:
        folder = tmp / "imgs"
        folder.mkdir(exist_ok=True)
        for name, data in (files or {}).items():
            if data is None:
                _png(folder / name)
            else:
                (folder / name).write_bytes(data)
        csv = "file,label\n" + "".join(f"{f},{lab}\n" for f, lab in rows)
        _write(tmp / "labels.csv", csv)
        return [
            "data",
            "import",
            str(folder),
            "--labels",
            str(tmp / "labels.csv"),
            "--out",
            str(tmp / "out.h5"),
            *extra,
        ]

    return setup


CASES: dict[str, Case] = {
    # --- data import: path traversal, non-images, empty files, bad CSVs
    "import-path-traversal": Case(
        import_case([("a.png", "disturbed"), ("../../../../../../etc/passwd", "merging")], {"a.png": None}),
        "outside the image folder",
    ),
    "import-absolute-path": Case(
        import_case([("a.png", "disturbed"), ("/etc/passwd", "merging")], {"a.png": None}), "outside the image folder"
    ),
    "import-not-an-image": Case(
        import_case([("a.png", "disturbed"), ("b.png", "merging")], {"a.png": None, "b.png": b"GIF89a not really"}),
        "b.png: unreadable",
    ),
    "import-zero-byte-image": Case(
        import_case([("a.png", "disturbed"), ("z.png", "merging")], {"a.png": None, "z.png": b""}), "z.png: unreadable"
    ),
    "import-decompression-bomb": Case(
        import_case([("a.png", "disturbed"), ("bomb.png", "merging")], {"a.png": None, "bomb.png": bomb_png()}),
        "bomb.png",
    ),
    "import-unknown-class": Case(
        import_case(
            [("a.png", "disturbed"), ("b.png", "spiral-ish")], {"a.png": None, "b.png": None}, "--classes", "galaxy10"
        ),
        "unknown",
    ),
    "import-missing-column": Case(
        lambda tmp, _: (
            (tmp / "imgs").mkdir(),
            _write(tmp / "l.csv", "name,klass\na.png,0\n"),
            ["data", "import", str(tmp / "imgs"), "--labels", str(tmp / "l.csv"), "--out", str(tmp / "o.h5")],
        )[-1],
        "no column 'file', 'label'",
    ),
    "import-binary-csv": Case(
        lambda tmp, _: (
            (tmp / "imgs").mkdir(),
            (tmp / "l.csv").write_bytes(b"\xff\xfe\x00\x81" * 50),
            ["data", "import", str(tmp / "imgs"), "--labels", str(tmp / "l.csv"), "--out", str(tmp / "o.h5")],
        )[-1],
        "not a readable CSV",
    ),
    "import-missing-folder": Case(
        lambda tmp, _: (
            _write(tmp / "l.csv", "file,label\na.png,0\n"),
            ["data", "import", str(tmp / "nope"), "--labels", str(tmp / "l.csv"), "--out", str(tmp / "o.h5")],
        )[-1],
        "not found",
    ),
    # --- data synth: impossible sizes
    "synth-zero-images": Case(lambda tmp, _: ["data", "synth", "--n", "0", "--out", str(tmp / "s.h5")], "--n"),
    "synth-negative-images": Case(lambda tmp, _: ["data", "synth", "--n", "-5", "--out", str(tmp / "s.h5")], "--n"),
    "synth-tiny-size": Case(
        lambda tmp, _: ["data", "synth", "--n", "10", "--size", "3", "--out", str(tmp / "s.h5")], "--size"
    ),
    "synth-difficulty-out-of-range": Case(
        lambda tmp, _: ["data", "synth", "--n", "10", "--difficulty", "7", "--out", str(tmp / "s.h5")], "difficulty"
    ),
    "synth-difficulty-nan": Case(
        lambda tmp, _: ["data", "synth", "--n", "10", "--difficulty", "nan", "--out", str(tmp / "s.h5")], "difficulty"
    ),
    "synth-out-is-a-folder": Case(
        lambda tmp, _: ((tmp / "dir").mkdir(), ["data", "synth", "--n", "10", "--out", str(tmp / "dir")])[-1], "folder"
    ),
    # --- data split / gallery: impossible options
    "split-test-fraction-above-1": Case(lambda tmp, h5: ["data", "split", str(h5), "--test-fraction", "1.5"], "test"),
    "split-negative-val-fraction": Case(lambda tmp, h5: ["data", "split", str(h5), "--val-fraction", "-0.1"], "val"),
    "gallery-zero-per-class": Case(
        lambda tmp, h5: ["data", "gallery", str(h5), "--per-class", "0", "--out", str(tmp / "g.png")], "per-class"
    ),
    "gallery-out-is-a-folder": Case(
        lambda tmp, h5: ((tmp / "gdir").mkdir(), ["data", "gallery", str(h5), "--out", str(tmp / "gdir")])[-1], "folder"
    ),
    # --- train: configs with unknown keys, wrong types, impossible values; missing config
    "train-unknown-key": Case(
        lambda tmp, h5: ["train", "--config", str(_yaml(tmp / "c.yaml", {"train": {"epochz": 3}})), "--data", str(h5)],
        "epochz",
    ),
    "train-unknown-section": Case(
        lambda tmp, h5: ["train", "--config", str(_yaml(tmp / "c.yaml", {"trian": {"epochs": 3}})), "--data", str(h5)],
        "trian",
    ),
    "train-wrong-type": Case(
        lambda tmp, h5: [
            "train",
            "--config",
            str(_yaml(tmp / "c.yaml", {"train": {"epochs": "ten"}})),
            "--data",
            str(h5),
        ],
        "train.epochs",
    ),
    "train-negative-learning-rate": Case(
        lambda tmp, h5: ["train", "--config", str(SMOKE), "--data", str(h5), "--set", "train.learning_rate=-1"],
        "learning_rate",
    ),
    "train-crop-larger-than-size": Case(
        lambda tmp, h5: ["train", "--config", str(SMOKE), "--data", str(h5), "--set", "data.crop=64"], "crop"
    ),
    "train-set-unknown-key": Case(
        lambda tmp, h5: ["train", "--config", str(SMOKE), "--data", str(h5), "--set", "model.dropuot=0.3"], "dropuot"
    ),
    "train-set-not-key-value": Case(
        lambda tmp, h5: ["train", "--config", str(SMOKE), "--data", str(h5), "--set", "train.epochs"], "train.epochs"
    ),
    "train-config-not-a-mapping": Case(
        lambda tmp, h5: ["train", "--config", str(_write(tmp / "c.yaml", "- a\n- b\n")), "--data", str(h5)], "c.yaml"
    ),
    "train-config-not-yaml": Case(
        lambda tmp, h5: ["train", "--config", str(_write(tmp / "c.yaml", "a: [1, 2\n")), "--data", str(h5)], "c.yaml"
    ),
    "train-config-missing": Case(
        lambda tmp, h5: ["train", "--config", str(tmp / "nope.yaml"), "--data", str(h5)], "nope.yaml"
    ),
    "train-unknown-policy": Case(
        lambda tmp, h5: ["train", "--config", str(SMOKE), "--data", str(h5), "--set", "augment.policy=sparkle"],
        "sparkle",
    ),
    "train-unknown-target-class": Case(
        lambda tmp, h5: ["train", "--config", str(SMOKE), "--data", str(h5), "--set", "augment.targets={blobs: 2}"],
        "blobs",
    ),
    # --- tune: empty / malformed search spaces, bad study settings, bad storage
    "tune-empty-search-space": Case(
        lambda tmp, h5: ["tune", "--config", str(tune_yaml(tmp, space={})), "--data", str(h5)], "search_space"
    ),
    "tune-no-search-space": Case(
        lambda tmp, h5: [
            "tune",
            "--config",
            str(_yaml(tmp / "t.yaml", {"base": str(SMOKE), "study": {"name": "x"}})),
            "--data",
            str(h5),
        ],
        "search_space",
    ),
    "tune-low-above-high": Case(
        lambda tmp, h5: [
            "tune",
            "--config",
            str(tune_yaml(tmp, space={"model.dropout": {"type": "float", "low": 0.6, "high": 0.1}})),
            "--data",
            str(h5),
        ],
        "model.dropout",
    ),
    "tune-empty-choices": Case(
        lambda tmp, h5: [
            "tune",
            "--config",
            str(tune_yaml(tmp, space={"train.batch_size": {"type": "categorical", "choices": []}})),
            "--data",
            str(h5),
        ],
        "choices is empty",
    ),
    "tune-unknown-param": Case(
        lambda tmp, h5: [
            "tune",
            "--config",
            str(tune_yaml(tmp, space={"model.dropuot": {"type": "float", "low": 0.1, "high": 0.5}})),
            "--data",
            str(h5),
        ],
        "dropuot",
    ),
    "tune-unknown-study-key": Case(
        lambda tmp, h5: ["tune", "--config", str(tune_yaml(tmp, n_trails=3)), "--data", str(h5)], "n_trails"
    ),
    "tune-wrong-type-trials": Case(
        lambda tmp, h5: ["tune", "--config", str(tune_yaml(tmp, n_trials="many")), "--data", str(h5)], "n_trials"
    ),
    "tune-unknown-sampler": Case(
        lambda tmp, h5: ["tune", "--config", str(tune_yaml(tmp, sampler="magic")), "--data", str(h5)], "magic"
    ),
    "tune-zero-workers": Case(
        lambda tmp, h5: ["tune", "--config", str(tune_yaml(tmp)), "--data", str(h5), "--workers", "0"], "--workers"
    ),
    "tune-in-memory-storage": Case(
        lambda tmp, h5: ["tune", "--config", str(tune_yaml(tmp)), "--data", str(h5), "--storage", "sqlite://"],
        "in-memory",
    ),
    "tune-storage-folder-missing": Case(
        lambda tmp, h5: [
            "tune",
            "--config",
            str(tune_yaml(tmp)),
            "--data",
            str(h5),
            "--storage",
            f"sqlite:///{tmp}/no/such/dir/o.db",
        ],
        "does not exist",
    ),
    "tune-file-store-tracking": Case(
        lambda tmp, h5: [
            "tune",
            "--config",
            str(tune_yaml(tmp)),
            "--data",
            str(h5),
            "--tracking-uri",
            str(tmp / "mlruns"),
        ],
        "file store",
    ),
    # --- ensemble / report: missing studies, bad configs
    "ensemble-no-tracking-store": Case(
        lambda tmp, h5: ["ensemble", "--study", "nope", "--config", str(ENSEMBLE)], "no MLflow tracking database"
    ),
    "ensemble-unknown-config-key": Case(
        lambda tmp, h5: [
            "ensemble",
            "--study",
            "nope",
            "--config",
            str(_yaml(tmp / "e.yaml", {"mode": "crossfit", "secnd_stage": {}})),
        ],
        "secnd_stage",
    ),
    "ensemble-bad-mode": Case(
        lambda tmp, h5: ["ensemble", "--study", "nope", "--config", str(ENSEMBLE), "--set", "mode=magic"], "magic"
    ),
    "report-no-tracking-store": Case(
        lambda tmp, h5: ["report", "--study", "nope", "--out", str(tmp / "rep")], "no MLflow tracking database"
    ),
    "report-zero-bootstrap": Case(
        lambda tmp, h5: ["report", "--study", "nope", "--bootstrap", "0", "--out", str(tmp / "rep")], "--bootstrap"
    ),
    # --- predict: missing models, non-images, empty and huge images, traversal-looking names
    "predict-no-model-anywhere": Case(
        lambda tmp, h5: ["predict", str(_png(tmp / "g.png"))], "no study has a registered 'champion' model"
    ),
    "predict-unknown-model-no-store": Case(
        lambda tmp, h5: ["predict", str(_png(tmp / "g.png")), "--model", "nope@champion"], "no MLflow tracking database"
    ),
    "predict-run-id-no-store": Case(
        lambda tmp, h5: ["predict", str(_png(tmp / "g.png")), "--model", "0123456789abcdef0123456789abcdef"],
        "no MLflow tracking database",
    ),
    "predict-logged-model-no-store": Case(
        lambda tmp, h5: ["predict", str(_png(tmp / "g.png")), "--model", "models:/m-0123"],
        "no MLflow tracking database",
    ),
    "predict-empty-model": Case(lambda tmp, h5: ["predict", str(_png(tmp / "g.png")), "--model", " "], "empty --model"),
    "predict-model-ref-garbage": Case(
        lambda tmp, h5: ["predict", str(_png(tmp / "g.png")), "--model", "a b c"], "model reference"
    ),
    "predict-model-path-traversal": Case(
        lambda tmp, h5: ["predict", str(_png(tmp / "g.png")), "--model", "../../../../../../etc/passwd"], "passwd"
    ),
    "predict-not-an-image": Case(lambda tmp, h5: ["predict", str(_write(tmp / "x.png", "hello"))], "not a PNG or JPEG"),
    "predict-zero-byte-image": Case(lambda tmp, h5: ["predict", str(_write(tmp / "z.png", ""))], "0 bytes"),
    "predict-decompression-bomb": Case(lambda tmp, h5: ["predict", str(_bytes(tmp / "bomb.png", bomb_png()))], "pixel"),
    "predict-folder": Case(lambda tmp, h5: ["predict", str(tmp)], "folder"),
    "predict-missing-file": Case(lambda tmp, h5: ["predict", str(tmp / "nope.png")], "does not exist"),
    "predict-index-out-of-range": Case(lambda tmp, h5: ["predict", f"{h5}:0-99"], "out of range"),
    "predict-top-zero": Case(lambda tmp, h5: ["predict", str(_png(tmp / "g.png")), "--top", "0"], "--top"),
    # --- evaluate: recipes, R, K and budgets refused before any fold is trained
    "evaluate-one-recipe": Case(
        lambda tmp, h5: ["evaluate", "--data", str(h5), "--recipe", str(REFERENCE)], "at least two --recipe"
    ),
    "evaluate-same-name-twice": Case(
        lambda tmp, h5: ["evaluate", "--data", str(h5), "--recipe", str(REFERENCE), "--recipe", str(REFERENCE)],
        "used twice",
    ),
    "evaluate-missing-recipe": Case(
        lambda tmp, h5: ["evaluate", "--data", str(h5), "--recipe", str(REFERENCE), "--recipe", str(tmp / "nope.yaml")],
        "nope.yaml not found",
    ),
    "evaluate-bad-recipe-key": Case(
        lambda tmp, h5: [
            "evaluate",
            "--data",
            str(h5),
            "--recipe",
            str(REFERENCE),
            "--recipe",
            str(_yaml(tmp / "c.yaml", {"train": {"epoch": 3}})),
        ],
        "train.epoch",
    ),
    "evaluate-recipe-not-a-mapping": Case(
        lambda tmp, h5: [
            "evaluate",
            "--data",
            str(h5),
            "--recipe",
            str(REFERENCE),
            "--recipe",
            str(_write(tmp / "l.yaml", "- 1\n- 2\n")),
        ],
        "not a mapping",
    ),
    "evaluate-bad-recipe-name": Case(
        lambda tmp, h5: ["evaluate", "--data", str(h5), "--recipe", str(REFERENCE), "--recipe", f"a b={REFERENCE}"],
        "is not allowed",
    ),
    "evaluate-max-images-recipe": Case(
        lambda tmp, h5: ["evaluate", "--data", str(h5), "--recipe", str(REFERENCE), "--recipe", str(SMOKE)],
        "max_images",
    ),
    "evaluate-zero-repeats": Case(
        lambda tmp, h5: [
            "evaluate",
            "--data",
            str(h5),
            "--recipe",
            str(REFERENCE),
            "--recipe",
            f"b={REFERENCE}",
            "--repeats",
            "0",
        ],
        "--repeats",
    ),
    "evaluate-huge-repeats": Case(
        lambda tmp, h5: [
            "evaluate",
            "--data",
            str(h5),
            "--recipe",
            str(REFERENCE),
            "--recipe",
            f"b={REFERENCE}",
            "--repeats",
            "1000",
        ],
        "--repeats",
    ),
    "evaluate-one-fold": Case(
        lambda tmp, h5: [
            "evaluate",
            "--data",
            str(h5),
            "--recipe",
            str(REFERENCE),
            "--recipe",
            f"b={REFERENCE}",
            "--folds",
            "1",
        ],
        "--folds",
    ),
    "evaluate-more-folds-than-rare-images": Case(
        lambda tmp, h5: [
            "evaluate",
            "--data",
            str(h5),
            "--recipe",
            str(REFERENCE),
            "--recipe",
            f"b={REFERENCE}",
            "--folds",
            "20",
        ],
        "fewer than --folds 20",
    ),
    "evaluate-tune-recipe-without-budget": Case(
        lambda tmp, h5: ["evaluate", "--data", str(h5), "--recipe", str(REFERENCE), "--recipe", str(TUNE_CATALOG)],
        "--budget",
    ),
    "evaluate-bad-budget": Case(
        lambda tmp, h5: [
            "evaluate",
            "--data",
            str(h5),
            "--recipe",
            str(REFERENCE),
            "--recipe",
            str(TUNE_CATALOG),
            "--budget",
            "x4",
        ],
        "--budget",
    ),
    "evaluate-zero-budget-factor": Case(
        lambda tmp, h5: [
            "evaluate",
            "--data",
            str(h5),
            "--recipe",
            str(REFERENCE),
            "--recipe",
            str(TUNE_CATALOG),
            "--budget",
            "0x",
        ],
        "--budget",
    ),
    "evaluate-factor-without-run-recipe": Case(
        lambda tmp, h5: [
            "evaluate",
            "--data",
            str(h5),
            "--recipe",
            str(TUNE_CATALOG),
            "--recipe",
            f"b={TUNE_CATALOG}",
            "--budget",
            "4x",
        ],
        "every recipe is a tuning config",
    ),
    "evaluate-zero-label-fraction": Case(
        lambda tmp, h5: [
            "evaluate",
            "--data",
            str(h5),
            "--recipe",
            str(REFERENCE),
            "--recipe",
            f"b={REFERENCE}",
            "--label-fraction",
            "0",
        ],
        "--label-fraction",
    ),
    "evaluate-out-is-a-user-folder": Case(
        lambda tmp, h5: (
            (tmp / "mine").mkdir(),
            (tmp / "mine" / "notes.txt").write_text("mine"),
            [
                "evaluate",
                "--data",
                str(h5),
                "--recipe",
                str(REFERENCE),
                "--recipe",
                f"b={REFERENCE}",
                "--out",
                str(tmp / "mine"),
            ],
        )[-1],
        "mine",
    ),
    # --- pretrain: options and inputs refused before the pool is read or a run is opened
    "pretrain-missing-input": Case(lambda tmp, h5: ["pretrain", str(tmp / "nope")], "does not exist"),
    "pretrain-zero-epochs": Case(lambda tmp, h5: ["pretrain", str(h5), "--epochs", "0"], "--epochs"),
    "pretrain-tiny-batch": Case(lambda tmp, h5: ["pretrain", str(h5), "--batch-size", "2"], "--batch-size"),
    "pretrain-zero-learning-rate": Case(
        lambda tmp, h5: ["pretrain", str(h5), "--learning-rate", "0"], "--learning-rate"
    ),
    "pretrain-bad-budget": Case(lambda tmp, h5: ["pretrain", str(h5), "--budget", "soon"], "--budget"),
    "pretrain-bad-name": Case(lambda tmp, h5: ["pretrain", str(h5), "--name", "a/b"], "--name"),
    "pretrain-missing-monitor": Case(lambda tmp, h5: ["pretrain", str(h5), "--monitor", str(tmp / "no.h5")], "no.h5"),
    "pretrain-pool-smaller-than-a-batch": Case(
        lambda tmp, h5: ["pretrain", str(h5), "--batch-size", "512"], "fewer than one batch"
    ),
    "pretrain-bad-config-key": Case(lambda tmp, h5: ["pretrain", str(h5), "--set", "model.nme=x"], "model.nme"),
    # --- similar: the catalog is checked before any model is loaded
    "similar-missing-catalog": Case(
        lambda tmp, h5: ["similar", f"{h5}:0", "--catalog", str(tmp / "c.parquet")], "does not exist"
    ),
    "similar-not-a-catalog": Case(
        lambda tmp, h5: ["similar", f"{h5}:0", "--catalog", str(h5)], "not a readable Parquet file"
    ),
    "similar-zero-k": Case(lambda tmp, h5: ["similar", f"{h5}:0", "--catalog", str(h5), "--k", "0"], "--k"),
    "similar-out-is-a-user-folder": Case(
        lambda tmp, h5: (
            (tmp / "mine").mkdir(),
            (tmp / "mine" / "notes.txt").write_text("mine"),
            ["similar", f"{h5}:0", "--catalog", str(h5), "--out", str(tmp / "mine")],
        )[-1],
        "mine",
    ),
    # --- self-train: options refused before the pool is read or a model loaded
    "self-train-missing-pool": Case(
        lambda tmp, h5: ["self-train", "--unlabeled", str(tmp / "nope"), "--config", str(SMOKE), "--data", str(h5)],
        "does not exist",
    ),
    "self-train-bad-threshold": Case(
        lambda tmp, h5: [
            "self-train",
            "--unlabeled",
            str(h5),
            "--config",
            str(SMOKE),
            "--data",
            str(h5),
            "--threshold",
            "1.5",
        ],
        "--threshold",
    ),
    "self-train-zero-per-class": Case(
        lambda tmp, h5: [
            "self-train",
            "--unlabeled",
            str(h5),
            "--config",
            str(SMOKE),
            "--data",
            str(h5),
            "--per-class",
            "0",
        ],
        "--per-class",
    ),
    "self-train-zero-rounds": Case(
        lambda tmp, h5: [
            "self-train",
            "--unlabeled",
            str(h5),
            "--config",
            str(SMOKE),
            "--data",
            str(h5),
            "--rounds",
            "0",
        ],
        "--rounds",
    ),
    "self-train-bad-name": Case(
        lambda tmp, h5: [
            "self-train",
            "--unlabeled",
            str(h5),
            "--config",
            str(SMOKE),
            "--data",
            str(h5),
            "--name",
            "a b",
        ],
        "--name",
    ),
    # --- serve: refused before binding a port or loading a model
    "serve-bad-port": Case(lambda tmp, h5: ["serve", "--port", "70000"], "--port"),
    "serve-zero-upload-limit": Case(lambda tmp, h5: ["serve", "--max-upload-mb", "0"], "--max-upload-mb"),
    "serve-no-model-anywhere": Case(
        lambda tmp, h5: ["serve", "--port", "8765"], "no study has a registered 'champion' model"
    ),
}


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_option_config_or_input(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = CASES[name]
    h5 = good_file(tmp_path)
    argv = case.setup(tmp_path, h5)
    fails_cleanly(argv, tmp_path, capsys, expect=case.expect)


def test_path_traversal_in_an_import_csv_never_reads_outside_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secret beside the folder named as ``../secret.png`` is refused, not imported (even with --skip-bad)."""
    from pipelines import importer

    folder = tmp_path / "imgs"
    folder.mkdir()
    _png(folder / "a.png")
    _png(folder / "b.png")
    _png(tmp_path / "secret.png")  # a readable image outside the folder
    opened: list[str] = []
    real_load = importer.load_image
    monkeypatch.setattr(importer, "load_image", lambda path, size: opened.append(str(path)) or real_load(path, size))
    (tmp_path / "labels.csv").write_text("file,label\na.png,disturbed\nb.png,merging\n../secret.png,round\n")
    code = cli_main(
        [
            "-q",
            "data",
            "import",
            str(folder),
            "--labels",
            str(tmp_path / "labels.csv"),
            "--out",
            str(tmp_path / "out.h5"),
            "--skip-bad",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "../secret.png: path leads outside the image folder" in out
    assert not any("secret" in p for p in opened)
    from pipelines.reader import validate_galaxy10

    assert validate_galaxy10(tmp_path / "out.h5").n_images == 2


# --------------------------------------------------------------------------------------------------
# The web page: bad uploads get a 4xx and a message; nothing is written to disk


@pytest.fixture
def web(tmp_path: Path):  # noqa: ANN201 - a Flask test client
    from experiments.serving.predictor import ModelCard, Predictor
    from experiments.serving.web import create_app
    from pipelines.classes import CLASS_NAMES

    calls: list[int] = []

    def predict_fn(images: np.ndarray) -> np.ndarray:
        calls.append(len(images))
        return np.full((len(images), len(CLASS_NAMES)), 1.0 / len(CLASS_NAMES), dtype=np.float32)

    card = ModelCard(
        uri="models:/stub@champion",
        kind="keras",
        size=48,
        crop=32,
        class_names=CLASS_NAMES,
        name="stub",
        version="1",
        synthetic=True,
    )
    app = create_app(Predictor(card, predict_fn), max_upload_bytes=200_000)
    client = app.test_client()
    client.calls = calls  # type: ignore[attr-defined]
    return client


UPLOADS: dict[str, tuple[bytes | None, str, int, str]] = {
    # name: (body, file name, status, words in the error)
    "not-an-image": (b"%PDF-1.4 definitely not a picture", "paper.png", 415, "not a PNG or JPEG"),
    "gif-is-not-accepted": (b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "anim.gif", 415, "not a PNG or JPEG"),
    "truncated-png": (png_bytes(np.full((40, 40, 3), 90, np.uint8))[:60], "cut.png", 415, "cut.png"),
    "zero-byte": (b"", "empty.png", 400, "0 bytes"),
    "huge": (b"\0" * 300_000, "huge.png", 413, "larger than"),
    "decompression-bomb": (bomb_png(), "bomb.png", 413, "pixel"),
    "no-file-field": (None, "", 400, "no file uploaded"),
    "traversal-name-not-an-image": (b"root:x:0:0:root:/root:/bin/bash\n", "../../etc/passwd", 415, "passwd"),
}


@pytest.mark.parametrize("url", ["/api/predict", "/"])
@pytest.mark.parametrize("name", sorted(UPLOADS))
def test_bad_uploads_are_4xx_with_a_message(web, name: str, url: str, tmp_path: Path) -> None:  # noqa: ANN001
    body, filename, status, words = UPLOADS[name]
    before = snapshot(tmp_path)
    data = {} if body is None else {"file": (io.BytesIO(body), filename)}
    resp = web.post(url, data=data, content_type="multipart/form-data")
    assert resp.status_code == status
    text = resp.get_json()["error"] if url.startswith("/api/") else resp.get_data(as_text=True)
    assert words.lower() in text.lower(), text
    if url.startswith("/api/"):
        assert "\n" not in text  # one line
    assert web.calls == []  # refused before the model was called
    assert snapshot(tmp_path) == before


def test_traversal_upload_name_is_only_displayed_as_a_base_name(web, tmp_path: Path) -> None:  # noqa: ANN001
    before = snapshot(tmp_path)
    resp = web.post(
        "/api/predict",
        data={"file": (io.BytesIO(png_bytes(np.full((40, 40, 3), 90, np.uint8))), "../../etc/cron.d/evil.png")},
        content_type="multipart/form-data",
    )
    assert resp.status_code == 200
    assert resp.get_json()["file"] == "evil.png"
    page = web.post(
        "/",
        data={"file": (io.BytesIO(png_bytes(np.full((40, 40, 3), 90, np.uint8))), "<script>x</script>/../../a.png")},
        content_type="multipart/form-data",
    ).get_data(as_text=True)
    assert "<script>x</script>" not in page
    assert snapshot(tmp_path) == before
    assert not Path("/etc/cron.d/evil.png").exists()


def test_api_errors_are_json_for_wrong_methods(web) -> None:  # noqa: ANN001
    resp = web.get("/api/predict")
    assert resp.status_code == 405
    assert json.loads(resp.get_data(as_text=True))["error"]
