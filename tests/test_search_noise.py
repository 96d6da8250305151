"""A normal run says what matters: Ray's per-start token-auth notice is not repeated to the user,
and a trial that an outage ended is one line on the driver, not Tune's copy of its traceback."""

from __future__ import annotations

import inspect
import io
import logging
import subprocess
import sys

import ray
from ray.exceptions import RayTaskError
from ray.tune.execution.tune_controller import TuneController

from samsnet_search.search import runner, tune_internals
from samsnet_search.services.faults import InfraUnavailable

CODE = """
from samsnet_search.search.runner import ray_session
with ray_session(num_cpus=1, quiet=True):
    import ray
    assert ray.is_initialized()
print("started")
"""


def test_local_ray_starts_without_the_token_auth_banner():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and "started" in out.stdout, out.stderr[-2000:]
    assert "Token authentication is enabled" not in out.stderr


# --- Tune's "Trial task failed" record (TuneController._trial_task_failure) ---------------

WORKER_TRACEBACK = """Traceback (most recent call last):
  File "/app/samsnet_search/search/trial.py", line 262, in train_trial
    train_tracked(cfg, run, workdir, resume=resume, enrich=best.update, publish=publish, fence=fence)
  File "/app/samsnet_search/services/faults.py", line 121, in retry
    raise InfraUnavailable(
"""


def tune_logs_a_failed_trial(cause: Exception) -> str:
    """What Tune's logger prints for a trial task that raised `cause`, with the driver's filter on."""
    traceback = WORKER_TRACEBACK + f"{type(cause).__name__}: {cause}"
    error = RayTaskError("ImplicitFunc.train", traceback, cause).as_instanceof_cause()
    logger = logging.getLogger(tune_internals.TRIAL_LOGGER)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger.addHandler(handler)
    logger.addFilter(runner._trial_outage_one_line)
    try:
        logger.error("Trial task failed for trial train_trial_1a2b3c4d", exc_info=error)  # as Tune 2.60 logs it
    finally:
        logger.removeFilter(runner._trial_outage_one_line)
        logger.removeHandler(handler)
    return out.getvalue()


def test_tune_logs_a_failed_trial_where_the_filter_expects():
    assert TuneController.__module__ == tune_internals.TRIAL_LOGGER
    assert f'logger.error(f"{runner.RAY_TRIAL_FAILED} for trial' in inspect.getsource(
        TuneController._trial_task_failure
    ), f"Ray {ray.__version__} logs a failed trial differently: update runner._trial_outage_one_line"


def test_a_trial_outage_is_one_line_on_the_driver():
    """An outage that outlasted the trial's retries: one line naming it, not the worker's traceback."""
    outage = InfraUnavailable(
        "storing the checkpoint of epoch 3: still failing after 300 s of retries "
        "(OSError: When uploading part for key 'e2e/trial_1a2b3c4d/checkpoint_000002/model.pt': "
        "AWS Error NETWORK_CONNECTION during UploadPart operation: curlCode: 7, Couldn't connect to server)"
    )
    text = tune_logs_a_failed_trial(outage)
    assert text == (
        "Trial task failed for trial train_trial_1a2b3c4d: InfraUnavailable: storing the checkpoint of epoch 3: "
        "still failing after 300 s of retries (OSError: When uploading part for key "
        "'e2e/trial_1a2b3c4d/checkpoint_000002/model.pt': AWS Error NETWORK_CONNECTION during UploadPart "
        "operation: curlCode: 7, Couldn't connect to server) (traceback: error.txt in the trial's folder)\n"
    )


def test_a_trial_s_own_error_keeps_its_traceback():
    text = tune_logs_a_failed_trial(ValueError("loss became nan in epoch 2"))
    assert text.startswith("Trial task failed for trial train_trial_1a2b3c4d\nray.exceptions.RayTaskError(ValueError)")
    assert 'samsnet_search/search/trial.py", line 262' in text and "ValueError: loss became nan in epoch 2" in text
