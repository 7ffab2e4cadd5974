"""The catalog job: chunks of rows decoded in parallel with the model, written as parts, merged at the end.

Exactly once, whatever happens: each chunk of ``chunk_size`` rows is written to its own Parquet part in a
hidden folder beside the output (``.<name>.parts/``), through a temporary file renamed into place, so a
part either exists whole or not at all. A job killed at any point (SIGKILL included) is resumed by the
same command: the parts folder's ``job.json`` must describe the same inputs, model and chunk size, the
finished parts are kept and the others computed. When every part exists they are merged, in row order,
into the output (again through a temporary file), and the parts folder, which only this job wrote, is
removed. Chunks hold the same rows for any number of ``workers`` and are predicted in the same batches,
so the catalog does not depend on the number of workers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from augment.tta import mean_of_views
from core.errors import DataError, Galaxy10Error, first_line
from core.files import atomic_path, write_json_atomic
from experiments.catalog.columns import (
    SCHEMA_VERSION,
    catalog_schema,
    entropy,
    probability_columns,
    view_disagreement,
    with_catalog_metadata,
)
from experiments.catalog.inputs import CatalogInputs, RowRef
from experiments.catalog.ood import OODDetector
from pipelines.images import decode_image
from pipelines.reader import Galaxy10File

log = logging.getLogger(__name__)

#: Rows per part file (one unit of resumption).
DEFAULT_CHUNK = 1024
#: Images per model call.
DEFAULT_BATCH = 64
#: Test hook: SIGKILL this process after writing this many parts (and leave a half-written temp file).
KILL_AFTER_ENV = "GALAXY10_TEST_CATALOG_KILL_AFTER_PARTS"
MANIFEST = "job.json"
OOD_FILE = "ood.npz"


@dataclass(frozen=True)
class CatalogResult:
    """What one ``galaxy10 catalog`` call did."""

    out: Path
    n_rows: int
    n_errors: int
    resumed_rows: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        done = self.n_rows - self.resumed_rows
        return done / self.seconds if self.seconds > 0 else float("nan")


def parts_dir(out: str | os.PathLike) -> Path:
    """The hidden folder of a job's finished parts, beside its output."""
    out = Path(out)
    return out.parent / f".{out.name}.parts"


def _part(folder: Path, k: int) -> Path:
    return folder / f"part-{k:06d}.parquet"


class _Decoder:
    """Reads a chunk's pixels: HDF5 rows in one read per file, image files on ``workers`` threads."""

    def __init__(self, workers: int) -> None:
        self.pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="catalog-decode")
        self.files: dict[str, Galaxy10File] = {}

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for f in self.files.values():
            f.close()

    def _h5(self, source: str) -> Galaxy10File:
        if source not in self.files:
            self.files[source] = Galaxy10File(source)
        return self.files[source]

    def decode(self, refs: Sequence[RowRef]) -> list[tuple[np.ndarray | None, str | None]]:
        out: list[tuple[np.ndarray | None, str | None]] = [(None, None)] * len(refs)
        by_h5: dict[str, list[int]] = {}
        files: list[int] = []
        for i, ref in enumerate(refs):
            (by_h5.setdefault(ref.source, []) if ref.index is not None else files).append(i)
        for source, positions in by_h5.items():
            images = self._h5(source).images([refs[i].index for i in positions])
            for i, image in zip(positions, images, strict=True):
                out[i] = (image, None)
        for i, result in zip(files, self.pool.map(decode_file, [refs[i].source for i in files]), strict=True):
            out[i] = result
        return out


def decode_file(path: str) -> tuple[np.ndarray | None, str | None]:
    """An image file's pixels, or ``(None, the first line of why it cannot be read)``: a row, not a crash."""
    try:
        return decode_image(path, path, fix="replace or remove the file"), None
    except (Galaxy10Error, OSError, ValueError) as err:
        return None, first_line(err)


def _predict_chunk(
    predictor: Any,
    decoded: Sequence[tuple[np.ndarray | None, str | None]],
    batch_size: int,
    n_classes: int,
    ood: OODDetector | None = None,
    with_embedding: bool = False,
) -> tuple[np.ndarray, np.ndarray, int, np.ndarray, list | None]:
    """Mean probabilities ``(n, C)`` (NaN for errors), view disagreement ``(n,)``, the number of views, the
    out-of-distribution scores ``(n,)`` (NaN without a detector) and, if asked, each row's embedding."""
    probs = np.full((len(decoded), n_classes), np.nan, dtype=np.float32)
    disagreement = np.full(len(decoded), np.nan, dtype=np.float64)
    scores = np.full(len(decoded), np.nan, dtype=np.float64)
    embeddings: list | None = [None] * len(decoded) if with_embedding else None
    n_views = 0
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, (image, _) in enumerate(decoded):
        if image is not None:
            by_shape.setdefault(image.shape, []).append(i)
    for rows in by_shape.values():  # row order within a shape, the same batches for any worker count
        for start in range(0, len(rows), batch_size):
            idx = rows[start : start + batch_size]
            batch = np.stack([decoded[i][0] for i in idx])
            views = predictor.predict_views(batch)
            probs[idx] = predictor.calibrate(mean_of_views(views))
            disagreement[idx] = view_disagreement(views)
            n_views = len(views)
            if ood is not None or embeddings is not None:
                emb = predictor.embed(batch)
                if ood is not None:
                    scores[idx] = ood.score(emb)
                if embeddings is not None:
                    for i, row in zip(idx, emb, strict=True):
                        embeddings[i] = row.astype(np.float32)
    return probs, disagreement, n_views, scores, embeddings


