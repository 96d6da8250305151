"""Typed configuration: one set of pydantic models for `train`, and wrapped by study files.

Every model forbids unknown keys. Defaults are the paper's (Li et al. 2020) unless a
comment says otherwise. `load_yaml_model` turns any validation problem into a
`ConfigError` that names the file, the key path and what would be valid.
"""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError

TARGETS: tuple[str, ...] = ("vocals", "drums", "bass", "other")
SAMPLE_RATE = 44100
PAPER_SLICES: tuple[int, ...] = (1, 2, 4, 8, 12, 16, 18, 24)  # the slice counts of the paper's Table 2


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Strict):
    """Sams-Net hyperparameters (paper section 3)."""

    n_fft: int = Field(4096, gt=0, description="STFT frame (Hamming window); paper: 4096")
    hop_length: int = Field(1024, gt=0, description="STFT hop; paper: 1024")
    audio_channels: int = Field(2, gt=0, description="stereo input")
    channels: int = Field(64, gt=0, description="d_k: feature maps per head and between modules; paper: 64")
    heads: int = Field(2, gt=0, description="attention heads; paper: 2")
    depth: int = Field(3, gt=0, description="number of Sams modules; paper: 3")
    slices: int = Field(12, gt=0, description="slices per training segment; paper's best (Table 2): 12")
    kernel_size: int = Field(3, gt=0, description="embedding, W^O and depthwise kernels; paper: 3x3")
    activation: Literal["relu", "gelu", "none"] = Field(
        "relu", description="after the pointwise conv; the paper names none, a module needs one nonlinearity"
    )
    mask_activation: Literal["sigmoid", "relu"] = Field(
        "sigmoid", description="sigmoid keeps masks in [0, 1] like an ideal ratio mask"
    )
    slice_frames: int | None = Field(
        None, gt=0, description="frames per slice; set from the training segment (ceil(frames/slices))"
    )
    grad_checkpoint: bool = Field(False, description="recompute Sams modules in backward to save memory")
    w_o_scope: Literal["joined", "slice"] = Field(
        "joined",
        description="W^O (the kxk conv after the heads) over the joined slices, or within each slice "
        "(slice: the paper's eqs. 6 and 8); same parameters",
    )

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        if self.n_fft % 2:
            raise ValueError(f"n_fft must be even, got {self.n_fft}")
        if self.hop_length > self.n_fft:
            raise ValueError(f"hop_length ({self.hop_length}) must not exceed n_fft ({self.n_fft})")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd so 'same' padding is symmetric, got {self.kernel_size}")
        return self

    @property
    def bins(self) -> int:
        return self.n_fft // 2 + 1

    def frames(self, samples: int) -> int:
        """STFT frames for `samples` samples (torch.stft with center=True)."""
        return 1 + samples // self.hop_length

    def resolved(self, segment_samples: int) -> "ModelConfig":
        """Copy with `slice_frames` fixed from the training segment length."""
        frames = self.frames(segment_samples)
        if self.slices > frames:
            raise ValueError(
                f"slices={self.slices} is larger than the {frames} STFT frames of a training segment; "
                f"use slices <= {frames} or a longer segment"
            )
        return self.model_copy(update={"slice_frames": math.ceil(frames / self.slices)})


class AugmentConfig(Strict):
    """Uhlich et al. 2017 augmentation (as in open-unmix)."""

    gain_min: float = Field(0.25, gt=0, description="random gain per stem, lower bound")
    gain_max: float = Field(1.25, gt=0, description="random gain per stem, upper bound")
    channel_swap: bool = Field(True, description="swap left/right per stem with probability 0.5")
    remix: bool = Field(True, description="draw each stem from a different random track")

    @model_validator(mode="after")
    def _check(self) -> "AugmentConfig":
        if self.gain_min > self.gain_max:
            raise ValueError(f"gain_min ({self.gain_min}) must not exceed gain_max ({self.gain_max})")
        return self


