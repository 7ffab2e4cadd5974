"""A catalog's embedding column as a faiss index (cosine similarity on L2-normalised embeddings).

Up to :data:`EXACT_MAX_ROWS` rows the index is exact (``IndexFlatIP``); above, an HNSW graph
(``IndexHNSWFlat``, inner product), whose search time grows with the logarithm of the rows, so millions of
rows answer in milliseconds. The column is read in record batches; rows without an embedding (unreadable
images) are left out.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import DataError

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
            raise DataError(f"the query embeddings have {q.shape[1]} dimensions but {self.path.name}'s have "
                            f"{self.dim}; embed the queries with the catalog's model (or give --model)")
        sims, pos = self.index.search(q, min(k, self.n))
        return sims, pos


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def catalog_metadata(path: Path) -> dict[str, Any]:
    """The ``galaxy10`` metadata of a catalog written by ``galaxy10 catalog`` (one line if it is not one)."""
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not a readable Parquet file ({str(err).splitlines()[0]}); give a catalog "
                        "written by galaxy10 catalog") from None
    raw = (schema.metadata or {}).get(b"galaxy10")
    if raw is None:
        raise DataError(f"{path} was not written by galaxy10 catalog (no galaxy10 metadata); give such a catalog")
    if "embedding" not in schema.names:
        raise DataError(f"{path} has no embedding column; write the catalog with galaxy10 catalog "
                        "--with-embedding")
    return json.loads(raw)


def build_index(path: str | Path, *, exact_max_rows: int = EXACT_MAX_ROWS) -> EmbeddingIndex:
    """Read the catalog's embeddings (in record batches) into a faiss index."""
    import faiss
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise DataError(f"catalog {path} does not exist; write one with galaxy10 catalog --with-embedding")
    meta = catalog_metadata(path)
    parquet = pq.ParquetFile(path)
    n_rows = parquet.metadata.num_rows
    columns = [c for c in INFO_COLUMNS if c in parquet.schema_arrow.names]
    info: dict[str, list] = {c: [] for c in columns}
    index = None
    for batch in parquet.iter_batches(columns=[*columns, "embedding"], batch_size=65_536):
        emb = batch.column("embedding")
        keep = np.asarray(emb.is_valid())
        if not keep.any():
            continue
        vectors = np.stack([np.asarray(v, dtype=np.float32) for v, k in zip(emb.to_pylist(), keep) if k])
        if index is None:
            d = vectors.shape[1]
            if n_rows <= exact_max_rows:
                index = faiss.IndexFlatIP(d)
            else:
                index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
                index.hnsw.efSearch = HNSW_EF_SEARCH
        index.add(normalise(vectors))
        for c in columns:
            values = batch.column(c).to_numpy(zero_copy_only=False)
            info[c].append(values[keep])
    if index is None:
        raise DataError(f"{path} has no row with an embedding; nothing to search")
    log.info("indexed %d embeddings of %s (%s)", index.ntotal, path.name, type(index).__name__)
    return EmbeddingIndex(index, {c: np.concatenate(v) for c, v in info.items()}, meta, path)
