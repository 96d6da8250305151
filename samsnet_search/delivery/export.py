"""Export a trained Sams-Net as a self-contained folder, register it in MLflow, load it back.

An export folder holds:

* `model.ts`: a TorchScript module (scripted, not traced, so the frame count stays
  dynamic) with the whole waveform -> stems path: `forward(mag (B, C, F, T)) -> masks
  (B, 4, C, F, T)`, `masks_chunked(mag, chunk_frames)`, `separate(audio (B, C, N),
  chunk_frames) -> (B, 4, C, N)` (Hamming-window torch.stft / istft inside the module), and
  the attributes `audio_channels` and `spectrogram.hop_length`. Loading it needs torch only:
  no SamsNet Python code runs (`torch.jit.load`).
* `model.onnx`: the mask network on magnitudes, `mag (B, C, F, T) -> masks (B, 4, C, F, T)`,
  batch and frame count dynamic (opset 18), checked against PyTorch with onnxruntime.
* `weights.pt`: the best weights as a plain state dict (`torch.load(weights_only=True)`).
* `model_config.json`, `experiment.json`, `MODEL_CARD.md`, and `export.json` (format, each
  file's path and sha256, ONNX parity, source), which marks the folder as an export.

Loading checks every file it reads against `export.json`: a path must stay inside the folder
and the file's sha256 must match, else the load is refused naming the file. A registered
version also records the sha256 of `export.json` itself in the registry (a tag), so that an
export replaced as a whole in the artifact store is refused too.

Both exported graphs use a branch-free form of the sliced attention: the time axis is
always padded to whole slices and the padded keys always masked (with no padding the mask
is all true), because a Python `if pad:` would be frozen into a traced/exported graph at
the example's length. It is the same computation as `SlicedMultiHeadAttention`; tests
check it at lengths that are and are not multiples of `slice_frames`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..engine import checkpoint
from ..config import TARGETS, ModelConfig, flatten
from ..errors import SamsNetError

log = logging.getLogger(__name__)

# /2: every file with its sha256 (/1 had bare names and no checksums; it is refused).
FORMAT = "samsnet-export/2"
MANIFEST = "export.json"
TS_FILE, ONNX_FILE, WEIGHTS_FILE, CARD_FILE = "model.ts", "model.onnx", "weights.pt", "MODEL_CARD.md"
CONFIG_FILE, EXPERIMENT_FILE, PYFUNC_FILE = "model_config.json", "experiment.json", "mlflow_model.py"
# export.json "files" key -> file name in the folder.
FILES = {"torchscript": TS_FILE, "onnx": ONNX_FILE, "weights": WEIGHTS_FILE, "card": CARD_FILE,
         "model_config": CONFIG_FILE, "experiment": EXPERIMENT_FILE, "pyfunc": PYFUNC_FILE}  # fmt: skip
# Registry tags of a version: what it was registered from, checked when it is loaded back.
MANIFEST_SHA_TAG, WEIGHTS_SHA_TAG = "samsnet.export_sha256", "samsnet.weights_sha256"
MODEL_ARTIFACT = "registered_model"  # run artifact folder of the pyfunc (a trial run keeps model/ for best.pt)
ONNX_OPSET = 18
ONNX_TOLERANCE = 1e-4  # max |masks_onnx - masks_torch| on a real input
DEFAULT_ALIAS = "champion"
REGISTRY_PREFIX = "models:/"


class ExportError(SamsNetError):
    """An export cannot be written, found, loaded or registered."""


# --- graph-friendly modules ------------------------------------------------------------


class ExportAttention(nn.Module):
    """`SlicedMultiHeadAttention` without Python branches on the frame count.

    Shares the trained 1x1 Q/K/V convolution. x: (B, d, F, T) -> (B, h * d, F, T).
    """

    def __init__(self, source: nn.Module):
        super().__init__()
        self.qkv = source.qkv
        self.channels: int = source.channels
        self.heads: int = source.heads
        self.slice_frames: int = source.slice_frames
        self.scale: float = 1.0 / math.sqrt(source.channels)  # as in the model: tokens of d_k features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, d, Fq, T = x.shape
        h, L = self.heads, self.slice_frames
        i = (T + L - 1) // L  # slices, the last one padded
        qkv = F.pad(self.qkv(x), (0, i * L - T))  # (B, 3hd, F, iL)
        qkv = qkv.reshape(B, 3, h, d, Fq, i, L).permute(1, 0, 2, 4, 5, 6, 3)  # (3, B, h, F, i, L, d)
        qkv = qkv.reshape(3, B * h * Fq, i, L, d)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B h F, i, L, d)
        # Keys past the end of the input are never attended to (all true without padding).
        keep = (torch.arange(i * L, device=x.device) < T).reshape(i, 1, L)
        keep = keep.expand(q.shape[0], i, L, L)  # (B h F, i, L, L), full shape as in the model
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=self.scale)
        out = out.reshape(B, h, Fq, i * L, d)[:, :, :, :T]  # (B, h, F, T, d)
        return out.permute(0, 1, 4, 2, 3).reshape(B, h * d, Fq, T)  # (B, h d, F, T)


class ExportSpectrogram(nn.Module):
    """Hamming-window STFT / ISTFT as in `model.spectral.Spectrogram`, in TorchScript-able form."""

    def __init__(self, n_fft: int, hop_length: int):
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.register_buffer("window", torch.hamming_window(n_fft))  # persistent: saved in model.ts

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """audio (B, C, N) -> complex (B, C, F, T)."""
        B, C, N = audio.shape
        spec = torch.stft(audio.reshape(B * C, N).float(), n_fft=self.n_fft, hop_length=self.hop_length,
                          window=self.window, center=True, return_complex=True)  # fmt: skip
        return spec.reshape(B, C, spec.shape[-2], spec.shape[-1])

    def inverse(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """complex (B, S, C, F, T) -> audio (B, S, C, length)."""
        B, S, C, Fq, T = spec.shape
        audio = torch.istft(spec.reshape(B * S * C, Fq, T), n_fft=self.n_fft, hop_length=self.hop_length,
                            window=self.window, center=True, length=length)  # fmt: skip
        return audio.reshape(B, S, C, length)


class ExportedSamsNet(nn.Module):
    """A trained SamsNet's layers in scriptable form; the interface `separate.separate` uses.

    forward(mag (B, C, F, T)) -> masks (B, targets, C, F, T);
    separate(audio (B, C, N), chunk_frames) -> estimates (B, targets, C, N).
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        net = copy.deepcopy(net).eval()
        for block in net.blocks:
            block.attention = ExportAttention(block.attention)
        self.embedding = net.embedding
        self.blocks = net.blocks
        self.mask = net.mask
        self.mask_activation = net.mask_activation
        self.spectrogram = ExportSpectrogram(net.spectrogram.n_fft, net.spectrogram.hop_length)
        self.targets: int = net.targets
        self.audio_channels: int = net.audio_channels
        self.slice_frames: int = net.slice_frames
        self.context_frames: int = net.context_frames()

    def forward(self, mag: torch.Tensor) -> torch.Tensor:
        B, C, Fq, T = mag.shape
        x = self.embedding(mag)  # (B, d, F, T)
        for block in self.blocks:
            x = block(x)
        masks = self.mask_activation(self.mask(x))  # (B, targets * C, F, T)
        return masks.reshape(B, self.targets, C, Fq, T)

    @torch.jit.export
    def masks_chunked(self, mag: torch.Tensor, chunk_frames: Optional[int] = None) -> torch.Tensor:
        """As `SamsNet.masks_chunked`: slice-aligned chunks with context, bounded memory."""
        T = mag.shape[-1]
        L = self.slice_frames
        wanted = T if chunk_frames is None else chunk_frames
        chunk = max(L, wanted // L * L)
        if chunk >= T:
            return self.forward(mag)
        ctx = self.context_frames
        out = torch.empty(mag.shape[0], self.targets, mag.shape[1], mag.shape[2], T, dtype=mag.dtype, device=mag.device)
        for start in range(0, T, chunk):
            lo, hi, stop = max(0, start - ctx), min(T, start + chunk + ctx), min(T, start + chunk)
            out[:, :, :, :, start:stop] = self.forward(mag[:, :, :, lo:hi])[:, :, :, :, start - lo : stop - lo]
        return out

    @torch.jit.export
    def separate(self, audio: torch.Tensor, chunk_frames: Optional[int] = None) -> torch.Tensor:
        """audio (B, C, N) -> estimates (B, targets, C, N): masks times the mixture STFT, then ISTFT."""
        spec = self.spectrogram(audio)  # (B, C, F, T) complex
        masks = self.masks_chunked(spec.abs(), chunk_frames)  # (B, S, C, F, T)
        return self.spectrogram.inverse(masks.float() * spec.unsqueeze(1), audio.shape[-1])


# --- writing an export -------------------------------------------------------------------


def export_checkpoint(checkpoint_dir: str | Path, out_dir: str | Path, card_info: dict | None = None) -> Path:
    """Write the export folder for the best weights of a checkpoint folder (or .pt file).

    card_info (all optional): "title", "source" (what was exported, for the card), "data_kind",
    "test_sdr" ({target: dB}), "selection_table" (list of row dicts), "study_summary" (dict).
    Returns `out_dir`.
    """
    card_info = dict(card_info or {})
    net, state = checkpoint.load_model(checkpoint_dir)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ExportError(f"{out}: exists and is not an export folder; give an empty or new --out folder")
    out.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out / WEIGHTS_FILE)
    _write_json(out / CONFIG_FILE, state["model_config"])
    _write_json(out / EXPERIMENT_FILE, state["experiment"])
    wrapper = ExportedSamsNet(net).eval()
    with warnings.catch_warnings():  # torch 2.13 marks TorchScript deprecated; it is still the
        warnings.simplefilter("ignore", DeprecationWarning)  # format that runs without Python code
        torch.jit.save(torch.jit.script(wrapper), str(out / TS_FILE))
    example = example_magnitude(state, net)
    onnx_error = export_onnx(wrapper, example, out / ONNX_FILE)
    card_info.setdefault("source", str(checkpoint_dir))
    (out / CARD_FILE).write_text(model_card(net, state, card_info, onnx_error))
    (out / PYFUNC_FILE).write_text(_PYFUNC_CODE)
    _write_json(out / MANIFEST, {
        "format": FORMAT,
        "code_version": checkpoint.code_version(),
        "torch_version": torch.__version__,
        "source": card_info["source"],
        "epoch": state.get("epoch"),
        "targets": list(TARGETS),
        "files": {key: {"path": name, "sha256": sha256_file(out / name)} for key, name in FILES.items()},
        "onnx": {"opset": ONNX_OPSET, "max_abs_error": onnx_error, "input_frames": int(example.shape[-1])},
    })  # fmt: skip
    log.info("exported %s to %s (ONNX max error %.2e)", checkpoint_dir, out, onnx_error)
    return out


