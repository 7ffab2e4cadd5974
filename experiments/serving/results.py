"""Predictions as people read them: top-k classes, tables, CSV and JSON."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

import numpy as np

from core.errors import DataError

OUTPUT_FORMATS: tuple[str, ...] = ("table", "json", "csv")


def top_classes(probs: np.ndarray, class_names: Sequence[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` most probable ``(class name, probability)`` pairs of one probability row."""
    order = np.argsort(-probs, kind="stable")[: max(1, k)]
    return [(class_names[i], float(probs[i])) for i in order]


def format_predictions(
    labels: Sequence[str], probs: np.ndarray, class_names: Sequence[str], *, top: int = 3, fmt: str = "table"
) -> str:
    """Render predictions as an aligned table, JSON (a list of objects) or CSV (one row a class)."""
    if fmt not in OUTPUT_FORMATS:
        raise DataError(f"unknown format {fmt!r}; use one of: {', '.join(OUTPUT_FORMATS)}")
    rows = [(label, top_classes(p, class_names, top)) for label, p in zip(labels, probs)]
    if fmt == "json":
        return json.dumps(
            [
                {
                    "input": label,
                    "top": [{"rank": r, "class": c, "probability": round(p, 6)} for r, (c, p) in enumerate(tc, 1)],
                    "probabilities": {c: round(float(v), 6) for c, v in zip(class_names, p)},
                }
                for (label, tc), p in zip(rows, probs)
            ],
            indent=2,
        )
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
