"""Export through a real MLflow server (artifacts in SeaweedFS S3): register with alias `champion`,
separate from `models:/samsnet-NAME@champion`, export a study's best run and a run id; a registered
model whose stored files were replaced is refused; the same weights keep one version."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from samsnet_search.cli import main
from samsnet_search.config import TARGETS, ExperimentConfig
from samsnet_search.delivery import export, export_folder, registry
from samsnet_search.engine import checkpoint
from samsnet_search.engine.separate import read_audio
from samsnet_search.search import identity
from samsnet_search.services import tracking

pytestmark = [pytest.mark.servers, pytest.mark.slow]


@pytest.fixture(scope="module")
def best_pt(synth_root, tmp_path_factory) -> Path:
    """A freshly initialised tiny model (fixed seed) saved as a checkpoint's best.pt."""
    exp = ExperimentConfig.model_validate(
        {
            "model": {"n_fft": 256, "hop_length": 128, "channels": 3, "heads": 2, "depth": 1, "slices": 2},
            "data": {"root": str(synth_root), "segment_seconds": 0.5},
        }
    )
    cfg = exp.resolved_model()
    torch.manual_seed(11)
    net = checkpoint.build_model(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint" / checkpoint.BEST
    checkpoint.save(
        path,
        {
            "experiment": exp.model_dump(mode="json"),
            "model_config": cfg.model_dump(mode="json"),
            "model": net.state_dict(),
            "epoch": 1,
            "metrics": {"valid_loss": 0.5},
        },
    )
    return path


@pytest.fixture(scope="module")
def exported(best_pt, tmp_path_factory) -> Path:
    return export.export_checkpoint(best_pt.parent, tmp_path_factory.mktemp("export") / "model")


@pytest.fixture(scope="module")
def song(synth_root, tmp_path_factory) -> Path:
    audio = read_audio(sorted((synth_root / "test").iterdir())[0] / "mixture.wav")[:, : 44100 + 333]
    path = tmp_path_factory.mktemp("song") / "song.wav"
    sf.write(path, audio.T, 44100, subtype="FLOAT")
    return path


def _stems(folder: Path) -> np.ndarray:
    return np.stack([sf.read(folder / f"{t}.wav", dtype="float32")[0] for t in TARGETS])


def test_register_then_separate_from_the_champion_alias(mlflow_server, exported, song, tmp_path, capsys):
    name = f"x{uuid.uuid4().hex[:8]}"
    first = registry.register(exported, name, mlflow_server)
    second = registry.register(exported, name, mlflow_server)
    assert (first, second) == ("1", "1")  # the same weights: one version
    c = tracking.client(tracking.resolve_tracking(mlflow_server))
    assert len(c.search_model_versions(f"name = 'samsnet-{name}'")) == 1
    assert {k: str(v) for k, v in c.get_registered_model(f"samsnet-{name}").aliases.items()} == {"champion": "1"}

    uri = f"models:/samsnet-{name}@champion"
    assert main(["separate", uri, str(song), "--out", str(tmp_path / "reg"), "--tracking-uri", mlflow_server]) == 0
    assert main(["separate", str(exported), str(song), "--out", str(tmp_path / "dir")]) == 0
    got, want = _stems(tmp_path / "reg"), _stems(tmp_path / "dir")
    assert got.shape == (4, sf.info(song).frames, 2)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_registered_pyfunc_predicts_stems(mlflow_server, exported, song, monkeypatch):
    import mlflow.pyfunc

    name = f"p{uuid.uuid4().hex[:8]}"
    registry.register(exported, name, mlflow_server)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # where pyfunc resolves models:/ URIs
    model = mlflow.pyfunc.load_model(f"models:/samsnet-{name}@champion")
    audio = read_audio(song)[None]  # (B, C, N), as the signature says
    stems = model.predict(audio)
    ref = export_folder.load_exported(exported).separate(torch.from_numpy(audio)).detach().numpy()
    assert stems.shape == (1, 4, *audio.shape[1:])
    assert model.metadata.get_input_schema().inputs[0].shape == (-1, 2, -1)
    np.testing.assert_allclose(stems, ref, atol=1e-6)


def test_unknown_alias_and_model_are_one_line_errors(mlflow_server, exported, song, tmp_path, capsys):
    name = f"a{uuid.uuid4().hex[:8]}"
    registry.register(exported, name, mlflow_server)
    args = [str(song), "--out", str(tmp_path / "o"), "--tracking-uri", mlflow_server]
    assert main(["separate", f"models:/samsnet-{name}@nope", *args]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"registered model 'samsnet-{name}' has no alias 'nope' (aliases: champion)" in err
    assert main(["separate", "models:/samsnet-never-registered@champion", *args]) == 2
    assert "no registered model 'samsnet-never-registered'" in " ".join(capsys.readouterr().err.split())


def _fake_study(mlflow_server: str, best_pt: Path, storage: Path) -> tuple[str, str]:
    """A finished study as the runner leaves it: study.json and study.yaml, the trial's folder (Tune's
    result.json, its kept checkpoint with best.pt), a parent run, a trial run with its published model/best.pt."""
    name = f"s{uuid.uuid4().hex[:8]}"
    study_path = identity.study_uri(str(storage), name)
    identity.write_study_copy(study_path, f"name: {name}\nmodel: {{slices: {{choice: [1, 2]}}}}\n")
    trial = Path(study_path) / "trial_t1"
    (trial / "checkpoint_000000").mkdir(parents=True)
    for f in best_pt.parent.iterdir():  # best.pt and its checksum
        (trial / "checkpoint_000000" / f.name).write_bytes(f.read_bytes())
    rows = [
        {"valid_loss": 0.5, "checkpoint_dir_name": "checkpoint_000000"},
        {"valid_loss": 0.7, "checkpoint_dir_name": "checkpoint_000001"},
    ]  # a worse epoch: Tune did not keep it
    (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    target = tracking.resolve_tracking(mlflow_server)
    c = tracking.client(target)
    experiment_id = tracking.ensure_experiment(target, name)
    parent = tracking.start_parent_run(target, experiment_id, name)
    child = c.create_run(experiment_id, tags={tracking.PARENT_TAG: parent, tracking.ROLE_TAG: "trial"}).info.run_id
    c.log_artifact(child, str(best_pt), "model")
    identity.write_manifest(
        identity.Manifest(
            name=name,
            storage=str(storage),
            experiment_name=name,
            experiment_id=experiment_id,
            parent_run_id=parent,
            registered_model=tracking.registered_model_name(name),
            tracking_uri=target.uri,
            artifact_root=None,
            base_dir=str(storage),
            source="study.yaml",
            state="finished",
            summary={"trials": 1, "best_trial": "t1", "best_run": child, "best_valid_loss": 0.5},
        )
    )
    return name, child


def test_export_a_study_registers_its_best_run(mlflow_server, best_pt, song, tmp_path, capsys):
    name, child = _fake_study(mlflow_server, best_pt, tmp_path / "runs")
    assert main(["export", name, "--out", str(tmp_path / "best"), "--storage", str(tmp_path / "runs")]) == 0
    assert f"registered samsnet-{name} version 1 with alias champion" in capsys.readouterr().out
    card = (tmp_path / "best" / "MODEL_CARD.md").read_text()
    assert f"study {name}, MLflow run {child}" in card and "| best_valid_loss | 0.5 |" in card
    c = tracking.client(tracking.resolve_tracking(mlflow_server))
    version = c.get_model_version(f"samsnet-{name}", "1")
    # The source is the run that produced the weights, not the study's parent run.
    assert version.run_id == child and version.source.startswith(c.get_run(child).info.artifact_uri)
    # Exporting the same winner again reuses that version and leaves the alias where it is.
    assert main(["export", name, "--out", str(tmp_path / "again"), "--storage", str(tmp_path / "runs")]) == 0
    assert f"samsnet-{name} version 1 already holds these weights" in capsys.readouterr().out
    assert [v.version for v in c.search_model_versions(f"name = 'samsnet-{name}'")] == ["1"]
    assert (
        main(
            [
                "separate",
                f"models:/samsnet-{name}@champion",
                str(song),
                "--out",
                str(tmp_path / "o"),
                "--tracking-uri",
                mlflow_server,
            ]
        )
        == 0
    )
    assert all((tmp_path / "o" / f"{t}.wav").is_file() for t in TARGETS)


def test_export_a_run_id(mlflow_server, best_pt, tmp_path, capsys):
    _, child = _fake_study(mlflow_server, best_pt, tmp_path / "runs")
    assert (
        main(
            [
                "export",
                child,
                "--out",
                str(tmp_path / "run"),
                "--tracking-uri",
                mlflow_server,
                "--storage",
                str(tmp_path / "runs"),
            ]
        )
        == 0
    )
    weights = torch.load(tmp_path / "run" / "weights.pt", weights_only=True)
    want = checkpoint.load(best_pt)["model"]
    assert all(torch.equal(weights[k], want[k]) for k in want)
    assert f"MLflow run {child}" in export_folder.read_manifest(tmp_path / "run")["source"]


def _stored_export_dir(c, version) -> str:
    """The artifact path (in the version's run) of the export folder inside the pyfunc model."""
    base = version.source.split("/artifacts/", 1)[1]  # e.g. registered_model
    for entry in c.list_artifacts(version.run_id, f"{base}/artifacts"):
        if entry.is_dir and any(f.path.endswith("/export.json") for f in c.list_artifacts(version.run_id, entry.path)):
            return entry.path
    raise AssertionError(f"no export folder under {version.source}")


def _other_valid_program(exported: Path, dest: Path) -> Path:
    """separate.pt2 with one weight changed: still a loadable torch.export program, other bytes."""
    program = torch.export.load(str(exported / "separate.pt2"))
    with torch.no_grad():
        next(iter(program.state_dict.values())).add_(0.5)
    dest.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(dest / "separate.pt2"))
    return dest / "separate.pt2"


def test_a_registered_model_whose_artifact_was_replaced_is_refused(
    mlflow_server, exported, song, tmp_path, capsys, monkeypatch
):
    """What someone with write access to the artifact store could do: replace separate.pt2 of a
    registered version (alone, or with an export.json that matches it)."""
    import mlflow.pyfunc

    name = f"t{uuid.uuid4().hex[:8]}"
    c = tracking.client(tracking.resolve_tracking(mlflow_server))
    version = c.get_model_version(f"samsnet-{name}", registry.register(exported, name, mlflow_server))
    stored = _stored_export_dir(c, version)
    c.log_artifact(version.run_id, str(_other_valid_program(exported, tmp_path / "evil")), stored)
    uri = f"models:/samsnet-{name}@champion"
    args = [str(song), "--out", str(tmp_path / "o"), "--tracking-uri", mlflow_server]
    assert main(["separate", uri, *args]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "separate.pt2: sha256" in err and "changed after export; refusing to load it" in err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    with pytest.raises(Exception, match=r"separate.pt2: sha256 \w+\.\.\. differs from"):
        mlflow.pyfunc.load_model(uri)

    # The whole export rewritten to match the new separate.pt2: the registry's own checksum tells.
    manifest = export_folder.read_manifest(exported)
    manifest["files"]["separate"]["sha256"] = export_folder.sha256_file(tmp_path / "evil" / "separate.pt2")
    (tmp_path / "evil" / "export.json").write_text(json.dumps(manifest))
    c.log_artifact(version.run_id, str(tmp_path / "evil" / "export.json"), stored)
    assert main(["separate", uri, *args]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "export.json of version 1 in the artifact store differs from the checksum recorded in the registry" in err
    assert not (tmp_path / "o").exists()
