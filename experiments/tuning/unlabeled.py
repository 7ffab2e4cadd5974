"""``galaxy10 tune --unlabeled``: pretrain the study's first start point on the pool before the study runs."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from core.errors import ConfigError
from experiments.settings.trial import resolve_run_config
from experiments.settings.tune import TuneConfig
from experiments.tracking.workspace import Workspace
from pipelines.preprocess import resize_images

log = logging.getLogger(__name__)

#: Share of ``--budget`` that pretraining may use (the study gets the rest).
PRETRAIN_SHARE = 0.25


def pretrain_for_study(
    tune: TuneConfig,
    inputs: Sequence[str],
    *,
    data_path: str | None,
    overrides: Sequence[str],
    epochs: int,
    budget: float | None,
    ws: Workspace,
    held_out: np.ndarray | None = None,
) -> tuple[str, float | None]:
    """Pretrain the model of the study's first start point (its backbone and input size) on ``inputs``.

    The pool may not hold the labelled file's validation or test images, nor ``held_out`` (uint8 images a
    score is computed on elsewhere, e.g. ``galaxy10 evaluate``'s held-out fold): one line. Returns the
    registered model's reference (``<study>-pretrained@pretrained``) and the budget left for the study.
    """
    from experiments.catalog.inputs import plan_catalog_inputs
    from experiments.pretraining.command import PRETRAINED_ALIAS, run_pretrain
    from experiments.pretraining.pool import load_pool
    from experiments.selftrain.pseudo import refuse_scored_images
    from experiments.training import load_training_data

    if not tune.study.start_points:
        raise ConfigError(
            "--unlabeled pretrains the backbone of the study's first start point, but the config has "
            "no study.start_points; add one (e.g. tune_catalog.yaml's D4 CNN)"
        )
    started = time.perf_counter()
    cfg, _ = resolve_run_config(tune, dict(tune.study.start_points[0]), extra_overrides=tuple(overrides))
    plan = plan_catalog_inputs(list(inputs))
    data = load_training_data(replace(cfg.data, max_images=None), data_path)
    pool = load_pool(plan, cfg.data.size)
    scored = data.images[[*data.val, *data.test]]
    if held_out is not None and len(held_out):
        scored = np.concatenate([scored, resize_images(np.asarray(held_out, dtype=np.uint8), cfg.data.size)])
    refuse_scored_images(
        pool.images,
        scored,
        what=f"validation and test splits of {Path(data.path).name}"
        + (" or the held-out images" if held_out is not None else ""),
    )
    name = f"{tune.study.name}-pretrained"
    share = None if budget is None else f"{PRETRAIN_SHARE * budget:.0f}s"
    text = run_pretrain(list(inputs), config=cfg, epochs=epochs, budget=share, name=name, ws=ws, pool=pool)
    log.info("%s", text)
    left = None if budget is None else budget - (time.perf_counter() - started)
    if left is not None and left <= 0:
        raise ConfigError("pretraining used the whole --budget; give a larger budget or fewer --pretrain-epochs")
    return f"{name}@{PRETRAINED_ALIAS}", left
