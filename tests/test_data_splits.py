"""Loading datasets through `load_splits`: splits, kinds, fingerprints, the decoded-audio cache,
and MUSDB18 .stem.mp4 decoding (stempeg's shipped excerpt)."""

from __future__ import annotations

import os
import shutil
import threading

import numpy as np
import pytest
import soundfile as sf

from samsnet_search.config import DataConfig
from samsnet_search.data import readers
from samsnet_search.data.cache import AudioCache
from samsnet_search.data.splits import KIND_HQ, KIND_STEMS, KIND_SYNTH, load_splits, prepare
from samsnet_search.errors import DataError

FALCON = "The Easton Ellises - Falcon 69"


@pytest.fixture
def synth_copy(synth_root, tmp_path):
    """A private copy of the session dataset (without its cache) for tests that change files."""
    root = tmp_path / "data"
    shutil.copytree(synth_root, root, ignore=shutil.ignore_patterns(".samsnet-cache"))
    return root


def names(tracks):
    return [t.name for t in tracks]


def test_synthetic_splits(synth_root, tmp_path):
    splits = load_splits(DataConfig(root=synth_root, cache_dir=tmp_path / "cache"))
    assert splits.kind == KIND_SYNTH
    assert splits.root == synth_root
    assert names(splits.train) == ["synth-train-000", "synth-train-001"]
    assert names(splits.valid) == ["synth-valid-000", "synth-valid-001"]
    assert names(splits.test) == ["synth-test-000", "synth-test-001"]
    assert {t.subset for t in splits.train + splits.valid} == {"train"} and {t.subset for t in splits.test} == {"test"}
    track = splits.valid[0]
    audio = track.audio()
    assert audio.shape == (5, 2, track.num_samples) and audio.dtype == np.float32
    # Row order [mixture, vocals, drums, bass, other] against the files themselves.
    for row, stem in enumerate(readers.STEM_NAMES):
        data, _ = sf.read(track.path / f"{stem}.wav", dtype="float32", always_2d=True)
        np.testing.assert_array_equal(audio[row], data.T)
    assert track.sections()["sections"][0]["start"] == 0.0


def test_valid_tracks_override_and_limits(synth_root, tmp_path):
    cfg = DataConfig(root=synth_root, cache_dir=tmp_path, valid_tracks=["synth-train-001"], max_train_tracks=2)
    splits = load_splits(cfg)
    assert names(splits.valid) == ["synth-train-001"]
    assert names(splits.train) == ["synth-train-000", "synth-valid-000"]  # first 2 of the rest, sorted
    splits = load_splits(DataConfig(root=synth_root, cache_dir=tmp_path, max_valid_tracks=1, max_train_tracks=1))
    assert names(splits.valid) == ["synth-valid-000"] and names(splits.train) == ["synth-train-000"]


def test_fingerprint_stable_and_sensitive(synth_copy):
    cfg = DataConfig(root=synth_copy)
    first = load_splits(cfg).fingerprint
    assert len(first) == 12 and load_splits(cfg).fingerprint == first
    assert load_splits(cfg.model_copy(update={"valid_tracks": ["synth-train-000"]})).fingerprint != first
    data, rate = sf.read(synth_copy / "test/synth-test-000/bass.wav", always_2d=True)
    sf.write(synth_copy / "test/synth-test-000/bass.wav", data[:-100], rate, subtype="FLOAT")
    for stem in ("mixture", "vocals", "drums", "other"):  # keep the track valid: equal lengths
        path = synth_copy / f"test/synth-test-000/{stem}.wav"
        d, _ = sf.read(path, always_2d=True)
        sf.write(path, d[:-100], rate, subtype="FLOAT")
    assert load_splits(cfg).fingerprint != first


def test_kind_hq_without_manifest(synth_copy):
    (synth_copy / "samsnet-synth.json").unlink()
    with pytest.raises(DataError, match="official MUSDB18 validation list.*'Actions - One Minute Smile'"):
        load_splits(DataConfig(root=synth_copy))
    splits = load_splits(DataConfig(root=synth_copy, valid_tracks=["synth-valid-000"]))
    assert splits.kind == KIND_HQ


def test_official_validation_list_comes_from_musdb():
    official = readers.official_validation_tracks()
    assert len(official) == 14 and "Actions - One Minute Smile" in official
    assert readers.stem_stream_ids() == [0, 4, 1, 2, 3]  # mixture, vocals, drums, bass, other


def test_cache_created_once_and_reused(synth_copy, monkeypatch):
    cfg = DataConfig(root=synth_copy)
    decodes = []
    original = readers.WavFolderSource.decode

    def counting_decode(self):
        decodes.append(self.folder.name)
        return original(self)

    monkeypatch.setattr(readers.WavFolderSource, "decode", counting_decode)
    splits = load_splits(cfg)
    total = prepare(splits.all_tracks())
    assert sorted(decodes) == sorted(names(splits.all_tracks()))
    assert total == sum(t.num_samples for t in splits.all_tracks())
    cache_files = sorted((synth_copy / ".samsnet-cache").rglob("*.npy"))
    assert len(cache_files) == 6
    mtimes = [p.stat().st_mtime_ns for p in cache_files]

    again = load_splits(cfg)  # a new process would see the same: nothing decodes again
    audio = again.train[0].audio()
    assert isinstance(audio, np.memmap) and not audio.flags.writeable
    prepare(again.all_tracks())
    assert len(decodes) == 6
    assert [p.stat().st_mtime_ns for p in cache_files] == mtimes
    assert not list((synth_copy / ".samsnet-cache").rglob("*.tmp")) and not list(
        (synth_copy / ".samsnet-cache").rglob("*.lock")
    )


