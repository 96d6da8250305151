"""Export: torch.export programs + ONNX + weights + card, each equal to the eager model at any length;
separating from the export (in chunks, by `engine.apply`) matches the checkpoint."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import soundfile as sf
import torch

from samsnet_search.cli import main
from samsnet_search.config import TARGETS, ExperimentConfig, ModelConfig
from samsnet_search.delivery import export, export_folder
from samsnet_search.delivery.registry import load_separator
from samsnet_search.engine import checkpoint
from samsnet_search.engine.separate import read_audio, separate
from samsnet_search.engine.train import Trainer
from samsnet_search.model import SamsNet, sams_net


def tiny_experiment(root: Path) -> ExperimentConfig:
    """One epoch of a very small model (non-paper sizes): 1 s segments are 345 frames, slice_frames 115."""
    return ExperimentConfig.model_validate(
        {
            "model": {"n_fft": 256, "hop_length": 128, "channels": 4, "heads": 2, "depth": 1, "slices": 3},
            "data": {"root": str(root), "segment_seconds": 1.0, "samples_per_track": 1, "valid_seconds": 4.0},
            "train": {
                "lr": 0.01,
                "batch_size": 4,
                "epochs": 1,
                "patience": 5,
                "valid_sdr_every": 1,
                "seed": 7,
                "threads": 2,
            },
        }
    )


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory) -> Path:
    """Checkpoint folder of a tiny model trained one epoch on the synthetic set."""
    workdir = tmp_path_factory.mktemp("export-train")
    return Trainer(tiny_experiment(synth_root), workdir).fit().checkpoint_dir


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> Path:
    return export.export_checkpoint(trained, tmp_path_factory.mktemp("export") / "best")


@pytest.fixture(scope="module")
def song(synth_root, tmp_path_factory) -> Path:
    """A real (synthetic) test-track mixture, cut to an odd length in samples and in frames."""
    audio = read_audio(sorted((synth_root / "test").iterdir())[0] / "mixture.wav")[:, : 2 * 44100 + 777]
    path = tmp_path_factory.mktemp("song") / "song.wav"
    sf.write(path, audio.T, 44100, subtype="FLOAT")
    return path


def test_export_folder_holds_every_artifact(trained, exported):
    for name in (
        "masks.pt2",
        "separate.pt2",
        "model.onnx",
        "weights.pt",
        "model_config.json",
        "experiment.json",
        "MODEL_CARD.md",
        "export.json",
        "mlflow_model.py",
    ):
        assert (exported / name).is_file(), name
    best = checkpoint.load(trained / "best.pt")
    weights = torch.load(exported / "weights.pt", weights_only=True)
    assert weights.keys() == best["model"].keys()
    assert all(torch.equal(weights[k], best["model"][k]) for k in weights)
    assert json.loads((exported / "model_config.json").read_text()) == best["model_config"]
    assert json.loads((exported / "experiment.json").read_text()) == best["experiment"]
    manifest = export_folder.read_manifest(exported)
    assert manifest["parity"]["opset"] >= 17
    assert set(manifest["parity"]["max_abs_error"]) == {"masks", "separate", "onnx"}
    assert max(manifest["parity"]["max_abs_error"].values()) <= 1e-4
    # Traced on an input of more than two slices whose frames do not fill whole slices.
    L = best["model_config"]["slice_frames"]
    assert manifest["parity"]["traced_frames"] > 2 * L and manifest["parity"]["traced_frames"] % L != 0
    assert manifest["network"]["context_frames"] == checkpoint.load_model(trained)[0].context_frames()


def test_model_card_names_data_size_and_scores(trained, exported):
    card = (exported / "MODEL_CARD.md").read_text()
    best = checkpoint.load(trained / "best.pt")
    net, _ = checkpoint.load_model(trained)
    assert "synthetic (MUSDB18-HQ format)" in card
    assert f"{sum(p.numel() for p in net.parameters()):,}" in card
    assert "GMACs per second of audio" in card
    assert "| model.slices | 3 |" in card
    assert f"{best['metrics']['valid_sdr']:.2f}" in card  # the checkpoint's validation SDR
    assert "validation (checkpoint)" in card


@pytest.mark.parametrize("frames", [5, 115, 116, 230, 301])
def test_onnx_matches_the_checkpoint_model_at_any_frame_count(trained, exported, song, frames):
    """onnxruntime vs. the original SamsNet (not the export wrapper) on a real magnitude, within 1e-4."""
    net, _ = checkpoint.load_model(trained)
    with torch.no_grad():
        mag = net.spectrogram(torch.from_numpy(read_audio(song))[None]).abs()[..., :frames]  # (1, C, F, T)
        want = net(mag).numpy()
    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["masks"], {"mag": mag.numpy()})[0]
    assert got.shape == (1, 4, 2, 129, frames)
    assert np.abs(got - want).max() <= 1e-4


@pytest.mark.parametrize("frames", [2, 7, 115, 116, 230, 231, 500])
def test_masks_program_matches_the_checkpoint_model(trained, exported, frames):
    """masks.pt2 at lengths shorter than, equal to, and not multiples of the slice (115 frames)."""
    net, _ = checkpoint.load_model(trained)
    model = export_folder.load_exported(exported)
    mag = torch.rand(3, 2, 129, frames, generator=torch.Generator().manual_seed(frames))
    with torch.no_grad():
        assert (model(mag) - net(mag)).abs().max() <= 1e-4


@pytest.mark.parametrize("samples", [129, 128 * 114 + 5, 128 * 115, 44100, 2 * 44100 + 777])
def test_separate_program_matches_the_checkpoint_model(trained, exported, song, samples):
    """separate.pt2 (STFT, masks, ISTFT) on real audio; 128 * 115 samples are 116 frames."""
    net, _ = checkpoint.load_model(trained)
    model = export_folder.load_exported(exported)
    audio = torch.from_numpy(read_audio(song))[None, :, :samples]
    with torch.no_grad():
        assert (model.separate(audio) - net.separate(audio)).abs().max() <= 1e-4


def test_chunked_separation_of_the_export_matches_the_whole_checkpoint(trained, exported, song):
    """The one chunk loop (`engine.apply`) drives the export as it drives the Python model."""
    net, _ = checkpoint.load_model(trained)
    audio = read_audio(song)
    whole = separate(net, audio, chunk_seconds=60.0)
    chunked = separate(export_folder.load_exported(exported), audio, chunk_seconds=0.5)
    for target in TARGETS:
        assert np.abs(chunked[target] - whole[target]).max() <= 1e-4


def test_separate_from_export_writes_stems_matching_the_checkpoint(trained, exported, song, tmp_path, capsys):
    assert main(["separate", str(exported), str(song), "--out", str(tmp_path / "ts"), "--device", "cpu"]) == 0
    assert main(["separate", str(trained), str(song), "--out", str(tmp_path / "ckpt"), "--device", "cpu"]) == 0
    n = sf.info(song).frames
    for target in TARGETS:
        got, rate = sf.read(tmp_path / "ts" / f"{target}.wav", dtype="float32")
        want, _ = sf.read(tmp_path / "ckpt" / f"{target}.wav", dtype="float32")
        assert rate == 44100 and got.shape == (n, 2)
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.abs(got).max() > 0  # not silence


def test_load_separator_picks_the_programs_for_an_export(trained, exported, song):
    model = load_separator(exported)
    assert isinstance(model, export_folder.ExportedModel)
    stems = separate(model, read_audio(song))
    assert list(stems) == list(TARGETS) and stems["vocals"].shape == read_audio(song).shape
    assert isinstance(load_separator(trained), SamsNet)


def test_export_runs_with_torch_alone(exported, song, tmp_path):
    """separate.pt2 separates in a fresh interpreter that never imports samsnet_search."""
    ref = separate(load_separator(exported), read_audio(song))
    np.save(tmp_path / "mix.npy", read_audio(song))
    code = (
        "import sys, numpy as np, torch\n"
        f"m = torch.export.load({str(exported / 'separate.pt2')!r}).module()\n"
        f"x = torch.from_numpy(np.load({str(tmp_path / 'mix.npy')!r}))[None]\n"
        "with torch.no_grad(): y = m(x)[0].numpy()\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, y)\n"
        "assert not any(k.startswith('samsnet_search') for k in sys.modules), 'imported samsnet_search'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, timeout=120)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), np.stack([ref[t] for t in TARGETS]), atol=1e-4)


def test_weights_load_without_pickled_code(exported, trained):
    net = export_folder.load_weights(exported)
    ref, _ = checkpoint.load_model(trained)
    for (k, a), (_, b) in zip(net.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_export_command_writes_a_folder(trained, tmp_path, capsys):
    assert (
        main(["export", str(trained / "best.pt"), "--out", str(tmp_path / "cli"), "--storage", str(tmp_path / "runs")])
        == 0
    )
    said = capsys.readouterr()
    assert "exported to" in said.out
    assert export_folder.is_export(tmp_path / "cli")
    steps = [line.split(" (")[0] for line in said.err.splitlines() if line.startswith("export: ")]
    assert steps == [  # a line per step as it starts, no library INFO lines
        "export: loading the weights",
        "export: tracing the torch.export programs",
        "export: converting the masks program to ONNX",
        "export: checking the exported programs against the eager model",
        "export: writing the model card and export.json",
    ]
    assert "INFO" not in said.err.replace("(INFO and above", "")


# --- errors: one line, exit code 2 ---------------------------------------------------------


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.startswith("error:")
    return " ".join(err.split())


def test_separate_missing_model_folder(song, tmp_path, capsys):
    assert main(["separate", str(tmp_path / "nope"), str(song), "--out", str(tmp_path / "o")]) == 2
    assert "nope: no such file or folder" in _error(capsys)


def test_separate_folder_that_is_not_an_export(song, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["separate", str(tmp_path / "empty"), str(song), "--out", str(tmp_path / "o")]) == 2
    assert "neither an export folder (no export.json) nor a checkpoint folder" in _error(capsys)


def test_separate_export_with_unknown_format(exported, song, tmp_path, capsys):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "export.json").write_text(json.dumps({"format": "something-else/9"}))
    assert main(["separate", str(fake), str(song), "--out", str(tmp_path / "o")]) == 2
    assert f"unknown export format (expected {export_folder.FORMAT})" in _error(capsys)


def test_separate_export_with_a_missing_program(exported, song, tmp_path, capsys):
    broken = Path(shutil.copytree(exported, tmp_path / "broken"))
    (broken / "masks.pt2").unlink()
    assert main(["separate", str(broken), str(song), "--out", str(tmp_path / "o")]) == 2
    assert "masks.pt2: missing from the export folder" in _error(capsys)


def test_an_old_torchscript_export_is_refused_with_what_to_do(exported, song, tmp_path, capsys):
    old = Path(shutil.copytree(exported, tmp_path / "old"))
    manifest = json.loads((old / "export.json").read_text())
    (old / "export.json").write_text(json.dumps({**manifest, "format": "samsnet-export/2"}))
    assert main(["separate", str(old), str(song), "--out", str(tmp_path / "o")]) == 2
    assert (
        "format samsnet-export/2 holds TorchScript (model.ts), which this version no longer loads; export the model again"
        in _error(capsys)
    )


def test_export_unknown_source(tmp_path, capsys):
    assert main(["export", "no-such-study", "--out", str(tmp_path / "o"), "--storage", str(tmp_path / "runs")]) == 2
    assert "no-such-study: not a checkpoint folder or .pt file, not a study" in _error(capsys)


def test_export_refuses_a_non_export_out_folder(trained, tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["export", str(trained), "--out", str(tmp_path / "busy")]) == 2
    assert "exists and is not an export folder" in _error(capsys)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_the_traced_example_falls_back_to_synthetic_audio_when_the_data_is_gone():
    net = checkpoint.build_model(ModelConfig(n_fft=256, hop_length=128, channels=2, depth=1, slices=2).resolved(22050))
    mag = export.example_magnitude({"experiment": {"data": {"root": "/no/such/data"}}}, net)
    assert (
        mag.shape[:3] == (2, 2, 129) and mag.shape[-1] % net.slice_frames != 0 and mag.shape[-1] > 2 * net.slice_frames
    )
    assert float(mag.mean()) > 0  # real (synthesized) audio, not zeros


def _kernels(program) -> set[str]:
    names = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    return {k for k in ("scaled_dot_product_attention", "bmm") if any(k in n for n in names)}


def test_programs_hold_sdpa_and_move_to_another_device():
    """Exports trace SDPA (moved to a GPU it runs the flash / memory-efficient kernels), not the
    batched matmuls that eager CPU picks for short slices; moved to another device (meta here: no GPU
    in CI) nothing in the graph still makes tensors on the CPU."""
    from torch.export.passes import move_to_device_pass

    net = SamsNet(slice_frames=11, n_fft=256, hop_length=128, channels=4, heads=2, depth=1).eval()
    assert net.slice_frames <= sams_net.BMM_MAX_SLICE_FRAMES  # eager CPU would use batched matmuls
    audio = torch.randn(2, 2, 128 * 40)  # batch 2: a dynamic batch must not be traced at 1
    with torch.no_grad():
        mag = net.spectrogram(audio).abs()
    for program in export.export_programs(net, mag, audio):
        assert _kernels(program) == {"scaled_dot_product_attention"}
        moved = move_to_device_pass(program, "meta")
        assert {t.device.type for t in moved.state_dict.values()} == {"meta"}
        for node in moved.graph.nodes:
            device = node.kwargs.get("device")
            assert device is None or torch.device(device).type == "meta", node.format_node()
    assert all(m.kernel is None for m in net.modules() if isinstance(m, sams_net.SlicedMultiHeadAttention))


def test_pyfunc_runs_on_the_gpu_where_there_is_one(exported, monkeypatch):
    """The MLflow pyfunc moves the program to CUDA when CUDA is available (patched here: the move is
    what runs on a GPU node), and stays on the CPU otherwise."""
    import importlib.util
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location("exported_pyfunc", exported / "mlflow_model.py")
    pyfunc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pyfunc)
    moves = []
    monkeypatch.setattr(pyfunc, "move_to_device_pass", lambda p, d: moves.append(str(d)) or p)
    context = SimpleNamespace(artifacts={"export": str(exported)})
    model = pyfunc.SamsNetSeparator()
    model.load_context(context)
    assert model.device.type == "cpu" and moves == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model.load_context(context)
    assert model.device.type == "cuda" and moves == ["cuda"]
