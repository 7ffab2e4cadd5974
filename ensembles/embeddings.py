"""CNN embeddings: the penultimate ``embedding`` layer of a trained Galaxy10 CNN as features.

:class:`CNNEmbedder` is a scikit-learn transformer around a Keras model (``experiments/`` loads the
logged model and passes it in). It maps uint8 images ``(N, H, W, 3)`` (already resized; centre-
cropped here to the model's input size) to float32 embeddings ``(N, D)``, optionally averaged over
the 8 dihedral test-time views (:mod:`augment.tta`). One forward pass gives the embeddings and the
CNN's softmax probabilities together (:meth:`CNNEmbedder.embed`).

Results are cached on disk under ``core.paths.default_cache_dir() / "embeddings"``, keyed by the
model id (the MLflow run id, or a digest of the weights when none is given), the split name, the
data fingerprint, the TTA flag and a digest of the row indices; files are written atomically and
read back without pickle.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from tqdm.auto import tqdm

from augment.tta import tta_predict
from core.errors import DataError, ModelError
from core.files import atomic_path, os_error_reason
from core.paths import default_cache_dir
from models.head import EMBEDDING_LAYER  # the layer every backbone's head names
from pipelines.preprocess import center_crop

log = logging.getLogger(__name__)

#: Rows embedded per chunk (bounds memory; one progress-bar step).
CHUNK = 1024
CACHE_VERSION = 1


@dataclass(frozen=True)
class Embedded:
    """Embeddings ``(N, D)`` and the CNN's probabilities ``(N, C)`` of the same images (float32)."""

    embeddings: np.ndarray
    probs: np.ndarray
    cached: bool = False


@dataclass(frozen=True)
class DualModel:
    """A CNN's ``[embedding, probabilities]`` sub-model and its compiled forward pass."""

    model: Any
    forward: Any
    width: int

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings and probabilities (float32 numpy) of one float32 batch."""
        emb, probs = self.forward(x)
        return np.asarray(emb, dtype=np.float32), np.asarray(probs, dtype=np.float32)


def dual_output_model(model: Any) -> DualModel:
    """``model``'s ``[embedding, probabilities]`` outputs (float32), sharing its weights.

    The forward pass is one ``tf.function`` with a batch-agnostic input signature (traced once; faster
    than ``predict_on_batch`` and no retracing warnings across models).
    """
    import keras
    import tensorflow as tf

    if model is None or not hasattr(model, "get_layer"):
        raise ModelError("CNNEmbedder needs a Keras model; pass the CNN loaded from its MLflow run")
    try:
        layer = model.get_layer(EMBEDDING_LAYER)
    except ValueError:
        raise ModelError(
            f"model {getattr(model, 'name', '?')!r} has no layer named {EMBEDDING_LAYER!r}; "
            "build it with models.build_model"
        ) from None
    emb = keras.ops.cast(layer.output, "float32")
    probs = keras.ops.cast(model.outputs[0], "float32")
    dual = keras.Model(model.inputs, [emb, probs], name=f"{model.name}_embedding_and_probs")
    # One trace per model: any batch size of float32 (N, H, W, 3) images reuses it (a traced
    # function per batch shape, across the several models of a vote, set off TF's retracing warning).
    spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32)
    forward = tf.function(lambda x: dual([x], training=False), input_signature=[spec])
    return DualModel(dual, forward, int(emb.shape[-1]))


def weights_digest(model: Any) -> str:
    """SHA-256 (first 16 hex) of a Keras model's weights: identifies a model without a run id."""
    h = hashlib.sha256()
    for w in model.get_weights():
        arr = np.ascontiguousarray(w)
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:16]


def _crop_to(images: np.ndarray, side: int) -> np.ndarray:
    if images.shape[1] < side or images.shape[2] < side:
        raise DataError(
            f"images are {images.shape[1]}x{images.shape[2]} px but the CNN takes {side} px crops; "
            "pass images resized to the model's data.size"
        )
    if images.shape[1] == side and images.shape[2] == side:
        return np.ascontiguousarray(images)
    return np.ascontiguousarray(center_crop(images, side))