class DataConfig(Strict):
    """Where the data is and how segments and validation excerpts are drawn."""

    root: Path | None = Field(None, description="MUSDB18 / MUSDB18-HQ folder; default: $MUSDB_PATH")
    format: Literal["auto", "hq", "stems"] = Field(
        "auto", description="hq: wav folders (MUSDB18-HQ); stems: .stem.mp4 (MUSDB18); auto: detect"
    )
    segment_seconds: float = Field(6.0, gt=0, description="training segment; paper: 6 s")
    samples_per_track: int = Field(1, gt=0, description="segments per training track per epoch; paper: 1")
    augment: AugmentConfig | None = Field(default_factory=AugmentConfig, description="null disables")
    valid_protocol: Literal["fixed", "paper"] = Field(
        "fixed",
        description="fixed: the same excerpts of every validation track each epoch (comparable across "
        "trials); paper: one random validation track per epoch",
    )
    valid_seconds: float | None = Field(
        10.0, gt=0, description="length of each fixed validation excerpt; null: full tracks"
    )
    valid_chunk_seconds: float = Field(
        30.0,
        gt=0,
        description="validation runs the network this many seconds at a time (plus context), so a "
        "whole-track excerpt needs no more memory than this much audio; scores do not depend on it",
    )
    valid_tracks: list[str] | None = Field(
        None, description="validation track names; default: the official MUSDB18 list (14 tracks)"
    )
    max_train_tracks: int | None = Field(None, gt=0, description="use only the first N training tracks")
    max_valid_tracks: int | None = Field(None, gt=0, description="use only the first N validation tracks")
    num_workers: int | None = Field(
        None,
        ge=0,
        description="DataLoader worker processes; null: on CUDA the job's CPUs but one (at most 4), on CPU 0",
    )
    pin_memory: bool | None = Field(None, description="page-locked batches for async GPU copies; null: on CUDA")
    cache_dir: Path | None = Field(None, description="decoded-audio cache; default: <root>/.samsnet-cache")

    def resolved_root(self) -> Path:
        root = self.root or (Path(os.environ["MUSDB_PATH"]) if os.environ.get("MUSDB_PATH") else None)
        if root is None:
            raise ConfigError("data.root is not set and MUSDB_PATH is empty: give the dataset folder")
        if not Path(root).is_dir():
            raise ConfigError(f"data.root: {root} is not a folder (expected MUSDB18 or MUSDB18-HQ layout)")
        return Path(root)

    @property
    def segment_samples(self) -> int:
        return int(round(self.segment_seconds * SAMPLE_RATE))


class TrainConfig(Strict):
    """Optimisation and bookkeeping for one training run."""

    lr: float = Field(1e-4, gt=0, description="Adam learning rate; paper: 1e-4")
    batch_size: int = Field(8, gt=0, description="segments per step (not given in the paper)")
    epochs: int = Field(1000, gt=0, description="upper bound on epochs")
    patience: int = Field(
        140, gt=0, description="early stop after this many epochs without a better valid_loss; paper: 140"
    )
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(None, gt=0, description="max gradient norm; null: no clipping")
    seed: int = Field(42, description="seeds torch, numpy and the data sampler")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available")
    amp: bool = Field(True, description="mixed precision on CUDA (ignored on CPU)")
    valid_sdr_every: int = Field(10, ge=0, description="compute valid_sdr every N epochs; 0: never")
    valid_sdr_per_track: bool = Field(
        False,
        description="with valid_sdr, also report each validation track's SDR per target "
        "(track_sdr.<track>.<target>): paired evidence, as the learning-curve table records it",
    )
    threads: int | None = Field(None, gt=0, description="torch CPU threads; null: torch's default")


class ExperimentConfig(Strict):
    """What `samsnet-search train CONFIG.yaml` reads: one configuration, one model."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _slices_fit_segment(self) -> "ExperimentConfig":
        frames = self.model.frames(self.data.segment_samples)
        if self.model.slices > frames:
            raise ValueError(
                f"model.slices={self.model.slices} is larger than the {frames} STFT frames of a "
                f"{self.data.segment_seconds} s segment at hop {self.model.hop_length}; use slices <= {frames}"
            )
        return self

    def resolved_model(self) -> ModelConfig:
        return self.model.resolved(self.data.segment_samples)


M = TypeVar("M", bound=BaseModel)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"model": {"slices": 4}}` -> `{"model.slices": 4}` (lists and empty mappings stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def format_validation_error(err: ValidationError, source: str, cls: type[BaseModel] | None = None) -> str:
    """One line per problem: `source: key.path: message (got value)`.

    With `cls` (the model that was validated), an unknown key also names the closest valid key.
    """
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<top level>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + did_you_mean(str(e["loc"][-1]), known_keys(cls, e["loc"][:-1]))
        value = e.get("input")
        # Whole-section inputs (cross-field checks) would print the entire file: skip them.
        quiet = e["type"] in ("missing", "extra_forbidden") or isinstance(value, (dict, list))
        got = "" if quiet else f" (got {value!r})"
        lines.append(f"{source}: {path}: {msg}{got}")
    return "\n".join(lines)


def known_keys(cls: type[BaseModel] | None, loc: tuple = ()) -> list[str]:
    """The keys the section at `loc` of `cls` accepts (field names, or aliases where set); [] when unknown."""
    for part in loc:
        if cls is None:
            return []
        field = cls.model_fields.get(str(part)) or next((f for f in cls.model_fields.values() if f.alias == part), None)
        cls = model_in(field.annotation) if field is not None else None
    if cls is None:
        return []
    return [f.alias or name for name, f in cls.model_fields.items()]


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (`X`, `X | None`), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)), None)


def did_you_mean(key: str, valid: list[str]) -> str:
    """` (did you mean 'slices'?)` for a near miss, else the list of valid keys."""
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (valid: {', '.join(valid)})" if valid else ""


# --- reading YAML: the one place where a user's YAML is parsed -----------------------------

# A study or experiment file is a few kilobytes; anything near this is not one.
MAX_YAML_BYTES = 1_000_000
# Values once every alias is expanded: a real file has hundreds. An alias chain ("billion
# laughs") is a small graph that expands exponentially wherever it is copied or validated,
# so its expanded size is counted on the graph, before any Python object is built from it.
MAX_YAML_NODES = 100_000
# Nesting levels: a study is about four deep; the checks that walk it recurse once per level.
MAX_YAML_DEPTH = 32


def read_yaml(path: str | Path) -> Any:
    return read_yaml_text(path)[1]


def read_yaml_text(path: str | Path) -> tuple[str, Any]:
    """(text, parsed document) of a user's YAML file: size-limited, UTF-8, safe tags, aliases bounded."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: {size:,} bytes; study and experiment files are limited to {MAX_YAML_BYTES:,} bytes")
    try:
        with path.open("rb") as f:
            data = f.read(MAX_YAML_BYTES + 1)  # at most this much, even if the file grew after stat
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror or e})") from None
    text = decode_text(data, str(path))
    return text, parse_yaml(text, str(path))


