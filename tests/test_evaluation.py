"""Classification metrics against hand-computed values and scikit-learn."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from experiments.evaluation import (
    class_recall,
    classification_metrics,
    per_class_table,
    prefixed,
    rare_class_tradeoff,
    scalar_metrics,
)
from pipelines.classes import CLASS_SLUGS, absent_classes
from pipelines.errors import DataError


def _one_hot_probs(pred, n_classes=10, p=0.9):
    probs = np.full((len(pred), n_classes), (1 - p) / (n_classes - 1))
    probs[np.arange(len(pred)), pred] = p
    return probs


def test_hand_computed_three_classes():
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 2, 2])
    m = classification_metrics(y, _one_hot_probs(pred, 3), ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["recall_a"] == pytest.approx(2 / 3) and m["recall_b"] == pytest.approx(1 / 2) and m["recall_c"] == 1.0
    assert m["precision_a"] == 1.0 and m["precision_b"] == pytest.approx(1 / 2) and m["precision_c"] == pytest.approx(1 / 2)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    np.testing.assert_allclose(m["confusion"], [[2 / 3, 1 / 3, 0], [0, 0.5, 0.5], [0, 0, 1]])
    np.testing.assert_array_equal(m["confusion_counts"], [[2, 1, 0], [0, 1, 1], [0, 0, 1]])


def test_matches_sklearn_on_random_predictions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 300)
    probs = rng.dirichlet(np.ones(10), 300)
    m = classification_metrics(y, probs)
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, probs, labels=range(10)), rel=1e-6)
    recall = skm.recall_score(y, pred, average=None, labels=range(10))
    np.testing.assert_allclose(class_recall(m), recall)
    np.testing.assert_allclose(m["confusion"].sum(1), 1.0)


def test_perfect_and_absent_classes():
    y = np.array([0, 1, 1, 3])
    m = classification_metrics(y, _one_hot_probs(y))
    assert m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0
    assert m["recall_round"] == 0.0 and m["precision_round"] == 0.0  # class 2 absent, never predicted
    assert m["confusion"][2].sum() == 0.0
    # one convention for every macro metric: the classes present in y_true (issue 11: a 1-class file
    # used to give accuracy 100%, balanced accuracy 100%, macro-F1 10%)
    assert m["macro_f1"] == pytest.approx(1.0)
    assert absent_classes(y, CLASS_SLUGS) == [s for k, s in enumerate(CLASS_SLUGS) if k not in (0, 1, 3)]


def test_macro_metrics_agree_on_a_one_class_split():
    y = np.zeros(6, dtype=int)
    probs = _one_hot_probs(np.array([0, 0, 0, 0, 0, 1]))
    m = classification_metrics(y, probs)
    assert m["balanced_accuracy"] == pytest.approx(5 / 6)
    # F1 of class 0 (the only class present): 2*5 / (6 + 5)
    assert m["macro_f1"] == pytest.approx(10 / 11)


def test_log_loss_is_finite_for_zero_probability():
    probs = np.zeros((2, 10))
    probs[:, 5] = 1.0
    m = classification_metrics(np.array([0, 5]), probs)
    assert np.isfinite(m["log_loss"]) and m["log_loss"] == pytest.approx(-np.log(1e-7) / 2, rel=1e-3)


def test_prefixed_names_and_tables():
    y = np.arange(10)
    m = classification_metrics(y, _one_hot_probs(y))
    val = prefixed(m, "val")
    assert "val_recall_disturbed" in val and "val_precision_edge_on_bulge" in val and "val_accuracy" in val
    assert "val_confusion" not in val and all(isinstance(v, float) for v in val.values())
    assert set(scalar_metrics(m)) == {k[4:] for k in val}
    rows = per_class_table(m)
    assert [r["class"] for r in rows] == list(CLASS_SLUGS) and all(r["support"] == 1 for r in rows)
    np.testing.assert_allclose(class_recall(val, "val"), np.ones(10))


@pytest.mark.parametrize("y, probs, match", [
    (np.array([0.5, 1.0]), np.ones((2, 10)) / 10, "integer"),
    (np.array([0, 1]), np.ones((3, 10)) / 10, "n_images"),
    (np.array([0, 12]), np.ones((2, 10)) / 10, "0..9"),
    (np.array([0, 1]), np.full((2, 10), np.nan), "NaN"),
    (np.array([], dtype=int), np.ones((0, 10)), "n_images"),
])
def test_bad_inputs(y, probs, match):
    with pytest.raises(DataError, match=match):
        classification_metrics(y, probs)


def test_paired_difference_se() -> None:
    from experiments.evaluation import paired_difference_se

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    a = np.where(rng.random(400) < 0.8, y, (y + 1) % 3)
    assert paired_difference_se(y, a, a, 3, "accuracy") == 0.0
    b = np.where(rng.random(400) < 0.1, (a + 1) % 3, a)  # b differs from a on ~10% of images
    se = paired_difference_se(y, a, b, 3, "accuracy", n_resamples=2000)
    disagree = np.mean(a != b)
    assert se == pytest.approx(np.sqrt(disagree / 400), rel=0.25)  # ~ sqrt(p_discordant / n)
    assert paired_difference_se(y, a, b, 3, "balanced_accuracy") > 0


def test_an_ensemble_replaces_the_cnn_only_beyond_the_standard_error() -> None:
    from experiments.ensembling.champion import choose_champion
    from experiments.ensembling.context import Candidate

    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 300)
    cnn = np.where(rng.random(300) < 0.75, y, (y + 1) % 4)
    slightly = cnn.copy()  # disagrees with the CNN on 27 images: 15 more right, 12 more wrong, net +0.01
    wrong, right = np.flatnonzero(cnn != y)[:15], np.flatnonzero(cnn == y)[:12]
    slightly[wrong] = y[wrong]
    slightly[right] = (y[right] + 2) % 4
    much = np.where(rng.random(300) < 0.95, y, (y + 1) % 4)

    def cand(name: str, pred: np.ndarray) -> Candidate:
        return Candidate(name, "x", [], np.eye(4)[pred], "", None)

    def row(name: str, pred: np.ndarray) -> dict:
        return {"candidate": name, "val_accuracy": float(np.mean(pred == y))}

    rows = [row("cnn-best", cnn), row("vote-top3", slightly)]
    winner, rule = choose_champion(rows, [cand("cnn-best", cnn), cand("vote-top3", slightly)], y, 4, "accuracy")
    assert winner["candidate"] == "cnn-best" and "stays champion" in rule and "within" in rule
    rows = [row("cnn-best", cnn), row("vote-top3", much)]
    winner, rule = choose_champion(rows, [cand("cnn-best", cnn), cand("vote-top3", much)], y, 4, "accuracy")
    assert winner["candidate"] == "vote-top3" and "is champion" in rule


def test_a_vote_that_ties_the_cnn_with_a_lower_log_loss_breaks_the_tie() -> None:
    """Within the SE no candidate wins outright; a vote (nothing fit on validation) that ties or leads
    with the lower validation log loss is champion; a second stage in the same place, a vote with the
    higher log loss, or a vote that loses accuracy beyond its SE (guard) is not."""
    from experiments.ensembling.champion import choose_champion
    from experiments.ensembling.context import Candidate

    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 300)
    cnn = np.where(rng.random(300) < 0.75, y, (y + 1) % 4)
    slightly = cnn.copy()  # 15 more right, 12 more wrong: +0.01, within the SE
    wrong, right = np.flatnonzero(cnn != y)[:15], np.flatnonzero(cnn == y)[:12]
    slightly[wrong] = y[wrong]
    slightly[right] = (y[right] + 2) % 4

    def cand(name: str, kind: str, pred: np.ndarray) -> Candidate:
        return Candidate(name, kind, [], np.eye(4)[pred], "", None)

    def row(name: str, kind: str, pred: np.ndarray, log_loss: float) -> dict:
        return {"candidate": name, "kind": kind, "val_accuracy": float(np.mean(pred == y)), "val_log_loss": log_loss}

    def choose(kind: str, log_loss: float, pred: np.ndarray = slightly) -> tuple[str, str]:
        rows = [row("cnn-best", "cnn", cnn, 0.80), row("x", kind, pred, log_loss)]
        winner, rule = choose_champion(rows, [cand("cnn-best", "cnn", cnn), cand("x", kind, pred)], y, 4, "accuracy")
        return winner["candidate"], rule

    name, rule = choose("vote", 0.75)
    assert name == "x" and rule.endswith("it is champion (votes break ties)") and "lower validation log loss" in rule
    assert choose("vote", 0.85)[0] == "cnn-best"  # a higher log loss: the CNN stays
    assert choose("gbm", 0.75)[0] == "cnn-best"  # fit on validation: no tie-break
    assert choose("vote", 0.75, cnn)[0] == "x"  # an exact tie on the metric
    worse = cnn.copy()
    worse[np.flatnonzero(cnn == y)[:5]] = (y[np.flatnonzero(cnn == y)[:5]] + 1) % 4
    assert choose("vote", 0.75, worse)[0] == "cnn-best"  # it trails on the metric


def test_no_champion_trails_the_reference_recipe() -> None:
    """The reference floor: a champion (the best CNN staying, or a candidate that beat it) that trails the
    study's reference trial beyond the paired SE gives way to the reference; within the SE it stays."""
    from experiments.ensembling.champion import choose_champion
    from experiments.ensembling.context import Candidate

    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 300)

    def noisy(p_right: float) -> np.ndarray:
        return np.where(rng.random(300) < p_right, y, (y + 1) % 4)

    def cand(name: str, pred: np.ndarray) -> Candidate:
        return Candidate(name, "x", [], np.eye(4)[pred], "", None)

    def row(name: str, pred: np.ndarray) -> dict:
        return {"candidate": name, "val_accuracy": float(np.mean(pred == y))}

    cnn, good_ref, vote = noisy(0.60), noisy(0.85), noisy(0.62)
    preds = {"cnn-best": cnn, "reference": good_ref, "vote-top3": vote}
    rows, cands = [row(n, p) for n, p in preds.items()], [cand(n, p) for n, p in preds.items()]
    winner, rule = choose_champion(rows, cands, y, 4, "accuracy")
    assert winner["candidate"] == "reference" and rule.endswith(": it is champion")  # it beat cnn-best outright
    # a reference that is only a little better: the best CNN stays (within the SE of the difference)
    close = cnn.copy()  # 20 more right, 16 more wrong: +0.013, within the SE of 36 disagreements
    fix, spoil = np.flatnonzero(cnn != y)[:20], np.flatnonzero(cnn == y)[:16]
    close[fix] = y[fix]
    close[spoil] = (y[spoil] + 2) % 4
    preds = {"cnn-best": cnn, "reference": close}
    rows, cands = [row(n, p) for n, p in preds.items()], [cand(n, p) for n, p in preds.items()]
    winner, rule = choose_champion(rows, cands, y, 4, "accuracy")
    assert winner["candidate"] == "cnn-best" and "reference floor" not in rule
    # an ensemble that beat cnn-best on the wider out-of-fold evidence, but trails the reference on the
    # validation images both have beyond the SE, gives way to it
    y_tr = rng.integers(0, 4, 1000)

    def noisy_tr(p_right: float) -> np.ndarray:
        return np.where(rng.random(1000) < p_right, y_tr, (y_tr + 1) % 4)

    cnn_val, ref_val, vote_val = noisy(0.70), noisy(0.74), noisy(0.55)
    cands = [Candidate("cnn-best", "x", [], np.eye(4)[cnn_val], "", None, train_probs=np.eye(4)[noisy_tr(0.5)]),
             cand("reference", ref_val),
             Candidate("gbm-x", "x", [], np.eye(4)[vote_val], "", None, train_probs=np.eye(4)[noisy_tr(0.9)])]
    rows = [row("cnn-best", cnn_val), row("reference", ref_val), row("gbm-x", vote_val)]
    for r, c in zip(rows, cands):
        if c.train_probs is not None:
            both = np.concatenate([c.train_probs.argmax(1), c.val_probs.argmax(1)])
            r["oofval_accuracy"] = float(np.mean(both == np.concatenate([y_tr, y])))
    winner, rule = choose_champion(rows, cands, y, 4, "accuracy", y_train=y_tr)
    assert winner["candidate"] == "reference", rule
    assert "gbm-x leads cnn-best by" in rule and "gbm-x trails the reference recipe by" in rule
    assert rule.endswith("reference is champion (reference floor)")


