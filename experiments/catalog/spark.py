"""``galaxy10 catalog --engine spark``: the same catalog as a Spark job, the model run by ``mlflow.pyfunc.spark_udf``.

The rows (the same segments and order as the native job) become a Spark DataFrame. Executors read each
row's pixels (an HDF5 row or an image file: the paths must be readable on every executor, e.g. a shared
file system) and apply the model's own preprocessing (square crop, resize, centre crop) and, for a model
with test-time augmentation, its 8 dihedral views, as flat float32 arrays. The model itself runs through
``mlflow.pyfunc.spark_udf``, once per view: the loaded CNN saved as a local pyfunc model
(``experiments.tracking.pyfunc.save_spark_cnn_model``: its own ``.keras`` file, loaded on the executors with
the platform's layers registered - MLflow's keras flavour alone would not know the D4 layers there - and
called without Keras' progress bar; its tensor signature reshapes each array to an image). The
columns (mean over views, temperature scaling, entropy, view disagreement, prediction) are computed by
the same functions as the native job, and the driver streams the rows, ordered by ``row``, into the same
Parquet schema through a temporary file. Spark does the distribution; nothing here schedules work.

Out-of-distribution scores: the driver fits the detector as the native job does (the model's own
validation split) and ships the CNN as a ``.keras`` file (``SparkContext.addFile``); executors load it once
per Python worker, embed the untransformed view and score it with the detector's class means and precision.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from augment.tta import N_VIEWS, dihedral_view, mean_of_views
from core.errors import ConfigError, Galaxy10Error, first_line
from core.files import atomic_path
from ensembles.calibration import apply_temperature
from experiments.catalog.columns import (
    catalog_schema,
    entropy,
    probability_columns,
    view_disagreement,
    with_catalog_metadata,
)
from experiments.catalog.inputs import CatalogInputs
from experiments.catalog.job import CatalogResult, decode_file
from experiments.catalog.ood import OODDetector
from pipelines.preprocess import prepare_images
from pipelines.reader import Galaxy10File

log = logging.getLogger(__name__)

ROW_COLUMNS = ("row", "id", "source", "source_index", "ra", "dec")


def _row_frame(inputs: CatalogInputs) -> pd.DataFrame:
    refs = inputs.rows(0, inputs.n_rows)
    return pd.DataFrame(
        {
            "row": [r.row for r in refs],
            "id": [r.id for r in refs],
            "source": [r.source for r in refs],
            "source_index": pd.array([r.index for r in refs], dtype="Int64"),
            "ra": [np.nan if r.ra is None else r.ra for r in refs],
            "dec": [np.nan if r.dec is None else r.dec for r in refs],
        }
    )


def _prepare(batches: Iterator[pd.DataFrame], *, size: int, crop: int, n_views: int) -> Iterator[pd.DataFrame]:
    """Executor side: pixels -> the model's crops (each view flattened), or the error of an unreadable image."""
    files: dict[str, Galaxy10File] = {}
    try:
        for df in batches:
            crops = np.zeros((len(df), crop, crop, 3), dtype=np.uint8)
            errors: list[str | None] = [None] * len(df)
            for i, (source, index) in enumerate(zip(df["source"], df["source_index"], strict=True)):
                try:
                    if pd.notna(index):
                        if source not in files:
                            files[source] = Galaxy10File(source)
                        image = files[source].images([int(index)])[0]
                    else:
                        image, errors[i] = decode_file(source)
                    if image is not None:
                        crops[i] = prepare_images(image[None], size=size, crop=crop)[0]
                except (Galaxy10Error, OSError, ValueError) as err:
                    errors[i] = first_line(err)
            out = df.copy()
            for j in range(n_views):
                view = dihedral_view(crops, j).astype(np.float32).reshape(len(df), -1)
                out[f"view_{j}"] = list(view)
            out["error"] = errors
            yield out
    finally:
        for f in files.values():
            f.close()


#: Executor side: the embedding models loaded in this Python worker, by shipped file name.
_EMBEDDERS: dict[str, Any] = {}


def _embedder(file_name: str) -> Any:
    """The ``[embedding, probabilities]`` model of the CNN shipped as ``file_name`` (loaded once per worker)."""
    if file_name not in _EMBEDDERS:
        from pyspark import SparkFiles

        from ensembles.embeddings import dual_output_model
        from models.layers import load_keras_file

        _EMBEDDERS[file_name] = dual_output_model(load_keras_file(SparkFiles.get(file_name)))
    return _EMBEDDERS[file_name]


