"""Study files: the core's model/data/train configs where any field may be a distribution.

A study YAML has the sections `model`, `data` and `train` (the fields of `ModelConfig`,
`DataConfig` and `TrainConfig`; each a fixed value or one of `{choice: [...]}`,
`{int: [low, high], step: 1, log: false}`, `{uniform: [low, high]}`,
`{loguniform: [low, high]}`), plus the study-level sections `search`, `resources`,
`selection`, `storage` and `tracking`, and an optional `name` (default: the file stem).

`load_study` checks everything before a trial starts: unknown keys, wrong types, empty
choices, bad ranges, every value a distribution can take (alone and in every corner
combination with the others, so that `slices` is checked against the shortest segment it
can be paired with), the data folder and the study-level settings. Each problem is a
`ConfigError` line `FILE: key.path: what is wrong (what is valid)`.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Union
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config import (
    SAMPLE_RATE,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    Strict,
    TrainConfig,
    did_you_mean,
    format_validation_error,
    known_keys,
    parse_yaml,
    read_yaml_text,
    validate_model,
)
from ..data.splits import load_splits
from ..errors import ConfigError, DataError
from . import gpu_fit, identity, schedulers, searchers
from . import objectives as objective_table

log = logging.getLogger(__name__)

Scalar = Union[bool, int, float, str, None]
SECTIONS: dict[str, type[BaseModel]] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
DIST_KEYS = ("choice", "int", "uniform", "loguniform")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
# Path-valued fields: relative values are resolved against the folder the study is run from.
PATH_FIELDS = ("data.root", "data.cache_dir")
# Joint checks try every corner combination of the searched ranges; past this many the
# space is too large to check exhaustively and is refused rather than half-checked.
MAX_CORNER_COMBINATIONS = 65536
# Integer ranges up to this many values are checked value by value (parity, limits).
ENUMERATE_INT_VALUES = 256


# --- distributions -------------------------------------------------------------------


class Distribution(BaseModel):
    """A searched hyperparameter. Subclasses hold the YAML form (`{choice: [...]}` etc.)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def check_values(self) -> list[Any]:
        """Every value this distribution can produce, or the extremes of a continuous range."""
        raise NotImplementedError

    def corners(self) -> list[Any]:
        """Values that bound any monotone constraint: min and max (all values if categorical)."""
        raise NotImplementedError

    def representative(self) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def to_tune(self) -> Any:
        """This distribution as a Ray Tune domain (`tune.choice`, `tune.randint`, ...), inclusive bounds."""
        raise NotImplementedError

    def to_optuna(self) -> Any:
        """This distribution as an Optuna distribution (inclusive bounds)."""
        raise NotImplementedError

    def grid_values(self) -> list[Any]:
        """Every value, for a grid search; continuous ranges have none."""
        raise ValueError(f"{self.describe()} is continuous: no grid")

    @property
    def size(self) -> int | None:
        """Number of distinct values, None for continuous ranges."""
        return None

    @property
    def categorical(self) -> bool:
        """Unordered values (a choice): searchers that model a numeric space cannot sample it."""
        return False


class Choice(Distribution):
    choice: list[Scalar] = Field(min_length=1, description="values tried (categorical)")

    @model_validator(mode="after")
    def _distinct(self) -> "Choice":
        if len(set(map(repr, self.choice))) != len(self.choice):
            raise ValueError(f"choice values must be distinct, got {self.choice}")
        return self

    def check_values(self) -> list[Any]:
        return list(self.choice)

    def corners(self) -> list[Any]:
        numeric = [v for v in self.choice if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numeric) == len(self.choice) and len(numeric) > 2:
            return sorted({min(numeric), max(numeric)})
        return list(self.choice)

    def representative(self) -> Any:
        return self.choice[0]

    def describe(self) -> str:
        return f"choice {self.choice}"

    def to_tune(self) -> Any:
        return _tune().choice(list(self.choice))

    def to_optuna(self) -> Any:
        return _optuna().CategoricalDistribution(list(self.choice))

    def grid_values(self) -> list[Any]:
        return list(self.choice)

    @property
    def size(self) -> int:
        return len(self.choice)

    @property
    def categorical(self) -> bool:
        return True


