"""What a training run reads from MLflow, resolved the same way by every training path: the validation
recall of a source run (``augment.auto_from_run``) and a logged start model (``model.init_from``)."""

from __future__ import annotations

import functools
from typing import Any

from experiments.tracking.loading import load_keras_model
from experiments.tracking.runs import run_val_recall
from experiments.tracking.workspace import Workspace


def training_lookups(ws: Workspace) -> dict[str, Any]:
    """``recall_lookup`` and ``model_loader`` for ``experiments.training.train`` / ``prepare_run`` against
    the workspace's store."""
    return {
        "recall_lookup": functools.partial(run_val_recall, ws=ws),
        "model_loader": functools.partial(load_keras_model, ws=ws),
    }
