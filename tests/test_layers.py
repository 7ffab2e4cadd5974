"""The house rules of docs/ARCHITECTURE.md, checked: imports point down the layers, modules stay small,
building the CLI's parser loads nothing heavy."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("pipelines", "augment", "models", "ensembles", "experiments")
#: What each layer may import from the platform's own packages (besides itself).
ALLOWED: dict[str, set[str]] = {
    "pipelines": set(),
    "augment": {"pipelines"},
    "models": {"pipelines"},
    "ensembles": {"pipelines", "augment", "models"},
    "experiments": {"pipelines", "augment", "models", "ensembles"},
}
MAX_LINES = 500


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imported_packages(path: Path) -> set[str]:
    """Top-level platform packages a module imports anywhere (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(n.split(".")[0] for n in names if n.split(".")[0] in LIBRARY)
    return found


@pytest.mark.parametrize("package", LIBRARY)
def test_imports_point_down_the_layers(package: str) -> None:
    bad = {str(p.relative_to(ROOT)): sorted(_imported_packages(p) - ALLOWED[package] - {package})
           for p in _modules(package)}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_layer_check_can_fail(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from experiments.settings.run import RunConfig\n    import models.registry\n")
    assert _imported_packages(module) == {"experiments", "models"}


def test_no_library_module_is_over_500_lines() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for pkg in LIBRARY for p in _modules(pkg)}
    assert {k: n for k, n in sizes.items() if n > MAX_LINES} == {}


def test_the_cli_help_loads_no_heavy_library() -> None:
    """``galaxy10 --help`` and every subcommand's parser build without TensorFlow, albumentations, cv2 or the
    backbones (they load when a command runs)."""
    code = ("import io, sys, contextlib\n"
            "from experiments import cli\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n"
            "        cli.main(['--help'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            "heavy = ('tensorflow', 'keras', 'albumentations', 'cv2', 'models.registry', 'mlflow', 'optuna')\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "NO_ALBUMENTATIONS_UPDATE": "1", "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]"


def test_every_training_path_resolves_its_references_through_one_entry() -> None:
    """The command, the objective, the refit and the fold CNNs train through ``experiments.training.train``
    with the one set of MLflow lookups (``tracking.lookups.training_lookups``); none builds its own."""
    paths = ["experiments/commands/train.py", "experiments/tuning/objective.py", "experiments/tuning/refit.py",
             "experiments/ensembling/fold_cnns.py"]
    for rel in paths:
        text = (ROOT / rel).read_text()
        assert "training_lookups(" in text, rel
        assert "partial(run_val_recall" not in text and "partial(load_keras_model" not in text, rel
    lib = [p for p in _modules("experiments") if p.name != "lookups.py"]
    builders = [str(p.relative_to(ROOT)) for p in lib if "partial(run_val_recall" in p.read_text()]
    assert builders == []
