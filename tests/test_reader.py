"""pipelines.reader: validation messages, lazy ordered reads, SHA-256 cache, provenance."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from core.errors import DataError
from pipelines import reader
from pipelines.classes import CLASS_NAMES
from pipelines.reader import Galaxy10File, data_fingerprint, file_sha256, provenance, validate_galaxy10

SOURCE = "official release: Zenodo record 10845026, https://zenodo.org/records/10845026"
SYNTH = "or run `galaxy10 data synth` for the synthetic default"
FETCH = f"fetch it again ({SOURCE}) {SYNTH}"


def write(path: Path, *, images=None, ans=None, n: int = 12, size: int = 8, attrs=None, **extra: np.ndarray) -> Path:
    """Write an HDF5 file with the given arrays (defaults: a valid tiny Galaxy10 file)."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        if images is not False:
            f["images"] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8) if images is None else images
        if ans is not False:
            f["ans"] = np.arange(n, dtype=np.uint8) % 10 if ans is None else ans
        for key, value in extra.items():
            f[key] = value
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
    return path


# --- validation: each failure has one exact line ------------------------------------------------


def test_valid_file_info(tiny_h5: Path) -> None:
    info = validate_galaxy10(tiny_h5)
    assert (info.n_images, info.image_size, info.has_coords, info.synthetic) == (200, 64, True, True)
    assert info.class_counts == (20,) * 10 and sum(info.class_counts) == 200
    assert info.class_names == CLASS_NAMES and not info.is_custom and info.num_classes == 10
    assert info.optional_arrays == ("ra", "dec", "redshift", "pxscale")
    assert info.attrs == {"synthetic": True, "generator": "tests.conftest.write_galaxy10_h5", "seed": 0}
    assert type(info.attrs["seed"]) is int and type(info.attrs["synthetic"]) is bool


def test_bytes_attrs_are_decoded(tmp_path: Path) -> None:
    path = write(tmp_path / "b.h5", attrs={"note": np.bytes_(b"caf\xc3\xa9"), "tags": [b"a", b"b"]})
    info = validate_galaxy10(path)
    assert info.attrs == {"note": "café", "tags": ["a", "b"]}
    assert info.synthetic is False and info.has_coords is False and info.optional_arrays == ()


def test_missing_file_says_where_to_put_it_and_where_it_comes_from() -> None:
    with pytest.raises(DataError) as err:
        validate_galaxy10("nowhere/x.h5")
    assert str(err.value) == (
        f"data file nowhere/x.h5 not found; put Galaxy10_DECals.h5 at data/Galaxy10_DECals.h5 ({SOURCE}) {SYNTH}"
    )


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "d.h5").mkdir()
    with pytest.raises(DataError) as err:
        validate_galaxy10(tmp_path / "d.h5")
    assert str(err.value) == (
        f"{tmp_path / 'd.h5'} is a directory, not an HDF5 file; pass the .h5 file itself (e.g. data/Galaxy10_DECals.h5)"
    )


def test_text_file_is_not_hdf5(tmp_path: Path) -> None:
    p = tmp_path / "notes.h5"
    p.write_text("images,ans\n1,2\n")
    with pytest.raises(DataError) as err:
        validate_galaxy10(p)
    assert str(err.value) == (
        f"{p} is not an HDF5 file (no HDF5 signature, 15 bytes); pass a Galaxy10 .h5 file ({SOURCE}) {SYNTH}"
    )


def test_zero_byte_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.h5"
    p.touch()
    with pytest.raises(DataError) as err:
        validate_galaxy10(p)
    assert str(err.value) == (f"{p} is an empty file (0 bytes), not HDF5; the download or copy failed: {FETCH}")


@pytest.mark.parametrize("keep", [100, 5000, 0.5])
def test_truncated_file_is_named_truncated(tiny_h5: Path, tmp_path: Path, keep: float) -> None:
    data = tiny_h5.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    p = tmp_path / "cut.h5"
    p.write_bytes(data[:n])
    with pytest.raises(DataError) as err:
        validate_galaxy10(p)
    assert str(err.value) == (
        f"{p} is truncated ({n} of {len(data)} bytes): the download or copy was cut short; {FETCH}"
    )
    with pytest.raises(DataError, match="is truncated"):
        Galaxy10File(p)


