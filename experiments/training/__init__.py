"""One CNN run, below tuning and everything that compares runs: its data (``load_training_data``), its start
(``prepare_run``), the tracked run (``train`` in :mod:`.run`), the Keras fit (:mod:`.fitting`), its metrics
(:mod:`.evaluation`) and figures (:mod:`.figures`). Knows nothing about MLflow or Optuna.

The run's names are exported lazily, so importing :mod:`.evaluation` (pure NumPy) loads nothing else.
"""
from __future__ import annotations

from typing import Any

#: What ``from experiments.training import NAME`` gives, from :mod:`experiments.training.run`.
RUN_EXPORTS = frozenset({
    "TrainData", "TrainResult", "PreparedRun", "TargetRecall", "auto_target_recall", "data_tags", "evaluate",
    "inference_images_per_second", "load_training_data", "model_metadata", "predict_probs", "prepare_run",
    "resolve_multipliers", "start_from_weights", "summary", "train", "warmup_recall", "check_start_model",
})

__all__ = sorted(RUN_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in RUN_EXPORTS:
        from experiments.training import run

        return getattr(run, name)
    raise AttributeError(f"module 'experiments.training' has no attribute {name!r}")
