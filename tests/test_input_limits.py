"""Bounded input: oversized, alias-bombed, binary and non-UTF-8 YAML files are refused with one
line and exit code 2, before anything is built from them (study files for `validate` / `run`,
experiment files for `train` and `model-info`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from samsnet_search import config
from samsnet_search.cli import main
from samsnet_search.errors import ConfigError
from samsnet_search.search.study import load_study, load_study_text

REPO = Path(__file__).resolve().parents[1]

# Nine levels of nine aliases: 9**9 (387 million) leaves once expanded, a few hundred bytes as text.
BILLION_LAUGHS = "\n".join(
    ["bomb:", '  l0: &l0 ["lol"]'] + [f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `train` and `run` would write runs/ here


def _study_text(data_root: Path, model_extra: str = "") -> str:
    return (
        "model:\n  n_fft: 512\n  hop_length: 128\n  slices: {choice: [1, 2]}\n"
        + model_extra
        + f"data:\n  root: {data_root}\n  segment_seconds: 1.0\n"
        "train:\n  epochs: 2\n  patience: 2\n"
    )


def _one_line_error(capsys) -> str:
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    lines = out.err.strip().splitlines()
    assert lines and lines[0].startswith("error:"), out.err
    return " ".join(out.err.split())


@pytest.mark.parametrize("command", ["validate", "train", "model-info"])
def test_oversized_file_is_refused_before_parsing(tmp_path, capsys, command):
    path = tmp_path / "big.yaml"
    # Not YAML at all: the refusal must come from the size, before any parser looks at it.
    path.write_bytes(b"{[" * (config.MAX_YAML_BYTES // 2 + 1))
    assert main([command, str(path)]) == 2
    err = _one_line_error(capsys)
    assert f"big.yaml: {path.stat().st_size:,} bytes" in err and "limited to 1,000,000 bytes" in err
    assert "not valid YAML" not in err


@pytest.mark.timeout(120)  # before the limit this expanded until memory ran out
def test_alias_chain_inside_model_is_refused_before_it_expands(tmp_path, synth_root, capsys):
    bomb = "\n".join("  " + line for line in BILLION_LAUGHS.splitlines()) + "\n"
    path = tmp_path / "laughs.yaml"
    path.write_text(_study_text(synth_root, bomb))
    assert main(["validate", str(path)]) == 2
    err = _one_line_error(capsys)
    assert "laughs.yaml: line" in err and "more than 100,000 values once its aliases (*name) are expanded" in err


@pytest.mark.timeout(120)
def test_alias_chain_in_an_experiment_file_for_train(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text("model:\n  channels: 4\n" + BILLION_LAUGHS + "\n")
    assert main(["train", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "aliases (*name) are expanded" in _one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_recursive_alias_is_refused(tmp_path, synth_root):
    path = tmp_path / "loop.yaml"
    path.write_text(_study_text(synth_root) + "description: &d [1, *d]\n")
    with pytest.raises(ConfigError, match=r"loop.yaml: line \d+: an alias refers to a section that contains it"):
        load_study(path)


def test_scalar_aliases_and_merge_keys_still_work(tmp_path, synth_root):
    """Aliases are limited, not banned: a file that reuses a few values loads as before."""
    text = (
        "name: &name tiny\nmodel:\n  n_fft: 512\n  hop_length: 128\n  slices: {choice: [1, 2]}\n"
        f"data:\n  root: {synth_root}\n  segment_seconds: 1.0\n"
        "train:\n  epochs: &epochs 2\n  patience: *epochs\n"
        "description: *name\n"
    )
    path = tmp_path / "ok.yaml"
    path.write_text(text)
    study = load_study(path)
    assert study.base["train"] == {"epochs": 2, "patience": 2} and study.spec.description == "tiny"
    merged = config.parse_yaml("a: &a {x: 1, y: 2}\nb: {<<: *a, y: 3}\n", "m.yaml")
    assert merged == {"a": {"x": 1, "y": 2}, "b": {"x": 1, "y": 3}}


@pytest.mark.parametrize(
    "name,payload,expected",
    [
        ("binary.yaml", bytes(range(256)) * 4, "binary.yaml: not UTF-8 text (byte 128 is b'\\x80')"),
        ("nul.yaml", b"model:\n  slices: 4\x00\x00\n", "nul.yaml: contains NUL bytes"),
        ("utf16.yaml", "model:\n  slices: 4\n".encode("utf-16"), "utf16.yaml: not UTF-8 text"),
        ("deep.yaml", b"[" * 50_000 + b"]" * 50_000, "deep.yaml: not valid YAML"),  # libyaml's own limit
        # Under libyaml's limit, but the checks that walk a section recursed past Python's.
        ("nested.yaml", b"model:\n  x: " + b"{a: " * 900 + b"1" + b"}" * 900, "nested more than 32 levels deep"),
    ],
)
@pytest.mark.parametrize("command", ["validate", "train"])
def test_undecodable_file_is_one_line_and_exit_2(tmp_path, capsys, name, payload, expected, command):
    path = tmp_path / name
    path.write_bytes(payload)
    assert main([command, str(path)]) == 2
    err = _one_line_error(capsys)
    assert expected in err, err
    if name == "utf16.yaml":
        assert "it looks like UTF-16: save it as UTF-8" in err


def test_utf8_with_bom_is_read(tmp_path, synth_root):
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + _study_text(synth_root).encode())
    assert load_study(path).space.keys() == {"model.slices"}


def test_a_stored_study_copy_has_the_same_limits(tmp_path, synth_root):
    """`resume` parses the copy kept in the study folder (writable by whoever reaches the storage)."""
    bomb = "\n".join("  " + line for line in BILLION_LAUGHS.splitlines()) + "\n"
    with pytest.raises(ConfigError, match="aliases"):
        load_study_text(_study_text(synth_root, bomb), tmp_path / "s.yaml", tmp_path)
    with pytest.raises(ConfigError, match="limited to"):
        load_study_text("#" * (config.MAX_YAML_BYTES + 1), tmp_path / "s.yaml", tmp_path)


def test_user_yaml_is_parsed_in_one_place():
    """Every YAML a user or the study folder supplies goes through config.parse_yaml: no other
    module calls a YAML loader (the musdb package's own mus.yaml is not user input)."""
    allowed = {REPO / "samsnet_search" / "config.py", REPO / "samsnet_search" / "data" / "readers.py"}
    loader = re.compile(r"yaml\.(safe_load|load|full_load|unsafe_load|load_all|safe_load_all)\(")
    offenders = [
        str(p.relative_to(REPO))
        for p in (REPO / "samsnet_search").rglob("*.py")
        if p not in allowed and loader.search(p.read_text())
    ]
    assert offenders == []
    assert "musdb" in (REPO / "samsnet_search" / "data" / "readers.py").read_text()


def test_the_limits_do_not_refuse_the_shipped_files():
    for path in sorted((REPO / "search_spaces").glob("*.yaml")) + sorted((REPO / "configs").glob("*.yaml")):
        assert config.read_yaml(path) == yaml.safe_load(path.read_text()), path


def test_the_user_config_has_the_same_limits(tmp_path, monkeypatch):
    from samsnet_search.search import identity

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    path = identity.user_config_path()
    path.parent.mkdir(parents=True)
    path.write_text("storage: s3://bucket/ray\n")
    assert identity.user_config() == {"storage": "s3://bucket/ray"}
    path.write_bytes("storage: x\n".encode("utf-16"))
    with pytest.raises(ConfigError, match="config.yaml: not UTF-8 text"):
        identity.user_config()
    path.write_text(
        "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
        + "".join(
            f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcd", "bcde")
        )
    )
    with pytest.raises(ConfigError, match="aliases"):
        identity.user_config()
