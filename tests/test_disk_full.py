"""A full disk where the driver records the study's end: one line, no traceback; `ls` and
`resume` then see a `running` study without a driver and treat it as interrupted."""

from __future__ import annotations

import errno
import logging

import pytest

from samsnet_search.search import identity, runner


def test_a_manifest_that_cannot_be_written_is_one_line(tmp_path, monkeypatch, caplog):
    m = identity.Manifest("s", str(tmp_path), "s", "1", "r", "samsnet-s", "file:x", None, "/", "s.yaml")

    def full(_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(identity, "write_manifest", full)
    with caplog.at_level(logging.ERROR, logger="samsnet_search.search.runner"):
        runner.close_study(m, target=None, state="failed", result=None)
    assert "study.json" in caplog.text and "No space left on device" in caplog.text and "resume" in caplog.text


def test_other_manifest_write_errors_still_raise(tmp_path, monkeypatch):
    m = identity.Manifest("s", str(tmp_path), "s", "1", "r", "samsnet-s", "file:x", None, "/", "s.yaml")

    def denied(_):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(identity, "write_manifest", denied)
    with pytest.raises(PermissionError):
        runner.close_study(m, target=None, state="failed", result=None)


def test_the_end_state_waits_out_a_full_disk_within_the_budget(tmp_path, monkeypatch):
    m = identity.Manifest("s", str(tmp_path), "s", "1", "r", "samsnet-s", "file:x", None, "/", "s.yaml")
    written = []

    def full_twice(manifest):
        if len(written) < 2:
            written.append(None)
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(manifest.state)

    monkeypatch.setattr(identity, "write_manifest", full_twice)
    runner.close_study(m, target=None, state="failed", result=None, budget_s=30)
    assert written == [None, None, "failed"]  # space came back while the driver waited: recorded
