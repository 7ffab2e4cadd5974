"""The house rules of docs/ARCHITECTURE.md, checked: imports point down the layers (between the top-level
packages, and between the units inside ``experiments/``), modules stay small, building the CLI's parser loads
nothing heavy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("core", "pipelines", "augment", "models", "synth", "ensembles", "experiments")
#: What each layer may import from the platform's own packages (besides itself).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "pipelines": {"core"},
    "augment": {"core", "pipelines"},
    "models": {"core", "pipelines"},
    "synth": {"core", "pipelines"},
    "ensembles": {"core", "pipelines", "augment", "models"},
    "experiments": {"core", "pipelines", "augment", "models", "synth", "ensembles"},
}
#: The units inside ``experiments/`` (a subpackage or a loose module), lowest first: a unit imports only units
#: before it. ``training`` is one CNN run (training, fitting, evaluation, figures); ``paired`` the verdicts.
EXPERIMENTS_ORDER: tuple[str, ...] = (
    "names",
    "startup",
    "settings",
    "tracking",
    "training",
    "paired",
    "serving",
    "catalog",
    "pretraining",
    "selftrain",
    "similarity",
    "tuning",
    "ensembling",
    "crossval",
    "reporting",
    "commands",
    "cli",
)
MAX_LINES = 500


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imported_modules(path: Path) -> set[str]:
    """Dotted names of the modules a file imports anywhere (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def _imported_packages(path: Path) -> set[str]:
    """Top-level platform packages a module imports anywhere."""
    return {n.split(".")[0] for n in _imported_modules(path) if n.split(".")[0] in LIBRARY}


def _experiments_unit(dotted_or_path: str) -> str | None:
    parts = dotted_or_path.replace("/", ".").removesuffix(".py").split(".")
    if parts[0] != "experiments" or len(parts) < 2 or parts[1] == "__init__":
        return None
    return parts[1]


def _upward_imports(root: Path, order: tuple[str, ...] = EXPERIMENTS_ORDER) -> dict[str, list[str]]:
    """``{file: [imported unit, ...]}`` of the imports inside ``experiments/`` that do not point down."""
    rank = {u: i for i, u in enumerate(order)}
    bad: dict[str, list[str]] = {}
    for path in sorted((root / "experiments").rglob("*.py")):
        rel = str(path.relative_to(root))
        unit = _experiments_unit(rel)
        if unit is None:
            continue
        targets = {_experiments_unit(m) for m in _imported_modules(path)} - {None, unit}
        wrong = sorted(t for t in targets if t not in rank or unit not in rank or rank[t] > rank[unit])
        if wrong:
            bad[rel] = wrong
    return bad


@pytest.mark.parametrize("package", LIBRARY)
def test_imports_point_down_the_layers(package: str) -> None:
    bad = {
        str(p.relative_to(ROOT)): sorted(_imported_packages(p) - ALLOWED[package] - {package})
        for p in _modules(package)
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_layer_check_can_fail(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from experiments.settings.run import RunConfig\n    import models.registry\n")
    assert _imported_packages(module) == {"experiments", "models"}


def test_units_inside_experiments_point_down() -> None:
    """Every unit of ``experiments/`` is in :data:`EXPERIMENTS_ORDER` and imports only units below it."""
    units = {_experiments_unit(str(p.relative_to(ROOT))) for p in _modules("experiments")} - {None}
    assert units - set(EXPERIMENTS_ORDER) == set(), "add new units to EXPERIMENTS_ORDER and docs/ARCHITECTURE.md"
    assert _upward_imports(ROOT) == {}


def test_a_planted_upward_import_inside_experiments_fails(tmp_path: Path) -> None:
    """A copy of ``experiments/`` with one upward import planted (settings reaching up into tuning, inside a
    function) is caught, and so is a unit missing from the order."""
    import shutil

    shutil.copytree(
        ROOT / "experiments",
        tmp_path / "experiments",
        ignore=shutil.ignore_patterns("__pycache__", "configs", "templates", "static"),
    )
    assert _upward_imports(tmp_path) == {}
    planted = tmp_path / "experiments" / "settings" / "checks.py"
    planted.write_text(planted.read_text() + "\n\ndef _late():\n    from experiments.tuning import budget\n")
    assert _upward_imports(tmp_path) == {"experiments/settings/checks.py": ["tuning"]}
    (tmp_path / "experiments" / "newthing.py").write_text("from experiments.names import check_label\n")
    assert "experiments/newthing.py" in _upward_imports(tmp_path)


def _private_imports_across_units(root: Path) -> dict[str, list[str]]:
    """``{file: [module.name, ...]}`` of underscore names one unit of ``experiments/`` imports from another."""
    bad: dict[str, list[str]] = {}
    for path in sorted((root / "experiments").rglob("*.py")):
        rel = str(path.relative_to(root))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                target = _experiments_unit(node.module)
                if target is not None and target != _experiments_unit(rel):
                    names = [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
                    if names:
                        bad.setdefault(rel, []).extend(names)
    return bad


def test_units_use_each_others_public_names_only(tmp_path: Path) -> None:
    """A unit of ``experiments/`` imports another's public names, never its underscore helpers; a planted
    private import is caught."""
    assert _private_imports_across_units(ROOT) == {}
    (tmp_path / "experiments" / "reporting").mkdir(parents=True)
    (tmp_path / "experiments" / "reporting" / "x.py").write_text("from experiments.tuning.run import _finish\n")
    assert _private_imports_across_units(tmp_path) == {"experiments/reporting/x.py": ["experiments.tuning.run._finish"]}


def test_no_library_module_is_over_500_lines() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for pkg in LIBRARY for p in _modules(pkg)}
    assert {k: n for k, n in sizes.items() if n > MAX_LINES} == {}


def test_no_import_cycle_between_modules() -> None:
    """No two platform modules import each other, directly or through others (module-level imports)."""
    graph: dict[str, set[str]] = {}
    modules = {
        str(p.relative_to(ROOT).with_suffix("")).replace("/", ".").removesuffix(".__init__"): p
        for pkg in LIBRARY
        for p in _modules(pkg)
    }
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        deps = set()
        for node in tree.body:  # module level only: imports inside functions run late and cannot deadlock
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                deps.update(d for d in (node.module, *(f"{node.module}.{a.name}" for a in node.names)) if d in modules)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in modules)
        graph[name] = deps - {name}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle.extend([*stack[stack.index(dep) :], dep] if dep in stack else [node, dep])
                return True
            if state.get(dep) is None and visit(dep, [*stack, dep]):
                return True
        state[node] = 2
        return False

    for start in sorted(graph):
        if state.get(start) is None and visit(start, [start]):
            break
    assert cycle == []


def test_only_the_cli_entry_sets_mlflows_process_wide_store() -> None:
    """``mlflow.set_tracking_uri`` is called in one library function (``tracking.store.set_tracking_uri``), and
    that function only by ``galaxy10``'s entry (``experiments/cli.py``); nothing else swaps MLflow's default."""
    setters, callers = [], []
    for pkg in LIBRARY:
        for path in _modules(pkg):
            rel = str(path.relative_to(ROOT))
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call):
                    f = node.func
                    name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                    owner = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
                    if name == "set_tracking_uri" and owner == "mlflow":
                        setters.append(rel)
                    elif name in ("set_tracking_uri", "_use_tracking_uri") and owner != "mlflow":
                        callers.append(rel)
    assert setters == ["experiments/tracking/store.py"]
    assert callers == ["experiments/cli.py"]


def test_the_cli_help_loads_no_heavy_library() -> None:
    """``galaxy10 --help`` and every subcommand's parser build without TensorFlow, albumentations, cv2 or the
    backbones (they load when a command runs)."""
    code = (
        "import io, sys, contextlib\n"
        "from experiments import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        cli.main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = ('tensorflow', 'keras', 'albumentations', 'cv2', 'models.registry', 'mlflow', 'optuna')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT), "NO_ALBUMENTATIONS_UPDATE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == "[]"


def test_every_training_path_resolves_its_references_through_one_entry() -> None:
    """The command, the objective, the refit and the fold CNNs train through ``experiments.training.train``
    with the one set of MLflow lookups (``tracking.lookups.training_lookups``); none builds its own."""
    paths = [
        "experiments/commands/train.py",
        "experiments/tuning/objective.py",
        "experiments/tuning/refit.py",
        "experiments/ensembling/fold_cnns.py",
    ]
    for rel in paths:
        text = (ROOT / rel).read_text()
        assert "training_lookups(" in text, rel
        assert "partial(run_val_recall" not in text and "partial(load_keras_model" not in text, rel
    lib = [p for p in _modules("experiments") if p.name != "lookups.py"]
    builders = [str(p.relative_to(ROOT)) for p in lib if "partial(run_val_recall" in p.read_text()]
    assert builders == []