def _write_json(path: Path, payload: Any) -> None:
    """Written whole or not at all (export.json last: a crash mid-export leaves a folder that fails its checks)."""
    checkpoint.write_atomic(path, (json.dumps(payload, indent=2, default=str) + "\n").encode())


def sha256_file(path: Path) -> str:
    return checkpoint.file_digest(path)["sha256"]


def example_magnitude(state: dict[str, Any], net: nn.Module, seconds: float = 2.0) -> torch.Tensor:
    """A real input for the ONNX check: the magnitude of a track of the training data, if reachable,
    else of a freshly synthesized excerpt. (1, C, F, T), T not a multiple of slice_frames where possible.
    """
    audio = _training_audio(state, seconds)
    if audio is None:
        from ..data.synth import synthesize

        with tempfile.TemporaryDirectory() as tmp:
            root = synthesize(Path(tmp), n_train=1, n_valid=1, n_test=1, seconds=seconds, seed=0)
            audio = _first_mixture(root / "train", seconds)
    # An odd frame count exercises the padded last slice in the exported graph.
    hop = net.spectrogram.hop_length
    frames = 1 + audio.shape[-1] // hop
    if frames % net.slice_frames == 0 and audio.shape[-1] > hop:
        audio = audio[..., :-hop]
    with torch.no_grad():
        return net.spectrogram(torch.from_numpy(audio)[None]).abs()


