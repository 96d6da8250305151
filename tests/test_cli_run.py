"""`run` / `resume` exit codes: a search that Ray Tune stopped on Ctrl-C exits 130, no selection."""

from __future__ import annotations

from types import SimpleNamespace

import yaml

from samsnet_search import cli


def test_interrupted_search_exits_130_and_skips_selection(tmp_path, synth_root, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the study's storage (./runs) and its lease
    study_file = tmp_path / "s.yaml"
    study_file.write_text(yaml.safe_dump({"model": {"n_fft": 256, "hop_length": 128, "slices": {"choice": [1, 2]}},
                                          "data": {"root": str(synth_root), "segment_seconds": 0.5}}))  # fmt: skip
    selected = []
    # The search itself is replaced: Tune returns normally after a Ctrl-C, with unfinished trials.
    monkeypatch.setattr(cli, "_run_live", lambda study, live, **kw: SimpleNamespace(study=study, interrupted=True, pareto=None))
    monkeypatch.setattr("samsnet_search.search.show.format_result", lambda result: "study s: INTERRUPTED")
    monkeypatch.setattr(cli, "_select", lambda *a, **kw: selected.append(a))
    assert cli.main(["run", str(study_file), "--no-live"]) == 130
    captured = capsys.readouterr()
    assert "INTERRUPTED" in captured.out and not selected
    assert "continue with: samsnet-search resume s" in captured.err
