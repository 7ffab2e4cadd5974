"""The champion rule: a candidate replaces the best CNN only when it wins by more than the paired SE.

With the accuracy guard (``accuracy_guard: true``, the default), a candidate chosen by another metric
(balanced accuracy, macro-F1) must also not lose validation accuracy to the best CNN by more than the
paired standard error of the accuracy difference: an ensemble must not buy rare-class recall with the
majority classes' accuracy on noise.

In crossfit mode (``oof_selection: true``) candidates with out-of-fold probabilities on the training
split are judged on those plus validation against ``cnn-best``'s recipe (its fold CNNs out-of-fold on
train, itself on validation): with 10% validation images that is about ten times the images of every
class, where validation alone may hold three images of a rare class.

Votes break ties: when no candidate wins by more than the paired SE, a soft vote of the study's models
(``kind: vote``: nothing is fit on the validation split, so choosing it carries no fitting optimism)
that does not trail the best CNN on the selection metric, passes the accuracy guard and has the lower
validation log loss (a proper score, which counts how sure each answer was instead of only whether it was
right, so it varies less on a small split) is champion: averaging models trained apart lowers their
variance, which is what a small validation split cannot resolve. The vote with the lowest log loss wins.

The reference floor: where the comparison holds the study's reference trial (``reference``, the shipped
recipe trained inside the study), the champion must not trail it on the validation images by more than the
paired standard error; one that does gives way to the reference.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from experiments.ensembling.context import REFERENCE_CANDIDATE, Candidate
from experiments.evaluation import paired_difference_se

#: The candidate every ensemble must beat: the study's best CNN alone.
BASELINE_CANDIDATE = "cnn-best"


@dataclass(frozen=True)
class Evidence:
    """The images one candidate is judged on against ``cnn-best``: labels and both sides' probabilities."""

    y: np.ndarray
    probs: np.ndarray
    base: np.ndarray
    key: str  # the row key of the metric on these images (val_<metric> or oofval_<metric>)
    where: str

    @classmethod
    def of(cls, row: Mapping[str, Any], base_row: Mapping[str, Any], cand: Candidate, base: Candidate,
           y_val: np.ndarray, y_train: np.ndarray | None, metric: str) -> Evidence:
        """Out-of-fold train + validation when the row and ``cnn-best`` both carry it, else validation."""
        key = f"oofval_{metric}"
        if (y_train is not None and key in row and key in base_row and cand.train_probs is not None
                and base.train_probs is not None):
            return cls(np.concatenate([y_train, y_val]), np.concatenate([cand.train_probs, cand.val_probs]),
                       np.concatenate([base.train_probs, base.val_probs]), key,
                       f"{len(y_train)} out-of-fold train + {len(y_val)} validation images")
        return cls(y_val, cand.val_probs, base.val_probs, f"val_{metric}", f"{len(y_val)} validation images")


def _verdict(row: Mapping[str, Any], lead: float, ev: Evidence, n_classes: int, metric: str, guard: bool,
             seed: int) -> tuple[bool, str]:
    """Whether ``row`` (leading the best CNN by ``lead`` on ``ev``) may replace it, and the clause saying why
    (or why not)."""
    pred, base_pred = ev.probs.argmax(1), ev.base.argmax(1)
    se = paired_difference_se(ev.y, pred, base_pred, n_classes, metric, seed=seed)
    if lead <= se:
        return False, (f"{row['candidate']} leads {BASELINE_CANDIDATE} by only {lead:.4f} {ev.key}, within the "
                       f"paired-bootstrap standard error {se:.4f} on {ev.where}")
    clause = (f"{row['candidate']} leads {BASELINE_CANDIDATE} by {lead:.4f} {ev.key}, more than the "
              f"paired-bootstrap standard error {se:.4f} on {ev.where}")
    if not guard:
        return True, clause
    acc = float(np.mean(pred == ev.y)) - float(np.mean(base_pred == ev.y))
    se_acc = paired_difference_se(ev.y, pred, base_pred, n_classes, "accuracy", seed=seed)
    if -acc > se_acc:
        return False, (f"{clause}, but loses {-acc:.4f} accuracy there, more than its standard error {se_acc:.4f} "
                       "(accuracy guard)")
    return True, f"{clause}, and its accuracy there is within {se_acc:.4f} of it or better ({acc:+.4f})"


def choose_champion(rows: Sequence[Mapping[str, Any]], candidates: Sequence[Candidate], y_val: np.ndarray,
                    n_classes: int, metric: str, *, seed: int = 0, accuracy_guard: bool = True,
                    y_train: np.ndarray | None = None) -> tuple[Mapping[str, Any], str]:
    """The comparison's champion and the sentence saying why: :func:`best_over_cnn` (see there), then the
    reference floor - a champion that trails the ``reference`` candidate on validation by more than the
    paired-bootstrap standard error of the difference gives way to it."""
    row, why = best_over_cnn(rows, candidates, y_val, n_classes, metric, seed=seed, accuracy_guard=accuracy_guard,
                             y_train=y_train)
    ref = next((r for r in rows if r["candidate"] == REFERENCE_CANDIDATE), None)
    if ref is None or row is ref:
        return row, why
    by_name = {c.name: c for c in candidates}
    key = f"val_{metric}"
    trail = float(ref[key] - row[key])
    se = paired_difference_se(y_val, by_name[REFERENCE_CANDIDATE].val_probs.argmax(1),
                              by_name[row["candidate"]].val_probs.argmax(1), n_classes, metric, seed=seed)
    if trail > se:
        return ref, (f"{why}; but {row['candidate']} trails the reference recipe by {trail:.4f} {key}, more than "
                     f"the paired-bootstrap standard error {se:.4f} on {len(y_val)} validation images: "
                     f"{REFERENCE_CANDIDATE} is champion (reference floor)")
    return row, why


