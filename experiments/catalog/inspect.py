""" "Inspect these": the most uncertain and the out-of-distribution galaxies of a catalog, for a person to look at.

Galaxy Zoo routes the images its model is least sure of to volunteers; ``galaxy10 catalog --flag-uncertain
N`` writes the N rows with the highest entropy and up to N rows flagged out-of-distribution (highest score
first) to a folder: ``index.html`` (each image with its id, source, predicted class, top probabilities,
entropy, view disagreement and out-of-distribution score), the images as PNG files, and ``gallery.png``
(one contact sheet of them).
"""

from __future__ import annotations

import html
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from core.outputs import OWNER_TAG, output_dir
from pipelines.images import decode_image
from pipelines.reader import Galaxy10File

log = logging.getLogger(__name__)

THUMB = 128


def pick_rows(df: pd.DataFrame, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``n`` most uncertain predicted rows (entropy, then row) and up to ``n`` flagged ones (score)."""
    good = df[df["error"].isna()]
    uncertain = good.sort_values(["entropy", "row"], ascending=[False, True]).head(n)
    flagged = good[good["ood_flag"].eq(True).to_numpy()]
    flagged = flagged.sort_values(["ood_score", "row"], ascending=[False, True]).head(n)
    return uncertain, flagged


def _image(row: pd.Series, files: dict[str, Galaxy10File]) -> np.ndarray:
    if pd.notna(row["source_index"]):
        source = str(row["source"])
        if source not in files:
            files[source] = Galaxy10File(source)
        return files[source].images([int(row["source_index"])])[0]
    return decode_image(str(row["source"]), str(row["source"]))


def _thumb(image: np.ndarray) -> Image.Image:
    img = Image.fromarray(image)
    img.thumbnail((THUMB, THUMB))
    return img


def _png(img: Image.Image) -> bytes:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", OWNER_TAG)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _card(row: pd.Series, prob_cols: Sequence[str], class_names: Sequence[str], name: str) -> str:
    probs = sorted(zip(row[list(prob_cols)].to_numpy(dtype=float), class_names, strict=True), reverse=True)[:3]
    top = ", ".join(f"{html.escape(c)} {p:.2f}" for p, c in probs)
    ood = (
        ""
        if pd.isna(row["ood_score"])
        else f"<br>OOD score {row['ood_score']:.3g}" + (" <b>(flagged)</b>" if row["ood_flag"] else "")
    )
    dis = "" if pd.isna(row["view_disagreement"]) else f", view disagreement {row['view_disagreement']:.3f}"
    return (
        f'<figure><img src="img/{name}" width="{THUMB}" alt="{html.escape(str(row["id"]))}">'
        f"<figcaption><b>{html.escape(str(row['id']))}</b><br>{html.escape(str(row['source']))}<br>"
        f"{top}<br>entropy {row['entropy']:.3f}{dis}{ood}</figcaption></figure>"
    )


def _selected(catalog: Path, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`pick_rows` on the catalog's light columns, then only the chosen rows read whole."""
    import pyarrow.parquet as pq

    light = pq.read_table(catalog, columns=["row", "entropy", "ood_score", "ood_flag", "error"]).to_pandas()
    uncertain, flagged = pick_rows(light, n)
    wanted = sorted(set(uncertain["row"]) | set(flagged["row"]))
    full = (
        pq.read_table(catalog, filters=[("row", "in", wanted)]).to_pandas().set_index("row", drop=False)
        if wanted
        else None
    )
    if full is None:
        return uncertain, flagged
    return full.loc[list(uncertain["row"])], full.loc[list(flagged["row"])]


def write_inspection(
    catalog: str | Path, class_names: Sequence[str], folder: str | Path, n: int, *, title: str, force: bool = False
) -> Path:
    """Write the gallery of :func:`pick_rows` of the Parquet ``catalog`` into ``folder`` (a platform folder)."""
    from experiments.catalog.columns import probability_columns

    prob_cols = probability_columns(class_names)
    uncertain, flagged = _selected(Path(catalog), n)
    files: dict[str, Galaxy10File] = {}
    sections = []
    thumbs: list[Image.Image] = []
    with output_dir(folder, what="inspection gallery", option="--flag-uncertain folder", force=force) as tmp:
        (tmp / "img").mkdir()
        try:
            for heading, rows in (
                ("Most uncertain (highest entropy)", uncertain),
                ("Out of distribution (flagged, highest score first)", flagged),
            ):
                cards = []
                for _, row in rows.iterrows():
                    name = f"row-{int(row['row']):09d}.png"
                    thumb = _thumb(_image(row, files))
                    if not (tmp / "img" / name).exists():
                        (tmp / "img" / name).write_bytes(_png(thumb))
                        thumbs.append(thumb)
                    cards.append(_card(row, prob_cols, class_names, name))
                body = "".join(cards) or "<p>none</p>"
                sections.append(f"<h2>{html.escape(heading)} - {len(rows)}</h2><div class=grid>{body}</div>")
        finally:
            for f in files.values():
                f.close()
        page = (
            f"<!doctype html><meta charset=utf-8><meta name=generator content='{OWNER_TAG}'>"
            f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif}}.grid{{display:flex;"
            "flex-wrap:wrap;gap:12px}figure{width:180px;margin:0;font-size:12px}</style>"
            f"<h1>{html.escape(title)}</h1>{''.join(sections)}"
        )
        (tmp / "index.html").write_text(page)
        if thumbs:
            cols = min(10, len(thumbs))
            sheet = Image.new("RGB", (cols * THUMB, -(-len(thumbs) // cols) * THUMB))
            for i, t in enumerate(thumbs):
                sheet.paste(t, ((i % cols) * THUMB, (i // cols) * THUMB))
            (tmp / "gallery.png").write_bytes(_png(sheet))
    log.info(
        "inspection gallery: %d uncertain and %d out-of-distribution images in %s", len(uncertain), len(flagged), folder
    )
    return Path(folder)
