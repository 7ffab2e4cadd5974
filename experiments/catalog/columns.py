"""The catalog's columns: schema, per-class probability names and the uncertainty measures."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from core.outputs import OWNER_TAG
from pipelines.classes import slugify

#: Version of the catalog's column layout (in the file's metadata).
SCHEMA_VERSION = "1"


def probability_columns(class_names: Sequence[str]) -> list[str]:
    """``p_<slug>`` per class, in the model's class order (made unique when two names share a slug)."""
    out: list[str] = []
    for i, name in enumerate(class_names):
        col = f"p_{slugify(str(name)) or i}"
        out.append(col if col not in out else f"{col}_{i}")
    return out


def catalog_schema(class_names: Sequence[str], *, embedding: bool = False) -> pa.Schema:
    """Row number, identity, position, prediction, probabilities, uncertainty, error (and the embedding)."""
    fields = [
        pa.field("row", pa.int64(), nullable=False),
        pa.field("id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("source_index", pa.int64()),
        pa.field("ra", pa.float64()),
        pa.field("dec", pa.float64()),
        pa.field("predicted", pa.string()),
        pa.field("predicted_index", pa.int16()),
        *[pa.field(c, pa.float32()) for c in probability_columns(class_names)],
        pa.field("max_probability", pa.float32()),
        pa.field("entropy", pa.float32()),
        pa.field("view_disagreement", pa.float32()),
        pa.field("n_views", pa.int8()),
        pa.field("ood_score", pa.float32()),
        pa.field("ood_flag", pa.bool_()),
        pa.field("error", pa.string()),
    ]
    if embedding:
        fields.append(pa.field("embedding", pa.list_(pa.float32())))
    return pa.schema(fields)


def with_catalog_metadata(
    schema: pa.Schema,
    card: Any,
    *,
    inputs_fingerprint: str,
    n_rows: int,
    engine: str,
    ood: dict[str, Any] | None,
    **extra: Any,
) -> pa.Schema:
    """``schema`` carrying the catalog's metadata (key ``galaxy10``, JSON) and galaxy10's owner tag: the
    model (URI, name, version, run, synthetic flag, data fingerprint, class names, temperature), the
    inputs' fingerprint and row count, the engine and the out-of-distribution detector's summary."""
    meta = {
        "written_by": f"{OWNER_TAG} catalog (engine {engine})",
        "schema_version": SCHEMA_VERSION,
        "model_uri": card.uri,
        "model_name": card.name,
        "model_version": card.version,
        "model_run_id": card.run_id,
        "model_synthetic": card.synthetic,
        "model_data_fingerprint": card.data_fingerprint,
        "class_names": list(card.class_names),
        "calibration": {"method": "temperature scaling", "temperature": card.temperature},
        "inputs_fingerprint": inputs_fingerprint,
        "n_rows": n_rows,
        "engine": engine,
        "ood": ood,
        **extra,
    }
    return schema.with_metadata({b"galaxy10": json.dumps(meta).encode(), b"written_by": OWNER_TAG.encode()})


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of ``(..., C)`` probabilities."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=-1)


def view_disagreement(views: np.ndarray) -> np.ndarray:
    """How much the test-time views disagree: the mutual information between view and class (nats).

    ``H(mean over views) - mean over views of H(view)`` for ``(V, N, C)`` probabilities: 0 when every
    view says the same, larger when confident views contradict each other. NaN with one view.
    """
    views = np.asarray(views, dtype=np.float64)
    if views.shape[0] < 2:
        return np.full(views.shape[1], np.nan)
    return np.maximum(entropy(views.mean(axis=0)) - entropy(views).mean(axis=0), 0.0)