def embed_images(
    dual_model: DualModel,
    images: np.ndarray,
    *,
    input_size: int,
    tta: bool = False,
    batch_size: int = 256,
    progress: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``dual_model`` over uint8 ``images`` in chunks; return (embeddings, probabilities) float32.

    Images larger than ``input_size`` are centre-cropped; with ``tta`` both outputs are averaged
    over the 8 dihedral views.
    """

    arr = images
    if getattr(arr, "dtype", None) != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise DataError(
            f"images must be uint8 (N, H, W, 3), got {getattr(arr, 'dtype', None)} {getattr(arr, 'shape', None)}"
        )
    if len(arr) == 0:
        raise DataError("no images to embed; pass at least one image")

    def forward(x: np.ndarray) -> np.ndarray:
        emb, probs = dual_model(x.astype(np.float32))
        return np.concatenate([emb, probs], axis=1)

    def run(x: np.ndarray) -> np.ndarray:
        parts = [forward(x[s : s + batch_size]) for s in range(0, len(x), batch_size)]
        return np.concatenate(parts)

    chunks = []
    starts = range(0, len(arr), CHUNK)
    for start in tqdm(starts, desc="embeddings", unit="chunk", disable=None if progress is None else not progress):
        x = _crop_to(np.asarray(arr[start : start + CHUNK]), input_size)
        if tta:
            out = tta_predict(run, x, batch_size=batch_size)
        else:
            out = run(x)
        chunks.append(out)
    both = np.concatenate(chunks).astype(np.float32)
    return both[:, : dual_model.width], both[:, dual_model.width :]


# --------------------------------------------------------------------------------------------
# The on-disk cache
# --------------------------------------------------------------------------------------------
def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text))[:80] or "x"


def cache_file(
    root: Path, *, model_id: str, split: str, data_fingerprint: str, tta: bool, rows_digest: str, input_size: int
) -> Path:
    """Where the embeddings of one (model, split, data, TTA, rows) combination are cached."""
    key = f"v{CACHE_VERSION}|{model_id}|{split}|{data_fingerprint}|{int(tta)}|{rows_digest}|{input_size}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    name = f"{_safe(split)}-{_safe(data_fingerprint)[:12]}-tta{int(tta)}-{digest}.npz"
    return Path(root) / _safe(model_id) / name


def rows_digest(indices: np.ndarray | None, n_rows: int) -> str:
    """Digest of the row selection (``all<n>`` when every row is used in order)."""
    if indices is None:
        return f"all{n_rows}"
    return hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]


def _load_cached(path: Path, n_rows: int, dim: int) -> Embedded | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            emb, probs = np.asarray(f["embeddings"]), np.asarray(f["probs"])
    except (OSError, ValueError, KeyError) as err:
        log.warning("embedding cache %s is unreadable (%s); recomputing it", path, err)
        return None
    if emb.shape != (n_rows, dim) or probs.shape[0] != n_rows:
        log.warning("embedding cache %s holds %s, expected (%d, %d); recomputing it", path, emb.shape, n_rows, dim)
        return None
    return Embedded(emb, probs, cached=True)


def _save_cached(path: Path, result: Embedded) -> None:
    try:
        with atomic_path(path, suffix=".npz.tmp") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, embeddings=result.embeddings, probs=result.probs)
    except OSError as err:
        raise DataError(
            f"cannot write the embedding cache {path} ({os_error_reason(err)}); free space in "
            f"{path.parent} or point GALAXY10_CACHE at a folder with room"
        ) from None


def default_embedding_cache() -> Path:
    """``core.paths.default_cache_dir() / "embeddings"`` (``GALAXY10_CACHE`` moves it)."""

    return default_cache_dir() / "embeddings"


class CNNEmbedder(TransformerMixin, BaseEstimator):
    """Images -> the CNN's ``embedding``-layer activations (a scikit-learn transformer).

    Parameters
    ----------
    model
        A Keras model built by ``models.build_model`` (it has an ``embedding`` layer).
    tta
        Average embeddings (and probabilities) over the 8 dihedral views.
    batch_size
        Images per forward pass.
    model_id
        Identity of the model for the cache (the MLflow run id); None uses a digest of the weights.
    cache_dir
        Cache folder; None is ``default_cache_dir() / "embeddings"``. ``False`` disables caching.
    progress
        Show a progress bar (None: only on a terminal).

    Attributes
    ----------
    input_size_ : int
        Side of the model's square input (images are centre-cropped to it).
    n_features_out_ : int
        Embedding width.
    model_id_ : str
        The cache identity used.
    cache_hits_, cache_misses_ : int
        How many :meth:`embed` calls were served from / written to the cache.
    """

    def __init__(
        self,
        model: Any = None,
        *,
        tta: bool = False,
        batch_size: int = 256,
        model_id: str | None = None,
        cache_dir: str | Path | bool | None = None,
        progress: bool | None = None,
    ) -> None:
        self.model = model
        self.tta = tta
        self.batch_size = batch_size
        self.model_id = model_id
        self.cache_dir = cache_dir
        self.progress = progress

    def fit(self, X: Any = None, y: Any = None) -> CNNEmbedder:
        """Build the embedding sub-model (the CNN itself is already trained; ``X`` is not used)."""
        self.dual_model_ = dual_output_model(self.model)
        shape = self.model.input_shape
        if len(shape) != 4 or shape[1] != shape[2] or shape[1] is None:
            raise ModelError(f"the CNN takes inputs of shape {shape}; expected square images (None, S, S, 3)")
        self.input_size_ = int(shape[1])
        self.n_features_out_ = int(self.dual_model_.width)
        self.model_id_ = str(self.model_id) if self.model_id else f"weights-{weights_digest(self.model)}"
        self.cache_hits_ = 0
        self.cache_misses_ = 0
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "dual_model_"):
            raise ModelError("CNNEmbedder is not fitted; call fit() first")

    def _cache_root(self) -> Path | None:
        if self.cache_dir is False:
            return None
        return default_embedding_cache() if self.cache_dir in (None, True) else Path(self.cache_dir)

    def embed(
        self, images: np.ndarray, indices: np.ndarray | None = None, *, split: str, data_fingerprint: str
    ) -> Embedded:
        """Embeddings and probabilities of ``images[indices]`` (all rows when None), cached.

        ``split`` (e.g. ``val`` or ``train-fold0``) and ``data_fingerprint`` name what is embedded
        in the cache key, together with the model id, the TTA flag and a digest of ``indices``.
        """
        self._check_fitted()
        n_rows = len(images) if indices is None else len(indices)
        root = self._cache_root()
        path = None
        if root is not None:
            path = cache_file(
                root,
                model_id=self.model_id_,
                split=split,
                data_fingerprint=data_fingerprint,
                tta=bool(self.tta),
                rows_digest=rows_digest(indices, len(images)),
                input_size=self.input_size_,
            )
            hit = _load_cached(path, n_rows, self.n_features_out_)
            if hit is not None:
                self.cache_hits_ += 1
                log.info("embeddings of %s (%d images) from cache %s", split, n_rows, path)
                return hit
        rows = images if indices is None else _take(images, indices)
        emb, probs = embed_images(
            self.dual_model_,
            rows,
            input_size=self.input_size_,
            tta=bool(self.tta),
            batch_size=int(self.batch_size),
            progress=self.progress,
        )
        result = Embedded(emb, probs, cached=False)
        if path is not None:
            _save_cached(path, result)
            self.cache_misses_ += 1
            log.info("embedded %s (%d images%s); cached at %s", split, n_rows, ", TTA" if self.tta else "", path)
        return result

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Embeddings ``(N, D)`` float32 of uint8 images ``X`` (cached under a digest of ``X``)."""
        self._check_fitted()
        arr = np.ascontiguousarray(X)
        if arr.dtype != np.uint8 or arr.ndim != 4:
            raise DataError(f"CNNEmbedder.transform needs uint8 images (N, H, W, 3), got {arr.dtype} {arr.shape}")
        digest = hashlib.sha256(arr.tobytes()).hexdigest()[:16]
        return self.embed(arr, split="array", data_fingerprint=digest).embeddings

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """``embedding0 .. embedding{D-1}``."""
        self._check_fitted()
        return np.asarray([f"embedding{i}" for i in range(self.n_features_out_)], dtype=object)


def _take(images: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """``images[indices]`` read in sorted order (fast on memmaps), returned in ``indices`` order."""
    idx = np.asarray(indices, dtype=np.int64)
    if idx.ndim != 1 or (len(idx) and (idx.min() < 0 or idx.max() >= len(images))):
        raise DataError(f"indices must be 1-D and lie in 0..{len(images) - 1}")
    order = np.argsort(idx, kind="stable")
    out = np.empty((len(idx), *images.shape[1:]), dtype=images.dtype)
    out[order] = np.asarray(images[idx[order]])
    return out
