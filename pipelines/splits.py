"""Group-aware, stratified train/validation/test splits, saved beside the data with its fingerprint.

Identical images (same pixel hash) and entries at the same sky position (within 1 arcsec) form one
group, and a group never straddles two splits: the real Galaxy10 DECaLS file contains duplicate
images and positions, and letting one copy sit in train and another in test inflates test scores.
Within that constraint the split is stratified: multi-member groups are placed greedily where their
classes are most needed, then single images fill each class's per-split quota exactly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from tqdm.auto import tqdm

from core.errors import ConfigError, DataError
from core.files import write_json_atomic
from pipelines.classes import NUM_CLASSES
from pipelines.reader import data_fingerprint, opened, validate_galaxy10

log = logging.getLogger(__name__)

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
SPLIT_FORMAT = "galaxy10-split"
SPLIT_FORMAT_VERSION = 1

#: Entries closer than this on the sky are the same galaxy.
DUPLICATE_RADIUS_ARCSEC: float = 1.0

#: Images hashed per batch in :func:`find_groups`.
HASH_BATCH_SIZE: int = 512


@dataclass(frozen=True, eq=False)
class Split:
    """A train/validation/test split of one data file: sorted int64 index arrays and how it was made."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    fingerprint: str
    seed: int
    test_fraction: float
    val_fraction: float
    n_groups: int
    n_multi_groups: int = 0
    class_counts: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        """Total number of images over the three splits."""
        return len(self.train) + len(self.val) + len(self.test)

    def indices(self, name: str) -> np.ndarray:
        """Index array of split ``name`` (``train``, ``val`` or ``test``)."""
        if name not in SPLIT_NAMES:
            raise ConfigError(f"unknown split {name!r}; use one of {', '.join(SPLIT_NAMES)}")
        return getattr(self, name)

    def matches(self, *, seed: int, test_fraction: float, val_fraction: float) -> bool:
        """Whether this split was made with these parameters."""
        return (
            self.seed == seed
            and math.isclose(self.test_fraction, test_fraction)
            and math.isclose(self.val_fraction, val_fraction)
        )


def split_path_for(data_path: str | os.PathLike) -> Path:
    """``data/x.h5`` -> ``data/x.split.json``: where the split of a data file is saved."""
    return Path(data_path).with_suffix(".split.json")


def _check_fractions(test_fraction: float, val_fraction: float) -> None:
    """Raise ``ConfigError`` unless 0 < test_fraction < 1 and 0 <= val_fraction < 1."""
    checks = (("test fraction", test_fraction, True), ("val fraction", val_fraction, False))
    for name, value, low_open in checks:
        ok = isinstance(value, (int, float)) and math.isfinite(value) and value < 1
        ok = ok and (value > 0 if low_open else value >= 0)
        if not ok:
            bounds = "0 < x < 1" if low_open else "0 <= x < 1"
            raise ConfigError(f"{name} {value!r} is out of range; use a number with {bounds} (e.g. 0.1)")


# --- duplicate groups ------------------------------------------------------------------------------


def _position_pairs(ra_deg: np.ndarray, dec_deg: np.ndarray, radius_arcsec: float) -> np.ndarray:
    """(P, 2) index pairs of entries within ``radius_arcsec`` on the sky (NaN coordinates skipped)."""
    ra = np.radians(np.asarray(ra_deg, dtype=np.float64))
    dec = np.radians(np.asarray(dec_deg, dtype=np.float64))
    ok = np.flatnonzero(np.isfinite(ra) & np.isfinite(dec))
    if len(ok) < 2:
        return np.empty((0, 2), dtype=np.int64)
    ra, dec = ra[ok], dec[ok]
    xyz = np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])
    chord = 2.0 * np.sin(np.radians(radius_arcsec / 3600.0) / 2.0)
    pairs = cKDTree(xyz).query_pairs(chord, output_type="ndarray")
    return ok[pairs].reshape(-1, 2)