def test_the_accuracy_guard_keeps_a_balanced_winner_from_trading_away_accuracy() -> None:
    """Chosen by balanced accuracy, a candidate that buys rare-class recall with majority accuracy loses."""
    from experiments.ensembling.champion import choose_champion
    from experiments.ensembling.context import Candidate
    from experiments.evaluation import classification_metrics

    rng = np.random.default_rng(2)
    y = np.r_[np.zeros(270, int), np.ones(30, int)]  # one rare class, 10%
    cnn = np.zeros(300, int)  # the majority answer: accuracy 0.9, balanced 0.5
    greedy = np.where(rng.random(300) < 0.5, 1, 0)  # calls half of everything rare: balanced ~0.5+, accuracy ~0.5
    greedy[270:] = 1  # every rare image found: balanced ~0.75, accuracy ~0.55
    careful = cnn.copy()
    careful[270:290] = 1  # 20 of 30 rare found, nothing else changed: balanced 0.83, accuracy 0.967
    careful[:5] = 1

    def cand(name: str, pred: np.ndarray) -> Candidate:
        return Candidate(name, "x", [], np.eye(2)[pred], "", None)

    def row(name: str, pred: np.ndarray) -> dict:
        m = classification_metrics(y, np.eye(2)[pred], ["majority", "rare"])
        return {"candidate": name, "val_accuracy": m["accuracy"], "val_balanced_accuracy": m["balanced_accuracy"]}

    preds = {"cnn-best": cnn, "gbm-greedy": greedy}
    rows, cands = [row(k, v) for k, v in preds.items()], [cand(k, v) for k, v in preds.items()]
    assert rows[1]["val_balanced_accuracy"] > rows[0]["val_balanced_accuracy"] + 0.2
    winner, rule = choose_champion(rows, cands, y, 2, "balanced_accuracy")
    assert winner["candidate"] == "cnn-best" and "accuracy guard" in rule and "stays champion" in rule
    winner, rule = choose_champion(rows, cands, y, 2, "balanced_accuracy", accuracy_guard=False)
    assert winner["candidate"] == "gbm-greedy"
    # the guard passes over a greedy leader to the next candidate that wins without losing accuracy
    greedy[:270] = np.where(rng.random(270) < 0.02, 0, 1)  # now nearly everything rare: balanced ~0.51
    preds = {"cnn-best": cnn, "gbm-greedy": greedy, "gbm-careful": careful}
    rows, cands = [row(k, v) for k, v in preds.items()], [cand(k, v) for k, v in preds.items()]
    rows[1]["val_balanced_accuracy"] = 0.99  # the greedy one ranks first by the metric
    winner, rule = choose_champion(rows, cands, y, 2, "balanced_accuracy")
    assert winner["candidate"] == "gbm-careful" and rule.startswith("gbm-greedy") and "it is champion" in rule


