"""Second-stage models on CNN embeddings: a small zoo of scikit-learn and XGBoost classifiers.

Every model is built by :func:`make_second_stage` from a name and a mapping of hyper-parameters
(the ``second_stage`` section of ``experiments/configs/ensemble.yaml``). Unknown names or keys raise
:class:`~core.errors.ConfigError` naming the key; values are checked with scikit-learn's own
parameter validation where the estimator has it. Scale-sensitive models (logistic regression, SVM,
k-nearest neighbours) get a ``StandardScaler`` in front.

:class:`EncodedXGBClassifier` wraps ``xgboost.XGBClassifier`` so that it accepts any integer labels
(a fold may lack a class) and reports ``classes_`` like scikit-learn; it is saved as XGBoost's own
JSON model, the scikit-learn models with joblib (:func:`save_second_stage`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.class_weight import compute_sample_weight
from xgboost import XGBClassifier

from core.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

#: The second-stage models, in the order the comparison lists them.
MODEL_NAMES: tuple[str, ...] = ("logreg", "xgboost", "hist_gb", "random_forest", "extra_trees", "svm", "knn")

#: Defaults per model (the YAML overrides them key by key).
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "logreg": {"C": 0.5, "max_iter": 2000},
    "xgboost": {
        "n_estimators": 200,
        "max_depth": 4,
        "learning_rate": 0.1,
        "subsample": 0.9,
        "colsample_bytree": 0.5,
        "min_child_weight": 1.0,
        "reg_lambda": 1.0,
    },
    "hist_gb": {
        "max_iter": 100,
        "learning_rate": 0.1,
        "max_leaf_nodes": 15,
        "l2_regularization": 0.0,
        "early_stopping": False,
    },
    "random_forest": {"n_estimators": 300, "max_features": "sqrt", "min_samples_leaf": 1},
    "extra_trees": {"n_estimators": 300, "max_features": "sqrt", "min_samples_leaf": 1},
    "svm": {"C": 1.0, "kernel": "rbf", "gamma": "scale"},
    "knn": {"n_neighbors": 15, "weights": "distance"},
}

#: Parameters the platform sets itself (seed, threads, probability outputs): not configurable.
RESERVED: dict[str, tuple[str, ...]] = {
    "logreg": ("random_state", "n_jobs"),
    "xgboost": (
        "random_state",
        "n_jobs",
        "objective",
        "num_class",
        "tree_method",
        "device",
        "callbacks",
        "early_stopping_rounds",
        "eval_metric",
        "enable_categorical",
        "feature_types",
    ),
    "hist_gb": ("random_state",),
    "random_forest": ("random_state", "n_jobs"),
    "extra_trees": ("random_state", "n_jobs"),
    "svm": ("random_state", "probability"),
    "knn": ("n_jobs",),
}
_SCALED = frozenset({"logreg", "svm", "knn"})


#: Second stages that can weight classes (``class_weight`` or, for XGBoost, per-sample weights).
WEIGHTABLE: frozenset[str] = frozenset({"logreg", "xgboost", "hist_gb", "random_forest", "extra_trees", "svm"})


def _base_estimator(
    name: str, params: Mapping[str, Any], *, seed: int, n_jobs: int | None, balanced: bool = False
) -> Any:
    """The bare (unscaled) estimator ``name`` with ``params`` plus the reserved settings.

    ``balanced`` weights every class equally in the fit (``class_weight="balanced"``, for XGBoost
    per-sample weights ``n / (k * n_c)``) unless ``params`` set ``class_weight`` themselves.
    """

    kw = dict(params)
    if balanced and name in WEIGHTABLE - {"xgboost"}:
        kw.setdefault("class_weight", "balanced")
    if name == "logreg":
        return LogisticRegression(random_state=seed, **kw)
    if name == "xgboost":
        return EncodedXGBClassifier(params=kw, random_state=seed, n_jobs=n_jobs, balanced=balanced)
    if name == "hist_gb":
        return HistGradientBoostingClassifier(random_state=seed, **kw)
    if name == "random_forest":
        return RandomForestClassifier(random_state=seed, n_jobs=n_jobs, **kw)
    if name == "extra_trees":
        return ExtraTreesClassifier(random_state=seed, n_jobs=n_jobs, **kw)
    if name == "svm":
        return SVC(probability=True, random_state=seed, **kw)
    if name == "knn":
        return KNeighborsClassifier(n_jobs=n_jobs, **kw)
    raise ConfigError(f"unknown second-stage model {name!r}; use one of: {', '.join(MODEL_NAMES)}")


def allowed_params(name: str) -> tuple[str, ...]:
    """The hyper-parameter names ``name`` accepts in the config (its estimator's, minus reserved ones)."""
    if name not in MODEL_NAMES:
        raise ConfigError(f"unknown second-stage model {name!r}; use one of: {', '.join(MODEL_NAMES)}")
    if name == "xgboost":
        keys = XGBClassifier().get_params().keys()
    else:
        keys = _base_estimator(name, {}, seed=0, n_jobs=None).get_params().keys()
    return tuple(sorted(k for k in keys if k not in RESERVED[name]))


def resolve_params(name: str, params: Mapping[str, Any] | None, *, where: str | None = None) -> dict[str, Any]:
    """Defaults of ``name`` updated by ``params``, validated.

    Raises
    ------
    ConfigError
        For an unknown model, an unknown or reserved key (named with its dotted path), or a value
        the estimator rejects.
    """
    where = where or f"second_stage.{name}"
    allowed = allowed_params(name)
    params = dict(params or {})
    for key in params:
        if str(key) in RESERVED[name]:
            raise ConfigError(
                f"config key {where}.{key} is set by the platform; remove it (allowed keys: {', '.join(allowed)})"
            )
        if key not in allowed:
            raise ConfigError(f"unknown config key {where}.{key}; allowed keys for {name}: {', '.join(allowed)}")
    merged = {**DEFAULT_PARAMS[name], **params}
    _check_values(name, merged, where)
    return merged


def _check_values(name: str, params: Mapping[str, Any], where: str) -> None:
    """Run the estimator's own parameter validation (scikit-learn) or a type check (XGBoost)."""

    if name == "xgboost":
        for key, value in params.items():
            if isinstance(value, (Mapping, list, tuple)):
                raise ConfigError(f"config key {where}.{key}={value!r} has the wrong type; give a number or a string")
        return
    est = _base_estimator(name, params, seed=0, n_jobs=None)
    try:
        est._validate_params()
    except (InvalidParameterError, ValueError, TypeError) as err:
        message = str(err).splitlines()[0].rstrip(".")
        found = re.match(r"The '(\w+)' parameter of \w+ (must be .*?)\. Got (.*) instead", message)
        if found and found.group(1) in params:
            key, rule = found.group(1), found.group(2)
            raise ConfigError(f"config key {where}.{key}={params[key]!r} is not allowed: it {rule}") from None
        raise ConfigError(f"config key {where}: {message}; fix the value") from None


def make_second_stage(
    name: str,
    params: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    n_jobs: int | None = None,
    balanced: bool = False,
) -> Any:
    """An unfitted classifier ``name`` (with a StandardScaler in front where it needs one).

    ``balanced``: weight the classes equally in the fit (see :data:`WEIGHTABLE`; ``knn`` cannot).
    """

    merged = resolve_params(name, params)
    if balanced and name not in WEIGHTABLE:
        raise ConfigError(
            f"second stage {name} cannot weight classes; set class_weights: none in the ensemble "
            f"config or drop {name} (weightable: {', '.join(sorted(WEIGHTABLE))})"
        )
    est = _base_estimator(name, merged, seed=seed, n_jobs=n_jobs, balanced=balanced)
    if name in _SCALED:
        return Pipeline([("scale", StandardScaler()), ("model", est)])
    return est


def full_proba(estimator: Any, X: np.ndarray, n_classes: int) -> np.ndarray:
    """``predict_proba`` spread over all ``n_classes`` columns (classes absent from the fit get 0)."""
    probs = np.asarray(estimator.predict_proba(X), dtype=np.float64)
    classes = np.asarray(estimator.classes_).astype(int)
    if len(classes) == n_classes and np.array_equal(classes, np.arange(n_classes)):
        return probs
    out = np.zeros((len(probs), n_classes), dtype=np.float64)
    out[:, classes] = probs
    return out


class EncodedXGBClassifier(ClassifierMixin, BaseEstimator):
    """``xgboost.XGBClassifier`` (``tree_method="hist"``) that accepts any integer labels.

    Parameters
    ----------
    params
        XGBoost hyper-parameters (``n_estimators``, ``max_depth``, ``learning_rate``, ...).
    random_state, n_jobs
        Seed and threads.
    balanced
        Weight every class equally in the fit (per-sample weights ``n / (k * n_c)``).
    """

    def __init__(
        self,
        params: Mapping[str, Any] | None = None,
        *,
        random_state: int = 0,
        n_jobs: int | None = None,
        balanced: bool = False,
    ) -> None:
        self.params = params
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.balanced = balanced

    def _make(self, n_classes: int) -> Any:
        kw = dict(self.params or {})
        if n_classes > 2:
            kw.update(objective="multi:softprob")
        return XGBClassifier(tree_method="hist", random_state=self.random_state, n_jobs=self.n_jobs, **kw)

    def fit(self, X: np.ndarray, y: np.ndarray) -> EncodedXGBClassifier:
        """Fit on labels re-encoded to ``0..k-1``; ``classes_`` keeps the original labels."""
        self.classes_, encoded = np.unique(np.asarray(y), return_inverse=True)
        if len(self.classes_) < 2:
            raise ModelError(
                f"xgboost second stage needs at least 2 classes in its training labels, got "
                f"{len(self.classes_)}; use more images per fold"
            )
        self.model_ = self._make(len(self.classes_))
        try:
            weights = compute_sample_weight("balanced", encoded) if self.balanced else None
            self.model_.fit(np.asarray(X, dtype=np.float32), encoded, sample_weight=weights)
        except Exception as err:  # xgboost.core.XGBoostError for bad parameter values
            if type(err).__name__ == "XGBoostError" or isinstance(err, (ValueError, TypeError)):
                raise ConfigError(
                    f"xgboost second stage rejected its parameters ({str(err).splitlines()[0]}); "
                    "fix second_stage.xgboost"
                ) from None
            raise
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Probabilities over ``classes_``."""
        probs = np.asarray(self.model_.predict_proba(np.asarray(X, dtype=np.float32)), dtype=np.float64)
        return probs if probs.ndim == 2 else np.stack([1 - probs, probs], axis=1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Most probable original label."""
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


# --------------------------------------------------------------------------------------------
# Saving and loading (XGBoost JSON, joblib for scikit-learn)
# --------------------------------------------------------------------------------------------
def save_second_stage(estimator: Any, folder: str | Path, stem: str) -> dict[str, Any]:
    """Write a fitted second stage into ``folder`` as ``<stem>.json`` (XGBoost) or ``<stem>.joblib``.

    Returns the small spec :func:`load_second_stage` needs.
    """

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(estimator, EncodedXGBClassifier):
        path = folder / f"{stem}.json"
        estimator.model_.save_model(str(path))
        return {
            "format": "xgboost-json",
            "file": path.name,
            "classes": [int(c) for c in estimator.classes_],
            "params": json.loads(json.dumps(dict(estimator.params or {}))),
        }
    path = folder / f"{stem}.joblib"
    joblib.dump(estimator, path)
    return {"format": "joblib", "file": path.name}


def load_second_stage(spec: Mapping[str, Any], folder: str | Path) -> Any:
    """Reload what :func:`save_second_stage` wrote (joblib only for the platform's own artifacts)."""

    path = Path(folder) / str(spec["file"])
    if not path.is_file():
        raise ModelError(f"second-stage model file {path} is missing; re-log the ensemble with galaxy10 ensemble")
    if spec["format"] == "xgboost-json":
        est = EncodedXGBClassifier(params=spec.get("params") or {})
        est.model_ = XGBClassifier()
        est.model_.load_model(str(path))
        est.classes_ = np.asarray(spec["classes"], dtype=np.int64)
        est.n_features_in_ = int(est.model_.n_features_in_)
        return est
    if spec["format"] == "joblib":
        return joblib.load(path)
    raise ModelError(f"unknown second-stage format {spec['format']!r} in {folder}; re-log the ensemble")
