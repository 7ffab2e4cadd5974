"""A study's members: the top-k trials with logged models, and the data they were trained on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core.errors import ConfigError, DataError, ModelError
from experiments.settings.run import RunConfig
from experiments.settings.tune import ATTR_REFERENCE
from experiments.tracking.runs import get_run_facts, logged_run_config
from experiments.tracking.workspace import Workspace
from experiments.training import load_training_data
from experiments.tuning.storage import open_storage
from experiments.tuning.study import (
    ATTR_METRIC,
    ATTR_TRIAL_RUN,
    best_trial,
    load_existing_study,
    maximizes,
    state_counts,
    trial_value,
)
from pipelines.dataset import TrainData


@dataclass(frozen=True)
class Member:
    """One study trial used by the ensembles: its run, logged model and resolved run config."""

    trial_number: int
    value: float
    run_id: str
    model_uri: str
    cfg: RunConfig
    tags: Mapping[str, str]
    metrics: Mapping[str, float]
    reference: bool = False  # the study's reference trial (reference.yaml as shipped)

    @property
    def name(self) -> str:
        """``trial-<number>``."""
        return f"trial-{self.trial_number}"

    @property
    def backbone(self) -> str:
        """The registered backbone name of the trial's model (``model.name``)."""
        return str(self.cfg.model.name)


@dataclass(frozen=True)
class StudyMembers:
    """The study's best trials with models, best first, and notes on what was left out."""

    study_name: str
    metric: str
    members: tuple[Member, ...]
    notes: tuple[str, ...]

    @property
    def best(self) -> Member:
        """The study's best trial."""
        return self.members[0]


def study_members(study_name: str, *, ws: Workspace, top_k: int) -> StudyMembers:
    """The ``top_k`` best COMPLETE trials of the study that logged a model (the best one must have), then the
    best trial of every other backbone (``model.name``) with a model, so ensembles can combine backbones.

    Raises
    ------
    ConfigError
        Unknown storage or study, or no COMPLETE trial.
    ModelError
        The best trial logged no model.
    """

    storage = open_storage(ws.study_storage(), must_exist=True)
    study = load_existing_study(study_name, storage)
    maximize = maximizes(study)
    complete = [
        t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and trial_value(t) is not None
    ]
    if not complete:
        counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(state_counts(study).items())) or "no trials"
        raise ConfigError(
            f"study {study_name!r} has no COMPLETE trial ({counts}); finish one with "
            f"`galaxy10 tune --study {study_name} ...` first"
        )
    complete.sort(key=lambda t: (-trial_value(t) if maximize else trial_value(t), t.number))
    guarded = best_trial(study)  # under the study's accuracy guard
    complete.sort(key=lambda t: t.number != guarded.number)  # stable: the guarded best first, then by value
    best = complete[0]
    if not best.user_attrs.get("model_uri") or not best.user_attrs.get(ATTR_TRIAL_RUN):
        raise ModelError(
            f"best trial {best.number} of study {study_name!r} has no logged model; re-run the study "
            "with `galaxy10 tune` so trials log their models"
        )
    with_models = [t for t in complete if t.user_attrs.get("model_uri") and t.user_attrs.get(ATTR_TRIAL_RUN)]
    notes = []
    if len(with_models) < top_k:
        notes.append(
            f"vote.top_k={top_k} but only {len(with_models)} COMPLETE trial(s) logged a model; set "
            "study.log_models: all in the tuning config to vote over more trials"
        )
    chosen = with_models[:top_k]
    backbones = {t.params.get("model.name") for t in chosen}
    for t in with_models[top_k:]:
        backbone = t.params.get("model.name")
        if backbone is not None and backbone not in backbones:  # the best trial of another backbone
            backbones.add(backbone)
            chosen.append(t)
            notes.append(f"trial-{t.number} joins as the best {backbone} trial (beyond vote.top_k={top_k})")
    reference = next((t for t in with_models if t.user_attrs.get(ATTR_REFERENCE)), None)
    if reference is not None and reference not in chosen:  # always compared: no champion may trail it
        chosen.append(reference)
        notes.append(f"trial-{reference.number} joins as the study's reference recipe (reference.yaml as shipped)")
    members = []
    for t in chosen:
        run_id = str(t.user_attrs[ATTR_TRIAL_RUN])
        facts = get_run_facts(run_id, ws=ws)
        members.append(
            Member(
                trial_number=t.number,
                value=float(trial_value(t)),
                run_id=run_id,
                model_uri=str(t.user_attrs["model_uri"]),
                cfg=logged_run_config(run_id, ws=ws),
                tags=facts.tags,
                metrics=facts.metrics,
                reference=bool(t.user_attrs.get(ATTR_REFERENCE)),
            )
        )
    metric = str(study.user_attrs.get(ATTR_METRIC, "accuracy"))
    return StudyMembers(study_name, metric, tuple(members), tuple(notes))


def load_study_data(members: StudyMembers, data_path: str | Path | None) -> Any:
    """The best trial's data (its split, size and image limit), checked against the study's fingerprint."""

    best = members.best
    path = Path(data_path) if data_path is not None else Path(best.tags.get("data.path") or "")
    if not str(path) or str(path) == "." or not path.is_file():
        raise DataError(
            f"the study's data file {str(path) if str(path) not in ('', '.') else '(not recorded)'} is "
            "missing; pass --data FILE pointing at the file the study was trained on"
        )
    data = load_training_data(best.cfg.data, path)
    recorded = best.tags.get("data.fingerprint")
    if recorded and recorded != data.fingerprint:
        raise DataError(
            f"{path} has fingerprint {data.fingerprint[:12]} but the study was trained on "
            f"{recorded[:12]}; pass --data with the original file"
        )
    return data


def usable_members(members: StudyMembers, data: TrainData) -> tuple[StudyMembers, list[str]]:
    """Drop trials whose data settings give another split than the best trial's (they cannot vote)."""
    keep, notes = [members.best], []
    ref = members.best.cfg.data
    for m in members.members[1:]:
        d = m.cfg.data
        if (d.split_seed, d.test_fraction, d.val_fraction, d.max_images) != (
            ref.split_seed,
            ref.test_fraction,
            ref.val_fraction,
            ref.max_images,
        ):
            notes.append(f"{m.name} used another split/image limit than the best trial; left out of the votes")
            continue
        keep.append(m)
    return replace(members, members=tuple(keep)), notes
