"""One CNN run, below tuning and everything that compares runs: its data (``load_training_data``), its start
(``prepare_run``), the tracked run (``train`` in :mod:`.run`), the Keras fit (:mod:`.fitting`), predictions
(:mod:`.predict`), metrics (:mod:`.evaluation`), figures (:mod:`.figures`) and what a run records
(:mod:`.metadata`). Knows nothing about MLflow or Optuna.

The run's names are exported lazily, so importing :mod:`.evaluation` (pure NumPy) loads nothing else.
"""

from __future__ import annotations

from typing import Any

#: What ``from experiments.training import NAME`` gives, and from which module.
EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        (
            "TrainData",
            "TrainOptions",
            "TrainResult",
            "PreparedRun",
            "TargetRecall",
            "auto_target_recall",
            "load_training_data",
            "prepare_run",
            "resolve_multipliers",
            "start_from_weights",
            "summary",
            "train",
            "warmup_recall",
            "check_start_model",
        ),
        "run",
    ),
    **dict.fromkeys(("evaluate", "inference_images_per_second", "predict_probs"), "predict"),
    **dict.fromkeys(("data_tags", "model_metadata"), "metadata"),
}

__all__ = sorted(EXPORTS)


def __getattr__(name: str) -> Any:
    if name in EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"experiments.training.{EXPORTS[name]}"), name)
    raise AttributeError(f"module 'experiments.training' has no attribute {name!r}")
