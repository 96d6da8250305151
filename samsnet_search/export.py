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
* `model_config.json`, `experiment.json`, `MODEL_CARD.md`, and `export.json` (format, files,
  ONNX parity, source), which marks the folder as an export.

Both exported graphs use a branch-free form of the sliced attention: the time axis is
always padded to whole slices and the padded keys always masked (with no padding the mask
is all true), because a Python `if pad:` would be frozen into a traced/exported graph at
the example's length. It is the same computation as `SlicedMultiHeadAttention`; tests
check it at lengths that are and are not multiples of `slice_frames`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint
from .config import TARGETS, ModelConfig
from .errors import SamsNetError

log = logging.getLogger(__name__)

FORMAT = "samsnet-export/1"
MANIFEST = "export.json"
TS_FILE, ONNX_FILE, WEIGHTS_FILE, CARD_FILE = "model.ts", "model.onnx", "weights.pt", "MODEL_CARD.md"
PYFUNC_FILE = "mlflow_model.py"
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
    _write_json(out / "model_config.json", state["model_config"])
    _write_json(out / "experiment.json", state["experiment"])
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
        "files": {"torchscript": TS_FILE, "onnx": ONNX_FILE, "weights": WEIGHTS_FILE, "card": CARD_FILE},
        "onnx": {"opset": ONNX_OPSET, "max_abs_error": onnx_error, "input_frames": int(example.shape[-1])},
    })  # fmt: skip
    log.info("exported %s to %s (ONNX max error %.2e)", checkpoint_dir, out, onnx_error)
    return out


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def example_magnitude(state: dict[str, Any], net: nn.Module, seconds: float = 2.0) -> torch.Tensor:
    """A real input for the ONNX check: the magnitude of a track of the training data, if reachable,
    else of a freshly synthesized excerpt. (1, C, F, T), T not a multiple of slice_frames where possible.
    """
    audio = _training_audio(state, seconds)
    if audio is None:
        from .data.synth import synthesize

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
    from .config import SAMPLE_RATE
    from .separate import read_audio

    for track in sorted(train_dir.iterdir()):
        if (track / "mixture.wav").is_file():
            return read_audio(track / "mixture.wav")[:, : int(seconds * SAMPLE_RATE)]
    raise ExportError(f"{train_dir}: no <track>/mixture.wav to take an example input from")