def _embed_rows(
    batches: Iterator[pd.DataFrame], *, model_file: str, detector: OODDetector | None, crop: int, with_embedding: bool
) -> Iterator[pd.DataFrame]:
    """Executor side: each readable row's CNN embedding of the untransformed view (``view_0``): its
    out-of-distribution score (with a detector) and, if asked, the embedding itself."""
    from ensembles.embeddings import embed_images

    for df in batches:
        out = df.copy()
        ok = np.flatnonzero(df["error"].isna().to_numpy())
        emb = None
        if len(ok):
            crops = np.stack(df["view_0"].to_numpy()[ok]).reshape(len(ok), crop, crop, 3).astype(np.uint8)
            emb = embed_images(_embedder(model_file), crops, input_size=crop, progress=False)[0]
        if detector is not None:
            scores = np.full(len(df), np.nan, dtype=np.float32)
            if emb is not None:
                scores[ok] = detector.score(emb).astype(np.float32)
            out["ood_score"] = scores
        if with_embedding:
            rows: list[Any] = [None] * len(df)
            for k, i in enumerate(ok):
                rows[i] = emb[k].astype(np.float32)
            out["embedding"] = rows
        yield out


def _finish(
    batches: Iterator[pd.DataFrame],
    *,
    class_names: Sequence[str],
    n_views: int,
    temperature: float,
    threshold: float | None,
    with_embedding: bool,
) -> Iterator[pd.DataFrame]:
    """Executor side: the catalog's columns from the per-view probabilities, as the native job computes them."""
    prob_cols = probability_columns(class_names)
    for df in batches:
        views = np.stack([np.stack(df[f"p_view_{j}"].to_numpy()).astype(np.float32) for j in range(n_views)])
        ok = df["error"].isna().to_numpy()
        probs = apply_temperature(mean_of_views(views), temperature)
        top = probs.argmax(axis=1)
        out = df[list(ROW_COLUMNS)].copy()
        out["predicted"] = [class_names[t] if k else None for t, k in zip(top, ok, strict=True)]
        out["predicted_index"] = pd.array([int(t) if k else None for t, k in zip(top, ok, strict=True)], dtype="Int16")
        for c, name in enumerate(prob_cols):
            out[name] = np.where(ok, probs[:, c], np.nan).astype(np.float32)
        out["max_probability"] = np.where(ok, probs.max(axis=1), np.nan).astype(np.float32)
        out["entropy"] = np.where(ok, entropy(probs), np.nan).astype(np.float32)
        out["view_disagreement"] = np.where(ok, view_disagreement(views), np.nan).astype(np.float32)
        out["n_views"] = pd.array([n_views if k else None for k in ok], dtype="Int8")
        if threshold is None:
            out["ood_score"] = np.full(len(df), np.nan, dtype=np.float32)
            out["ood_flag"] = pd.array([None] * len(df), dtype="boolean")
        else:
            scores = df["ood_score"].to_numpy(dtype=np.float32)
            out["ood_score"] = scores
            out["ood_flag"] = pd.array(
                [bool(v > threshold) if np.isfinite(v) else None for v in scores], dtype="boolean"
            )
        out["error"] = df["error"]
        if with_embedding:
            out["embedding"] = df["embedding"]
        yield out


def _spark_schema(class_names: Sequence[str], *, embedding: bool = False) -> Any:
    from pyspark.sql.types import (
        ArrayType,
        BooleanType,
        ByteType,
        DoubleType,
        FloatType,
        LongType,
        ShortType,
        StringType,
        StructField,
        StructType,
    )

    kinds = {
        pa.int64(): LongType(),
        pa.string(): StringType(),
        pa.float64(): DoubleType(),
        pa.float32(): FloatType(),
        pa.int16(): ShortType(),
        pa.int8(): ByteType(),
        pa.bool_(): BooleanType(),
        pa.list_(pa.float32()): ArrayType(FloatType()),
    }
    return StructType(
        [StructField(f.name, kinds[f.type], f.nullable) for f in catalog_schema(class_names, embedding=embedding)]
    )


