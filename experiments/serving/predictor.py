"""The one predictor: a logged model with its own preprocessing (resize, crop, optional 8-view TTA)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from augment.tta import mean_of_views, tta_views
from core.errors import ConfigError, DataError, ModelError
from ensembles.calibration import apply_temperature
from experiments.tracking.loading import ModelBundle, load_prediction_model
from experiments.tracking.model_registry import default_champion_uri
from experiments.tracking.workspace import ModelRef, Workspace
from pipelines.preprocess import prepare_images
from pipelines.reader import Galaxy10File

log = logging.getLogger(__name__)


#: Side of the square uint8 images given to a pyfunc model whose signature does not say.
PYFUNC_INPUT_SIZE: int = 256
HOW_TO_TRAIN = (
    "train one with `galaxy10 train --config experiments/configs/smoke.yaml` or "
    "`galaxy10 tune --config experiments/configs/tune_quick.yaml`, or pass --model"
)


def predict_views(
    bundle: ModelBundle | tuple[Any, Mapping[str, Any]], images: Any, *, batch_size: int = 256
) -> np.ndarray:
    """Class probabilities of each test-time view, ``(V, N, C)`` float32, for uint8 RGB images of any size.

    Images go through ``pipelines.preprocess.prepare_images`` (square crop, resize to the model's
    ``size``, centre crop to ``crop``); with ``tta`` in the metadata V = 8 (the D4 views), else V = 1.
    """
    model, meta = bundle
    crops = prepare_images(images, size=int(meta["size"]), crop=int(meta["crop"]))

    def predict_fn(x: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(x.astype(np.float32), batch_size=batch_size, verbose=0))

    if meta.get("tta"):
        return tta_views(predict_fn, crops, batch_size=batch_size)
    return predict_fn(crops).astype(np.float32)[None]


def predict_images(
    bundle: ModelBundle | tuple[Any, Mapping[str, Any]], images: Any, *, batch_size: int = 256
) -> np.ndarray:
    """Class probabilities ``(N, C)`` float32: the mean of :func:`predict_views` (the 8 D4 views with TTA)."""
    return mean_of_views(predict_views(bundle, images, batch_size=batch_size))


@dataclass(frozen=True)
class ModelCard:
    """What a user should know about the model behind a prediction (shown by CLI and web page)."""

    uri: str
    kind: str  # "keras" or "pyfunc"
    size: int
    crop: int
    class_names: tuple[str, ...]
    name: str | None = None
    version: str | None = None
    run_id: str | None = None
    synthetic: bool | None = None
    provenance: str | None = None
    data_fingerprint: str | None = None
    preprocess_version: str | None = None
    temperature: float = 1.0
    extra: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (class names as a list)."""
        out = asdict(self)
        out["class_names"] = list(self.class_names)
        return out

    @property
    def display_name(self) -> str:
        """``name vN`` for registered models, else the URI."""
        if self.name:
            return f"{self.name} v{self.version}" if self.version else self.name
        return self.uri