class IntRange(Distribution):
    int_: tuple[int, int] = Field(alias="int", description="[low, high], both inclusive")
    step: int = Field(1, gt=0)
    log: bool = False

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _check(self) -> "IntRange":
        low, high = self.int_
        if low > high:
            raise ValueError(f"int range [{low}, {high}]: low must not exceed high")
        if self.log and low <= 0:
            raise ValueError(f"int range [{low}, {high}] with log: true needs low > 0")
        if self.log and self.step != 1:
            raise ValueError("int range: log: true cannot be combined with step > 1 (Optuna samples either)")
        if (high - low) % self.step:
            raise ValueError(f"int range [{low}, {high}]: high - low must be a multiple of step={self.step}")
        return self

    @property
    def low(self) -> int:
        return self.int_[0]

    @property
    def high(self) -> int:
        return self.int_[1]

    @property
    def size(self) -> int:
        return (self.high - self.low) // self.step + 1

    def check_values(self) -> list[Any]:
        if self.size <= ENUMERATE_INT_VALUES:
            return list(range(self.low, self.high + 1, self.step))
        # Ends and their neighbours: catches limits and parity without listing a huge range.
        return sorted({self.low, self.low + self.step, self.high - self.step, self.high})

    def corners(self) -> list[Any]:
        return sorted({self.low, self.high})

    def representative(self) -> Any:
        return self.low

    def describe(self) -> str:
        extra = (f", step {self.step}" if self.step != 1 else "") + (", log" if self.log else "")
        return f"int [{self.low}, {self.high}]{extra}"

    def to_tune(self) -> Any:
        tune = _tune()
        if self.log:
            return tune.lograndint(self.low, self.high + 1)  # upper bound exclusive in Ray
        if self.step != 1:
            return tune.qrandint(self.low, self.high, self.step)  # inclusive when quantized
        return tune.randint(self.low, self.high + 1)

    def to_optuna(self) -> Any:
        return _optuna().IntDistribution(self.low, self.high, step=self.step, log=self.log)

    def grid_values(self) -> list[Any]:
        return list(range(self.low, self.high + 1, self.step))


class Uniform(Distribution):
    uniform: tuple[float, float] = Field(description="[low, high]")

    @model_validator(mode="after")
    def _check(self) -> "Uniform":
        low, high = self.uniform
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise ValueError(f"uniform range [{low}, {high}]: need finite low < high")
        return self

    def check_values(self) -> list[Any]:
        return list(self.uniform)

    def corners(self) -> list[Any]:
        return list(self.uniform)

    def representative(self) -> Any:
        return self.uniform[0]

    def describe(self) -> str:
        return f"uniform [{self.uniform[0]:g}, {self.uniform[1]:g}]"

    def to_tune(self) -> Any:
        return _tune().uniform(*self.uniform)

    def to_optuna(self) -> Any:
        return _optuna().FloatDistribution(*self.uniform)


class LogUniform(Distribution):
    loguniform: tuple[float, float] = Field(description="[low, high], low > 0")

    @model_validator(mode="after")
    def _check(self) -> "LogUniform":
        low, high = self.loguniform
        if not (math.isfinite(low) and math.isfinite(high)) or not 0 < low < high:
            raise ValueError(f"loguniform range [{low}, {high}]: need finite 0 < low < high")
        return self

    def check_values(self) -> list[Any]:
        return list(self.loguniform)

    def corners(self) -> list[Any]:
        return list(self.loguniform)

    def representative(self) -> Any:
        return self.loguniform[0]

    def describe(self) -> str:
        return f"loguniform [{self.loguniform[0]:g}, {self.loguniform[1]:g}]"

    def to_tune(self) -> Any:
        return _tune().loguniform(*self.loguniform)

    def to_optuna(self) -> Any:
        return _optuna().FloatDistribution(*self.loguniform, log=True)


def _tune():
    from ray import tune  # lazy: loading and checking a study (show, validation) must not pay for Ray

    return tune


def _optuna():
    import optuna.distributions  # lazy: as for Ray, only the search itself needs Optuna

    return optuna.distributions


DIST_CLASSES: dict[str, type[Distribution]] = {
    "choice": Choice,
    "int": IntRange,
    "uniform": Uniform,
    "loguniform": LogUniform,
}


def is_distribution(value: Any) -> bool:
    """A dict with one of the distribution keys is a distribution, any other dict a section."""
    return isinstance(value, dict) and any(k in value for k in DIST_KEYS)


def parse_distribution(value: dict, key: str, source: str) -> Distribution:
    kinds = [k for k in DIST_KEYS if k in value]
    if len(kinds) > 1:
        raise ConfigError(f"{source}: {key}: a distribution has exactly one of {list(DIST_KEYS)}, got {kinds}")
    cls = DIST_CLASSES[kinds[0]]
    try:
        return cls.model_validate(value)
    except ValidationError as e:
        raise ConfigError(_prefixed(e, source, key, cls)) from None


