"""Usage mistakes are one usage line and exit code 2, never a traceback."""

from __future__ import annotations

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
