"""Synthetic MUSDB18-HQ-format dataset: musically plausible stems whose content changes by section.

`synthesize(root)` writes

    root/train/<track>/{mixture,vocals,drums,bass,other}.wav + sections.json
    root/test/<track>/...
    root/samsnet-synth.json        generator, seed, which train/ tracks are validation tracks

as float32 wav, 44.1 kHz stereo, with `mixture = vocals + drums + bass + other` exactly (summed in
float32 in that order, stored losslessly). The stems are distinct in the ways separation models
care about:

- vocals: a sung melody: pitched harmonic tones with vibrato, portamento and vowel formants;
- drums: kick / snare / hi-hat hits (pitch-swept sine, noise bursts) on a 16th-note grid;
- bass: a low plucked bass line on the chord roots (fundamentals 41-196 Hz);
- other: chord pads or arpeggios from band-limited saw wavetables.

Each track is cut into sections of random length in `section_range` seconds; every section draws
its own key, mode, tempo, chord progression, drum pattern, timbres and (sometimes) drops one
instrument, so sections differ audibly. `sections.json` beside each track lists them.
Everything is numpy-vectorized (no per-sample Python loops) and deterministic for a seed: track
`k` of a subset depends only on (seed, subset, k), not on how many tracks are written.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import lfilter

from ..config import SAMPLE_RATE, TARGETS
from ..errors import ConfigError, DataError

log = logging.getLogger(__name__)

SR = SAMPLE_RATE
GENERATOR = "samsnet_search.data.synth"
GENERATOR_VERSION = 1
MANIFEST = "samsnet-synth.json"
SECTIONS_FILE = "sections.json"

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
# Chord progressions as 0-based scale degrees, one chord per bar (I-V-vi-IV and friends).
PROGRESSIONS = ((0, 4, 5, 3), (0, 5, 3, 4), (0, 3, 4, 0), (5, 3, 0, 4), (0, 3, 0, 4), (1, 4, 0, 0))
# Vowel formants F1, F2, F3 in Hz (a, e, i, o, u; adult average).
VOWELS = np.array([[730, 1090, 2440], [530, 1840, 2480], [270, 2290, 3010], [570, 840, 2410], [300, 870, 2240]])
DRUM_STYLES = ("rock", "four-on-floor", "half-time", "breakbeat")
OTHER_STYLES = ("pad", "arpeggio")
# Stem RMS levels (linear) before the final peak check; mixes sit around -16 dBFS RMS.
STEM_RMS = {"vocals": 0.07, "drums": 0.07, "bass": 0.07, "other": 0.05}
PEAK_LIMIT = 0.89  # about -1 dBFS: leaves headroom, the mixture never clips


@dataclass
class Section:
    """One musical section: everything that changes at a boundary."""

    start: int  # samples
    end: int
    root: int  # pitch class of the key, 0 = C
    mode: str
    tempo: float  # BPM
    progression: tuple[int, ...]
    drum_style: str
    other_style: str
    stems: tuple[str, ...]  # the instruments that play in this section
    pans: dict[str, float] = field(default_factory=dict)  # -1 (left) .. 1 (right)
    brightness: float = 1.0  # spectral rolloff exponent for bass / other (lower = brighter)
    vibrato: tuple[float, float] = (5.5, 0.35)  # rate Hz, depth semitones
    gains_db: dict[str, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.end - self.start

    @property
    def beat(self) -> float:
        """Seconds per beat."""
        return 60.0 / self.tempo

    def label(self) -> str:
        return f"{NOTE_NAMES[self.root]} {self.mode}, {self.tempo:.0f} bpm, {self.drum_style}, {self.other_style}"

    def chord_midi(self, degree: int, base: int) -> np.ndarray:
        """Triad on scale `degree` as MIDI notes, root in [base, base + 12)."""
        scale = SCALES[self.mode]
        steps = [scale[(degree + k) % 7] + 12 * ((degree + k) // 7) for k in (0, 2, 4)]
        root = base + (self.root + steps[0] - base) % 12
        return np.array([root + s - steps[0] for s in steps])


def midi_hz(m: np.ndarray | float) -> np.ndarray:
    return 440.0 * 2.0 ** ((np.asarray(m, dtype=np.float64) - 69.0) / 12.0)


def pan_gains(pan: float) -> np.ndarray:
    """Constant-power pan law: (2,) gains for left/right."""
    angle = (pan + 1.0) * np.pi / 4.0
    return np.array([np.cos(angle), np.sin(angle)]) * np.sqrt(2.0)


# --------------------------------------------------------------------------- section planning


def plan_sections(rng: np.random.Generator, n_samples: int, section_range: tuple[float, float]) -> list[Section]:
    """Cut `n_samples` into sections of `section_range` seconds and draw each one's content."""
    lo, hi = (int(round(s * SR)) for s in section_range)
    lengths, remaining = [], n_samples
    while remaining > hi:
        upper = min(hi, remaining - lo)  # leave at least `lo` for what follows
        if upper < lo:  # no split keeps every part in range: the last one runs a little long
            break
        length = int(rng.integers(lo, upper + 1))
        lengths.append(length)
        remaining -= length
    lengths.append(remaining)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return [_draw_section(rng, int(s), int(n), i, len(lengths)) for i, (s, n) in enumerate(zip(starts, lengths))]


