"""The champion rule: a candidate replaces the best CNN only when it wins by more than the paired SE.

With the accuracy guard (``accuracy_guard: true``, the default), a candidate chosen by another metric
(balanced accuracy, macro-F1) must also not lose validation accuracy to the best CNN by more than the
paired standard error of the accuracy difference: an ensemble must not buy rare-class recall with the
majority classes' accuracy on noise.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from experiments.ensembling.candidates import Candidate
from experiments.evaluation import paired_difference_se

#: The candidate every ensemble must beat: the study's best CNN alone.
BASELINE_CANDIDATE = "cnn-best"


def _verdict(row: Mapping[str, Any], base: Mapping[str, Any], probs: Mapping[str, np.ndarray], y_val: np.ndarray,
             n_classes: int, metric: str, guard: bool, seed: int) -> tuple[bool, str]:
    """Whether ``row`` may replace the best CNN, and the clause saying why (or why not)."""
    key = f"val_{metric}"
    pred, base_pred = probs[row["candidate"]].argmax(1), probs[BASELINE_CANDIDATE].argmax(1)
    se = paired_difference_se(y_val, pred, base_pred, n_classes, metric, seed=seed)
    lead = float(row[key] - base[key])
    if lead <= se:
        return False, (f"{row['candidate']} leads {BASELINE_CANDIDATE} by only {lead:.4f} val_{metric}, within the "
                       f"paired-bootstrap standard error {se:.4f} on {len(y_val)} validation images")
    clause = (f"{row['candidate']} leads {BASELINE_CANDIDATE} by {lead:.4f} val_{metric}, more than the "
              f"paired-bootstrap standard error {se:.4f}")
    if not guard:
        return True, clause
    acc = float(np.mean(pred == y_val)) - float(np.mean(base_pred == y_val))
    se_acc = paired_difference_se(y_val, pred, base_pred, n_classes, "accuracy", seed=seed)
    if -acc > se_acc:
        return False, (f"{clause}, but loses {-acc:.4f} val_accuracy, more than its standard error {se_acc:.4f} "
                       "(accuracy guard)")
    return True, f"{clause}, and its val_accuracy is within {se_acc:.4f} of it or better ({acc:+.4f})"


def choose_champion(rows: Sequence[Mapping[str, Any]], candidates: Sequence[Candidate], y_val: np.ndarray,
                    n_classes: int, metric: str, *, seed: int = 0,
                    accuracy_guard: bool = True) -> tuple[Mapping[str, Any], str]:
    """The comparison's champion and the sentence saying why.

    Parameters
    ----------
    rows, candidates
        The comparison's rows (``candidate`` and ``val_<metric>`` keys) and the candidates behind them
        (their validation probabilities).
    y_val
        Validation labels.
    n_classes
        Number of classes.
    metric
        The selection metric (``accuracy``, ``balanced_accuracy``, ``macro_f1``, ...).
    seed
        Seed of the paired bootstrap.
    accuracy_guard
        When ``metric`` is not accuracy, a candidate must also not lose validation accuracy to
        ``cnn-best`` by more than the paired standard error.

    Returns
    -------
    tuple
        The winning row and the rule's sentence. Candidates are tried best ``metric`` first; the first
        one that leads ``cnn-best`` by more than the paired-bootstrap standard error of the difference
        (and passes the guard) wins; if none does, the study's best CNN stays champion.
    """

    key = f"val_{metric}"
    order = sorted(rows, key=lambda r: (-r[key], rows.index(r)))  # ties: the simpler, earlier candidate
    top = order[0]
    base = next((r for r in rows if r["candidate"] == BASELINE_CANDIDATE), None)
    if base is None or top is base:
        return top, f"{top['candidate']} has the best val_{metric} ({top[key]:.4f}) and is champion"
    probs = {c.name: c.val_probs for c in candidates}
    guard = accuracy_guard and metric != "accuracy"
    top_clause = ""
    for row in order:
        if row is base:
            break
        ok, clause = _verdict(row, base, probs, y_val, n_classes, metric, guard, seed)
        if ok:
            prefix = "" if row is top else f"{top_clause}; "
            return row, f"{prefix}{clause}: it is champion"
        top_clause = top_clause or clause
    return base, f"{top_clause}: {BASELINE_CANDIDATE} stays champion"
