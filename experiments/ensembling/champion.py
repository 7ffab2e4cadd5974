"""The champion rule: a candidate replaces the best CNN only when it wins by more than the paired SE."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from experiments.ensembling.candidates import Candidate
from experiments.evaluation import paired_difference_se

#: The candidate every ensemble must beat: the study's best CNN alone.
BASELINE_CANDIDATE = "cnn-best"


def choose_champion(rows: Sequence[Mapping[str, Any]], candidates: Sequence[Candidate], y_val: np.ndarray,
                    n_classes: int, metric: str, *, seed: int = 0) -> tuple[Mapping[str, Any], str]:
    """The comparison's champion and the sentence saying why.

    The candidate with the best validation ``metric`` wins only if it leads ``cnn-best`` by more than
    the paired-bootstrap standard error of the difference (same validation images); otherwise the
    study's best CNN stays champion: an ensemble must not replace it on noise.
    """

    key = f"val_{metric}"
    top = max(rows, key=lambda r: (r[key], -rows.index(r)))  # ties: the simpler, earlier candidate
    base = next((r for r in rows if r["candidate"] == BASELINE_CANDIDATE), None)
    if base is None or top is base:
        return top, f"{top['candidate']} has the best val_{metric} ({top[key]:.4f}) and is champion"
    probs = {c.name: c.val_probs for c in candidates}
    se = paired_difference_se(y_val, probs[top["candidate"]].argmax(1), probs[BASELINE_CANDIDATE].argmax(1),
                              n_classes, metric, seed=seed)
    lead = float(top[key] - base[key])
    if lead > se:
        return top, (f"{top['candidate']} leads {BASELINE_CANDIDATE} by {lead:.4f} val_{metric}, more than the "
                     f"paired-bootstrap standard error {se:.4f}: it is champion")
    return base, (f"{top['candidate']} leads {BASELINE_CANDIDATE} by only {lead:.4f} val_{metric}, within the "
                  f"paired-bootstrap standard error {se:.4f} on {len(y_val)} validation images: "
                  f"{BASELINE_CANDIDATE} stays champion")
