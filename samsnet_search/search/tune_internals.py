"""Everything the platform takes from Ray Tune and Optuna beyond their public API, in one place.

Resume, pruning tags, the checkpoint locator and the signed state files depend on how Tune lays
out a study folder and on two private scheduler attributes. Those names and files are stated
here, for the versions in VALIDATED (pyproject.toml pins Ray's minor to match), and `problems()`
checks each against the installed libraries. `tests/test_tune_internals.py` fails naming what
changed, and a driver on an unvalidated version logs the same list once at start.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from ray._private import ray_constants  # noqa: PLC2701  (Ray's only switch for a loopback node)
from ray.tune.schedulers import AsyncHyperBandScheduler

log = logging.getLogger(__name__)

VALIDATED = {"ray": "2.60", "optuna": "5.1"}  # minor versions this module was checked against

# --- Tune's study folder (Ray 2.60) -------------------------------------------------------
# Files of the study folder that Tune unpickles on restore, and each trial's error file.
STATE_FILES = (
    "tuner.pkl",
    "experiment_state-*.json",
    "searcher-state-*.pkl",
    "search_gen_state-*.json",
    "basic-variant-state-*.json",
    "callback-states-*.pkl",
)
EXPERIMENT_STATE = "experiment_state-*.json"  # the one state file that is JSON (trials embed cloudpickle)
TRIAL_STATE_FILES = ("error.pkl",)
CHECKPOINT_PREFIX = "checkpoint_"  # a trial's checkpoint folders: checkpoint_000003
RESULTS_FILE = "result.json"  # a trial's reported results, one JSON object per line
CHECKPOINT_KEY = "checkpoint_dir_name"  # the result key naming the epoch's checkpoint folder

# --- Ray's loggers the driver quiets or rewrites ------------------------------------------
AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
SYNC_LOGGERS = ("ray.train._internal.syncer", "ray.tune.execution.experiment_state")
STORAGE_LOGGER = "ray.train._internal.storage"
TRIAL_LOGGER = "ray.tune.execution.tune_controller"  # "Trial task failed ..." with the worker's traceback
TUNE_LOGGER = "ray.tune.tune"  # "Resume experiment with: Tuner.restore(...)" after an interrupted fit
# "0": Tune's legacy output engine, silent at verbose=0 (the new one prints its experiment table,
# a "View detailed results here" path and a TensorBoard hint at every fit).
NEW_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"


# --- private attributes -------------------------------------------------------------------


def time_attr(scheduler: Any) -> str:
    """The result key a Tune scheduler counts its budget in (AsyncHyperBand, HyperBand, median)."""
    return scheduler._time_attr


def staging_path(trial: Any) -> str:
    """The driver's local folder where Tune writes its state files before it uploads them."""
    return trial.storage.experiment_driver_staging_path


@contextmanager
def loopback_node() -> Iterator[None]:
    """While a local Ray starts, its node address may be 127.0.0.1: every server of it (GCS, raylet,
    workers, the dashboard and runtime-env agents, the Prometheus metrics exporters) then binds to
    loopback only.

    On Linux ray.init replaces a loopback `_node_ip_address` by the host's outward address
    (`ray._private.services.resolve_ip_for_localhost`) unless `ray_constants.ENABLE_RAY_CLUSTER` is
    off, as it is by default on macOS and Windows; its environment variable,
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER, is read once when Ray is imported, hence this switch for the
    start only. On the outward address the gRPC servers listen on every interface, and the three
    metrics exporters of a ray[default] install answer anyone on the network, without a token.
    tests/test_ray_sockets.py fails on a Ray where the node is not on loopback."""
    if not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        log.warning("Ray has no ray_constants.ENABLE_RAY_CLUSTER: this study's Ray may listen on every interface")
        yield
        return
    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def ray_token_file() -> Path:
    """Ray's token for a local cluster (`authentication_token_setup._get_default_token_path`)."""
    return Path.home() / ".ray" / "auth_token"


def keep_token_private() -> None:
    """Ray writes its token with the process umask (0644 under umask 022): whoever can enter the
    home folder could then use every Ray of this user. Made 0600 after a local start."""
    path = ray_token_file()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    if mode & 0o077:
        path.chmod(0o600)
        log.info("Ray's token %s was readable by others; it is now 0600", path)


class StopHook:
    """Mixin for Tune's HyperBandScheduler: `on_stop(trial)` hears of every trial the scheduler
    stops through the controller (a bracket's paused losers), which Tune does in a private method."""

    def on_stop(self, trial: Any) -> None:
        raise NotImplementedError

    def _process_bracket(self, tune_controller, bracket) -> str:
        return super()._process_bracket(_StopNoting(tune_controller, self.on_stop), bracket)


class _StopNoting:
    """A Tune controller whose `stop_trial` calls `on_stop` first (other calls pass through)."""

    def __init__(self, controller: Any, on_stop: Callable[[Any], None]):
        self._controller, self._on_stop = controller, on_stop

    def stop_trial(self, trial) -> None:
        self._on_stop(trial)
        self._controller.stop_trial(trial)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._controller, name)