def test_missing_keys_are_named(tmp_path: Path) -> None:
    p = write(tmp_path / "k.h5", ans=False, labels=np.zeros(12, np.uint8))
    with pytest.raises(DataError) as err:
        validate_galaxy10(p)
    assert str(err.value) == (
        f"{p} lacks the HDF5 dataset(s) 'ans' (found: images, labels); a Galaxy10 file needs "
        "'images' uint8 (N, H, W, 3) and 'ans' (N,) integer labels"
    )
    p2 = write(tmp_path / "k2.h5", images=False, ans=False)
    with pytest.raises(DataError, match=r"lacks the HDF5 dataset\(s\) 'images', 'ans' \(found: none\)"):
        validate_galaxy10(p2)


def test_wrong_image_dtype(tmp_path: Path) -> None:
    p = write(tmp_path / "f.h5", images=np.zeros((12, 8, 8, 3), np.float32))
    with pytest.raises(DataError) as err:
        validate_galaxy10(p)
    assert str(err.value) == (
        f"{p}: 'images' has dtype float32, expected uint8 pixels 0-255; "
        "re-save them with np.clip(x, 0, 255).astype(np.uint8)"
    )


def test_wrong_rank(tmp_path: Path) -> None:
    p = write(tmp_path / "r.h5", images=np.zeros((12, 8, 8), np.uint8))
    with pytest.raises(DataError) as err:
        validate_galaxy10(p)
    assert str(err.value) == (
        f"{p}: 'images' has shape (12, 8, 8) (rank 3), expected rank 4 (N, H, W, 3); store one RGB image per row"
    )


def test_non_square(tmp_path: Path) -> None:
    p = write(tmp_path / "s.h5", images=np.zeros((12, 8, 6, 3), np.uint8))
    with pytest.raises(DataError) as err:
        validate_galaxy10(p)
    assert str(err.value) == (
        f"{p}: images are 8x6, not square; centre-crop them to square (`galaxy10 data import` does this)"
    )


def test_not_rgb(tmp_path: Path) -> None:
    p = write(tmp_path / "c.h5", images=np.zeros((12, 8, 8, 4), np.uint8))
    with pytest.raises(DataError) as err:
        validate_galaxy10(p)
    assert str(err.value) == (
        f"{p}: images have 4 channels, expected 3 (RGB); convert them to RGB (`galaxy10 data import` does this)"
    )


def test_float_labels_rejected(tmp_path: Path) -> None:
    p = write(tmp_path / "fl.h5", ans=np.zeros(12, np.float64))
    with pytest.raises(DataError) as err:
        validate_galaxy10(p)
    assert str(err.value) == (
        f"{p}: 'ans' has dtype float64, expected integer class labels (uint8); store labels as integers 0-9"
    )


@pytest.mark.parametrize("dtype", [np.int64, np.int16, np.uint16, np.int8])
def test_other_integer_label_dtypes_accepted(tmp_path: Path, dtype: type) -> None:
    labels = (np.arange(12) % 10).astype(dtype)
    p = write(tmp_path / "i.h5", ans=labels)
    assert validate_galaxy10(p).class_counts == (2, 2, 1, 1, 1, 1, 1, 1, 1, 1)
    with Galaxy10File(p) as g10:
        got = g10.labels()
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, labels.astype(np.uint8))


def test_label_count_mismatch(tmp_path: Path) -> None:
    p = write(tmp_path / "m.h5", ans=np.zeros(11, np.uint8))
    with pytest.raises(DataError) as err:
        validate_galaxy10(p)
    assert str(err.value) == (f"{p}: 'ans' has 11 labels but 'images' has 12 images; give exactly one label per image")


def test_label_rank(tmp_path: Path) -> None:
    p = write(tmp_path / "lr.h5", ans=np.zeros((12, 10), np.uint8))
    with pytest.raises(DataError) as err:
        validate_galaxy10(p)
    assert str(err.value) == f"{p}: 'ans' has shape (12, 10), expected one label per image (N,)"