def _prefixed(err: ValidationError, source: str, key: str, cls: type[BaseModel]) -> str:
    """Validation lines of a nested object, with the study key path in front."""
    lines = format_validation_error(err, source, cls).splitlines()
    out = []
    for line in lines:
        rest = line[len(source) + 2 :]
        sub, _, msg = rest.partition(": ")
        path = key if sub == "<top level>" else f"{key}.{sub}"
        out.append(f"{source}: {path}: {msg}")
    return "\n".join(out)


# --- study-level settings ------------------------------------------------------------


class SearchSettings(Strict):
    """How trials are proposed, scheduled and compared.

    Metric and objective names and their directions come from the objectives table
    (`objectives.OBJECTIVES`), searcher and scheduler names from their registries
    (`searchers.SEARCHERS`, `schedulers.SCHEDULERS`), whose entries also check a study's space.
    """

    metric: str = Field(
        "valid_loss",
        description="the quality metric, compared every epoch: "
        + ", ".join(
            f"{o.name} ({o.mode}{f'; needs {o.every}: 1' if o.every else ''})"
            for o in objective_table.OBJECTIVES.values()
            if o.kind == "quality"
        ),
    )
    mode: Literal["min", "max"] | None = Field(None, description="default: the metric's direction (objectives table)")
    objectives: list[str] | None = Field(
        None,
        description=f"multi-objective search: the quality metric first ({', '.join(objective_table.names('quality'))}), "
        f"then costs ({', '.join(objective_table.names('cost'))}); Optuna's multi-objective TPE proposes trials and "
        "the report shows the Pareto front",
    )
    num_samples: int = Field(16, gt=0, description="trials to run")
    seed: int = Field(0, description="seeds the searcher")
    searcher: str = Field(
        "optuna", description="; ".join(f"{e.name}: {e.description}" for e in searchers.SEARCHERS.values())
    )
    scheduler: str = Field(
        "asha",
        description="; ".join(f"{e.name}: {e.description}" for e in schedulers.SCHEDULERS.values())
        + "; default: asha, or fifo when objectives are set (the schedulers rank on the quality metric alone)",
    )
    grace_period: int = Field(1, gt=0, description="ASHA, median: epochs before a trial can be stopped")
    reduction_factor: float = Field(
        2.0, gt=1, description="ASHA, HyperBand: keep 1/reduction_factor of trials per rung"
    )
    max_t: int | None = Field(None, gt=0, description="ASHA, HyperBand: epochs at most; default: train.epochs")
    max_concurrent_trials: int | None = Field(None, gt=0, description="default: as many as resources allow")
    time_budget_s: float | None = Field(None, gt=0, description="stop starting/continuing trials after this")
    max_failures: int = Field(0, ge=0, description="retries of a failed trial from its last checkpoint")
    worker_retries: int = Field(
        3,
        ge=0,
        description="retries of a trial whose worker process died (OOM killer, lost node), from its last "
        "checkpoint; not counted in max_failures",
    )
    infra_retry_s: float = Field(
        300.0, ge=0, description="seconds a trial waits out a storage or tracking outage (retrying) before it fails"
    )
    warm_start: list[str] = Field(
        default_factory=list,
        description="earlier studies (names in the same storage, or folders) whose trials the searcher is told "
        "of as already evaluated: same parameter names, values inside this study's ranges",
    )
    checkpoints_to_keep: int = Field(
        1, gt=0, description="best N by metric; the latest and a margin of 2 (for resuming after a crash) are kept too"
    )

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        quality = objective_table.names("quality")
        if value not in quality:
            raise ValueError(f"not a quality metric; valid: {' or '.join(quality)}")
        return value

    @field_validator("searcher")
    @classmethod
    def _known_searcher(cls, value: str) -> str:
        if value not in searchers.SEARCHERS:
            raise ValueError(f"not a searcher; valid: {', '.join(searchers.SEARCHERS)}")
        return value

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str) -> str:
        if value not in schedulers.SCHEDULERS:
            raise ValueError(f"not a scheduler; valid: {', '.join(schedulers.SCHEDULERS)}")
        return value

    @property
    def resolved_mode(self) -> str:
        return self.mode or objective_table.mode_of(self.metric)

    @property
    def objective_modes(self) -> dict[str, str]:
        """{objective: min|max} in the order given; the single metric when no objectives are set."""
        return {name: objective_table.mode_of(name) for name in self.objectives or [self.metric]}

    @property
    def multi_objective(self) -> bool:
        return bool(self.objectives)

    @model_validator(mode="before")
    @classmethod
    def _defaults_from_objectives(cls, data: Any) -> Any:
        """With objectives: the first is the study metric (unless metric: says otherwise, checked
        below), and the scheduler defaults to fifo (the schedulers compare one metric only)."""
        if not (isinstance(data, dict) and isinstance(data.get("objectives"), list) and data["objectives"]):
            return data
        data = {"scheduler": "fifo", **data}
        if "metric" not in data and data["objectives"][0] in objective_table.names("quality"):
            data["metric"] = data["objectives"][0]
        return data

    @model_validator(mode="after")
    def _check(self) -> "SearchSettings":
        expected = objective_table.mode_of(self.metric)
        if self.mode is not None and self.mode != expected:
            raise ValueError(f"mode: {self.metric} is compared with mode {expected}, got {self.mode}")
        if self.max_t is not None and self.grace_period > self.max_t:
            raise ValueError(f"grace_period ({self.grace_period}) must not exceed max_t ({self.max_t})")
        if self.objectives is not None:
            _check_objectives(self.objectives, self.metric)
        return self


