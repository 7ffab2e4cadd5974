"""What ``galaxy10 pretrain`` composes: config, pool, monitor, the MLflow run, the logged and registered model."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError
from experiments.pretraining.pool import Pool, load_pool
from experiments.pretraining.run import PretrainSettings, build_pretrain_model, pretrain
from experiments.tracking.workspace import Workspace

log = logging.getLogger(__name__)

#: The alias a pretrained model is registered under.
PRETRAINED_ALIAS = "pretrained"


def run_pretrain(
    inputs: Sequence[str],
    *,
    config: Path | Any,
    overrides: Sequence[str] = (),
    epochs: int = 30,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    budget: str | None = None,
    monitor: str | None = None,
    checkpoint_dir: Path | None = None,
    name: str | None = None,
    ws: Workspace,
    pool: Pool | None = None,
) -> str:
    """Pretrain, log and register (see ``galaxy10 pretrain --help``); the closing lines for the terminal.

    ``config``: a run YAML (with ``overrides``) or a ``RunConfig``; ``pool``: already loaded from ``inputs``.
    """
    from core.paths import default_cache_dir
    from experiments.names import check_study_name
    from experiments.settings.checks import parse_duration
    from experiments.settings.run import load_config
    from experiments.tracking.mlflow_tracker import MlflowTracker
    from experiments.tracking.model_registry import register_champion
    from experiments.training import load_training_data

    cfg = load_config(config, list(overrides)) if isinstance(config, (str, Path)) else config
    settings = PretrainSettings(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate)
    budget_s = parse_duration(budget) if budget is not None else None
    name = check_study_name(name or f"pretrain-{cfg.model.name}", "--name")
    monitor_data = None
    if monitor is not None:
        monitor_data = load_training_data(replace(cfg.data, max_images=None), monitor)
    pool = pool if pool is not None else load_pool(inputs, cfg.data.size)
    if len(pool.images) < settings.batch_size:
        raise ConfigError(
            f"the pool has {len(pool.images)} images, fewer than one batch of {settings.batch_size}; "
            "give more images or a smaller --batch-size"
        )
    log.info("pool: %s", pool.describe())
    model = build_pretrain_model(cfg, settings.seed)  # a model that cannot be built fails before the run opens
    folder = checkpoint_dir if checkpoint_dir is not None else default_cache_dir() / "pretrain"
    tags = {
        "pretrain.method": "vicreg",
        "pool.fingerprint": pool.fingerprint,
        "pool.images": len(pool.images),
        "pool.sources": " ".join(pool.sources)[:5000],
        "data.synthetic": str(pool.synthetic).lower(),
    }
    with (
        contextlib.redirect_stdout(sys.stderr),
        MlflowTracker("galaxy10-pretrain", cfg.run_name or f"pretrain-{cfg.model.name}", ws=ws, tags=tags) as tracker,
    ):
        tracker.log_params(
            {
                "epochs": settings.epochs,
                "batch_size": settings.batch_size,
                "learning_rate": settings.learning_rate,
                "projector_units": settings.projector_units,
                "view_policy": repr(settings.policy),
                "model.name": cfg.model.name,
                "model.params": repr(dict(cfg.model.params or {})),
                "data.size": cfg.data.size,
                "data.crop": cfg.data.crop,
                "monitor": monitor or "",
                "budget_s": budget_s or "",
            }
        )
        result = pretrain(
            cfg,
            pool,
            settings,
            tracker=tracker,
            monitor=monitor_data,
            checkpoint_dir=folder,
            budget_s=budget_s,
            model=model,
        )
        tracker.log_dict(
            {
                "history": result.history,
                "knn_accuracy": {str(k): v for k, v in result.knn.items()},
                "pool": {
                    "sources": list(pool.sources),
                    "fingerprint": pool.fingerprint,
                    "images": int(len(pool.images)),
                    "skipped": list(pool.skipped),
                },
            },
            "pretrain.json",
        )
        example = np.zeros((1, cfg.data.crop, cfg.data.crop, 3), dtype=np.float32)
        model_uri = tracker.log_keras_model(result.model, meta=result.meta, input_example=example)
        run_id = tracker.run_id
    registered = register_champion(
        model_uri,
        name,
        alias=PRETRAINED_ALIAS,
        run_id=run_id,
        ws=ws,
        tags={"pretrained": "vicreg", "pool.fingerprint": pool.fingerprint},
    )
    lines = [
        f"pretrained {cfg.model.name} ({cfg.data.size} -> {cfg.data.crop} px) on {pool.describe()}: "
        f"{result.epochs_run} epoch(s)"
        + (f", continued from epoch {result.resumed_from}" if result.resumed_from else "")
        + f" ({result.seconds:.0f} s)",
        f"  loss {result.history[0]['loss']:.4f} -> {result.history[-1]['loss']:.4f}"
        if result.history
        else "  no epoch ran (the budget was spent)",
    ]
    if result.knn:
        first, last = min(result.knn), max(result.knn)
        lines.append(
            f"  k-NN accuracy on {monitor} (validation): {result.knn[first]:.4f} at epoch {first} "
            f"(random initialisation) -> {result.knn[last]:.4f} at epoch {last}"
        )
    lines += [
        f"  registered as {registered} (MLflow run {run_id})",
        f"  fine-tune from it: --set model.init_from={name}@{PRETRAINED_ALIAS} (with model.name="
        f"{cfg.model.name} and the same model.params; train.freeze_epochs for a linear probe first)",
    ]
    if pool.synthetic:
        lines.insert(0, "SYNTHETIC pool: these numbers say nothing about real galaxies")
    return "\n".join(lines)
