"""The floor plan: imports go one way only, model code stays light, the public API resolves.

Floors, lowest first: (0) `tokworld.errors`, `tokworld.presets`; (1) `tokworld.tokenizer`; (2)
the tokworld core and `tokworld.data`; (3) `tokworld.training`; (4) `tokworld.eval`; (5)
`tokworld.cli`, `python -m tokworld` and the package `tokworld` itself. A module may import
from its own floor and the floors below it, never from one above.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import tokworld

ROOT = Path(__file__).resolve().parents[1]
# Folder of the repository -> the package it is installed as (pyproject's package-dir).
FOLDERS = {
    "tokworld": "tokworld",
    "tokenizer": "tokworld.tokenizer",
    "training": "tokworld.training",
    "eval": "tokworld.eval",
}
GROUND = {"tokworld.errors", "tokworld.presets"}
FLOORS = {"tokworld.tokenizer": 1, "tokworld.training": 3, "tokworld.eval": 4, "tokworld.cli": 5}
TOP = {"tokworld", "tokworld.__main__"}
HEAVY = {"transformers", "ale_py", "minigrid"}  # never loaded by `import tokworld.tokenizer.vocab`
TRAINING_ONLY = {"accelerate", "wandb", "tensorboard"}  # never imported by model code


def module_name(path: Path) -> str:
    """tokenizer/vocab.py -> tokworld.tokenizer.vocab; a package's __init__.py -> the package."""
    folder, *rest = path.relative_to(ROOT).with_suffix("").parts
    parts = FOLDERS[folder].split(".") + rest
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_files() -> dict[str, Path]:
    """Module name -> file, for every .py file of the four library folders."""
    files = {}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            files[module_name(path)] = path
    return files


MODULES = library_files()


def floor(module: str) -> int:
    """The floor of one of our modules (see the module docstring)."""
    if module in GROUND:
        return 0
    if module in TOP:
        return 5
    for package, level in FLOORS.items():
        if module == package or module.startswith(package + "."):
            return level
    return 2


def imports(module: str) -> list[tuple[int, str]]:
    """(line, module) of every import in `module`'s file."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return imports_in(path.read_text(), package)


def imports_in(source: str, package: str) -> list[tuple[int, str]]:
    """(line, module) of every import in `source`, a module of `package`, nested ones included.

    `from a import b` counts as importing `a.b` where that is one of our modules, else `a`;
    relative imports are resolved against `package`; `importlib.import_module` and
    `__import__` calls with a literal name count too.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if sub in MODULES else base))
        elif isinstance(node, ast.Call) and _dynamic_import(node):
            found.append((node.lineno, node.args[0].value))
    return found


def _dynamic_import(call: ast.Call) -> bool:
    name = getattr(call.func, "attr", None) or getattr(call.func, "id", None)
    first = call.args[0] if call.args else None
    literal = isinstance(first, ast.Constant) and isinstance(first.value, str)
    return name in ("import_module", "__import__") and literal


def ours(name: str) -> bool:
    return name == "tokworld" or name.startswith("tokworld.")


def where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(ROOT)}:{line}"


NESTED = """
import os

def f():
    from tokworld import training
    from .. import eval
    from ..cli.flags import X
    import tokworld.tokenizer.vocab
    return importlib.import_module("tokworld.cli"), __import__("tokworld.errors"), os
"""


def test_the_walk_sees_every_floor_and_nested_imports():
    """Guards the test itself: the path mapping, the floors and the import walk."""
    assert module_name(ROOT / "tokenizer" / "vocab.py") == "tokworld.tokenizer.vocab"
    assert module_name(ROOT / "training" / "__init__.py") == "tokworld.training"
    assert module_name(ROOT / "tokworld" / "cli" / "__init__.py") == "tokworld.cli"
    assert {floor(m) for m in MODULES} == {0, 1, 2, 3, 4, 5}
    assert floor("tokworld.data.format") == floor("tokworld.model") == 2
    assert floor("tokworld.tokenizer") == 1 and floor("tokworld.presets") == 0
    assert sorted(name for _, name in imports_in(NESTED, "tokworld.data")) == [
        "os",
        "tokworld.cli",
        "tokworld.cli.flags",
        "tokworld.errors",
        "tokworld.eval",
        "tokworld.tokenizer.vocab",
        "tokworld.training",
    ]


def test_imports_only_go_down_the_floors():
    upward = []
    for module in MODULES:
        for line, name in imports(module):
            if ours(name) and floor(name) > floor(module):
                upward.append(f"{where(module, line)} -> {name}")
    assert not upward, "imports going up the floors:\n" + "\n".join(upward)


def test_imports_name_modules_that_exist():
    """A typo or a stale path would escape the floor check; every import of ours must resolve."""
    missing = [
        f"{where(module, line)} -> {name}"
        for module in MODULES
        for line, name in imports(module)
        if ours(name) and name not in MODULES
    ]
    assert not missing, "imports of modules that do not exist:\n" + "\n".join(missing)


def test_model_code_never_imports_training_tools():
    found = [
        f"{where(module, line)} -> {name}"
        for module in MODULES
        if floor(module) <= 2
        for line, name in imports(module)
        if name.split(".")[0] in TRAINING_ONLY
    ]
    assert not found, "model code imports training tools:\n" + "\n".join(found)


def test_the_package_exports_lazily_by_name():
    """tokworld/__init__.py imports nothing of ours: its exports are module names (strings)
    resolved on first use, so `import tokworld.tokenizer` stays on floor 1."""
    assert not [name for _, name in imports("tokworld") if ours(name)]
    exports = tokworld._EXPORTS
    assert sorted(exports) == tokworld.__all__
    assert all(isinstance(m, str) and m in MODULES for m in exports.values())


@pytest.mark.parametrize("name", tokworld.__all__)
def test_every_public_name_resolves(name):
    value = getattr(tokworld, name)
    assert getattr(value, "__name__", name) == name
    assert value.__module__ == tokworld._EXPORTS[name]


def test_the_vocabulary_loads_no_heavy_dependency():
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import tokworld.tokenizer.vocab"],
        capture_output=True,
        text=True,
        check=True,
    )
    # stderr: "import time: self [us] | cumulative | imported package", one line per module.
    loaded = {
        line.rpartition("|")[2].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "tokworld" in loaded and "torch" in loaded  # the listing is what we think it is
    assert not loaded & HEAVY, sorted(loaded & HEAVY)
