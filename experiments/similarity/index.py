"""A catalog's embedding column as a faiss index (cosine similarity on L2-normalised embeddings).

Up to :data:`EXACT_MAX_ROWS` rows the index is exact (``IndexFlatIP``); above, an HNSW graph
(``IndexHNSWFlat``, inner product), whose search time grows with the logarithm of the rows, so millions of
rows answer in milliseconds. The column is read in record batches; rows without an embedding (unreadable
images) are left out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import DataError

log = logging.getLogger(__name__)

#: Largest catalog searched exactly; larger ones get an HNSW graph.
EXACT_MAX_ROWS = 200_000
#: Neighbours per node of the HNSW graph, and its search breadth.
HNSW_M, HNSW_EF_SEARCH = 32, 128
#: Catalog columns carried into the results.
INFO_COLUMNS = ("row", "id", "source", "source_index", "predicted", "max_probability")


@dataclass
class EmbeddingIndex:
    """The index, the catalog rows behind its entries and the catalog's metadata."""

    index: Any
    info: dict[str, np.ndarray]
    metadata: dict[str, Any]
    path: Path

    @property
    def n(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(similarities, positions)`` ``(Q, k)`` of the ``k`` nearest entries of each query (cosine)."""
        q = normalise(np.asarray(queries, dtype=np.float32))
        if q.shape[1] != self.dim:
            raise DataError(
                f"the query embeddings have {q.shape[1]} dimensions but {self.path.name}'s have "
                f"{self.dim}; embed the queries with the catalog's model (or give --model)"
            )
        sims, pos = self.index.search(q, min(k, self.n))
        return sims, pos


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def catalog_metadata(path: Path, *, need_embedding: bool = True) -> dict[str, Any]:
    """The ``galaxy10`` metadata of a catalog written by ``galaxy10 catalog`` (one line if it is not one, or,
    with ``need_embedding``, if it has no embedding column)."""
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (OSError, ValueError) as err:
        raise DataError(
            f"{path} is not a readable Parquet file ({str(err).splitlines()[0]}); give a catalog "
            "written by galaxy10 catalog"
        ) from None
    raw = (schema.metadata or {}).get(b"galaxy10")
    if raw is None:
        raise DataError(f"{path} was not written by galaxy10 catalog (no galaxy10 metadata); give such a catalog")
    if need_embedding and "embedding" not in schema.names:
        raise DataError(
            f"{path} has no embedding column; write the catalog with galaxy10 catalog "
            "--with-embedding, or give --model to search in that model's space"
        )
    return json.loads(raw)


def _new_index(d: int, n_rows: int, exact_max_rows: int) -> Any:
    import faiss

    if n_rows <= exact_max_rows:
        return faiss.IndexFlatIP(d)
    index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efSearch = HNSW_EF_SEARCH
    return index


def row_images(columns: dict[str, np.ndarray]) -> list[np.ndarray | None]:
    """The pixels of catalog rows from their sources (HDF5 rows read per file in index order, image files
    decoded one by one); None for a row whose source cannot be read."""
    from experiments.catalog.job import decode_file
    from pipelines.reader import Galaxy10File

    sources, n = columns["source"], len(columns["source"])
    indices = columns.get("source_index")
    out: list[np.ndarray | None] = [None] * n
    by_file: dict[str, list[int]] = {}
    for i in range(n):
        idx = None if indices is None else indices[i]
        if idx is None or (isinstance(idx, float) and np.isnan(idx)):
            out[i] = decode_file(str(sources[i]))[0]
        else:
            by_file.setdefault(str(sources[i]), []).append(i)
    for source, rows in by_file.items():
        try:
            with Galaxy10File(source) as f:  # reads in sorted order, returns in request order, repeats allowed
                images = np.asarray(f.images(np.asarray([int(indices[i]) for i in rows])))
        except (OSError, ValueError, DataError) as err:
            log.warning("cannot read %s (%s); its %d row(s) are left out", source, str(err).splitlines()[0], len(rows))
            continue
        for i, image in zip(rows, images, strict=True):
            out[i] = image
    return out


def embed_rows(
    images: list[np.ndarray | None], embed: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, vectors)``: the embeddings of the readable images, one model call per image size."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        if image is not None:
            by_shape.setdefault(np.shape(image), []).append(i)
    kept = np.asarray(sorted(i for rows in by_shape.values() for i in rows), dtype=np.int64)
    vectors: dict[int, np.ndarray] = {}
    for rows in by_shape.values():
        for i, v in zip(rows, np.asarray(embed(np.stack([images[i] for i in rows])), dtype=np.float32), strict=True):
            vectors[i] = v
    return kept, np.stack([vectors[i] for i in kept]) if len(kept) else np.zeros((0, 0), np.float32)


def build_index(
    path: str | Path,
    *,
    exact_max_rows: int = EXACT_MAX_ROWS,
    embed: Callable[[np.ndarray], np.ndarray] | None = None,
    batch_rows: int = 65_536,
) -> EmbeddingIndex:
    """A faiss index of the catalog: its embedding column (read in record batches), or, with ``embed``, the
    rows' images read again from their sources and embedded by ``embed`` (another model's space, e.g. an
    encoder of ``galaxy10 pretrain``); rows without an embedding or an unreadable source are left out."""
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"catalog {path} does not exist; write one with galaxy10 catalog"
            + ("" if embed is not None else " --with-embedding")
        )
    meta = catalog_metadata(path, need_embedding=embed is None)
    parquet = pq.ParquetFile(path)
    n_rows = parquet.metadata.num_rows
    columns = [c for c in INFO_COLUMNS if c in parquet.schema_arrow.names]
    if embed is not None and "source" not in columns:
        raise DataError(f"{path} has no source column to read its images from; write it with galaxy10 catalog")
    info: dict[str, list] = {c: [] for c in columns}
    index = None
    read = columns if embed is not None else [*columns, "embedding"]
    with tqdm(total=n_rows, desc="embed catalog", unit="img", disable=None if embed is not None else True) as bar:
        for batch in parquet.iter_batches(columns=read, batch_size=batch_rows if embed is None else 512):
            values = {c: batch.column(c).to_numpy(zero_copy_only=False) for c in columns}
            if embed is None:
                emb = batch.column("embedding")
                valid = np.asarray(emb.is_valid())
                keep = np.flatnonzero(valid)
                vectors = (
                    np.stack([np.asarray(v, dtype=np.float32) for v, k in zip(emb.to_pylist(), valid) if k])
                    if len(keep)
                    else None
                )
            else:
                keep, vectors = embed_rows(row_images(values), embed)
                bar.update(batch.num_rows)
            if not len(keep):
                continue
            if index is None:
                index = _new_index(vectors.shape[1], n_rows, exact_max_rows)
            index.add(normalise(vectors))
            for c in columns:
                info[c].append(values[c][keep])
    if index is None:
        raise DataError(
            f"{path} has no row with an embedding" + (" or a readable source" if embed else "") + "; nothing to search"
        )
    skipped = n_rows - index.ntotal
    log.info(
        "indexed %d embeddings of %s (%s)%s",
        index.ntotal,
        path.name,
        type(index).__name__,
        f"; {skipped} row(s) without one left out" if skipped else "",
    )
    return EmbeddingIndex(index, {c: np.concatenate(v) for c, v in info.items()}, meta, path)