def test_labels_out_of_range_counted_with_value_range(tmp_path: Path) -> None:
    labels = np.arange(12, dtype=np.int64) % 10
    labels[[1, 4, 7]] = [10, 12, -1]
    p = write(tmp_path / "o.h5", ans=labels)
    with pytest.raises(DataError) as err:
        validate_galaxy10(p)
    assert str(err.value) == (
        f"{p}: 3 of 12 labels are outside 0..9 (bad values -1..12); Galaxy10 labels must be 0-9: fix or drop those rows"
    )


def test_empty_file(tmp_path: Path) -> None:
    p = write(tmp_path / "e.h5", images=np.zeros((0, 8, 8, 3), np.uint8), ans=np.zeros(0, np.uint8))
    with pytest.raises(DataError) as err:
        validate_galaxy10(p)
    assert str(err.value) == f"{p} holds 0 images; regenerate or re-import it, or {FETCH}"


@pytest.mark.parametrize("key", ["ra", "dec", "redshift", "pxscale"])
def test_optional_array_wrong_length(tmp_path: Path, key: str) -> None:
    p = write(tmp_path / "co.h5", **{key: np.zeros(5)})
    with pytest.raises(DataError) as err:
        validate_galaxy10(p)
    assert str(err.value) == (
        f"{p}: '{key}' has shape (5,) but there are 12 images; give one value per image or delete '{key}'"
    )


# --- custom class sets (imported files) ---------------------------------------------------------


def test_custom_class_names_bound_the_labels(tmp_path: Path) -> None:
    names = json.dumps(["smooth", "ring"])
    ok = write(tmp_path / "ok.h5", ans=np.arange(12, dtype=np.uint8) % 2, attrs={"class_names": names})
    info = validate_galaxy10(ok)
    assert info.class_names == ("smooth", "ring") and info.is_custom and info.class_counts == (6, 6)
    bad = write(tmp_path / "bad.h5", ans=np.arange(12, dtype=np.uint8) % 3, attrs={"class_names": names})
    with pytest.raises(DataError) as err:
        validate_galaxy10(bad)
    assert str(err.value) == (
        f"{bad}: 4 of 12 labels are outside 0..1 (bad values 2..2); the file's "
        "class_names lists 2 classes: fix or drop those rows"
    )


def test_malformed_class_names_attribute(tmp_path: Path) -> None:
    p = write(tmp_path / "cn.h5", attrs={"class_names": "ring,smooth"})
    with pytest.raises(DataError, match=r"root attribute 'class_names' is 'ring,smooth', not a JSON list"):
        validate_galaxy10(p)


def test_galaxy10_names_attribute_is_not_custom(tmp_path: Path) -> None:
    p = write(tmp_path / "g.h5", attrs={"class_names": json.dumps(list(CLASS_NAMES))})
    assert not validate_galaxy10(p).is_custom


# --- lazy reads ---------------------------------------------------------------------------------


def test_images_in_requested_order_with_repeats(tiny_h5: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "READ_CHUNK", 7)  # many chunks, dense and sparse runs
    rng = np.random.default_rng(1)
    with Galaxy10File(tiny_h5) as g10:
        everything = g10.images()
        assert everything.shape == (200, 64, 64, 3) and everything.dtype == np.uint8
        for idx in (
            [5, 1, 3, 3, 199, 0],
            rng.integers(0, 200, 300),
            np.arange(50, 10, -1),
            rng.choice(200, 20, replace=False),
            [150, 5, 6, 7, 151, 190, 8],
        ):
            np.testing.assert_array_equal(g10.images(idx), everything[np.asarray(idx)])
        assert g10.images([]).shape == (0, 64, 64, 3)
        with pytest.raises(IndexError):
            g10.images([0, 200])
        with pytest.raises(IndexError):
            g10.images([-1])