def _draw_section(rng: np.random.Generator, start: int, n: int, index: int, count: int) -> Section:
    stems = list(TARGETS)
    # Some sections drop one instrument (an instrumental break, a drum-less bridge, ...);
    # never in a one-section track, so every stem is present in every track.
    if count > 1 and rng.random() < 0.35:
        stems.remove(str(rng.choice(["vocals", "drums", "other"])))
    return Section(
        start=start,
        end=start + n,
        root=int(rng.integers(12)),
        mode=str(rng.choice(list(SCALES))),
        tempo=float(rng.uniform(80, 150)),
        progression=PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))],
        drum_style=str(rng.choice(DRUM_STYLES)),
        other_style=str(rng.choice(OTHER_STYLES)),
        stems=tuple(stems),
        pans={
            "vocals": float(rng.uniform(-0.15, 0.15)),
            "bass": float(rng.uniform(-0.1, 0.1)),
            "other": float(rng.uniform(-0.6, 0.6)),
            "snare": float(rng.uniform(-0.3, 0.3)),
            "hat": float(rng.uniform(-0.7, 0.7)),
        },
        brightness=float(rng.uniform(0.9, 2.0)),
        vibrato=(float(rng.uniform(4.5, 6.5)), float(rng.uniform(0.15, 0.5))),
        gains_db={t: float(rng.uniform(-3.0, 3.0)) for t in TARGETS},
    )


# --------------------------------------------------------------------------- note helpers