def _training_audio(state: dict[str, Any], seconds: float) -> np.ndarray | None:
    root = (state.get("experiment") or {}).get("data", {}).get("root")
    if not root or not (Path(root) / "train").is_dir():
        return None
    try:
        return _first_mixture(Path(root) / "train", seconds)
    except SamsNetError:
        return None


def _first_mixture(train_dir: Path, seconds: float) -> np.ndarray:
    from ..config import SAMPLE_RATE
    from ..engine.separate import read_audio

    for track in sorted(train_dir.iterdir()):
        if (track / "mixture.wav").is_file():
            return read_audio(track / "mixture.wav")[:, : int(seconds * SAMPLE_RATE)]
    raise ExportError(f"{train_dir}: no <track>/mixture.wav to take an example input from")


def export_onnx(wrapper: ExportedSamsNet, example: torch.Tensor, path: Path) -> float:
    """Write the mask network as ONNX (dynamic batch and frames); returns the max abs error
    of onnxruntime against PyTorch on `example` and on a shorter odd-length cut of it."""
    batch, frames = torch.export.Dim("batch", max=64), torch.export.Dim("frames", min=2)
    with torch.no_grad(), _quiet_onnx_exporter():
        program = torch.onnx.export(wrapper, (example,), dynamo=True, opset_version=ONNX_OPSET,
                                    input_names=["mag"], output_names=["masks"],
                                    dynamic_shapes={"mag": {0: batch, 3: frames}}, external_data=False,
                                    verbose=False)  # fmt: skip
    program.save(str(path), external_data=False)
    error = max(onnx_parity(path, wrapper, example), onnx_parity(path, wrapper, example[..., : example.shape[-1] // 2 | 1]))
    if not error <= ONNX_TOLERANCE:
        raise ExportError(f"{path}: ONNX output differs from PyTorch by {error:.3g} (> {ONNX_TOLERANCE}); not exported")
    return error


class _DropTorchvisionNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("torchvision is not installed")


@contextlib.contextmanager
def _quiet_onnx_exporter():
    """Silence what torch 2.13's ONNX exporter says on every export that is not about our model:
    its op registry logs a warning per torchvision op when torchvision is absent (we use none),
    and `ExportedProgram.run_decompositions` deep-copies its own pytree `LeafSpec`s, which
    torch itself marks deprecated (a FutureWarning from torch/export, not from our code)."""
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    notices = _DropTorchvisionNotices()
    registry_log.addFilter(notices)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                    category=FutureWarning)  # fmt: skip
            yield
    finally:
        registry_log.removeFilter(notices)


def onnx_parity(path: Path, wrapper: nn.Module, mag: torch.Tensor) -> float:
    """max |onnxruntime(mag) - wrapper(mag)| over all mask values."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["masks"], {"mag": mag.numpy().astype(np.float32)})[0]
    with torch.no_grad():
        want = wrapper(mag).numpy()
    if got.shape != want.shape:
        raise ExportError(f"{path}: ONNX output shape {got.shape} differs from PyTorch's {want.shape}")
    return float(np.abs(got - want).max())


# --- the model card ------------------------------------------------------------------


def model_card(net: nn.Module, state: dict[str, Any], info: dict[str, Any], onnx_error: float) -> str:
    """MODEL_CARD.md: what the model is, how it scored, on which data, how to use it."""
    from ..model.info import macs_per_second, parameter_breakdown

    cfg = ModelConfig.model_validate(state["model_config"])
    experiment = state.get("experiment") or {}
    params = parameter_breakdown(net)
    lines = [f"# {info.get('title', 'Sams-Net music source separation model')}", ""]
    lines += [f"Exported from `{info['source']}` (epoch {state.get('epoch')}, code {state.get('code_version', '?')}).",
              "Sams-Net: sliced attention-based network for music source separation (Li et al. 2020); "
              "four targets: " + ", ".join(TARGETS) + ".", ""]  # fmt: skip
    lines += ["## Data", "", f"- Trained on: **{info.get('data_kind') or data_kind(experiment)}**",
              f"- Segment: {experiment.get('data', {}).get('segment_seconds')} s, validation protocol: "
              f"{experiment.get('data', {}).get('valid_protocol')}", ""]  # fmt: skip
    lines += ["## Hyperparameters", "", "| key | value |", "|---|---|"]
    lines += [f"| model.{k} | {v} |" for k, v in cfg.model_dump().items()]
    lines += [f"| train.{k} | {v} |" for k, v in (experiment.get("train") or {}).items() if k in _TRAIN_KEYS]
    lines += ["", "## Size and cost", "", f"- Parameters: {params['parameters']:,} "
              f"(convolutions {params['conv_parameters']:,}, LayerNorm affine {params['layernorm_parameters']:,})",
              f"- {macs_per_second(net) / 1e9:.3f} GMACs per second of audio (mask network, STFT excluded)", ""]  # fmt: skip
    lines += ["## Scores (SDR, dB, BSSEval v4: median over frames, then tracks)", ""]
    lines += _scores(state.get("metrics") or {}, info.get("test_sdr"), info.get("selection_table"))
    summary = _summary_rows(info.get("study_summary") or {})
    if summary:
        lines += ["", "### Search summary", "", *_table(summary)]
    lines += ["", "## Files", "",
              f"- `{TS_FILE}`: TorchScript (scripted), `separate(audio (B, C, N)) -> (B, 4, C, N)` and "
              "`forward(mag (B, C, F, T)) -> masks (B, 4, C, F, T)`; needs torch only.",
              f"- `{ONNX_FILE}`: mask network, input `mag` (B, C, F, T), output `masks` (B, 4, C, F, T), "
              f"dynamic batch and frames, opset {ONNX_OPSET}; onnxruntime matches PyTorch to {onnx_error:.1e}.",
              f"- `{WEIGHTS_FILE}`: state dict (`torch.load(..., weights_only=True)`), for `SamsNet(**model_config)`.",
              "- `model_config.json`, `experiment.json`: the configuration it was trained with.",
              "", "Use: `samsnet-search separate <this folder> song.wav --out stems/`.", ""]  # fmt: skip
    return "\n".join(lines)


_TRAIN_KEYS = ("lr", "batch_size", "epochs", "patience", "seed", "weight_decay", "grad_clip")


def _scores(metrics: dict[str, Any], test_sdr: dict[str, float] | None, selection: list[dict] | None) -> list[str]:
    """The SDR tables. A study's validation numbers are its selection table (full validation tracks,
    all seeds); the checkpoint's own per-epoch score on short excerpts is shown only without one,
    since the two measure different things and would contradict each other side by side."""
    lines: list[str] = []
    if selection:
        lines += ["Validation (full tracks, median over seeds; the study's selection table):", "", *_table(selection), ""]
    else:
        valid = {t: metrics.get(f"valid_sdr_{t}") for t in TARGETS}
        if any(v is not None for v in valid.values()):
            lines += _table([{"set": "validation (checkpoint)", **valid, "avg": metrics.get("valid_sdr")}]) + [""]
    if test_sdr:
        lines += ["Test (this model only; test data never influenced the choice):" if selection else "Test:", "",
                  *_table([{"set": "test", **{t: test_sdr.get(t) for t in TARGETS}, "avg": test_sdr.get("avg")}]), ""]  # fmt: skip
    if not lines:
        lines = ["No SDR recorded with this checkpoint.", ""]
    if metrics.get("valid_loss") is not None:
        lines += [f"valid_loss {metrics['valid_loss']:.5g} at this checkpoint."]
    return lines


# Summary entries shown elsewhere on the card (selection, test), too large for a row (pareto: the
# report shows the front), or about the registry, which the card (written before registering) cannot know.
_SUMMARY_SKIP = ("selection", "test", "registered", "pareto")


def _summary_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One `key | value` row per scalar; sections (counts, best_config) as dotted keys."""
    kept = {k: v for k, v in summary.items() if k not in _SUMMARY_SKIP}
    return [{"key": k, "value": f"{v:.5g}" if isinstance(v, float) else v}
            for k, v in flatten(kept).items() if not isinstance(v, (dict, list))]  # fmt: skip


def _table(rows: list[dict[str, Any]]) -> list[str]:
    cols = list(dict.fromkeys(k for row in rows for k in row))
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else ("-" if v is None else str(v))  # noqa: E731
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
            *("| " + " | ".join(fmt(row.get(c)) for c in cols) + " |" for row in rows)]  # fmt: skip


