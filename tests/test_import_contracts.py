"""The import contracts in pyproject.toml ([tool.importlinter]): the tree keeps them, a forbidden import breaks them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from edgekit.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
NAMES = {c["id"]: c["name"] for c in CONFIG["contracts"]}


def lint_imports(cwd: Path) -> tuple[int, str]:
    """Run the venv's lint-imports in ``cwd`` (it reads ``cwd``/pyproject.toml and finds the packages there)."""
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        found = shutil.which("lint-imports")
        assert found, "lint-imports is not installed; install the dev extra: pip install -e '.[dev]'"
        exe = Path(found)
    proc = subprocess.run([str(exe), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120)
    # The report wraps long contract names at 80 columns; one space between words makes them findable.
    return proc.returncode, " ".join((proc.stdout + proc.stderr).split())


def test_the_tree_keeps_every_contract():
    rc, out = lint_imports(ROOT)
    assert rc == 0, out
    assert f"Contracts: {len(NAMES)} kept, 0 broken." in out, out
    for name in NAMES.values():
        assert f"{name} KEPT" in out, out


def _modules_named() -> set[str]:
    """Every internal module the contracts name (layers, sources, forbidden), with its parents."""
    names: set[str] = set(CONFIG["root_packages"])
    for c in CONFIG["contracts"]:
        for layer in c.get("layers", []):
            names.update(m.strip() for m in layer.replace(":", "|").split("|"))
        names.update(c.get("source_modules", []))
        names.update(c.get("forbidden_modules", []))
    internal = {n for n in names if n.split(".")[0] in CONFIG["root_packages"]}
    return {".".join(n.split(".")[: i + 1]) for n in internal for i in range(n.count(".") + 1)}


@pytest.fixture()
def bare_tree(tmp_path: Path) -> Path:
    """Empty packages for every module the contracts name, beside a copy of the real pyproject.toml.

    A tree of its own, not a copy of the checkout, so a half-saved file of someone's work in
    progress cannot change what these tests see.
    """
    for name in _modules_named():
        pkg = tmp_path.joinpath(*name.split("."))
        pkg.mkdir(parents=True, exist_ok=True)
        (pkg / "__init__.py").write_text(f'"""{name}"""\n', encoding="utf-8")
    shutil.copyfile(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_a_bare_tree_keeps_every_contract(bare_tree: Path):
    # The control for the cases below: what breaks there is the one import each adds.
    rc, out = lint_imports(bare_tree)
    assert rc == 0, out
    assert f"Contracts: {len(NAMES)} kept, 0 broken." in out, out


@pytest.mark.parametrize(
    ("module", "source", "broken", "shown"),
    [
        ("edge.core", "import converters\n", {"device-side", "top-level"}, "edge.core -> converters"),
        # A lazy import inside a function is an import all the same: a board must never reach it.
        ("edge.runtime", "def load():\n    import tensorflow\n", {"device-side"}, "edge.runtime -> tensorflow"),
        ("benchmarks.bench", "from keras import layers\n", {"device-side"}, "benchmarks.bench -> keras"),
        ("device_profiles", "import converters.family\n", {"device-side", "top-level"},
         "device_profiles -> converters.family"),
        ("edge.core", "import edge.serve\n", {"edge-stages"}, "edge.core -> edge.serve"),
        ("edge.tables", "import edge.bundle\n", {"edge-stages"}, "edge.tables -> edge.bundle"),
        ("edge.runtime", "import edge.v2\n", {"edge-stages"}, "edge.runtime -> edge.v2"),
        ("device_profiles", "import edge.backends\n", {"edge-stages"}, "device_profiles -> edge.backends"),
        ("benchmarks.bench", "import benchmarks.evaluate\n", {"benchmarks-stages"},
         "benchmarks.bench -> benchmarks.evaluate"),
        ("converters.train", "import converters.convert\n", {"converters-stages"},
         "converters.train -> converters.convert"),
        ("converters.cluster", "import converters.family\n", {"converters-stages"},
         "converters.cluster -> converters.family"),
        ("edgekit", "import benchmarks.perf\n", {"perf-unimported"}, "edgekit -> benchmarks.perf"),
        ("benchmarks.evaluate", "import benchmarks.perf\n", {"perf-unimported", "benchmarks-stages"},
         "benchmarks.evaluate -> benchmarks.perf"),
        ("edge", "import edgekit\n", {"top-level"}, "edge -> edgekit"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(bare_tree: Path, module: str, source: str, broken: set[str],
                                                shown: str):
    init = bare_tree.joinpath(*module.split(".")) / "__init__.py"
    init.write_text(init.read_text(encoding="utf-8") + source, encoding="utf-8")
    rc, out = lint_imports(bare_tree)
    assert rc != 0, out
    assert f"Contracts: {len(NAMES) - len(broken)} kept, {len(broken)} broken." in out, out
    for cid in broken:
        assert f"{NAMES[cid]} BROKEN" in out, out
    assert shown in out, out


def test_no_command_runs_a_perf_module():
    # The CLI imports its commands by name (importlib), which lint-imports cannot follow.
    assert [m for m, _ in COMMANDS.values() if m.split(".")[:2] == ["benchmarks", "perf"]] == []
