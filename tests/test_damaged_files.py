"""Damaged files get one line (issue 22 item 5): every reader of a file the platform wrote
(`study.json`, a trial's `experiment.json`, Tune's `result.json`, `selection.json`, an export's
`export.json`) names the file when it holds binary garbage, is cut short or has fields of the wrong
type; `ls` still lists every other study; a damaged `experiment.json` reads as a missing one.

The study folders are made by the project's own code (`identity.write_manifest`), then damaged.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from samsnet_search import cli
from samsnet_search.delivery import export_folder
from samsnet_search.errors import DamagedFile
from samsnet_search.search import checkpoints, identity, select
from samsnet_search.search.identity import Manifest

GARBAGE = bytes(range(256)) * 4  # not UTF-8 from byte 128 on


def _study(storage: Path, name: str) -> Path:
    identity.write_manifest(
        Manifest(
            name=name,
            storage=str(storage),
            experiment_name=name,
            experiment_id="0",
            parent_run_id="p",
            registered_model=f"samsnet-{name}",
            tracking_uri="x",
            artifact_root=None,
            base_dir=str(storage),
            source=f"{name}.yaml",
            state="finished",
        )
    )
    return storage / name


def _truncated(path: Path) -> bytes:
    text = path.read_bytes()
    return text[: len(text) // 2]


def _wrong_types(path: Path) -> bytes:
    data = json.loads(path.read_text())
    data.update(summary=["not", "a", "mapping"], updated="yesterday")
    return json.dumps(data).encode()


DAMAGE = {
    "garbage": lambda path: GARBAGE,
    "truncated": _truncated,
    "wrong types": _wrong_types,
    "not an object": lambda path: b"[1, 2, 3]",
    "unknown state": lambda path: json.dumps({**json.loads(path.read_text()), "state": "exploded"}).encode(),
}


@pytest.fixture(autouse=True)
def _no_reread_pause(monkeypatch):
    """read_manifest reads a cut-short file again (Ray syncs it); no need to wait here."""
    monkeypatch.setattr(identity, "MANIFEST_READ_PAUSE_S", 0.0)


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize("damage", DAMAGE)
def test_ls_lists_every_other_study_and_marks_the_damaged_one(tmp_path, capsys, damage):
    storage = tmp_path / "runs"
    _study(storage, "good")
    manifest = _study(storage, "bad") / identity.MANIFEST
    manifest.write_bytes(DAMAGE[damage](manifest))

    assert cli.main(["ls", "--storage", str(storage)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(rows) == {"good", "bad"} and "finished" in rows["good"]
    assert "damaged:" in rows["bad"] and str(manifest) in rows["bad"]


@pytest.mark.parametrize("damage", DAMAGE)
def test_report_of_a_damaged_study_is_one_line_and_exit_2(tmp_path, capsys, damage):
    storage = tmp_path / "runs"
    manifest = _study(storage, "bad") / identity.MANIFEST
    manifest.write_bytes(DAMAGE[damage](manifest))

    assert cli.main(["report", "bad", "--storage", str(storage)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(manifest) in line and "damaged study manifest" in line


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not an object"])
def test_a_damaged_experiment_json_reads_as_a_missing_one_with_one_warning(tmp_path, caplog, damage):
    study = _study(tmp_path / "runs", "s")
    assert checkpoints.read_experiment(str(study), "t1") is None  # missing: the runner's fallback
    checkpoints.write_experiment(str(study), "t1", {"model": {"slices": 4}})
    assert checkpoints.read_experiment(str(study), "t1") == {"model": {"slices": 4}}

    path = study / "trial_t1" / checkpoints.EXPERIMENT_FILE
    path.write_bytes(DAMAGE[damage](path))
    with caplog.at_level(logging.WARNING, logger=checkpoints.__name__):
        assert checkpoints.read_experiment(str(study), "t1") is None
    (warning,) = [r.getMessage() for r in caplog.records]
    assert str(path) in warning and "read as missing" in warning


def test_result_json_skips_a_line_cut_short_and_names_the_file_on_damage(tmp_path):
    trial = tmp_path / "trial_t1"
    trial.mkdir()
    results = trial / checkpoints.RESULTS_FILE
    results.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')  # a driver killed while Tune appended
    assert checkpoints.read_results(str(trial)) == [{"epoch": 1}, {"epoch": 2}]

    results.write_bytes(GARBAGE)
    with pytest.raises(DamagedFile, match=f"{results}: damaged: not UTF-8"):
        checkpoints.read_results(str(trial))
    results.write_text('{"epoch": 1}\n[2]\n')
    with pytest.raises(DamagedFile, match=f"{results}: damaged: line 2 is a JSON list"):
        checkpoints.read_results(str(trial))


@pytest.mark.parametrize(
    "content",
    [GARBAGE, b'{"table": {"rows": [', b'{"table": 5, "jobs": []}', b'"a string"'],
    ids=["garbage", "truncated", "wrong types", "not an object"],
)
def test_a_damaged_selection_json_is_one_line(tmp_path, capsys, content):
    storage = tmp_path / "runs"
    study = _study(storage, "s")
    path = Path(select.selection_uri(str(study))) / select.RESULT_FILE
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(DamagedFile, match=str(path)):
        select.load_selection(str(study))
    assert cli.main(["report", "s", "--storage", str(storage)]) == 2
    assert str(path) in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "content",
    [GARBAGE, b'{"format": "samsnet-export/3", "files": {', b'{"format": "samsnet-export/3", "files": [1]}'],
    ids=["garbage", "truncated", "wrong types"],
)
def test_a_damaged_export_manifest_is_one_line(tmp_path, capsys, content):
    folder = tmp_path / "best"
    folder.mkdir()
    (folder / export_folder.MANIFEST).write_bytes(content)
    with pytest.raises(export_folder.ExportError, match=str(folder / export_folder.MANIFEST)):
        export_folder.verify_export(folder)
    assert cli.main(["separate", str(folder), str(tmp_path / "song.wav"), "--out", str(tmp_path / "o")]) == 2
    assert str(folder / export_folder.MANIFEST) in _one_line(capsys.readouterr().err)


def test_a_copied_study_folder_reads_itself(tmp_path, capsys):
    """study.json records its storage as an absolute path; a copy of the folder elsewhere (another
    disk, another machine) is read and listed from where it is, not from the original."""
    original = _study(tmp_path / "a" / "runs", "moved")
    copy = tmp_path / "b" / "runs" / "moved"
    shutil.copytree(original, copy)
    shutil.rmtree(tmp_path / "a")  # the original is gone: nothing may read it
    manifest = identity.read_manifest(str(copy))
    assert manifest.path == str(copy) and manifest.storage == str(copy.parent)
    manifest.summary = {"note": "written to the copy"}
    identity.write_manifest(manifest)
    assert json.loads((copy / identity.MANIFEST).read_text())["summary"] == {"note": "written to the copy"}
    assert not (tmp_path / "a").exists()
    assert cli.main(["ls", "--storage", str(copy.parent)]) == 0
    assert "moved" in capsys.readouterr().out
