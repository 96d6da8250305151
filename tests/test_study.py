"""Study files: parsing, the resolved space, and every kind of validation error.

Each bad file must fail before anything starts, with a message that names the file and
the key path, and `samsnet-search validate` must exit with code 2 and no traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from samsnet_search.cli import main
from samsnet_search.errors import ConfigError
from samsnet_search.search.study import Choice, IntRange, LogUniform, Uniform, load_study

REPO = Path(__file__).resolve().parents[1]


def good(data_root: Path) -> dict:
    return {
        "model": {
            "n_fft": 512,
            "hop_length": 128,
            "slices": {"choice": [1, 2, 4, 8]},
            "channels": {"int": [4, 8]},
            "heads": {"choice": [1, 2]},
            "depth": 1,
        },
        "data": {"root": str(data_root), "segment_seconds": {"uniform": [1.0, 1.5]}},
        "train": {"lr": {"loguniform": [1e-4, 1e-2]}, "epochs": 4, "patience": 4, "batch_size": 2},
        "search": {"num_samples": 4, "grace_period": 1, "reduction_factor": 2},
        "storage": "runs",
        "tracking": {"uri": "mlruns"},
    }


def write(tmp_path: Path, data: dict, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def data_root(synth_root: Path) -> Path:
    """A dataset whose splits serve a study (validation checks train, valid and test tracks)."""
    return synth_root


def test_good_study_resolves(tmp_path, data_root):
    study = load_study(write(tmp_path, good(data_root), "my-study.yaml"), base_dir=tmp_path)
    assert study.name == "my-study"  # default: the file stem
    assert study.space == {
        "model.slices": Choice(choice=[1, 2, 4, 8]),
        "model.channels": IntRange(int=(4, 8)),
        "model.heads": Choice(choice=[1, 2]),
        "data.segment_seconds": Uniform(uniform=(1.0, 1.5)),
        "train.lr": LogUniform(loguniform=(1e-4, 1e-2)),
    }
    assert study.base["model"] == {"n_fft": 512, "hop_length": 128, "depth": 1}
    assert study.max_t == 4  # default: train.epochs
    assert study.metric == "valid_loss" and study.mode == "min"
    assert study.storage == str(tmp_path / "runs")  # relative paths resolve against base_dir
    exp = study.experiment(
        {"model.slices": 8, "model.channels": 6, "model.heads": 2, "data.segment_seconds": 1.2, "train.lr": 1e-3}
    )
    assert (exp.model.slices, exp.model.channels, exp.data.segment_seconds, exp.train.lr) == (8, 6, 1.2, 1e-3)
    assert exp.model.n_fft == 512 and exp.train.epochs == 4


def tiny_dataset(root: Path, make_hq_track) -> Path:
    """Smallest dataset a study can use: one training, one validation and one test track."""
    for subset, name in (("train", "t"), ("train", "v"), ("test", "x")):
        make_hq_track(root / subset / name, seconds=0.1)
    (root / "samsnet-synth.json").write_text('{"valid_tracks": ["v"]}')
    return root


def test_name_and_relative_data_root(tmp_path, make_hq_track):
    tiny_dataset(tmp_path / "d", make_hq_track)
    data = good(Path("d")) | {"name": "explicit"}
    study = load_study(write(tmp_path, data), base_dir=tmp_path)
    assert study.name == "explicit"
    assert study.base["data"]["root"] == str(tmp_path / "d")  # absolute: Ray workers run elsewhere


def test_nested_distribution_in_subsection(tmp_path, data_root):
    data = good(data_root)
    data["data"]["augment"] = {"gain_min": {"uniform": [0.2, 0.5]}, "remix": False}
    study = load_study(write(tmp_path, data), base_dir=tmp_path)
    assert "data.augment.gain_min" in study.space
    assert study.base["data"]["augment"] == {"remix": False}


def test_w_o_scope_is_a_model_key_a_study_can_search(tmp_path, data_root):
    """W^O inside each slice (paper eqs. 6, 8) or over the joined slices, as a choice."""
    data = good(data_root)
    data["model"]["w_o_scope"] = {"choice": ["joined", "slice"]}
    study = load_study(write(tmp_path, data), base_dir=tmp_path)
    assert study.space["model.w_o_scope"] == Choice(choice=["joined", "slice"])


def _mutate(data: dict, path: str, value) -> dict:
    node = data
    *parents, leaf = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    if value is _DELETE:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return data


_DELETE = object()

# (key to set, value, text the message must contain besides the file name)
BAD = [
    ("colour", "red", "colour: unknown key (valid: name, description, model, data"),
    ("serach", {"num_samples": 2}, "serach: unknown key (did you mean 'search'?)"),
    ("model.slicez", {"choice": [1, 2]}, "model.slicez: unknown key (did you mean 'slices'?)"),
    ("model.slices", {"choice": [1, 2], "stepp": 1}, "model.slices.stepp: unknown key"),
    ("model.channels", {"int": [4, 8], "stpe": 2}, "model.channels.stpe: unknown key (did you mean 'step'?)"),
    (
        "model.slices",
        {"choise": [1, 2]},
        "model.slices: {choise} is neither a value nor a distribution (did you mean 'choice'?)",
    ),
    ("data.augment.gain_mni", 0.5, "data.augment.gain_mni: unknown key (did you mean 'gain_min'?)"),
    ("search.num_sample", 4, "search.num_sample: unknown key (did you mean 'num_samples'?)"),
    ("train.learning_rate", 1e-3, "train.learning_rate: unknown key"),
    ("model.slices", {"choice": [1], "int": [1, 2]}, "model.slices: a distribution has exactly one of"),
    ("model.channels", "many", "model.channels: Input should be a valid integer"),
    ("model.channels", {"int": ["a", 8]}, "model.channels.int.0"),
    ("model.heads", {"choice": []}, "model.heads.choice: List should have at least 1 item"),
    ("model.heads", {"choice": [1, 1]}, "model.heads: choice values must be distinct"),
    ("model.channels", 0, "model.channels: Input should be greater than 0"),
    ("model.w_o_scope", "heads", "model.w_o_scope: Input should be 'joined' or 'slice'"),
    ("model.w_o_scope", {"choice": ["joined", "slices"]}, "model.w_o_scope: Input should be 'joined' or 'slice'"),
    ("model.channels", {"int": [0, 8]}, "value 0 of model.channels"),
    ("model.channels", {"int": [8, 4]}, "model.channels: int range [8, 4]: low must not exceed high"),
    ("model.channels", {"int": [4, 9], "step": 2}, "high - low must be a multiple of step"),
    ("model.channels", {"int": [4, 8], "log": True, "step": 2}, "log: true cannot be combined with step"),
    ("train.lr", {"loguniform": [0, 1e-3]}, "train.lr: loguniform range"),
    ("train.lr", {"uniform": [1e-3, 1e-3]}, "train.lr: uniform range"),
    ("train.batch_size", {"choice": [2, -1]}, "value -1 of train.batch_size"),
    ("model.slices", {"choice": [1, 2, 400]}, "model.slices: [400] can be larger than the 345 STFT frames"),
    ("model.slices", 500, "model.slices: [500] can be larger than the 345 STFT frames"),
    # odd n_fft inside an integer range: every value is checked, not only the ends
    ("model.n_fft", {"int": [510, 512]}, "n_fft must be even"),
    # hop may exceed n_fft only in a corner combination of the two ranges
    ("model.hop_length", {"choice": [128, 1024]}, "hop_length (1024) must not exceed n_fft (512)"),
    ("data.root", str(Path("/nonexistent/musdb")), "data.root: /nonexistent/musdb is not a folder"),
    ("data.root", _DELETE, "data.root is not set and MUSDB_PATH is empty"),
    ("search.metric", "sdr", "search.metric: not a quality metric; valid: valid_loss or valid_sdr (got 'sdr')"),
    ("search.mode", "max", "search: mode: valid_loss is compared with mode min"),
    ("search.metric", "valid_sdr", "train.valid_sdr_every: search.metric valid_sdr is compared every epoch"),
    ("search.max_t", 2, "search.max_t: 2 is below the patience horizon 4"),
    ("search.grace_period", 9, "search.grace_period: 9 exceeds max_t=4"),
    ("search.num_samples", 0, "search.num_samples: Input should be greater than 0"),
    ("search.reduction_factor", 1, "search.reduction_factor: Input should be greater than 1"),
    ("resources.gpu", 1.5, "resources: gpu: fractions are only possible below 1"),
    ("resources.gpu", 2, "resources: gpu: a trial trains on one GPU; use gpu: 1"),
    ("resources.gpu_memory_gb", 0, "resources.gpu_memory_gb: Input should be greater than 0"),
    ("resources.cpu", 0, "resources.cpu: Input should be greater than 0"),
    ("selection.seeds", 2, "selection.seeds: Input should be greater than or equal to 3"),
    ("selection.wiener_start", "phase", "selection.wiener_start: Input should be 'softmask' or 'magnitudes'"),
    ("tracking.uri", "http://user:pw@localhost:5000", "tracking: uri: credentials in the URI"),
    ("storage", "gs://bucket/x", "storage: scheme 'gs' is not supported"),
    ("name", "has space", "name: 'has space' is not a valid study name"),
    ("train.device", "cuda", "train.device: cuda needs resources.gpu > 0"),
]


@pytest.mark.parametrize("key,value,expected", BAD, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(BAD)])
def test_bad_study_names_file_and_key(tmp_path, data_root, monkeypatch, capsys, key, value, expected):
    monkeypatch.delenv("MUSDB_PATH", raising=False)
    path = write(tmp_path, _mutate(good(data_root), key, value))
    with pytest.raises(ConfigError) as err:
        load_study(path, base_dir=tmp_path)
    message = str(err.value)
    assert str(path) in message
    assert expected in message, message
    # the CLI: one clear message, exit code 2, no traceback
    monkeypatch.chdir(tmp_path)
    assert main(["validate", str(path)]) == 2
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    assert expected.split(":")[0] in out.err


def test_slices_checked_against_shortest_segment(tmp_path, data_root):
    """slices=64 fits a 1.5 s segment (517 frames at hop 128) but must be refused because
    the searched segment length can be 0.1 s (35 frames)."""
    data = good(data_root)
    data["model"]["slices"] = {"choice": [1, 64]}
    data["data"]["segment_seconds"] = {"uniform": [0.1, 1.5]}
    with pytest.raises(
        ConfigError,
        match=r"model.slices: \[64\] can be larger than the 35 STFT frames .*"
        r"segment_seconds=0.1 at model.hop_length=128",
    ):
        load_study(write(tmp_path, data), base_dir=tmp_path)


def test_nothing_searched_is_an_error(tmp_path, data_root):
    data = {"data": {"root": str(data_root)}, "train": {"epochs": 2, "patience": 2}}
    with pytest.raises(ConfigError, match="nothing is searched"):
        load_study(write(tmp_path, data), base_dir=tmp_path)


def test_not_a_mapping_and_bad_yaml(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml: <top level>: expected a mapping"):
        load_study(path)
    path.write_text("model: {slices: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_study(path)
    with pytest.raises(ConfigError, match="no such file"):
        load_study(tmp_path / "missing.yaml")


def test_validate_prints_resolved_space(tmp_path, data_root, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, good(data_root), "tiny.yaml")
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "study tiny" in out and "valid" in out
    assert "model.slices" in out and "choice [1, 2, 4, 8]" in out
    assert "model.channels" in out and "int [4, 8]" in out
    assert "train.lr" in out and "loguniform [0.0001, 0.01]" in out
    assert "model.n_fft" in out and "512" in out  # fixed values are listed too


@pytest.mark.parametrize("name", ["quickstart", "paper", "wide", "quality-vs-cost"])
def test_shipped_study_files_validate(name, tmp_path, monkeypatch):
    """The shipped files are valid apart from the data folder, which a user provides."""
    monkeypatch.setenv("MUSDB_PATH", str(tmp_path))
    study = load_study(REPO / "search_spaces" / f"{name}.yaml", base_dir=tmp_path, check_data=False)
    assert {"model.slices"} <= set(study.space)
    assert study.name == name


# --- the data must serve the study ------------------------------------------------------------


@pytest.fixture
def one_track_root(tmp_path: Path, make_hq_track) -> Path:
    """A MUSDB18-HQ layout with a single track: no official validation track is in it."""
    root = tmp_path / "one"
    make_hq_track(root / "train" / "Only Track")
    make_hq_track(root / "test" / "Test Track")
    return root


def test_validate_rejects_data_whose_splits_cannot_serve_the_study(tmp_path, one_track_root, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = good(one_track_root)
    del data["data"]["root"]
    monkeypatch.setenv("MUSDB_PATH", str(one_track_root))
    path = write(tmp_path, data, "paper.yaml")
    assert main(["validate", str(path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"paper.yaml: data.root: {one_track_root} cannot serve the study" in err
    assert "validation track" in err and "is not in" in err and "1 tracks there: 'Only Track'" in err


def test_run_that_fails_validation_leaves_no_study_folder(tmp_path, one_track_root, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MUSDB_PATH", str(one_track_root))
    data = good(one_track_root)
    del data["data"]["root"]
    path = write(tmp_path, data, "paper.yaml")
    assert main(["run", str(path), "--no-live"]) == 2
    assert "cannot serve the study" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlruns").exists()


def test_data_without_test_tracks_is_refused(tmp_path, make_hq_track, synth_root):
    root = tmp_path / "notest"
    for track in sorted((synth_root / "train").iterdir()):
        if track.is_dir():
            make_hq_track(root / "train" / track.name)
    (root / "test").mkdir()
    (root / "samsnet-synth.json").write_text((synth_root / "samsnet-synth.json").read_text())
    with pytest.raises(ConfigError, match=r"cannot serve the study: .*test: no tracks found"):
        load_study(write(tmp_path, good(root)), base_dir=tmp_path)