def test_cache_invalidated_when_source_changes(synth_copy):
    cfg = DataConfig(root=synth_copy)
    track = load_splits(cfg).test[0]
    old = np.array(track.audio()[1])
    vocals = track.path / "vocals.wav"
    data, rate = sf.read(vocals, dtype="float32", always_2d=True)
    sf.write(vocals, 0.5 * data, rate, subtype="FLOAT")
    os.utime(vocals, ns=(1, 1))  # a different mtime even on coarse-clock file systems
    fresh = load_splits(cfg).test[0]
    np.testing.assert_allclose(fresh.audio()[1], 0.5 * old)
    entries = list((synth_copy / ".samsnet-cache/test").glob(f"{track.name}.*.npy"))
    assert len(entries) == 1  # the stale entry was removed


def test_cache_concurrent_loads_decode_once(tmp_path, make_hq_track, monkeypatch):
    folder = make_hq_track(tmp_path / "src" / "t")
    source = readers.WavFolderSource(folder)
    calls = []

    def slow_decode():
        calls.append(1)
        return source.decode()

    cache = AudioCache(tmp_path / "cache")
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.load("train", "t", source.files, slow_decode)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 4 and len(calls) == 1
    for r in results:
        np.testing.assert_array_equal(r, results[0])


def test_unwritable_cache_dir_is_a_clear_error(synth_root, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    track = load_splits(DataConfig(root=synth_root, cache_dir=blocker / "cache")).train[0]
    with pytest.raises(DataError, match=f"{blocker / 'cache'}: cannot write the decoded-audio cache.*data.cache_dir"):
        track.audio()


def test_pickled_track_does_not_carry_audio(synth_root, tmp_path):
    import pickle

    track = load_splits(DataConfig(root=synth_root, cache_dir=tmp_path)).train[0]
    track.audio()
    blob = pickle.dumps(track)
    assert len(blob) < 10_000
    np.testing.assert_array_equal(pickle.loads(blob).audio(), track.audio())


# --------------------------------------------------------------------------- MUSDB18 .stem.mp4

needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
    reason="ffmpeg/ffprobe not installed: MUSDB18 .stem.mp4 decoding needs them (apt install ffmpeg)",
)


@pytest.fixture
def stems_root(tmp_path, stem_example):
    """train/: the excerpt and a renamed copy (so training keeps a track), test/: the excerpt."""
    root = tmp_path / "musdb18"
    for sub, name in (("train", FALCON), ("train", "Copy - Falcon 69"), ("test", FALCON)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(stem_example, root / sub / f"{name}.stem.mp4")
    return root


@needs_ffmpeg
def test_musdb18_stems_through_load_splits(stems_root, stem_example):
    import stempeg

    for fmt in ("stems", "auto"):
        splits = load_splits(DataConfig(root=stems_root, format=fmt, valid_tracks=[FALCON]))
        assert splits.kind == KIND_STEMS
        assert names(splits.valid) == [FALCON] and names(splits.train) == ["Copy - Falcon 69"]
        assert names(splits.test) == [FALCON]
    audio = splits.valid[0].audio()
    assert audio.shape[:2] == (5, 2) and audio.dtype == np.float32
    assert splits.valid[0].num_samples == audio.shape[-1] > 6 * 44100
    # Stream order: stempeg streams are mixture, drums, bass, other, vocals; ours mixture, vocals, drums, bass, other.
    # Decoded as musdb decodes (16-bit PCM / 32768): the same samples, bit for bit.
    reference, rate = stempeg.read_stems(str(stem_example), dtype=np.float64, ffmpeg_format="s16le")
    assert rate == 44100
    for ours, stream in enumerate([0, 4, 1, 2, 3]):
        np.testing.assert_array_equal(audio[ours], reference[stream].T)
    assert len(list((stems_root / ".samsnet-cache").rglob("*.npy"))) == 1


@needs_ffmpeg
def test_corrupt_stem_file(stems_root):
    (stems_root / "test" / f"{FALCON}.stem.mp4").write_bytes(b"\x00\x01 not an mp4 at all")
    # Stem files are probed (ffprobe) when the splits load, so a bad file stops a study before it starts.
    with pytest.raises(DataError, match=f"test/{FALCON}.stem.mp4: unreadable stems file \\(Invalid data"):
        load_splits(DataConfig(root=stems_root, format="stems", valid_tracks=[FALCON]))


@needs_ffmpeg
def test_stem_file_with_too_few_streams(stems_root, stem_example):
    import subprocess

    bad = stems_root / "test" / f"{FALCON}.stem.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(stem_example), "-map", "0:0", "-c", "copy", "-f", "mp4", str(bad)],
        check=True,
        timeout=60,
    )
    with pytest.raises(DataError, match=f"test/{FALCON}.stem.mp4: 1 audio stream\\(s\\), a MUSDB18 .stem.mp4 needs 5"):
        load_splits(DataConfig(root=stems_root, valid_tracks=[FALCON]))


def test_stems_without_ffmpeg_is_a_clear_error(stems_root, monkeypatch):
    monkeypatch.setattr(readers.shutil, "which", lambda tool: None)
    with pytest.raises(DataError, match="stem.mp4: decoding MUSDB18 .stem.mp4 needs ffmpeg, which is not on PATH"):
        load_splits(DataConfig(root=stems_root, valid_tracks=[FALCON]))
