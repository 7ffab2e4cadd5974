"""pipelines.splits: duplicate groups, group-aware stratification, the saved split file, `data split`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pipelines.splits as splits
from core.errors import ConfigError, DataError
from experiments.commands import data_split
from pipelines.classes import GALAXY10_COUNTS
from pipelines.splits import (
    assign_groups,
    ensure_split,
    find_groups,
    groups_from_keys,
    load_split,
    make_split,
    save_split,
    split_path_for,
)

ARCSEC = 1.0 / 3600.0


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    data_split.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def _galaxy10_like_labels(seed: int = 0) -> np.ndarray:
    labels = np.concatenate([np.full(c, k, np.int64) for k, c in enumerate(GALAXY10_COUNTS)])
    np.random.default_rng(seed).shuffle(labels)
    return labels


def _with_duplicates(n: int, n_pairs: int, n_triples: int, seed: int = 0) -> np.ndarray:
    """Group ids for ``n`` entries where random pairs and triples share a group."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    groups = np.arange(n)
    for i in range(n_pairs):
        groups[order[2 * i + 1]] = groups[order[2 * i]]
    base = 2 * n_pairs
    for i in range(n_triples):
        a = order[base + 3 * i]
        groups[order[base + 3 * i + 1 : base + 3 * i + 3]] = groups[a]
    return np.unique(groups, return_inverse=True)[1].ravel()


# --- groups --------------------------------------------------------------------------------------


def test_groups_join_equal_images_and_close_positions_transitively() -> None:
    keys = np.array([b"a", b"b", b"a", b"c", b"d", b"e", b"f", b"g"], dtype="S1")
    ra = np.array([10.0, 20.0, 30.0, 40.0, 40.0 + 0.6 * ARCSEC, 40.0 + 1.2 * ARCSEC, 50.0, 50.0 + 1.5 * ARCSEC])
    dec = np.zeros(8)
    groups, n_multi = groups_from_keys(keys, ra, dec)
    assert groups[0] == groups[2] != groups[1]  # same pixels, far apart on the sky
    assert groups[3] == groups[4] == groups[5]  # 0.6" steps chain: 3-4 and 4-5 close, 3-5 at 1.2"
    assert groups[6] != groups[7]  # 1.5" apart: two galaxies
    assert n_multi == 2
    assert sorted(set(groups.tolist())) == list(range(groups.max() + 1))


def test_groups_across_ra_wrap_and_near_the_pole_and_nan_skipped() -> None:
    keys = np.arange(6).astype("S2")
    ra = np.array([359.99999, 0.00001, 0.0, 180.0, np.nan, np.nan])
    dec = np.array([5.0, 5.0, 89.99999, 89.99999, 0.0, 0.0])
    groups, n_multi = groups_from_keys(keys, ra, dec)
    assert groups[0] == groups[1]  # 0.07" apart across RA = 0
    assert groups[2] == groups[3]  # 0.07" apart across the pole despite 180 deg in RA
    assert groups[4] != groups[5]  # unknown positions never match
    assert n_multi == 2


def test_find_groups_on_file_with_duplicate_images_and_positions(make_h5) -> None:
    path = make_h5(n=120, size=16)
    with h5py.File(path, "a") as f:
        images = f["images"][()]
        images[50] = images[7]
        f["images"][...] = images
        ra, dec = f["ra"][()], f["dec"][()]
        ra[90], dec[90] = ra[91] + 0.5 * ARCSEC, dec[91]
        f["ra"][...], f["dec"][...] = ra, dec
    groups, n_multi = find_groups(path)
    assert groups.shape == (120,) and groups.dtype == np.int64
    assert groups[7] == groups[50] and groups[90] == groups[91]
    assert n_multi == 2 and groups.max() + 1 == 118


def test_find_groups_without_coordinates_uses_pixels_only(make_h5) -> None:
    path = make_h5(n=40, size=16, with_coords=False)
    with h5py.File(path, "a") as f:
        images = f["images"][()]
        images[3] = images[30]
        f["images"][...] = images
    groups, n_multi = find_groups(path)
    assert groups[3] == groups[30] and n_multi == 1