def groups_from_keys(
    image_keys: np.ndarray,
    ra: np.ndarray | None = None,
    dec: np.ndarray | None = None,
    *,
    radius_arcsec: float = DUPLICATE_RADIUS_ARCSEC,
) -> tuple[np.ndarray, int]:
    """Join entries with equal ``image_keys`` or sky positions within ``radius_arcsec`` (transitively).

    Returns
    -------
    group_ids : numpy.ndarray
        int64 ``(N,)``, groups numbered 0..G-1 in order of first appearance.
    n_multi_groups : int
        Number of groups with more than one member.
    """
    keys = np.asarray(image_keys)
    n = len(keys)
    # Edges: each entry to the first entry with the same key, plus close sky pairs.
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    rows = [np.arange(n), np.arange(n)]
    cols = [first[inverse.ravel()], np.arange(n)]
    if ra is not None and dec is not None:
        pairs = _position_pairs(ra, dec, radius_arcsec)
        rows.append(pairs[:, 0])
        cols.append(pairs[:, 1])
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    # Renumber by first appearance so ids do not depend on scipy's internals.
    _, first_pos, inv = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first_pos))
    group_ids = order[inv.ravel()].astype(np.int64)
    sizes = np.bincount(group_ids)
    return group_ids, int((sizes > 1).sum())


def image_hashes(data_path: str | os.PathLike, batch_size: int = HASH_BATCH_SIZE, *, source: Any = None) -> np.ndarray:
    """blake2b-128 digest of each image's bytes, streamed in batches; ``(N,)`` array of 16-byte keys.

    ``source``: the caller's open ``Galaxy10File`` of ``data_path`` (else the file is opened here).
    """

    with opened(data_path, source) as f:
        n = f.info.n_images
        out = np.empty(n, dtype="S16")
        with tqdm(total=n, desc="hash images", unit="img", disable=None) as bar:
            for indices, images in f.iter_batches(batch_size):
                out[indices] = [hashlib.blake2b(im.tobytes(), digest_size=16).digest() for im in images]
                bar.update(len(images))
    return out


def find_groups(data_path: str | os.PathLike, *, source: Any = None) -> tuple[np.ndarray, int]:
    """Group identical images and same-position entries of a Galaxy10 file (``source``: its open file).

    Returns
    -------
    group_ids : numpy.ndarray
        int64 ``(N,)`` group id per image (0..G-1).
    n_multi_groups : int
        How many groups have more than one member (duplicate groups).
    """

    with opened(data_path, source) as f:
        hashes = image_hashes(data_path, source=f)
        coords = f.coords()
    ra, dec = coords if coords is not None else (None, None)
    group_ids, n_multi = groups_from_keys(hashes, ra, dec)
    log.info(
        "%s: %d images in %d groups, %d with duplicates",
        data_path,
        len(group_ids),
        int(group_ids.max()) + 1 if len(group_ids) else 0,
        n_multi,
    )
    return group_ids, n_multi


# --- assignment ------------------------------------------------------------------------------------


def _split_fractions(test_fraction: float, val_fraction: float) -> np.ndarray:
    """Fractions of the whole for (train, val, test); validation is a fraction of what test leaves."""
    val = (1.0 - test_fraction) * val_fraction
    return np.array([1.0 - test_fraction - val, val, test_fraction])


def _quota(n: int, fractions: np.ndarray) -> np.ndarray:
    """Per-split counts for ``n`` items: val and test rounded half up, train takes the rest."""
    val = math.floor(n * fractions[1] + 0.5)
    test = math.floor(n * fractions[2] + 0.5)
    return np.array([n - val - test, val, test])


def assign_groups(
    labels: np.ndarray, group_ids: np.ndarray, *, test_fraction: float = 0.1, val_fraction: float = 0.1, seed: int = 42
) -> np.ndarray:
    """Assign each image to split 0 (train), 1 (val) or 2 (test), keeping every group in one split.

    Multi-member groups go first, largest first (random order among equals), each to the split whose
    per-class quota its members fill the least; then each class's single images are shuffled and
    fill the remaining per-class quotas, so for a class of ``n_k`` singletons the test count is
    ``round(test_fraction * n_k)``.

    Returns
    -------
    numpy.ndarray
        int8 ``(N,)`` split code per image.
    """
    _check_fractions(test_fraction, val_fraction)
    labels = np.asarray(labels).astype(np.int64)
    group_ids = np.asarray(group_ids).astype(np.int64)
    if labels.shape != group_ids.shape or labels.ndim != 1:
        raise DataError(f"labels {labels.shape} and group ids {group_ids.shape} must be equal 1-D arrays")
    rng = np.random.default_rng(seed)
    fractions = _split_fractions(test_fraction, val_fraction)
    n_classes = max(NUM_CLASSES, int(labels.max()) + 1 if len(labels) else 0)
    class_totals = np.bincount(labels, minlength=n_classes)
    # quota[s, k]: how many images of class k split s should get.
    quota = np.stack([_quota(int(nk), fractions) for nk in class_totals], axis=1).astype(np.float64)
    filled = np.zeros_like(quota)
    split_of = np.full(len(labels), -1, dtype=np.int8)

    sizes = np.bincount(group_ids)
    multi = np.flatnonzero(sizes > 1)
    multi = multi[rng.permutation(len(multi))]
    multi = multi[np.argsort(-sizes[multi], kind="stable")]
    members_of = np.split(np.argsort(group_ids, kind="stable"), np.cumsum(sizes)[:-1])
    allowed = fractions > 0
    for g in multi:
        members = members_of[g]
        counts = np.bincount(labels[members], minlength=n_classes)
        # Relative room left per split for this group's classes; the split with most room wins.
        room = ((quota - filled) / np.maximum(quota, 1.0)) @ counts
        room[~allowed] = -np.inf
        best = np.flatnonzero(room == room.max())
        s = int(best[rng.integers(len(best))]) if len(best) > 1 else int(best[0])
        split_of[members] = s
        filled[s] += counts

    single = np.flatnonzero(sizes[group_ids] == 1)
    for k in range(n_classes):
        pool = single[labels[single] == k]
        pool = pool[rng.permutation(len(pool))]
        left = quota[:, k] - filled[:, k]
        n_test = int(np.clip(left[2], 0, len(pool)))
        n_val = int(np.clip(left[1], 0, len(pool) - n_test))
        split_of[pool[:n_test]] = 2
        split_of[pool[n_test : n_test + n_val]] = 1
        split_of[pool[n_test + n_val :]] = 0
    return split_of


