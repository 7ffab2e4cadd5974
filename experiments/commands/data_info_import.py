"""``galaxy10 data info`` and ``galaxy10 data import``: inspect a Galaxy10 file, import a folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from core.errors import DataError
from experiments.commands.common import add_force_argument, add_json_argument

IMPORT_EPILOG = """\
class rule (--classes):
  auto      (default) Galaxy10 classes when every label is a Galaxy10 slug or display name
            (e.g. barred, "Round Smooth"); anything else, including bare integers such as the
            ring set's 0/1, becomes a custom class set
  galaxy10  labels are Galaxy10 indices 0-9, slugs or display names
  custom    the sorted distinct label values become classes 0..K-1 (integers sorted
            numerically); --class-names names integer labels 0..K-1 in order
The class names are stored in the file's `class_names` attribute; the reader checks labels
against them.

example (the real DECaLS ring set, 2 classes):
  galaxy10 data import ../shared/data/realsamples/gz_decals_zoobot_rings \\
      --labels ../shared/data/realsamples/gz_decals_zoobot_rings/catalog.csv \\
      --label-column ring --class-names not_ring,ring --out data/rings.h5
"""


def collect_info(path: Path, *, groups: bool = True) -> dict[str, Any]:
    """Everything ``data info`` shows, as JSON-ready values."""
    from pipelines import splits
    from pipelines.classes import CLASS_SLUGS, slugify
    from pipelines.reader import file_sha256, provenance, validate_galaxy10

    info = validate_galaxy10(path)
    n = info.n_images
    classes = [
        {
            "index": i,
            "slug": slugify(name) if info.is_custom else CLASS_SLUGS[i],
            "name": name,
            "count": count,
            "percent": round(100.0 * count / n, 2),
        }
        for i, (name, count) in enumerate(zip(info.class_names, info.class_counts))
    ]
    split_doc: dict[str, Any] | None = None
    duplicates: int | None = None
    split_path = splits.split_path_for(path)
    if split_path.exists():
        try:
            split = splits.load_split(split_path, path)
        except DataError as err:
            split_doc = {"path": str(split_path), "error": str(err)}
        else:
            split_doc = {
                "path": str(split_path),
                "train": int(len(split.train)),
                "val": int(len(split.val)),
                "test": int(len(split.test)),
                "seed": int(split.seed),
                "n_groups": int(split.n_groups),
                "n_multi_groups": int(split.n_multi_groups),
            }
            duplicates = int(split.n_multi_groups)
    if duplicates is None and groups:
        _, duplicates = splits.find_groups(path)
    return {
        "path": str(path),
        "provenance": provenance(path),
        "sha256": file_sha256(path),
        "n_images": n,
        "image_size": info.image_size,
        "optional_arrays": list(info.optional_arrays),
        "has_coords": info.has_coords,
        "class_set": "custom" if info.is_custom else "galaxy10",
        "classes": classes,
        "split": split_doc,
        "duplicate_groups": duplicates,
        "attrs": info.attrs,
    }


def _provenance_line(doc: dict[str, Any]) -> str:
    attrs = doc["attrs"]
    prov = doc["provenance"]
    if prov == "synthetic":
        gen = attrs.get("generator", "unknown generator")
        version = attrs.get("generator_version")
        seed = attrs.get("seed", "unknown")
        gen_text = f"{gen} v{version}" if version is not None else str(gen)
        return f"SYNTHETIC (generator {gen_text}, seed {seed}): not real Galaxy10 DECaLS images"
    if prov == "official":
        return "official Galaxy10 DECaLS release (SHA-256 matches Zenodo record 10845026)"
    if prov == "imported":
        return (
            f"imported by `galaxy10 data import` from {attrs.get('source_folder', '?')} "
            f"(labels {attrs.get('labels_csv', '?')})"
        )
    return "modified: Galaxy10 schema but not the official release"


def format_info(doc: dict[str, Any]) -> str:
    """Human-readable summary of :func:`collect_info`'s result."""
    lines = []
    if doc["provenance"] == "synthetic":
        lines += ["*" * 72, "*  SYNTHETIC DATA: results on this file say nothing about real galaxies  *", "*" * 72]
    coords = ", ".join(doc["optional_arrays"]) or "none"
    s = doc["image_size"]
    n_cls = len(doc["classes"])
    lines += [
        f"path         {doc['path']}",
        f"provenance   {_provenance_line(doc)}",
        f"sha256       {doc['sha256'][:12]}",
        f"images       {doc['n_images']} x {s}x{s}x3 uint8",
        f"coordinates  {coords}",
        f"classes      {n_cls} ({'custom set' if doc['class_set'] == 'custom' else 'Galaxy10'})",
        "",
    ]
    w_slug = max(4, *(len(c["slug"]) for c in doc["classes"]))
    w_name = max(4, *(len(c["name"]) for c in doc["classes"]))
    lines.append(f"  {'idx':>3}  {'slug':<{w_slug}}  {'name':<{w_name}}  {'count':>7}  {'percent':>7}")
    for c in doc["classes"]:
        lines.append(
            f"  {c['index']:>3}  {c['slug']:<{w_slug}}  {c['name']:<{w_name}}  {c['count']:>7}  {c['percent']:>6.1f}%"
        )
    lines.append("")
    split = doc["split"]
    if split is None:
        lines.append("split        none saved (run `galaxy10 data split`)")
    elif "error" in split:
        lines.append(f"split        unusable: {split['error']}")
    else:
        lines.append(
            f"split        train {split['train']} / val {split['val']} / test {split['test']}"
            f"  ({split['path']}, seed {split['seed']}, {split['n_groups']} groups)"
        )
    if doc["duplicate_groups"] is None:
        lines.append("duplicates   not checked (--no-groups)")
    else:
        lines.append(
            f"duplicates   {doc['duplicate_groups']} groups of identical pixels or same sky position (within 1 arcsec)"
        )
    return "\n".join(lines)


