"""`separate` under faults (issue 22 item 7): it checks free space before it starts, a SIGTERM
ends it with exit 143 and no `.part` files, and a failed run leaves no empty `--out` folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_wiener import save_tiny_checkpoint

from samsnet_search.cli import main
from samsnet_search.config import SAMPLE_RATE
from samsnet_search.engine import separate as separate_mod

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def _song(path: Path, seconds: float) -> Path:
    rng = np.random.default_rng(0)
    sf.write(path, 0.2 * rng.standard_normal((int(seconds * SAMPLE_RATE), 2)).astype(np.float32), SAMPLE_RATE)
    return path


def _one_line(text: str) -> str:
    """The one error line (a progress bar drawn before the error may stand above it)."""
    errors = [line for line in text.strip().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in text, text
    return errors[0]


def test_too_little_free_space_is_refused_before_any_work(ckpt, tmp_path, capsys, monkeypatch):
    song = _song(tmp_path / "song.wav", 10.0)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(separate_mod.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    out = tmp_path / "stems" / "song"
    assert main(["separate", str(ckpt), str(song), "--out", str(out), "--bits", "16"]) == 2
    line = _one_line(capsys.readouterr().err)
    # 4 stems x 2 channels x 441000 samples x 2 bytes (+ headers): 7.1 MB against 1.0 MB free
    assert str(out) in line and "7.1 MB needed" in line and "1.0 MB free" in line and "--bits 16" in line
    assert not (tmp_path / "stems").exists()


def test_an_input_with_no_samples_leaves_no_out_folder(ckpt, tmp_path, capsys):
    song = tmp_path / "empty.wav"
    sf.write(song, np.zeros((0, 2), np.float32), SAMPLE_RATE)
    assert main(["separate", str(ckpt), str(song), "--out", str(tmp_path / "new" / "out")]) == 2
    assert "empty audio (0 samples)" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "new").exists()


# The child separates for real, but the second chunk waits (a sleep the signal interrupts): the test
# signals it at a known point, with the stems' .part files open, instead of guessing by timing.
CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from samsnet_search import cli
from samsnet_search.engine import separate
real = separate.apply_chunked
def paused(*args, **kwargs):
    for k, piece in enumerate(real(*args, **kwargs)):
        if k == 1:
            print("paused", flush=True)
            time.sleep(120)
        yield piece
separate.apply_chunked = paused
sys.exit(cli.main(sys.argv[1:]))
"""


def test_sigterm_removes_the_part_files_and_exits_143(ckpt, tmp_path):
    song = _song(tmp_path / "song.wav", 6.0)
    out = tmp_path / "out"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD.format(tests=str(TESTS)),
            "separate",
            str(ckpt),
            str(song),
            "--out",
            str(out),
            "--chunk-seconds",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert child.stdout.readline().strip() == "paused", child.stderr.read()
        assert sorted(p.name for p in out.glob("*.part")) == [
            f"{t}.wav.part" for t in ("bass", "drums", "other", "vocals")
        ]
        child.send_signal(signal.SIGTERM)
        rc = child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert rc == 143, child.stderr.read()
    assert not list(out.glob("*.part")) and not list(out.glob("*.wav"))