def decode_text(data: bytes, source: str) -> str:
    """UTF-8 text (a BOM is dropped) of at most MAX_YAML_BYTES, or a ConfigError naming `source`."""
    if len(data) > MAX_YAML_BYTES:
        raise ConfigError(
            f"{source}: more than {MAX_YAML_BYTES:,} bytes; study and experiment files are limited to that"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        utf16 = data[:2] in (b"\xff\xfe", b"\xfe\xff")
        hint = "it looks like UTF-16: save it as UTF-8" if utf16 else "expected a YAML text file"
        raise ConfigError(
            f"{source}: not UTF-8 text (byte {e.start} is {data[e.start : e.start + 1]!r}); {hint}"
        ) from None
    if "\x00" in text:
        raise ConfigError(f"{source}: contains NUL bytes (a binary file?); expected a YAML text file")
    return text


def parse_yaml(text: str, source: str) -> Any:
    """`yaml.safe_load` with the size and alias limits; an empty document is {}."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(
            f"{source}: more than {MAX_YAML_BYTES:,} characters; study and experiment files are limited to that"
        )
    loader = _BoundedLoader(text)
    loader.source = source
    try:
        return loader.get_single_data() or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply for a study or experiment file") from None
    finally:
        loader.dispose()


class _BoundedLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml when available: 10x faster
    """The safe loader, measuring the expanded document before constructing anything from it."""

    source = "<yaml>"

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        check_expanded_size(node, self.source)
        return self.construct_document(node)


def check_expanded_size(root: yaml.Node, source: str) -> None:
    """Refuse recursive aliases, documents of more than MAX_YAML_NODES values once aliases expand,
    and nesting deeper than MAX_YAML_DEPTH.

    Each node's expanded size and height are computed once (memoised by identity) in an iterative
    post-order walk: linear in the size of the graph however large its expansion.
    """
    sizes: dict[int, int] = {}
    heights: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            children = _children(node)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            heights[key] = 1 + max((heights[id(c)] for c in children), default=0)
            line = node.start_mark.line + 1
            if sizes[key] > MAX_YAML_NODES:
                raise ConfigError(
                    f"{source}: line {line}: more than {MAX_YAML_NODES:,} values once its aliases "
                    "(*name) are expanded; write the values out instead"
                )
            if heights[key] > MAX_YAML_DEPTH:
                raise ConfigError(
                    f"{source}: line {line}: nested more than {MAX_YAML_DEPTH} levels deep; "
                    "a study or experiment file needs a few"
                )
        elif key in on_path:
            raise ConfigError(
                f"{source}: line {node.start_mark.line + 1}: an alias refers to a section that contains it"
            )
        elif key not in sizes:
            on_path.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in _children(node) if id(c) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def validate_model(cls: type[M], data: Any, source: str) -> M:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, cls)) from None


def load_yaml_model(cls: type[M], path: str | Path) -> M:
    return validate_model(cls, read_yaml(path), str(path))


def load_experiment(path: str | Path) -> ExperimentConfig:
    return load_yaml_model(ExperimentConfig, path)