def data_kind(experiment: dict[str, Any]) -> str:
    """MUSDB18 / MUSDB18-HQ / synthetic, from the training data folder (if still reachable)."""
    from ..data.splits import KIND_HQ, KIND_STEMS, KIND_SYNTH, detect_format
    from ..data.synth import MANIFEST as SYNTH_MANIFEST

    data = experiment.get("data") or {}
    root = data.get("root")
    if not root:
        return "unknown (data.root was not recorded)"
    try:
        fmt = detect_format(Path(root), data.get("format", "auto"))
    except SamsNetError:
        return f"unknown (training data folder {root} is not reachable here)"
    if fmt == "stems":
        return KIND_STEMS
    return KIND_SYNTH if (Path(root) / SYNTH_MANIFEST).is_file() else KIND_HQ


# --- loading an export -------------------------------------------------------------------


def is_export(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(export_dir: str | Path) -> dict[str, Any]:
    """export.json of an export folder, checked: known format, every file a path inside the folder
    with a sha256 (the files themselves are checked when read: `verified_file`)."""
    folder = Path(export_dir)
    if not folder.is_dir():
        raise ExportError(f"{folder}: no such folder (expected an export folder from `samsnet-search export`)")
    if not is_export(folder):
        raise ExportError(f"{folder}: not a samsnet export (no {MANIFEST}); `samsnet-search export` writes one")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (ValueError, OSError) as e:
        raise ExportError(f"{folder / MANIFEST}: not valid JSON ({e})") from None
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if fmt == "samsnet-export/1":
        raise ExportError(f"{folder / MANIFEST}: format {fmt} records no checksums, so its files cannot be "
                          "verified; export the model again")  # fmt: skip
    if fmt != FORMAT:
        raise ExportError(f"{folder / MANIFEST}: unknown export format (expected {FORMAT})")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(key in files for key in FILES):
        raise ExportError(f"{folder / MANIFEST}: files: expected an entry for each of {', '.join(FILES)}")
    for key, entry in files.items():
        _check_entry(folder, key, entry)
    return manifest


def _check_entry(folder: Path, key: str, entry: Any) -> None:
    where = f"{folder / MANIFEST}: files.{key}"
    if not (isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("sha256"), str)
            and len(entry["sha256"]) == 64):  # fmt: skip
        raise ExportError(f"{where}: expected {{path: <file in the folder>, sha256: <64 hex digits>}}, got {entry!r}")
    rel = Path(entry["path"])
    # Resolved (symlinks followed) it must still be inside the folder: `../x.ts`, `/tmp/x.ts` or a
    # link pointing out would load a file the export never contained.
    if rel.is_absolute() or ".." in rel.parts or not (folder / rel).resolve().is_relative_to(folder.resolve()):
        raise ExportError(f"{where}: path {entry['path']!r} is outside the export folder; refusing to load it")