def spark_session(master: str) -> Any:
    """A Spark session on ``master`` (``local[*]`` on one machine; a cluster's master URL in production)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigError(
            "--engine spark needs pyspark and Java 17: pip install 'galaxy10-platform[spark]' and "
            "install a Java 17 runtime (e.g. Debian's openjdk-17-jre-headless)"
        ) from None
    logging.getLogger("py4j").setLevel(logging.WARNING)  # its connection notes, even at interpreter exit
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # executors run this environment's Python
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    try:
        return (
            SparkSession.builder.master(master)
            .appName("galaxy10-catalog")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config("spark.sql.execution.arrow.maxRecordsPerBatch", "256")
            .config("spark.ui.showConsoleProgress", "false")
            .getOrCreate()
        )
    except Exception as err:  # noqa: BLE001 - Java missing, bad master URL: one line for the user
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"cannot start Spark on {master} ({first}); check --spark-master and that Java 17 is installed (JAVA_HOME)"
        ) from None


def run_catalog_spark(
    inputs: CatalogInputs,
    predictor: Any,
    out: str | os.PathLike,
    *,
    master: str = "local[*]",
    partitions: int | None = None,
    spark: Any = None,
    ood: OODDetector | Callable[[], OODDetector] | None = None,
    with_embedding: bool = False,
) -> CatalogResult:
    """Write the catalog of ``inputs`` with Spark (see the module docstring); returns what was done.

    ``ood``: the out-of-distribution detector (or a function that fits one), as for the native job; None
    leaves the OOD columns null. ``with_embedding`` adds each row's CNN embedding (``embedding``), as the
    native job does.
    """
    card = predictor.card
    if card.kind != "keras" or predictor.cnn is None:
        raise ConfigError(
            f"--engine spark runs Keras models through mlflow.pyfunc.spark_udf; model {card.uri} is a "
            f"{card.kind} model: use the native engine for it"
        )
    tta = str(card.extra.get("tta", "")).lower() == "true"
    n_views = N_VIEWS if tta else 1
    out = Path(out)
    started = time.perf_counter()
    detector = ood() if callable(ood) and not isinstance(ood, OODDetector) else ood
    session = spark or spark_session(master)
    try:
        with tempfile.TemporaryDirectory(prefix="galaxy10-spark-") as tmp:
            from experiments.tracking.pyfunc import save_spark_cnn_model

            # the CNN, saved once, travels to the executors inside the pyfunc model spark_udf applies and (for
            # the embedding) as a file of its own; a unique name, as addFile refuses a name twice per context
            cnn_file = Path(tmp) / f"galaxy10-cnn-{os.getpid()}-{time.time_ns()}.keras"
            predictor.cnn.save(cnn_file)
            model_dir = save_spark_cnn_model(
                cnn_file, Path(tmp) / "pyfunc", crop=card.crop, n_classes=len(card.class_names)
            )
            model_file = None
            if detector is not None or with_embedding:
                session.sparkContext.addFile(str(cnn_file))
                model_file = cnn_file.name
            n_errors = _run(
                session,
                inputs,
                card,
                out,
                master=master,
                partitions=partitions,
                n_views=n_views,
                model_dir=model_dir,
                detector=detector,
                model_file=model_file,
                with_embedding=with_embedding,
            )
    finally:
        if spark is None:  # a session this call started
            session.stop()
    return CatalogResult(
        out=out, n_rows=inputs.n_rows, n_errors=n_errors, resumed_rows=0, seconds=time.perf_counter() - started
    )


def _run(
    session: Any,
    inputs: CatalogInputs,
    card: Any,
    out: Path,
    *,
    master: str,
    partitions: int | None,
    n_views: int,
    model_dir: Path,
    detector: OODDetector | None,
    model_file: str | None,
    with_embedding: bool,
) -> int:
    from experiments.tracking.pyfunc import spark_model_udf

    names = list(card.class_names)
    rows = session.createDataFrame(_row_frame(inputs))
    if partitions:
        rows = rows.repartition(partitions)
    view_fields = ", ".join(f"view_{j} array<float>" for j in range(n_views))
    ddl = f"row long, id string, source string, source_index long, ra double, dec double, {view_fields}, error string"
    prepared = rows.mapInPandas(functools.partial(_prepare, size=card.size, crop=card.crop, n_views=n_views), ddl)
    if model_file is not None:
        ddl += (", ood_score float" if detector is not None else "") + (
            ", embedding array<float>" if with_embedding else ""
        )
        prepared = prepared.mapInPandas(
            functools.partial(
                _embed_rows, model_file=model_file, detector=detector, crop=card.crop, with_embedding=with_embedding
            ),
            ddl,
        )
    model = spark_model_udf(session, model_dir)
    for j in range(n_views):
        prepared = prepared.withColumn(f"p_view_{j}", model(f"view_{j}")).drop(f"view_{j}")
    threshold = None if detector is None else detector.threshold
    finished = prepared.mapInPandas(
        functools.partial(
            _finish,
            class_names=names,
            n_views=n_views,
            temperature=card.temperature,
            threshold=threshold,
            with_embedding=with_embedding,
        ),
        _spark_schema(names, embedding=with_embedding),
    )
    schema = with_catalog_metadata(
        catalog_schema(names, embedding=with_embedding),
        card,
        inputs_fingerprint=inputs.fingerprint(),
        n_rows=inputs.n_rows,
        engine="spark",
        ood=None if detector is None else detector.describe(),
        spark_master=master,
    )
    n_errors = 0
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        batch: list[Any] = []
        for rec in finished.orderBy("row").toLocalIterator(prefetchPartitions=True):
            batch.append(rec.asDict())
            if len(batch) >= 4096:
                n_errors += _write(writer, batch, schema)
                batch = []
        if batch:
            n_errors += _write(writer, batch, schema)
    return n_errors


def _write(writer: Any, records: list[dict[str, Any]], schema: pa.Schema) -> int:
    """Write rows (NaN floats become nulls, as the native job writes them); return the error rows."""
    floats = [f.name for f in schema if pa.types.is_floating(f.type)]
    for rec in records:
        for name in floats:
            value = rec.get(name)
            if value is not None and value != value:
                rec[name] = None
    table = pa.Table.from_pylist(records, schema=schema)
    writer.write_table(table)
    return len(table) - table.column("error").null_count
