"""``galaxy10 similar``: a catalog's embeddings as a faiss index; the query itself comes back first."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.errors import DataError
from experiments.cli import main
from experiments.similarity.index import build_index


def _catalog(path: Path, vectors: np.ndarray) -> Path:
    n = len(vectors)
    table = pa.table(
        {
            "row": np.arange(n),
            "id": [f"g{i}" for i in range(n)],
            "source": ["x.h5"] * n,
            "source_index": np.arange(n),
            "predicted": ["a"] * n,
            "embedding": pa.array([v.tolist() for v in vectors], pa.list_(pa.float32())),
        }
    )
    table = table.replace_schema_metadata({b"galaxy10": json.dumps({"model_uri": "m"}).encode()})
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize("exact_max_rows", [10_000, 10])  # exact, and the HNSW graph
def test_the_index_finds_each_row_itself_first(tmp_path: Path, exact_max_rows: int) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    index = build_index(_catalog(tmp_path / "c.parquet", vectors), exact_max_rows=exact_max_rows)
    assert index.n == 300 and index.dim == 16
    sims, pos = index.search(vectors[[5, 77, 299]] * 3.0, 4)  # any length: cosine
    assert pos[:, 0].tolist() == [5, 77, 299] and np.allclose(sims[:, 0], 1.0, atol=1e-4)
    assert (np.diff(sims, axis=1) <= 1e-6).all()
    with pytest.raises(DataError, match="16"):
        index.search(np.zeros((1, 8), np.float32), 3)


def test_catalogs_without_embeddings_are_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"row": [0]}), plain)
    with pytest.raises(DataError, match="not written by galaxy10 catalog"):
        build_index(plain)
    no_emb = tmp_path / "noemb.parquet"
    pq.write_table(pa.table({"row": [0]}).replace_schema_metadata({b"galaxy10": b"{}"}), no_emb)
    with pytest.raises(DataError, match="--with-embedding"):
        build_index(no_emb)
    with pytest.raises(DataError, match="does not exist"):
        build_index(tmp_path / "nope.parquet")


@pytest.mark.slow
def test_similar_returns_the_query_itself_first(smoke_model, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """A catalog of the smoke model's file with embeddings; a row of that file as the query comes back first,
    and --out writes the table and the gallery."""
    data = smoke_model.data_path
    catalog = tmp_path / "cat.parquet"
    assert (
        main(
            [
                "catalog",
                f"{data}",
                "--out",
                str(catalog),
                "--with-embedding",
                "--model",
                f"{smoke_model.registered_name}@champion",
                "--tracking-uri",
                smoke_model.tracking_uri,
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "similar",
                f"{data}:7",
                f"{data}:42",
                "--catalog",
                str(catalog),
                "--k",
                "3",
                "--out",
                str(tmp_path / "sim"),
                "--tracking-uri",
                smoke_model.tracking_uri,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()[1:] if line.strip() and not line.startswith("written")]
    firsts = [r for r in rows if r[1] == "1"]
    assert [int(r[3]) for r in firsts] == [7, 42]  # the query itself, similarity 1
    assert all(float(r[2]) > 0.999 for r in firsts)
    html = (tmp_path / "sim" / "similar.html").read_text()
    assert html.count('class="query"') == 2 and html.count("data:image/png;base64,") == 8
    assert (tmp_path / "sim" / "similar.csv").read_text().count("\n") == 7


def test_another_models_space_embeds_the_catalog_rows_from_their_sources(tmp_path: Path, make_h5) -> None:  # noqa: ANN001
    """With an encoder the index holds the rows' images embedded by it (not the catalog's column): each row's
    own image finds itself first; rows whose source cannot be read are left out."""
    import h5py

    data = make_h5(n=30, size=16)
    with h5py.File(data, "r") as f:
        pixels = np.asarray(f["images"])
    rng = np.random.default_rng(0)
    projection = rng.normal(size=(16 * 16 * 3, 8)).astype(np.float32)

    def embed(images: np.ndarray) -> np.ndarray:
        return (images.reshape(len(images), -1).astype(np.float32) - 128) @ projection

    n = 30
    table = pa.table(
        {
            "row": np.arange(n + 1),
            "id": [f"g{i}" for i in range(n + 1)],
            "source": [str(data)] * n + [str(tmp_path / "gone.png")],
            "source_index": pa.array([*range(n), None], pa.int64()),
            "predicted": ["a"] * (n + 1),
            "embedding": pa.array([[0.0, 1.0]] * (n + 1), pa.list_(pa.float32())),
        }
    )
    path = tmp_path / "c.parquet"
    pq.write_table(table.replace_schema_metadata({b"galaxy10": json.dumps({"model_uri": "m"}).encode()}), path)
    index = build_index(path, embed=embed)
    assert index.n == n and index.dim == 8  # the unreadable row is left out; the 2-d column is not used
    sims, pos = index.search(embed(pixels[[3, 17]]), 2)
    assert index.info["row"][pos[:, 0]].tolist() == [3, 17] and np.allclose(sims[:, 0], 1.0, atol=1e-4)


@pytest.mark.slow
def test_similar_searches_in_a_pretrained_encoders_space(smoke_model, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """``galaxy10 similar --model`` with an encoder of ``galaxy10 pretrain`` (no classes): the catalog's rows
    are embedded by it and the query comes back first."""
    data, uri = smoke_model.data_path, smoke_model.tracking_uri
    catalog = tmp_path / "cat.parquet"
    assert (
        main(
            [
                "catalog",
                f"{data}",
                "--out",
                str(catalog),
                "--model",
                f"{smoke_model.registered_name}@champion",
                "--tracking-uri",
                uri,
            ]
        )
        == 0
    )  # no embedding column at all
    smoke = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "smoke.yaml"
    assert (
        main(
            [
                "pretrain",
                str(data),
                "--config",
                str(smoke),
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--checkpoint-dir",
                str(tmp_path / "ck"),
                "--name",
                "enc",
                "--tracking-uri",
                uri,
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "similar",
                f"{data}:11",
                "--catalog",
                str(catalog),
                "--model",
                "enc@pretrained",
                "--k",
                "2",
                "--out",
                str(tmp_path / "sim"),
                "--tracking-uri",
                uri,
            ]
        )
        == 0
    )
    rows = [
        line.split()
        for line in capsys.readouterr().out.splitlines()[1:]
        if line.strip() and not line.startswith("written")
    ]
    assert rows[0][1] == "1" and int(rows[0][3]) == 11 and float(rows[0][2]) > 0.999
    assert "enc@pretrained" in (tmp_path / "sim" / "similar.html").read_text()
