"""Models the user adds to a study's report (``galaxy10 report --model``): a self-trained student, a
fine-tuned CNN, any model of the same class set, scored once on the same test images with paired verdicts.

A self-trained model learned from pseudo-labels on an unlabelled pool. The report names that pool (sources,
size, fingerprint) and reads it back to check that it holds none of the test images it scores: a pool that
does, or that cannot be read back as it was, is refused with one line.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError, DataError, ModelError
from experiments.serving.predictor import predict_file_rows, predictor_from_loaded
from experiments.tracking.loading import load_prediction_model, parse_model_ref
from experiments.tracking.runs import download_run_artifact, get_run_facts
from experiments.tracking.workspace import Workspace
from pipelines.dataset import TrainData

log = logging.getLogger(__name__)

#: Most models one report adds.
MAX_EXTRA = 8


@dataclass
class ExtraModel:
    """One added model: its key and label in the report, where it came from, its test probabilities."""

    key: str
    label: str
    description: str
    run_id: str | None
    model_uri: str
    probs: np.ndarray
    pool: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def check_model_refs(refs: Sequence[str]) -> list[str]:
    """The ``--model`` values parsed (one line for a bad one, a repeat, or too many)."""
    if len(refs) > MAX_EXTRA:
        raise ConfigError(f"{len(refs)} --model values; a report adds at most {MAX_EXTRA}")
    uris = [parse_model_ref(r) for r in refs]
    if len(set(uris)) != len(uris):
        raise ConfigError("a --model value is given twice; give each model once")
    return uris


def selftrain_pool(run_id: str, tags: dict[str, str], ws: Workspace) -> dict[str, Any] | None:
    """The unlabelled pool a self-trained model learned from (its run's ``pseudo_labels.json``; the run's tags
    when that artifact is gone), or None for a model that was not self-trained."""
    if "selftrain.pool_fingerprint" not in tags:
        return None
    pool: dict[str, Any] = {
        "sources": tags.get("selftrain.pool_sources", "").split(),
        "images": tags.get("selftrain.pool_images"),
    }
    with tempfile.TemporaryDirectory(prefix="galaxy10-pool-") as tmp:
        try:
            path = download_run_artifact(run_id, "pseudo_labels.json", tmp, ws=ws)
            pool.update(json.loads(path.read_text())["pool"])
        except (ModelError, OSError, KeyError, ValueError, TypeError):
            log.warning("run %s has no readable pseudo_labels.json; the pool's sources come from its tags", run_id)
    pool["fingerprint"] = tags["selftrain.pool_fingerprint"]
    return pool


def check_pool_against(pool: dict[str, Any], ref: str, test_images: np.ndarray, size: int, what: str) -> None:
    """Read the pool back (it must be the one the model learned from: same fingerprint) and refuse it if it
    holds any of ``test_images``."""
    from experiments.pretraining.pool import load_pool
    from experiments.selftrain.pseudo import refuse_scored_images

    sources = [str(s) for s in pool.get("sources") or []]
    fix = f"bring the pool back where it was, or leave --model {ref} out"
    if not sources:
        raise DataError(f"model {ref} was self-trained on a pool whose sources were not recorded; {fix}")
    try:
        loaded = load_pool(sources, size)
    except (DataError, ConfigError, OSError) as err:
        raise DataError(
            f"cannot read back the self-training pool of {ref} ({str(err).splitlines()[0]}) to check it "
            f"holds none of the test images; {fix}"
        ) from None
    if loaded.fingerprint != pool["fingerprint"]:
        raise DataError(
            f"the self-training pool of {ref} ({' '.join(sources)[:200]}) changed since the model "
            f"learned from it (fingerprint {loaded.fingerprint[:12]}, recorded "
            f"{str(pool['fingerprint'])[:12]}); {fix}"
        )
    refuse_scored_images(loaded.images, test_images, what=what)


def score_extra_models(refs: Sequence[str], data: TrainData, *, ws: Workspace) -> list[ExtraModel]:
    """Score each added model once on ``data``'s test split (after checking its class set and, for a
    self-trained model, its pool)."""
    from pipelines.reader import Galaxy10File

    out: list[ExtraModel] = []
    test_images = None
    for i, uri in enumerate(check_model_refs(refs), start=1):
        loaded = load_prediction_model(uri, ws=ws)  # one registry look-up per reference
        predictor = predictor_from_loaded(loaded)
        if list(predictor.card.class_names) != list(data.class_names):
            raise ConfigError(
                f"--model {uri} predicts {', '.join(predictor.card.class_names)}, but the study's file "
                f"has {', '.join(data.class_names)}; give models of this class set"
            )
        run_id = loaded.info.get("run_id")
        tags = get_run_facts(run_id, ws=ws).tags if run_id else {}
        pool = selftrain_pool(run_id, tags, ws) if run_id else None
        extra = ExtraModel(
            f"model-{i}",
            (tags.get("mlflow.runName") or uri)[:40],
            f"added with --model {uri}" + (" (self-trained)" if pool else ""),
            run_id,
            uri,
            np.zeros((0, 0)),
        )
        if pool is not None:
            if test_images is None:
                with Galaxy10File(data.path) as f:
                    test_images = np.asarray(f.images(np.sort(np.asarray(data.test))))
            check_pool_against(
                pool,
                uri,
                test_images,
                predictor.card.size,
                what=f"test split of {Path(data.path).name} that the report scores",
            )
            extra.pool = {
                "model": uri,
                "run_id": run_id,
                "sources": " ".join(map(str, pool.get("sources") or [])),
                "images": pool.get("images"),
                "fingerprint": pool["fingerprint"],
                "kind": "self-training",
            }
            extra.notes.append(
                f"{extra.label} was self-trained on pseudo-labels of {pool.get('images')} unlabelled "
                f"images from {extra.pool['sources'][:300]} (fingerprint {pool['fingerprint'][:12]}); "
                "the pool was read back and holds none of the test images"
            )
        log.info("scoring the added model %s on %d test images", uri, len(data.test))
        extra.probs = predict_file_rows(predictor, data.path, data.test, desc="score on test")
        out.append(extra)
    return out