def make_split(
    path: str | os.PathLike,
    *,
    test_fraction: float = 0.1,
    val_fraction: float = 0.1,
    seed: int = 42,
    source: Any = None,
) -> Split:
    """Make a group-aware stratified split of the Galaxy10 file at ``path`` (not saved; ``source``: its
    open ``Galaxy10File``, else it is opened here)."""

    _check_fractions(test_fraction, val_fraction)
    with opened(path, source) as f:
        labels = f.labels()
        num_classes = f.info.num_classes
        group_ids, n_multi = find_groups(path, source=f)
    split_of = assign_groups(labels, group_ids, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed)
    parts = {name: np.flatnonzero(split_of == code).astype(np.int64) for code, name in enumerate(SPLIT_NAMES)}
    if not len(parts["train"]) or not len(parts["test"]):
        raise DataError(
            f"{path} has too few images ({len(labels)}) for a train and a test split; "
            "use a larger file or other fractions"
        )
    counts = {
        name: tuple(int(c) for c in np.bincount(labels[idx], minlength=num_classes)) for name, idx in parts.items()
    }
    return Split(
        **parts,
        fingerprint=data_fingerprint(path),
        seed=int(seed),
        test_fraction=float(test_fraction),
        val_fraction=float(val_fraction),
        n_groups=int(group_ids.max()) + 1,
        n_multi_groups=n_multi,
        class_counts=counts,
    )


# --- persistence -----------------------------------------------------------------------------------


def split_to_json(split: Split, data_name: str | None = None) -> dict[str, Any]:
    """The JSON document :func:`save_split` writes."""
    return {
        "format": SPLIT_FORMAT,
        "version": SPLIT_FORMAT_VERSION,
        "data": data_name,
        "fingerprint": split.fingerprint,
        "seed": split.seed,
        "test_fraction": split.test_fraction,
        "val_fraction": split.val_fraction,
        "n_images": split.n_images,
        "n_groups": split.n_groups,
        "n_multi_groups": split.n_multi_groups,
        "sizes": {name: len(split.indices(name)) for name in SPLIT_NAMES},
        "class_counts": {name: list(split.class_counts.get(name, ())) for name in SPLIT_NAMES},
        "indices": {name: split.indices(name).tolist() for name in SPLIT_NAMES},
    }


def save_split(split: Split, path: str | os.PathLike, data_name: str | None = None) -> Path:
    """Write ``split`` as JSON to ``path`` atomically; return the path."""
    return write_json_atomic(path, split_to_json(split, data_name))


def _malformed(path: Path, problem: str) -> DataError:
    return DataError(
        f"split file {path} is malformed ({problem}); delete it or re-split with `galaxy10 data split --force`"
    )


def _index_array(path: Path, doc: Mapping[str, Any], name: str, n_images: int) -> np.ndarray:
    values = doc["indices"][name]
    if not isinstance(values, list) or not all(type(v) is int for v in values):
        raise _malformed(path, f"indices.{name} is not a list of integers")
    array = np.array(values, dtype=np.int64)
    if len(array) and (array.min() < 0 or array.max() >= n_images):
        raise _malformed(path, f"indices.{name} has entries outside 0..{n_images - 1}")
    return np.sort(array)