def verified_file(folder: str | Path, manifest: dict[str, Any], key: str) -> Path:
    """The path of `files.<key>`, after checking that the file is there and its sha256 matches."""
    entry = manifest["files"][key]
    path = Path(folder) / entry["path"]
    if not path.is_file():
        raise ExportError(f"{path}: missing from the export folder")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise ExportError(f"{path}: sha256 {actual[:12]}... differs from {entry['sha256'][:12]}... recorded in "
                          f"{MANIFEST}: the file was changed after export; refusing to load it")  # fmt: skip
    return path


def verify_export(export_dir: str | Path) -> dict[str, Any]:
    """Every file of an export checked against its manifest; returns the manifest."""
    manifest = read_manifest(export_dir)
    for key in manifest["files"]:
        verified_file(export_dir, manifest, key)
    return manifest


def load_exported(export_dir: str | Path, map_location: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """The TorchScript module of an export folder (no pickles, no SamsNet code), in eval mode."""
    folder = Path(export_dir)
    path = verified_file(folder, read_manifest(folder), "torchscript")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location=map_location).eval()
    except Exception as e:  # corrupt archive, newer torch, ...
        raise ExportError(f"{path}: cannot be loaded as TorchScript ({e})") from None


def load_weights(export_dir: str | Path) -> nn.Module:
    """The Python SamsNet from `weights.pt` + `model_config.json` (weights_only loading)."""
    folder = Path(export_dir)
    manifest = read_manifest(folder)
    config = json.loads(verified_file(folder, manifest, "model_config").read_text())
    net = checkpoint.build_model(config)
    net.load_state_dict(torch.load(verified_file(folder, manifest, "weights"), map_location="cpu", weights_only=True))
    return net.eval()


