"""Exports are verified: export.json records each file's sha256, paths stay inside the folder, and
every loader (load_exported, load_weights, separate, the pyfunc) refuses a changed file by name.
Registering the same weights twice reuses the version; the card reads as tables from one source."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import pytest
import soundfile as sf
import torch

from samsnet_search.cli import main
from samsnet_search.config import ExperimentConfig
from samsnet_search.delivery import export, export_folder, registry
from samsnet_search.delivery.registry import load_separator
from samsnet_search.engine import checkpoint
from samsnet_search.engine.separate import read_audio
from samsnet_search.errors import SamsNetError
from samsnet_search.services import tracking


def _best_pt(folder: Path, root: Path, seed: int) -> Path:
    """A freshly initialised tiny model saved as a checkpoint's best.pt (no training needed)."""
    exp = ExperimentConfig.model_validate(
        {
            "model": {"n_fft": 256, "hop_length": 128, "channels": 3, "heads": 2, "depth": 1, "slices": 2},
            "data": {"root": str(root), "segment_seconds": 0.5},
        }
    )
    cfg = exp.resolved_model()
    torch.manual_seed(seed)
    net = checkpoint.build_model(cfg)
    path = folder / "checkpoint" / checkpoint.BEST
    checkpoint.save(
        path,
        {
            "experiment": exp.model_dump(mode="json"),
            "model_config": cfg.model_dump(mode="json"),
            "model": net.state_dict(),
            "epoch": 1,
            "metrics": {
                "valid_loss": 0.5,
                "valid_sdr": -0.004,
                **{f"valid_sdr_{t}": -0.004 for t in ("vocals", "drums", "bass", "other")},
            },
        },
    )
    return path.parent


@pytest.fixture(scope="module")
def exports(synth_root, tmp_path_factory) -> tuple[Path, Path]:
    """Two exports of different weights (seeds 1 and 2); each warning the first one raised is kept."""
    base = tmp_path_factory.mktemp("verify")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = export.export_checkpoint(_best_pt(base / "a", synth_root, 1), base / "export-a")
    second = export.export_checkpoint(_best_pt(base / "b", synth_root, 2), base / "export-b")
    first.joinpath(".warnings.json").write_text(json.dumps([f"{w.category.__name__}: {w.message}" for w in caught]))
    return first, second


@pytest.fixture
def copy(exports, tmp_path) -> Path:
    """A copy of the first export to tamper with."""
    folder = Path(shutil.copytree(exports[0], tmp_path / "copy"))
    (folder / ".warnings.json").unlink()
    return folder


@pytest.fixture(scope="module")
def song(synth_root, tmp_path_factory) -> Path:
    audio = read_audio(sorted((synth_root / "test").iterdir())[0] / "mixture.wav")[:, :22050]
    path = tmp_path_factory.mktemp("song") / "song.wav"
    sf.write(path, audio.T, 44100, subtype="FLOAT")
    return path


def _rewrite_manifest(folder: Path, key: str, **entry) -> None:
    manifest = json.loads((folder / export_folder.MANIFEST).read_text())
    manifest["files"][key].update(entry)
    (folder / export_folder.MANIFEST).write_text(json.dumps(manifest))


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error:"), err
    return " ".join(err.split())


def test_manifest_records_each_files_sha256(exports):
    folder = exports[0]
    files = export_folder.read_manifest(folder)["files"]
    assert set(files) == set(export_folder.FILES)
    for key, entry in files.items():
        assert entry["path"] == export_folder.FILES[key]
        assert entry["sha256"] == hashlib.sha256((folder / entry["path"]).read_bytes()).hexdigest(), key


