"""`export` is atomic (issue 22 item 7): it writes into a staging folder beside `--out` and renames
it into place at the end, so a SIGKILL mid-export leaves no partial `--out`, and the next export
works without hand work; an existing export in `--out` is replaced, anything else still refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_wiener import save_tiny_checkpoint

from samsnet_search.cli import main
from samsnet_search.delivery import export, export_folder

TESTS = Path(__file__).resolve().parent

# The child exports for real but waits before the ONNX conversion (weights and programs written):
# the test kills it at a known point instead of guessing by timing.
CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from samsnet_search import cli
from samsnet_search.delivery import export
def paused(*args, **kwargs):
    print("paused", flush=True)
    time.sleep(120)
export.export_onnx = paused
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def test_a_killed_export_leaves_no_out_folder_and_the_next_one_works(ckpt, tmp_path):
    out = tmp_path / "best"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(tests=str(TESTS)), "export", str(ckpt), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        line = child.stdout.readline()
        if line.startswith("log: "):  # the command's log file comes first on stdout
            line = child.stdout.readline()
        assert line.strip() == "paused", child.stderr.read()
        (staging,) = tmp_path.glob(".best.exporting-*")
        assert (staging / export_folder.WEIGHTS_FILE).is_file() and not out.exists()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert not out.exists()

    assert main(["export", str(ckpt), "--out", str(out)]) == 0
    export_folder.verify_export(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # the killed run's staging is gone


def test_a_folder_that_is_not_an_export_is_still_refused(ckpt, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["export", str(ckpt), "--out", str(out)]) == 2
    assert "exists and is not an export folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    assert export.STAGING.format(name="x", pid=1) == ".x.exporting-1"