def _check_objectives(names: list[str], metric: str) -> None:
    quality, costs = objective_table.names("quality"), objective_table.names("cost")
    valid_quality, valid_cost = " or ".join(quality), ", ".join(costs)
    if len(names) < 2:
        raise ValueError(
            f"objectives: name the quality metric ({valid_quality}) and at least one cost ({valid_cost}); "
            f"got {names} (for one objective use metric: instead)"
        )
    if names[0] not in quality:
        raise ValueError(f"objectives: the first must be the quality metric ({valid_quality}), got {names[0]!r}")
    if names[0] != metric:
        raise ValueError(f"objectives: the first objective {names[0]!r} differs from metric: {metric!r} (drop metric:)")
    for name in names[1:]:
        if name not in costs:
            raise ValueError(
                f"objectives: {name!r} is not a cost objective; valid after the quality metric: {valid_cost}"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"objectives: {names} names an objective twice")


class Resources(Strict):
    """What one trial reserves on a Ray node."""

    cpu: float = Field(1.0, gt=0, description="CPUs per trial (also torch threads when train.threads is unset)")
    gpu: float = Field(0.0, ge=0, description="GPUs per trial; fractions (0.5) share a GPU between trials")
    gpu_memory_gb: float | None = Field(
        None,
        gt=0,
        description="memory of one GPU in GB (1e9 bytes; A10G: 24, H100: 80): validate refuses a study whose "
        "largest trial cannot fit its share (gpu x gpu_memory_gb); null: not checked",
    )
    custom: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources per trial ({name: amount}), e.g. a slot that `ray start --resources` gives nodes",
    )

    @model_validator(mode="after")
    def _check(self) -> "Resources":
        if self.gpu > 1 and self.gpu != int(self.gpu):
            raise ValueError(f"gpu: fractions are only possible below 1, got {self.gpu}")
        if self.gpu > 1:  # a second GPU would idle and be billed: training has no multi-GPU (DDP) mode
            raise ValueError(f"gpu: a trial trains on one GPU; use gpu: 1, or a fraction to share one (got {self.gpu})")
        for name, amount in self.custom.items():
            # CPU/GPU/memory have their own keys; Ray would double-book them under custom.
            if not name or name.lower() in ("cpu", "gpu", "memory", "object_store_memory"):
                raise ValueError(f"custom: {name!r} is not a custom resource name (use cpu: / gpu: for those)")
            if not amount > 0:
                raise ValueError(f"custom.{name}: amount must be > 0, got {amount}")
        return self


