"""The champion rule: a candidate replaces the best CNN only on clear paired evidence, on every guard metric.

Each candidate is compared with ``cnn-best`` image by image on its widest evidence (out-of-fold train +
validation where both carry it, ``oof_selection``; else validation), by paired-bootstrap intervals of the
difference (:mod:`experiments.paired`). Every interval is at the Bonferroni level for the number of
candidates the comparison looked at (``1 - (1 - confidence) / m``), so a win by selection noise among
19 candidates does not count.

A candidate **wins** when

- on the selection metric its interval lies above 0 (it is *better*), and
- on every guard metric (``guard_metrics``, accuracy by default; the selection metric always) its
  interval's lower end is above ``-guard_margin``: it is not worse by more than the margin
  (non-inferiority), so it cannot buy rare-class recall with the majority classes' accuracy.

Winners are tried in the order of their lead; the first is champion. When none wins, the simpler models
are preferred: a soft **vote** of the study's models (nothing fit on validation) is champion only when it
is non-inferior on every guard metric and its per-image log loss is *clearly* lower (the interval of the
mean difference below 0, Bonferroni over the votes); otherwise ``cnn-best`` stays.

The reference floor: where the comparison holds the study's reference trial (``reference``, the shipped
recipe trained inside the study), a champion that is *worse* than it on the validation images (the interval
of the difference on the selection metric or a guard metric below 0) gives way to the reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from experiments.ensembling.context import REFERENCE_CANDIDATE, Candidate
from experiments.paired import (
    PairedDifference,
    bonferroni_level,
    paired_bootstrap,
    paired_mean_interval,
    per_image_log_loss,
)

#: The candidate every ensemble must beat: the study's best CNN alone.
BASELINE_CANDIDATE = "cnn-best"
#: Resamples of the paired bootstrap behind the rule.
RULE_RESAMPLES = 2000


@dataclass(frozen=True)
class RuleSettings:
    """How strict the rule is: the metrics and level it judges by (``ensemble.yaml``)."""

    metric: str
    guard_metrics: tuple[str, ...] = ("accuracy",)
    guard_margin: float = 0.01
    confidence: float = 0.95
    seed: int = 0

    @property
    def judged(self) -> tuple[str, ...]:
        """The selection metric, then the guard metrics (each once)."""
        return tuple(dict.fromkeys((self.metric, *self.guard_metrics)))


@dataclass(frozen=True)
class Evidence:
    """The images one candidate is judged on against ``cnn-best``: labels and both sides' probabilities."""

    y: np.ndarray
    probs: np.ndarray
    base: np.ndarray
    prefix: str  # the row-key prefix of the metrics on these images (val or oofval)
    where: str

    @classmethod
    def of(
        cls,
        row: Mapping[str, Any],
        base_row: Mapping[str, Any],
        cand: Candidate,
        base: Candidate,
        y_val: np.ndarray,
        y_train: np.ndarray | None,
        metric: str,
    ) -> Evidence:
        """Out-of-fold train + validation when the row and ``cnn-best`` both carry it, else validation."""
        key = f"oofval_{metric}"
        if (
            y_train is not None
            and key in row
            and key in base_row
            and cand.train_probs is not None
            and base.train_probs is not None
        ):
            return cls(
                np.concatenate([y_train, y_val]),
                np.concatenate([cand.train_probs, cand.val_probs]),
                np.concatenate([base.train_probs, base.val_probs]),
                "oofval",
                f"{len(y_train)} out-of-fold train + {len(y_val)} validation images",
            )
        return cls(y_val, cand.val_probs, base.val_probs, "val", f"{len(y_val)} validation images")


@dataclass(frozen=True)
class Judgement:
    """One candidate against ``cnn-best``: its paired differences on the judged metrics and the outcome."""

    candidate: str
    evidence: str
    differences: Mapping[str, PairedDifference]
    wins: bool
    clause: str

    def cells(self) -> dict[str, str]:
        """Table cells: ``d_<metric>`` (difference and interval) and ``verdict`` (on the first metric)."""
        out = {f"d_{m}": d.text() for m, d in self.differences.items()}
        first = next(iter(self.differences.values()))
        out["verdict"] = first.verdict
        return out


