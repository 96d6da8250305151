"""W^O over the joined slices vs. inside each slice (`model.w_o_scope`): quickstart-size training runs.

Trains both readings with three seeds on the tests' synthetic set (`tests/conftest.py` SYNTH) and
prints one JSON line per run: best valid loss, the last validation SDR, seconds, load average.
The README's table ("W^O joined or per slice, measured") came from this script:

    PYTHONPATH=. python scripts/w_o_scope_compare.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from conftest import SYNTH  # noqa: E402  (the tests' synthetic set, so the numbers are reproducible)

from samsnet_search.config import ExperimentConfig  # noqa: E402
from samsnet_search.data.synth import synthesize  # noqa: E402
from samsnet_search.engine.train import Trainer  # noqa: E402

MODEL = {"n_fft": 2048, "hop_length": 1024, "slices": 4, "heads": 2, "channels": 8, "depth": 1}
DATA = {"segment_seconds": 1.0, "samples_per_track": 12, "valid_seconds": 3.0}
TRAIN = {"lr": 3e-3, "batch_size": 4, "epochs": 4, "patience": 2, "valid_sdr_every": 2, "device": "cpu", "threads": 2}

if __name__ == "__main__":
    root = synthesize(Path(tempfile.mkdtemp()), **SYNTH)
    for seed in (0, 1, 2):
        for scope in ("joined", "slice"):
            cfg = ExperimentConfig.model_validate(
                {
                    "model": {**MODEL, "w_o_scope": scope},
                    "data": {**DATA, "root": str(root)},
                    "train": {**TRAIN, "seed": seed},
                }
            )
            load, start = os.getloadavg()[0], time.perf_counter()
            summary = Trainer(cfg, Path(tempfile.mkdtemp())).fit()
            row = {
                "scope": scope,
                "seed": seed,
                "seconds": round(time.perf_counter() - start, 1),
                "load1": [round(load, 2), round(os.getloadavg()[0], 2)],
                "best_valid_loss": summary.best_valid_loss,
                "best_epoch": summary.best_epoch,
                "valid_sdr_last": summary.history[-1].get("valid_sdr"),
            }
            print(json.dumps(row), flush=True)