# --- assignment ----------------------------------------------------------------------------------


def test_assignment_keeps_groups_whole_and_stratifies_galaxy10_counts() -> None:
    labels = _galaxy10_like_labels()
    groups = _with_duplicates(len(labels), n_pairs=600, n_triples=40)
    code = assign_groups(labels, groups, test_fraction=0.1, val_fraction=0.1, seed=42)
    per_group = np.zeros((groups.max() + 1, 3), dtype=int)
    np.add.at(per_group, (groups, code), 1)
    assert ((per_group > 0).sum(axis=1) == 1).all(), "a duplicate group straddles two splits"
    for k in range(len(GALAXY10_COUNTS)):
        in_k = labels == k
        assert abs((code[in_k] == 2).mean() - 0.10) < 0.02, k
        assert abs((code[in_k] == 1).mean() - 0.09) < 0.02, k
    assert abs((code == 2).sum() - 1774) <= 5


def test_assignment_is_reproducible_and_seed_dependent() -> None:
    labels = _galaxy10_like_labels()[:3000]
    groups = _with_duplicates(3000, n_pairs=100, n_triples=10)
    a = assign_groups(labels, groups, seed=42)
    np.testing.assert_array_equal(a, assign_groups(labels, groups, seed=42))
    assert (a != assign_groups(labels, groups, seed=7)).any()


