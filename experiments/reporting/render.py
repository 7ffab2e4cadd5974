"""Rendering a report: table rows, HTML (Jinja2), Markdown, and the output folder written atomically."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2

from core.outputs import output_dir
from experiments.reporting.contents import Report
from experiments.reporting.scoring import SCORING_RUN_NAME
from experiments.reporting.verdicts import VERDICT_TEXT, recall_difference_rows, verdict_rows
from experiments.training.evaluation import scalar_metrics
from pipelines.classes import REFERENCE_ACCURACY, REFERENCE_RECALL


def pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def ci_text(ci: tuple[float, float] | None) -> str:
    return "–" if not ci else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def summary_rows(report: Report) -> list[dict[str, str]]:
    """One row per scored model (and the reference): accuracy and macro-F1 with 95% CIs, run ids."""
    rows = []
    for m in report.models:
        rows.append(
            {
                "model": m.label,
                "description": m.description,
                "accuracy": pct(m.metrics["accuracy"]),
                "accuracy_ci": ci_text(m.ci.get("accuracy")),
                "balanced_accuracy": pct(m.metrics["balanced_accuracy"]),
                "macro_f1": pct(m.metrics["macro_f1"]),
                "macro_f1_ci": ci_text(m.ci.get("macro_f1")),
                "run_id": m.run_id or (report.scoring_run_id or ""),
                "reference": "",
            }
        )
    if report.data.galaxy10_classes:  # the published numbers are about Galaxy10's ten classes only
        rows.append(
            {
                "model": "Reference project (published)",
                "description": report.reference_note,
                "accuracy": pct(REFERENCE_ACCURACY),
                "accuracy_ci": "–",
                "balanced_accuracy": "–",
                "macro_f1": "–",
                "macro_f1_ci": "–",
                "run_id": "",
                "reference": report.reference_note,
            }
        )
    return rows


def recall_columns(report: Report) -> list[tuple[str, str]]:
    """``(key, header)`` of the per-class recall table: the baseline, the published reference (Galaxy10's
    classes only) and every other scored model (best CNN, its refit, the ensemble), in that order."""
    columns = [(m.key, m.label) for m in report.models if m.key == "baseline"]
    if report.data.galaxy10_classes:
        columns.append(("reference", f"Reference ({report.reference_note})"))
    columns += [(m.key, m.label) for m in report.models if m.key != "baseline"]
    return columns


def class_rows(report: Report) -> list[dict[str, str]]:
    """Per-class recall: class, file count, test support and one value per :func:`recall_columns` key."""
    card = report.data
    out = []
    recalls = {m.key: m.recalls(card.class_slugs) for m in report.models}
    for k, (name, slug) in enumerate(zip(card.class_names, card.class_slugs)):
        row = {"class": name, "count": str(card.class_counts[k]), "support": str(card.test_counts[k])}
        for key, _ in recall_columns(report):
            if key == "reference":
                row[key] = f"{REFERENCE_RECALL[slug]:.2f}"
            else:
                value = recalls[key][k]
                row[key] = "–" if value is None else f"{value:.2f}"
        out.append(row)
    return out


def run_id_rows(report: Report) -> list[tuple[str, str]]:
    """(what, run id) pairs: every MLflow run behind a number on the page."""
    rows = [
        ("Study parent run (tuning; report artifacts under report/)", report.parent_run_id),
        (f"Best trial {report.best_trial} (best CNN, learning curves, test_* metrics)", report.best_run_id),
    ]
    if report.scoring_run_id:
        rows.append((f"'{SCORING_RUN_NAME}' (every test number on this page)", report.scoring_run_id))
    if report.ensemble.found:
        if report.ensemble.comparison_run_id:
            rows.append(("Ensemble comparison parent run", report.ensemble.comparison_run_id))
        if report.ensemble.winner_run_id:
            rows.append(
                (f"Ensemble winner {report.ensemble.winner_name} (test_* metrics)", report.ensemble.winner_run_id)
            )
    return rows


def _context(report: Report, embed: bool) -> dict[str, Any]:
    figures = {
        name: (f"data:image/png;base64,{base64.b64encode(data).decode('ascii')}" if embed else name)
        for name, data in report.figures.items()
    }
    card = report.data
    return {
        "r": report,
        "card": card,
        "figures": figures,
        "notes": report.figure_notes,
        "summary": summary_rows(report),
        "classes": class_rows(report),
        "run_ids": run_id_rows(report),
        "recall_columns": recall_columns(report),
        "reference_note": report.reference_note,
        "counts": ", ".join(f"{v} {k.lower()}" for k, v in sorted(report.counts.items())),
        "split": ", ".join(f"{k} {v}" for k, v in card.split_sizes.items()),
        "class_counts": list(zip(card.class_names, card.class_counts, card.test_counts)),
        "pct": pct,
        "calibration": calibration_text(report),
        "pareto_text": PARETO_TEXT,
        "verdicts": verdict_rows(report),
        "verdict_text": VERDICT_TEXT,
        "recall_diff": recall_difference_rows(report),
    }


def render_html(report: Report) -> str:
    """The self-contained HTML page (figures inlined as base64 PNG, no external resources)."""

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("report.html.j2").render(**_context(report, embed=True))


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(text: Any) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: Report) -> str:
    """The Markdown version (figures referenced as the PNG files beside it)."""
    card = report.data
    out: list[str] = []
    if card.synthetic:
        out += ["# ⚠ SYNTHETIC DATA — these numbers say nothing about real galaxies", ""]
    out += [
        f"# Galaxy10 best-model report: study `{report.study_name}`",
        "",
        f"Generated {report.created} (git {report.git_commit or 'unknown'}). Every test number below was "
        f"scored once by this report and logged to MLflow run `{report.scoring_run_id}`.",
        "",
    ]
    out += [
        "## Data card",
        "",
        _md_table(
            ["", ""],
            [
                ("Source file", f"`{card.path}`"),
                ("Provenance", f"{card.provenance.upper()}: {card.provenance_text}"),
                ("Fingerprint (SHA-256)", f"`{card.fingerprint}`"),
                (
                    "Images",
                    f"{card.n_images} at {card.image_size} px"
                    + (f" (study used the first {card.max_images})" if card.max_images else ""),
                ),
                (f"Split (seed {card.split_seed})", ", ".join(f"{k} {v}" for k, v in card.split_sizes.items())),
            ]
            + ([("Generator", card.generator)] if card.generator else []),
        ),
        "",
        _md_table(
            ["Class", "Images in file", "Test images"],
            [(n, str(c), str(t)) for n, c, t in zip(card.class_names, card.class_counts, card.test_counts)],
        ),
        "",
    ]
    reference = (
        f" The reference project's figures are its published test numbers ({report.reference_note})."
        if card.galaxy10_classes
        else ""
    )
    out += [
        "## Test-split results",
        "",
        f"Accuracy and macro-F1 with bootstrap 95% confidence intervals ({report.n_resamples} paired resamples "
        f"of the {card.split_sizes['test']} test images, seed {report.seed}).{reference}",
        "",
    ]
    out.append(
        _md_table(
            ["Model", "What", "Accuracy", "95% CI", "Balanced acc.", "Macro-F1", "95% CI", "MLflow run"],
            [
                (
                    r["model"],
                    r["description"],
                    r["accuracy"],
                    r["accuracy_ci"],
                    r["balanced_accuracy"],
                    r["macro_f1"],
                    r["macro_f1_ci"],
                    f"`{r['run_id']}`" if r["run_id"] else "",
                )
                for r in summary_rows(report)
            ],
        )
    )
    if not report.ensemble.found:
        out += ["", f"**{report.ensemble.reason}**"]
    if report.paired:
        out += [
            "",
            "### Paired differences (same test images)",
            "",
            VERDICT_TEXT,
            "",
            _md_table(
                [
                    "Model",
                    "Against",
                    "Accuracy (pts)",
                    "Verdict",
                    "Balanced acc. (pts)",
                    "Verdict",
                    "Macro-F1 (pts)",
                    "Verdict",
                    "McNemar (only A / only B right)",
                ],
                [
                    (
                        v["model"],
                        v["against"],
                        v["accuracy"],
                        v["accuracy_verdict"],
                        v["balanced_accuracy"],
                        v["balanced_accuracy_verdict"],
                        v["macro_f1"],
                        v["macro_f1_verdict"],
                        v["mcnemar"],
                    )
                    for v in verdict_rows(report)
                ],
            ),
            "",
        ]
        header, rows = recall_difference_rows(report)
        out += ["Per-class recall differences (points):", "", _md_table(header, rows)]
    columns = recall_columns(report)
    out += [
        "",
        "### Per-class recall",
        "",
        _md_table(
            ["Class", "Test images", *[header for _, header in columns]],
            [(r["class"], r["support"], *[r[key] for key, _ in columns]) for r in class_rows(report)],
        ),
        "",
    ]
    out += _md_figure(report, "recall_per_class.png", "Per-class recall")
    for m in report.models:
        if m.key != "baseline":
            out += _md_figure(report, f"confusion_{m.key}.png", f"{m.label}: test confusion matrix")
    out += ["### Calibration", "", calibration_text(report), ""]
    out += _md_figure(report, "reliability.png", "Reliability of the best CNN before and after temperature scaling")
    out += [
        "## Best trial and study",
        "",
        f"Study `{report.study_name}` ({', '.join(f'{v} {k.lower()}' for k, v in sorted(report.counts.items()))}); "
        f"best trial {report.best_trial}: {report.best_value_text}.",
        "",
        _md_table(["Parameter", "Value"], [(k, str(v)) for k, v in report.best_params.items()]),
        "",
    ]
    if report.pruned_cuts:
        out += [
            "Pruned trials, where each was cut and against what (trials are compared at equal epochs of equal folds):",
            "",
            *[f"- {line}" for line in report.pruned_cuts],
            "",
        ]
    out += ["### Accuracy against speed", "", PARETO_TEXT, ""]
    if report.pareto:
        out += [
            _md_table(
                ["Trial", f"Validation {report.metric}", "Images/s", "Pareto front", "MLflow run"],
                [
                    (
                        str(p.number),
                        f"{p.value:.4f}",
                        f"{p.images_per_second:.1f}",
                        "yes" if p.on_front else "",
                        f"`{p.run_id}`",
                    )
                    for p in report.pareto
                ],
            ),
            "",
        ]
    out += _md_figure(report, "pareto_front.png", "The trials' validation metric against inference speed")
    out += _md_figure(report, "learning_curves.png", "Learning curves of the best trial")
    out += _md_figure(report, "optimization_history.png", "Optuna optimisation history")
    out += _md_figure(report, "param_importances.png", "Optuna parameter importances")
    out += ["## Ensemble comparison", ""]
    if report.ensemble.found:
        out.append(
            f"Winner: **{report.ensemble.winner_name}** (`{report.ensemble.model_uri}`); validation-split "
            f"numbers from the comparison run `{report.ensemble.comparison_run_id}`."
        )
        out.append("")
        if report.ensemble.table_rows:
            out.append(_md_table(report.ensemble.table_columns, report.ensemble.table_rows))
        else:
            out.append("The comparison run has no CSV table artifact.")
    else:
        out.append(f"**{report.ensemble.reason}**")
    out += ["", "## Misclassified test images", ""]
    if report.gallery_classes:
        out.append(f"Weakest classes of the {report.gallery_model}: {', '.join(report.gallery_classes)}.")
        out.append("")
    out += _md_figure(report, "misclassified.png", "Misclassified test images")
    out += [
        "## MLflow runs behind the numbers",
        "",
        _md_table(["What", "Run id"], [(w, f"`{r}`") for w, r in run_id_rows(report)]),
        "",
        f"Tracking URI: `{report.tracking_uri}`; Optuna storage: `{report.storage_url}`.",
        "",
        "## Reproduce",
        "",
        "```sh",
        *report.commands,
        "```",
        "",
    ]
    if report.notes:
        out += ["## Notes", "", *[f"- {n}" for n in report.notes], ""]
    return "\n".join(out)


def _md_figure(report: Report, name: str, title: str) -> list[str]:
    if name in report.figures:
        return [f"![{title}]({name})", ""]
    note = report.figure_notes.get(name)
    return [f"*{title}: {note}*", ""] if note else []


PARETO_TEXT = (
    "Each finished trial's validation metric against its model's inference speed (images/s of the "
    "forward pass, TTA included, measured on the machine that trained it). A trial on the Pareto front "
    "has no other trial at least as good on both and better on one; to choose the fastest model "
    "within a point of the best, pick from the front and pass its run id to `galaxy10 catalog --model` "
    "or register it."
)


def calibration_text(report: Report) -> str:
    """One paragraph: the best CNN's temperature and its ECE before/after, on validation and on test."""
    c = report.calibration
    if not c:
        return "The best trial's run logged no calibration temperature (trained before calibration existed)."

    def num(x: Any) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    return (
        f"Temperature scaling of the best CNN: T = {c['temperature']:.3f}, fitted on the validation split at "
        f"training time (run `{c['run_id']}`). Expected calibration error (15 bins), validation "
        f"{num(c['ece_val'])} -> {num(c['ece_val_calibrated'])}, test {num(c['test_ece'])} -> "
        f"{num(c['test_ece_calibrated'])}. Calibration changes no prediction (accuracy and recall above are "
        "the same); `galaxy10 catalog` writes the calibrated probabilities."
    )


