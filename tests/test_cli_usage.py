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
