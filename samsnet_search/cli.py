"""Command line: thin. Each command parses its arguments and calls a library function.

`main(argv)` is callable from tests. Library errors (`SamsNetError`) become one line on
stderr and exit code 2, with no traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .errors import SamsNetError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Hyperparameter search for Sams-Net.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: synthesize, inspect.")
app.add_typer(data_app, name="data")
infra_app = typer.Typer(no_args_is_help=True, help="Local stack: SeaweedFS S3 store + MLflow tracking server.")
app.add_typer(infra_app, name="infra")
console = Console(stderr=True)


@app.command("model-info")
def model_info(
    config: Optional[Path] = typer.Argument(None, help="experiment YAML (model/data/train); default: paper config"),
    channels: Optional[int] = typer.Option(None, help="override model.channels"),
    heads: Optional[int] = typer.Option(None, help="override model.heads"),
    depth: Optional[int] = typer.Option(None, help="override model.depth"),
    slices: Optional[int] = typer.Option(None, help="override model.slices"),
) -> None:
    """Parameter count and MACs per second of audio for a configuration."""
    from .config import ExperimentConfig, load_experiment
    from .model.info import describe

    exp = load_experiment(config) if config else ExperimentConfig()
    overrides = {k: v for k, v in dict(channels=channels, heads=heads, depth=depth, slices=slices).items() if v}
    exp = exp.model_copy(update={"model": exp.model.model_copy(update=overrides)})
    info = describe(exp.resolved_model())
    for key, value in info.items():
        print(f"{key:>24}: {value}")


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
    from .data.synth import synthesize

    root = synthesize(out, n_train=train, n_valid=valid, n_test=test, seconds=seconds, seed=seed,
                      section_range=(section_min, section_max), overwrite=force)  # fmt: skip
    print(f"wrote {train + valid} train/ tracks ({valid} for validation) and {test} test/ tracks of {seconds:g} s to {root}")


@data_app.command("info")
def data_info(
    root: Path = typer.Argument(..., help="MUSDB18 / MUSDB18-HQ / synthetic dataset folder"),
    format: str = typer.Option("auto", "--format", help="auto, hq (wav folders) or stems (.stem.mp4)"),
    valid_track: Optional[list[str]] = typer.Option(None, help="validation track name (repeatable); default: official list"),
    cache_dir: Optional[Path] = typer.Option(None, help="decoded-audio cache; default <root>/.samsnet-cache"),
    check: bool = typer.Option(False, "--check", help="decode every track now (fills the cache, finds bad samples)"),
) -> None:
    """Load the splits of a dataset and print counts, kind and fingerprint."""
    from .config import DataConfig, validate_model
    from .data.splits import load_splits, prepare

    cfg = validate_model(DataConfig, dict(root=root, format=format, valid_tracks=valid_track or None,
                                          cache_dir=cache_dir), "command line")  # fmt: skip
    splits = load_splits(cfg)
    print(f"       root: {splits.root}")
    print(f"       kind: {splits.kind}")
    print(f"fingerprint: {splits.fingerprint}")
    for name in ("train", "valid", "test"):
        tracks = getattr(splits, name)
        print(f"{name:>11}: {len(tracks)} tracks")
    if check:
        samples = prepare(splits.all_tracks())
        print(f"    decoded: {samples / 44100 / 60:.1f} min of audio, all checked (cache: {splits.train[0].cache.folder})")

_STATE_HELP = "stack state folder; default $SAMSNET_INFRA_DIR or ./.samsnet/infra"


@infra_app.command("up")
def infra_up(
    state_dir: Optional[Path] = typer.Option(None, help=_STATE_HELP),
    host: Optional[str] = typer.Option(None, help="listen address (default 127.0.0.1); on a cluster one workers reach"),
    s3_port: Optional[int] = typer.Option(None, help="S3 API port (default 8333; weed also opens +10000)"),
    mlflow_port: Optional[int] = typer.Option(None, help="MLflow server port (default 5000)"),
    master_port: Optional[int] = typer.Option(None, help="SeaweedFS master port (default 9333; and +10000)"),
    volume_port: Optional[int] = typer.Option(None, help="SeaweedFS volume port (default 9340; and +10000)"),
    filer_port: Optional[int] = typer.Option(None, help="SeaweedFS filer port (default 8888; and +10000)"),
    admin_port: Optional[int] = typer.Option(None, help="SeaweedFS admin port (default 23646; and +10000)"),
    bucket: Optional[str] = typer.Option(None, help="bucket for artifacts and Ray storage (default samsnet)"),
    allowed_hosts: Optional[str] = typer.Option(None, help="MLflow --allowed-hosts, e.g. mlflow.example.org"),
    timeout: Optional[float] = typer.Option(None, help="seconds to wait for each service (default 120)"),
) -> None:
    """Start SeaweedFS (S3) and an MLflow server with artifacts in it; no-op if running."""
    from . import infra

    cfg = infra.make_config(
        state_dir=state_dir, host=host, s3_port=s3_port, mlflow_port=mlflow_port, master_port=master_port,
        volume_port=volume_port, filer_port=filer_port, admin_port=admin_port, bucket=bucket,
        allowed_hosts=allowed_hosts, start_timeout=timeout,
    )  # fmt: skip
    info = infra.up(cfg)
    for name, url in (("s3", info.s3_endpoint), ("mlflow", info.tracking_uri)):
        how = "already running" if name in info.already_running else "started"
        print(f"{name:>7}: {url}  pid {info.pids[name]}  ({how})")
    print(f" bucket: {info.bucket} (MLflow artifacts under {info.artifact_root})")
    print(f"  state: {info.state_dir} (logs in {info.state_dir / 'logs'})")
    print(f'client environment: eval "$(samsnet-search infra env --state-dir {info.state_dir})"')


@infra_app.command("down")
def infra_down(state_dir: Optional[Path] = typer.Option(None, help=_STATE_HELP)) -> None:
    """Stop the MLflow server and SeaweedFS (data stays in the state folder)."""
    from . import infra

    stopped = infra.down(infra.make_config(state_dir=state_dir))
    print("stopped: " + ", ".join(stopped) if stopped else "nothing was running")


@infra_app.command("status")
def infra_status(state_dir: Optional[Path] = typer.Option(None, help=_STATE_HELP)) -> None:
    """Each service: address, pid, health. Exit code 1 unless all are healthy."""
    from . import infra

    services = infra.status(infra.make_config(state_dir=state_dir))
    for s in services:
        state = "healthy" if s.healthy else ("running, not answering" if s.running else "down")
        pid = f"  pid {s.pid}" if s.pid else ""
        print(f"{s.name:>7}: {state:<8} {s.address}{pid}")
    if not all(s.healthy for s in services):
        raise typer.Exit(1)


@infra_app.command("env")
def infra_env(state_dir: Optional[Path] = typer.Option(None, help=_STATE_HELP)) -> None:
    """Print `export` lines (including the S3 secret) for `eval "$(samsnet-search infra env)"`."""
    import shlex

    from . import infra

    for key, value in infra.client_env(infra.make_config(state_dir=state_dir)).items():
        print(f"export {key}={shlex.quote(value)}")



_STORAGE_HELP = "storage root holding the studies (local folder or s3://bucket/prefix)"


@app.command("validate")
def validate(study_file: Path = typer.Argument(..., help="study YAML (see search_spaces/)")) -> None:
    """Check a study file (keys, types, ranges, slices vs segment frames, data) and print the resolved space."""
    from .search.show import format_space
    from .search.study import load_study

    print(format_space(load_study(study_file)))


def _run_live(study, live: bool, **kwargs):
    """Run (or continue) a study, with the live terminal view unless --no-live."""
    from contextlib import nullcontext

    from .search.runner import run_study

    view = nullcontext()
    if live:
        from .search.live import LiveView

        view = LiveView(study, console)
    with view:
        return run_study(study, quiet=live, **kwargs)


@app.command("run")
def run(
    study_file: Path = typer.Argument(..., help="study YAML (see search_spaces/)"),
    address: Optional[str] = typer.Option(None, help="existing Ray cluster (e.g. auto); default: start a local Ray"),
    num_cpus: Optional[int] = typer.Option(None, help="CPUs of the local Ray (default: all of this machine)"),
    num_gpus: Optional[int] = typer.Option(None, help="GPUs of the local Ray (default: detected)"),
    restart_errored: bool = typer.Option(False, "--restart-errored", help="when continuing: run failed trials again"),
    live: bool = typer.Option(True, "--live/--no-live", help="live table of trials in the terminal"),
) -> None:
    """Run a study; if it exists (same name, same file) it continues where it stopped."""
    from .search.show import format_result
    from .search.study import load_study

    study = load_study(study_file)
    result = _run_live(study, live, address=address, num_cpus=num_cpus, num_gpus=num_gpus,
                       restart_errored=restart_errored)  # fmt: skip
    print(format_result(result))


@app.command("resume")
def resume(
    name: str = typer.Argument(..., help="study name (or its folder / s3:// URI)"),
    storage: str = typer.Option("./runs", help=_STORAGE_HELP),
    address: Optional[str] = typer.Option(None, help="existing Ray cluster (e.g. auto); default: start a local Ray"),
    num_cpus: Optional[int] = typer.Option(None, help="CPUs of the local Ray (default: all of this machine)"),
    num_gpus: Optional[int] = typer.Option(None, help="GPUs of the local Ray (default: detected)"),
    restart_errored: bool = typer.Option(False, "--restart-errored", help="run failed trials again"),
    live: bool = typer.Option(True, "--live/--no-live", help="live table of trials in the terminal"),
) -> None:
    """Continue an interrupted study: finished trials stay, unfinished ones continue from their checkpoint."""
    from .search.identity import find_study
    from .search.runner import load_stored_study
    from .search.show import format_result
    from .search.study import resolve_storage

    study = load_stored_study(find_study(name, resolve_storage(storage, Path.cwd())))
    result = _run_live(study, live, address=address, num_cpus=num_cpus, num_gpus=num_gpus,
                       restart_errored=restart_errored)  # fmt: skip
    print(format_result(result))


@app.command("ls")
def ls(storage: str = typer.Option("./runs", help=_STORAGE_HELP)) -> None:
    """List the studies in a storage root with their state."""
    from .search.identity import list_studies
    from .search.show import format_studies
    from .search.study import resolve_storage

    print(format_studies(list_studies(resolve_storage(storage, Path.cwd()))))


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code instead of exiting when called from tests."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        # With standalone_mode=False click returns typer.Exit's code instead of raising it.
        rc = app(args=argv, standalone_mode=False)
    except SamsNetError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    except typer.Exit as e:
        return e.exit_code
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return 2
        if isinstance(e, click.exceptions.Abort):
            return 130
        raise
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