class SelectionSettings(Strict):
    """The slice-count selection after the search (retraining the best per slice value)."""

    seeds: int = Field(3, ge=3, description="seeds per contender (at least 3, for an interval)")
    epochs: int | None = Field(None, gt=0, description="retraining budget; default: train.epochs")
    bootstrap: int = Field(2000, gt=0, description="bootstrap resamples over (track x seed)")
    confidence: float = Field(0.95, gt=0, lt=1, description="interval coverage")
    valid_backend: Literal["fast", "museval"] = Field(
        "fast", description="BSSEval v4 for the full validation tracks (fast: same numbers, much quicker)"
    )
    test_backend: Literal["fast", "museval"] = Field(
        "fast",
        description="BSSEval v4 for the winner's test score (SDR): fast, the exact re-implementation, equal to "
        "museval within 0.01 dB (engine.evaluate.FAST_PROOF) and 18-37x quicker; museval: the reference itself",
    )
    listen_seconds: float = Field(5.0, ge=0, description="seconds of the winner's test stems logged as wav; 0: none")
    wiener: int = Field(
        1,
        ge=0,
        description="the test set is also scored after this many Wiener filter EM "
        "iterations (beside the paper's plain masks); 0: plain masks only",
    )
    wiener_start: Literal["softmask", "magnitudes"] = Field(
        "softmask",
        description="the Wiener filter's first estimates: softmask (norbert's default) or magnitudes "
        "(the masked magnitudes with the mixture's phase: open-unmix's default)",
    )
    enabled: bool = Field(True, description="false: `run` stops after the search (no retraining)")


class TrackingSettings(Strict):
    """MLflow: a folder (embedded store, nothing to start) or a server / database URI."""

    uri: str = Field("./mlruns", description="folder, sqlite:///..., or http(s)://host:port of an mlflow server")
    system_metrics: bool = Field(True, description="CPU/GPU/memory utilization per trial run")
    system_metrics_interval_s: float = Field(10.0, gt=0, description="sampling interval")

    @model_validator(mode="after")
    def _check(self) -> "TrackingSettings":
        parts = urlsplit(self.uri)
        if parts.username or parts.password:
            raise ValueError(
                "uri: credentials in the URI would be logged; set MLFLOW_TRACKING_USERNAME / "
                "MLFLOW_TRACKING_PASSWORD (or a token) in the environment instead"
            )
        return self


class EstimateSettings(Strict):
    """The unsupervised slice estimate (samsnet_search.search.estimate) before the search."""

    enabled: bool = Field(
        False, description="compute the estimate on the training mixtures and log it to the parent run"
    )
    use: Literal["none", "seed", "narrow"] = Field(
        "none",
        description="none: report only; seed: try the estimated slice count first (points_to_evaluate); "
        "narrow: search only the model.slices choices inside the estimate's interquartile range",
    )
    max_tracks: int | None = Field(None, gt=0, description="estimate from the first N training tracks only")

    @model_validator(mode="after")
    def _check(self) -> "EstimateSettings":
        if self.use != "none" and not self.enabled:
            raise ValueError(f"use: {self.use} needs enabled: true")
        return self


class StudySpec(Strict):
    """The YAML file as written (distributions unparsed in model/data/train)."""

    name: str | None = Field(None, description="default: the file stem")
    description: str | None = None
    model: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    search: SearchSettings = Field(default_factory=SearchSettings)
    resources: Resources = Field(default_factory=Resources)
    selection: SelectionSettings = Field(default_factory=SelectionSettings)
    storage: str = Field(
        "./runs", description="local folder or s3://bucket/prefix[?endpoint_override=host:port&scheme=http]"
    )
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    estimate: EstimateSettings = Field(default_factory=EstimateSettings)

    @model_validator(mode="after")
    def _check(self) -> "StudySpec":
        if self.name is not None and not NAME_RE.match(self.name):
            raise ValueError(
                f"name: {self.name!r} is not a valid study name (letters, digits, '.', '_', '-'; "
                "starting with a letter or digit; at most 100 characters)"
            )
        scheme = urlsplit(self.storage).scheme
        if scheme not in ("", "file", "s3") and not re.match(r"^[A-Za-z]$", scheme):
            raise ValueError(f"storage: scheme {scheme!r} is not supported (use a local folder or s3://bucket/prefix)")
        if urlsplit(self.storage).username or urlsplit(self.storage).password:
            raise ValueError("storage: credentials in the URI would be logged; use AWS_* environment variables")
        return self


# --- the resolved study --------------------------------------------------------------


