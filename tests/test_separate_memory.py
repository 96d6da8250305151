"""Peak memory of `separate` is set by the chunk, not by the song.

Each separation runs in a fresh interpreter (so one peak cannot hide another) that reports
its peak resident set size (`resource.getrusage(...).ru_maxrss`). A song six times longer
(both many chunks long, so the allocator has settled) must peak within 10 % of the short one:
decoding, separating and writing all stream chunk by chunk.
Full-track processing, as before, grows by hundreds of MB between these two lengths.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import soundfile as sf
from test_wiener import save_tiny_checkpoint

from samsnet_search.config import SAMPLE_RATE

SCRIPT = textwrap.dedent("""
    import resource, sys
    from samsnet_search.engine.checkpoint import load_model
    from samsnet_search.engine.separate import separate_file
    model = load_model(sys.argv[1])[0]
    separate_file(model, sys.argv[2], sys.argv[3], chunk_seconds=float(sys.argv[4]))
    print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def _song(path, seconds: float) -> None:
    """A noise song written block by block (the test process itself stays small too)."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", SAMPLE_RATE, 2, subtype="PCM_16") as f:
        for _ in range(int(seconds / 5)):
            f.write((0.1 * rng.standard_normal((5 * SAMPLE_RATE, 2))).astype(np.float32))


def _peak_kb(ckpt, song, out, chunk_seconds: float) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(ckpt), str(song), str(out), str(chunk_seconds)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split("PEAK_KB")[-1])


def test_peak_memory_does_not_grow_with_the_song(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", slices=16)  # short slices: little context per chunk
    peaks = {}
    for seconds in (20, 120):
        _song(tmp_path / f"song{seconds}.wav", seconds)
        peaks[seconds] = _peak_kb(ckpt, tmp_path / f"song{seconds}.wav", tmp_path / f"out{seconds}", chunk_seconds=2.0)
        assert sf.info(tmp_path / f"out{seconds}" / "vocals.wav").frames == seconds * SAMPLE_RATE
    assert peaks[120] < 1.10 * peaks[20], peaks
