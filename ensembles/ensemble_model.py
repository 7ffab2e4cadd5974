"""The deployable ensemble: CNN branches combined into class probabilities, saved as plain files.

An :class:`EnsembleModel` is a weighted average of *branches*. A branch is one CNN (with its own
resize ``size``, centre ``crop`` and TTA flag) whose output is, depending on the ensemble kind:

- ``cnn`` / ``vote``: the CNN's softmax probabilities;
- ``gbm``: a second-stage model's probabilities on the CNN's embeddings;
- ``stack``: a meta-learner's probabilities on ``[CNN probabilities, second-stage probabilities]``.

``crossfit`` ensembles have one branch per fold model (equal weights); ``val_cv`` ones a single
branch; votes one branch per study trial. :meth:`EnsembleModel.predict_proba` takes raw uint8
images of any size and prepares them with ``pipelines.preprocess.prepare_images`` per branch.

:func:`save_ensemble` writes Keras models as ``.keras`` files, XGBoost models as XGBoost JSON and
scikit-learn models with joblib, plus ``ensemble.json``; :func:`load_ensemble` reads them back with
Keras ``safe_mode=True`` (joblib only ever loads the platform's own artifacts).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import DataError, ModelError
from ensembles.embeddings import dual_output_model, embed_images
from ensembles.second_stage import full_proba, load_second_stage, save_second_stage
from ensembles.stacking import meta_predict
from models.layers import load_keras_file
from pipelines.preprocess import prepare_images

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("cnn", "vote", "gbm", "stack")
SPEC_FILE = "ensemble.json"
FORMAT_VERSION = 2
#: Versions :func:`load_ensemble` reads (1: before ``class_prior``).
READABLE_VERSIONS = (1, 2)


@dataclass
class Branch:
    """One CNN and what sits on top of it (nothing, a second stage, or a second stage + meta-learner)."""

    cnn: Any
    size: int
    crop: int
    tta: bool = False
    second: Any = None
    meta: Any = None
    name: str = ""
    run_id: str | None = None

    def output(self, embeddings: np.ndarray, probs: np.ndarray, n_classes: int) -> np.ndarray:
        """This branch's class probabilities from the CNN's embeddings and probabilities."""
        if self.second is None:
            return np.asarray(probs, dtype=np.float64)
        second = full_proba(self.second, embeddings, n_classes)
        if self.meta is None:
            return second
        return meta_predict(self.meta, [probs, second], n_classes)


def prior_corrected(probs: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """``p(c | x) / prior_c``, renormalised per row (``prior``: the class shares the model was fit on)."""
    q = np.asarray(probs, dtype=np.float64) / np.asarray(prior, dtype=np.float64)
    return q / q.sum(axis=1, keepdims=True)


@dataclass
class EnsembleModel:
    """Weighted average of :class:`Branch` outputs; predicts from raw uint8 images.

    ``class_prior`` (optional): the class shares the branches were fit on; the output is then divided
    by it and renormalised (prior correction: the decision that maximises balanced accuracy for
    calibrated probabilities, so rare classes are not out-voted by their rarity alone).
    """

    kind: str
    branches: list[Branch]
    class_names: tuple[str, ...]
    class_slugs: tuple[str, ...]
    weights: np.ndarray | None = None
    description: str = ""
    batch_size: int = 128
    class_prior: np.ndarray | None = None
    _duals: dict[int, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ModelError(f"ensemble kind {self.kind!r} is unknown; use one of: {', '.join(KINDS)}")
        if not self.branches:
            raise ModelError("an ensemble needs at least one branch")
        w = (
            np.full(len(self.branches), 1.0 / len(self.branches))
            if self.weights is None
            else np.asarray(self.weights, dtype=np.float64)
        )
        if w.shape != (len(self.branches),) or np.any(w < 0) or not np.isclose(w.sum(), 1.0):
            raise ModelError(f"ensemble weights {w} must be {len(self.branches)} non-negative numbers summing to 1")
        self.weights = w
        if self.class_prior is not None:
            prior = np.asarray(self.class_prior, dtype=np.float64)
            if prior.shape != (len(self.class_names),) or np.any(prior <= 0) or not np.isfinite(prior).all():
                raise ModelError(f"ensemble class prior {prior} must be {len(self.class_names)} positive numbers")
            self.class_prior = prior / prior.sum()

    @property
    def n_classes(self) -> int:
        """Number of output classes."""
        return len(self.class_names)

    def _dual(self, cnn: Any) -> Any:
        key = id(cnn)
        if key not in self._duals:
            self._duals[key] = dual_output_model(cnn)
        return self._duals[key]

    def predict_proba(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities ``(N, C)`` float32 for uint8 RGB images of any size."""

        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = images[None]
        if len(images) == 0:
            raise DataError("no images to classify; pass at least one uint8 (H, W, 3) image")
        prepared: dict[tuple[int, int], np.ndarray] = {}
        total = None
        for w, branch in zip(self.weights, self.branches):
            key = (int(branch.size), int(branch.crop))
            if key not in prepared:
                prepared[key] = prepare_images(images, size=key[0], crop=key[1])
            emb, probs = embed_images(
                self._dual(branch.cnn),
                prepared[key],
                input_size=key[1],
                tta=branch.tta,
                batch_size=self.batch_size,
                progress=False,
            )
            out = branch.output(emb, probs, self.n_classes)
            total = w * out if total is None else total + w * out
        if self.class_prior is not None:
            total = prior_corrected(total, self.class_prior)
        return np.asarray(total, dtype=np.float32)

    def members(self) -> list[str]:
        """Branch names (e.g. ``trial-3`` or ``trial-3/fold-0+xgboost``)."""
        return [b.name for b in self.branches]