# --- MLflow registry ------------------------------------------------------------------


@dataclass(frozen=True)
class Registration:
    """What `register_export` did: a new version, or an existing one with the same weights."""

    name: str  # samsnet-<study>
    version: str
    reused: bool  # True: these weights were registered before; no new version was made
    alias: str
    alias_version: str | None  # the version the alias points to after the call

    def describe(self) -> str:
        if not self.reused:
            return f"registered {self.name} version {self.version} with alias {self.alias}"
        where = "on it" if self.alias_version == self.version else f"stays on version {self.alias_version}"
        return f"{self.name} version {self.version} already holds these weights (not registered again; alias {self.alias} {where})"


def register(export_dir: str | Path, name: str, tracking_uri: str, run_id: str | None = None,
             alias: str = DEFAULT_ALIAS) -> str:  # fmt: skip
    """`register_export`, returning the version only."""
    return register_export(export_dir, name, tracking_uri, run_id=run_id, alias=alias).version


def register_export(
    export_dir: str | Path,
    name: str,
    tracking_uri: str,
    run_id: str | None = None,
    alias: str = DEFAULT_ALIAS,
) -> Registration:
    """Log the export as an MLflow pyfunc model and register it as `samsnet-<name>` with `alias`.

    `run_id` is the run that produced the weights (a trial or selection run); the model is logged
    under its `registered_model/` so that the version links to it. Without one, a run named
    "export" is made in the experiment `name`. If a version of `samsnet-<name>` already holds these
    weights (same sha256), that version is returned and nothing is registered or moved: exporting
    the same winner twice must not make a second version or take the alias from a newer one (the
    alias is set only if the model has none of that name). The pyfunc is "model from code"
    (`mlflow_model.py`, which loads model.ts), so no pickle is stored in the registry.
    """
    import mlflow.pyfunc

    from ..services import tracking

    folder = Path(export_dir)
    manifest = verify_export(folder)
    weights_sha = manifest["files"]["weights"]["sha256"]
    target = tracking.resolve_tracking(tracking_uri)
    c = tracking.client(target)
    registered = tracking.registered_model_name(name)
    try:
        existing = _version_with_weights(c, registered, weights_sha)
        if existing is not None:
            aliases = dict(c.get_registered_model(registered).aliases or {})
            if alias not in aliases:
                c.set_registered_model_alias(registered, alias, existing)
                aliases[alias] = existing
            log.info("%s version %s already holds weights %s...; not registered again", registered, existing, weights_sha[:12])
            return Registration(registered, existing, True, alias, str(aliases[alias]))
        if run_id is None:
            experiment_id = tracking.ensure_experiment(target, name)
            run_id = c.create_run(experiment_id, run_name="export", tags={tracking.STUDY_TAG: name,
                                                                          tracking.ROLE_TAG: "export"}).info.run_id  # fmt: skip
            c.set_terminated(run_id, "FINISHED")
        config = json.loads(verified_file(folder, manifest, "model_config").read_text())
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / "model"
            channels = int(config["audio_channels"])
            # The example (0.1 s of silence) documents the input in the UI; MLflow also runs it once.
            mlflow.pyfunc.save_model(str(model_dir), python_model=str(verified_file(folder, manifest, "pyfunc")),
                                     artifacts={"export": str(folder)}, pip_requirements=_requirements(),
                                     signature=pyfunc_signature(channels),
                                     input_example=np.zeros((1, channels, 4410), dtype=np.float32))  # fmt: skip
            c.log_artifacts(run_id, str(model_dir), MODEL_ARTIFACT)
        tags = {"samsnet.export": FORMAT, MANIFEST_SHA_TAG: sha256_file(folder / MANIFEST), WEIGHTS_SHA_TAG: weights_sha}
        version = tracking.register_model(target, name, run_id, MODEL_ARTIFACT, tags=tags,
                                          description=f"Sams-Net export from {manifest['source']}")  # fmt: skip
        c.set_registered_model_alias(registered, alias, version)
    except SamsNetError:
        raise
    except Exception as e:  # server down, permissions, ...: one clear line
        raise ExportError(f"cannot register {folder} as {registered} at {target.uri}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None  # fmt: skip
    log.info("registered %s version %s (alias %s)", registered, version, alias)
    return Registration(registered, version, False, alias, version)


def _version_with_weights(c, registered: str, weights_sha: str) -> str | None:
    """The oldest version of `registered` whose weights have this sha256, or None."""
    from mlflow.exceptions import MlflowException

    try:
        versions = c.search_model_versions(f"name = '{registered}'")
    except MlflowException:
        return None
    same = sorted(int(v.version) for v in versions if (v.tags or {}).get(WEIGHTS_SHA_TAG) == weights_sha)
    return str(same[0]) if same else None


def pyfunc_signature(audio_channels: int):
    """audio float32 (B, C, N) at 44.1 kHz -> stems (B, 4, C, N); batch and length free."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    f32 = np.dtype(np.float32)
    return ModelSignature(inputs=Schema([TensorSpec(f32, (-1, audio_channels, -1))]),
                          outputs=Schema([TensorSpec(f32, (-1, len(TARGETS), audio_channels, -1))]))  # fmt: skip


def _requirements() -> list[str]:
    import numpy

    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={numpy.__version__}"]


def download_registered(uri: str, tracking_uri: str | None, dest: str | Path) -> Path:
    """Download `models:/NAME@ALIAS` (or `models:/NAME/VERSION`) and return the export folder in it."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    from ..services import tracking

    target = tracking.resolve_tracking(tracking_uri or "./mlruns")
    version = _model_version(uri, target)
    try:
        # The version's own source, resolved against this server: `models:/` URIs would go to
        # MLflow's default registry (a local database), not to `tracking_uri`.
        local = mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(dest), tracking_uri=target.uri)
    except MlflowException as e:
        raise ExportError(f"{uri}: cannot download {version.source} from {target.uri}: {e.message.splitlines()[0]}") from None
    found = sorted(Path(local).rglob(MANIFEST))
    if not found:
        raise ExportError(f"{uri}: the registered model holds no samsnet export ({MANIFEST} not found)")
    folder = found[0].parent
    _check_registered_manifest(uri, version, folder / MANIFEST)
    verify_export(folder)
    return folder


