"""`separate` as users of open-unmix and demucs expect it: formats, stems, bit depths, chunks, errors.

Real audio is stempeg's MUSDB18 excerpt (a `.stem.mp4`: stream 0 is the mixture) and an mp3
ffmpeg makes from it; the model is a freshly initialised tiny Sams-Net (no training needed).
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
from test_wiener import save_tiny_checkpoint, stacked, tiny_model

from samsnet_search.cli import main
from samsnet_search.config import SAMPLE_RATE, TARGETS
from samsnet_search.data.audio_io import open_audio, read_audio
from samsnet_search.data.readers import StemsFileSource
from samsnet_search.engine.apply import ChunkPlan, apply_chunked, blocks_of
from samsnet_search.engine.separate import separate, separate_file

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    path = tmp_path_factory.mktemp("song") / "song.wav"
    rng = np.random.default_rng(1)
    sf.write(path, 0.2 * rng.standard_normal((3 * SAMPLE_RATE, 2)).astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
    return path


def _written(folder) -> dict[str, np.ndarray]:
    return {p.stem: sf.read(p, dtype="float32", always_2d=True)[0].T for p in sorted(folder.glob("*.wav"))}


@needs_ffmpeg
def test_stem_mp4_is_separated_from_its_mixture_stream(stem_example, tmp_path):
    """The training reader's decoding of stream 0 is the reference: the same stems come out."""
    model = tiny_model()
    mixture = StemsFileSource(stem_example).decode()[0]  # (C, N): the training loader's mixture
    written = separate_file(model, stem_example, tmp_path / "out", chunk_seconds=2.0)
    assert sorted(written) == sorted(TARGETS)
    out = _written(tmp_path / "out")
    expected = separate(model, mixture, chunk_seconds=2.0)
    for t in TARGETS:
        assert out[t].shape == mixture.shape
        np.testing.assert_allclose(out[t], expected[t], atol=1e-5)


@needs_ffmpeg
def test_mp3_input(stem_example, tmp_path):
    mp3 = tmp_path / "song.mp3"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(stem_example), "-map", "0:a:0", "-t", "3", str(mp3)],
        check=True,
        timeout=60,
    )
    assert open_audio(mp3).decoder in ("soundfile", "ffmpeg")  # libsndfile >= 1.1 reads mp3 itself
    written = separate_file(tiny_model(), mp3, tmp_path / "out")
    n = read_audio(mp3).shape[-1]
    assert abs(n - 3 * SAMPLE_RATE) < 0.1 * SAMPLE_RATE  # the encoder's padding aside, 3 s
    for path in written.values():
        info = sf.info(path)
        assert info.frames == n and info.samplerate == SAMPLE_RATE and info.channels == 2


def test_chunked_file_equals_whole_and_reports_progress(song, tmp_path):
    model = tiny_model()
    seen: list[tuple[int, int | None]] = []
    separate_file(model, song, tmp_path / "small", chunk_seconds=0.3, progress=lambda d, t: seen.append((d, t)))
    separate_file(model, song, tmp_path / "whole", chunk_seconds=60.0)
    small, whole = _written(tmp_path / "small"), _written(tmp_path / "whole")
    for t in TARGETS:
        np.testing.assert_allclose(small[t], whole[t], atol=1e-5)
    done = [d for d, _ in seen]
    assert len(seen) > 3 and done == sorted(done) and done[-1] == 3 * SAMPLE_RATE
    assert all(total == 3 * SAMPLE_RATE for _, total in seen)


def test_apply_chunked_streams_any_block_sizes():
    """The chunk loop is model-agnostic: any separator, blocks of any size, the same result."""
    audio = np.random.default_rng(0).standard_normal((2, 10_000)).astype(np.float32)

    def fn(x, start=0):  # a separator whose output depends on its neighbourhood (a moving sum over 7 samples)
        k = np.ones(7, dtype=np.float32)
        return np.stack([np.stack([np.convolve(c, k, "same") for c in x])] * 3)

    whole = fn(audio)
    plan = ChunkPlan.make(1000, 16, align=8)
    assert (plan.chunk, plan.context) == (1000, 16)
    for size in (1, 333, 1000, 20_000):
        pieces = list(apply_chunked(fn, blocks_of(audio, size), plan))
        assert all(p.shape[-1] <= plan.chunk for p in pieces)
        np.testing.assert_allclose(np.concatenate(pieces, axis=-1), whole, atol=1e-5)
    assert list(apply_chunked(fn, iter([]), plan)) == []


@pytest.mark.parametrize("bits,subtype", [("16", "PCM_16"), ("24", "PCM_24"), ("32f", "FLOAT")])
def test_bits_and_stem_selection(ckpt, song, tmp_path, capsys, bits, subtype):
    out = tmp_path / "out"
    assert main(["separate", str(ckpt), str(song), "--out", str(out), "--stems", "vocals,drums", "--bits", bits]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["drums.wav", "vocals.wav"]  # no .part files left
    assert sf.info(out / "vocals.wav").subtype == subtype
    assert "vocals:" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--stems", "vocals,piano"], "--stems vocals,piano: unknown piano (choose from vocals,drums,bass,other)"),
        (["--bits", "8"], "--bits 8: expected one of 16, 24, 32f"),
        (["--chunk-seconds", "0"], "--chunk-seconds 0: must be > 0"),
        (["--wiener", "-2"], "--wiener -2: EM iterations must be >= 0"),
    ],
)
def test_bad_options_are_one_line(ckpt, song, tmp_path, capsys, args, expected):
    assert main(["separate", str(ckpt), str(song), "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_missing_audio_file_is_one_clear_line(ckpt, tmp_path, capsys):
    assert main(["separate", str(ckpt), str(tmp_path / "missing.wav"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'missing.wav'}: no such file", err


def test_swapped_arguments_are_one_clear_line(ckpt, song, tmp_path, capsys):
    assert main(["separate", str(song), str(ckpt), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "arguments swapped? `separate MODEL AUDIO` takes the model first" in err and len(err.splitlines()) == 1, err
    assert "pop from empty list" not in err


def test_audio_folder_is_not_mistaken_for_swapped_arguments(ckpt, tmp_path, capsys):
    (tmp_path / "songs").mkdir()
    assert main(["separate", str(ckpt), str(tmp_path / "songs"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "songs: is a folder, expected an audio file" in err and "swapped" not in err, err


def test_wiener_and_residual_from_the_command_line(ckpt, song, tmp_path):
    assert main(["separate", str(ckpt), str(song), "--out", str(tmp_path / "w"), "--wiener", "1", "--residual"]) == 0
    stems = _written(tmp_path / "w")
    mixture = read_audio(song)
    error = mixture - stacked(stems).sum(0)
    assert 10 * np.log10(np.sum(mixture**2) / np.sum(error**2)) > 80.0