@dataclass
class Study:
    """A validated study: fixed parts, searched distributions and settings.

    `base` is the nested fixed configuration (`{"model": {...}, "data": {...}, ...}`);
    `space` maps dotted keys (`model.slices`) to distributions.
    """

    name: str
    source: Path
    text: str
    spec: StudySpec
    base: dict[str, Any]
    space: dict[str, Distribution]
    base_dir: Path
    max_t: int = 0
    notes: list[str] = field(default_factory=list)
    # Configurations tried first (dotted keys, every searched key): the slice estimate's seed.
    points_to_evaluate: list[dict[str, Any]] = field(default_factory=list)
    # Warm start (search.warm_start): earlier trials' configurations and what the searcher saw of them.
    warm_points: list[dict[str, Any]] = field(default_factory=list)
    warm_rewards: list[Any] = field(default_factory=list)
    # Predicted GPU peaks of the space's smallest and largest trials; None without a GPU share.
    memory: gpu_fit.MemoryFit | None = None

    @property
    def search(self) -> SearchSettings:
        return self.spec.search

    @property
    def metric(self) -> str:
        return self.spec.search.metric

    @property
    def mode(self) -> str:
        return self.spec.search.resolved_mode

    @property
    def storage(self) -> str:
        """The storage root, absolute when local."""
        return resolve_storage(self.spec.storage, self.base_dir)

    @property
    def tracking_uri(self) -> str:
        return self.spec.tracking.uri

    def experiment(self, sample: dict[str, Any] | None = None) -> ExperimentConfig:
        """The ExperimentConfig of one sampled configuration (`{"model.slices": 4, ...}`)."""
        return validate_model(ExperimentConfig, merge(self.base, sample or {}), str(self.source))

    def representative(self) -> ExperimentConfig:
        return self.experiment({k: d.representative() for k, d in self.space.items()})

    def values(self, key: str) -> list[Any]:
        """Values a key can take: a distribution's checked values, else the fixed or default value."""
        if key in self.space:
            return self.space[key].check_values()
        try:
            return [get_path(self.representative().model_dump(), key)]
        except ConfigError:  # not valid yet: the raw value, for checks that guard their types
            try:
                return [get_path(self.base, key)]
            except (KeyError, TypeError):
                return [get_path(_DEFAULTS, key)]

    @property
    def max_epochs(self) -> int:
        return max(self.values("train.epochs"))


_DEFAULTS: dict[str, Any] = ExperimentConfig().model_dump()