@pytest.mark.parametrize("key", ["masks", "separate", "onnx", "weights", "model_config"])
def test_a_valid_but_different_file_is_refused_by_name(exports, copy, song, tmp_path, capsys, key):
    """The file is a real model file (of other weights), so only its checksum can tell."""
    name = export_folder.FILES[key]
    if key == "model_config":  # the same for both exports: a valid config of another model instead
        config = json.loads((copy / name).read_text())
        (copy / name).write_text(json.dumps({**config, "depth": 2}))
    else:
        shutil.copyfile(exports[1] / name, copy / name)
    with pytest.raises(
        export_folder.ExportError, match=rf"{name}: sha256 \w+\.\.\. differs from \w+\.\.\. recorded in export.json"
    ):
        export_folder.verify_export(copy)
    if key in ("masks", "separate"):
        with pytest.raises(export_folder.ExportError, match=rf"{name}: sha256"):
            export_folder.load_exported(copy)
    if key in ("weights", "model_config"):
        with pytest.raises(export_folder.ExportError, match=rf"{name}: sha256"):
            export_folder.load_weights(copy)
    assert main(["separate", str(copy), str(song), "--out", str(tmp_path / "o")]) == 2
    assert f"{copy / name}: sha256" in _one_line(capsys) and not (tmp_path / "o").exists()


def test_the_untampered_copy_loads(copy, song):
    assert isinstance(load_separator(copy), export_folder.ExportedModel)
    assert export_folder.load_weights(copy) is not None


@pytest.mark.parametrize("where", ["../x.pt2", "/ABS/x.pt2", "sub/../../x.pt2"])
def test_a_path_outside_the_folder_is_refused(copy, song, tmp_path, capsys, where):
    outside = tmp_path / "x.pt2"
    shutil.copyfile(copy / "masks.pt2", outside)  # same bytes: the checksum alone would pass
    _rewrite_manifest(copy, "masks", path=where.replace("/ABS", str(tmp_path)))
    with pytest.raises(export_folder.ExportError, match="files.masks: path .* is outside the export folder"):
        export_folder.load_exported(copy)
    assert main(["separate", str(copy), str(song), "--out", str(tmp_path / "o")]) == 2
    assert "is outside the export folder; refusing to load it" in _one_line(capsys)


def test_a_symlink_out_of_the_folder_is_refused(copy, tmp_path):
    outside = tmp_path / "x.pt2"
    shutil.move(copy / "separate.pt2", outside)
    (copy / "separate.pt2").symlink_to(outside)
    with pytest.raises(export_folder.ExportError, match="is outside the export folder"):
        export_folder.load_exported(copy)