def _check_registered_manifest(uri: str, version, path: Path) -> None:
    """The export.json in the artifact store is the one registered: its sha256 is a registry tag, kept
    in the tracking database, so replacing the whole export in the artifact store is caught too."""
    expected = (version.tags or {}).get(MANIFEST_SHA_TAG)
    if expected is None:
        raise ExportError(f"{uri}: version {version.version} was registered without a checksum of its {MANIFEST} "
                          "(an older samsnet-search); export and register it again")  # fmt: skip
    if sha256_file(path) != expected:
        raise ExportError(f"{uri}: {MANIFEST} of version {version.version} in the artifact store differs from the "
                          "checksum recorded in the registry: the stored model was changed after registration; "
                          "refusing to load it")  # fmt: skip


def _model_version(uri: str, target):
    """The registry entry `models:/NAME@ALIAS` or `models:/NAME/VERSION` names; clear errors when unknown."""
    from mlflow.exceptions import MlflowException

    from ..services import tracking

    ref = uri[len(REGISTRY_PREFIX):] if uri.startswith(REGISTRY_PREFIX) else ""
    name, sep, rest = ref.partition("@") if "@" in ref else ref.partition("/")
    if not name or not rest:
        raise ExportError(f"{uri}: not a registry URI (expected models:/NAME@ALIAS or models:/NAME/VERSION)")
    c = tracking.client(target)
    try:
        model = c.get_registered_model(name)
    except MlflowException:
        raise ExportError(f"{uri}: no registered model {name!r} at {target.uri}") from None
    except Exception as e:
        raise ExportError(f"{uri}: cannot reach the MLflow registry at {target.uri} ({type(e).__name__})") from None
    if sep == "@":
        if rest not in (model.aliases or {}):
            known = ", ".join(sorted(model.aliases or {})) or "none"
            raise ExportError(f"{uri}: registered model {name!r} has no alias {rest!r} (aliases: {known})")
        return c.get_model_version_by_alias(name, rest)
    try:
        return c.get_model_version(name, rest)
    except MlflowException:
        raise ExportError(f"{uri}: registered model {name!r} has no version {rest!r}") from None


# --- what `samsnet-search export` exports ----------------------------------------------


def export_source(source: str, out_dir: str | Path, *, storage: str = "./runs", tracking_uri: str | None = None,
                  register_as: str | None = None, alias: str = DEFAULT_ALIAS) -> tuple[Path, Registration | None]:
    """Export a checkpoint folder / .pt file, a study (name or folder: its best trial), or an
    MLflow run id; register it (always for a study, as `samsnet-<study>`; else when `register_as`
    is given). Returns (export folder, what the registry did, or None)."""
    from ..search.identity import MANIFEST as STUDY_MANIFEST

    path = Path(source)
    if path.exists() and not (path / STUDY_MANIFEST).is_file():
        out = export_checkpoint(path, out_dir)
        done = register_export(out, register_as, tracking_uri or "./mlruns", alias=alias) if register_as else None
        return out, done
    study = _find_study(source, storage)
    if study is not None:
        return _export_study(study, out_dir, alias)
    if _looks_like_run_id(source):
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = _download_run_checkpoint(source, tracking_uri or "./mlruns", Path(tmp))
            out = export_checkpoint(ckpt, out_dir, {"source": f"MLflow run {source}"})
        done = register_export(out, register_as, tracking_uri or "./mlruns", run_id=source, alias=alias) if register_as else None
        return out, done
    raise ExportError(f"{source}: not a checkpoint folder or .pt file, not a study in {storage}, and not an "
                      "MLflow run id (32 hex digits)")  # fmt: skip