@dataclass(frozen=True)
class Predictor:
    """A loaded model: ``predict_fn`` maps uint8 ``(N, H, W, 3)`` of one size to ``(N, C)`` probs.

    ``views_fn`` (optional) gives the probabilities of each test-time view, ``(V, N, C)``, whose mean is
    ``predict_fn``'s output; models without views (pyfunc ensembles) have one view.
    """

    card: ModelCard
    predict_fn: Callable[[np.ndarray], np.ndarray]
    views_fn: Callable[[np.ndarray], np.ndarray] | None = None
    embed_fn: Callable[[np.ndarray], np.ndarray] | None = None
    #: The Keras CNN of a ``keras`` model (``embed_fn`` reads its embedding layer); None for pyfunc models.
    cnn: Any = None

    @property
    def can_embed(self) -> bool:
        """Whether the model gives embeddings (Keras CNNs do; pyfunc ensembles do not)."""
        return self.embed_fn is not None

    def embed(self, images: np.ndarray) -> np.ndarray:
        """The CNN's embedding ``(N, D)`` float32 of a uint8 ``(N, H, W, 3)`` batch (the untransformed view)."""
        if self.embed_fn is None:
            raise ModelError(
                f"model {self.card.uri} gives no embeddings (a {self.card.kind} model); use a CNN "
                "logged by `galaxy10 train` or `galaxy10 tune`"
            )
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise DataError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        return np.asarray(self.embed_fn(images), dtype=np.float32)

    def predict(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities ``(N, C)`` for uint8 RGB images (a batch, or a list of any sizes)."""
        if isinstance(images, np.ndarray) and images.ndim == 4:
            return self._predict_batch(images)
        batch = [images] if isinstance(images, np.ndarray) else list(images)
        out = np.empty((len(batch), len(self.card.class_names)), dtype=np.float32)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, img in enumerate(batch):
            by_shape.setdefault(np.shape(img), []).append(i)
        for idx in by_shape.values():  # one model call per distinct image size
            out[idx] = self._predict_batch(np.stack([batch[i] for i in idx]))
        return out

    def _predict_batch(self, images: np.ndarray) -> np.ndarray:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise DataError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        probs = np.asarray(self.predict_fn(images), dtype=np.float32)
        expected = (len(images), len(self.card.class_names))
        if probs.shape != expected:
            raise ModelError(
                f"model {self.card.uri} returned shape {probs.shape}, expected "
                f"{expected}; it is not a Galaxy10 classifier"
            )
        return probs

    def predict_views(self, images: np.ndarray) -> np.ndarray:
        """``(V, N, C)`` probabilities of each test-time view of a uint8 ``(N, H, W, 3)`` batch (V = 1 without)."""
        if self.views_fn is None:
            return self._predict_batch(images)[None]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise DataError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        views = np.asarray(self.views_fn(images), dtype=np.float32)
        if views.ndim != 3 or views.shape[1:] != (len(images), len(self.card.class_names)):
            raise ModelError(
                f"model {self.card.uri} returned view shape {views.shape}, expected "
                f"(V, {len(images)}, {len(self.card.class_names)})"
            )
        return views

    def calibrate(self, probs: np.ndarray) -> np.ndarray:
        """``probs`` temperature-scaled with the model's temperature (fitted on its validation split at
        training time; 1.0, unchanged, for models without one). Predictions (the top class) do not change."""
        return apply_temperature(probs, self.card.temperature)

    def model_view(self, image: np.ndarray) -> np.ndarray:
        """The uint8 ``(crop, crop, 3)`` centre crop the model sees for one ``(H, W, 3)`` image."""

        return prepare_images(image[None], size=self.card.size, crop=self.card.crop)[0]


#: Images per model call when a predictor scores rows of a data file (``predict FILE.h5``, reports).
FILE_BATCH = 64


def predict_file_rows(
    predictor: Predictor, data_path: str | Path, indices: Sequence[int] | np.ndarray, *, desc: str = "predict"
) -> np.ndarray:
    """Probabilities ``(len(indices), C)`` of rows of a Galaxy10 file, read lazily in batches of
    :data:`FILE_BATCH`: the one path by which ``galaxy10 predict FILE.h5`` and the report score a file,
    so a model scores the same images identically wherever it is scored."""

    indices = np.asarray(indices, dtype=np.int64)
    parts = []
    with (
        Galaxy10File(data_path) as f,
        tqdm(total=len(indices), desc=desc, unit="img", disable=None, leave=False) as bar,
    ):
        for _, images in f.iter_batches(FILE_BATCH, indices):
            parts.append(predictor.predict(images))
            bar.update(len(images))
    return np.concatenate(parts) if parts else np.zeros((0, len(predictor.card.class_names)), np.float32)


def load_predictor(ref: ModelRef | str | None = None, *, ws: Workspace) -> Predictor:
    """Load the model named by ``ref`` (default: the newest study's ``champion`` alias) from the workspace's
    store."""
    if ref is None:
        try:
            ws.require_store()
            uri = default_champion_uri(ws=ws)
        except ConfigError:  # no tracking database yet: nothing is registered anywhere
            uri = None
        if uri is None:
            raise ModelError(
                f"no model given and no study has a registered 'champion' model at {ws.tracking_uri}; {HOW_TO_TRAIN}"
            )
        log.info("using the newest study champion %s", uri)
        ref = uri
    return predictor_from_loaded(load_prediction_model(ref, ws=ws))


def load_encoder(ref: ModelRef | str, *, ws: Workspace) -> tuple[Callable[[np.ndarray], np.ndarray], dict]:
    """``(embed_fn, metadata)`` of any model that gives embeddings: a CNN logged by training, a galaxy10
    ensemble (its first member's CNN) or an encoder registered by ``galaxy10 pretrain`` (no classes)."""
    loaded = load_prediction_model(ref, ws=ws)
    meta = dict(loaded.meta or {})
    if loaded.kind == "keras":
        return cnn_embedding(loaded.model[0], int(meta["size"]), int(meta["crop"])), meta
    embed = _ensemble_embedding(loaded.model) if loaded.kind == "pyfunc" else None
    if embed is None:
        raise ModelError(
            f"model {ref} gives no embeddings; give --model with a CNN, a galaxy10 ensemble or a pretrained encoder"
        )
    return embed, meta


def predictor_from_loaded(loaded: Any) -> Predictor:
    """Wrap a ``LoadedModel`` (kind, model object, metadata, run info) as a Predictor."""
    meta = dict(loaded.meta or {})
    card = _card_from_meta(loaded.uri, loaded.kind, meta, loaded.info)
    if loaded.kind == "keras":
        return keras_predictor(card, loaded.model)
    if loaded.kind == "pyfunc":
        pyfunc = loaded.model
        side = pyfunc_input_side(pyfunc)

        def predict_fn(images: np.ndarray) -> np.ndarray:
            if side is not None and images.shape[1:3] != (side, side):
                images = prepare_images(images, size=side, crop=None)  # square crop + resize only
            return np.asarray(pyfunc.predict(images))

        return Predictor(card=card, predict_fn=predict_fn, embed_fn=_ensemble_embedding(pyfunc))
    raise ModelError(
        f"model {loaded.uri} has flavour {loaded.kind!r}; galaxy10 predicts with "
        "Keras models logged by `galaxy10 train` or pyfunc ensembles"
    )


def keras_predictor(card: ModelCard, bundle: ModelBundle | tuple[Any, Mapping[str, Any]]) -> Predictor:
    """The Predictor of a Keras CNN and its metadata: test-time views, their mean, the embedding."""

    def views_fn(images: np.ndarray) -> np.ndarray:
        return predict_views(bundle, images)

    def predict_fn(images: np.ndarray) -> np.ndarray:
        return mean_of_views(views_fn(images))

    return Predictor(
        card=card,
        predict_fn=predict_fn,
        views_fn=views_fn,
        embed_fn=cnn_embedding(bundle[0], card.size, card.crop),
        cnn=bundle[0],
    )


def cnn_embedding(cnn: Any, size: int, crop: int) -> Callable[[np.ndarray], np.ndarray]:
    """``images -> (N, D)`` embeddings of a CNN (its ``embedding`` layer) on the model's own preprocessing;
    the embedding sub-model is built on first use."""
    dual: list[Any] = []

    def embed_fn(images: np.ndarray) -> np.ndarray:
        from ensembles.embeddings import dual_output_model, embed_images

        if not dual:
            dual.append(dual_output_model(cnn))
        crops = prepare_images(images, size=size, crop=crop)
        return embed_images(dual[0], crops, input_size=crop, progress=False)[0]

    return embed_fn


def _ensemble_embedding(pyfunc: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """The embedding of a galaxy10 ensemble's first member CNN (its best trial's), or None for other pyfuncs.

    Out-of-distribution scores need one embedding; the first branch's CNN is the one every candidate holds.
    """
    try:
        branch = pyfunc.unwrap_python_model().ensemble.branches[0]
    except (AttributeError, IndexError, TypeError):
        return None
    return cnn_embedding(branch.cnn, int(branch.size), int(branch.crop))


def pyfunc_input_side(pyfunc: Any) -> int | None:
    """The fixed square image side a pyfunc model's tensor signature demands, or None for any size."""
    signature = getattr(getattr(pyfunc, "metadata", None), "signature", None)
    inputs = getattr(signature, "inputs", None)
    if inputs is None or not inputs.is_tensor_spec() or len(inputs.inputs) != 1:
        return PYFUNC_INPUT_SIZE if signature is None else None
    shape = tuple(inputs.inputs[0].shape or ())
    if len(shape) == 4 and shape[1] == shape[2] and shape[1] not in (-1, None):
        return int(shape[1])
    return None


def _card_from_meta(uri: str, kind: str, meta: dict[str, Any], info: dict[str, Any]) -> ModelCard:
    missing = [k for k in ("size", "crop", "class_names") if meta.get(k) in (None, "", [])]
    if missing:
        raise ModelError(
            f"model {uri} lacks the metadata prediction needs ({', '.join(missing)}); "
            "log it with `galaxy10 train` / `galaxy10 ensemble`, which save it"
        )
    synthetic = meta.get("synthetic", info.get("synthetic"))
    if isinstance(synthetic, str):
        synthetic = synthetic.strip().lower() == "true"
    known = {
        "size",
        "crop",
        "class_names",
        "synthetic",
        "provenance",
        "data_fingerprint",
        "preprocess_version",
        "temperature",
    }
    return ModelCard(
        uri=uri,
        kind=kind,
        size=int(meta["size"]),
        crop=int(meta["crop"]),
        class_names=tuple(str(c) for c in meta["class_names"]),
        name=info.get("name"),
        version=_str_or_none(info.get("version")),
        run_id=info.get("run_id"),
        synthetic=synthetic,
        provenance=meta.get("provenance", info.get("provenance")),
        data_fingerprint=_str_or_none(meta.get("data_fingerprint")),
        preprocess_version=_str_or_none(meta.get("preprocess_version")),
        temperature=_temperature(uri, meta.get("temperature", 1.0)),
        extra={k: str(v) for k, v in meta.items() if k not in known and np.isscalar(v)},
    )


def _temperature(uri: str, value: Any) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = float("nan")
    if not np.isfinite(t) or t <= 0:
        raise ModelError(
            f"model {uri} has a bad calibration temperature {value!r} in its metadata; log it again "
            "with `galaxy10 train`"
        )
    return t


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