def best_over_cnn(rows: Sequence[Mapping[str, Any]], candidates: Sequence[Candidate], y_val: np.ndarray,
                  n_classes: int, metric: str, *, seed: int = 0, accuracy_guard: bool = True,
                  y_train: np.ndarray | None = None) -> tuple[Mapping[str, Any], str]:
    """The comparison's champion and the sentence saying why.

    Parameters
    ----------
    rows, candidates
        The comparison's rows (``candidate`` and ``val_<metric>`` keys; ``oofval_<metric>`` where the
        candidate also has out-of-fold train probabilities) and the candidates behind them.
    y_val
        Validation labels.
    n_classes
        Number of classes.
    metric
        The selection metric (``accuracy``, ``balanced_accuracy``, ``macro_f1``, ...).
    seed
        Seed of the paired bootstrap.
    accuracy_guard
        When ``metric`` is not accuracy, a candidate must also not lose accuracy to ``cnn-best`` by more
        than the paired standard error.
    y_train
        Labels of the out-of-fold train rows (``oof_selection``); None judges on validation alone.

    Returns
    -------
    tuple
        The winning row and the rule's sentence. Each candidate is judged against ``cnn-best`` on its
        widest evidence (out-of-fold train + validation where both carry it, else validation) and tried in
        order of its lead there; the first that leads by more than the paired-bootstrap standard error of
        the difference (and passes the guard) wins; if none does, the study's best CNN stays champion.
    """

    key = f"val_{metric}"
    base = next((r for r in rows if r["candidate"] == BASELINE_CANDIDATE), None)
    if base is None:
        top = sorted(rows, key=lambda r: (-r[key], rows.index(r)))[0]
        return top, f"{top['candidate']} has the best val_{metric} ({top[key]:.4f}) and is champion"
    by_name = {c.name: c for c in candidates}
    others = [r for r in rows if r is not base]
    evidence = {r["candidate"]: Evidence.of(r, base, by_name[r["candidate"]], by_name[BASELINE_CANDIDATE], y_val,
                                            y_train, metric) for r in others}
    leads = {r["candidate"]: float(r[evidence[r["candidate"]].key] - base[evidence[r["candidate"]].key])
             for r in others}
    order = sorted(others, key=lambda r: (-leads[r["candidate"]], rows.index(r)))
    guard = accuracy_guard and metric != "accuracy"
    if not order or leads[order[0]["candidate"]] <= 0:
        where = " (out-of-fold train + validation where a candidate has both)" if y_train is not None else ""
        clause = f"no candidate leads {BASELINE_CANDIDATE} on {metric}{where}"
        vote = _tied_vote(base, others, leads, evidence, n_classes, metric, guard, seed)
        if vote is not None:
            return vote[0], f"{clause}; {vote[1]}: it is champion (votes break ties)"
        return base, f"{clause}: {BASELINE_CANDIDATE} ({key} {base[key]:.4f}) stays champion"
    top_clause = ""
    for row in order:
        if leads[row["candidate"]] <= 0:
            break
        ok, clause = _verdict(row, leads[row["candidate"]], evidence[row["candidate"]], n_classes, metric, guard,
                              seed)
        if ok:
            prefix = "" if row is order[0] else f"{top_clause}; "
            return row, f"{prefix}{clause}: it is champion"
        top_clause = top_clause or clause
    vote = _tied_vote(base, others, leads, evidence, n_classes, metric, guard, seed)
    if vote is not None:
        row, clause = vote
        return row, f"{top_clause}; {clause}: it is champion (votes break ties)"
    return base, f"{top_clause}: {BASELINE_CANDIDATE} stays champion"


def _tied_vote(base: Mapping[str, Any], others: Sequence[Mapping[str, Any]], leads: Mapping[str, float],
               evidence: Mapping[str, Evidence], n_classes: int, metric: str, guard: bool,
               seed: int) -> tuple[Mapping[str, Any], str] | None:
    """The vote with the lowest validation log loss among those that tie or lead ``cnn-best`` on the
    metric, pass the accuracy guard and beat its log loss; None when there is none."""
    tied = []
    for row in others:
        name = row["candidate"]
        if row.get("kind") != "vote" or leads[name] < 0 or "val_log_loss" not in row:
            continue
        if not row["val_log_loss"] < base.get("val_log_loss", float("inf")):
            continue
        ev = evidence[name]
        if guard:
            pred, base_pred = ev.probs.argmax(1), ev.base.argmax(1)
            acc = float(np.mean(pred == ev.y)) - float(np.mean(base_pred == ev.y))
            if -acc > paired_difference_se(ev.y, pred, base_pred, n_classes, "accuracy", seed=seed):
                continue
        tied.append(row)
    if not tied:
        return None
    best = min(tied, key=lambda r: (r["val_log_loss"], others.index(r)))
    return best, (f"{best['candidate']}, a vote, ties or leads it ({leads[best['candidate']]:+.4f} "
                  f"{evidence[best['candidate']].key}) with the lower validation log loss "
                  f"({best['val_log_loss']:.4f} vs {base['val_log_loss']:.4f})")