def run_info(args: argparse.Namespace) -> int:
    """``galaxy10 data info``."""
    from core.paths import resolve_data_path

    doc = collect_info(resolve_data_path(args.file), groups=not args.no_groups)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(format_info(doc))
    return 0


def run_import(args: argparse.Namespace) -> int:
    """``galaxy10 data import``."""
    from pipelines.importer import import_folder

    class_names = None
    if args.class_names is not None:
        class_names = args.class_names.split(",")
    report = import_folder(
        args.folder,
        args.labels,
        args.out,
        size=args.size,
        skip_bad=args.skip_bad,
        file_column=args.file_column,
        label_column=args.label_column,
        classes=args.classes,
        class_names=class_names,
        force=args.force,
    )
    print(f"imported {report.n_images} images ({report.image_size} px, {report.class_mode} classes) into {report.out}")
    for i, (name, count) in enumerate(zip(report.class_names, report.class_counts)):
        print(f"  {i:>3}  {name:<24} {count:>7}")
    if report.skipped:
        print(f"skipped {len(report.skipped)} bad rows:")
        for name, why in report.skipped:
            print(f"  {name}: {why}")
    return 0


def register(data_sub: argparse._SubParsersAction) -> None:
    """Add ``data info`` and ``data import``."""
    info = data_sub.add_parser(
        "info",
        help="validate a Galaxy10 HDF5 file and summarise it",
        description="Validate a Galaxy10-schema HDF5 file and print its provenance, SHA-256, shape, "
        "class counts, saved split and duplicate groups.",
    )
    info.add_argument(
        "file",
        nargs="?",
        default=None,
        help="HDF5 file (default: data/Galaxy10_DECals.h5 if present, else data/galaxy10_synthetic.h5)",
    )
    add_json_argument(info, "the facts")
    info.add_argument(
        "--no-groups", action="store_true", help="skip the duplicate scan (reads every image) when no split is saved"
    )
    info.set_defaults(func=run_info)

    imp = data_sub.add_parser(
        "import",
        help="import a folder of PNG/JPEG cutouts plus a labels CSV into HDF5",
        description="Import images listed in a CSV (a file column relative to FOLDER and a label "
        "column) into a Galaxy10-schema HDF5 file: RGB, centre-cropped to square, "
        "resized with anti-aliasing (LANCZOS). Bad rows stop the import and nothing is "
        "written, unless --skip-bad.",
        epilog=IMPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    imp.add_argument("folder", help="folder holding the images")
    imp.add_argument("--labels", required=True, help="CSV with one row per image")
    imp.add_argument("--out", required=True, help="HDF5 file to write, e.g. data/my_set.h5")
    imp.add_argument("--size", type=int, default=256, help="output side in pixels (default 256)")
    imp.add_argument(
        "--skip-bad", action="store_true", help="skip (and list) unreadable or missing images and unknown classes"
    )
    imp.add_argument("--file-column", default="file", help="CSV column with image paths (default: file)")
    imp.add_argument("--label-column", default="label", help="CSV column with labels (default: label)")
    imp.add_argument(
        "--classes",
        choices=("auto", "galaxy10", "custom"),
        default="auto",
        help="how labels map to classes (default auto; see below)",
    )
    imp.add_argument(
        "--class-names", default=None, help="comma-separated names for integer custom labels 0..K-1, e.g. not_ring,ring"
    )
    add_force_argument(imp, "imported file")
    imp.set_defaults(func=run_import)
