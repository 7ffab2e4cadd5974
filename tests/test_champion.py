"""The champion rule: paired intervals on every guard metric, Bonferroni over the candidates, clear votes."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.ensembling.champion import RuleSettings, choose_champion
from experiments.ensembling.context import Candidate
from experiments.training.evaluation import classification_metrics

ACC = RuleSettings("accuracy")
BAL = RuleSettings("balanced_accuracy")


def _cand(name: str, probs: np.ndarray, kind: str = "x", **kw) -> Candidate:
    return Candidate(name, kind, [], probs, "", None, **kw)


def _one_hot(pred: np.ndarray, k: int, p: float = 0.97) -> np.ndarray:
    out = np.full((len(pred), k), (1 - p) / (k - 1))
    out[np.arange(len(pred)), pred] = p
    return out


def _table(y: np.ndarray, preds: dict, k: int, kinds: dict | None = None, p: float = 0.97):
    slugs = [f"c{i}" for i in range(k)]
    rows, cands = [], []
    for name, pred in preds.items():
        probs = pred if pred.ndim == 2 else _one_hot(pred, k, p)
        m = classification_metrics(y, probs, slugs)
        kind = (kinds or {}).get(name, "cnn" if name == "cnn-best" else "x")
        rows.append(
            {
                "candidate": name,
                "kind": kind,
                **{f"val_{key}": m[key] for key in ("accuracy", "balanced_accuracy", "macro_f1", "log_loss")},
            }
        )
        cands.append(_cand(name, probs, kind))
    return rows, cands


def _shift(y: np.ndarray, base: np.ndarray, fix: int, spoil: int, k: int) -> np.ndarray:
    """``base`` right on ``fix`` more images and wrong on ``spoil`` more."""
    out = base.copy()
    wrong, right = np.flatnonzero(base != y)[:fix], np.flatnonzero(base == y)[:spoil]
    out[wrong] = y[wrong]
    out[right] = (y[right] + 1) % k
    return out


def _noisy(rng: np.random.Generator, y: np.ndarray, p: float, k: int) -> np.ndarray:
    return np.where(rng.random(len(y)) < p, y, (y + 1) % k)


def test_a_clear_winner_is_crowned_and_a_lead_within_the_noise_is_not() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 300)
    cnn = _noisy(rng, y, 0.75, 4)
    rows, cands = _table(y, {"cnn-best": cnn, "vote-top3": _shift(y, cnn, 15, 12, 4)}, 4)
    winner, rule, judged = choose_champion(rows, cands, y, 4, ACC)
    assert winner["candidate"] == "cnn-best" and "stays champion" in rule and "not clearly better" in rule
    assert judged["vote-top3"].differences["accuracy"].verdict.startswith("not distinguishable")
    rows, cands = _table(y, {"cnn-best": cnn, "vote-top3": _noisy(rng, y, 0.95, 4)}, 4)
    winner, rule, judged = choose_champion(rows, cands, y, 4, ACC)
    assert winner["candidate"] == "vote-top3" and rule.endswith("it is champion")
    assert judged["vote-top3"].cells()["verdict"] == "better"


def test_a_candidate_that_leads_on_the_metric_but_trails_clearly_on_accuracy_is_not_crowned() -> None:
    """Chosen by balanced accuracy, a second stage that buys rare-class recall with the majority's accuracy
    loses, whatever its lead on the metric; without the accuracy guard it would have won."""
    rng = np.random.default_rng(2)
    y = np.r_[np.zeros(300, int), np.ones(50, int)]  # a rare class, 14%
    cnn = np.where(rng.random(350) < 0.9, y, 1 - y)
    cnn[300:330] = 0  # the CNN finds only some rare images
    greedy = cnn.copy()
    greedy[300:] = 1  # every rare image found ...
    greedy[np.flatnonzero(y == 0)[:60]] = 1  # ... for 60 majority images called rare
    rows, cands = _table(y, {"cnn-best": cnn, "gbm-greedy+prior": greedy}, 2)
    assert rows[1]["val_balanced_accuracy"] > rows[0]["val_balanced_accuracy"] + 0.1
    assert rows[1]["val_accuracy"] < rows[0]["val_accuracy"] - 0.05
    winner, rule, judged = choose_champion(rows, cands, y, 2, BAL)
    assert winner["candidate"] == "cnn-best", rule
    d = judged["gbm-greedy+prior"].differences
    assert d["balanced_accuracy"].verdict == "better" and d["accuracy"].verdict == "worse"
    assert "(guard)" in rule and "accuracy" in rule
    no_guard = RuleSettings("balanced_accuracy", guard_metrics=())
    assert choose_champion(rows, cands, y, 2, no_guard)[0]["candidate"] == "gbm-greedy+prior"


def test_the_rule_counts_the_candidates_it_looked_at() -> None:
    """A lead that one comparison would call clear is noise among twenty: Bonferroni over the candidates."""
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 1000)
    cnn = _noisy(rng, y, 0.8, 3)
    lucky = _shift(y, cnn, 18, 6, 3)  # +12 images of 1,000: z ~ 12 / sqrt(24) = 2.45
    rows, cands = _table(y, {"cnn-best": cnn, "gbm-a": lucky}, 3)
    winner, _, judged = choose_champion(rows, cands, y, 3, ACC)
    assert winner["candidate"] == "gbm-a" and judged["gbm-a"].differences["accuracy"].level == pytest.approx(0.95)
    preds = {"cnn-best": cnn, "gbm-a": lucky, **{f"gbm-{i}": cnn.copy() for i in range(18)}}
    rows, cands = _table(y, preds, 3)
    winner, rule, judged = choose_champion(rows, cands, y, 3, ACC)
    assert winner["candidate"] == "cnn-best", rule
    assert judged["gbm-a"].differences["accuracy"].level == pytest.approx(1 - 0.05 / 19)
    assert rule.startswith("19 candidate(s) judged")


def test_a_vote_breaks_a_tie_only_with_a_clearly_lower_log_loss() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 4, 400)
    cnn = _noisy(rng, y, 0.75, 4)
    sure, soft = _one_hot(cnn, 4, 0.97), _one_hot(cnn, 4, 0.7)  # same answers, the vote less overconfident

    def choose(kind: str, probs: np.ndarray) -> tuple[str, str]:
        rows, cands = _table(y, {"cnn-best": sure, "x": probs}, 4, kinds={"x": kind})
        winner, rule, _ = choose_champion(rows, cands, y, 4, ACC)
        return winner["candidate"], rule

    name, rule = choose("vote", soft)
    assert name == "x" and "a clear vote breaks the tie" in rule
    assert choose("gbm", soft)[0] == "cnn-best"  # fit on validation: no tie-break
    assert choose("vote", _one_hot(cnn, 4, 0.99))[0] == "cnn-best"  # a higher log loss
    worse = _one_hot(_shift(y, cnn, 0, 25, 4), 4, 0.7)  # lower log loss, but 25 answers worse
    assert choose("vote", worse)[0] == "cnn-best"


def test_no_champion_is_worse_than_the_reference_recipe() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 300)
    cnn = _noisy(rng, y, 0.6, 4)
    vote = _one_hot(cnn, 4, 0.5)  # a clear vote: same answers, lower log loss
    rows, cands = _table(
        y, {"cnn-best": cnn, "reference": _shift(y, cnn, 20, 16, 4), "vote-top3": vote}, 4, kinds={"vote-top3": "vote"}
    )
    winner, rule, _ = choose_champion(rows, cands, y, 4, ACC)
    assert winner["candidate"] == "vote-top3" and "reference floor" not in rule  # the reference is only a bit better
    rows, cands = _table(
        y, {"cnn-best": cnn, "reference": _shift(y, cnn, 80, 0, 4), "vote-top3": vote}, 4, kinds={"vote-top3": "vote"}
    )
    winner, rule, _ = choose_champion(rows, cands, y, 4, ACC)
    assert winner["candidate"] == "reference" and rule.endswith("it is champion")  # it beat cnn-best outright


def test_the_reference_floor_replaces_a_champion_that_is_worse_than_the_reference() -> None:
    """A candidate that beat cnn-best on the wide out-of-fold evidence but is worse than the reference on the
    validation images both have gives way to the reference."""
    rng = np.random.default_rng(6)
    y = rng.integers(0, 4, 300)
    y_tr = rng.integers(0, 4, 3000)
    cnn_val, ref_val, gbm_val = _noisy(rng, y, 0.7, 4), _noisy(rng, y, 0.9, 4), _noisy(rng, y, 0.55, 4)
    cnn_tr, gbm_tr = _noisy(rng, y_tr, 0.5, 4), _noisy(rng, y_tr, 0.8, 4)
    cands = [
        _cand("cnn-best", _one_hot(cnn_val, 4), train_probs=_one_hot(cnn_tr, 4)),
        _cand("reference", _one_hot(ref_val, 4)),
        _cand("gbm-x", _one_hot(gbm_val, 4), train_probs=_one_hot(gbm_tr, 4)),
    ]
    rows = []
    for c in cands:
        row = {"candidate": c.name, "kind": "x", "val_accuracy": float(np.mean(c.val_probs.argmax(1) == y))}
        if c.train_probs is not None:
            both = np.r_[c.train_probs.argmax(1), c.val_probs.argmax(1)]
            row["oofval_accuracy"] = float(np.mean(both == np.r_[y_tr, y]))
        rows.append(row)
    winner, rule, judged = choose_champion(rows, cands, y, 4, ACC, y_train=y_tr)
    assert judged["gbm-x"].wins and "out-of-fold train" in judged["gbm-x"].evidence
    assert winner["candidate"] == "reference", rule
    assert rule.endswith("reference is champion (reference floor)")


def test_out_of_fold_train_evidence_overrules_a_lucky_validation_split() -> None:
    rng = np.random.default_rng(3)
    y_val = np.r_[np.zeros(40, int), np.ones(20, int)]
    y_tr = np.r_[np.zeros(600, int), np.ones(300, int)]
    cnn_val, cnn_tr = _noisy(rng, y_val, 0.6, 2), _noisy(rng, y_tr, 0.7, 2)
    lucky_val, lucky_tr = y_val.copy(), _noisy(rng, y_tr, 0.68, 2)  # perfect on validation only

    def setup(tr: np.ndarray):
        cands = [
            _cand("cnn-best", _one_hot(cnn_val, 2), train_probs=_one_hot(cnn_tr, 2)),
            _cand("stack-x", _one_hot(lucky_val, 2), train_probs=_one_hot(tr, 2)),
        ]
        rows = []
        for c in cands:
            rows.append(
                {
                    "candidate": c.name,
                    "kind": "x",
                    "val_accuracy": float(np.mean(c.val_probs.argmax(1) == y_val)),
                    "oofval_accuracy": float(
                        np.mean(np.r_[c.train_probs.argmax(1), c.val_probs.argmax(1)] == np.r_[y_tr, y_val])
                    ),
                }
            )
        return rows, cands

    rows, cands = setup(lucky_tr)
    assert choose_champion(rows, cands, y_val, 2, ACC)[0]["candidate"] == "stack-x"  # validation alone
    winner, rule, _ = choose_champion(rows, cands, y_val, 2, ACC, y_train=y_tr)
    assert winner["candidate"] == "cnn-best" and "out-of-fold train" in rule
    rows, cands = setup(_noisy(rng, y_tr, 0.85, 2))
    assert choose_champion(rows, cands, y_val, 2, ACC, y_train=y_tr)[0]["candidate"] == "stack-x"


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"guard_metrics": ["log_loss"]}, "guard_metrics='log_loss'"),
        ({"guard_metrics": 3}, "must be a list"),
        ({"guard_margin": -0.1}, "guard_margin"),
        ({"guard_margin": "small"}, "guard_margin"),
        ({"confidence": 1.0}, "confidence"),
    ],
)
def test_bad_rule_settings_are_one_line_errors(raw: dict, match: str) -> None:
    from core.errors import ConfigError
    from experiments.settings.ensemble import config_from_dict

    with pytest.raises(ConfigError, match=match):
        config_from_dict(raw)


def test_a_validation_only_choice_says_how_little_evidence_it_rests_on() -> None:
    from experiments.ensembling.evidence import evidence_note

    rng = np.random.default_rng(7)
    y = rng.integers(0, 4, 120)
    cnn = _noisy(rng, y, 0.7, 4)
    rows, cands = _table(y, {"cnn-best": cnn, **{f"gbm-{i}": _noisy(rng, y, 0.7, 4) for i in range(5)}}, 4)
    _, _, judged = choose_champion(rows, cands, y, 4, ACC)
    note = evidence_note(judged, None, budget_cut=True)
    assert note.startswith(
        "the champion rule judged every candidate on 120 validation images only (cross-fitting "
        "was skipped for the budget): at the corrected level 99.00% a difference in accuracy"
    )
    half = 100 * (judged["gbm-0"].differences["accuracy"].hi - judged["gbm-0"].differences["accuracy"].lo) / 2
    assert f"must exceed about {half:.1f} points" in note
    assert evidence_note(judged, np.zeros(10, int), budget_cut=True) is None  # out-of-fold evidence: no note