def test_an_export_without_checksums_is_refused(copy):
    manifest = json.loads((copy / export_folder.MANIFEST).read_text())
    manifest.update(format="samsnet-export/1", files={k: v["path"] for k, v in manifest["files"].items()})
    (copy / export_folder.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(
        export_folder.ExportError, match="format samsnet-export/1 records no checksums.*export the model again"
    ):
        export_folder.load_exported(copy)
    (copy / export_folder.MANIFEST).write_text(
        json.dumps({**manifest, "format": export_folder.FORMAT, "files": {"masks": {}}})
    )
    with pytest.raises(export_folder.ExportError, match="files: expected an entry for each of masks, separate, onnx"):
        export_folder.read_manifest(copy)


def test_the_pyfunc_refuses_a_changed_program(exports, copy, song):
    """SamsNetSeparator (the registry's pyfunc, run by MLflow without samsnet_search) checks too."""
    import types

    namespace: dict = {}
    code = (copy / export_folder.PYFUNC_FILE).read_text().replace("set_model(SamsNetSeparator())", "")
    exec(compile(code, str(copy / export_folder.PYFUNC_FILE), "exec"), namespace)
    context = types.SimpleNamespace(artifacts={"export": str(copy)})
    model = namespace["SamsNetSeparator"]()
    model.load_context(context)  # intact: loads, and separates as the package's loader does
    audio = read_audio(song)[None]
    with torch.no_grad():
        want = export_folder.load_exported(copy).separate(torch.from_numpy(audio)).numpy()
    assert abs(model.predict(context, audio) - want).max() == 0
    shutil.copyfile(exports[1] / "separate.pt2", copy / "separate.pt2")
    with pytest.raises(ValueError, match=r"separate.pt2: sha256 \w+\.\.\. differs from"):
        model.load_context(context)
    _rewrite_manifest(copy, "separate", path="../x.pt2")
    with pytest.raises(ValueError, match="outside the export folder"):
        model.load_context(context)


def test_a_normal_export_raises_no_warnings(exports):
    """The ONNX exporter's torchvision notices and torch's own LeafSpec FutureWarning are silenced."""
    assert json.loads((exports[0] / ".warnings.json").read_text()) == []


def test_export_command_is_quiet_and_registering_warns_nothing(exports, tmp_path, capfd):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(exports[0].parent / "a", ckpt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert (
            main(
                [
                    "export",
                    str(ckpt / "checkpoint"),
                    "--out",
                    str(tmp_path / "o"),
                    "--register",
                    "quiet",
                    "--tracking-uri",
                    str(tmp_path / "mlruns"),
                ]
            )
            == 0
        )
    err = capfd.readouterr().err
    for noise in (
        "torchvision is not installed",
        "FutureWarning",
        "Add type hints",
        "UserWarning",
        "example was not provided",
    ):
        assert noise not in err, err
    # sqlalchemy's own deprecation inside MLflow's store is not the export's (and not shown to users)
    ours = [
        f"{w.category.__name__}: {w.message}"
        for w in caught
        if w.category is not DeprecationWarning and "sqlalchemy" not in str(w.filename)
    ]
    assert ours == []


# --- the registry (embedded store: same MLflow client code as a server) -------------------------


@pytest.fixture
def store(tmp_path):
    target = tracking.resolve_tracking(str(tmp_path / "mlruns"))
    experiment_id = tracking.ensure_experiment(target, "reg")
    return target, experiment_id


def test_the_experiment_is_marked_as_a_training_experiment(store):
    target, experiment_id = store
    c = tracking.client(target)
    assert c.get_experiment(experiment_id).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    old = c.create_experiment("made-before")  # e.g. by an older samsnet-search: no kind
    assert tracking.EXPERIMENT_KIND_TAG not in c.get_experiment(old).tags
    assert tracking.ensure_experiment(target, "made-before") == old
    assert c.get_experiment(old).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_same_weights_reuse_their_version_and_leave_the_alias(exports, store):
    target, _ = store
    a, b = exports
    first = registry.register_export(a, "reg", target.uri)
    again = registry.register_export(a, "reg", target.uri)
    assert (first.version, first.reused, again.version, again.reused) == ("1", False, "1", True)
    other = registry.register_export(b, "reg", target.uri)
    assert (other.version, other.reused, other.alias_version) == ("2", False, "2")
    back = registry.register_export(a, "reg", target.uri)  # the older winner exported once more
    assert (back.version, back.reused, back.alias_version) == ("1", True, "2")
    assert "alias champion stays on version 2" in back.describe()
    c = tracking.client(target)
    assert len(c.search_model_versions("name = 'samsnet-reg'")) == 2
    assert {k: str(v) for k, v in c.get_registered_model("samsnet-reg").aliases.items()} == {"champion": "2"}


def test_the_version_links_the_run_that_made_the_weights_and_has_a_signature(exports, store, tmp_path):
    import mlflow.artifacts
    import mlflow.models

    target, experiment_id = store
    c = tracking.client(target)
    trial = c.create_run(experiment_id, tags={tracking.ROLE_TAG: "trial"}).info.run_id
    version = registry.register(exports[0], "reg", target.uri, run_id=trial)
    mv = c.get_model_version("samsnet-reg", version)
    assert mv.run_id == trial and mv.source.startswith(c.get_run(trial).info.artifact_uri)
    assert mv.tags[registry.WEIGHTS_SHA_TAG] == export_folder.read_manifest(exports[0])["files"]["weights"]["sha256"]
    local = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(tmp_path), tracking_uri=target.uri)
    signature = mlflow.models.get_model_info(local).signature
    assert signature.inputs.to_dict() == [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, 2, -1)}}]
    assert signature.outputs.to_dict() == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, 4, 2, -1)}}
    ]


def test_registering_from_the_study_parent_run_is_refused(exports, store):
    target, experiment_id = store
    parent = tracking.start_parent_run(target, experiment_id, "reg")
    with pytest.raises(
        SamsNetError, match="is the study's parent run; register from the run that produced the weights"
    ):
        registry.register(exports[0], "reg", target.uri, run_id=parent)