def write_report_dir(report: Report, out: str | os.PathLike, *, force: bool = False) -> Path:
    """Write ``report.html``, ``report.md``, the PNGs and ``report.json`` into ``out`` atomically.

    ``out`` follows :func:`core.outputs.output_dir`: a new folder or a previous report is replaced,
    any other non-empty folder is refused unless ``force`` (then the report's files are added to it).
    """

    html = render_html(report)
    markdown = render_markdown(report)
    numbers = {
        "study": report.study_name,
        "scoring_run_id": report.scoring_run_id,
        "parent_run_id": report.parent_run_id,
        "data": {
            "path": report.data.path,
            "provenance": report.data.provenance,
            "fingerprint": report.data.fingerprint,
            "split_sizes": dict(report.data.split_sizes),
        },
        "bootstrap": {"resamples": report.n_resamples, "seed": report.seed, "level": 0.95},
        "best_trial": {"number": report.best_trial, "params": {k: v for k, v in report.best_params.items()}},
        "pruned_cuts": list(report.pruned_cuts),
        "calibration": {k: v for k, v in report.calibration.items() if k != "curves"},
        "pareto": [
            {
                "trial": p.number,
                "value": p.value,
                "images_per_second": p.images_per_second,
                "run_id": p.run_id,
                "on_front": p.on_front,
            }
            for p in report.pareto
        ],
        "models": {
            m.key: {
                "label": m.label,
                "run_id": m.run_id,
                "model_uri": m.model_uri,
                "test": scalar_metrics(m.metrics),
                "ci95": {k: list(v) for k, v in m.ci.items()},
            }
            for m in report.models
        },
        "paired": [
            {**p.comparison.as_dict(), "a": p.a_key, "b": p.b_key, "a_label": p.comparison.a, "b_label": p.comparison.b}
            for p in report.paired
        ],
        "ensemble": {
            "found": report.ensemble.found,
            "reason": report.ensemble.reason,
            "winner": report.ensemble.winner_name,
            "model_uri": report.ensemble.model_uri,
        },
        "commands": report.commands,
        "unlabeled_pools": report.pools,
    }
    if report.data.galaxy10_classes:  # the published reference is about Galaxy10's ten classes only
        numbers["reference"] = {
            "accuracy": REFERENCE_ACCURACY,
            "recall": REFERENCE_RECALL,
            "note": report.reference_note,
        }
    with output_dir(out, what="report", force=force) as tmp:
        (tmp / "report.html").write_text(html, encoding="utf-8")
        (tmp / "report.md").write_text(markdown, encoding="utf-8")
        (tmp / "report.json").write_text(json.dumps(numbers, indent=2) + "\n", encoding="utf-8")
        for name, data in report.figures.items():
            (tmp / name).write_bytes(data)
    return Path(out)
