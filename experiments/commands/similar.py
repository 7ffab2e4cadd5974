"""``galaxy10 similar``: nearest neighbours of query images in a catalog's embedding column."""

from __future__ import annotations

import argparse

from experiments.commands.common import add_force_argument, add_tracking_uri_argument, workspace


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``galaxy10 similar``."""
    parser = subparsers.add_parser(
        "similar",
        help="nearest neighbours of galaxies in a catalog's embeddings (faiss)",
        description="Embed each query image with the model that wrote the catalog and list its nearest catalog "
        "rows by cosine similarity of the embedding column that `galaxy10 catalog --with-embedding` "
        "writes; with --model (a CNN, an ensemble or an encoder of `galaxy10 pretrain`) the search "
        "runs in that model's space instead: the catalog's rows are read from their sources and "
        "embedded by it. An exact faiss index up to 200,000 rows, an HNSW graph above. --out adds a "
        "CSV and an HTML gallery.",
    )
    parser.add_argument("queries", nargs="+", metavar="IMAGE", help="PNG/JPEG files, HDF5 files or FILE.h5:ROWS")
    parser.add_argument("--catalog", required=True, help="a Parquet catalog written with --with-embedding")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query (1-1000, default 10)")
    parser.add_argument(
        "--model",
        help="search in this model's space, e.g. pretrain-d4_cnn@pretrained "
        "(default: the catalog's own model and embedding column)",
    )
    parser.add_argument("--out", help="folder for similar.csv and similar.html")
    add_force_argument(parser, "results")
    add_tracking_uri_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Search and print one line per neighbour; write the CSV and the gallery with --out."""
    import csv
    import io
    from dataclasses import asdict
    from pathlib import Path

    from core.outputs import check_output_dir, output_dir
    from experiments.similarity.search import find_similar, gallery_html

    if args.out:
        check_output_dir(args.out, what="similarity results", force=args.force)
    neighbours, index, images = find_similar(args.queries, args.catalog, k=args.k, model=args.model, ws=workspace(args))
    print(f"{'query':<32} {'rank':>4} {'similarity':>10}  {'row':>8}  {'predicted':<24} id")
    for n in neighbours:
        print(f"{n.query[-32:]:<32} {n.rank:>4} {n.similarity:>10.4f}  {n.row:>8}  {n.predicted[:24]:<24} {n.id}")
    if args.out:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(asdict(neighbours[0])) if neighbours else ["query"])
        writer.writeheader()
        writer.writerows(asdict(n) for n in neighbours)
        with output_dir(args.out, what="similarity results", force=args.force) as tmp:
            (tmp / "similar.csv").write_text(buf.getvalue(), encoding="utf-8")
            (tmp / "similar.html").write_text(
                gallery_html(neighbours, images, Path(args.catalog), index.metadata), encoding="utf-8"
            )
        print(f"written to {args.out}/ (similar.csv, similar.html)")
    return 0
