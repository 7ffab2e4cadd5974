"""What an evaluation compares and on which images: recipes, their budgets, and R x K stratified folds."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import ConfigError, DataError
from core.yaml_io import read_yaml_file

#: Bounds of ``--repeats`` and ``--folds``.
MAX_REPEATS, MAX_FOLDS = 20, 20
#: Top-level keys that make a YAML a tuning config (a study and its search space), not a run config.
TUNE_KEYS = frozenset({"study", "search_space", "run"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")


@dataclass(frozen=True)
class Recipe:
    """One way to make a model from labelled images: a run config (``train``) or a tuning config run as the
    whole catalog path (``tune``: tune, ensemble, the champion predicts)."""

    name: str
    path: Path
    kind: str  # train | tune
    text: str


def parse_recipe(spec: str) -> Recipe:
    """``PATH`` or ``NAME=PATH`` (the name defaults to the file's stem); the kind is read from the YAML."""
    name, sep, path_text = spec.partition("=")
    if not sep:
        name, path_text = Path(spec).stem, spec
    if not _NAME.match(name):
        raise ConfigError(
            f"--recipe {spec!r}: the name {name!r} is not allowed; use letters, digits, '.', '_' or '-' "
            "(e.g. --recipe reference=experiments/configs/reference.yaml)"
        )
    path = Path(path_text)
    raw = read_yaml_file(path, what="recipe", example="experiments/configs/reference.yaml") or {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"recipe {path} is not a mapping of config keys; pass a run or tuning YAML, e.g. "
            "experiments/configs/reference.yaml"
        )
    kind = "tune" if TUNE_KEYS & set(raw) else "train"
    recipe = Recipe(name, path, kind, path.read_text(encoding="utf-8"))
    load_recipe_config(recipe)  # a bad recipe fails here, before any fold is trained
    return recipe


def load_recipe_config(recipe: Recipe):  # noqa: ANN201 - RunConfig or TuneConfig
    """The validated config of a recipe (``RunConfig`` or ``TuneConfig``), one line on a bad key; a recipe that
    trains on only part of the file (``data.max_images``) is refused: evaluation scores every image."""
    if recipe.kind == "tune":
        from experiments.settings.trial import base_run_dict
        from experiments.settings.tune import load_tune_config

        cfg = load_tune_config(recipe.path)
        max_images = (base_run_dict(cfg).get("data") or {}).get("max_images")
    else:
        from experiments.settings.run import load_config

        cfg = load_config(recipe.path)
        max_images = cfg.data.max_images
    if max_images:
        raise ConfigError(
            f"recipe {recipe.name} sets data.max_images={max_images}; galaxy10 evaluate scores every "
            "image of the file once per repetition: remove data.max_images from it"
        )
    return cfg


def check_recipes(recipes: Sequence[Recipe]) -> None:
    """At least two recipes, unique names."""
    if len(recipes) < 2:
        raise ConfigError(
            f"galaxy10 evaluate compares recipes: give at least two --recipe (got {len(recipes)}), "
            "e.g. --recipe experiments/configs/reference.yaml --recipe experiments/configs/targeted.yaml"
        )
    names = [r.name for r in recipes]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"recipe name {dupes[0]!r} is used twice; name them apart with --recipe NAME=PATH")


@dataclass(frozen=True)
class Budget:
    """A tuning recipe's budget per fold: seconds, or a factor of the first run recipe's wall time there."""

    seconds: float | None = None
    factor: float | None = None

    def text(self) -> str:
        return f"{self.factor:g}x" if self.factor is not None else f"{self.seconds:.0f}s"


def parse_budget(text: str | None) -> Budget | None:
    """``4x`` (4 times the first run recipe's median wall time per fold, over the folds so far, the current one
    included) or a duration (``20m``)."""
    if text is None:
        return None
    raw = str(text).strip().lower()
    if raw.endswith("x"):
        try:
            factor = float(raw[:-1])
        except ValueError:
            factor = float("nan")
        if not 0 < factor <= 100:
            raise ConfigError(
                f"--budget {text!r} is out of range; write a factor from 0.1x to 100x (e.g. 4x) or a "
                "duration (e.g. 20m)"
            )
        return Budget(factor=factor)
    from experiments.settings.checks import parse_duration

    return Budget(seconds=parse_duration(text))


