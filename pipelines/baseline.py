"""The floor every model must beat: always predict the most frequent training class."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.dummy import DummyClassifier
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, recall_score

from core.errors import DataError
from pipelines.classes import CLASS_NAMES, CLASS_SLUGS
from pipelines.reader import Galaxy10File
from pipelines.splits import Split

log = logging.getLogger(__name__)


def baseline_metrics(
    train_labels: np.ndarray, test_labels: np.ndarray, class_names: tuple[str, ...] = CLASS_NAMES
) -> dict[str, Any]:
    """Fit a most-frequent ``DummyClassifier`` on ``train_labels``; score it on ``test_labels``.

    Returns
    -------
    dict
        ``accuracy``, ``balanced_accuracy``, ``macro_f1`` (over the classes present in the test
        labels or predictions), ``per_class_recall`` (class key -> recall, None for a class absent
        from the test labels), ``majority_class`` and ``majority_class_name``, ``n_train``, ``n_test``.
    """
    y_train = np.asarray(train_labels, dtype=np.int64)
    y_test = np.asarray(test_labels, dtype=np.int64)
    model = DummyClassifier(strategy="most_frequent").fit(np.zeros((len(y_train), 1)), y_train)
    y_pred = model.predict(np.zeros((len(y_test), 1)))
    keys = CLASS_SLUGS if tuple(class_names) == CLASS_NAMES else tuple(class_names)
    present = np.unique(np.concatenate([y_test, y_pred]))
    recalls = recall_score(y_test, y_pred, labels=np.arange(len(keys)), average=None, zero_division=0)
    in_test = np.bincount(y_test, minlength=len(keys)) > 0
    majority = int(model.classes_[np.argmax(model.class_prior_)])
    return {
        "model": "DummyClassifier(strategy='most_frequent')",
        "accuracy": float(accuracy_score(y_test, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_test, y_pred)),
        "macro_f1": float(f1_score(y_test, y_pred, labels=present, average="macro", zero_division=0)),
        "per_class_recall": {key: float(recalls[k]) if in_test[k] else None for k, key in enumerate(keys)},
        "majority_class": majority,
        "majority_class_name": class_names[majority],
        "n_train": int(len(y_train)),
        "n_test": int(len(y_test)),
    }


def score_baseline(data_path: str | os.PathLike, split: Split) -> dict[str, Any]:
    """Most-frequent-class baseline of ``data_path``: fit on ``split.train``, scored on ``split.test``.

    The result also names the data (path, short fingerprint, ``synthetic``) and the split seed.
    """

    with Galaxy10File(data_path) as f:
        labels = f.labels()
        info = f.info
    if split.n_images != info.n_images:
        raise DataError(
            f"split covers {split.n_images} images but {data_path} holds {info.n_images}; "
            "re-split with `galaxy10 data split --force`"
        )
    metrics = baseline_metrics(labels[split.train], labels[split.test], info.class_names)
    metrics.update(
        data=str(Path(data_path)), fingerprint=split.fingerprint[:12], synthetic=info.synthetic, split_seed=split.seed
    )
    log.info(
        "baseline on %s: accuracy %.3f (always %s)", data_path, metrics["accuracy"], metrics["majority_class_name"]
    )
    return metrics
