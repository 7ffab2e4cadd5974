"""Self-training rounds: the teacher pseudo-labels the pool, a noised student learns labels + pseudo-labels.

Round r: the teacher (the given model, then the previous round's student) scores every pool image with its
calibrated probabilities; out-of-distribution images (the catalog's detector, fitted on the teacher's own
training data) and unsure ones are left out, each class keeps its most confident images
(:func:`~experiments.selftrain.pseudo.select_pseudo_labels`); the student - the run config, trained from
scratch with its augmentation and dropout (the noise of Noisy Student) - learns from the labelled training
images plus the pseudo-labelled ones and is early-stopped and calibrated on the labelled validation split.
The pool may not hold an image of that validation split or of the test split (refused with one line).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError, ModelError
from experiments.selftrain.pseudo import PseudoLabels, refuse_scored_images, select_pseudo_labels
from experiments.settings.run import RunConfig
from experiments.tracking.workspace import Workspace
from pipelines.dataset import TrainData

log = logging.getLogger(__name__)

#: The alias a self-trained student is registered under.
STUDENT_ALIAS = "student"


@dataclass(frozen=True)
class RoundResult:
    """One round: the pseudo-labels it used and the student it trained."""

    round: int
    teacher: str
    pseudo: PseudoLabels
    model_uri: str
    run_id: str
    val_accuracy: float
    val_balanced_accuracy: float


def teacher_probs(predictor: Any, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """The teacher's calibrated probabilities (mean over its test-time views) of uint8 pool images."""
    from augment.tta import mean_of_views

    parts = [
        predictor.calibrate(mean_of_views(predictor.predict_views(images[i : i + batch])))
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(parts)


def ood_flags(predictor: Any, images: np.ndarray, *, ws: Workspace, batch: int = 64) -> np.ndarray:
    """Out-of-distribution flags of the pool images: the catalog's detector, fitted on the teacher's training
    file (its training and validation rows) exactly as ``galaxy10 catalog --ood on`` fits it."""
    from experiments.catalog.ood import detector_from_file
    from experiments.catalog.training_data import training_rows

    if not predictor.can_embed:
        raise ModelError(
            f"teacher {predictor.card.uri} gives no embeddings for out-of-distribution scores; use a "
            "CNN teacher or --ood off"
        )
    rows = training_rows(predictor.card, ws=ws)
    detector = detector_from_file(predictor.embed, rows.path, rows.train, rows.val, batch=batch)
    scores = np.concatenate(
        [detector.score(predictor.embed(images[i : i + batch])) for i in range(0, len(images), batch)]
    )
    return scores > detector.threshold


def with_pseudo_labels(data: TrainData, pool_images: np.ndarray, pseudo: PseudoLabels) -> TrainData:
    """``data`` whose training split also holds the pseudo-labelled pool images (validation and test unchanged)."""
    n = len(data.labels)
    images = np.concatenate([np.asarray(data.images), pool_images[pseudo.rows]])
    labels = np.concatenate([np.asarray(data.labels), pseudo.labels.astype(np.asarray(data.labels).dtype)])
    train = np.concatenate([np.asarray(data.train), n + np.arange(len(pseudo.rows))])
    return replace(data, images=images, labels=labels, train=train)


def self_train(
    cfg: RunConfig,
    data: TrainData,
    pool: Any,
    *,
    teacher: str | None,
    rounds: int = 1,
    threshold: float = 0.8,
    per_class: int | None = None,
    use_ood: bool = True,
    ws: Workspace,
    name: str,
) -> tuple[list[RoundResult], str]:
    """Run ``rounds`` of self-training (see the module docs); return the rounds and the registered student."""
    from experiments.serving.predictor import load_predictor
    from experiments.tracking.lookups import training_lookups
    from experiments.tracking.mlflow_tracker import MlflowTracker
    from experiments.tracking.model_registry import register_champion
    from experiments.training import prepare_run, train

    if not 1 <= rounds <= 10:
        raise ConfigError(f"--rounds {rounds} is out of range; use 1-10")
    scored = np.concatenate([np.asarray(data.val), np.asarray(data.test)])
    refuse_scored_images(
        pool.images, np.asarray(data.images)[scored], what=f"validation and test splits of {Path(data.path).name}"
    )
    predictor = load_predictor(teacher, ws=ws)
    if list(predictor.card.class_names) != list(data.class_names):
        raise ConfigError(
            f"teacher {predictor.card.uri} predicts {', '.join(predictor.card.class_names)}, but "
            f"{Path(data.path).name} has {', '.join(data.class_names)}; give a teacher trained on "
            "this class set"
        )
    lookups = training_lookups(ws)
    results: list[RoundResult] = []
    tags = {
        "selftrain.pool_fingerprint": pool.fingerprint,
        "selftrain.pool_images": len(pool.images),
        "selftrain.pool_sources": " ".join(pool.sources)[:5000],
        "selftrain.threshold": threshold,
        "selftrain.per_class": per_class or "",
        "selftrain.ood": str(use_ood).lower(),
    }
    for r in range(1, rounds + 1):
        probs = teacher_probs(predictor, pool.images)
        flags = ood_flags(predictor, pool.images, ws=ws) if use_ood else None
        pseudo = select_pseudo_labels(
            probs, data.class_slugs, threshold=threshold, ood_flags=flags, per_class=per_class
        )
        log.info("round %d: %s", r, pseudo.describe())
        if len(pseudo.rows) == 0:
            raise ConfigError(
                f"round {r}: no pool image reached the confidence threshold {threshold} (or every one "
                "was out-of-distribution); lower --threshold or give a stronger teacher"
            )
        student_data = with_pseudo_labels(data, pool.images, pseudo)
        run_name = f"{cfg.run_name or 'student'}-self-train-r{r}"
        with (
            contextlib.redirect_stdout(sys.stderr),
            MlflowTracker(
                cfg.experiment_name,
                run_name,
                ws=ws,
                tags={**tags, "selftrain.round": r, "selftrain.teacher": predictor.card.uri},
            ) as run,
        ):
            run.log_metrics(
                {
                    "pseudo_labels": float(len(pseudo.rows)),
                    "pseudo_ood_left_out": float(pseudo.n_ood),
                    "pseudo_unsure": float(pseudo.n_unsure),
                    **{f"pseudo_{k}": float(v) for k, v in pseudo.per_class.items()},
                }
            )
            run.log_dict(
                {
                    "pool": {
                        "sources": list(pool.sources),
                        "fingerprint": pool.fingerprint,
                        "images": int(len(pool.images)),
                    },
                    "pseudo_labels": {
                        "rows": pseudo.rows.tolist(),
                        "labels": pseudo.labels.tolist(),
                        "confidence": np.round(pseudo.confidence, 4).tolist(),
                        "per_class": pseudo.per_class,
                    },
                },
                "pseudo_labels.json",
            )
            result = train(prepare_run(cfg, student_data, **lookups), run)
        results.append(
            RoundResult(
                r,
                predictor.card.uri,
                pseudo,
                str(result.model_uri),
                str(result.run_id),
                float(result.val_metrics["accuracy"]),
                float(result.val_metrics["balanced_accuracy"]),
            )
        )
        predictor = load_predictor(str(result.model_uri), ws=ws)
    last = results[-1]
    registered = register_champion(
        last.model_uri,
        name,
        alias=STUDENT_ALIAS,
        run_id=last.run_id,
        ws=ws,
        tags={"selftrain.rounds": rounds, "selftrain.pool_fingerprint": pool.fingerprint},
    )
    return results, registered


def summary_lines(results: Sequence[RoundResult], registered: str, pool: Any) -> list[str]:
    """The closing lines for the terminal."""
    lines = [f"self-training on {pool.describe()}"]
    for r in results:
        lines.append(f"  round {r.round} (teacher {r.teacher}): {r.pseudo.describe()}")
        lines.append(
            f"    student run {r.run_id}: val accuracy {r.val_accuracy:.4f}, balanced {r.val_balanced_accuracy:.4f}"
        )
    lines.append(
        f"  registered as {registered}; score it on the test split with `galaxy10 train --score-test` "
        "or compare recipes with `galaxy10 evaluate`"
    )
    return lines