def check_counts(repeats: int, folds: int, labels: np.ndarray) -> None:
    """``repeats`` in 1..20, ``folds`` in 2..20 and no more folds than the rarest class has images."""
    if not 1 <= repeats <= MAX_REPEATS:
        raise ConfigError(f"--repeats {repeats} is out of range; use 1-{MAX_REPEATS} (e.g. --repeats 3)")
    if not 2 <= folds <= MAX_FOLDS:
        raise ConfigError(f"--folds {folds} is out of range; use 2-{MAX_FOLDS} (e.g. --folds 5)")
    counts = np.bincount(labels)
    present = counts[counts > 0]
    if present.min() < folds:
        raise DataError(
            f"the rarest class has {int(present.min())} image(s), fewer than --folds {folds}: every fold "
            "needs one of each class to test on; use fewer folds"
        )


@dataclass(frozen=True)
class Fold:
    """Repetition ``r``, fold ``k``: the held-out images (``test``) and the rest (``train``), file indices."""

    r: int
    k: int
    train: np.ndarray
    test: np.ndarray

    def with_labels(self, labels: np.ndarray, fraction: float, seed: int) -> Fold:
        """The fold with only a stratified ``fraction`` of its training images (the same held-out images)."""
        return Fold(
            self.r, self.k, label_subset(labels, self.train, fraction, seed + 1000 * self.r + self.k), self.test
        )

    @property
    def cell(self) -> str:
        return f"r{self.r}k{self.k}"


def repeated_folds(labels: np.ndarray, groups: np.ndarray | None, *, repeats: int, folds: int, seed: int) -> list[Fold]:
    """``repeats`` x ``folds`` stratified folds of the whole file (repetition r shuffled with ``seed + r``).

    Duplicate groups (the same image twice, or the same sky position) stay on one side of every fold
    (``StratifiedGroupKFold``), so no image is tested on its own copy.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    out = []
    idx = np.arange(len(labels))
    for r in range(repeats):
        if groups is not None and len(np.unique(groups)) < len(groups):
            splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed + r)
            splits = splitter.split(idx, labels, groups)
        else:
            splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed + r).split(idx, labels)
        for k, (train, test) in enumerate(splits):
            out.append(Fold(r, k, np.sort(train), np.sort(test)))
    return out


def inner_validation(
    labels: np.ndarray, train: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A stratified validation share of a fold's training images (what the recipe early-stops and calibrates on).

    Images of a class with a single training image stay in training; the share holds at least one image of
    every other class where it can.
    """
    from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit

    y = labels[train]
    pool = train[np.bincount(y)[y] >= 2]
    n_val = min(max(int(round(fraction * len(train))), len(np.unique(labels[pool]))), len(pool) // 2)
    if n_val < 1:
        raise DataError(
            f"a fold has only {len(train)} training images: too few to hold out a validation share; "
            "use fewer folds or more images"
        )
    try:
        splitter = StratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=seed)
        _, va = next(splitter.split(pool, labels[pool]))
    except ValueError:  # more classes than validation images
        _, va = next(ShuffleSplit(n_splits=1, test_size=n_val, random_state=seed).split(pool))
    val = np.sort(pool[va])
    return np.setdiff1d(train, val), val


def label_subset(labels: np.ndarray, rows: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified ``fraction`` of ``rows`` (at least one image of every class they hold), sorted: the labels
    a recipe may learn from in a label-efficiency evaluation. ``fraction`` 1 returns ``rows``."""
    if fraction >= 1.0:
        return np.asarray(rows)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels[rows]):
        members = rows[labels[rows] == c]
        n = max(1, int(round(fraction * len(members))))
        keep.append(rng.choice(members, size=n, replace=False))
    return np.sort(np.concatenate(keep))


def check_label_fraction(fraction: float) -> float:
    """``fraction`` in (0, 1], else one line."""
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ConfigError(
            f"--label-fraction {fraction!r} is out of range; use 0 < f <= 1 (e.g. 0.1: each fold's "
            "recipes learn from 10% of its training labels)"
        )
    return float(fraction)


def evaluation_key(
    fingerprint: str,
    recipes: Sequence[Recipe],
    *,
    folds: int,
    seed: int,
    budget: Budget | None,
    label_fraction: float = 1.0,
) -> str:
    """What makes two evaluations the same, so a later command continues the first: data, recipes, K, seed and
    budget (and the label fraction). Not R: repetition r's folds depend on ``seed + r`` alone, so ``--repeats 3``
    after ``--repeats 1`` reuses the first repetition and adds two."""
    doc = {
        "data": fingerprint,
        "folds": folds,
        "seed": seed,
        "budget": None if budget is None else budget.text(),
        "recipes": [[r.name, r.kind, r.text] for r in recipes],
    }
    if label_fraction != 1.0:  # only then: an evaluation of all the labels keeps the key it had before the option
        doc["label_fraction"] = label_fraction
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]