def test_sorted_reads_never_ask_h5py_for_unsorted_rows(tiny_h5: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[np.ndarray] = []
    original = Galaxy10File._read_sorted_unique

    def spy(self: Galaxy10File, rows: np.ndarray) -> np.ndarray:
        seen.append(rows.copy())
        return original(self, rows)

    monkeypatch.setattr(Galaxy10File, "_read_sorted_unique", spy)
    monkeypatch.setattr(reader, "READ_CHUNK", 16)
    with Galaxy10File(tiny_h5) as g10:
        g10.images(np.random.default_rng(2).integers(0, 200, 100))
    assert seen and all(len(r) <= 16 and np.all(np.diff(r) > 0) for r in seen)


def test_iter_batches(tiny_h5: Path) -> None:
    with Galaxy10File(tiny_h5) as g10:
        everything = g10.images()
        batches = list(g10.iter_batches(64))
        assert [len(i) for i, _ in batches] == [64, 64, 64, 8]
        np.testing.assert_array_equal(np.concatenate([i for i, _ in batches]), np.arange(200))
        np.testing.assert_array_equal(np.concatenate([x for _, x in batches]), everything)
        order = np.random.default_rng(3).permutation(200)[:90]
        got = list(g10.iter_batches(32, order))
        np.testing.assert_array_equal(np.concatenate([i for i, _ in got]), order)
        np.testing.assert_array_equal(np.concatenate([x for _, x in got]), everything[order])
        with pytest.raises(ValueError):
            next(g10.iter_batches(0))


def test_labels_coords_and_close(tiny_h5: Path, make_h5: Callable[..., Path]) -> None:
    with h5py.File(tiny_h5, "r") as f:
        raw_ans, raw_ra = f["ans"][()], f["ra"][()]
    with Galaxy10File(tiny_h5) as g10:
        np.testing.assert_array_equal(g10.labels(), raw_ans)
        ra, dec = g10.coords()
        np.testing.assert_array_equal(ra, raw_ra)
        assert ra.dtype == dec.dtype == np.float64 and len(g10) == 200
    for read in (lambda: g10.images([0]), g10.images, g10.coords, lambda: next(g10.iter_batches(4))):
        with pytest.raises(ValueError, match=r"I/O on a closed Galaxy10File \(.*tiny\.h5\); open it again"):
            read()
    with Galaxy10File(make_h5("nc.h5", n=20, with_coords=False)) as g10:
        assert g10.coords() is None


def test_galaxy10file_validates_on_open(tmp_path: Path) -> None:
    p = write(tmp_path / "bad.h5", ans=np.full(12, 11, np.uint8))
    with pytest.raises(DataError, match="outside 0..9"):
        Galaxy10File(p)


# --- SHA-256 and provenance ---------------------------------------------------------------------


def test_sha256_streams_and_caches(tiny_h5: Path, tmp_path: Path) -> None:
    expected = hashlib.sha256(tiny_h5.read_bytes()).hexdigest()
    assert file_sha256(tiny_h5) == expected == data_fingerprint(tiny_h5)
    entries = list((tmp_path / "cache" / "sha256").glob("*.json"))  # GALAXY10_CACHE -> tmp_path/cache
    assert len(entries) == 1
    entry = json.loads(entries[0].read_text())
    assert entry["sha256"] == expected and entry["size"] == tiny_h5.stat().st_size
    # the cached digest is what is returned while path, size and mtime are unchanged ...
    entries[0].write_text(json.dumps({**entry, "sha256": "cached"}))
    assert file_sha256(tiny_h5) == "cached"
    # ... and a new mtime means a new key, so the file is hashed again
    st = tiny_h5.stat()
    os.utime(tiny_h5, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert file_sha256(tiny_h5) == expected
    assert len(list((tmp_path / "cache" / "sha256").glob("*.json"))) == 2


def test_sha256_explicit_cache_dir(tiny_h5: Path, tmp_path: Path) -> None:
    file_sha256(tiny_h5, cache_dir=tmp_path / "elsewhere")
    assert len(list((tmp_path / "elsewhere" / "sha256").glob("*.json"))) == 1
    assert not (tmp_path / "cache").exists()


def test_provenance(make_h5: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    synth = make_h5("s.h5", n=20)
    mine = make_h5("m.h5", n=20, synthetic=False)
    assert provenance(synth) == "synthetic"
    assert provenance(mine) == "modified"
    assert provenance(make_h5("i.h5", n=20, imported_classes=("a", "b"))) == "imported"
    monkeypatch.setattr(reader, "OFFICIAL_SHA256", file_sha256(mine))
    assert provenance(mine) == "official"
    with pytest.raises(DataError, match="not found"):
        provenance("missing.h5")