def _chunk_table(
    refs: Sequence[RowRef],
    decoded: Sequence[tuple[np.ndarray | None, str | None]],
    probs: np.ndarray,
    disagreement: np.ndarray,
    n_views: int,
    scores: np.ndarray,
    ood: OODDetector | None,
    class_names: Sequence[str],
    schema: pa.Schema,
    embeddings: list | None = None,
) -> pa.Table:
    ok = ~np.isnan(probs).any(axis=1)
    top = np.where(ok, np.nan_to_num(probs).argmax(axis=1), -1)
    cols: dict[str, Any] = {
        "row": [r.row for r in refs],
        "id": [r.id for r in refs],
        "source": [r.source for r in refs],
        "source_index": [r.index for r in refs],
        "ra": [r.ra for r in refs],
        "dec": [r.dec for r in refs],
        "predicted": [class_names[t] if t >= 0 else None for t in top],
        "predicted_index": [int(t) if t >= 0 else None for t in top],
    }
    for c, name in enumerate(probability_columns(class_names)):
        cols[name] = pa.array(probs[:, c], mask=~ok, type=pa.float32())
    cols["max_probability"] = pa.array(np.nan_to_num(probs).max(axis=1), mask=~ok, type=pa.float32())
    cols["entropy"] = pa.array(entropy(np.nan_to_num(probs)).astype(np.float32), mask=~ok, type=pa.float32())
    cols["view_disagreement"] = pa.array(
        disagreement.astype(np.float32), mask=np.isnan(disagreement), type=pa.float32()
    )
    cols["n_views"] = [n_views if k else None for k in ok]
    no_score = np.isnan(scores)
    cols["ood_score"] = pa.array(scores.astype(np.float32), mask=no_score, type=pa.float32())
    flags = scores > (ood.threshold if ood is not None else np.inf)
    cols["ood_flag"] = pa.array(flags, mask=no_score, type=pa.bool_())
    cols["error"] = [err for _, err in decoded]
    if embeddings is not None:
        cols["embedding"] = embeddings
    return pa.Table.from_pydict(cols, schema=schema)


def _check_manifest(folder: Path, manifest: dict, restart: bool) -> None:
    path = folder / MANIFEST
    if not folder.exists():
        return
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        previous = None
    if previous is None:
        raise DataError(
            f"{folder} exists but holds no catalog job description; move it away (galaxy10 did not "
            "write it) or choose another --out"
        )
    if previous == manifest and not restart:
        return
    if not restart:
        changed = [k for k in manifest if previous.get(k) != manifest[k]]
        raise DataError(
            f"an unfinished catalog job for this --out was started with other {', '.join(changed)}; "
            "rerun it with the same inputs and options to finish it, or add --restart to discard it"
        )
    ours = (MANIFEST, OOD_FILE)
    if any(
        p.name not in ours and not p.name.startswith(("part-", ".part-", ".job.json", ".ood.npz"))
        for p in folder.iterdir()
    ):
        raise DataError(f"{folder} holds files galaxy10 did not write; move them away before --restart")
    shutil.rmtree(folder)


def _detector(folder: Path, ood: OODDetector | Callable[[], OODDetector] | None) -> OODDetector | None:
    """The job's detector: the one kept with its parts, else ``ood`` (fitted now if it is a function)."""
    if ood is None:
        return None
    kept = folder / OOD_FILE
    if kept.is_file():
        return OODDetector.load(kept)
    detector = ood if isinstance(ood, OODDetector) else ood()
    detector.save(kept)
    return detector


def _maybe_die(written: int) -> None:
    """The fault-injection hook of the resume test: SIGKILL once ``written`` parts are finished."""
    limit = os.environ.get(KILL_AFTER_ENV)
    if limit and written >= int(limit):
        os.kill(os.getpid(), signal.SIGKILL)


