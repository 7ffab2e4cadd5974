"""Where a model's training galaxies are: its data file and split, read from its MLflow run.

The out-of-distribution detector is fitted on the training split and calibrated on the validation split
of the very file the model was trained on (checked by its SHA-256 against the model's metadata).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import DataError
from experiments.tracking.runs import get_run_facts
from experiments.tracking.workspace import Workspace
from pipelines.reader import data_fingerprint
from pipelines.splits import load_split, make_split, split_path_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingRows:
    """The model's data file and its training and validation rows."""

    path: Path
    train: np.ndarray
    val: np.ndarray
    split_source: str


def _float(params: dict[str, str], key: str, default: float) -> float:
    try:
        return float(params.get(key, default))
    except ValueError:
        return default


def training_rows(card: object, data: str | Path | None = None, *, ws: Workspace) -> TrainingRows:
    """The training and validation rows of the model behind ``card`` (a ``ModelCard``).

    ``data`` overrides the file the run names (``data.path`` tag), e.g. on another machine. The file must
    be the one the model was trained on (same SHA-256 as the model's ``data_fingerprint``). The split is the
    one saved beside the file, else it is made again (in memory) with the run's split parameters.

    Raises
    ------
    DataError
        One line naming what is missing (no run, no data file, another file) and the fix (``--ood-data``,
        ``--ood off``).
    """
    run_id = getattr(card, "run_id", None)
    facts = get_run_facts(run_id, ws=ws) if run_id else None
    if data is None:
        named = facts.tags.get("data.path") if facts else None
        if not named:
            raise DataError(
                f"model {card.uri} names no training data file; pass --ood-data FILE.h5 (the file it "
                "was trained on) or --ood off"
            )
        data = named
    path = Path(data)
    if not path.is_file():
        raise DataError(
            f"the model's training data {path} is not here; pass --ood-data FILE.h5 (the file it was "
            "trained on) or --ood off"
        )
    expected = getattr(card, "data_fingerprint", None)
    if expected and data_fingerprint(path) != expected:
        raise DataError(
            f"{path} is not the file model {card.uri} was trained on (its SHA-256 differs); pass "
            "--ood-data with that file, or --ood off"
        )
    saved = split_path_for(path)
    if saved.is_file():
        split, source = load_split(saved, path), f"the split saved in {saved.name}"
    else:
        params = facts.params if facts else {}
        seed = int(_float(params, "data.split_seed", 42))
        split = make_split(
            path,
            test_fraction=_float(params, "data.test_fraction", 0.1),
            val_fraction=_float(params, "data.val_fraction", 0.1),
            seed=seed,
        )
        source = f"the run's split parameters (seed {seed}), made again in memory"
    if len(split.val) == 0:
        raise DataError(
            f"{path}'s split has no validation images to calibrate out-of-distribution flags on; pass --ood off"
        )
    log.info(
        "out-of-distribution reference: %s (%d training, %d validation rows; %s)",
        path,
        len(split.train),
        len(split.val),
        source,
    )
    return TrainingRows(path, np.asarray(split.train), np.asarray(split.val), source)