def _differences(ev: Evidence, settings: RuleSettings, n_classes: int, level: float) -> dict[str, PairedDifference]:
    return paired_bootstrap(
        ev.y,
        ev.probs.argmax(1),
        ev.base.argmax(1),
        n_classes,
        metrics=settings.judged,
        n_resamples=RULE_RESAMPLES,
        seed=settings.seed,
        level=level,
        interval="normal",
    )


def _non_inferior(diffs: Mapping[str, PairedDifference], settings: RuleSettings) -> list[str]:
    """The judged metrics on which the candidate may be worse than ``cnn-best`` by more than the margin."""
    return [m for m, d in diffs.items() if d.lo < -settings.guard_margin]


def _describe(name: str, diffs: Mapping[str, PairedDifference], where: str, level: float) -> str:
    parts = ", ".join(f"{m} {d.text()}" for m, d in diffs.items())
    return f"{name} - {BASELINE_CANDIDATE} on {where}: {parts} ({100 * level:.2f}% paired intervals)"


def judge(
    rows: Sequence[Mapping[str, Any]],
    candidates: Sequence[Candidate],
    y_val: np.ndarray,
    n_classes: int,
    settings: RuleSettings,
    *,
    y_train: np.ndarray | None = None,
) -> dict[str, Judgement]:
    """Every candidate but ``cnn-best`` against it, at the Bonferroni level for their number (see module docs)."""
    base_row = next(r for r in rows if r["candidate"] == BASELINE_CANDIDATE)
    by_name = {c.name: c for c in candidates}
    others = [r for r in rows if r is not base_row]
    level = bonferroni_level(settings.confidence, len(others))
    out = {}
    for row in others:
        name = row["candidate"]
        ev = Evidence.of(row, base_row, by_name[name], by_name[BASELINE_CANDIDATE], y_val, y_train, settings.metric)
        diffs = _differences(ev, settings, n_classes, level)
        lead = diffs[settings.metric]
        short = _non_inferior(diffs, settings)
        text = _describe(name, diffs, ev.where, level)
        if lead.lo <= 0:
            wins, clause = False, f"{text}: not clearly better on {settings.metric}"
        elif short:
            wins, clause = (
                False,
                (
                    f"{text}: better on {settings.metric} but possibly worse by more than "
                    f"{settings.guard_margin:g} on {', '.join(short)} (guard)"
                ),
            )
        else:
            wins, clause = True, f"{text}: better on {settings.metric} and not worse on the guard metrics"
        out[name] = Judgement(name, ev.where, diffs, wins, clause)
    return out


def choose_champion(
    rows: Sequence[Mapping[str, Any]],
    candidates: Sequence[Candidate],
    y_val: np.ndarray,
    n_classes: int,
    settings: RuleSettings,
    *,
    y_train: np.ndarray | None = None,
) -> tuple[Mapping[str, Any], str, dict[str, Judgement]]:
    """The comparison's champion, the rule's sentence and every candidate's judgement (see module docs).

    Parameters
    ----------
    rows, candidates
        The comparison's rows (``candidate``, ``kind`` and ``val_<metric>`` keys; ``oofval_<metric>`` where
        the candidate also has out-of-fold train probabilities) and the candidates behind them.
    y_val
        Validation labels.
    n_classes
        Number of classes.
    settings
        The selection metric, guard metrics, margin, confidence and bootstrap seed.
    y_train
        Labels of the out-of-fold train rows (``oof_selection``); None judges on validation alone.
    """
    base = next((r for r in rows if r["candidate"] == BASELINE_CANDIDATE), None)
    key = f"val_{settings.metric}"
    if base is None:
        top = sorted(rows, key=lambda r: (-r[key], rows.index(r)))[0]
        return top, f"{top['candidate']} has the best {key} ({top[key]:.4f}) and is champion", {}
    judgements = judge(rows, candidates, y_val, n_classes, settings, y_train=y_train)
    if not judgements:
        return base, f"{BASELINE_CANDIDATE} is the only candidate and champion", judgements
    by_row = {r["candidate"]: r for r in rows}
    order = sorted(
        judgements.values(), key=lambda j: (-j.differences[settings.metric].diff, rows.index(by_row[j.candidate]))
    )
    winner = next((j for j in order if j.wins), None)
    looked = f"{len(judgements)} candidate(s) judged against {BASELINE_CANDIDATE}"
    if winner is not None:
        row, rule = by_row[winner.candidate], f"{looked}; {winner.clause}: it is champion"
    else:
        top = order[0]
        vote = _clear_vote(rows, candidates, y_val, judgements, settings)
        if vote is not None:
            row, rule = by_row[vote[0]], f"{looked}; none is clearly better (best: {top.clause}); {vote[1]}"
        else:
            row, rule = (
                base,
                (
                    f"{looked}; none is clearly better without losing on a guard metric (best: "
                    f"{top.clause}): {BASELINE_CANDIDATE} stays champion"
                ),
            )
    return _reference_floor(row, rule, rows, candidates, y_val, n_classes, settings) + (judgements,)