def split_from_json(doc: Any, path: Path) -> Split:
    """Parse and check a split document; raise a one-line ``DataError`` naming what is wrong."""
    if not isinstance(doc, dict) or doc.get("format") != SPLIT_FORMAT:
        raise _malformed(path, f"not a {SPLIT_FORMAT} document")
    try:
        n_images = int(doc["n_images"])
        fingerprint = doc["fingerprint"]
        if not isinstance(fingerprint, str) or not fingerprint:
            raise _malformed(path, "fingerprint is missing")
        parts = {name: _index_array(path, doc, name, n_images) for name in SPLIT_NAMES}
        class_counts = {name: tuple(int(c) for c in doc.get("class_counts", {}).get(name, ())) for name in SPLIT_NAMES}
        split = Split(
            **parts,
            fingerprint=fingerprint,
            seed=int(doc["seed"]),
            test_fraction=float(doc["test_fraction"]),
            val_fraction=float(doc["val_fraction"]),
            n_groups=int(doc["n_groups"]),
            n_multi_groups=int(doc.get("n_multi_groups", 0)),
            class_counts=class_counts,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise _malformed(path, f"bad or missing field {err}") from None
    everything = np.concatenate([split.train, split.val, split.test])
    if len(everything) != n_images or len(np.unique(everything)) != n_images:
        raise _malformed(path, f"the index lists do not cover 0..{n_images - 1} exactly once")
    return split


def load_split(path: str | os.PathLike, data_path: str | os.PathLike) -> Split:
    """Load the split at ``path`` and check it was made for the file at ``data_path``.

    Raises
    ------
    DataError
        If the file is malformed or its fingerprint differs from the data's.
    """

    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"split file {path} does not exist; run `galaxy10 data split` first") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _malformed(path, f"unreadable JSON: {err}") from None
    split = split_from_json(doc, path)
    actual = data_fingerprint(data_path)
    if split.fingerprint != actual:
        raise DataError(
            f"split {path} was made for data {split.fingerprint[:12]}, this file {data_path} is "
            f"{actual[:12]}; delete the split file or re-split with `galaxy10 data split --force`"
        )
    return split


def ensure_split(
    data_path: str | os.PathLike,
    *,
    test_fraction: float | None = 0.1,
    val_fraction: float | None = 0.1,
    seed: int | None = 42,
    force: bool = False,
    source: Any = None,
) -> Split:
    """Load ``<data>.split.json`` if it matches these parameters; make and save one if none is saved.

    A saved split is the user's decision: one made with other parameters, or for other data, raises
    ``DataError`` (naming both and the fix) unless ``force`` is set; it is never replaced silently.
    A parameter given as None takes the saved split's value (the default 0.1 / 0.1 / 42 when none is saved).
    ``source``: the caller's open (validated) ``Galaxy10File`` of ``data_path``.
    """

    if source is None:
        validate_galaxy10(data_path)  # a missing or broken file fails here with the reader's message
    path = split_path_for(data_path)
    saved = load_split(path, data_path) if path.exists() and not force else None
    if saved is not None:
        seed = saved.seed if seed is None else seed
        test_fraction = saved.test_fraction if test_fraction is None else test_fraction
        val_fraction = saved.val_fraction if val_fraction is None else val_fraction
    seed = 42 if seed is None else seed
    test_fraction = 0.1 if test_fraction is None else test_fraction
    val_fraction = 0.1 if val_fraction is None else val_fraction
    _check_fractions(test_fraction, val_fraction)
    if saved is not None:
        split = saved
        if split.matches(seed=seed, test_fraction=test_fraction, val_fraction=val_fraction):
            log.info("using split %s", path)
            return split
        raise DataError(
            f"split {path} was made with seed {split.seed}, test fraction {split.test_fraction:g}, val fraction "
            f"{split.val_fraction:g}, but seed {seed}, {test_fraction:g}, {val_fraction:g} were asked for; a saved "
            f"split is kept: use it (--set data.split_seed={split.seed} --set data.test_fraction="
            f"{split.test_fraction:g} --set data.val_fraction={split.val_fraction:g}, or the same options of "
            f"`galaxy10 data split`), or replace it with `galaxy10 data split {data_path} --test-fraction "
            f"{test_fraction:g} --val-fraction {val_fraction:g} --seed {seed} --force`"
        )
    split = make_split(data_path, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed, source=source)
    save_split(split, path, data_name=Path(data_path).name)
    log.info("saved split %s", path)
    return split
