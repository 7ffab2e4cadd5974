"""What the candidate builders share: the candidate, the build context, the member data and helpers."""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from core.errors import DataError
from ensembles.embeddings import CNNEmbedder
from ensembles.ensemble_model import Branch, EnsembleModel
from ensembles.second_stage import WEIGHTABLE, make_second_stage
from experiments.ensembling.members import StudyMembers
from experiments.settings.ensemble import EnsembleConfig, balanced_second_stages
from experiments.settings.ensemble import prior_twins as wants_prior_twins
from experiments.tracking.workspace import Workspace
from experiments.training import load_training_data
from experiments.training.evaluation import classification_metrics
from pipelines.dataset import TrainData

log = logging.getLogger(__name__)


#: The study's reference trial as a candidate (``reference.yaml`` as shipped, trained inside the study).
REFERENCE_CANDIDATE = "reference"


@dataclass
class Candidate:
    """One compared model: honest validation probabilities, the deployable ensemble, what it is.

    ``train_rows``/``train_probs``: in crossfit mode, honest out-of-fold probabilities of the candidate's
    recipe on the training images ``train_rows`` (data-file indices), which widen the evidence behind the
    champion rule (``oof_selection``); None where the candidate has none (votes of study members).
    """

    name: str
    kind: str
    members: list[str]
    val_probs: np.ndarray
    estimate: str
    model: Any  # ensembles.ensemble_model.EnsembleModel
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    train_rows: np.ndarray | None = None
    train_probs: np.ndarray | None = None


@dataclass
class BuildContext:
    """What the candidate builders share: config, data, members and their validation outputs."""

    cfg: EnsembleConfig
    data: TrainData
    members: StudyMembers
    ws: Workspace
    y_val: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    notes: list[str] = field(default_factory=list)
    by_size: dict[int, Any] = field(default_factory=dict)  # the study's data per data.size, loaded once

    @property
    def n_classes(self) -> int:
        return self.data.num_classes

    @property
    def select_metric(self) -> str:
        """The metric the champion is chosen by (``study`` resolved to the study's metric)."""
        return self.members.metric if self.cfg.select_metric == "study" else self.cfg.select_metric

    @property
    def prior_twins(self) -> bool:
        """Whether prior-corrected twins join the comparison (``prior_correction``, see the config)."""
        return wants_prior_twins(self.cfg, self.select_metric)

    @property
    def balanced(self) -> bool:
        """Whether second stages weight the classes equally (``class_weights``, see the config)."""
        return balanced_second_stages(self.cfg, self.select_metric)


def embedder(model: Any, *, model_id: str, tta: bool, batch_size: int) -> Any:
    return CNNEmbedder(model, tta=tta, batch_size=batch_size, model_id=model_id).fit()


def second_stage_factory(
    name: str, params: Mapping[str, Any], cfg: EnsembleConfig, balanced: bool
) -> Callable[[], Any]:
    # one thread per model unless configured: OpenMP thread pools thrash when cores are shared
    return functools.partial(
        make_second_stage,
        name,
        dict(params),
        seed=cfg.seed,
        n_jobs=cfg.n_jobs or 1,
        balanced=balanced and name in WEIGHTABLE,
    )


def note_class_weights(ctx: BuildContext) -> None:
    """Say in the comparison's notes that second stages weight classes (a second stage that cannot -
    refused by the config under ``balanced`` - is fit unweighted under ``auto``)."""
    if not ctx.balanced:
        return
    unweighted = [name for name in ctx.cfg.second_stage if name not in WEIGHTABLE]
    ctx.notes.append(
        f"second stages fit with balanced class weights (selection metric {ctx.select_metric})"
        + (f"; {', '.join(unweighted)} cannot weight classes and is fit unweighted" if unweighted else "")
    )


def branch_of(
    model: Any, member_cfg: Any, *, tta: bool, name: str, run_id: str | None, second: Any = None, meta: Any = None
) -> Any:
    return Branch(
        cnn=model,
        size=int(member_cfg.data.size),
        crop=int(member_cfg.data.crop),
        tta=bool(tta),
        second=second,
        meta=meta,
        name=name,
        run_id=run_id,
    )


def ensemble_of(
    ctx: BuildContext, kind: str, branches: list[Any], *, weights: Any = None, description: str = ""
) -> Any:
    return EnsembleModel(
        kind=kind,
        branches=branches,
        class_names=tuple(ctx.data.class_names),
        class_slugs=tuple(ctx.data.class_slugs),
        weights=weights,
        description=description,
        batch_size=ctx.cfg.embeddings.batch_size,
    )


def member_data(ctx: BuildContext, member: Any) -> Any:
    """The study's data resized for ``member`` (members may differ in ``data.size``; each size is loaded
    once per comparison), its split checked."""
    size = int(member.cfg.data.size)
    ctx.by_size.setdefault(int(ctx.data.size), ctx.data)
    if size not in ctx.by_size:
        ctx.by_size[size] = load_training_data(member.cfg.data, ctx.data.path)
    data = ctx.by_size[size]
    if not np.array_equal(data.val, ctx.data.val):
        raise DataError(f"{member.name}'s validation split differs from the best trial's; the study's data changed")
    return data


def member_val_probs(ctx: BuildContext, models: Sequence[Any]) -> list[np.ndarray]:
    """Each member CNN's validation probabilities (its own TTA setting), checked against its run."""

    out = []
    for model, m in zip(models, ctx.members.members):
        data = member_data(ctx, m)
        emb = embedder(model, model_id=m.run_id, tta=m.cfg.augment.tta, batch_size=ctx.cfg.embeddings.batch_size)
        probs = emb.embed(data.images, data.val, split="val", data_fingerprint=data.fingerprint).probs
        acc = classification_metrics(ctx.y_val, probs, ctx.data.class_slugs)["accuracy"]
        logged = m.metrics.get("val_accuracy")
        if logged is not None and abs(acc - logged) > 0.005:
            ctx.notes.append(f"{m.name}: validation accuracy {acc:.4f} here vs {logged:.4f} logged by its run")
            log.warning("%s", ctx.notes[-1])
        out.append(np.asarray(probs, dtype=np.float64))
    return out


PRIOR_KINDS = ("gbm", "stack")


def training_class_shares(ctx: BuildContext) -> np.ndarray:
    """Class shares of the training split (a class absent from it gets a tiny share, never zero)."""
    counts = np.bincount(ctx.data.labels[ctx.data.train], minlength=ctx.n_classes).astype(np.float64)
    counts = np.maximum(counts, 0.1)
    return counts / counts.sum()


@contextlib.contextmanager
def convergence_notes(notes: list[str]) -> Iterator[None]:
    """Collect scikit-learn's multi-line ``ConvergenceWarning`` messages into one logged line and a note.

    A second stage that stops at its iteration limit is still used as fitted; the user reads one line
    (and the comparison run's notes) instead of a ten-line warning per fit. Other warnings pass through.
    """

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        yield
    stopped = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if stopped:
        first = " ".join(str(stopped[0].message).split())[:120]
        note = (
            f"{len(stopped)} second-stage fit(s) stopped at their iteration limit ({first}); they are used "
            "as fitted: raise max_iter (or lower C) in the ensemble config to let them converge"
        )
        log.warning(note)
        notes.append(note)
