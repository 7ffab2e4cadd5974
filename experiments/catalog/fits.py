"""The catalog as a FITS binary table (astropy), beside the Parquet file, for tools that read FITS (TOPCAT, IDL).

Strings are fixed-width columns (an empty string where the Parquet value is null), numbers keep their
types, null numbers are masked (FITS ``TNULL`` for integers, NaN for floats). The model URI, version,
temperature and the inputs' fingerprint go into the header. The whole table is held in memory while it
is written (about 8 bytes per value); use the Parquet file for surveys that do not fit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from core.files import atomic_path


def write_fits(parquet: str | Path, out: str | Path) -> Path:
    """Write the Parquet catalog ``parquet`` as the FITS file ``out`` (atomically)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from astropy.io import fits
    from astropy.table import MaskedColumn, Table

    table = pq.read_table(parquet)
    meta = json.loads((table.schema.metadata or {}).get(b"galaxy10", b"{}"))
    columns = []
    for field, column in zip(table.schema, table.columns, strict=True):
        if field.type == "string":
            text = column.to_pandas().fillna("").astype(str).to_numpy()
            columns.append(
                MaskedColumn(text.astype(f"U{max(1, max((len(t) for t in text), default=1))}"), name=field.name)
            )
        elif pa.types.is_list(field.type):  # the embedding: a fixed-width vector column, NaN rows where null
            rows = column.to_pylist()
            width = max((len(r) for r in rows if r is not None), default=1)
            data = np.full((len(rows), width), np.nan, dtype=np.float32)
            for i, r in enumerate(rows):
                if r is not None:
                    data[i, : len(r)] = r
            columns.append(MaskedColumn(data, name=field.name))
        elif field.type == "bool":
            values = column.to_pandas()
            mask = values.isna().to_numpy()
            columns.append(MaskedColumn(values.eq(True).to_numpy(dtype=bool), mask=mask, name=field.name))
        else:
            mask = pc.is_null(column).to_numpy(zero_copy_only=False)
            dtype = np.dtype(field.type.to_pandas_dtype())
            raw = np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)
            data = np.where(mask, 0 if dtype.kind in "iu" else np.nan, raw).astype(dtype)
            columns.append(MaskedColumn(data, mask=mask, name=field.name))
    fits_table = Table(columns)
    hdu = fits.table_to_hdu(fits_table)
    hdu.name = "CATALOG"
    header = hdu.header
    header["ORIGIN"] = "galaxy10 catalog"
    for key, value in (
        ("MODELURI", meta.get("model_uri")),
        ("MODELVER", meta.get("model_version")),
        ("TEMPERAT", (meta.get("calibration") or {}).get("temperature")),
        ("INPUTSHA", meta.get("inputs_fingerprint")),
        ("SYNTHMOD", meta.get("model_synthetic")),
    ):
        if value is not None:
            header[f"HIERARCH {key}"] = value if isinstance(value, (int, float, bool)) else str(value)
    header["COMMENT"] = "written by galaxy10; class names: " + ", ".join(meta.get("class_names") or [])
    out = Path(out)
    with atomic_path(out, suffix=".fits") as tmp:
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp, overwrite=True)
    return out
