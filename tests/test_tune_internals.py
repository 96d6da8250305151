"""Ray Tune's and Optuna's internals the platform relies on are where search/tune_internals.py
says, on the installed versions: a Ray or Optuna upgrade fails here, naming what changed."""

from __future__ import annotations

import ast
from pathlib import Path

from samsnet_search.search import tune_internals

PACKAGE = Path(__file__).resolve().parents[1] / "samsnet_search"


def test_the_installed_ray_and_optuna_are_validated():
    assert tune_internals.unvalidated() == [], (
        "a Ray or Optuna version this project has not validated: check each internal "
        f"(search/tune_internals.py), then update VALIDATED and pyproject.toml: {tune_internals.problems()}"
    )


def test_every_internal_is_where_it_was_validated():
    assert tune_internals.problems() == []


def test_a_moved_internal_is_named(monkeypatch):
    from ray.air import constants

    monkeypatch.setattr(constants, "EXPR_RESULT_FILE", "results.jsonl")
    assert tune_internals.problems() == ["result.json: is 'results.jsonl', expected 'result.json'"]


def test_an_unvalidated_version_is_named(monkeypatch):
    real = tune_internals.importlib.metadata.version
    monkeypatch.setattr(tune_internals.importlib.metadata, "version", lambda p: "2.61.0" if p == "ray" else real(p))
    assert tune_internals.unvalidated() == ["ray 2.61.0 (validated: 2.60.x)"]


def test_no_private_ray_or_optuna_attribute_outside_the_one_module():
    """`x._name` on a Ray / Optuna object, or an import from their private modules, only in
    search/tune_internals.py (own objects' `self._x` and torch's are not counted)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "tune_internals.py":
            continue
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("ray", "optuna"):
                if any(part.startswith("_") for part in node.module.split(".")):
                    found.append(f"{path.name}:{node.lineno} from {node.module}")
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.value.startswith(("ray.", "optuna.")) and "._" in node.value:
                    found.append(f"{path.name}:{node.lineno} {node.value!r}")
            if isinstance(node, ast.Attribute) and node.attr in PRIVATE_NAMES:
                found.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert not found, "through search/tune_internals.py: " + ", ".join(found)


# The private names the platform has used of Ray and Optuna objects (kept in tune_internals).
PRIVATE_NAMES = {"_time_attr", "_process_bracket", "_local_tuner", "_tune_config", "experiment_driver_staging_path"}


def test_rays_token_is_made_private(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("secret")
    token.chmod(0o644)  # as Ray writes it under umask 022
    tune_internals.keep_token_private()
    assert token.stat().st_mode & 0o777 == 0o600
    token.unlink()
    tune_internals.keep_token_private()  # no token yet: nothing to do
