"""The layers hold: import-linter's contracts (pyproject.toml), no private names across modules,
and a deferred import only where it says why (`# lazy: <what it would cost at CLI start>`)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "samsnet_search"


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imported_from(path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = _module(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    package = package[: len(package) - node.level + 1]
    return ".".join(package + ([node.module] if node.module else []))


def _private_imports(paths) -> list[str]:
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and _imported_from(path, node).startswith("samsnet_search"):
                source = _imported_from(path, node)
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__") and source != _module(path):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {source}.{alias.name}")
    return found


def test_no_module_imports_another_modules_private_names():
    assert _private_imports(sorted(PACKAGE.rglob("*.py"))) == []


def test_tests_use_the_public_api():
    assert _private_imports(sorted((ROOT / "tests").rglob("*.py"))) == []


def test_every_deferred_import_says_why():
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)) and "# lazy:" not in lines[node.lineno - 1]:
                        unexplained.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert unexplained == []


@pytest.mark.skipif(
    shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None,
    reason="import-linter is a dev dependency",
)
def test_import_linter_contracts_are_kept():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    run = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:]


# Renames that are not "write these bytes": the compiled kernel moved into place, export folders,
# separated audio streamed to a `.part` file as it is made (too large to hold whole).
RENAMES_ALLOWED = {
    "samsnet_search/model/cpu_attention.py",
    "samsnet_search/delivery/export.py",
    "samsnet_search/data/audio_io.py",
}


def test_one_atomic_write():
    """Files are written whole in one place (samsnet_search/files.py): no other module makes its
    own temporary file and renames it."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "samsnet_search/files.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                name = node.func.attr
                renames = name in ("replace", "rename") and not _is_str_replace(node)
                if name == "mkstemp" or (renames and rel not in RENAMES_ALLOWED):
                    found.append(f"{rel}:{node.lineno} {name}()")
    assert not found, "write through files.write_atomic: " + ", ".join(found)


def _is_str_replace(node: ast.Call) -> bool:
    # str.replace(old, new) and dataclasses.replace(obj, **changes) take two arguments or keywords;
    # os.replace(src, dst) is told apart by its module, Path.replace(target) by its single argument.
    if isinstance(node.func.value, ast.Name) and node.func.value.id == "os":
        return False
    return len(node.args) != 1 or bool(node.keywords)


def test_one_line_of_an_exception_is_taken_in_one_place():
    """errors.one_line is the one way to show an exception in a line (first line, or the last when
    the text carries a traceback): no module takes its own line of an exception's text."""
    pattern = re.compile(r"(str\(\s*(e|exc|error|err)\s*\)|\be\.message)[^\n]*\.splitlines\(\)")
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "errors.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, "use errors.one_line: " + ", ".join(found)


@pytest.mark.parametrize(
    "error, typed, line",
    [
        (ValueError("bad lr\nmore detail"), False, "bad lr"),
        (ValueError("bad lr\nmore detail"), True, "ValueError: bad lr"),
        (OSError(), False, "OSError"),
        (
            RuntimeError('ray::ImplicitFunc.train() (pid=7)\n  File "t.py", line 3, in f\n    g()\nTrialFailed: nan'),
            False,
            "TrialFailed: nan",
        ),
        (
            RuntimeError("ray::train() (pid=1)\nTraceback (most recent call last):\n  File x\nKeyError: 'lr'\n"),
            False,
            "KeyError: 'lr'",
        ),
    ],
    ids=["first-line", "typed", "empty", "traceback", "ray-task-error"],
)
def test_one_line(error, typed, line):
    from samsnet_search.errors import one_line

    assert one_line(error, typed=typed) == line


def test_one_lock_between_processes():
    """files.exclusive is the one inter-process lock: no other module calls flock."""
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "files.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "flock(" in line
    ]
    assert not found, "use files.exclusive: " + ", ".join(found)