@settings(max_examples=40, deadline=None)
@given(st.integers(5, 300), st.integers(0, 2**31 - 1), st.floats(0.05, 0.5), st.floats(0.0, 0.5))
def test_assignment_partitions_any_input(n: int, seed: int, test_fraction: float, val_fraction: float) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    groups = rng.integers(0, max(1, n - n // 4), n)  # about a quarter of entries share a group
    code = assign_groups(labels, groups, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed)
    assert set(np.unique(code)) <= {0, 1, 2}
    for g in np.unique(groups):
        assert len(np.unique(code[groups == g])) == 1
    if val_fraction == 0:
        assert not (code == 1).any()


@pytest.mark.parametrize(
    "kwargs", [{"test_fraction": 0.0}, {"test_fraction": 1.0}, {"val_fraction": -0.1}, {"val_fraction": float("nan")}]
)
def test_bad_fractions_are_config_errors(kwargs) -> None:
    with pytest.raises(ConfigError, match="fraction"):
        assign_groups(np.zeros(10), np.arange(10), **kwargs)


# --- make, save, load, ensure --------------------------------------------------------------------


def test_make_split_fields_and_round_trip(tiny_h5: Path) -> None:
    split = make_split(tiny_h5, seed=3)
    parts = [split.train, split.val, split.test]
    assert all(p.dtype == np.int64 and (np.diff(p) > 0).all() for p in parts)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(200))
    assert (len(split.train), len(split.val), len(split.test)) == (160, 20, 20)
    assert split.class_counts["test"] == (2,) * 10
    path = save_split(split, tiny_h5.with_name("copy.split.json"))
    loaded = load_split(path, tiny_h5)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(loaded.indices(name), split.indices(name))
    assert (loaded.seed, loaded.n_groups, loaded.fingerprint) == (3, split.n_groups, split.fingerprint)
    assert [p.name for p in tiny_h5.parent.iterdir() if p.name.startswith(".")] == []  # no temp files


def test_ensure_split_saves_beside_data_and_reuses(tiny_h5: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_make = splits.make_split
    monkeypatch.setattr(splits, "make_split", lambda *a, **k: calls.append(k) or real_make(*a, **k))
    first = ensure_split(tiny_h5)
    path = split_path_for(tiny_h5)
    assert path == tiny_h5.parent / "tiny.split.json" and path.exists()
    doc = json.loads(path.read_text())
    assert doc["seed"] == 42 and doc["test_fraction"] == 0.1 and doc["val_fraction"] == 0.1
    assert doc["fingerprint"] == first.fingerprint and len(doc["fingerprint"]) == 64
    assert doc["class_counts"]["test"] == [2] * 10 and doc["n_groups"] == 200
    assert sorted(doc["indices"]["test"]) == first.test.tolist()
    again = ensure_split(tiny_h5)
    assert len(calls) == 1
    np.testing.assert_array_equal(again.test, first.test)
    saved = path.read_bytes()
    # other parameters: the saved split is the user's decision, refused with one line naming both and the fix
    with pytest.raises(
        DataError,
        match=r"made with seed 42, test fraction 0.1, val fraction 0.1, but seed 5, "
        r"0.1, 0.1 were asked for; .*--force",
    ) as err:
        ensure_split(tiny_h5, seed=5)
    assert "\n" not in str(err.value) and path.read_bytes() == saved and len(calls) == 1
    other = ensure_split(tiny_h5, seed=5, force=True)  # replacing it is explicit
    assert len(calls) == 2 and other.seed == 5 and json.loads(path.read_text())["seed"] == 5
    assert (other.test != first.test).any()


def test_split_for_other_data_is_refused_unless_forced(make_h5) -> None:
    a = make_h5("a.h5", seed=1)
    b = make_h5("b.h5", seed=2)
    split_a = ensure_split(a)
    split_path_for(b).write_text(split_path_for(a).read_text())
    with pytest.raises(DataError) as err:
        ensure_split(b)
    msg = str(err.value)
    assert "\n" not in msg and split_a.fingerprint[:12] in msg and "--force" in msg
    from pipelines.reader import data_fingerprint

    assert data_fingerprint(b)[:12] in msg
    forced = ensure_split(b, force=True)
    assert forced.fingerprint == data_fingerprint(b)
    assert load_split(split_path_for(b), b).fingerprint == forced.fingerprint


def _corrupt(doc: dict, how: str) -> str:
    if how == "not json":
        return "{ this is not json"
    if how == "list":
        return "[1, 2, 3]"
    doc = json.loads(json.dumps(doc))
    if how == "missing seed":
        del doc["seed"]
    elif how == "index out of range":
        doc["indices"]["test"][0] = 10_000
    elif how == "overlap":
        doc["indices"]["test"][0] = doc["indices"]["train"][0]
    elif how == "strings":
        doc["indices"]["val"] = ["a", "b"]
    return json.dumps(doc)


@pytest.mark.parametrize("how", ["not json", "list", "missing seed", "index out of range", "overlap", "strings"])
def test_malformed_split_file_is_one_line_data_error(tiny_h5: Path, how: str) -> None:
    ensure_split(tiny_h5)
    path = split_path_for(tiny_h5)
    path.write_text(_corrupt(json.loads(path.read_text()), how))
    with pytest.raises(DataError, match="malformed") as err:
        ensure_split(tiny_h5)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    ensure_split(tiny_h5, force=True)  # --force repairs it
    load_split(path, tiny_h5)


def test_missing_data_file_is_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        ensure_split(tmp_path / "nope.h5")


# --- CLI -----------------------------------------------------------------------------------------


def test_data_split_cli_prints_sizes_counts_and_synthetic(tiny_h5: Path, capsys: pytest.CaptureFixture) -> None:
    assert _run_cli(["split", str(tiny_h5), "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out
    assert "train 160, val 20, test 20" in out
    assert "Round Smooth" in out and f"saved split to {split_path_for(tiny_h5)}" in out
    assert _run_cli(["split", str(tiny_h5), "--seed", "1"]) == 0
    assert "reused existing split" in capsys.readouterr().out
    assert _run_cli(["split", str(tiny_h5), "--seed", "1", "--force"]) == 0
    assert "saved split to" in capsys.readouterr().out


def test_data_split_cli_real_schema_file_not_called_synthetic(make_h5, capsys: pytest.CaptureFixture) -> None:
    path = make_h5("real.h5", synthetic=False)
    assert _run_cli(["split", str(path), "--test-fraction", "0.2", "--val-fraction", "0.25"]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" not in out and "train 120, val 40, test 40" in out


def test_data_split_cli_defaults_to_resolved_data_path(make_h5, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "data").mkdir()
    make_h5("data/galaxy10_synthetic.h5")
    assert _run_cli(["split"]) == 0
    assert Path("data/galaxy10_synthetic.split.json").exists()
    assert "SYNTHETIC" in capsys.readouterr().out
