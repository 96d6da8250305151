"""Command line: thin. Each command parses its arguments and calls a library function.

Commands import the library when they run: torch, Ray, MLflow and scipy take seconds to
import, and `--help` or `infra status` should not pay for them (`# lazy:` names the cost).
`main(argv)` is callable from tests. Library errors (`SamsNetError`) become one line on
stderr and exit code 2, with no traceback.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import sys
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from .config import (
    SAMPLE_RATE,
    TARGETS,
    DataConfig,
    ExperimentConfig,
    load_experiment,
    validate_model,
)
from .errors import ConfigError, SamsNetError
from .search import identity, lease
from .search.identity import default_storage, display_uri, find_study, list_studies
from .search.pareto import front_table
from .services import infra, stop
from .services.infra import check_reachable


class _PlainHelp:
    """Help as click writes it: a flag takes no value, so it shows no type (typer 0.29 prints `<bool>`),
    and a usage line names arguments in capitals (`MODEL AUDIO`, not typer's `{model} {audio}`)."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""  # the type column shows the metavar when one is set
        return params

    def collect_usage_pieces(self, ctx) -> list[str]:
        if isinstance(self, TyperGroup):
            return super().collect_usage_pieces(ctx)
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = param.name.upper() + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        return pieces


class _Command(_PlainHelp, TyperCommand):
    pass


class _Group(_PlainHelp, TyperGroup):
    pass


class _Typer(typer.Typer):
    """A Typer app whose commands and groups write their help as `_PlainHelp` says."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**{"cls": _Group, **kwargs})

    def command(self, *args, **kwargs):
        return super().command(*args, **{"cls": _Command, **kwargs})


app = _Typer(add_completion=False, no_args_is_help=True, help="Hyperparameter search for Sams-Net.")
data_app = _Typer(no_args_is_help=True, help="Datasets: synthesize, inspect.")
app.add_typer(data_app, name="data")
infra_app = _Typer(no_args_is_help=True, help="Local stack: SeaweedFS S3 store + MLflow tracking server.")
app.add_typer(infra_app, name="infra")
curves_app = _Typer(no_args_is_help=True, help="The learning-curve table that search strategies replay.")
app.add_typer(curves_app, name="curves")
console = Console(stderr=True)

# The screen shows the CLI's own progress and warnings from libraries; INFO goes to a log file
# (`-v` shows it on the screen too). Commands that run for minutes say where the file is first.
SCREEN_FORMAT = "%(levelname)s %(name)s: %(message)s"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
EX_TEMPFAIL = 75  # sysexits: a temporary failure (an outage); the same command can be tried again
LOGGED_COMMANDS = ("run", "resume", "export", "evaluate")
CHATTY = ("onnx_ir", "onnxscript", "torch.onnx")  # ONNX export logs every graph pass at INFO


class ScreenHandler(logging.StreamHandler):
    """Writes to the stderr of the moment: while a live table is up that is its proxy (rich), which
    puts each whole line above the table instead of gluing it to the table's last row."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def log_dir() -> Path:
    """$XDG_STATE_HOME/samsnet/logs (XDG default: ~/.local/state), beside the infra state."""
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "samsnet" / "logs"


class _Logging:
    """The root logger's two handlers for one `main` call (removed again at its end)."""

    def __init__(self, argv: list[str]) -> None:
        self.help = "--help" in argv  # a command's help runs nothing: no log file
        self.root = logging.getLogger()
        self.saved_level = self.root.level
        self.screen = ScreenHandler()
        self.screen.setLevel(logging.WARNING)
        self.screen.setFormatter(logging.Formatter(SCREEN_FORMAT))
        self.file: logging.FileHandler | None = None

    def __enter__(self) -> "_Logging":
        if self.root.getEffectiveLevel() > logging.INFO:
            self.root.setLevel(logging.INFO)
        self.root.addHandler(self.screen)
        for name in CHATTY:
            logging.getLogger(name).setLevel(logging.WARNING)
        return self

    def to_file(self, command: str) -> Path:
        """INFO and above of this command into a new file in `log_dir()` (created on first write)."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        path = log_dir() / f"{stamp}-{command}-{os.getpid()}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = logging.FileHandler(path, delay=True, encoding="utf-8")
        self.file.setLevel(logging.INFO)
        self.file.setFormatter(logging.Formatter(FILE_FORMAT))
        self.root.addHandler(self.file)
        return path

    def __exit__(self, *exc) -> None:
        self.root.removeHandler(self.screen)
        if self.file is not None:
            self.root.removeHandler(self.file)
            self.file.close()
        self.root.setLevel(self.saved_level)


_LOGGING: _Logging | None = None  # the current `main` call's


@app.callback()
def _options(
    ctx: typer.Context,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="show INFO log lines on the screen too"),
) -> None:
    """Hyperparameter search for Sams-Net."""
    if _LOGGING is None:  # the app called without `main` (typer's own runner)
        return
    if verbose:
        _LOGGING.screen.setLevel(logging.INFO)
    # MLflow logs to the screen through its own handler, set up when it is first imported (later).
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    if ctx.invoked_subcommand in LOGGED_COMMANDS and not _LOGGING.help:
        path = _LOGGING.to_file(ctx.invoked_subcommand)
        more = "" if verbose else "; -v shows it here"
        # On stdout with the progress lines: stderr stays the one line of an error.
        Console().print(f"[dim]log: {path} (INFO and above{more})[/dim]", highlight=False, soft_wrap=True)


@app.command("model-info")
def model_info(
    config: Optional[Path] = typer.Argument(None, help="experiment YAML (model/data/train); default: paper config"),
    channels: Optional[int] = typer.Option(None, help="override model.channels"),
    heads: Optional[int] = typer.Option(None, help="override model.heads"),
    depth: Optional[int] = typer.Option(None, help="override model.depth"),
    slices: Optional[int] = typer.Option(None, help="override model.slices"),
) -> None:
    """Parameter count and MACs per second of audio for a configuration."""
    from .engine.checkpoint import build_model  # lazy: torch
    from .model.info import macs_per_second, parameter_breakdown  # lazy: torch

    exp = load_experiment(config) if config else ExperimentConfig()
    overrides = {k: v for k, v in dict(channels=channels, heads=heads, depth=depth, slices=slices).items() if v}
    exp = validate_model(
        ExperimentConfig, {**exp.model_dump(), "model": {**exp.model.model_dump(), **overrides}}, "command line"
    )
    model_cfg = exp.resolved_model()
    model = build_model(model_cfg)
    rows = {
        **model_cfg.model_dump(),
        "segment_seconds": exp.data.segment_seconds,
        **parameter_breakdown(model),
        "GMACs_per_second_of_audio": round(macs_per_second(model) / 1e9, 3),
    }
    for key, value in rows.items():
        print(f"{key:>28}: {value}")
    _print_gpu_peaks(exp)


def _print_gpu_peaks(exp: ExperimentConfig) -> None:
    """The predicted training-step peak on CUDA at the config's batch, with and without AMP and checkpointing."""
    from .search.gpu_fit import GB, predicted_peak  # lazy: torch

    for amp in (False, True):
        for ckpt in (False, True):
            data = exp.model_dump()
            data["train"].update(amp=amp, device="cuda")
            data["model"]["grad_checkpoint"] = ckpt
            peak = predicted_peak(ExperimentConfig.model_validate(data))
            key = f"gpu_peak_GB ({'amp' if amp else 'fp32'}, {'checkpoint' if ckpt else 'no checkpoint'})"
            print(f"{key:>40}: {peak / GB:.1f}")


def _experiment(config: Path, data: Optional[Path]):

    exp = load_experiment(config)
    if data is not None:
        exp = validate_model(
            ExperimentConfig,
            {**exp.model_dump(), "data": {**exp.data.model_dump(), "root": data}},
            f"{config} with --data",
        )
    return exp


@app.command("train")
def train(
    config: Path = typer.Argument(..., help="experiment YAML with model:, data:, train: sections"),
    out: Path = typer.Option(Path("runs/train"), "--out", help="work folder: checkpoint/last.pt and best.pt"),
    data: Optional[Path] = typer.Option(None, "--data", help="dataset folder (overrides data.root / MUSDB_PATH)"),
    resume: bool = typer.Option(False, "--resume", help="continue from <out>/checkpoint/last.pt"),
) -> None:
    """Train one Sams-Net configuration (no Ray, no MLflow)."""

    from .engine.checkpoint import LAST  # lazy: torch
    from .engine.train import Trainer  # lazy: torch

    exp = _experiment(config, data)
    trainer = Trainer(exp, out)
    last = out / "checkpoint" / LAST
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} epochs"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
    ) as bar:
        task = bar.add_task("training", total=exp.train.epochs, status="")

        def show(r) -> None:
            sdr = f" valid_sdr={r.valid_sdr:.2f} dB" if r.valid_sdr is not None else ""
            bar.update(
                task, completed=r.epoch, status=f"train_loss={r.train_loss:.4g} valid_loss={r.valid_loss:.4g}{sdr}"
            )

        trainer.callbacks.append(show)
        summary = trainer.fit(resume=last if resume and last.is_file() else None)
    why = "early stopping" if summary.stopped_early else "epoch limit"
    print(
        f"stopped after {summary.epochs} epochs ({why}); best valid_loss {summary.best_valid_loss:.5g} "
        f"at epoch {summary.best_epoch}; checkpoints in {summary.checkpoint_dir}"
    )


