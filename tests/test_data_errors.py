"""Every bad-data case gives a DataError whose message names the file and the problem."""

from __future__ import annotations

import re

import numpy as np
import pytest
import soundfile as sf

from samsnet_search.config import DataConfig
from samsnet_search.data.splits import load_splits
from samsnet_search.errors import ConfigError, DataError

N = 22050  # 0.5 s


@pytest.fixture
def good_root(tmp_path, make_hq_track):
    """A valid tiny HQ dataset: train/a (training), train/v (validation), test/t."""
    root = tmp_path / "ds"
    for rel in ("train/a", "train/v", "test/t"):
        make_hq_track(root / rel)
    return root


def load(root, **kw):
    splits = load_splits(DataConfig(root=root, valid_tracks=kw.pop("valid_tracks", ["v"]), **kw))
    for track in splits.all_tracks():
        track.audio()
    return splits


def rewrite(path, audio_nc: np.ndarray, rate: int = 44100) -> None:
    sf.write(path, audio_nc, rate, subtype="FLOAT")


def test_good_root_loads(good_root):
    splits = load(good_root)
    assert [t.name for t in splits.train] == ["a"] and [t.name for t in splits.valid] == ["v"]


def _missing_stem(root):
    (root / "train/a/drums.wav").unlink()
    return "train/a/drums.wav", "missing stem"


def _wrong_rate(root):
    data, _ = sf.read(root / "test/t/bass.wav", always_2d=True)
    rewrite(root / "test/t/bass.wav", data, rate=22050)
    return "test/t/bass.wav", "sample rate 22050 Hz, expected 44100 Hz"


def _channel_mismatch(root):
    data, _ = sf.read(root / "train/v/vocals.wav", always_2d=True)
    rewrite(root / "train/v/vocals.wav", data[:, :1])
    return "train/v/vocals.wav", "1 channel\\(s\\) but .*mixture.wav has 2"


def _mono_track(root):
    for stem in ("mixture", "vocals", "drums", "bass", "other"):
        data, _ = sf.read(root / f"train/a/{stem}.wav", always_2d=True)
        rewrite(root / f"train/a/{stem}.wav", data[:, :1])
    return "train/a/mixture.wav", "mono \\(1 channel\\), but 2 channels \\(stereo\\) are expected"


def _unequal_lengths(root):
    data, _ = sf.read(root / "train/a/other.wav", always_2d=True)
    rewrite(root / "train/a/other.wav", data[:-10])
    return "train/a/other.wav", f"{N - 10} samples but .*mixture.wav has {N}"


def _unreadable(root):
    (root / "test/t/vocals.wav").write_bytes(b"RIFF\x00\x00garbage")
    return "test/t/vocals.wav", "unreadable audio file"


def _empty(root):
    for stem in ("mixture", "vocals", "drums", "bass", "other"):
        rewrite(root / f"train/v/{stem}.wav", np.zeros((0, 2), np.float32))
    return "train/v/mixture.wav", "empty audio"


def _nan(root):
    data, _ = sf.read(root / "train/a/bass.wav", dtype="float32", always_2d=True)
    data[1000, 1] = np.nan
    rewrite(root / "train/a/bass.wav", data)
    return "train/a/bass.wav", "NaN or infinite samples \\(first at sample 1000"


def _inf(root):
    data, _ = sf.read(root / "test/t/other.wav", dtype="float32", always_2d=True)
    data[5, 0] = np.inf
    rewrite(root / "test/t/other.wav", data)
    return "test/t/other.wav", "NaN or infinite samples \\(first at sample 5"


def _no_train_tracks(root):
    for track in ("a", "v"):
        for f in (root / "train" / track).iterdir():
            f.unlink()
        (root / "train" / track).rmdir()
    return "train", "no tracks found"


def _no_test_folder(root):
    for f in (root / "test/t").iterdir():
        f.unlink()
    (root / "test/t").rmdir()
    (root / "test").rmdir()
    return "test", "no such folder"


def _empty_test_folder(root):
    for f in (root / "test/t").iterdir():
        f.unlink()
    (root / "test/t").rmdir()
    return "test", "no tracks found"


@pytest.mark.parametrize(
    "corrupt",
    [
        _missing_stem,
        _wrong_rate,
        _channel_mismatch,
        _mono_track,
        _unequal_lengths,
        _unreadable,
        _empty,
        _nan,
        _inf,
        _no_train_tracks,
        _no_test_folder,
        _empty_test_folder,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_bad_data_names_file_and_problem(good_root, corrupt):
    rel, problem = corrupt(good_root)
    with pytest.raises(DataError) as info:
        load(good_root)
    message = str(info.value)
    assert message.startswith(str(good_root / rel)), message
    assert re.search(problem, message), message


def test_unknown_validation_track(good_root):
    with pytest.raises(DataError, match="data.valid_tracks: validation track 'nope' is not in .*/train .*'a', 'v'"):
        load(good_root, valid_tracks=["v", "nope"])


def test_no_validation_or_no_training_tracks(good_root):
    with pytest.raises(DataError, match="no validation tracks"):
        load(good_root, valid_tracks=[])
    with pytest.raises(DataError, match="no training tracks left"):
        load(good_root, valid_tracks=["a", "v"])


def test_bad_synth_manifest(good_root):
    (good_root / "samsnet-synth.json").write_text('{"valid_tracks": "v"}')
    with pytest.raises(DataError, match="samsnet-synth.json: valid_tracks must be a list"):
        load_splits(DataConfig(root=good_root))
    (good_root / "samsnet-synth.json").write_text("{not json")
    with pytest.raises(DataError, match="samsnet-synth.json: unreadable"):
        load_splits(DataConfig(root=good_root))


def test_mixed_layout_needs_explicit_format(good_root):
    (good_root / "train" / "x.stem.mp4").write_bytes(b"")
    with pytest.raises(DataError, match="both .stem.mp4 files and track folders; set data.format"):
        load_splits(DataConfig(root=good_root, valid_tracks=["v"]))
    assert load_splits(DataConfig(root=good_root, valid_tracks=["v"], format="hq")).valid[0].name == "v"


def test_missing_root_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="is not a folder"):
        load_splits(DataConfig(root=tmp_path / "nowhere"))