def _clear_vote(
    rows: Sequence[Mapping[str, Any]],
    candidates: Sequence[Candidate],
    y_val: np.ndarray,
    judgements: Mapping[str, Judgement],
    settings: RuleSettings,
) -> tuple[str, str] | None:
    """The vote that is non-inferior on every judged metric and has a clearly lower per-image log loss
    than ``cnn-best`` (the lowest mean among such votes), or None."""
    by_name = {c.name: c for c in candidates}
    votes = [r["candidate"] for r in rows if r.get("kind") == "vote" and r["candidate"] in judgements]
    if not votes:
        return None
    level = bonferroni_level(settings.confidence, len(votes))
    base = by_name[BASELINE_CANDIDATE]
    clear = []
    for name in votes:
        if _non_inferior(judgements[name].differences, settings):
            continue
        c = by_name[name]
        diff = per_image_log_loss(y_val, c.val_probs) - per_image_log_loss(y_val, base.val_probs)
        mean, lo, hi = paired_mean_interval(diff, level=level)
        if hi < 0:
            clear.append((mean, name, lo, hi))
    if not clear:
        return None
    mean, name, lo, hi = min(clear)
    return name, (
        f"{name}, a vote, is not worse on the guard metrics and its validation log loss is clearly lower "
        f"({mean:+.4f} [{lo:+.4f}, {hi:+.4f}] per image, {100 * level:.2f}%): it is champion "
        "(a clear vote breaks the tie)"
    )


def _reference_floor(
    row: Mapping[str, Any],
    rule: str,
    rows: Sequence[Mapping[str, Any]],
    candidates: Sequence[Candidate],
    y_val: np.ndarray,
    n_classes: int,
    settings: RuleSettings,
) -> tuple[Mapping[str, Any], str]:
    """The reference trial replaces a champion that is worse than it on validation (see module docs)."""
    ref = next((r for r in rows if r["candidate"] == REFERENCE_CANDIDATE), None)
    if ref is None or row is ref:
        return row, rule
    by_name = {c.name: c for c in candidates}
    diffs = paired_bootstrap(
        y_val,
        by_name[REFERENCE_CANDIDATE].val_probs.argmax(1),
        by_name[row["candidate"]].val_probs.argmax(1),
        n_classes,
        metrics=settings.judged,
        n_resamples=RULE_RESAMPLES,
        seed=settings.seed,
        level=settings.confidence,
        interval="normal",
    )
    worse = [m for m, d in diffs.items() if d.lo > 0]
    if not worse:
        return row, rule
    parts = ", ".join(f"{m} {diffs[m].text()}" for m in worse)
    return ref, (
        f"{rule}; but the reference recipe is better than {row['candidate']} on {len(y_val)} validation "
        f"images ({parts}, reference - {row['candidate']}): {REFERENCE_CANDIDATE} is champion "
        "(reference floor)"
    )