def export_onnx(wrapper: ExportedSamsNet, example: torch.Tensor, path: Path) -> float:
    """Write the mask network as ONNX (dynamic batch and frames); returns the max abs error
    of onnxruntime against PyTorch on `example` and on a shorter odd-length cut of it."""
    batch, frames = torch.export.Dim("batch", max=64), torch.export.Dim("frames", min=2)
    with torch.no_grad():
        program = torch.onnx.export(wrapper, (example,), dynamo=True, opset_version=ONNX_OPSET,
                                    input_names=["mag"], output_names=["masks"],
                                    dynamic_shapes={"mag": {0: batch, 3: frames}}, external_data=False,
                                    verbose=False)  # fmt: skip
    program.save(str(path), external_data=False)
    error = max(onnx_parity(path, wrapper, example), onnx_parity(path, wrapper, example[..., : example.shape[-1] // 2 | 1]))
    if not error <= ONNX_TOLERANCE:
        raise ExportError(f"{path}: ONNX output differs from PyTorch by {error:.3g} (> {ONNX_TOLERANCE}); not exported")
    return error


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
    from .model.info import macs_per_second, parameter_breakdown

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
    lines += _scores(state.get("metrics") or {}, info.get("test_sdr"))
    if info.get("selection_table"):
        lines += ["", "### Study selection table (validation)", "", *_table(info["selection_table"])]
    if info.get("study_summary"):
        lines += ["", "### Search summary", "", *(f"- {k}: {v}" for k, v in info["study_summary"].items())]
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


def _scores(metrics: dict[str, Any], test_sdr: dict[str, float] | None) -> list[str]:
    rows = []
    valid = {t: metrics.get(f"valid_sdr_{t}") for t in TARGETS}
    if any(v is not None for v in valid.values()):
        rows.append({"set": "validation (checkpoint)", **valid, "avg": metrics.get("valid_sdr")})
    if test_sdr:
        rows.append({"set": "test", **{t: test_sdr.get(t) for t in TARGETS}, "avg": test_sdr.get("avg")})
    lines = _table(rows) if rows else ["No SDR recorded with this checkpoint."]
    if metrics.get("valid_loss") is not None:
        lines += ["", f"valid_loss {metrics['valid_loss']:.5g} at this checkpoint."]
    return lines


def _table(rows: list[dict[str, Any]]) -> list[str]:
    cols = list(dict.fromkeys(k for row in rows for k in row))
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else ("-" if v is None else str(v))  # noqa: E731
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
            *("| " + " | ".join(fmt(row.get(c)) for c in cols) + " |" for row in rows)]  # fmt: skip


def data_kind(experiment: dict[str, Any]) -> str:
    """MUSDB18 / MUSDB18-HQ / synthetic, from the training data folder (if still reachable)."""
    from .data.splits import KIND_HQ, KIND_STEMS, KIND_SYNTH, detect_format
    from .data.synth import MANIFEST as SYNTH_MANIFEST

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
    folder = Path(export_dir)
    if not folder.is_dir():
        raise ExportError(f"{folder}: no such folder (expected an export folder from `samsnet-search export`)")
    if not is_export(folder):
        raise ExportError(f"{folder}: not a samsnet export (no {MANIFEST}); `samsnet-search export` writes one")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except ValueError as e:
        raise ExportError(f"{folder / MANIFEST}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ExportError(f"{folder / MANIFEST}: unknown export format (expected {FORMAT})")
    return manifest


def load_exported(export_dir: str | Path, map_location: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """The TorchScript module of an export folder (no pickles, no SamsNet code), in eval mode."""
    folder = Path(export_dir)
    manifest = read_manifest(folder)
    path = folder / manifest["files"]["torchscript"]
    if not path.is_file():
        raise ExportError(f"{path}: missing from the export folder")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location=map_location).eval()
    except Exception as e:  # corrupt archive, newer torch, ...
        raise ExportError(f"{path}: cannot be loaded as TorchScript ({e})") from None


def load_weights(export_dir: str | Path) -> nn.Module:
    """The Python SamsNet from `weights.pt` + `model_config.json` (weights_only loading)."""
    folder = Path(export_dir)
    read_manifest(folder)
    net = checkpoint.build_model(json.loads((folder / "model_config.json").read_text()))
    net.load_state_dict(torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    return net.eval()


# --- MLflow registry ------------------------------------------------------------------


def register(
    export_dir: str | Path,
    name: str,
    tracking_uri: str,
    run_id: str | None = None,
    alias: str = DEFAULT_ALIAS,
) -> str:
    """Log the export as an MLflow pyfunc model and register it as `samsnet-<name>` with `alias`.

    The model is logged under `model/` of `run_id` (e.g. a study's parent run), or of a new
    run in the experiment `name`. Returns the new version. The pyfunc is "model from code"
    (`mlflow_model.py`, which loads model.ts), so no pickle is stored in the registry.
    """
    import mlflow.pyfunc

    from . import tracking

    folder = Path(export_dir)
    read_manifest(folder)
    target = tracking.resolve_tracking(tracking_uri)
    c = tracking.client(target)
    try:
        if run_id is None:
            experiment_id = tracking.ensure_experiment(target, name)
            run_id = c.create_run(experiment_id, run_name="export", tags={tracking.STUDY_TAG: name,
                                                                          tracking.ROLE_TAG: "export"}).info.run_id  # fmt: skip
            c.set_terminated(run_id, "FINISHED")
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / "model"
            mlflow.pyfunc.save_model(str(model_dir), python_model=str(folder / PYFUNC_FILE),
                                     artifacts={"export": str(folder)}, pip_requirements=_requirements())  # fmt: skip
            c.log_artifacts(run_id, str(model_dir), "model")
        version = tracking.register_model(target, name, run_id, "model", tags={"samsnet.export": FORMAT},
                                          description=f"Sams-Net export from {read_manifest(folder)['source']}")  # fmt: skip
        c.set_registered_model_alias(tracking.registered_model_name(name), alias, version)
    except SamsNetError:
        raise
    except Exception as e:  # server down, permissions, ...: one clear line
        raise ExportError(f"cannot register {folder} as {tracking.registered_model_name(name)} at {target.uri}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None  # fmt: skip
    log.info("registered %s version %s (alias %s)", tracking.registered_model_name(name), version, alias)
    return version


def _requirements() -> list[str]:
    import numpy

    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={numpy.__version__}"]


def download_registered(uri: str, tracking_uri: str | None, dest: str | Path) -> Path:
    """Download `models:/NAME@ALIAS` (or `models:/NAME/VERSION`) and return the export folder in it."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    from . import tracking

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
    return found[0].parent


def _model_version(uri: str, target):
    """The registry entry `models:/NAME@ALIAS` or `models:/NAME/VERSION` names; clear errors when unknown."""
    from mlflow.exceptions import MlflowException

    from . import tracking

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
                  register_as: str | None = None, alias: str = DEFAULT_ALIAS) -> tuple[Path, str | None]:
    """Export a checkpoint folder / .pt file, a study (name or folder: its best trial), or an
    MLflow run id; register it (always for a study, as `samsnet-<study>`; else when `register_as`
    is given). Returns (export folder, registered version or None)."""
    path = Path(source)
    if path.exists() and not (path / "study.json").is_file():
        out = export_checkpoint(path, out_dir)
        version = register(out, register_as, tracking_uri or "./mlruns", alias=alias) if register_as else None
        return out, version
    study = _find_study(source, storage)
    if study is not None:
        return _export_study(study, out_dir, alias)
    if _looks_like_run_id(source):
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = _download_run_checkpoint(source, tracking_uri or "./mlruns", Path(tmp))
            out = export_checkpoint(ckpt, out_dir, {"source": f"MLflow run {source}"})
        version = register(out, register_as, tracking_uri or "./mlruns", alias=alias) if register_as else None
        return out, version
    raise ExportError(f"{source}: not a checkpoint folder or .pt file, not a study in {storage}, and not an "
                      "MLflow run id (32 hex digits)")  # fmt: skip


def _looks_like_run_id(text: str) -> bool:
    return len(text) == 32 and all(ch in "0123456789abcdef" for ch in text.lower())


def _find_study(source: str, storage: str):
    from .search.identity import StudyNotFound, find_study
    from .search.study import resolve_storage

    try:
        return find_study(source, resolve_storage(storage, Path.cwd()))
    except StudyNotFound:
        return None


def _download_run_checkpoint(run_id: str, tracking_uri: str, dest: Path) -> Path:
    """The run's best weights (`model/best.pt`, logged by the trial) in a local folder."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    from . import tracking

    target = tracking.resolve_tracking(tracking_uri)
    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"model/{checkpoint.BEST}",
                                                    dst_path=str(dest), tracking_uri=target.uri)  # fmt: skip
    except MlflowException as e:
        raise ExportError(f"run {run_id} at {target.uri}: no model/{checkpoint.BEST} to export "
                          f"({e.message.splitlines()[0]})") from None  # fmt: skip
    return Path(local)


def _export_study(manifest, out_dir: str | Path, alias: str) -> tuple[Path, str]:
    """The study's best trial (by its metric): exported, then registered as `samsnet-<study>`."""
    from . import tracking

    summary = dict(manifest.summary or {})
    run_id = summary.get("best_run")
    if not run_id:
        target = tracking.resolve_tracking(manifest.tracking_uri)
        run_id = tracking.client(target).get_run(manifest.parent_run_id).data.tags.get(tracking.BEST_RUN_TAG)
    if not run_id:
        raise ExportError(f"study {manifest.name!r} ({manifest.state}) has no best trial yet; run it to the end first")
    info = {"title": f"Sams-Net chosen by study {manifest.name}", "source": f"study {manifest.name}, MLflow run {run_id}",
            "study_summary": {k: v for k, v in summary.items() if k != "selection"},
            "selection_table": summary.get("selection")}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = _download_run_checkpoint(run_id, manifest.tracking_uri, Path(tmp))
        out = export_checkpoint(ckpt, out_dir, info)
    version = register(out, manifest.name, manifest.tracking_uri, run_id=manifest.parent_run_id, alias=alias)
    return out, version


_PYFUNC_CODE = '''"""MLflow pyfunc ("model from code") for a samsnet export: loads model.ts with torch only.

predict(audio): float32 (C, N) or (B, C, N) at 44.1 kHz -> stems (B, 4, C, N) in the order
vocals, drums, bass, other.
"""

import numpy as np
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class SamsNetSeparator(PythonModel):
    def load_context(self, context):
        from pathlib import Path

        self.model = torch.jit.load(str(Path(context.artifacts["export"]) / "model.ts"), map_location="cpu").eval()

    def predict(self, context, model_input, params=None):
        audio = torch.from_numpy(np.asarray(model_input, dtype=np.float32))
        if audio.dim() == 2:
            audio = audio[None]
        with torch.no_grad():
            return self.model.separate(audio).numpy()


set_model(SamsNetSeparator())
'''
