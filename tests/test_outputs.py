"""Outputs never destroy user data (issue 11): folder and file outputs of every writing command.

Every command that writes a folder or a file refuses, with one line and before any work, an output
that exists and was not written by galaxy10; ``--force`` writes anyway but never deletes anything
else; a previous output of the platform is replaced atomically.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from core.errors import ConfigError
from core.outputs import MARKER_NAME, check_output_dir, output_dir, platform_wrote_file
from experiments.cli import main as cli_main


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _user_folder(root: Path) -> Path:
    mine = root / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("precious\n")
    (mine / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return mine


# --------------------------------------------------------------------------------------------
# core.outputs.output_dir
# --------------------------------------------------------------------------------------------
def test_new_folder_is_written_whole_with_a_marker(tmp_path: Path) -> None:
    out = tmp_path / "reports" / "s"
    with output_dir(out, what="report") as tmp:
        (tmp / "a.txt").write_text("first")
        (tmp / "fig").mkdir()
        (tmp / "fig" / "b.png").write_bytes(b"png")
    marker = json.loads((out / MARKER_NAME).read_text())
    assert marker["written_by"] == "galaxy10 report" and marker["files"] == ["a.txt", "fig/b.png"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["s"]  # no temporary folder left


def test_previous_output_is_replaced_atomically_and_kept_on_error(tmp_path: Path) -> None:
    out = tmp_path / "s"
    with output_dir(out, what="report") as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with output_dir(out, what="report") as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("boom")
    assert (out / "a.txt").read_text() == "first"
    with output_dir(out, what="report") as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == [MARKER_NAME, "b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temp or old folders left


def test_folder_with_user_files_is_refused_and_untouched(tmp_path: Path) -> None:
    mine = _user_folder(tmp_path)
    before = _tree(mine)
    with pytest.raises(
        ConfigError,
        match=r"--out .*mine holds files galaxy10 did not write \(notes.txt, "
        r"sub/data.csv\); choose a new or empty folder, or add --force",
    ) as err:
        with output_dir(mine, what="report") as tmp:
            (tmp / "report.html").write_text("x")
    assert "\n" not in str(err.value)
    assert _tree(mine) == before and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_force_adds_files_and_deletes_nothing(tmp_path: Path) -> None:
    mine = _user_folder(tmp_path)
    before = _tree(mine)
    with output_dir(mine, what="report", force=True) as tmp:
        (tmp / "report.html").write_text("one")
        (tmp / "old.png").write_text("stale soon")
    with output_dir(mine, what="report", force=True) as tmp:  # the second report drops old.png
        (tmp / "report.html").write_text("two")
    after = _tree(mine)
    assert {k: after[k] for k in before} == before  # every user file is intact
    assert after["report.html"] == b"two" and "old.png" not in after  # only the platform's own stale file went
    assert json.loads(after[MARKER_NAME])["files"] == ["report.html"]


def test_previous_report_with_a_user_file_added_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "rep"
    with output_dir(out, what="report") as tmp:
        (tmp / "report.html").write_text("x")
    (out / "my_notes.md").write_text("mine")
    with pytest.raises(ConfigError, match="my_notes.md"):
        check_output_dir(out, what="report")
    assert (out / "my_notes.md").read_text() == "mine"


def test_existing_file_and_file_parent_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "report"
    f.write_text("a file of mine")
    with pytest.raises(ConfigError, match=r"is an existing file, not a folder"):
        check_output_dir(f, what="report", force=True)
    with pytest.raises(ConfigError, match=r"is a file, not a folder; choose another --out"):
        check_output_dir(f / "sub", what="report")
    assert f.read_text() == "a file of mine" and sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_working_folder_as_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "mlflow.db").write_bytes(b"db")
    monkeypatch.chdir(work)
    with pytest.raises(ConfigError, match="mlflow.db"):
        check_output_dir(".", what="report")
    with output_dir(".", what="report", force=True) as tmp:
        (tmp / "report.html").write_text("x")
    assert sorted(p.name for p in work.iterdir()) == [MARKER_NAME, "mlflow.db", "report.html"]
    assert Path.cwd() == work and (work / "mlflow.db").read_bytes() == b"db"


def test_stale_temporary_folder_of_a_killed_writer_is_removed(tmp_path: Path) -> None:
    out = tmp_path / "rep"
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead = int(proc.stdout)
    import re
    import socket

    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "host"
    stale = tmp_path / f".rep.pid{dead}@{host}.abc.tmp"
    stale.mkdir()
    (stale / "report.html").write_text("half")
    with output_dir(out, what="report") as tmp:
        (tmp / "report.html").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


# --------------------------------------------------------------------------------------------
# Every writing command, through the CLI
# --------------------------------------------------------------------------------------------
def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli_main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _png(path: Path) -> Path:
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(path)
    return path


def _import_folder(root: Path) -> tuple[Path, Path]:
    folder = root / "imgs"
    folder.mkdir()
    rows = ["file,label"]
    for i in range(12):
        _png(folder / f"g{i}.png")
        rows.append(f"g{i}.png,{'a' if i % 2 else 'b'}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder, folder / "labels.csv"


#: name -> (argv for an output path, what must be refused/kept). Each writes one FILE at OUT.
FILE_COMMANDS: dict[str, Callable[[Path, Path, Path], list[str]]] = {
    "data synth": lambda root, h5, out: [
        "data",
        "synth",
        "--n",
        "10",
        "--size",
        "32",
        "--workers",
        "1",
        "--out",
        str(out),
    ],
    "data import": lambda root, h5, out: [
        "data",
        "import",
        str(root / "imgs"),
        "--labels",
        str(root / "imgs" / "labels.csv"),
        "--size",
        "32",
        "--out",
        str(out),
    ],
    "data gallery": lambda root, h5, out: [
        "data",
        "gallery",
        str(h5),
        "--out",
        str(out),
        "--thumb",
        "16",
        "--per-class",
        "1",
    ],
}
SUFFIX = {"data synth": ".h5", "data import": ".h5", "data gallery": ".png"}


@pytest.mark.parametrize("command", sorted(FILE_COMMANDS))
def test_file_commands_refuse_a_user_file_and_replace_their_own(
    command: str, tmp_path: Path, tiny_h5: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _import_folder(tmp_path)
    out = tmp_path / f"mine{SUFFIX[command]}"
    out.write_bytes(b"the user's own file\n")
    argv = FILE_COMMANDS[command](tmp_path, tiny_h5, out)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, stdout, err = _run(argv, capsys)
    assert code == 2 and stdout == ""
    assert err.count("\n") == 1 and err.startswith("galaxy10: error: --out ") and "--force" in err
    assert out.read_bytes() == b"the user's own file\n" and sorted(p.name for p in tmp_path.iterdir()) == before
    # --force replaces it; the result is the platform's, so the next run replaces it without --force
    code, _, err = _run([*argv, "--force"], capsys)
    assert code == 0, err
    assert platform_wrote_file(out)
    code, _, err = _run(argv, capsys)
    assert code == 0, err


def test_file_commands_refuse_a_folder_as_out(
    tmp_path: Path, tiny_h5: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _import_folder(tmp_path)
    for command, make in FILE_COMMANDS.items():
        folder = tmp_path / f"dir-{command.replace(' ', '-')}"
        folder.mkdir()
        code, _, err = _run(make(tmp_path, tiny_h5, folder), capsys)
        assert code == 2 and err.count("\n") == 1 and "is a folder" in err, (command, err)


def test_report_refuses_a_user_folder_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = _user_folder(tmp_path)
    before = _tree(mine)
    for out in (mine, Path(".")):
        (tmp_path / "mlflow.db").write_bytes(b"")  # a store of the user's, in the working folder
        code, stdout, err = _run(["report", "--study", "s", "--out", str(out)], capsys)
        assert code == 2 and stdout == "" and err.count("\n") == 1
        assert "did not write" in err and "--force" in err
    assert _tree(mine) == before and (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("out", ["/sys/rep", "/proc/rep"])
def test_report_into_a_folder_it_cannot_write_is_one_line(out: str, capsys: pytest.CaptureFixture[str]) -> None:
    if not os.path.isdir(os.path.dirname(out)):
        pytest.skip(f"{os.path.dirname(out)} does not exist here")
    code, stdout, err = _run(["report", "--study", "s", "--out", out], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("galaxy10: error: cannot write --out")


def test_h5_files_are_recognised_by_their_attributes(tmp_path: Path) -> None:
    mine = tmp_path / "mine.h5"
    with h5py.File(mine, "w") as f:
        f.attrs["generator"] = "my own galaxy10 script"
    ours = tmp_path / "ours.h5"
    with h5py.File(ours, "w") as f:
        f.attrs["written_by"] = "galaxy10 data synth"
    legacy = tmp_path / "legacy.h5"
    with h5py.File(legacy, "w") as f:
        f.attrs["generator"] = "galaxy10-platform synthetic (GalSim)"
    assert not platform_wrote_file(mine) and platform_wrote_file(ours) and platform_wrote_file(legacy)
    assert not platform_wrote_file(tmp_path / "missing.h5")


def test_a_report_from_before_markers_is_updated_without_deleting_anything(tmp_path: Path) -> None:
    old = tmp_path / "reports" / "s"
    old.mkdir(parents=True)
    (old / "report.json").write_text(json.dumps({"study": "s", "scoring_run_id": "abc"}))
    (old / "report.html").write_text("old")
    (old / "confusion_cnn.png").write_bytes(b"old png")
    check_output_dir(old, what="report")  # recognised: no --force needed
    with output_dir(old, what="report") as tmp:
        (tmp / "report.html").write_text("new")
        (tmp / "report.json").write_text("{}")
    assert (old / "report.html").read_text() == "new"
    assert (old / "confusion_cnn.png").read_bytes() == b"old png"  # merged file by file: nothing deleted
    assert json.loads((old / MARKER_NAME).read_text())["files"] == ["confusion_cnn.png", "report.html", "report.json"]
    check_output_dir(old, what="report")  # and the next report needs no --force either