def test_out_of_fold_train_evidence_overrules_a_lucky_validation_split() -> None:
    """3 rare validation images: a candidate that finds all 3 leads on validation; on 200 out-of-fold
    train images (30 rare) it calls many ordinary images rare, and the wide evidence keeps the CNN."""
    from experiments.ensembling.champion import choose_champion
    from experiments.ensembling.context import Candidate
    from experiments.evaluation import classification_metrics

    rng = np.random.default_rng(3)
    y_val = np.r_[np.zeros(21, int), np.ones(3, int)]
    y_tr = np.r_[np.zeros(170, int), np.ones(30, int)]
    cnn_val, cnn_tr = np.zeros(24, int), np.zeros(200, int)  # the majority answer
    lucky_val = y_val.copy()  # all 3 rare found, no false alarm
    lucky_tr = np.where(rng.random(200) < 0.45, 1, 0)  # on train: rare calls at random

    def cand(name: str, val: np.ndarray, tr: np.ndarray) -> Candidate:
        return Candidate(name, "x", [], np.eye(2)[val], "", None, train_rows=np.arange(200), train_probs=np.eye(2)[tr])

    def row(name: str, val: np.ndarray, tr: np.ndarray) -> dict:
        mv = classification_metrics(y_val, np.eye(2)[val], ["majority", "rare"])
        mw = classification_metrics(np.r_[y_tr, y_val], np.eye(2)[np.r_[tr, val]], ["majority", "rare"])
        return {"candidate": name, "val_balanced_accuracy": mv["balanced_accuracy"],
                "oofval_balanced_accuracy": mw["balanced_accuracy"]}

    rows = [row("cnn-best", cnn_val, cnn_tr), row("stack-lucky", lucky_val, lucky_tr)]
    cands = [cand("cnn-best", cnn_val, cnn_tr), cand("stack-lucky", lucky_val, lucky_tr)]
    # validation alone (no train labels given): the lucky candidate wins
    winner, rule = choose_champion(rows, cands, y_val, 2, "balanced_accuracy", accuracy_guard=False)
    assert winner["candidate"] == "stack-lucky" and "on 24 validation images" in rule
    # with the out-of-fold train evidence its lead shrinks into the noise and the CNN stays
    winner, rule = choose_champion(rows, cands, y_val, 2, "balanced_accuracy", accuracy_guard=False, y_train=y_tr)
    assert winner["candidate"] == "cnn-best" and "stays champion" in rule and "out-of-fold train" in rule
    # a candidate that really finds rare images on train too wins on the wide evidence
    good_tr = cnn_tr.copy()
    good_tr[170:192] = 1
    rows[1], cands[1] = row("stack-good", lucky_val, good_tr), cand("stack-good", lucky_val, good_tr)
    winner, rule = choose_champion(rows, cands, y_val, 2, "balanced_accuracy", y_train=y_tr)
    assert winner["candidate"] == "stack-good" and "oofval_balanced_accuracy" in rule and "it is champion" in rule


