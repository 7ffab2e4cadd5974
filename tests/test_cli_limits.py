"""Issue 11, classes of problems across the whole CLI: help pages, size-like options, names, the
tracking store a command is given, the web server's address, and the smaller rough edges.

Each test walks every command (or every option of a kind), so a new command or option joins the
check without being listed by hand; the few exceptions are listed with the reason.
"""

from __future__ import annotations

import argparse
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_study_in, tiny_tune_yaml
from PIL import Image

from experiments.cli import build_parser
from experiments.cli import main as cli_main


def _subparsers(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):  # noqa: ANN202
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _subparsers(sub, (*prefix, name))


COMMANDS = [path for path, _ in _subparsers(build_parser())]
SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "smoke.yaml"
REFERENCE = SMOKE.with_name("reference.yaml")


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli_main(["-q", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error_line(code: int, out: str, err: str) -> str:
    assert code == 2, (code, out, err)
    assert out == "" and err.count("\n") == 1 and err.startswith("galaxy10: error: "), err
    return err


# --------------------------------------------------------------------------------------------
# --help everywhere
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [(), *COMMANDS], ids=lambda p: " ".join(p) or "galaxy10")
def test_every_help_page_renders(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli_main([*path, "--help"])
    assert exit_.value.code == 0
    assert "usage: galaxy10" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# Every size-like option has an upper bound, checked before any work
# --------------------------------------------------------------------------------------------
#: Numeric options that are not sizes, with the reason they have no upper bound here.
NOT_SIZES = {
    "--seed": "a random seed: any integer is as cheap as another",
    "--timeout": "a time limit: a huge one is no limit, and costs nothing",
    "--test-fraction": "a fraction: bounded to (0, 1) by the split code",
    "--val-fraction": "a fraction: bounded to [0, 1) by the split code",
    "--difficulty": "a fraction: bounded to [0, 1] by the generator",
    "--port": "bounded to 1-65535",
    "--learning-rate": "a rate: bounded to (0, 1) by the pretraining settings",
    "--label-fraction": "a fraction: bounded to (0, 1] by the evaluation",
    "--threshold": "a probability: bounded to (0, 1) by self-training",
}


def _numeric_options() -> list[tuple[tuple[str, ...], str]]:
    found = []
    for path, sub in _subparsers(build_parser()):
        for action in sub._actions:
            if action.type in (int, float) and action.option_strings:
                found.append((path, action.option_strings[-1]))
    return found


def _setup(tmp_path: Path, tiny_h5: Path) -> dict[tuple[str, ...], list[str]]:
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
    (folder / "labels.csv").write_text("file,label\na.png,x\n")
    tune_yaml = tiny_tune_yaml(tmp_path / "tune.yaml", experiment="e", name="s", n_trials=1)
    return {
        ("data", "synth"): ["data", "synth", "--out", str(tmp_path / "s.h5")],
        ("data", "import"): [
            "data",
            "import",
            str(folder),
            "--labels",
            str(folder / "labels.csv"),
            "--out",
            str(tmp_path / "i.h5"),
        ],
        ("data", "gallery"): ["data", "gallery", str(tiny_h5), "--out", str(tmp_path / "g.png")],
        ("report",): ["report", "--study", "s", "--out", str(tmp_path / "rep")],
        ("serve",): ["serve"],
        ("tune",): ["tune", "--config", str(tune_yaml), "--data", str(tiny_h5)],
        ("predict",): ["predict", str(folder / "a.png")],
        ("catalog",): ["catalog", str(folder / "a.png"), "--out", str(tmp_path / "c.parquet")],
        ("pretrain",): ["pretrain", str(tiny_h5)],
        ("self-train",): ["self-train", "--unlabeled", str(tiny_h5), "--config", str(SMOKE), "--data", str(tiny_h5)],
        ("similar",): ["similar", str(folder / "a.png"), "--catalog", str(tmp_path / "c.parquet")],
        ("evaluate",): [
            "evaluate",
            "--data",
            str(tiny_h5),
            "--recipe",
            f"a={REFERENCE}",
            "--recipe",
            f"b={REFERENCE}",
            "--out",
            str(tmp_path / "ev"),
        ],
    }


def test_every_size_option_is_known() -> None:
    sizes = {opt for _, opt in _numeric_options()} - set(NOT_SIZES)
    assert sizes == {
        "--n",
        "--size",
        "--workers",
        "--per-class",
        "--thumb",
        "--bootstrap",
        "--max-upload-mb",
        "--trials",
        "--top",
        "--chunk-size",
        "--batch-size",
        "--flag-uncertain",
        "--spark-partitions",
        "--repeats",
        "--folds",
        "--epochs",
        "--k",
        "--rounds",
        "--pretrain-epochs",
    }


@pytest.mark.parametrize(
    "path,option",
    [(p, o) for p, o in _numeric_options() if o not in NOT_SIZES],
    ids=lambda x: " ".join(x) if isinstance(x, tuple) else x,
)
def test_huge_sizes_fail_fast_with_one_line(
    path: tuple[str, ...], option: str, tmp_path: Path, tiny_h5: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _setup(tmp_path, tiny_h5)[path]
    before = sorted(p.name for p in tmp_path.iterdir())
    start = time.perf_counter()
    err = _one_error_line(*_run([*argv, option, "100000000"], capsys))
    assert option in err and ("out of range" in err or "limit" in err), err
    assert time.perf_counter() - start < 20  # refused up front, not after allocating
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no store created


# --------------------------------------------------------------------------------------------
# Names are validated before any work
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a/b/../c", "../../etc", "x:y", "a b", "", "-lead", "s@champion", "dots..x"])
def test_bad_study_names_are_refused_up_front(
    name: str, tmp_path: Path, tiny_h5: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tune_yaml = tiny_tune_yaml(tmp_path / "tune.yaml", experiment="e", name="ok", n_trials=1)
    for argv in (
        ["tune", "--config", str(tune_yaml), "--data", str(tiny_h5), f"--study={name}"],
        ["report", f"--study={name}"],
        ["ensemble", f"--study={name}", "--config", str(tune_yaml)],
    ):
        err = _one_error_line(*_run(argv, capsys))
        assert "is not a valid study name" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["tune.yaml", tiny_h5.name])


def test_bad_experiment_name_in_a_config(tmp_path: Path, tiny_h5: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _one_error_line(
        *_run(["train", "--config", str(SMOKE), "--set", "experiment_name=' padded '", "--data", str(tiny_h5)], capsys)
    )
    assert "experiment_name" in err


def test_zero_trials_names_the_option(tmp_path: Path, tiny_h5: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tune_yaml = tiny_tune_yaml(tmp_path / "tune.yaml", experiment="e", name="s", n_trials=1)
    err = _one_error_line(*_run(["tune", "--config", str(tune_yaml), "--data", str(tiny_h5), "--trials", "0"], capsys))
    assert "--trials 0 is out of range" in err and "timeout" not in err


# --------------------------------------------------------------------------------------------
# One tracking store per command: the one it was given
# --------------------------------------------------------------------------------------------
@pytest.mark.slow  # a real 2-trial study, then ensemble / report / predict from another folder
def test_every_command_uses_the_store_it_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    with tiny_study_in(store, n_images=300, n_trials=2) as study:
        pass
    m_uri, o_uri = study.tracking_uri, study.storage
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ens_cfg = elsewhere / "ens.yaml"
    ens_cfg.write_text("mode: val_cv\ncv_folds: 2\nvote: {top_k: 2}\nsecond_stage: {logreg: {}}\n")
    image = elsewhere / "g.png"
    Image.fromarray(np.full((64, 64, 3), 80, np.uint8)).save(image)
    commands = [
        ["ensemble", "--study", "tiny", "--config", str(ens_cfg), "--storage", o_uri, "--tracking-uri", m_uri],
        [
            "report",
            "--study",
            "tiny",
            "--out",
            str(elsewhere / "rep"),
            "--storage",
            o_uri,
            "--tracking-uri",
            m_uri,
            "--bootstrap",
            "50",
        ],
        ["predict", str(image), "--model", "tiny@champion", "--tracking-uri", m_uri],
        ["study", "show", "tiny", "--storage", o_uri],
    ]
    for argv in commands:
        code, out, err = _run(argv, capsys)
        assert code == 0, (argv[0], err)
    assert not (elsewhere / "mlflow.db").exists() and not (elsewhere / "optuna.db").exists()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["ens.yaml", "g.png", "rep"]


# --------------------------------------------------------------------------------------------
# The web server checks its address before announcing anything
# --------------------------------------------------------------------------------------------
def test_serve_on_a_port_in_use_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        err = _one_error_line(*_run(["serve", "--port", str(port), "--model", "x@champion"], capsys))
    assert f"port {port} on 127.0.0.1 is in use" in err and "--port" in err


def test_serve_on_an_unknown_host_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    err = _one_error_line(*_run(["serve", "--host", "no-such-host.invalid", "--model", "x@champion"], capsys))
    assert "--host no-such-host.invalid is not an address of this machine" in err


# --------------------------------------------------------------------------------------------
# Smaller rough edges
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "yaml_text,key", [("train:\n  epochs: 2\n  epochs: 3\n", "epochs"), ("train: {}\ntrain: {epochs: 2}\n", "train")]
)
def test_duplicate_yaml_keys_are_refused(
    yaml_text: str, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "dup.yaml"
    cfg.write_text(yaml_text)
    err = _one_error_line(*_run(["train", "--config", str(cfg)], capsys))
    assert f"sets key '{key}'" in err and "twice" in err
    err = _one_error_line(
        *_run(["train", "--config", str(SMOKE), "--set", "augment.targets={cigar: 2, cigar: 3}"], capsys)
    )
    assert "sets key 'cigar'" in err


@pytest.mark.parametrize("spec", ["a-b", "x", "3-", "-1"])
def test_predict_bad_index_range_is_named(spec: str, tiny_h5: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _one_error_line(*_run(["predict", f"{tiny_h5}:{spec}", "--model", "x@champion"], capsys))
    assert "bad index range" in err and "does not exist" not in err


def test_import_accepts_absolute_paths_inside_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    rows = ["file,label"]
    for i in range(4):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(folder / f"g{i}.png")
        rows.append(f"{(folder / f'g{i}.png').resolve()},{i % 2}")
    outside = tmp_path / "outside.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(outside)
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    code, out, err = _run(
        [
            "data",
            "import",
            str(folder),
            "--labels",
            str(folder / "labels.csv"),
            "--size",
            "16",
            "--out",
            str(tmp_path / "a.h5"),
        ],
        capsys,
    )
    assert code == 0, err
    (folder / "labels.csv").write_text("\n".join([*rows, f"{outside},0"]) + "\n")
    err = _one_error_line(
        *_run(
            [
                "data",
                "import",
                str(folder),
                "--labels",
                str(folder / "labels.csv"),
                "--size",
                "16",
                "--out",
                str(tmp_path / "b.h5"),
            ],
            capsys,
        )
    )
    assert "outside.png: path leads outside the image folder" in err


def test_study_show_of_an_empty_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import optuna

    storage = f"sqlite:///{tmp_path / 'o.db'}"
    optuna.create_study(study_name="empty", storage=storage)
    code, out, _ = _run(["study", "show", "empty", "--storage", storage], capsys)
    assert code == 0 and "0 trials;" in out and ", ;" not in out
