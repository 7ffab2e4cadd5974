"""experiments.tuning storage and study handling: bad URLs, search-space hash, stale trials, study CLI."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from core.errors import ConfigError
from experiments.cli import main as cli_main
from experiments.settings.search_space import space_hash
from experiments.settings.tune import parse_tune_config
from experiments.tuning.storage import open_storage
from experiments.tuning.study import fail_stale_trials, open_study

SPACE = {"model.dropout": {"type": "float", "low": 0.0, "high": 0.5}}


def _tune(name: str = "s", storage: str = "sqlite:///optuna.db", space=None, **study) -> object:
    """A tuning config without the reference trial (these tests look at storage, not at trial 0)."""
    return parse_tune_config(
        {"study": {"name": name, "storage": storage, "reference_trial": False, **study}, "search_space": space or SPACE}
    )


def test_a_new_study_queues_the_reference_trial_once() -> None:
    storage = open_storage("sqlite:///optuna.db")
    study = open_study(_tune(name="r", reference_trial=True), storage)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs for t in waiting] == [{"reference_recipe": True}] and waiting[0].number == 0
    again = open_study(_tune(name="r", reference_trial=True), storage)  # a second worker or a re-run
    assert len(again.get_trials()) == 1
    assert open_study(_tune(name="off"), storage).get_trials() == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "sqlite:////no/such/folder/optuna.db",
            "cannot open the Optuna storage 'sqlite:////no/such/folder/optuna.db': folder /no/such/folder does not exist; "
            "create it or point --storage at an existing folder",
        ),
        (
            "sqlite://",
            "storage 'sqlite://' is an in-memory SQLite database that worker processes cannot share and that "
            "is lost on exit; use a file, e.g. sqlite:///optuna.db",
        ),
        (
            "nosuchdb://user@localhost/x",
            "cannot open the Optuna storage 'nosuchdb://user@localhost/x' (Can't load plugin: sqlalchemy.dialects:nosuchdb); "
            "check the URL and that the database is reachable, or use sqlite:///optuna.db",
        ),
    ],
)
def test_unreachable_storage_is_one_clear_line(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        open_storage(url)
    assert str(err.value) == message


def test_missing_driver_is_one_clear_line() -> None:
    try:
        import MySQLdb  # noqa: F401

        pytest.skip("the MySQL driver is installed here")
    except ImportError:
        pass
    with pytest.raises(ConfigError) as err:
        open_storage("mysql://u@127.0.0.1:9/x")
    assert str(err.value).startswith("cannot open the Optuna storage 'mysql://u@127.0.0.1:9/x' (")
    assert str(err.value).endswith("; check the URL and that the database is reachable, or use sqlite:///optuna.db")


def test_sqlite_storage_uses_wal(tmp_path: Path) -> None:
    open_storage("sqlite:///optuna.db")
    import sqlite3

    with sqlite3.connect(tmp_path / "optuna.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_existing_study_with_other_space_is_refused() -> None:
    storage = open_storage("sqlite:///optuna.db")
    first = open_study(_tune(), storage)
    want = space_hash(_tune().space)
    assert first.user_attrs["search_space_hash"] == want
    again = open_study(_tune(), storage)  # same space: continues the same study
    assert again._study_id == first._study_id
    other = _tune(space={"model.dropout": {"type": "float", "low": 0.0, "high": 0.6}})
    with pytest.raises(ConfigError) as err:
        open_study(other, storage)
    got = space_hash(other.space)
    assert str(err.value) == (
        f"study 's' in sqlite:///optuna.db was created with a different search space (hash {want} vs {got}); "
        "pass a new --study name or restore the original search_space"
    )
    with pytest.raises(ConfigError) as err:
        open_study(_tune(metric="macro_f1"), storage)
    assert str(err.value) == (
        "study 's' optimises 'accuracy', not 'macro_f1'; pass a new --study name or set study.metric back"
    )


def test_existing_study_with_other_data_is_refused() -> None:
    storage = open_storage("sqlite:///optuna.db")
    first = open_study(_tune(), storage, data=("a" * 64, "galaxy10_synthetic.h5"))
    assert first.user_attrs["data_fingerprint"] == {"fingerprint": "a" * 64, "file": "galaxy10_synthetic.h5"}
    open_study(_tune(), storage, data=("a" * 64, "copy.h5"))  # same bytes under another name: fine
    with pytest.raises(ConfigError) as err:
        open_study(_tune(), storage, data=("b" * 64, "Galaxy10_DECals.h5"))
    assert str(err.value) == (
        "study 's' was run on galaxy10_synthetic.h5 (fingerprint aaaaaaaaaaaa) but this process has "
        "Galaxy10_DECals.h5 (fingerprint bbbbbbbbbbbb); use the same data file on every worker, or pass a new "
        "--study name"
    )


def test_tune_worker_with_other_data_is_one_line_and_adds_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml
    from conftest import write_galaxy10_h5

    from pipelines.reader import data_fingerprint

    first = write_galaxy10_h5(tmp_path / "first.h5", n=60, size=32, seed=0)
    other = write_galaxy10_h5(tmp_path / "other.h5", n=60, size=32, seed=1)
    storage = open_storage("sqlite:///optuna.db")
    open_study(_tune(), storage, data=(data_fingerprint(first), first.name))
    cfg = tmp_path / "tune.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "base": str(Path(__file__).resolve().parents[1] / "experiments/configs/smoke.yaml"),
                "study": {"name": "s", "n_trials": 1},
                "search_space": SPACE,
            }
        )
    )
    capsys.readouterr()
    code = cli_main(["-q", "tune", "--config", str(cfg), "--data", str(other)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [
        f"galaxy10: error: study 's' was run on first.h5 (fingerprint {data_fingerprint(first)[:12]}) "
        f"but this process has other.h5 (fingerprint {data_fingerprint(other)[:12]}); use the same "
        "data file on every worker, or pass a new --study name"
    ]
    assert optuna.load_study(study_name="s", storage=storage).trials == []
    assert not (tmp_path / "mlflow.db").exists()


def _age_heartbeat(storage: optuna.storages.RDBStorage, trial_id: int, seconds: int) -> None:
    """Set the trial's last heartbeat ``seconds`` before the database's clock (what Optuna compares to)."""
    import sqlalchemy

    with storage.engine.begin() as conn:
        conn.execute(
            sqlalchemy.text("UPDATE trial_heartbeats SET heartbeat = datetime('now', :age) WHERE trial_id = :trial"),
            {"age": f"-{seconds} seconds", "trial": trial_id},
        )


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_stale_running_trial_is_failed() -> None:
    handled = []
    storage = open_storage(
        "sqlite:///optuna.db",
        heartbeat_interval=1,
        grace_period=2,
        on_stale=lambda study, trial: handled.append(trial.number),
    )
    study = open_study(_tune(), storage)
    trial = study.ask()
    trial.suggest_float("model.dropout", 0.0, 0.5)
    storage.record_heartbeat(trial._trial_id)  # a worker that beat once, then died
    assert fail_stale_trials(study) == []  # still within the grace period
    _age_heartbeat(storage, trial._trial_id, seconds=1)  # older, but not past the 2 s grace period
    assert fail_stale_trials(study) == []
    _age_heartbeat(storage, trial._trial_id, seconds=10)  # no sleep: the beat is moved into the past
    assert fail_stale_trials(study) == [trial.number]
    assert study.trials[trial.number].state == optuna.trial.TrialState.FAIL
    assert handled == [trial.number]


def test_study_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    storage = open_storage("sqlite:///optuna.db")
    study = open_study(_tune(name="demo"), storage)
    for value in (0.5, 0.7):
        t = study.ask()
        t.suggest_float("model.dropout", 0.0, 0.5)
        for step in range(3):
            t.report(value - 0.1 * (2 - step), step)
        study.tell(t, value)
    t = study.ask()
    t.suggest_float("model.dropout", 0.0, 0.5)
    t.report(0.3, 0)
    t.report(0.1, 1)
    study.tell(t, state=optuna.trial.TrialState.PRUNED)
    assert cli_main(["study", "list"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("demo "))
    assert line.split()[:6] == ["demo", "3", "2", "1", "0", "0"]
    assert "0.7" in line
    assert cli_main(["study", "show", "demo"]) == 0
    out = capsys.readouterr().out
    assert "3 trials, 2 complete, 1 pruned" in out
    assert "best: trial 1, val accuracy = 0.7000" in out
    # where the pruned trial was cut, against the COMPLETE trials at the same step (0.4 and 0.6 at step 1)
    assert "trial 2: cut at epoch 1 with 0.1000; median of 2 COMPLETE trial(s) there 0.5000" in out
    assert "optuna-dashboard sqlite:///optuna.db" in out
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db" in out
    assert cli_main(["study", "show", "nope"]) == 2
    assert capsys.readouterr().err.strip() == (
        "galaxy10: error: study 'nope' not found in sqlite:///optuna.db; known studies: demo"
    )
