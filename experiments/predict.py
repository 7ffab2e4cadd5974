"""Prediction glue: resolve a model reference, read input images, predict, format the answer.

One small interface serves both kinds of logged model: the Keras CNN logged by training
(``mlflow.keras`` flavour + prediction metadata) and the ensembles' pyfunc models (uint8 images
in, probabilities out; resized to the square side their tensor signature fixes, passed as they
are when it allows any size). :class:`Predictor` hides the difference: ``predict(images)`` takes
uint8 RGB images of any size and returns class probabilities, ``model_view(image)`` returns the
centre crop the model sees. Either kind needs ``size``, ``crop`` and ``class_names`` (and, for the
page's warning, ``synthetic``) in its MLmodel ``metadata``. Everything that touches MLflow goes
through ``experiments.tracking``.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import ConfigError, DataError, ModelError
from pipelines.images import DEFAULT_MAX_PIXELS, check_image_header, decode_image

log = logging.getLogger(__name__)

#: Side of the square uint8 images given to a pyfunc model whose signature does not say.
PYFUNC_INPUT_SIZE: int = 256
HDF5_SIGNATURE: bytes = b"\x89HDF\r\n\x1a\n"
OUTPUT_FORMATS: tuple[str, ...] = ("table", "json", "csv")
HOW_TO_TRAIN = ("train one with `galaxy10 train --config experiments/configs/smoke.yaml` or "
                "`galaxy10 tune --config experiments/configs/tune_quick.yaml`, or pass --model")

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_NAME_ALIAS = re.compile(r"^(?P<name>[^@/:\s]+(?:[^@:\s]*[^@/:\s])?)@(?P<alias>[A-Za-z0-9_-]+)$")
_H5_RANGE = re.compile(r"^(?P<path>.+\.(?:h5|hdf5)):(?P<spec>[0-9,\- ]+)$", re.IGNORECASE)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------
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
    """A loaded model: ``predict_fn`` maps uint8 ``(N, H, W, 3)`` of one size to ``(N, C)`` probs."""

    card: ModelCard
    predict_fn: Callable[[np.ndarray], np.ndarray]

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
            raise ModelError(f"model {self.card.uri} returned shape {probs.shape}, expected "
                             f"{expected}; it is not a Galaxy10 classifier")
        return probs

    def model_view(self, image: np.ndarray) -> np.ndarray:
        """The uint8 ``(crop, crop, 3)`` centre crop the model sees for one ``(H, W, 3)`` image."""
        from pipelines.preprocess import prepare_images

        return prepare_images(image[None], size=self.card.size, crop=self.card.crop)[0]


#: Images per model call when a predictor scores rows of a data file (``predict FILE.h5``, reports).
FILE_BATCH = 64


def predict_file_rows(predictor: Predictor, data_path: str | Path, indices: Sequence[int] | np.ndarray, *,
                      desc: str = "predict") -> np.ndarray:
    """Probabilities ``(len(indices), C)`` of rows of a Galaxy10 file, read lazily in batches of
    :data:`FILE_BATCH`: the one path by which ``galaxy10 predict FILE.h5`` and the report score a file,
    so a model scores the same images identically wherever it is scored."""
    from tqdm.auto import tqdm

    from pipelines.reader import Galaxy10File

    indices = np.asarray(indices, dtype=np.int64)
    parts = []
    with Galaxy10File(data_path) as f, tqdm(total=len(indices), desc=desc, unit="img", disable=None,
                                            leave=False) as bar:
        for _, images in f.iter_batches(FILE_BATCH, indices):
            parts.append(predictor.predict(images))
            bar.update(len(images))
    return np.concatenate(parts) if parts else np.zeros((0, len(predictor.card.class_names)), np.float32)


def parse_model_ref(ref: str) -> str:
    """Turn a ``--model`` value into an MLflow model URI.

    ``NAME@alias`` -> ``models:/NAME@alias``; a bare 32-hex run id -> ``runs:/<id>/model``;
    ``models:/...``, ``runs:/...`` and other URIs pass through.
    """
    ref = ref.strip()
    if not ref:
        raise ModelError("empty --model; pass NAME@alias, a run id, runs:/<id>/model or models:/...")
    if "://" in ref or ref.startswith(("models:/", "runs:/")):
        return ref
    if _RUN_ID.match(ref):
        return f"runs:/{ref}/model"
    match = _NAME_ALIAS.match(ref)
    if match:
        return f"models:/{match['name']}@{match['alias']}"
    if Path(ref).exists():  # a local MLflow model folder
        return ref
    raise ModelError(f"cannot read model reference {ref!r}; use NAME@alias (e.g. my-study@champion),"
                     " a 32-character run id, runs:/<run_id>/model or models:/NAME/VERSION")


def load_predictor(ref: str | None = None, *, tracking_uri: str | None = None) -> Predictor:
    """Load the model named by ``ref`` (default: the newest study's ``champion`` alias)."""
    from experiments import tracking

    if tracking_uri:
        tracking.set_tracking_uri(tracking_uri)
    uri = None if ref is None else parse_model_ref(ref)
    if uri is not None and not Path(uri).exists():  # a store lookup must not create an empty MLflow database
        tracking.require_tracking_store(tracking.get_tracking_uri())
    if uri is None:
        try:
            tracking.require_tracking_store(tracking.get_tracking_uri())
            uri = tracking.default_champion_uri()
        except ConfigError:  # no tracking database yet: nothing is registered anywhere
            uri = None
        if uri is None:
            raise ModelError(f"no model given and no study has a registered 'champion' model at "
                             f"{tracking.get_tracking_uri()}; {HOW_TO_TRAIN}")
        log.info("using the newest study champion %s", uri)
    return predictor_from_loaded(tracking.load_prediction_model(uri))


def predictor_from_loaded(loaded: Any) -> Predictor:
    """Wrap a ``tracking.LoadedModel`` (kind, model object, metadata, run info) as a Predictor."""
    meta = dict(loaded.meta or {})
    card = _card_from_meta(loaded.uri, loaded.kind, meta, loaded.info)
    if loaded.kind == "keras":
        from experiments.tracking import predict_images

        bundle = loaded.model

        def predict_fn(images: np.ndarray) -> np.ndarray:
            return predict_images(bundle, images)
    elif loaded.kind == "pyfunc":
        pyfunc = loaded.model
        side = pyfunc_input_side(pyfunc)

        def predict_fn(images: np.ndarray) -> np.ndarray:
            from pipelines.preprocess import prepare_images

            if side is not None and images.shape[1:3] != (side, side):
                images = prepare_images(images, size=side, crop=None)  # square crop + resize only
            return np.asarray(pyfunc.predict(images))
    else:
        raise ModelError(f"model {loaded.uri} has flavour {loaded.kind!r}; galaxy10 predicts with "
                         "Keras models logged by `galaxy10 train` or pyfunc ensembles")
    return Predictor(card=card, predict_fn=predict_fn)


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
        raise ModelError(f"model {uri} lacks the metadata prediction needs ({', '.join(missing)}); "
                         "log it with `galaxy10 train` / `galaxy10 ensemble`, which save it")
    synthetic = meta.get("synthetic", info.get("synthetic"))
    if isinstance(synthetic, str):
        synthetic = synthetic.strip().lower() == "true"
    known = {"size", "crop", "class_names", "synthetic", "provenance", "data_fingerprint",
             "preprocess_version"}
    return ModelCard(
        uri=uri, kind=kind, size=int(meta["size"]), crop=int(meta["crop"]),
        class_names=tuple(str(c) for c in meta["class_names"]),
        name=info.get("name"), version=_str_or_none(info.get("version")),
        run_id=info.get("run_id"), synthetic=synthetic,
        provenance=meta.get("provenance", info.get("provenance")),
        data_fingerprint=_str_or_none(meta.get("data_fingerprint")),
        preprocess_version=_str_or_none(meta.get("preprocess_version")),
        extra={k: str(v) for k, v in meta.items() if k not in known and np.isscalar(v)},
    )


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputImage:
    """One image to classify and the label it is reported under (file name, or ``file.h5[i]``)."""

    label: str
    image: np.ndarray


def parse_index_spec(spec: str, n: int, name: str) -> list[int]:
    """Parse ``0-9,20`` (inclusive ranges) into indices checked against ``n`` images."""
    indices: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not m:
            raise DataError(f"bad index range {part!r} in {name}; use e.g. file.h5:0-9,20")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if hi < lo:
            raise DataError(f"empty index range {part!r} in {name}; write low-high, e.g. 0-9")
        if hi >= n:
            raise DataError(f"index {hi} is out of range for {name} ({n} images: 0-{n - 1})")
        indices.extend(range(lo, hi + 1))
    return indices


@dataclass(frozen=True)
class InputSource:
    """One command-line input: a PNG/JPEG file (``indices`` None) or chosen rows of an HDF5 file."""

    path: Path
    indices: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return 1 if self.indices is None else len(self.indices)


def plan_inputs(args: Sequence[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[InputSource]:
    """Check every input cheaply (existence, type, image header, HDF5 schema, index ranges).

    Arguments are PNG/JPEG files, Galaxy10 HDF5 files (all images) or ``file.h5:0-9,20``.
    Pixels are not decoded here, so a bad argument fails before any model is loaded.
    """
    sources = []
    for arg in args:
        range_match = _H5_RANGE.match(arg)
        path, spec = (Path(range_match["path"]), range_match["spec"]) if range_match else (Path(arg), None)
        head, colon, tail = arg.rpartition(":")
        if not range_match and colon and not path.exists() and Path(head).is_file():
            raise DataError(f"bad index range {tail!r} in {arg}; use FILE.h5:RANGES with indices and inclusive "
                            "ranges, e.g. file.h5:0-9,20")
        if not path.exists():
            raise DataError(f"input {arg} does not exist; check the path")
        if path.is_dir():
            raise DataError(f"input {arg} is a folder; name the image files (e.g. {arg}/*.png)")
        with path.open("rb") as fh:
            head = fh.read(len(HDF5_SIGNATURE))
        if head == HDF5_SIGNATURE:
            from pipelines.reader import validate_galaxy10

            n = validate_galaxy10(path).n_images
            indices = parse_index_spec(spec, n, str(path)) if spec else list(range(n))
            sources.append(InputSource(path, tuple(indices)))
        elif spec is not None:
            raise DataError(f"{path} is not an HDF5 file, so {arg} has no image indices")
        else:
            check_image_header(path, max_pixels=max_pixels)
            sources.append(InputSource(path))
    return sources


def iter_input_batches(sources: Sequence[InputSource], batch_size: int = 64, *,
                       max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[list[InputImage]]:
    """Read the planned inputs in order, ``batch_size`` images at a time (HDF5 rows read lazily)."""
    batch: list[InputImage] = []
    for source in sources:
        for item in _iter_source(source, batch_size, max_pixels):
            batch.append(item)
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def _iter_source(source: InputSource, batch_size: int, max_pixels: int) -> Iterator[InputImage]:
    if source.indices is None:
        yield InputImage(str(source.path), decode_image(
            source.path.read_bytes(), str(source.path), max_pixels=max_pixels,
            fix="give PNG/JPEG images or Galaxy10 HDF5 files"))
        return
    from pipelines.reader import Galaxy10File

    with Galaxy10File(source.path) as f:
        for indices, images in f.iter_batches(batch_size, np.asarray(source.indices, dtype=np.int64)):
            for idx, image in zip(indices, images):
                yield InputImage(f"{source.path}[{int(idx)}]", image)


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
def top_classes(probs: np.ndarray, class_names: Sequence[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` most probable ``(class name, probability)`` pairs of one probability row."""
    order = np.argsort(-probs, kind="stable")[:max(1, k)]
    return [(class_names[i], float(probs[i])) for i in order]


def format_predictions(labels: Sequence[str], probs: np.ndarray, class_names: Sequence[str], *,
                       top: int = 3, fmt: str = "table") -> str:
    """Render predictions as an aligned table, JSON (a list of objects) or CSV (one row a class)."""
    if fmt not in OUTPUT_FORMATS:
        raise DataError(f"unknown format {fmt!r}; use one of: {', '.join(OUTPUT_FORMATS)}")
    rows = [(label, top_classes(p, class_names, top)) for label, p in zip(labels, probs)]
    if fmt == "json":
        return json.dumps([{"input": label, "top": [{"rank": r, "class": c, "probability": round(p, 6)}
                                                     for r, (c, p) in enumerate(tc, 1)],
                            "probabilities": {c: round(float(v), 6) for c, v in zip(class_names, p)}}
                           for (label, tc), p in zip(rows, probs)], indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["input", "rank", "class", "probability"])
        for label, tc in rows:
            for rank, (cls, p) in enumerate(tc, 1):
                writer.writerow([label, rank, cls, f"{p:.6f}"])
        return buf.getvalue().rstrip("\n")
    width = max([len("input")] + [len(label) for label in labels])
    cls_w = max(len(c) for c in class_names)
    lines = [f"{'input':<{width}}  rank  {'class':<{cls_w}}  probability"]
    for label, tc in rows:
        for rank, (cls, p) in enumerate(tc, 1):
            lines.append(f"{label if rank == 1 else '':<{width}}  {rank:>4}  {cls:<{cls_w}}  {p:11.4f}")
    return "\n".join(lines)