# --------------------------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------------------------
def save_ensemble(model: EnsembleModel, folder: str | Path) -> Path:
    """Write ``model`` into the (new or empty) ``folder``: ``ensemble.json`` + model files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise ModelError(f"ensemble folder {folder} is not empty; save into a fresh folder")
    cnn_files: dict[int, str] = {}
    branches = []
    for i, b in enumerate(model.branches):
        if id(b.cnn) not in cnn_files:
            name = f"cnn_{len(cnn_files)}.keras"
            b.cnn.save(folder / name)
            cnn_files[id(b.cnn)] = name
        spec: dict[str, Any] = {
            "name": b.name,
            "run_id": b.run_id,
            "cnn": cnn_files[id(b.cnn)],
            "size": int(b.size),
            "crop": int(b.crop),
            "tta": bool(b.tta),
        }
        if b.second is not None:
            spec["second"] = save_second_stage(b.second, folder, f"second_{i}")
        if b.meta is not None:
            spec["meta"] = save_second_stage(b.meta, folder, f"meta_{i}")
        branches.append(spec)
    doc = {
        "format_version": FORMAT_VERSION,
        "kind": model.kind,
        "weights": [float(w) for w in model.weights],
        "class_names": list(model.class_names),
        "class_slugs": list(model.class_slugs),
        "description": model.description,
        "branches": branches,
        "class_prior": None if model.class_prior is None else [float(p) for p in model.class_prior],
    }
    (folder / SPEC_FILE).write_text(json.dumps(doc, indent=2) + "\n")
    return folder


def load_ensemble(folder: str | Path) -> EnsembleModel:
    """Read an ensemble written by :func:`save_ensemble` (Keras with ``safe_mode=True``)."""
    folder = Path(folder)
    spec_path = folder / SPEC_FILE
    if not spec_path.is_file():
        raise ModelError(f"{folder} holds no {SPEC_FILE}; it is not a saved galaxy10 ensemble")
    try:
        doc = json.loads(spec_path.read_text())
    except ValueError as err:
        raise ModelError(f"{spec_path} is not valid JSON ({err}); re-log the ensemble") from None
    if doc.get("format_version") not in READABLE_VERSIONS:
        raise ModelError(
            f"{spec_path} has format version {doc.get('format_version')}, this code reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}; re-log the ensemble with this version"
        )
    cnns: dict[str, Any] = {}
    branches = []
    for spec in doc["branches"]:
        name = spec["cnn"]
        if name not in cnns:
            path = folder / name
            try:
                cnns[name] = load_keras_file(path)
            except (OSError, ValueError, TypeError) as err:
                raise ModelError(f"cannot load CNN {path} ({str(err).splitlines()[0]})") from None
        branches.append(
            Branch(
                cnn=cnns[name],
                size=int(spec["size"]),
                crop=int(spec["crop"]),
                tta=bool(spec["tta"]),
                second=load_second_stage(spec["second"], folder) if "second" in spec else None,
                meta=load_second_stage(spec["meta"], folder) if "meta" in spec else None,
                name=str(spec.get("name", "")),
                run_id=spec.get("run_id"),
            )
        )
    return EnsembleModel(
        kind=doc["kind"],
        branches=branches,
        class_names=tuple(doc["class_names"]),
        class_slugs=tuple(doc["class_slugs"]),
        weights=np.asarray(doc["weights"]),
        description=str(doc.get("description", "")),
        class_prior=None if doc.get("class_prior") is None else np.asarray(doc["class_prior"]),
    )