def run_catalog(
    inputs: CatalogInputs,
    predictor: Any,
    out: str | os.PathLike,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    workers: int = 1,
    batch_size: int = DEFAULT_BATCH,
    restart: bool = False,
    ood: OODDetector | Callable[[], OODDetector] | None = None,
    with_embedding: bool = False,
) -> CatalogResult:
    """Predict every row of ``inputs`` with ``predictor`` and write the Parquet catalog ``out``.

    Parameters
    ----------
    inputs : CatalogInputs
        The planned inputs (:func:`experiments.catalog.inputs.plan_catalog_inputs`).
    predictor : experiments.serving.predictor.Predictor
        The model with its own preprocessing; its test-time views give ``view_disagreement``.
    out : path
        The catalog file (checked by the caller: missing, or written by galaxy10, or ``--force``).
    chunk_size, workers, batch_size : int
        Rows per part (the unit of resumption), decoding threads, images per model call.
    restart : bool
        Discard an unfinished job's parts instead of resuming it.
    ood : OODDetector, or a function that fits one, or None
        Out-of-distribution scores and flags. A function is called only when the job has no detector yet;
        the fitted detector is kept with the parts, so a resumed job scores with the same one.
    with_embedding : bool
        Add each row's CNN embedding (``embedding``, a list of float32), for similarity search or clustering.
    """
    out = Path(out)
    card = predictor.card
    class_names = list(card.class_names)
    if with_embedding and not predictor.can_embed:
        raise DataError(
            f"model {card.uri} gives no embeddings; drop --with-embedding or use a CNN or a galaxy10 ensemble"
        )
    schema = catalog_schema(class_names, embedding=with_embedding)
    manifest = {
        "inputs": inputs.fingerprint(),
        "model": card.uri,
        "model_version": card.version,
        "chunk_size": int(chunk_size),
        "n_rows": inputs.n_rows,
        "class_names": class_names,
        "schema_version": SCHEMA_VERSION,
        "ood": ood is not None,
        "embedding": with_embedding,
    }
    folder = parts_dir(out)
    _check_manifest(folder, manifest, restart)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / MANIFEST, manifest)
    detector = _detector(folder, ood)
    n = inputs.n_rows
    n_chunks = -(-n // chunk_size)
    todo = [k for k in range(n_chunks) if not _part(folder, k).is_file()]
    resumed = n - sum(min(chunk_size, n - k * chunk_size) for k in todo)
    if resumed:
        log.info("resuming: %d of %d rows were already predicted (%s)", resumed, n, folder)
    started = time.perf_counter()
    decoder = _Decoder(workers)
    prefetch = ThreadPoolExecutor(1, thread_name_prefix="catalog-prefetch")

    def load(k: int) -> tuple[list[RowRef], list]:
        refs = inputs.rows(k * chunk_size, min(n, (k + 1) * chunk_size))
        return refs, decoder.decode(refs)

    written = 0
    try:
        with tqdm(total=n, initial=resumed, desc="catalog", unit="img", disable=None, smoothing=0.1) as bar:
            pending: Future | None = prefetch.submit(load, todo[0]) if todo else None
            for i, k in enumerate(todo):
                refs, decoded = pending.result()
                pending = prefetch.submit(load, todo[i + 1]) if i + 1 < len(todo) else None  # decode ahead
                probs, disagreement, n_views, scores, embeddings = _predict_chunk(
                    predictor, decoded, batch_size, len(class_names), detector, with_embedding
                )
                table = _chunk_table(
                    refs, decoded, probs, disagreement, n_views, scores, detector, class_names, schema, embeddings
                )
                with atomic_path(_part(folder, k)) as tmp:
                    pq.write_table(table, tmp)
                    _maybe_die(written)  # the test hook dies here, holding an unfinished temporary part
                written += 1
                bar.update(len(refs))
    finally:
        prefetch.shutdown(wait=True, cancel_futures=True)
        decoder.close()
    seconds = time.perf_counter() - started
    schema = with_catalog_metadata(
        schema,
        card,
        inputs_fingerprint=manifest["inputs"],
        n_rows=n,
        engine="native",
        ood=detector.describe() if detector is not None else None,
    )
    n_errors = _merge(folder, n_chunks, out, schema)
    shutil.rmtree(folder)
    return CatalogResult(out=out, n_rows=n, n_errors=n_errors, resumed_rows=resumed, seconds=seconds)


def _merge(folder: Path, n_chunks: int, out: Path, schema: pa.Schema) -> int:
    """Concatenate the parts in row order into ``out`` (atomically, with ``schema``'s metadata); return the
    number of error rows."""
    n_errors = 0
    with atomic_path(out) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            for k in range(n_chunks):
                table = pq.read_table(_part(folder, k), schema=schema)
                n_errors += len(table) - table.column("error").null_count
                writer.write_table(table)
    return n_errors
