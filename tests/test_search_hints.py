"""What Ray Tune prints of its own is not the study's: no experiment table, no local results path
(without s3://), no TensorBoard hint (TensorBoard is not a dependency), no `Tuner.restore(...)`."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import logging
from ray import tune
from samsnet_search.search.runner import quiet_tune_output, ray_session

def trainable(config):
    tune.report({"loss": config["x"]})

quiet_tune_output()  # what run_study does before a fit
with ray_session(num_cpus=1, quiet=True):
    run = tune.RunConfig(name="hints", storage_path=sys.argv[1], verbose=0)
    tune.Tuner(trainable, param_space={"x": tune.grid_search([1, 2])}, run_config=run).fit()
    logging.getLogger("ray.tune.tune").warning(  # Tune's words after an interrupted fit
        "Experiment has been interrupted, but the most recent state was saved.\\n"
        "Resume experiment with: Tuner.restore(path=..., trainable=...)"
    )
print("fitted")
"""


def test_a_fit_prints_none_of_tunes_hints(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", "import sys\n" + CODE, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    said = out.stdout + out.stderr
    assert out.returncode == 0 and "fitted" in out.stdout, said[-2000:]
    for hint in ("Configuration for experiment", "View detailed results here", "TensorBoard", "Tuner.restore"):
        assert hint not in said, said[-2000:]
