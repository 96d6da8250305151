"""`samsnet-search data synth` and `data info` through cli.main."""

from __future__ import annotations

import json

from samsnet_search import cli


def test_data_synth_writes_tree(tmp_path, capsys):
    out = tmp_path / "synth"
    argv = [
        "data",
        "synth",
        str(out),
        "--train",
        "2",
        "--valid",
        "1",
        "--test",
        "1",
        "--seconds",
        "3",
        "--seed",
        "4",
        "--section-min",
        "1",
        "--section-max",
        "2",
    ]
    assert cli.main(argv) == 0
    assert "wrote 3 train/ tracks (1 for validation) and 1 test/ tracks" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "train").iterdir()) == [
        "synth-train-000",
        "synth-train-001",
        "synth-valid-000",
    ]
    assert (out / "test/synth-test-000/mixture.wav").is_file()
    manifest = json.loads((out / "samsnet-synth.json").read_text())
    assert manifest["seed"] == 4 and manifest["section_range"] == [1.0, 2.0]
    # A second run refuses to overwrite (exit 2, one line naming the folder), --force replaces.
    assert cli.main(argv) == 2
    assert f"{out / 'train'}: already exists" in capsys.readouterr().err
    assert cli.main(argv + ["--force"]) == 0


def test_data_info_prints_splits(synth_root, capsys):
    assert cli.main(["data", "info", str(synth_root), "--check"]) == 0
    out = capsys.readouterr().out
    assert "kind: synthetic (MUSDB18-HQ format)" in out
    assert "train: 2 tracks" in out and "valid: 2 tracks" in out and "test: 2 tracks" in out
    assert "fingerprint: " in out and "decoded:" in out


def test_data_info_bad_data_exit_code_2(tmp_path, make_hq_track, capsys):
    root = tmp_path / "ds"
    for rel in ("train/a", "train/v", "test/t"):
        make_hq_track(root / rel)
    (root / "train/a/bass.wav").unlink()
    assert cli.main(["data", "info", str(root), "--valid-track", "v"]) == 2
    err = capsys.readouterr().err
    assert f"{root / 'train/a/bass.wav'}: missing stem" in err
    assert "Traceback" not in err
    assert cli.main(["data", "info", str(root), "--valid-track", "zz"]) == 2
    assert "validation track 'zz'" in capsys.readouterr().err
    assert cli.main(["data", "info", str(root), "--format", "mp3"]) == 2  # not a valid format
    assert "format" in capsys.readouterr().err
