"""Nearest neighbours of query images in a catalog: the query embedded by the catalog's own model, a table,
and an HTML gallery (the query beside its neighbours)."""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import DataError, ModelError
from experiments.similarity.index import EmbeddingIndex, build_index, catalog_metadata, row_images
from experiments.tracking.workspace import Workspace

log = logging.getLogger(__name__)

#: Most neighbours per query.
MAX_K = 1000


@dataclass(frozen=True)
class Neighbour:
    """One catalog row near a query."""

    query: str
    rank: int
    similarity: float
    row: int
    id: str
    source: str
    source_index: int | None
    predicted: str


def embed_queries(
    queries: Sequence[str], embed: Callable[[np.ndarray], np.ndarray]
) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    """``(labels, images, embeddings)`` of the query inputs (PNG/JPEG files, HDF5 files or ``file.h5:rows``)."""
    from experiments.serving.inputs import iter_input_batches, plan_inputs

    sources = plan_inputs(list(queries))
    labels, images, vectors = [], [], []
    for batch in iter_input_batches(sources, batch_size=64):
        for item in batch:  # queries may differ in size: one at a time through the model's preprocessing
            labels.append(item.label)
            images.append(item.image)
            vectors.append(np.asarray(embed(item.image[None]), dtype=np.float32)[0])
    return labels, images, np.stack(vectors)


def find_similar(
    queries: Sequence[str], catalog: str | Path, *, k: int = 10, model: str | None = None, ws: Workspace
) -> tuple[list[Neighbour], EmbeddingIndex, list[np.ndarray]]:
    """The ``k`` nearest catalog rows of every query (cosine similarity of embeddings).

    Without ``model`` (or with the catalog's own model) the catalog's embedding column is searched and the
    queries are embedded by the catalog's model. With another ``model`` - a CNN, an ensemble or an encoder
    of ``galaxy10 pretrain`` - the search runs in that model's space: the catalog's rows are read from their
    sources and embedded by it, and so are the queries.
    """
    from experiments.serving.predictor import load_encoder

    if not 1 <= k <= MAX_K:
        raise DataError(f"--k {k} is out of range; use 1-{MAX_K}")
    own = catalog_metadata(Path(catalog), need_embedding=False).get("model_uri") if Path(catalog).is_file() else None
    own_space = model is None or model == own
    index = build_index(catalog) if own_space else None  # the catalog's own column: checked before any model loads
    if own_space and not own:
        raise ModelError(f"{Path(catalog).name} does not name the model that wrote it; give --model")
    embed, _ = load_encoder(own if own_space else model, ws=ws)
    if index is None:
        index = build_index(catalog, embed=embed)
        index.metadata = {**index.metadata, "model_uri": model, "catalog_model_uri": own}
    labels, images, vectors = embed_queries(queries, embed)
    sims, pos = index.search(vectors, k)
    out = []
    info = index.info
    for q, label in enumerate(labels):
        for rank, (s, p) in enumerate(zip(sims[q], pos[q], strict=True), start=1):
            if p < 0:
                continue
            src_index = info.get("source_index")
            out.append(
                Neighbour(
                    label,
                    rank,
                    float(s),
                    int(info["row"][p]),
                    str(info["id"][p]),
                    str(info["source"][p]),
                    None
                    if src_index is None
                    or src_index[p] is None
                    or (isinstance(src_index[p], float) and np.isnan(src_index[p]))
                    else int(src_index[p]),
                    str(info["predicted"][p]) if "predicted" in info else "",
                )
            )
    return out, index, images


def _thumb(image: np.ndarray | None, side: int = 96) -> str:
    from PIL import Image

    if image is None:
        return ""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).resize((side, side)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def gallery_html(
    neighbours: Sequence[Neighbour], query_images: Sequence[np.ndarray], catalog: Path, metadata: dict[str, Any]
) -> str:
    """A self-contained page: one row per query, the query then its neighbours with similarity and class."""
    esc = html.escape
    queries = list(dict.fromkeys(n.query for n in neighbours))
    # every neighbour's pixels from its source in one pass (each HDF5 file opened once); None if unreadable
    pixels = row_images(
        {
            "source": np.asarray([n.source for n in neighbours], dtype=object),
            "source_index": np.asarray([n.source_index for n in neighbours], dtype=object),
        }
    )
    image_of = dict(zip(neighbours, pixels, strict=True))
    rows = []
    for q, image in zip(queries, query_images, strict=False):
        cells = [
            f'<figure class="query"><img src="{_thumb(image)}" alt="query {esc(q)}"><figcaption>query<br>'
            f"{esc(q)}</figcaption></figure>"
        ]
        for n in (n for n in neighbours if n.query == q):
            cells.append(
                f'<figure><img src="{_thumb(image_of[n])}" alt="{esc(n.id)}"><figcaption>#{n.rank} '
                f"sim {n.similarity:.3f}<br>{esc(n.id)}<br>{esc(n.predicted)}</figcaption></figure>"
            )
        rows.append(f'<div class="row">{"".join(cells)}</div>')
    synthetic = (
        '<p class="warn">The catalog\'s model was trained on SYNTHETIC data.</p>'
        if metadata.get("model_synthetic")
        else ""
    )
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>galaxy10 similar</title><style>'
        "body{font-family:sans-serif;margin:24px}.row{display:flex;gap:8px;margin:12px 0;flex-wrap:wrap}"
        "figure{margin:0;width:110px;font-size:11px;text-align:center}figure img{width:96px;height:96px}"
        ".query{border-right:3px solid #2e6f9e;padding-right:8px}.warn{color:#b3261e;font-weight:700}"
        f"</style></head><body><h1>Nearest neighbours in {esc(catalog.name)}</h1>{synthetic}"
        f"<p>Cosine similarity of the embeddings of model <code>{esc(str(metadata.get('model_uri')))}</code>"
        f" ({len(queries)} queries).</p>{''.join(rows)}</body></html>"
    )