# --- the model card ---------------------------------------------------------------------------


def test_card_numbers_come_from_the_selection_and_read_as_tables(exports):
    """As `export NAME` writes it after a selection: the summary holds the test scores (a dict), the
    selection table (a list) and the registry entry of the selection's own export."""
    net, state = checkpoint.load_model(exports[0].parent / "a" / "checkpoint")
    selection = [
        {
            "slices": 2,
            "vocals": 0.91,
            "drums": 0.95,
            "bass": 0.9,
            "other": 0.96,
            "avg": 0.93,
            "avg_low": 0.8,
            "avg_high": 1.1,
            "pairs": 6,
            "vs_winner": "winner",
        }
    ]
    test = {"vocals": 1.25, "drums": 1.5, "bass": 0.75, "other": 1.0, "avg": 1.125}
    summary = {
        "trials": 4,
        "counts": {"completed": 3, "pruned": 1},
        "best_valid_loss": 0.0123456,
        "best_run": "abc",
        "best_config": {"model.slices": 2},
        "selection": selection,
        "test": test,
        "chosen_slices": 2,
        "registered": {"name": "samsnet-s", "version": "1", "alias": "champion"},
    }
    card = export.model_card(
        net,
        state,
        {"source": "study s", "study_summary": summary, "selection_table": selection, "test_sdr": test},
        {"masks": 0.0, "separate": 1e-7, "onnx": 2e-7},
    )
    assert "validation (checkpoint)" not in card and "-0.00" not in card  # the excerpt score would contradict
    assert "| 2 | 0.91 | 0.95 | 0.90 | 0.96 | 0.93 |" in card
    assert "| test | 1.25 | 1.50 | 0.75 | 1.00 | 1.12 |" in card
    assert "| trials | 4 |" in card and "| best_valid_loss | 0.012346 |" in card and "| chosen_slices | 2 |" in card
    assert "| counts.completed | 3 |" in card and "| best_config.model.slices | 2 |" in card
    assert "{" not in card and "registered" not in card and "version '1'" not in card
    assert "Wiener" not in card  # this study scored plain masks only


def test_card_shows_the_wiener_test_score_beside_the_plain_one(exports):
    """A study with `selection.wiener` scored its winner twice on the test set: the card has both rows."""
    net, state = checkpoint.load_model(exports[0].parent / "a" / "checkpoint")
    test = {"vocals": 1.25, "drums": 1.5, "bass": 0.75, "other": 1.0, "avg": 1.125}
    wiener = {"post_filter": "Wiener filter (1 EM iteration)", "summary": {**{t: 2.0 for t in test}, "avg": 2.5}}
    card = export.model_card(
        net,
        state,
        {"source": "study s", "test_sdr": test, "test_wiener": wiener, "selection_table": [{"slices": 2, "avg": 0.9}]},
        {"masks": 0.0},
    )
    assert "| test | 1.25 | 1.50 | 0.75 | 1.00 | 1.12 |" in card
    assert "| test, Wiener filter (1 EM iteration) | 2.00 | 2.00 | 2.00 | 2.00 | 2.50 |" in card


def test_card_of_a_plain_checkpoint_keeps_its_own_validation_row(exports):
    card = (exports[0] / "MODEL_CARD.md").read_text()
    assert "| validation (checkpoint) | -0.00 |" in card and "Search summary" not in card


def test_export_of_a_study_takes_the_wiener_score_the_selection_kept():
    """`export NAME` reads the filtered score from the selection record (study.json keeps the plain one only)."""
    filtered = {"post_filter": "Wiener filter (2 EM iterations)", "summary": {"avg": 3.0}, "tracks": {"a": {}}}
    assert export._wiener_of({"summary": {"avg": 2.0}, "wiener": filtered}) == {
        "post_filter": "Wiener filter (2 EM iterations)",
        "summary": {"avg": 3.0},
    }
    assert export._wiener_of({"summary": {"avg": 2.0}}) is None