# --- checks -------------------------------------------------------------------------------


def unvalidated() -> list[str]:
    """Installed versions other than VALIDATED, one line each."""
    out = []
    for package, minor in VALIDATED.items():
        version = importlib.metadata.version(package)
        if ".".join(version.split(".")[:2]) != minor:
            out.append(f"{package} {version} (validated: {minor}.x)")
    return out


def problems() -> list[str]:
    """Each internal this module names that the installed Ray / Optuna no longer has, one line each."""
    out = [f"{what}: {why}" for what, check in _CHECKS for why in [_run(check)] if why]
    return out


def _run(check: Callable[[], str | None]) -> str | None:
    try:
        return check()
    except Exception as e:  # an import or attribute that moved is exactly what is reported
        return f"{type(e).__name__}: {e}"


def _attr(module: str, name: str, expected: Any = None) -> Callable[[], str | None]:
    def check() -> str | None:
        value = getattr(importlib.import_module(module), name.split(".")[0])
        for part in name.split(".")[1:]:
            value = getattr(value, part)
        return None if expected is None or value == expected else f"is {value!r}, expected {expected!r}"

    return check


def _has_method(module: str, cls: str, method: str) -> Callable[[], str | None]:
    def check() -> str | None:
        return None if callable(getattr(getattr(importlib.import_module(module), cls), method, None)) else "missing"

    return check


def _module(name: str) -> Callable[[], str | None]:
    return lambda: None if importlib.util.find_spec(name) is not None else "no such module"


def _token_file() -> str | None:
    from ray._private.authentication import authentication_token_setup as setup  # noqa: PLC2701  # lazy: checked only

    found = setup._get_default_token_path()
    return None if found == ray_token_file() else f"Ray keeps its token at {found}, not {ray_token_file()}"


def _scheduler_time_attr() -> str | None:
    value = getattr(AsyncHyperBandScheduler(time_attr="epoch", max_t=4), "_time_attr", None)
    return None if value == "epoch" else f"AsyncHyperBandScheduler(time_attr='epoch')._time_attr is {value!r}"


_CHECKS: list[tuple[str, Callable[[], str | None]]] = [
    ("tuner.pkl", _attr("ray.tune.impl.tuner_internal", "_TUNER_PKL", "tuner.pkl")),
    (
        "experiment_state-*.json",
        _attr("ray.tune.execution.tune_controller", "TuneController.CKPT_FILE_TMPL", "experiment_state-{}.json"),
    ),
    ("searcher-state-*.pkl", _attr("ray.tune.search.searcher", "Searcher.CKPT_FILE_TMPL", "searcher-state-{}.pkl")),
    (
        "search_gen_state-*.json",
        _attr("ray.tune.search.search_generator", "SearchGenerator.CKPT_FILE_TMPL", "search_gen_state-{}.json"),
    ),
    (
        "basic-variant-state-*.json",
        _attr("ray.tune.search.basic_variant", "BasicVariantGenerator.CKPT_FILE_TMPL", "basic-variant-state-{}.json"),
    ),
    ("callback-states-*.pkl", _attr("ray.tune.callback", "CallbackList.CKPT_FILE_TMPL", "callback-states-{}.pkl")),
    ("error.pkl", _attr("ray.air.constants", "EXPR_ERROR_PICKLE_FILE", "error.pkl")),
    ("result.json", _attr("ray.air.constants", "EXPR_RESULT_FILE", RESULTS_FILE)),
    ("checkpoint_dir_name", _attr("ray.train.constants", "CHECKPOINT_DIR_NAME", CHECKPOINT_KEY)),
    ("checkpoint folders", _attr("ray.train._internal.storage", "StorageContext._make_checkpoint_dir_name")),
    ("staging folder", _attr("ray.train._internal.storage", "StorageContext.experiment_driver_staging_path")),
    ("scheduler time attribute", _scheduler_time_attr),
    ("token file", _token_file),
    ("loopback node switch", _attr("ray._private.ray_constants", "ENABLE_RAY_CLUSTER")),
    ("HyperBand bracket stops", _has_method("ray.tune.schedulers", "HyperBandScheduler", "_process_bracket")),
    ("legacy output switch", _attr("ray.tune.experimental.output", "get_air_verbosity")),
    *[
        (f"logger {name}", _module(name))
        for name in (AUTH_LOGGER, *SYNC_LOGGERS, STORAGE_LOGGER, TRIAL_LOGGER, TUNE_LOGGER)
    ],
]


def warn_if_unvalidated() -> None:
    """One warning at a driver's start when Ray or Optuna is not a validated version."""
    if unvalidated():
        found = problems()
        log.warning(
            "not validated with %s: resume, pruning tags and the checkpoint locator rely on Tune internals (%s)",
            ", ".join(unvalidated()),
            "; ".join(found) if found else "all found; behaviour unchecked",
        )