def merge(base: dict[str, Any], sample: dict[str, Any]) -> dict[str, Any]:
    """Nested copy of `base` with dotted keys from `sample` set."""
    out = _deepcopy(base)
    for key, value in sample.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: cannot set inside {p!r}, which is not a section")
        node[leaf] = value
    return out


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def get_path(d: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        d = d[part]
    return d


def resolve_storage(storage: str, base_dir: Path) -> str:
    """Local storage becomes an absolute path; URIs (s3://...) stay as written."""
    parts = urlsplit(storage)
    if parts.scheme == "s3":
        return storage
    path = Path(parts.path if parts.scheme == "file" else storage).expanduser()
    return str(path if path.is_absolute() else (base_dir / path).resolve())


# --- loading and checking ------------------------------------------------------------


def load_study(path: str | Path, base_dir: str | Path | None = None, check_data: bool = True) -> Study:
    """Read and check a study file; relative paths in it resolve against `base_dir` (cwd)."""
    path = Path(path)
    text, raw = read_yaml_text(path)
    return parse_study(raw, text, path, Path(base_dir or Path.cwd()).resolve(), check_data=check_data)


def load_study_text(text: str, source: Path, base_dir: Path, check_data: bool = True) -> Study:
    """A study from its text (e.g. the copy kept in the study folder), with the same limits as a file."""
    return parse_study(parse_yaml(text, str(source)), text, source, base_dir, check_data=check_data)


def load_stored(manifest: identity.Manifest, check_data: bool = True) -> Study | None:
    """The study as it was started, from the file copy in its folder (paths resolved where it was
    first run); None when the copy is missing (each caller says what that means for it)."""
    text = identity.read_study_copy(manifest.path)
    if text is None:
        return None
    return load_study_text(text, Path(manifest.source), Path(manifest.base_dir), check_data=check_data)


def parse_study(raw: Any, text: str, source: Path, base_dir: Path, check_data: bool = True) -> Study:
    src = str(source)
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: <top level>: expected a mapping of sections, got {type(raw).__name__}")
    spec = validate_model(StudySpec, raw, src)
    base: dict[str, Any] = {}
    space: dict[str, Distribution] = {}
    for section in SECTIONS:
        fixed, dists = _split(getattr(spec, section), section, src)
        base[section] = fixed
        space.update(dists)
    _resolve_paths(base, base_dir)
    if not space:
        raise ConfigError(
            f"{src}: model/data/train: nothing is searched; make at least one field a distribution "
            "(e.g. model.slices: {choice: [1, 2, 4]})"
        )
    study = Study(
        name=spec.name or source.stem,
        source=source,
        text=text,
        spec=spec,
        base=base,
        space=space,
        base_dir=base_dir,
    )
    if not NAME_RE.match(study.name):
        raise ConfigError(f"{src}: name: the file stem {study.name!r} is not a valid study name; set name:")
    _check_slices(study)
    _check_fields(study)
    _check_corners(study)
    _check_settings(study)
    _check_memory(study)
    if check_data:
        _check_data(study)
    return study


def _split(section: dict[str, Any], prefix: str, src: str) -> tuple[dict[str, Any], dict[str, Distribution]]:
    """Separate fixed values from distributions, recursing into sub-sections (data.augment)."""
    fixed: dict[str, Any] = {}
    dists: dict[str, Distribution] = {}
    for key, value in section.items():
        dotted = f"{prefix}.{key}"
        if is_distribution(value):
            dists[dotted] = parse_distribution(value, dotted, src)
        elif isinstance(value, dict) and _is_value_field(dotted):
            raise ConfigError(_not_a_distribution(value, dotted, src))
        elif isinstance(value, dict):
            sub_fixed, sub_dists = _split(value, dotted, src)
            fixed[key] = sub_fixed
            dists.update(sub_dists)
        else:
            fixed[key] = value
    return fixed, dists


def _is_value_field(dotted: str) -> bool:
    """`model.slices` holds a value (or a distribution); `data.augment` is a section."""
    *parents, leaf = dotted.split(".")
    return leaf in known_keys(ExperimentConfig, tuple(parents)) and not known_keys(ExperimentConfig, (*parents, leaf))


def _not_a_distribution(value: dict, dotted: str, src: str) -> str:
    """A mapping where a value belongs: most often a misspelt distribution (`{choise: [...]}`)."""
    options = [k for k in value if k not in ("step", "log")]
    hint = did_you_mean(str(options[0]), list(DIST_KEYS)) if options else f" (valid: {', '.join(DIST_KEYS)})"
    return f"{src}: {dotted}: {{{', '.join(map(str, value))}}} is neither a value nor a distribution{hint}"


def _resolve_paths(base: dict[str, Any], base_dir: Path) -> None:
    """Ray workers run in their own folders: make relative data paths absolute now."""
    for key in PATH_FIELDS:
        section, name = key.split(".")
        value = base.get(section, {}).get(name)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            base[section][name] = str((base_dir / Path(value).expanduser()).resolve())


def _combo_note(combo: dict[str, Any]) -> str:
    if not combo:
        return ""
    return " [with " + ", ".join(f"{k}={v!r}" for k, v in combo.items()) + "]"


def _try(study: Study, combo: dict[str, Any]) -> str | None:
    """None if this combination builds a valid ExperimentConfig, else the annotated error."""
    values = {**{k: d.representative() for k, d in study.space.items()}, **combo}
    try:
        study.experiment(values)
    except ConfigError as e:
        return _annotate(str(e), values, study)
    return None


def _annotate(error: str, values: dict[str, Any], study: Study) -> str:
    """Say which distribution value a line is about: `... (value 0 of model.channels: int [0, 8])`."""
    prefix = f"{study.source}: "
    lines = []
    for line in error.splitlines():
        key = line[len(prefix) :].split(":", 1)[0] if line.startswith(prefix) else ""
        if key in study.space:
            line += f" (value {values[key]!r} of {key}: {study.space[key].describe()})"
        lines.append(line)
    return "\n".join(lines)


def _check_fields(study: Study) -> None:
    """The fixed parts, then every value of every distribution with the others at a representative value."""
    error = _try(study, {})
    if error:
        raise ConfigError(error)
    problems: list[str] = []
    for key, dist in study.space.items():
        for value in dist.check_values():
            error = _try(study, {key: value})
            if error:
                problems.append(error if key in error else f"{error} (value {value!r} of {key}: {dist.describe()})")
                break
    if problems:
        raise ConfigError("\n".join(problems))


def _check_slices(study: Study) -> None:
    """Every slice count against the fewest frames a training segment can have.

    Runs before the other checks so that the message lists all offending values; values
    of the wrong type are left to `_check_fields`, which names them.
    """
    hops, seconds, slices = (study.values(k) for k in ("model.hop_length", "data.segment_seconds", "model.slices"))
    if not all(_is_number(v) and v > 0 for v in hops + seconds + slices):
        return
    frames, s, h = min(
        (ModelConfig.model_construct(hop_length=h).frames(int(round(s * SAMPLE_RATE))), s, h)
        for s in seconds
        for h in hops
    )
    too_many = sorted(v for v in slices if v > frames)
    if too_many:
        raise ConfigError(
            f"{study.source}: model.slices: {too_many} can be larger than the {frames} STFT frames of a "
            f"training segment (data.segment_seconds={s} at model.hop_length={h}); valid: slices <= {frames}, "
            f"or a longer data.segment_seconds"
        )


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _corner_grid(study: Study) -> Iterator[dict[str, Any]]:
    keys = list(study.space)
    for values in itertools.product(*(study.space[k].corners() for k in keys)):
        yield dict(zip(keys, values))


def _check_corners(study: Study) -> None:
    """Cross-field rules (slices vs frames, hop vs n_fft, gain_min vs gain_max) are monotone,
    so checking every corner combination of the ranges checks every sample."""
    count = math.prod(len(d.corners()) for d in study.space.values())
    if count > MAX_CORNER_COMBINATIONS:
        raise ConfigError(
            f"{study.source}: model/data/train: {count} corner combinations of {len(study.space)} distributions "
            f"are too many to check (at most {MAX_CORNER_COMBINATIONS}); fix some fields"
        )
    for combo in _corner_grid(study):
        error = _try(study, combo)
        if error:
            raise ConfigError(error + _combo_note(combo))


def _check_settings(study: Study) -> None:
    src, s = study.source, study.search
    every = objective_table.get(s.metric).every
    if every is not None:
        bad = [v for v in study.values(every) if v != 1]
        if bad:
            raise ConfigError(
                f"{src}: {every}: search.metric {s.metric} is compared every epoch, so "
                f"{every.rsplit('.', 1)[-1]} must be 1 (got {bad})"
            )
    study.max_t = s.max_t or study.max_epochs
    schedulers.check(study)
    if s.grace_period > study.max_t:
        raise ConfigError(f"{src}: search.grace_period: {s.grace_period} exceeds max_t={study.max_t}")
    searchers.check(study)
    devices = set(study.values("train.device"))
    if "cuda" in devices and study.spec.resources.gpu == 0:
        raise ConfigError(
            f"{src}: train.device: cuda needs resources.gpu > 0 (a trial without a GPU share runs on CPU, "
            "and Ray schedules no GPU for it); set resources.gpu, or train.device: auto"
        )
    epochs = study.spec.selection.epochs
    if epochs is not None and epochs < 1:
        raise ConfigError(f"{src}: selection.epochs: must be positive")
    est = study.spec.estimate
    if est.use != "none" and not isinstance(study.space.get("model.slices"), (Choice, IntRange)):
        raise ConfigError(
            f"{src}: estimate.use: {est.use} needs model.slices to be searched as a choice or int range "
            "(it seeds or narrows that distribution)"
        )


def _memory_combos(study: Study) -> list[dict[str, Any]]:
    """Every corner of the keys that change a trial's memory, and every slice count (the padded
    frames of a slice count are not monotone in it); other keys at one value."""
    keys = [k for k in study.space if k.startswith(gpu_fit.MEMORY_KEYS)]
    values = [study.space[k].check_values() if k == "model.slices" else study.space[k].corners() for k in keys]
    fixed = {k: d.representative() for k, d in study.space.items() if k not in keys}
    return [{**fixed, **dict(zip(keys, combo))} for combo in itertools.product(*values)]


def _check_memory(study: Study) -> None:
    """The predicted peak of the largest trial against its GPU share (`gpu_fit`)."""
    resources = study.spec.resources
    if resources.gpu == 0:
        return
    study.memory = gpu_fit.extremes(_memory_combos(study), study.experiment)
    if resources.gpu_memory_gb is not None:
        study.memory = gpu_fit.check(
            study.memory, resources.gpu, resources.gpu_memory_gb, study.experiment, str(study.source)
        )


def _check_data(study: Study) -> None:
    """Each data root is a dataset whose splits serve the study: training, validation and test
    tracks (headers checked), so that a run never fails on its data after it has started."""
    roots = {str(v) for v in study.values("data.root")}
    for root in roots:
        cfg = study.representative().data.model_copy(update={"root": None if root == "None" else root})
        try:
            cfg.resolved_root()
        except ConfigError as e:
            hint = " (for synthetic data: samsnet-search data synth DIR, then data.root: DIR)"
            raise ConfigError(f"{study.source}: {e}{hint}") from None
        try:
            load_splits(cfg)
        except DataError as e:
            raise ConfigError(f"{study.source}: data.root: {cfg.resolved_root()} cannot serve the study: {e}") from None