def _looks_like_run_id(text: str) -> bool:
    return len(text) == 32 and all(ch in "0123456789abcdef" for ch in text.lower())


def _find_study(source: str, storage: str):
    from ..search.identity import StudyNotFound, find_study
    from ..search.study import resolve_storage

    try:
        return find_study(source, resolve_storage(storage, Path.cwd()))
    except StudyNotFound:
        return None


def _download_run_checkpoint(run_id: str, tracking_uri: str, dest: Path) -> Path:
    """The run's best weights (`model/best.pt`, logged by the trial) in a local folder: the published
    copy, for a bare run id (a study's own weights come from its storage: `_export_study`)."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    from ..services import tracking

    target = tracking.resolve_tracking(tracking_uri)
    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"model/{checkpoint.BEST}",
                                                    dst_path=str(dest), tracking_uri=target.uri)  # fmt: skip
    except MlflowException as e:
        raise ExportError(f"run {run_id} at {target.uri}: no model/{checkpoint.BEST} to export "
                          f"({e.message.splitlines()[0]})") from None  # fmt: skip
    return Path(local)


def _export_study(manifest, out_dir: str | Path, alias: str) -> tuple[Path, Registration]:
    """The study's chosen model: the selection's winner once chosen, else its best search trial.
    Its weights come from the study's storage, where the selection found them
    (`search.checkpoints`); it is registered as `samsnet-<study>` from the run that trained them
    (or found registered already: the selection registered the same file)."""
    from ..engine.checkpoint import BEST
    from ..search import checkpoints
    from ..search.select import load_selection
    from ..services import storage

    summary = dict(manifest.summary or {})
    selection = load_selection(manifest.path)
    run_id = selection.winner_job.get("run_id") if selection else summary.get("best_run")
    trial_id = summary.get("best_trial")
    if selection is None and not (trial_id and run_id):
        raise ExportError(f"study {manifest.name!r} ({manifest.state}) has no best trial yet; run it to the end first")
    info = {"title": f"Sams-Net chosen by study {manifest.name}", "source": f"study {manifest.name}, MLflow run {run_id}",
            "study_summary": summary, "selection_table": summary.get("selection"),
            "test_sdr": summary.get("test") if isinstance(summary.get("test"), dict) else None}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        if selection is not None:
            ckpt = storage.get_file(selection.winner_job["checkpoint"], Path(tmp) / BEST)
        else:
            found = checkpoints.study_best_checkpoint(manifest, trial_id)
            if found is None:
                raise ExportError(f"study {manifest.name!r}: trial {trial_id} has no checkpoint left in "
                                  f"{storage.display_uri(manifest.path)}")  # fmt: skip
            ckpt = Path(tmp) / "checkpoint"
            found.to_directory(str(ckpt))
        out = export_checkpoint(ckpt, out_dir, info)
    return out, register_export(out, manifest.name, manifest.tracking_uri, run_id=run_id, alias=alias)


_PYFUNC_CODE = '''"""MLflow pyfunc ("model from code") for a samsnet export: loads model.ts with torch only.

predict(audio): float32 (B, C, N) at 44.1 kHz -> stems (B, 4, C, N) in the order vocals, drums,
bass, other. model.ts is loaded only if its sha256 is the one export.json records.
"""

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


def verified_file(folder, key):
    """files.<key> of export.json: a path inside the folder whose sha256 matches, else ValueError."""
    folder = Path(folder)
    entry = json.loads((folder / "export.json").read_text())["files"][key]
    path = folder / entry["path"]
    if Path(entry["path"]).is_absolute() or ".." in Path(entry["path"]).parts or not path.resolve().is_relative_to(folder.resolve()):
        raise ValueError(f"{path}: outside the export folder; refusing to load it")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != entry["sha256"]:
        raise ValueError(f"{path}: sha256 {digest[:12]}... differs from {entry['sha256'][:12]}... recorded in "
                         "export.json: the file was changed after export; refusing to load it")
    return path


class SamsNetSeparator(PythonModel):
    def load_context(self, context):
        path = verified_file(context.artifacts["export"], "torchscript")
        with warnings.catch_warnings():  # torch marks TorchScript deprecated; it runs without Python code
            warnings.simplefilter("ignore", DeprecationWarning)
            self.model = torch.jit.load(str(path), map_location="cpu").eval()

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        audio = torch.from_numpy(np.asarray(model_input, dtype=np.float32))
        if audio.dim() == 2:
            audio = audio[None]
        with torch.no_grad():
            return self.model.separate(audio).numpy()


set_model(SamsNetSeparator())
'''