@app.command("evaluate")
def evaluate(
    model: Optional[Path] = typer.Argument(None, help="checkpoint folder or .pt file (best weights are used)"),
    data: Optional[Path] = typer.Option(
        None, "--data", help="dataset folder (default: the model's data.root / MUSDB_PATH)"
    ),
    subset: str = typer.Option("test", help="test (reads test/ only) or valid (the validation tracks of train/)"),
    oracle: Optional[str] = typer.Option(None, help="irm1 (magnitude ratio) or irm2 (power ratio) instead of a model"),
    oracle_stft: str = typer.Option(
        "model",
        help="the oracle's STFT: model (Hamming 4096, hop 1024) or sigsep (Hann 2048, hop 1024, as SiSEC 2018's "
        "oracles; the paper's IRM row compares with this one: docs/metrics.md)",
    ),
    backend: str = typer.Option("museval", help="museval (reference) or fast (samsnet_search.metrics.bsseval)"),
    out: Path = typer.Option(Path("runs/eval"), "--out", help="museval JSON per track and summary.json"),
    max_tracks: Optional[int] = typer.Option(None, help="only the first N tracks"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    valid_track: Optional[list[str]] = typer.Option(
        None,
        help="validation track name for --subset valid (repeatable); "
        "default: the model's data.valid_tracks, else the dataset's list",
    ),
    cache_dir: Optional[Path] = typer.Option(
        None,
        help="decoded-audio cache; default: <data>/.samsnet-cache (the model's data.cache_dir only without --data)",
    ),
    wiener: int = typer.Option(
        0, help="multichannel Wiener filter EM iterations after the masks; 0: plain masks as the paper"
    ),
    wiener_start: str = typer.Option(
        "softmask",
        help="the filter's first estimates: softmask (norbert's default) or magnitudes "
        "(the masked magnitudes with the mixture's phase: open-unmix's default)",
    ),
    residual: bool = typer.Option(False, "--residual", help="other = mixture - (vocals + drums + bass)"),
) -> None:
    """Separate full tracks and score them with BSSEval v4 (median over frames, then tracks).

    Only the scored subset is read. MUSDB18 stems are decoded as musdb decodes them (16-bit PCM).
    """
    from .data import load_subset  # lazy: torch, scipy
    from .engine.checkpoint import load_model  # lazy: torch
    from .engine.evaluate import ORACLE_STFTS, evaluate_tracks, model_estimator, oracle_estimator  # lazy: torch
    from .engine.train import pick_device  # lazy: torch
    from .engine.wiener import STARTS as WIENER_STARTS  # lazy: torch
    from .engine.wiener import PostFilter  # lazy: torch

    if (model is None) == (oracle is None):
        raise ConfigError("give either a model checkpoint or --oracle irm1|irm2")
    if oracle not in (None, "irm1", "irm2") or backend not in ("museval", "fast") or subset not in ("test", "valid"):
        raise ConfigError(
            f"--oracle must be irm1 or irm2, --backend museval or fast, --subset test or valid "
            f"(got {oracle}, {backend}, {subset})"
        )
    if oracle_stft not in ORACLE_STFTS:
        raise ConfigError(f"--oracle-stft must be one of {', '.join(ORACLE_STFTS)} (got {oracle_stft})")
    if oracle is None and oracle_stft != "model":
        raise ConfigError("--oracle-stft applies to --oracle only: a model separates with its own STFT")
    if wiener < 0:
        raise ConfigError(f"--wiener {wiener}: EM iterations must be >= 0 (0: plain masks)")
    if wiener_start not in WIENER_STARTS:
        raise ConfigError(f"--wiener-start {wiener_start}: must be one of {', '.join(WIENER_STARTS)}")
    post = PostFilter(wiener=wiener, residual=residual, start=wiener_start)
    data_cfg, name = DataConfig(), oracle
    if model is not None:
        net, state = load_model(model)
        data_cfg, name = validate_model(DataConfig, state["experiment"]["data"], f"{model}"), str(model)
        estimator = model_estimator(net, pick_device(device), post=post)
    if data is not None:  # the checkpoint's cache folder belongs to the data it was trained on
        data_cfg = data_cfg.model_copy(update={"root": data, "cache_dir": None})
    if cache_dir is not None:
        data_cfg = data_cfg.model_copy(update={"cache_dir": cache_dir})
    if valid_track:
        data_cfg = data_cfg.model_copy(update={"valid_tracks": list(valid_track)})
    tracks, kind = load_subset(data_cfg, subset)
    if oracle is not None:
        make_stft, settings = ORACLE_STFTS[oracle_stft]
        estimator = oracle_estimator(oracle, post=post, stft=make_stft())
        name = f"{oracle} ({settings})"
    name = f"{name}, {post.label}"
    report = evaluate_tracks(
        estimator,
        tracks[:max_tracks],
        name=name,
        backend=backend,
        data_kind=kind,
        subset=subset,
        out_dir=out,
        progress=lambda msg: console.print(f"[dim]{msg}[/dim]", highlight=False, soft_wrap=True),
    )
    _print_scores(report)


def _print_scores(report) -> None:

    table = Table(title=f"{report.estimator}: SDR (dB), {report.subset} set of {report.data}, {report.backend}")
    for col in ("track", *TARGETS, "avg"):
        table.add_column(col, justify="right" if col != "track" else "left")
    for name, scores in report.tracks.items():
        table.add_row(name, *(f"{scores[t]:.2f}" for t in TARGETS), f"{sum(scores[t] for t in TARGETS) / 4:.2f}")
    summary = report.summary
    table.add_row("median", *(f"{summary[t]:.2f}" for t in TARGETS), f"{summary['avg']:.2f}", style="bold")
    Console().print(table)
    print(f"decoding: {report.decoding}")


@app.command("separate")
def separate(
    model: str = typer.Argument(..., help="export folder, models:/samsnet-NAME@ALIAS, or checkpoint folder / .pt file"),
    audio: Path = typer.Argument(
        ..., help="audio file ffmpeg reads (wav, flac, mp3, .stem.mp4: its mixture stream, ...); resampled to 44.1 kHz"
    ),
    out: Path = typer.Option(Path("separated"), "--out", help="writes <target>.wav per target"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    tracking_uri: Optional[str] = typer.Option(
        None, help="MLflow server for models:/ URIs (default $MLFLOW_TRACKING_URI, else ./mlruns)"
    ),
    chunk_seconds: float = typer.Option(
        30.0, help="seconds separated at a time: sets the peak memory (not the song length)"
    ),
    wiener: int = typer.Option(
        0, help="multichannel Wiener filter EM iterations (norbert); 0: plain masks as the paper"
    ),
    wiener_start: str = typer.Option(
        "softmask",
        help="the filter's first estimates: softmask (norbert's default) or magnitudes "
        "(the masked magnitudes with the mixture's phase: open-unmix's default)",
    ),
    residual: bool = typer.Option(
        False, "--residual", help="other = mixture - (vocals + drums + bass): stems sum to the mixture"
    ),
    stems: Optional[str] = typer.Option(
        None, help="comma-separated targets to write, e.g. vocals,drums (default: all four)"
    ),
    bits: str = typer.Option("32f", help="output samples: 16, 24 (integer PCM, clipped to [-1, 1]) or 32f (float)"),
) -> None:
    """Separate one song into vocals, drums, bass and other."""

    from .delivery.registry import load_separator  # lazy: torch, mlflow
    from .engine.separate import check_arguments, parse_stems, separate_file  # lazy: torch
    from .engine.train import pick_device  # lazy: torch
    from .engine.wiener import STARTS as WIENER_STARTS  # lazy: torch
    from .engine.wiener import PostFilter  # lazy: torch

    check_arguments(model, audio)
    if wiener < 0:
        raise ConfigError(f"--wiener {wiener}: EM iterations must be >= 0 (0: plain masks)")
    if wiener_start not in WIENER_STARTS:
        raise ConfigError(f"--wiener-start {wiener_start}: must be one of {', '.join(WIENER_STARTS)}")
    selected = parse_stems(stems)
    net = load_separator(model, tracking_uri)
    # SIGTERM / SIGHUP / Ctrl-C raise here (exit 128 + signal): the stems' .part files are removed on the way out.
    with stop.watch(), ExitStack() as stack:
        bar = task = None

        def show(done: int, total: int | None) -> None:
            nonlocal bar, task
            if bar is None:  # opened on the first report: errors found before any work stay one line
                bar = stack.enter_context(
                    Progress(
                        TextColumn("{task.description}"),
                        BarColumn(),
                        TextColumn("{task.fields[where]}"),
                        TimeElapsedColumn(),
                        TimeRemainingColumn(),
                        console=console,
                    )
                )
                task = bar.add_task(f"separating {audio.name}", total=None, where="")
            total = max(total or 0, done) or None  # a decoder's stated length can be a little short
            bar.update(
                task,
                completed=done,
                total=total,
                where=f"{done / SAMPLE_RATE:.0f}" + (f" / {total / SAMPLE_RATE:.0f} s" if total else " s"),
            )

        try:
            written = separate_file(
                net,
                audio,
                out,
                pick_device(device),
                chunk_seconds=chunk_seconds,
                post=PostFilter(wiener=wiener, residual=residual, start=wiener_start),
                stems=selected,
                bits=bits,
                progress=show,
            )
        except stop.Interrupted as e:
            raise _separate_stopped(e.signum) from None
    for target, path in written.items():
        print(f"{target:>7}: {path}")


def _separate_stopped(signum: int) -> typer.Exit:
    """A separation stopped by a signal: what happened, and the shell sees 128 + the signal."""
    console.print(f"separation stopped ({signal.Signals(signum).name}); no partial stems left", highlight=False)
    return typer.Exit(128 + signum)


_STORAGE_HELP = (
    "storage root holding the studies (local folder or s3://bucket/prefix); default "
    "$SAMSNET_STORAGE, else `storage:` in ~/.config/samsnet/config.yaml, else ./runs"
)


def _storage(storage: Optional[str]) -> str:
    from .search.study import resolve_storage  # lazy: scipy via data

    return resolve_storage(storage or default_storage(), Path.cwd())


@app.command("export")
def export(
    source: str = typer.Argument(..., help="study name (or folder), MLflow run id, or checkpoint folder / .pt file"),
    out: Path = typer.Option(
        ..., "--out", help="export folder (torch.export programs, ONNX, weights, configs, model card)"
    ),
    storage: Optional[str] = typer.Option(None, help=_STORAGE_HELP),
    tracking_uri: Optional[str] = typer.Option(
        None, help="MLflow for run ids / --register (default $MLFLOW_TRACKING_URI, else ./mlruns)"
    ),
    register: Optional[str] = typer.Option(
        None, help="also register as samsnet-NAME (a study always registers as samsnet-<study>)"
    ),
    alias: str = typer.Option(
        "champion", help="registry alias set on the new version (weights registered before keep theirs)"
    ),
) -> None:
    """Export the best model of a study (or a run / checkpoint) as a self-contained folder."""

    from .delivery.export import export_source  # lazy: torch, mlflow

    folder, registration = export_source(
        source,
        out,
        storage=_storage(storage),
        tracking_uri=tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"),
        register_as=register,
        alias=alias,
        progress=lambda msg: console.print(f"[dim]{msg}[/dim]", highlight=False, soft_wrap=True),
    )
    print(f"exported to {folder}")
    if registration is not None:
        print(registration.describe())


@data_app.command("synth")
def data_synth(
    out: Path = typer.Argument(..., help="folder to write the MUSDB18-HQ-format tree into"),
    train: int = typer.Option(8, help="training tracks (in train/)"),
    valid: int = typer.Option(2, help="validation tracks (also in train/, named in samsnet-synth.json)"),
    test: int = typer.Option(2, help="test tracks (in test/)"),
    seconds: float = typer.Option(20.0, help="length of each track"),
    seed: int = typer.Option(0, help="same seed, same audio"),
    section_min: float = typer.Option(1.0, help="shortest section, seconds"),
    section_max: float = typer.Option(6.0, help="longest section, seconds"),
    force: bool = typer.Option(False, "--force", help="replace existing train/ and test/ folders"),
) -> None:
    """Write a synthetic dataset (stems with vocals, drums, bass, chords; sections that change)."""
    from .data.synth import synthesize  # lazy: torch, scipy

    root = synthesize(
        out,
        n_train=train,
        n_valid=valid,
        n_test=test,
        seconds=seconds,
        seed=seed,
        section_range=(section_min, section_max),
        overwrite=force,
    )
    print(
        f"wrote {train + valid} train/ tracks ({valid} for validation) and {test} test/ tracks of {seconds:g} s to {root}"
    )


@data_app.command("info")
def data_info(
    root: Path = typer.Argument(..., help="MUSDB18 / MUSDB18-HQ / synthetic dataset folder"),
    format: str = typer.Option("auto", "--format", help="auto, hq (wav folders) or stems (.stem.mp4)"),
    valid_track: Optional[list[str]] = typer.Option(
        None, help="validation track name (repeatable); default: official list"
    ),
    cache_dir: Optional[Path] = typer.Option(None, help="decoded-audio cache; default <root>/.samsnet-cache"),
    check: bool = typer.Option(False, "--check", help="decode every track now (fills the cache, finds bad samples)"),
) -> None:
    """Load the splits of a dataset and print counts, kind and fingerprint."""
    from .data.splits import load_splits, prepare  # lazy: torch, scipy

    cfg = validate_model(
        DataConfig,
        dict(root=root, format=format, valid_tracks=valid_track or None, cache_dir=cache_dir),
        "command line",
    )
    splits = load_splits(cfg)
    print(f"       root: {splits.root}")
    print(f"       kind: {splits.kind}")
    print(f"fingerprint: {splits.fingerprint}")
    for name in ("train", "valid", "test"):
        tracks = getattr(splits, name)
        print(f"{name:>11}: {len(tracks)} tracks")
    if check:
        samples = prepare(splits.all_tracks())
        print(
            f"    decoded: {samples / SAMPLE_RATE / 60:.1f} min of audio, all checked (cache: {splits.train[0].cache.folder})"
        )


_STATE_HELP = "stack state folder; default $SAMSNET_INFRA_DIR, else $XDG_STATE_HOME/samsnet/infra (~/.local/state/...)"


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@infra_app.command("up")
def infra_up(
    state_dir: Optional[Path] = typer.Option(None, help=_STATE_HELP),
    host: Optional[str] = typer.Option(None, help="listen address (default 127.0.0.1); on a cluster one workers reach"),
    s3_port: Optional[int] = typer.Option(None, help="S3 API port (default 8333)"),
    mlflow_port: Optional[int] = typer.Option(None, help="MLflow server port (default 5000)"),
    master_port: Optional[int] = typer.Option(
        None, help="SeaweedFS master port, inside its namespace (default 9333; and +10000)"
    ),
    volume_port: Optional[int] = typer.Option(
        None, help="SeaweedFS volume port, inside its namespace (default 9340; and +10000)"
    ),
    filer_port: Optional[int] = typer.Option(
        None, help="SeaweedFS filer port, inside its namespace (default 8888; and +10000)"
    ),
    admin_port: Optional[int] = typer.Option(
        None, help="SeaweedFS admin port, inside its namespace (default 23646; and +10000)"
    ),
    bucket: Optional[str] = typer.Option(None, help="bucket for artifacts and Ray storage (default samsnet)"),
    allowed_hosts: Optional[str] = typer.Option(None, help="MLflow --allowed-hosts, e.g. mlflow.example.org"),
    timeout: Optional[float] = typer.Option(None, help="seconds to wait for each service (default 120)"),
    no_auth: bool = typer.Option(False, "--no-auth", help="MLflow server without a login (127.0.0.1 only)"),
    no_isolation: bool = typer.Option(
        False,
        "--no-isolation",
        help="SeaweedFS's internal ports on 127.0.0.1, open to this host's users (no namespaces)",
    ),
) -> None:
    """Start SeaweedFS (S3) and an MLflow server with artifacts in it; no-op if running."""

    cfg = infra.make_config(
        state_dir=state_dir,
        host=host,
        s3_port=s3_port,
        mlflow_port=mlflow_port,
        master_port=master_port,
        volume_port=volume_port,
        filer_port=filer_port,
        admin_port=admin_port,
        bucket=bucket,
        allowed_hosts=allowed_hosts,
        start_timeout=timeout,
        auth=False if no_auth else None,
        isolate=False if no_isolation else None,
    )
    info = infra.up(cfg, progress=_stderr_line)
    for name, url in (("s3", info.s3_endpoint), ("mlflow", info.tracking_uri)):
        how = "already running" if name in info.already_running else "started"
        print(f"{name:>7}: {url}  pid {info.pids[name]}  ({how})")
    print(f" bucket: {info.bucket} (MLflow artifacts under {info.artifact_root})")
    if info.mlflow_login:
        print(f"  login: MLflow user {info.mlflow_login}; the password is MLFLOW_TRACKING_PASSWORD in `infra env`")
    print(f"  state: {info.state_dir} (logs in {info.state_dir / 'logs'})")
    print(f'client environment: eval "$(samsnet-search infra env --state-dir {info.state_dir})"')


@infra_app.command("down")
def infra_down(state_dir: Optional[Path] = typer.Option(None, help=_STATE_HELP)) -> None:
    """Stop the MLflow server and SeaweedFS (data stays in the state folder)."""

    cfg = infra.make_config(state_dir=state_dir)
    stopped = infra.down(cfg)
    print("stopped: " + ", ".join(stopped) if stopped else f"nothing was running (state: {cfg.state_dir}; --state-dir)")


@infra_app.command("status")
def infra_status(state_dir: Optional[Path] = typer.Option(None, help=_STATE_HELP)) -> None:
    """Each service: address, pid, health. Exit code 1 unless all are healthy."""

    cfg = infra.make_config(state_dir=state_dir)
    services = infra.status(cfg)
    for s in services:
        state = "healthy" if s.healthy else ("running, not answering" if s.running else "down")
        pid = f"  pid {s.pid}" if s.pid else ""
        print(f"{s.name:>7}: {state:<8} {s.address}{pid}")
    if not infra.recorded(cfg):
        print(f"no stack recorded in {cfg.state_dir}: start one with `samsnet-search infra up`, or pass --state-dir")
    if not all(s.healthy for s in services):
        raise typer.Exit(1)


@infra_app.command("env")
def infra_env(state_dir: Optional[Path] = typer.Option(None, help=_STATE_HELP)) -> None:
    """Print `export` lines (including the S3 secret) for `eval "$(samsnet-search infra env)"`.

    SAMSNET_STORAGE names the stack's study folder (s3://BUCKET/ray), so that `ls`, `report`,
    `resume` and `export` find its studies from any folder."""

    cfg = infra.make_config(state_dir=state_dir)
    env = {**infra.client_env(cfg), identity.STORAGE_ENV: infra.study_storage(cfg)}
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")


@app.command("validate")
def validate(
    study_file: Path = typer.Argument(..., help="study YAML (see search_spaces/)"),
    offline: bool = typer.Option(False, "--offline", help="do not try to reach the storage and the tracking server"),
) -> None:
    """Check a study file (keys, types, ranges, slices vs segment frames, data) and print the resolved space.

    Also tries the study's storage and tracking server once (a few seconds): exit code 2 if
    either cannot be reached.
    """
    from .delivery.show import format_space  # lazy: torch, mlflow
    from .search.study import load_study  # lazy: scipy via data

    study = load_study(study_file)
    print(format_space(study))
    if study.memory is not None:
        print(f"  {study.memory.describe()}")
    if offline:
        return
    problems = check_reachable(study.storage, study.tracking_uri)
    for problem in problems:
        console.print(f"[red]error:[/red] {study_file}: {problem}", highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(2)
    print("  reachable: storage and tracking server")


def _run_live(study, live: bool, **kwargs):
    """Run (or continue) a study, with the live terminal view unless --no-live."""

    from .search.runner import run_study  # lazy: ray

    view = nullcontext()
    if live:
        from .delivery.live import LiveView  # lazy: torch, mlflow

        view = LiveView(study, console)
    with view:
        return run_study(study, quiet=live, **kwargs)


@app.command("run")
def run(
    study_file: Path = typer.Argument(..., help="study YAML (see search_spaces/)"),
    address: Optional[str] = typer.Option(None, help="existing Ray cluster (e.g. auto); default: start a local Ray"),
    num_cpus: Optional[int] = typer.Option(None, help="CPUs of the local Ray (default: all of this machine)"),
    num_gpus: Optional[int] = typer.Option(None, help="GPUs of the local Ray (default: detected)"),
    restart_errored: bool = typer.Option(
        False,
        "--restart-errored",
        help="when continuing a finished study: run its failed trials again (an unfinished study continues them anyway)",
    ),
    live: bool = typer.Option(True, "--live/--no-live", help="live table of trials in the terminal"),
    select: bool = typer.Option(
        True, "--select/--no-select", help="after the search: choose the slice count (retrain, score, register)"
    ),
    warm_start: Optional[list[str]] = typer.Option(
        None,
        "--warm-start",
        help="earlier study whose trials the searcher is told of (repeatable; adds to search.warm_start)",
    ),
) -> None:
    """Run a study; if it exists (same name, same file) it continues where it stopped."""
    from .search.study import load_study  # lazy: scipy via data
    from .search.warm_start import extend  # lazy: scipy via data

    study = extend(load_study(study_file), warm_start or [])
    _search_then_select(
        study, live, select, address=address, num_cpus=num_cpus, num_gpus=num_gpus, restart_errored=restart_errored
    )


def _resume_hint(study) -> str:
    """The command that continues the study; --storage only where the default would not find it."""

    from .search.study import resolve_storage  # lazy: scipy via data

    same = resolve_storage(default_storage(), Path.cwd()) == study.storage
    return f"samsnet-search resume {study.name}" + (
        "" if same else f" --storage {shlex.quote(display_uri(study.storage))}"
    )


def _search_then_select(study, live: bool, select: bool, restart_errored: bool, **ray_args) -> None:
    """The search, its summary (and Pareto front), then the slice selection.

    SIGINT, SIGTERM and SIGHUP at any phase end the study as interrupted, with the resume hint and
    exit code 128 + the signal (130 for Ctrl-C, 143 for SIGTERM). The study's lease is held for
    both: no second driver starts on it while this one selects.
    """
    from .delivery.show import format_result  # lazy: torch, mlflow

    with stop.watch(), lease.hold(identity.study_uri(study.storage, study.name), study.name):
        try:
            selection_follows = select and study.spec.selection.enabled
            result = _run_live(
                study, live, restart_errored=restart_errored, selection_follows=selection_follows, **ray_args
            )
        except KeyboardInterrupt:  # a second signal, or one outside Tune's loop
            raise _interrupted(study, "interrupted") from None
        print(format_result(result))
        if result.pareto:
            Console(width=max(Console().width, 120)).print(front_table(result.pareto))
        if result.interrupted and stop.requested() is None and result.outages:
            raise _outage(study, result.outages)
        if result.interrupted:  # Tune ended its loop on the signal; the shell should still see it
            raise _interrupted(study, "interrupted")
        try:
            _select(result, select, **ray_args)
        except KeyboardInterrupt:
            if not stop.fenced():
                from .search.runner import mark_interrupted  # lazy: ray

                mark_interrupted(result.manifest, result.target)
            raise _interrupted(study, "selection interrupted") from None


def _outage(study, trials) -> typer.Exit:
    """Trials failed for an outage that outlasted search.infra_retry_s: the study is not finished,
    and a plain resume continues them from their checkpoints (exit 75, EX_TEMPFAIL: try again)."""
    names = ", ".join(t.trial_id for t in trials)
    console.print(
        f"{len(trials)} trial(s) failed for an outage that outlasted search.infra_retry_s ({names}); "
        f"when the storage or tracking server is back, continue with: {_resume_hint(study)}",
        highlight=False,
        soft_wrap=True,
    )
    return typer.Exit(EX_TEMPFAIL)


def _interrupted(study, what: str) -> typer.Exit:
    """The resume hint, and the exit code of the signal that stopped the study (130: Ctrl-C); a
    driver that lost its study to another one says so in one line (exit 2)."""
    if stop.fenced():
        line = f"[red]error:[/red] {stop.fence_reason()}; this driver stopped without writing"
        console.print(line, highlight=False, soft_wrap=True)
        return typer.Exit(2)
    signum = stop.requested() or signal.SIGINT
    console.print(f"{what} ({signal.Signals(signum).name}); continue with: {_resume_hint(study)}", highlight=False)
    return typer.Exit(128 + signum)


def _select(result, select: bool, **ray_args) -> None:
    """The slice-count selection after a finished search; prints the validation table and the choice."""
    if not select or not result.study.spec.selection.enabled or result.interrupted:
        return
    from .delivery.report import gather, selection_renderables  # lazy: torch, mlflow
    from .delivery.winner import register_winner  # lazy: torch, mlflow
    from .search.select import run_selection  # lazy: ray, torch

    sel = run_selection(
        result,
        progress=lambda msg: console.print(f"[dim]{msg}[/dim]", highlight=False, soft_wrap=True),
        register=register_winner,
        **ray_args,
    )
    out = Console(width=max(Console().width, 120))
    for item in selection_renderables(gather(result.manifest.path)):  # as `report` shows it, estimate included
        out.print(item, highlight=False, soft_wrap=isinstance(item, str))
    print(f"  {sel.where}")


@app.command("resume")
def resume(
    name: str = typer.Argument(..., help="study name (or its folder / s3:// URI)"),
    storage: Optional[str] = typer.Option(None, help=_STORAGE_HELP),
    address: Optional[str] = typer.Option(None, help="existing Ray cluster (e.g. auto); default: start a local Ray"),
    num_cpus: Optional[int] = typer.Option(None, help="CPUs of the local Ray (default: all of this machine)"),
    num_gpus: Optional[int] = typer.Option(None, help="GPUs of the local Ray (default: detected)"),
    restart_errored: bool = typer.Option(
        False,
        "--restart-errored",
        help="run a finished study's failed trials again (an unfinished study continues them anyway)",
    ),
    live: bool = typer.Option(True, "--live/--no-live", help="live table of trials in the terminal"),
    select: bool = typer.Option(
        True, "--select/--no-select", help="after the search: choose the slice count (retrain, score, register)"
    ),
    trust: bool = typer.Option(
        False,
        "--trust",
        help="the study comes from another machine and you trust its files: sign its Ray state with this machine's key",
    ),
) -> None:
    """Continue an interrupted study: finished trials stay, unfinished ones continue from their checkpoint."""
    from .search.runner import load_stored_study, trust_state  # lazy: ray

    study = load_stored_study(find_study(name, _storage(storage)))
    if trust:
        signed = trust_state(study)
        print(f"trusted: signed {len(signed)} Ray state file(s) of study {study.name} with this machine's key:")
        for relpath in signed:
            print(f"  {relpath}")
    _search_then_select(
        study, live, select, address=address, num_cpus=num_cpus, num_gpus=num_gpus, restart_errored=restart_errored
    )


@app.command("report")
def report(
    name: str = typer.Argument(..., help="study name (or its folder / s3:// URI)"),
    storage: Optional[str] = typer.Option(None, help=_STORAGE_HELP),
    html: Optional[Path] = typer.Option(
        None, "--html", help="also write one self-contained HTML page (plots, audio) here"
    ),
) -> None:
    """What a study found: trial counts, the validation table by slice count, the choice, the test score."""
    from .delivery.report import gather, print_report  # lazy: torch, mlflow

    found = gather(name, _storage(storage))
    print_report(found, Console(width=max(Console().width, 120)))
    if html is not None:
        from .delivery.report_html import write_html  # lazy: torch, mlflow

        print(f"HTML report: {write_html(found, html)}")


@app.command("ls")
def ls(storage: Optional[str] = typer.Option(None, help=_STORAGE_HELP)) -> None:
    """List the studies in a storage root with their state."""
    from .delivery.show import format_studies  # lazy: torch, mlflow

    print(format_studies(list_studies(_storage(storage))))


@app.command("bench")
def bench(
    quick: bool = typer.Option(False, "--quick", help="small sizes, a few minutes (no paper-config runs, no search)"),
    device: str = typer.Option("cpu", help="cpu or cuda (cuda adds the 60 s paper-config attention case)"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the report (machine, sizes, figures) as JSON"),
    only: Optional[list[str]] = typer.Option(
        None, "--only", help="attention, train, sdr, export, search, overhead or strategies (repeatable)"
    ),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: all cores); recorded"),
    smoke: bool = typer.Option(
        False, "--smoke", help="smallest sizes (seconds): checks the benchmarks run, figures not meaningful"
    ),
    tiny: bool = typer.Option(
        False, "--tiny", help="the search benchmark at tiny sizes (about a minute), figures not meaningful"
    ),
) -> None:
    """Measure the hot paths: sliced attention vs slices, training step, fast SDR vs museval, search overhead;
    `--only search`: the platform's slice-count choice against the paper's grid."""
    from .bench import run_benchmarks, write_report  # lazy: torch
    from .bench.show import print_report as print_bench  # lazy: torch (the bench package)

    report = run_benchmarks(
        quick=quick,
        device=device,
        only=only,
        threads=threads,
        smoke=smoke,
        tiny=tiny,
        progress=lambda name: console.print(f"[dim]bench: {name}...[/dim]"),
    )
    print_bench(report, Console())
    if out is not None:
        print(f"wrote {write_report(report, out)}")


@curves_app.command("build")
def curves_build(
    space: Optional[Path] = typer.Option(None, help="the grid (default: search_spaces/curves.yaml)"),
    workdir: Path = typer.Option(Path("curves-build"), help="data, study, MLflow store and test scores (resumable)"),
    out: Optional[Path] = typer.Option(None, help="folder of the table and datasheet (default: benchmarks/curves)"),
) -> None:
    """Run (or continue) the grid study of the learning-curve table and write it as Parquet with a
    datasheet. CPU-hours: run it again after an interruption and it goes on where it stopped."""
    from .bench import curves  # lazy: torch, ray

    built = curves.build(space or curves.SPACE, workdir, out or curves.OUT, say=print)
    print(f"wrote {built.table} and {built.datasheet}")


@app.command("estimate-slices")
def estimate_slices_cmd(
    data: Path = typer.Option(
        ..., "--data", help="dataset folder (MUSDB18 / MUSDB18-HQ / synthetic); only train/ training tracks are read"
    ),
    segment_seconds: float = typer.Option(6.0, help="training segment length; paper: 6 s"),
    slices: str = typer.Option(
        "1,2,4,8,12,16,18,24", help="slice counts the study allows (comma-separated); paper Table 2"
    ),
    n_fft: int = typer.Option(4096, help="the model's STFT frame; paper: 4096"),
    hop: int = typer.Option(1024, help="the model's STFT hop; paper: 1024"),
    max_tracks: Optional[int] = typer.Option(None, help="use only the first N training tracks"),
    min_part_seconds: float = typer.Option(0.5, help="shortest part; closer change points merge"),
    method: str = typer.Option(
        "novelty", help="novelty (Foote change points, default) or eigengap (spectral clustering)"
    ),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the full estimate (per segment) as JSON"),
) -> None:
    """Estimate the slice count without training, from the training mixtures alone.

    Parts: change points of a novelty curve over the frames' self-similarity, from timbre
    (log-mel), harmony (chroma) and rhythm (tempogram) views (default), or spectral clustering
    with the count from the eigengap (a returning pattern counted once per contiguous run).
    Hypothesis (unverified): one slice per contiguous part; each training
    segment's part count is mapped to the nearest allowed slice count, and the estimate is the
    median over segments and tracks. Method and measured recovery: docs/estimate.md.
    """

    from .data.splits import load_splits  # lazy: torch, scipy
    from .search.estimate import EstimateParams, estimate_slices  # lazy: scipy

    try:
        allowed = [int(s) for s in slices.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--slices: expected comma-separated integers such as 1,2,4,8, got {slices!r}") from None
    splits = load_splits(validate_model(DataConfig, dict(root=data), "--data"))
    est = estimate_slices(
        splits,
        segment_seconds,
        allowed,
        n_fft,
        hop,
        max_tracks,
        EstimateParams(min_part_seconds=min_part_seconds, method=method),
    )
    print(est.format())
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(est.to_dict(), indent=1))
        print(f"wrote {json_out}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code instead of exiting when called from tests."""
    global _LOGGING
    # MLflow draws a progress bar for every artifact download; reports download dozens.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # With a tracking server MLflow prints "View run ... / View experiment at ..." at every run's
    # end, trials' included; the study prints its own MLflow line once.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    with _Logging(sys.argv[1:] if argv is None else argv) as _LOGGING:
        try:
            return _main(argv)
        finally:
            _LOGGING = None


def _main(argv: list[str] | None) -> int:
    try:
        # With standalone_mode=False click returns typer.Exit's code instead of raising it.
        rc = app(args=argv, standalone_mode=False)
    except SamsNetError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt as e:
        console.print("interrupted")
        return e.exit_code if isinstance(e, stop.Interrupted) else 130
    except typer.Exit as e:
        return e.exit_code
    except Exception as e:  # usage errors: typer 0.29 raises its own bundled copy of click's classes
        kinds = {c.__name__ for c in type(e).__mro__}
        if "ClickException" in kinds:
            e.show()
            return 2
        if "Abort" in kinds:
            return 130
        raise
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
