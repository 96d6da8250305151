"""Shared fixtures. Keep them generic: any test module may use them.

- `synth_root`: a tiny synthetic MUSDB18-HQ-format dataset, made once per session (read-only by
  convention: tests that modify data make their own copy or their own tree).
- `make_hq_track`: writes one MUSDB18-HQ track folder from arrays (for bad-data tests).
- `stem_example`: the MUSDB18-format excerpt that the stempeg wheel ships.
- `local_ray`: a context manager: environment variables set, then one small local Ray (workers
  inherit the environment); both undone on exit.

Every test session gets its own user folders (XDG_CONFIG_HOME, XDG_STATE_HOME): the study-state
signing key, the user config and the infra state never touch the real home.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import pytest
import soundfile as sf

SYNTH = dict(n_train=2, n_valid=2, n_test=2, seconds=8.0, seed=0, section_range=(1.5, 4.0))


@pytest.fixture(scope="session", autouse=True)
def _user_folders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    home = tmp_path_factory.mktemp("user")
    env = {"XDG_CONFIG_HOME": str(home / "config"), "XDG_STATE_HOME": str(home / "state")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/train: 2 training + 2 validation tracks, root/test: 2 tracks, 8 s each (params: SYNTH)."""
    from samsnet_search.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("synth"), **SYNTH)


@pytest.fixture
def make_hq_track() -> Callable[..., Path]:
    """make_hq_track(folder, stems=None, seconds=0.5, channels=2, rate=44100) -> folder.

    stems: (4, C, N) float32 in (vocals, drums, bass, other) order; default: quiet noise. The
    mixture is their sum. Files are float32 wav.
    """

    def make(
        folder: Path, stems: np.ndarray | None = None, seconds: float = 0.5, channels: int = 2, rate: int = 44100
    ) -> Path:
        if stems is None:
            rng = np.random.default_rng(len(str(folder)))
            stems = (0.05 * rng.standard_normal((4, channels, int(seconds * rate)))).astype(np.float32)
        folder.mkdir(parents=True, exist_ok=True)
        names = ("mixture", "vocals", "drums", "bass", "other")
        for name, audio in zip(names, [stems.sum(0), *stems]):
            sf.write(folder / f"{name}.wav", np.asarray(audio).T, rate, subtype="FLOAT")
        return folder

    return make


@pytest.fixture(scope="session")
def stem_example() -> Path:
    """`The Easton Ellises - Falcon 69.stem.mp4` (6 s, MUSDB18 stream layout) from the stempeg wheel."""
    import stempeg

    path = Path(stempeg.example_stem_path())
    if not path.is_file():
        pytest.skip(f"stempeg's example stem file is missing at {path}")
    return path


@contextmanager
def _env_and_local_ray(env: Mapping[str, str], num_gpus: int | None = None) -> Iterator[None]:
    """num_gpus: logical GPUs (none need exist): Ray assigns them to tasks that ask, so a test sees
    what a task asked for and got."""
    import ray

    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray.init(
        num_cpus=2,
        num_gpus=num_gpus,
        object_store_memory=200 * 1024**2,
        include_dashboard=False,
        configure_logging=False,
    )
    try:
        yield
    finally:
        ray.shutdown()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def local_ray() -> Callable[[Mapping[str, str]], Iterator[None]]:
    """`with local_ray(env): ...` for module fixtures that need one Ray with a given environment."""
    return _env_and_local_ray
