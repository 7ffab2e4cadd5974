"""What a run records about itself: the logged model's prediction metadata and the data tags of its MLflow run."""

from __future__ import annotations

import logging
from typing import Any

from experiments.settings.run import RunConfig
from models import describe_backbone
from pipelines.dataset import TrainData
from pipelines.preprocess import PREPROCESS_VERSION

log = logging.getLogger(__name__)


def model_metadata(cfg: RunConfig, data: TrainData) -> dict[str, Any]:
    """What prediction needs next to the model (see ``experiments.tracking.base.META_KEYS``)."""

    return {
        "size": cfg.data.size,
        "crop": cfg.data.crop,
        "preprocess_version": PREPROCESS_VERSION,
        "class_names": list(data.class_names),
        "class_slugs": list(data.class_slugs),
        "num_classes": data.num_classes,
        "data_fingerprint": data.fingerprint,
        "synthetic": data.synthetic,
        "provenance": data.provenance,
        "tta": bool(cfg.augment.tta),
        "input": "float32 0..255 centre crop",
        "experiment_name": cfg.experiment_name,
        "run_name": cfg.run_name,
        **describe_backbone(cfg.model),
    }


def data_tags(data: TrainData) -> dict[str, str]:
    """Tags describing the data: fingerprint, provenance, synthetic flag, path, counts."""
    return {
        "data.fingerprint": data.fingerprint,
        "data.fingerprint_short": data.fingerprint[:12],
        "data.synthetic": "true" if data.synthetic else "false",
        "data.provenance": data.provenance,
        "data.path": str(data.path),
        "data.n_train": str(len(data.train)),
        "data.n_val": str(len(data.val)),
        "data.n_test": str(len(data.test)),
    }
