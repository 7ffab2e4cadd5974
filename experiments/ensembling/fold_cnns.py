"""Cross-fitting: the best trial's recipe trained on K folds of train (cached), out-of-fold outputs."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.files import atomic_path, write_json_atomic
from core.paths import default_cache_dir
from ensembles.crossfit import crossfit, make_folds
from experiments.ensembling.context import BuildContext, embedder
from experiments.ensembling.members import Member
from experiments.settings.run import to_yaml
from experiments.tracking.base import NullTracker
from experiments.tracking.lookups import training_lookups
from experiments.training import TrainOptions, prepare_run, train
from models.layers import load_keras_file
from pipelines.dataset import TrainData

log = logging.getLogger(__name__)


@dataclass
class CrossfitResult:
    """Fold models (paths), out-of-fold outputs on train, and each fold model's validation outputs."""

    key: str
    model_paths: list[Path]
    oof: Any  # ensembles.crossfit.OutOfFold (models = model paths)
    val_embeddings: list[np.ndarray]
    val_probs: list[np.ndarray]
    cached_folds: int
    recipe: Any


def crossfit_key(best: Member, data: TrainData, recipe: Any, n_folds: int, seed: int) -> str:
    """Cache key of a cross-fitting: the recipe, the study run, the data and split, the folds."""

    payload = json.dumps(
        {
            "run": best.run_id,
            "fingerprint": data.fingerprint,
            "recipe": to_yaml(recipe),
            "train": hashlib.sha256(np.asarray(data.train, np.int64).tobytes()).hexdigest(),
            "val": hashlib.sha256(np.asarray(data.val, np.int64).tobytes()).hexdigest(),
            "folds": n_folds,
            "seed": seed,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def run_crossfit(ctx: BuildContext) -> CrossfitResult:
    """Train the best trial's recipe on K folds of train; out-of-fold and validation outputs per fold.

    Fold models are cached (``<cache>/crossfit/<key>/fold<k>.keras``) so a re-run reuses them.
    """
    import keras

    cfg, data, best = ctx.cfg, ctx.data, ctx.members.best
    recipe = best.cfg
    if cfg.crossfit.epochs is not None:
        recipe = replace(recipe, train=replace(recipe.train, epochs=int(cfg.crossfit.epochs)))
    folds = make_folds(data.train, data.labels[data.train], cfg.crossfit.folds, seed=cfg.seed)
    key = crossfit_key(best, data, recipe, cfg.crossfit.folds, cfg.seed)
    folder = default_cache_dir() / "crossfit" / key
    val_emb: dict[int, np.ndarray] = {}
    val_probs: dict[int, np.ndarray] = {}
    cached = 0
    lookups = training_lookups(ctx.ws)

    def train_fold(fold: Any) -> tuple[Path, np.ndarray]:
        nonlocal cached
        path = folder / f"fold{fold.number}.keras"
        record = folder / f"fold{fold.number}.json"
        fold_data = replace(data, train=fold.train)
        if (
            path.is_file()
            and record.is_file()
            and json.loads(record.read_text()).get("trained_on_sha256")
            == hashlib.sha256(np.asarray(fold_data.train, np.int64).tobytes()).hexdigest()
        ):
            cached += 1
            log.info("cross-fitting fold %d: reusing the cached fold model %s", fold.number, path)
            return path, fold_data.train
        log.info(
            "cross-fitting fold %d/%d: training %s on %d of %d training images",
            fold.number + 1,
            len(folds),
            best.name,
            len(fold_data.train),
            len(data.train),
        )
        result = train(
            prepare_run(recipe, fold_data, **lookups), NullTracker(), TrainOptions(log_model=False, verbose=0)
        )
        with atomic_path(path, suffix=".keras") as tmp:
            result.model.save(tmp)
        write_json_atomic(
            record,
            {
                "fold": fold.number,
                "trained_on": len(fold_data.train),
                "trained_on_sha256": hashlib.sha256(np.asarray(fold_data.train, np.int64).tobytes()).hexdigest(),
                "val_accuracy": float(result.val_metrics["accuracy"]),
                "best_epoch": int(result.best_epoch),
            },
        )
        return path, fold_data.train

    def embed_fold(path: Path, fold: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        model = load_keras_file(path)
        emb = embedder(
            model,
            model_id=f"crossfit-{key}-fold{fold.number}",
            tta=cfg.embeddings.tta,
            batch_size=cfg.embeddings.batch_size,
        )
        held = emb.embed(data.images, fold.heldout, split=f"train-fold{fold.number}", data_fingerprint=data.fingerprint)
        val = emb.embed(data.images, data.val, split="val", data_fingerprint=data.fingerprint)
        val_emb[fold.number], val_probs[fold.number] = val.embeddings, val.probs
        return fold.heldout, held.embeddings, held.probs

    oof = crossfit(folds, data.train, train_fold, embed_fold)
    keras.backend.clear_session()
    order = [f.number for f in folds]
    return CrossfitResult(
        key=key,
        model_paths=list(oof.models),
        oof=oof,
        val_embeddings=[val_emb[k] for k in order],
        val_probs=[val_probs[k] for k in order],
        cached_folds=cached,
        recipe=recipe,
    )