def test_rare_tradeoff_perfect_detector_loses_nothing() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    probs = np.full((8, 3), 0.1)
    probs[np.arange(8), y] = 0.8
    out = rare_class_tradeoff(y, probs, rare=1)
    assert out["auc"] == 1.0
    assert out["never_accuracy"] == pytest.approx(6 / 8)
    assert out["best_accuracy"] == 1.0 and out["best_accuracy_recall"] == 1.0
    assert out["recall_at_no_loss"] == 1.0


def test_rare_tradeoff_weak_detector_at_low_prevalence_buys_no_recall_for_free() -> None:
    # a balanced binary set: the rare score ranks 2 of 4 rare images above every other image, the rest below
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    score = np.array([0.9, 0.8, 0.3, 0.2, 0.7, 0.6, 0.5, 0.4])
    probs = np.stack([1 - score, score], axis=1)
    same = rare_class_tradeoff(y, probs, rare=1)
    assert same["prevalence"] == 0.5 and same["never_accuracy"] == 0.5
    assert same["best_accuracy"] == pytest.approx(0.75) and same["best_accuracy_recall"] == 0.5
    assert same["best_balanced_accuracy"] == pytest.approx(0.75)
    # at 10% prevalence: calling the top 2 rare images costs nothing (precision 1) -> recall 0.5 for free;
    # going further (threshold 0.4, every 'other' called rare before the last 2 rings) costs accuracy
    rare10 = rare_class_tradeoff(y, probs, rare=1, prevalence=0.1)
    assert rare10["never_accuracy"] == pytest.approx(0.9)
    assert rare10["best_accuracy"] == pytest.approx(0.95) and rare10["recall_at_no_loss"] == 0.5
    assert rare10["best_balanced_accuracy"] == pytest.approx(0.75)  # balanced accuracy ignores prevalence
    # a detector whose rare images all rank below an 'other' image: any call costs accuracy at 10%
    probs_bad = np.stack([1 - score[::-1], score[::-1]], axis=1)
    bad = rare_class_tradeoff(y, probs_bad, rare=1, prevalence=0.1)
    assert bad["recall_at_no_loss"] == 0.0 and bad["best_accuracy"] == pytest.approx(0.9)


def test_rare_tradeoff_refuses_a_missing_class_and_bad_prevalence() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2]])
    with pytest.raises(DataError, match="rare class"):
        rare_class_tradeoff(np.array([0, 0]), probs, rare=1)
    with pytest.raises(DataError, match="prevalence"):
        rare_class_tradeoff(np.array([0, 1]), probs, rare=1, prevalence=1.5)
