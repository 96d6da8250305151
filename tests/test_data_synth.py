"""The synthetic generator: MUSDB18-HQ layout, exact mixtures, sections, determinism, distinct stems."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import stft

from samsnet_search.config import SAMPLE_RATE, TARGETS
from samsnet_search.data import synth
from samsnet_search.errors import ConfigError, DataError

STEMS = ("mixture",) + TARGETS


@pytest.fixture(scope="module")
def params(synth_root) -> dict:
    """The generator parameters of `synth_root`, as its manifest records them."""
    return json.loads((synth_root / synth.MANIFEST).read_text())


def read_track(folder) -> dict[str, np.ndarray]:
    """{stem: (C, N)} as stored."""
    out = {}
    for name in STEMS:
        data, rate = sf.read(folder / f"{name}.wav", dtype="float32", always_2d=True)
        assert rate == SAMPLE_RATE
        out[name] = data.T
    return out


def test_layout_and_manifest(synth_root, params):
    train = sorted(p.name for p in (synth_root / "train").iterdir())
    test = sorted(p.name for p in (synth_root / "test").iterdir())
    assert train == ["synth-train-000", "synth-train-001", "synth-valid-000", "synth-valid-001"]
    assert test == ["synth-test-000", "synth-test-001"]
    assert params["generator"] == synth.GENERATOR
    assert params["train_tracks"] == ["synth-train-000", "synth-train-001"]
    assert params["valid_tracks"] == ["synth-valid-000", "synth-valid-001"]
    for folder in [*(synth_root / "train").iterdir(), *(synth_root / "test").iterdir()]:
        assert sorted(p.name for p in folder.iterdir()) == sorted([f"{s}.wav" for s in STEMS] + ["sections.json"])
        info = sf.info(folder / "mixture.wav")
        assert (info.samplerate, info.channels, info.subtype) == (44100, 2, "FLOAT")
        assert info.frames == int(params["seconds"] * SAMPLE_RATE)


def test_mixture_is_exact_sum_and_does_not_clip(synth_root):
    for folder in (synth_root / "train").iterdir():
        audio = read_track(folder)
        stems_sum = audio["vocals"] + audio["drums"] + audio["bass"] + audio["other"]
        np.testing.assert_array_equal(audio["mixture"], stems_sum)
        assert 0.1 < np.abs(audio["mixture"]).max() <= synth.PEAK_LIMIT + 1e-6
        for name in TARGETS:  # every stem is present in every track
            assert np.sqrt(np.mean(audio[name] ** 2)) > 1e-3, (folder.name, name)


def test_sections_json(synth_root, params):
    lo, hi = params["section_range"]
    for folder in (synth_root / "train").iterdir():
        sections = synth.read_sections(folder)
        items = sections["sections"]
        assert items[0]["start"] == 0.0 and items[-1]["end"] == pytest.approx(params["seconds"])
        assert sections["boundaries"] == [s["start"] for s in items[1:]]
        for a, b in zip(items, items[1:]):
            assert a["end"] == b["start"]
        lengths = [s["end"] - s["start"] for s in items]
        assert all(lo - 1e-4 <= x <= hi + 1e-4 for x in lengths), lengths
        assert len({(s["key"], round(s["tempo"])) for s in items}) == len(items)  # each section differs
        assert all(set(s["stems"]) <= set(TARGETS) and len(s["stems"]) >= 3 for s in items)


@pytest.mark.parametrize(
    "seconds, section_range",
    [(20.0, (1.0, 6.0)), (7.0, (5.0, 6.0)), (3.0, (4.0, 8.0)), (12.0, (2.0, 2.0))],
)
def test_section_plan_covers_track(seconds, section_range):
    n = int(seconds * SAMPLE_RATE)
    sections = synth.plan_sections(np.random.default_rng(1), n, section_range)
    assert sections[0].start == 0 and sections[-1].end == n
    assert all(a.end == b.start for a, b in zip(sections, sections[1:]))
    lo, hi = (int(round(s * SAMPLE_RATE)) for s in section_range)
    # Every section but the last is within range; the last is within range whenever a split allows it.
    assert all(lo <= s.n <= hi for s in sections[:-1])
    if n >= lo:
        assert sections[-1].n >= lo


def test_deterministic_and_seed_dependent(tmp_path):
    kw = dict(n_train=1, n_valid=1, n_test=1, seconds=3.0, section_range=(1.0, 2.0))
    a = synth.synthesize(tmp_path / "a", seed=7, **kw)
    b = synth.synthesize(tmp_path / "b", seed=7, **kw)
    c = synth.synthesize(tmp_path / "c", seed=8, **kw)
    # (Compare samples, not bytes: libsndfile stamps a time into the float wav's PEAK chunk.)
    for rel in ("train/synth-train-000", "train/synth-valid-000", "test/synth-test-000"):
        ta, tb, tc = read_track(a / rel), read_track(b / rel), read_track(c / rel)
        for name in STEMS:
            np.testing.assert_array_equal(ta[name], tb[name])
        assert (a / rel / "sections.json").read_bytes() == (b / rel / "sections.json").read_bytes()
        assert not np.array_equal(ta["vocals"], tc["vocals"])
    # A track depends on (seed, subset, index) only, not on how many tracks were written.
    d = synth.synthesize(tmp_path / "d", seed=7, n_train=3, n_valid=1, n_test=1, seconds=3.0, section_range=(1.0, 2.0))
    np.testing.assert_array_equal(
        read_track(a / "train/synth-train-000")["bass"], read_track(d / "train/synth-train-000")["bass"]
    )


def _power_spectrum(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.abs(np.fft.rfft(x.mean(0))) ** 2
    return np.fft.rfftfreq(x.shape[-1], 1 / SAMPLE_RATE), p


def spectral_centroid(x: np.ndarray) -> float:
    f, p = _power_spectrum(x)
    return float((f * p).sum() / p.sum())


def peak_frequency(x: np.ndarray) -> float:
    f, p = _power_spectrum(x)
    return float(f[p.argmax()])


def spectral_flatness(x: np.ndarray) -> float:
    """Median over active frames of geometric / arithmetic mean power in 1-10 kHz: noise ~1, tones ~0."""
    f, _, z = stft(x.mean(0), SAMPLE_RATE, nperseg=2048)
    p = np.abs(z[(f > 1000) & (f < 10000)]) ** 2 + 1e-20
    p = p[:, p.sum(0) > 1e-3 * p.sum(0).max()]
    return float(np.median(np.exp(np.log(p).mean(0)) / p.mean(0)))


def onsets_per_second(x: np.ndarray) -> float:
    """Frames (10 ms) whose energy jumps 6 dB over 20 ms earlier and is loud: a crude onset rate."""
    m = x.mean(0)
    e = (m[: len(m) // 441 * 441].reshape(-1, 441) ** 2).mean(1)
    jumps = (e[2:] > 4 * e[:-2]) & (e[2:] > 0.05 * e.max())
    starts = jumps & ~np.concatenate([[False], jumps[:-1]])
    return starts.sum() / (len(m) / SAMPLE_RATE)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_stems_are_distinct_instruments(seed):
    stems, _ = synth.render_track(np.random.default_rng([seed, 0, 0]), 8.0, (1.5, 4.0))
    vocals, drums, bass, other = stems
    # Bass is low: its strongest partial is a fundamental below 200 Hz, and it is the darkest stem.
    assert peak_frequency(bass) < 200
    assert spectral_centroid(bass) < min(spectral_centroid(vocals), spectral_centroid(other))
    # Vocals are sung: the strongest partial lies in a singing range.
    assert 150 < peak_frequency(vocals) < 1000
    # Drums are noisy and percussive; the pitched stems are not noisy.
    assert spectral_flatness(drums) > 0.1
    assert max(spectral_flatness(s) for s in (vocals, bass, other)) < 0.08
    assert spectral_centroid(drums) > 2 * max(spectral_centroid(s) for s in (vocals, bass, other))
    assert onsets_per_second(drums) > 1.5


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="n_valid"):
        synth.synthesize(tmp_path / "x", n_valid=0)
    with pytest.raises(ConfigError, match="section_range"):
        synth.synthesize(tmp_path / "x", section_range=(3.0, 1.0))
    with pytest.raises(ConfigError, match="seconds"):
        synth.synthesize(tmp_path / "x", seconds=0)


def test_refuses_to_overwrite_unless_asked(tmp_path):
    kw = dict(n_train=1, n_valid=1, n_test=1, seconds=1.0)
    synth.synthesize(tmp_path, seed=1, **kw)
    with pytest.raises(DataError, match=str(tmp_path / "train")):
        synth.synthesize(tmp_path, seed=2, **kw)
    before = (tmp_path / "test/synth-test-000/mixture.wav").read_bytes()
    synth.synthesize(tmp_path, seed=2, overwrite=True, **kw)
    assert (tmp_path / "test/synth-test-000/mixture.wav").read_bytes() != before