def _notes_to_samples(onsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample note index and seconds since that note's onset.

    onsets: (notes,) sample positions, sorted, onsets[0] == 0. Returns two (n,) arrays.
    """
    t = np.arange(n)
    idx = np.searchsorted(onsets, t, side="right") - 1
    return idx, (t - onsets[idx]) / SR


def _saw_table(harmonics: int, rolloff: float, size: int = 4096) -> np.ndarray:
    """One band-limited cycle: sum_k sin(2 pi k x) / k**rolloff, k = 1..harmonics. (size,)"""
    k = np.arange(1, harmonics + 1)[:, None]
    x = np.arange(size)[None, :] / size
    table = (np.sin(2 * np.pi * k * x) / k**rolloff).sum(0)
    return table / np.abs(table).max()


def _wavetable_osc(table: np.ndarray, f0: np.ndarray, phase0: float = 0.0) -> np.ndarray:
    """Oscillator following the per-sample frequency f0 (..., n) through a one-cycle table."""
    cycles = phase0 + np.cumsum(f0, axis=-1) / SR
    idx = ((cycles % 1.0) * len(table)).astype(np.int64)
    return table[idx]


def _normalize(x: np.ndarray, rms: float) -> np.ndarray:
    """Scale (C, n) audio to the given RMS (silence stays silence)."""
    current = float(np.sqrt(np.mean(x**2)))
    return x * (rms / current) if current > 1e-9 else x


# --------------------------------------------------------------------------- instruments


def render_vocals(sec: Section, rng: np.random.Generator) -> np.ndarray:
    """A sung melody: harmonic tones with vibrato, glides and vowel formants. Returns (2, n)."""
    beat = sec.beat
    durations = rng.choice([0.5, 1.0, 1.0, 1.5, 2.0], size=int(sec.n / SR / (0.5 * beat)) + 2) * beat
    onsets = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    onsets = (onsets[onsets * SR < sec.n] * SR).astype(np.int64)
    n_notes = len(onsets)
    # Melody: a random walk over the scale from the tonic in G3..F#4, kept in a singing range
    # (MIDI 55-80, 196-830 Hz).
    scale = np.array(SCALES[sec.mode])
    tonic = 55 + (sec.root - 55) % 12
    degree = np.clip(np.cumsum(rng.integers(-2, 3, size=n_notes)) + 2, 0, 8)
    midi = tonic + scale[degree % 7] + 12 * (degree // 7)
    rest = rng.random(n_notes) < 0.18
    vowel = rng.integers(len(VOWELS), size=n_notes)

    idx, since = _notes_to_samples(onsets, sec.n)
    note_end = np.append(onsets[1:], sec.n)
    until = (note_end[idx] - np.arange(sec.n)) / SR
    # Portamento: a one-pole glide (about 40 ms) on the pitch in semitones.
    pole = np.exp(-1.0 / (0.04 * SR))
    pitch = lfilter([1 - pole], [1, -pole], midi[idx].astype(np.float64), zi=[pole * midi[0]])[0]
    rate, depth = sec.vibrato
    vib_in = np.clip((since - 0.15) / 0.3, 0.0, 1.0)  # vibrato sets in after the attack, as sung
    pitch = pitch + depth * vib_in * np.sin(2 * np.pi * rate * np.arange(sec.n) / SR)
    f0 = midi_hz(pitch)

    # Harmonic amplitudes per note from the vowel's formant resonances (Lorentzian peaks) and a
    # glottal tilt, baked into one wavetable per note: a table lookup per sample instead of one
    # sine per harmonic per sample.
    harmonics, size = 14, 2048
    k = np.arange(1, harmonics + 1)[:, None]
    fk = k * midi_hz(midi)[None, :]  # (K, notes)
    formants = VOWELS[vowel].T[:, None, :]  # (3, 1, notes)
    resonance = (1.0 / (1.0 + ((fk[None] - formants) / (0.08 * formants + 60)) ** 2)).sum(0)
    amps = resonance * k**-0.8 * (fk < 0.45 * SR)  # (K, notes)
    basis = np.sin(2 * np.pi * k * np.arange(size)[None, :] / size)  # (K, size)
    tables = amps.T @ basis  # (notes, size)
    cycles = np.cumsum(f0) / SR
    voice = tables[idx, ((cycles % 1.0) * size).astype(np.int64)]
    env = np.clip(since / 0.03, 0, 1) * np.clip(until / 0.06, 0, 1) * ~rest[idx]
    breath = lfilter([1, -0.95], [1], rng.standard_normal(sec.n)) * 0.03
    mono = (voice + breath) * env
    return _normalize(pan_gains(sec.pans["vocals"])[:, None] * mono[None, :], STEM_RMS["vocals"])


def _drum_pattern(style: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Velocities (16,) per drum for one bar of 16ths; a style template plus random variation."""
    steps = np.zeros((3, 16))
    kick, snare, hat = steps
    if style == "rock":
        kick[[0, 8]] = 1.0
        snare[[4, 12]] = 1.0
        hat[::2] = 0.7
    elif style == "four-on-floor":
        kick[::4] = 1.0
        snare[[4, 12]] = 0.8
        hat[2::4] = 0.9
    elif style == "half-time":
        kick[[0, 10]] = 1.0
        snare[8] = 1.0
        hat[:] = 0.5
    else:  # breakbeat
        kick[[0, 6, 10]] = 1.0
        snare[[4, 12, 15]] = [1.0, 1.0, 0.5]
        hat[::2] = 0.7
    extra = rng.random(16) < 0.12
    kick[extra & (kick == 0) & (snare == 0)] = 0.6  # ghost kicks
    steps *= rng.uniform(0.85, 1.0, size=steps.shape)
    return {"kick": kick, "snare": snare, "hat": hat}


def _drum_samples(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One hit per drum, with a timbre drawn per section. (length,) arrays."""
    t = np.arange(int(0.45 * SR)) / SR
    f_hi, f_lo = rng.uniform(110, 170), rng.uniform(42, 60)
    kick_f = f_lo + (f_hi - f_lo) * np.exp(-t / 0.035)  # the pitch drop that makes a kick
    kick = np.sin(2 * np.pi * np.cumsum(kick_f) / SR) * np.exp(-t / rng.uniform(0.12, 0.25))
    noise = rng.standard_normal(len(t))
    snare_tone = np.sin(2 * np.pi * rng.uniform(170, 240) * t) * np.exp(-t / 0.06)
    snare_noise = lfilter([1, -0.6], [1], noise) * np.exp(-t / rng.uniform(0.07, 0.15))
    snare = 0.5 * snare_tone + 0.6 * snare_noise
    hat_noise = np.diff(noise, n=2, prepend=[0, 0])  # second difference: a steep high-pass
    hat = 0.25 * hat_noise * np.exp(-t / rng.uniform(0.02, 0.08))
    return {"kick": kick, "snare": snare, "hat": hat}


def render_drums(sec: Section, rng: np.random.Generator) -> np.ndarray:
    """Kick, snare and hi-hat on a 16th grid: velocity-scaled copies of one hit each. Returns (2, n)."""
    pattern, hits = _drum_pattern(sec.drum_style, rng), _drum_samples(rng)
    step = sec.beat / 4 * SR
    n_steps = int(sec.n / step) + 1
    onsets = (np.arange(n_steps) * step).astype(np.int64)
    onsets = onsets[onsets < sec.n]
    out = np.zeros((2, sec.n))
    pans = {"kick": 0.0, "snare": sec.pans["snare"], "hat": sec.pans["hat"]}
    for drum, velocity in pattern.items():
        velocities = np.resize(velocity, len(onsets)) * rng.uniform(0.9, 1.0, size=len(onsets))
        hit = hits[drum]
        mono = np.zeros(sec.n + len(hit))
        for onset, v in zip(onsets[velocities > 0], velocities[velocities > 0]):  # one add per hit, not per sample
            mono[onset : onset + len(hit)] += v * hit
        mono = mono[: sec.n]
        out += pan_gains(pans[drum])[:, None] * mono[None, :]
    return _normalize(out, STEM_RMS["drums"])


def render_bass(sec: Section, rng: np.random.Generator) -> np.ndarray:
    """A plucked bass line on 8ths following the chord roots (41-196 Hz fundamentals). Returns (2, n)."""
    eighth = sec.beat / 2 * SR
    n_steps = int(sec.n / eighth) + 1
    rhythm = rng.random(8) < 0.55
    rhythm[0] = True  # the root on the downbeat anchors every bar
    onsets_all = (np.arange(n_steps) * eighth).astype(np.int64)
    play = np.resize(rhythm, n_steps) & (onsets_all < sec.n)
    onsets = onsets_all[play]
    bar = (onsets / (8 * eighth)).astype(int)
    degrees = np.array(sec.progression)[bar % len(sec.progression)]
    octave_base = 28 if rng.random() < 0.6 else 36  # E1 (41 Hz) or C2 (65 Hz) register
    roots = np.array([sec.chord_midi(int(d), octave_base)[0] for d in degrees])
    # Occasional fifths and octaves make it a line, not a drone; the fundamental stays under 200 Hz.
    leap = rng.choice([0, 0, 0, 7, 12], size=len(roots))
    midi = np.where(roots + leap <= 55, roots + leap, roots)
    idx, since = _notes_to_samples(onsets, sec.n)  # onsets[0] == 0: the first downbeat always plays
    table = _saw_table(harmonics=8, rolloff=sec.brightness + 0.3)
    tone = _wavetable_osc(table, midi_hz(midi)[idx])
    until = (np.append(onsets[1:], sec.n)[idx] - np.arange(sec.n)) / SR
    # Pluck: 5 ms attack, exponential decay, 8 ms release before the next note (no clicks).
    env = np.clip(since / 0.005, 0, 1) * np.exp(-since / rng.uniform(0.18, 0.4)) * np.clip(until / 0.008, 0, 1)
    return _normalize(pan_gains(sec.pans["bass"])[:, None] * (tone * env)[None, :], STEM_RMS["bass"])


def render_other(sec: Section, rng: np.random.Generator) -> np.ndarray:
    """Chord pads (detuned saws, slow attack) or a plucked arpeggio on 16ths. Returns (2, n)."""
    bar_len = 4 * sec.beat * SR
    n = sec.n
    t = np.arange(n)
    bar = (t / bar_len).astype(int)
    chords = np.stack([sec.chord_midi(d, 55) for d in sec.progression])  # (chords, 3)
    chord_idx = bar % len(sec.progression)
    table = _saw_table(harmonics=12, rolloff=sec.brightness)
    out = np.zeros((2, n))
    if sec.other_style == "pad":
        since_bar = (t - bar * bar_len) / SR
        env = np.clip(since_bar / 0.12, 0, 1) * np.clip((bar_len / SR - since_bar) / 0.1, 0, 1)
        for voice in range(3):
            f = midi_hz(chords[chord_idx, voice])
            for ch, detune in enumerate((-0.08, 0.08)):  # opposite detune per channel: stereo width
                out[ch] += _wavetable_osc(table, f * 2 ** (detune / 12), phase0=rng.random()) * env
    else:
        sixteenth = sec.beat / 4 * SR
        onsets = (np.arange(int(n / sixteenth) + 1) * sixteenth).astype(np.int64)
        onsets = onsets[onsets < n]
        order = np.resize(rng.permutation([0, 1, 2, 1]), len(onsets))
        midi = chords[(onsets / bar_len).astype(int) % len(sec.progression), order] + 12 * (rng.random() < 0.5)
        idx, since = _notes_to_samples(onsets, n)
        until = (np.append(onsets[1:], n)[idx] - t) / SR
        env = np.clip(since / 0.003, 0, 1) * np.exp(-since / 0.12) * np.clip(until / 0.005, 0, 1)
        tone = _wavetable_osc(table, midi_hz(midi)[idx]) * env
        out += pan_gains(sec.pans["other"])[:, None] * tone[None, :]
    return _normalize(out, STEM_RMS["other"])


RENDERERS = {"vocals": render_vocals, "drums": render_drums, "bass": render_bass, "other": render_other}


# --------------------------------------------------------------------------- tracks and trees


def render_track(
    rng: np.random.Generator, seconds: float, section_range: tuple[float, float]
) -> tuple[np.ndarray, list[Section]]:
    """Render one track. Returns stems (4, 2, N) float32 in config.TARGETS order and its sections."""
    n = int(round(seconds * SR))
    sections = plan_sections(rng, n, section_range)
    stems = np.zeros((len(TARGETS), 2, n))
    for sec in sections:
        # 5 ms fades at the section's edges: the change stays sharp but does not click.
        ramp = min(int(0.005 * SR), sec.n // 2)
        fade = np.ones(sec.n)
        fade[:ramp] = fade[sec.n - ramp :][::-1] = np.linspace(0.0, 1.0, ramp, endpoint=False)
        for s, target in enumerate(TARGETS):
            # Draw every renderer's randomness even for a silent stem, so that dropping one
            # instrument does not shift the others' random streams.
            audio = RENDERERS[target](sec, rng)
            if target in sec.stems:
                stems[s, :, sec.start : sec.end] = audio * fade * 10 ** (sec.gains_db[target] / 20)
    stems = stems.astype(np.float32)
    peak = float(np.abs(stems.sum(0)).max())
    if peak > PEAK_LIMIT:
        stems *= np.float32(PEAK_LIMIT / peak)
    return stems, sections


def mix(stems: np.ndarray) -> np.ndarray:
    """Mixture (C, N) as the float32 sum of stems (4, C, N), in target order."""
    out = stems[0].copy()
    for s in stems[1:]:
        out += s
    return out


def sections_json(sections: list[Section]) -> dict:
    """The `sections.json` content: sections in seconds, and the interior boundaries."""
    items = [
        {
            "start": sec.start / SR,
            "end": sec.end / SR,
            "label": sec.label(),
            "key": f"{NOTE_NAMES[sec.root]} {sec.mode}",
            "tempo": round(sec.tempo, 2),
            "drums": sec.drum_style,
            "other": sec.other_style,
            "stems": list(sec.stems),
        }
        for sec in sections
    ]
    return {
        "duration": sections[-1].end / SR,
        "sections": items,
        "boundaries": [sec.start / SR for sec in sections[1:]],  # change points, excluding 0 and the end
    }


def write_track(folder: Path, stems: np.ndarray, sections: list[Section]) -> None:
    """Write mixture + 4 stems as float32 wav (lossless, so the sum stays exact) and sections.json."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, audio in zip(("mixture",) + TARGETS, [mix(stems), *stems]):
        sf.write(folder / f"{name}.wav", audio.T, SR, subtype="FLOAT")
    (folder / SECTIONS_FILE).write_text(json.dumps(sections_json(sections), indent=1))


def read_sections(track_folder: Path) -> dict | None:
    """The sections.json written beside a synthetic track, or None when there is none."""
    path = Path(track_folder) / SECTIONS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable sections file: {e}") from None


def _check_args(n_train: int, n_valid: int, n_test: int, seconds: float, section_range: tuple[float, float]) -> None:
    for key, value, least in (("n_train", n_train, 1), ("n_valid", n_valid, 1), ("n_test", n_test, 1)):
        if not isinstance(value, int) or value < least:
            raise ConfigError(f"synthesize: {key} must be an integer >= {least}, got {value!r}")
    if not seconds > 0:
        raise ConfigError(f"synthesize: seconds must be > 0, got {seconds!r}")
    lo, hi = section_range
    if not 0 < lo <= hi:
        raise ConfigError(f"synthesize: section_range must be (min, max) with 0 < min <= max, got {section_range!r}")


def synthesize(
    root: Path,
    n_train: int = 8,
    n_valid: int = 2,
    n_test: int = 2,
    seconds: float = 20.0,
    seed: int = 0,
    section_range: tuple[float, float] = (1.0, 6.0),
    overwrite: bool = False,
) -> Path:
    """Write a synthetic MUSDB18-HQ-format dataset under `root` and return `root`.

    train/ holds `n_train` training tracks plus `n_valid` validation tracks (as in MUSDB18, where
    the validation tracks live in train/; `samsnet-synth.json` names them); test/ holds `n_test`.
    Refuses to write over an existing train/ or test/ folder unless `overwrite`.
    """
    _check_args(n_train, n_valid, n_test, seconds, section_range)
    root = Path(root)
    for subset in ("train", "test"):
        folder = root / subset
        if folder.exists() and any(folder.iterdir()):
            if not overwrite:
                raise DataError(f"{folder}: already exists and is not empty (use overwrite / --force to replace it)")
            shutil.rmtree(folder)
    names = {
        "train": [f"synth-train-{i:03d}" for i in range(n_train)] + [f"synth-valid-{i:03d}" for i in range(n_valid)],
        "test": [f"synth-test-{i:03d}" for i in range(n_test)],
    }
    for subset, tracks in names.items():
        for name in tracks:
            # One independent stream per (seed, subset, track): a track never depends on the counts.
            kind, index = name.split("-")[1], int(name.split("-")[2])
            rng = np.random.default_rng([seed, ("train", "valid", "test").index(kind), index])
            stems, sections = render_track(rng, seconds, tuple(section_range))
            write_track(root / subset / name, stems, sections)
            log.debug("wrote %s/%s (%d sections)", subset, name, len(sections))
    manifest = {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "seed": seed,
        "seconds": seconds,
        "section_range": list(section_range),
        "sample_rate": SR,
        "valid_tracks": names["train"][n_train:],
        "train_tracks": names["train"][:n_train],
        "test_tracks": names["test"],
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1))
    log.info(
        "synthesized %d train + %d valid + %d test tracks of %.1f s in %s", n_train, n_valid, n_test, seconds, root
    )
    return root
