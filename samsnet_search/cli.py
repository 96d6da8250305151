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


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code instead of exiting when called from tests."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(args=argv, standalone_mode=False)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
