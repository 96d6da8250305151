"""Usage mistakes are one usage line and exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from samsnet_search.cli import main


@pytest.mark.parametrize(
    "argv, says",
    [
        (["separate", "song.wav"], "Missing argument 'audio'"),
        (["run"], "Missing argument 'study_file'"),
        (["report", "x", "--no-such-option"], "No such option: --no-such-option"),
        (["no-such-command"], "No such command 'no-such-command'"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(argv, says, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["bench", "--help"]])
def test_help_does_not_import_torch_ray_or_mlflow(argv):
    """`--help` answers at once: the heavy libraries load only in the commands that use them."""
    code = (
        "import sys\nfrom samsnet_search.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-2000:]


@pytest.mark.parametrize(
    "argv, usage",
    [
        (["separate", "--help"], "separate [OPTIONS] MODEL AUDIO"),
        (["model-info", "--help"], "model-info [OPTIONS] [CONFIG]"),
        (["data", "synth", "--help"], "data synth [OPTIONS] OUT"),
        (["infra", "env", "--help"], "infra env [OPTIONS]"),
        (["--help"], "[OPTIONS] COMMAND [ARGS]..."),
    ],
)
def test_help_shows_no_type_for_flags_and_capital_arguments(argv, usage, capsys, monkeypatch):
    """A flag takes no value: no `<bool>` beside it (typer 0.29 writes one); usage names arguments as
    click does, MODEL AUDIO, not `{model} {audio}`."""
    monkeypatch.setenv("COLUMNS", "200")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert usage in out and "{" not in out.split("\n", 3)[1]
    assert "<bool>" not in out and "--help" in out


def test_export_storage_default_is_the_shared_one(capsys, monkeypatch):
    """`export --storage` defaults as `report` / `resume` / `ls` do ($SAMSNET_STORAGE, config, ./runs)."""
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["export", "--help"]) == 0
    out = capsys.readouterr().out
    assert "$SAMSNET_STORAGE" in out and "[default: ./runs]" not in out
