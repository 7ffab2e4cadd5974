"""pipelines.baseline and `galaxy10 baseline`: the most-frequent-class floor on the test split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from core.errors import DataError
from experiments.commands import baseline as baseline_cmd
from pipelines.baseline import baseline_metrics, score_baseline
from pipelines.classes import CLASS_SLUGS, GALAXY10_COUNTS
from pipelines.splits import ensure_split


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    baseline_cmd.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_baseline_metrics_by_hand() -> None:
    train = np.array([3, 3, 3, 1, 0])
    test = np.array([3, 3, 1, 0, 0, 2])
    m = baseline_metrics(train, test)
    assert m["majority_class"] == 3 and m["majority_class_name"] == "In-between Round Smooth"
    assert m["accuracy"] == pytest.approx(2 / 6)
    assert m["balanced_accuracy"] == pytest.approx(1 / 4)  # recall 1 for class 3, 0 for 0, 1, 2
    # F1 of class 3: precision 2/6, recall 1 -> 0.5; classes 0, 1, 2 score 0; mean over 4 present.
    assert m["macro_f1"] == pytest.approx(0.5 / 4)
    assert m["per_class_recall"]["in_between"] == 1.0 and m["per_class_recall"]["disturbed"] == 0.0
    assert m["per_class_recall"]["cigar"] is None  # no cigar in the test labels
    assert list(m["per_class_recall"]) == list(CLASS_SLUGS)
    assert (m["n_train"], m["n_test"]) == (5, 6)


def test_baseline_uses_custom_class_names() -> None:
    m = baseline_metrics(np.array([1, 1, 0]), np.array([0, 1]), ("ring", "no_ring"))
    assert m["majority_class_name"] == "no_ring"
    assert m["per_class_recall"] == {"ring": 0.0, "no_ring": 1.0}


def _galaxy10_counts_file(path: Path) -> Path:
    """A file with exactly the official class counts (17,736 tiny, distinct noise images)."""
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.full(c, k, np.uint8) for k, c in enumerate(GALAXY10_COUNTS)])
    rng.shuffle(labels)
    n = len(labels)
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=rng.integers(0, 256, (n, 6, 6, 3), dtype=np.uint8))
        f.create_dataset("ans", data=labels)
        f.create_dataset("ra", data=rng.uniform(0, 360, n))
        f.create_dataset("dec", data=rng.uniform(-10, 30, n))
    return path


def test_baseline_on_official_class_counts_is_14_9_percent(tmp_path: Path) -> None:
    path = _galaxy10_counts_file(tmp_path / "counts.h5")
    split = ensure_split(path)
    m = score_baseline(path, split)
    assert m["majority_class_name"] == "Round Smooth"
    assert round(100 * m["accuracy"], 1) == 14.9
    assert m["balanced_accuracy"] == pytest.approx(0.1)
    assert m["per_class_recall"]["round"] == 1.0
    assert all(v == 0.0 for k, v in m["per_class_recall"].items() if k != "round")
    assert m["n_test"] == len(split.test) and abs(m["n_test"] - 1774) <= 3
    assert m["synthetic"] is False and m["fingerprint"] == split.fingerprint[:12]


def test_score_baseline_refuses_a_split_of_another_size(make_h5) -> None:
    small = make_h5("small.h5", n=100)
    big = make_h5("big.h5", n=200)
    with pytest.raises(DataError, match="split covers 100 images"):
        score_baseline(big, ensure_split(small))


def test_baseline_cli_table_and_json(tiny_h5: Path, capsys: pytest.CaptureFixture) -> None:
    assert _run_cli(["baseline", "--data", str(tiny_h5)]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "accuracy" in out and "macro-F1" in out
    assert "scored on 20 test images" in out and "edge_on_bulge" in out
    with pytest.raises(DataError, match="made with seed 42.* but seed 7"):  # a saved split is never replaced
        _run_cli(["baseline", "--data", str(tiny_h5), "--seed", "7", "--json"])
    other = tiny_h5.with_name("other.h5")
    other.write_bytes(tiny_h5.read_bytes())
    assert _run_cli(["baseline", "--data", str(other), "--seed", "7", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["synthetic"] is True and doc["split_seed"] == 7 and doc["n_test"] == 20
    assert doc["accuracy"] == pytest.approx(0.1)  # 10 balanced classes: the majority is 1 in 10


def test_baseline_cli_real_schema_file_is_not_called_synthetic(make_h5, capsys: pytest.CaptureFixture) -> None:
    path = make_h5("plain.h5", synthetic=False)
    assert _run_cli(["baseline", "--data", str(path)]) == 0
    assert "SYNTHETIC" not in capsys.readouterr().out


def test_baseline_cli_missing_file_is_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        _run_cli(["baseline", "--data", str(tmp_path / "missing.h5")])
