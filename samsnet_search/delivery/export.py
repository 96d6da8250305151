"""Export a trained Sams-Net as a self-contained folder (`export_folder` describes its files).

The exported programs are the model itself: `torch.export` traces `SamsNet.forward` (masks) and
`SamsNet.separate` (waveform to stems), and ONNX is converted from the masks program, so there
is no second copy of the attention, the STFT or the chunking to keep in step with the model.
Chunked separation of long songs stays outside the programs (`engine.apply`), for every model.

Two tracing settings keep one program valid at every length: `backed_size_oblivious` (the
exporter would otherwise fix whether there is one slice or several, a size-1 question), and
runtime asserts in place of guards it cannot prove (such as `T <= ceil(T / L) * L`, true for
any T). Every exported format is then compared with the eager model, at the traced length and
at lengths that do and do not fill whole slices; an export that differs by more than
`PARITY_TOLERANCE` is refused.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import mlflow.artifacts
import numpy as np
import onnxruntime as ort
import torch
import torch.fx.experimental._config as fx_config  # noqa: PLC2701  (torch's only switch for size-oblivious tracing)
from mlflow.exceptions import MlflowException
from torch import nn

from ..config import SAMPLE_RATE, TARGETS, ModelConfig, flatten
from ..data.audio_io import read_audio
from ..data.splits import KIND_HQ, KIND_STEMS, KIND_SYNTH, detect_format
from ..data.synth import MANIFEST as SYNTH_MANIFEST
from ..data.synth import synthesize
from ..engine import checkpoint
from ..engine.checkpoint import BEST
from ..errors import SamsNetError, one_line
from ..files import write_atomic
from ..model import SamsNet
from ..model.info import macs_per_second, parameter_breakdown
from ..model.sams_net import SlicedMultiHeadAttention
from ..search import checkpoints
from ..search.identity import MANIFEST as STUDY_MANIFEST
from ..search.identity import StudyNotFound, find_study
from ..search.select import load_selection
from ..search.study import resolve_storage
from ..services import storage, tracking
from .export_folder import (
    CARD_FILE,
    CONFIG_FILE,
    EXPERIMENT_FILE,
    FILES,
    FORMAT,
    MANIFEST,
    MASKS_FILE,
    ONNX_FILE,
    PYFUNC_FILE,
    SEPARATE_FILE,
    WEIGHTS_FILE,
    ExportError,
    sha256_file,
)
from .registry import DEFAULT_ALIAS, Registration, register_export

log = logging.getLogger(__name__)

ONNX_OPSET = 18
PARITY_TOLERANCE = 1e-4  # max |exported - eager| over all outputs, for every format
PYFUNC_SOURCE = Path(__file__).with_name("pyfunc_model.py")  # copied into the folder as mlflow_model.py


# --- writing an export -------------------------------------------------------------------


Progress = Callable[[str], None]  # told one line per step of an export


def _silent(msg: str) -> None:
    pass


def export_checkpoint(
    checkpoint_dir: str | Path, out_dir: str | Path, card_info: dict | None = None, progress: Progress = _silent
) -> Path:
    """Write the export folder for the best weights of a checkpoint folder (or .pt file).

    card_info (all optional): "title", "source" (what was exported, for the card), "data_kind",
    "test_sdr" ({target: dB}), "test_wiener" ({"post_filter": label, "summary": {target: dB}}: the same
    test set after the Wiener post-filter, when the study scored it), "selection_table" (list of row
    dicts), "study_summary" (dict).
    progress: told each step as it starts. Returns `out_dir`.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ExportError(f"{out}: exists and is not an export folder; give an empty or new --out folder")
    with _staged(out) as staging:
        _write_export(checkpoint_dir, staging, dict(card_info or {}), progress)
    log.info("exported %s to %s", checkpoint_dir, out)
    return out


STAGING = ".{name}.exporting-{pid}"  # beside --out: the same filesystem, so the final rename is atomic


@contextlib.contextmanager
def _staged(out: Path):
    """A new folder beside `out` to write the export into, renamed to `out` at the end: a run killed
    (even by SIGKILL) leaves no partial `out`, only a hidden staging folder, which the next export
    to `out` removes. An existing export in `out` is replaced once the new one is complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out)
    staging = out.parent / STAGING.format(name=out.name, pid=os.getpid())
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        old = out.parent / f".{out.name}.replaced-{os.getpid()}"
        if out.exists():
            out.rename(old)  # an export folder (checked above) or an empty one
        staging.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_stale_staging(out: Path) -> None:
    """Staging folders of exports to `out` whose process is gone (killed mid-export)."""
    prefix = STAGING.format(name=out.name, pid="")
    for folder in out.parent.glob(glob.escape(prefix) + "*"):
        pid = folder.name.removeprefix(prefix)
        if pid.isdigit() and not _alive(int(pid)):
            log.info("removing %s, left by an export that did not finish", folder)
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _write_export(checkpoint_dir: str | Path, out: Path, card_info: dict, say: Progress = _silent) -> None:
    """Every file of the export into the (empty, staging) folder `out`; export.json last."""
    say(f"export: loading the weights ({checkpoint_dir})")
    net, state = checkpoint.load_model(checkpoint_dir)
    net.eval()
    torch.save(net.state_dict(), out / WEIGHTS_FILE)
    _write_json(out / CONFIG_FILE, state["model_config"])
    _write_json(out / EXPERIMENT_FILE, state["experiment"])
    audio = example_audio(state, net)
    with torch.no_grad():
        mag = net.spectrogram(audio).abs()
    say("export: tracing the torch.export programs (masks, separate)")
    masks, stems = export_programs(net, mag, audio)
    torch.export.save(masks, str(out / MASKS_FILE))
    torch.export.save(stems, str(out / SEPARATE_FILE))
    say("export: converting the masks program to ONNX")
    export_onnx(masks, out / ONNX_FILE)
    say("export: checking the exported programs against the eager model")
    parity = check_parity(net, out, mag, audio)
    say("export: writing the model card and export.json")
    card_info.setdefault("source", str(checkpoint_dir))
    (out / CARD_FILE).write_text(model_card(net, state, card_info, parity))
    (out / PYFUNC_FILE).write_text(PYFUNC_SOURCE.read_text())
    _write_json(
        out / MANIFEST,
        {
            "format": FORMAT,
            "code_version": checkpoint.code_version(),
            "torch_version": torch.__version__,
            "source": card_info["source"],
            "epoch": state.get("epoch"),
            "targets": list(TARGETS),
            "files": {key: {"path": name, "sha256": sha256_file(out / name)} for key, name in FILES.items()},
            "network": network_facts(net),
            "parity": {"max_abs_error": parity, "traced_frames": int(mag.shape[-1]), "opset": ONNX_OPSET},
        },
    )
    log.info("largest difference of the export from the eager model %.2e", max(parity.values()))


def _write_json(path: Path, payload: Any) -> None:
    """Written whole or not at all (export.json last: a crash mid-export leaves a folder that fails its checks)."""
    write_atomic(path, (json.dumps(payload, indent=2, default=str) + "\n").encode())


def network_facts(net: SamsNet) -> dict[str, int]:
    """What a loader of the programs needs beside them: the STFT (to give the masks their input),
    the slice length and the receptive field (to cut a song into exact chunks)."""
    return {
        "n_fft": net.spectrogram.n_fft,
        "hop_length": net.spectrogram.hop_length,
        "slice_frames": net.slice_frames,
        "context_frames": net.context_frames(),
        "audio_channels": net.audio_channels,
        "targets": net.targets,
    }


def example_audio(state: dict[str, Any], net: SamsNet, seconds: float = 2.0) -> torch.Tensor:
    """The input to trace and check with: a mixture of the training data, if reachable, else a freshly
    synthesized one, tiled to at least two slices and cut to a frame count that does not fill whole
    slices (every slice path is traced). (2, C, N): a batch of two, the second one time-reversed."""
    audio = _training_audio(state, seconds)
    if audio is None:
        with tempfile.TemporaryDirectory() as tmp:
            root = synthesize(Path(tmp), n_train=1, n_valid=1, n_test=1, seconds=seconds, seed=0)
            audio = _first_mixture(root / "train", seconds)
    hop, L = net.spectrogram.hop_length, net.slice_frames
    frames = max(1 + audio.shape[-1] // hop, 2 * L + 1)
    if frames % L == 0:
        frames += 1
    samples = (frames - 1) * hop + hop // 2  # 1 + samples // hop == frames
    audio = np.tile(audio, (1, -(-samples // audio.shape[-1])))[:, :samples]
    return torch.from_numpy(np.stack([audio, audio[:, ::-1]]).copy())


def example_magnitude(state: dict[str, Any], net: SamsNet, seconds: float = 2.0) -> torch.Tensor:
    """|STFT| of `example_audio`: (2, C, F, T), T > 2 slices and not a multiple of `slice_frames`."""
    with torch.no_grad():
        return net.spectrogram(example_audio(state, net, seconds)).abs()


def _training_audio(state: dict[str, Any], seconds: float) -> np.ndarray | None:
    root = (state.get("experiment") or {}).get("data", {}).get("root")
    if not root or not (Path(root) / "train").is_dir():
        return None
    try:
        return _first_mixture(Path(root) / "train", seconds)
    except SamsNetError:
        return None


def _first_mixture(train_dir: Path, seconds: float) -> np.ndarray:
    for track in sorted(train_dir.iterdir()):
        if (track / "mixture.wav").is_file():
            return read_audio(track / "mixture.wav")[:, : int(seconds * SAMPLE_RATE)]
    raise ExportError(f"{train_dir}: no <track>/mixture.wav to take an example input from")


class _Method(nn.Module):
    """`module.<name>` as a forward: torch.export traces a module's forward only."""

    def __init__(self, module: nn.Module, name: str):
        super().__init__()
        self.module, self.name = module, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.module, self.name)(x)


def export_programs(net: SamsNet, mag: torch.Tensor, audio: torch.Tensor) -> tuple[torch.export.ExportedProgram, ...]:
    """`net.forward` traced on `mag` (B, C, F, T) and `net.separate` on `audio` (B, C, N): batch, frames
    and samples dynamic (a centred STFT needs more than n_fft / 2 samples)."""
    batch = torch.export.Dim("batch")
    frames = torch.export.Dim("frames", min=2)
    samples = torch.export.Dim("samples", min=net.spectrogram.n_fft // 2 + 1)
    with attention_kernel(net, EXPORT_KERNEL):
        return (
            _export(net, mag, {"x": {0: batch, 3: frames}}, "forward"),
            _export(net, audio, {"x": {0: batch, 2: samples}}, "separate"),
        )


# The kernel a program holds is the one traced. SDPA runs on every device and, moved to CUDA, uses
# its flash / memory-efficient kernels; the batched matmuls that eager CPU picks for short slices
# would stay batched matmuls on a GPU.
EXPORT_KERNEL = "sdpa"


@contextlib.contextmanager
def attention_kernel(net: SamsNet, kernel: str):
    """Every attention of `net` traced with `kernel` for the block (then back to its own choice)."""
    modules = [m for m in net.modules() if isinstance(m, SlicedMultiHeadAttention)]
    before = [m.kernel for m in modules]
    for m in modules:
        m.kernel = kernel
    try:
        yield
    finally:
        for m, k in zip(modules, before):
            m.kernel = k


def _export(net: SamsNet, example: torch.Tensor, dims: dict, method: str) -> torch.export.ExportedProgram:
    with torch.no_grad(), fx_config.patch(backed_size_oblivious=True):
        try:
            return torch.export.export(
                _Method(net, method), (example,), dynamic_shapes=dims, prefer_deferred_runtime_asserts_over_guards=True
            )
        except Exception as e:  # the model gained a branch the exporter cannot trace at every length
            raise ExportError(
                f"SamsNet.{method} cannot be exported with torch.export ({one_line(e, typed=True)})"
            ) from None


def export_onnx(program: torch.export.ExportedProgram, path: Path) -> None:
    """The masks program as ONNX (opset `ONNX_OPSET`), its dynamic batch and frames kept."""
    with _quiet_onnx_exporter():
        onnx_program = torch.onnx.export(
            program,
            dynamo=True,
            opset_version=ONNX_OPSET,
            input_names=["mag"],
            output_names=["masks"],
            external_data=False,
            verbose=False,
        )
    onnx_program.save(str(path), external_data=False)


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
            warnings.filterwarnings(
                "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
            )
            yield
    finally:
        registry_log.removeFilter(notices)


def parity_lengths(frames: int, slice_frames: int) -> list[int]:
    """Frame counts to compare at: the traced one, whole slices, and a part of one slice."""
    return sorted({frames, 2 * slice_frames, max(2, slice_frames // 2 | 1)})


def check_parity(net: SamsNet, folder: Path, mag: torch.Tensor, audio: torch.Tensor) -> dict[str, float]:
    """Max |exported - eager| per format, read back from the written files: masks.pt2 and model.onnx
    on magnitudes, separate.pt2 on audio, each at `parity_lengths`. Refuses the export above
    `PARITY_TOLERANCE`."""
    masks = torch.export.load(str(folder / MASKS_FILE)).module()
    stems = torch.export.load(str(folder / SEPARATE_FILE)).module()
    session = ort.InferenceSession(str(folder / ONNX_FILE), providers=["CPUExecutionProvider"])
    hop = net.spectrogram.hop_length
    errors = {"masks": 0.0, "separate": 0.0, "onnx": 0.0}
    with torch.no_grad():
        for frames in parity_lengths(mag.shape[-1], net.slice_frames):
            cut, wave = mag[..., :frames], audio[..., : (frames - 1) * hop + hop // 2]
            want = net(cut)
            errors["masks"] = max(errors["masks"], _max_error(masks(cut), want))
            errors["onnx"] = max(
                errors["onnx"], _max_error(torch.from_numpy(session.run(["masks"], {"mag": cut.numpy()})[0]), want)
            )
            if wave.shape[-1] > net.spectrogram.n_fft // 2:
                errors["separate"] = max(errors["separate"], _max_error(stems(wave), net.separate(wave)))
    for key, error in errors.items():
        if not error <= PARITY_TOLERANCE:
            raise ExportError(
                f"{folder / FILES[key]}: output differs from the eager model by {error:.3g} "
                f"(> {PARITY_TOLERANCE}); not exported"
            )
    return errors


def _max_error(got: torch.Tensor, want: torch.Tensor) -> float:
    if got.shape != want.shape:
        raise ExportError(
            f"exported output shape {tuple(got.shape)} differs from the eager model's {tuple(want.shape)}"
        )
    return float((got - want).abs().max())


# --- the model card ----------------------------------------------------------------------


def model_card(net: SamsNet, state: dict[str, Any], info: dict[str, Any], parity: dict[str, float]) -> str:
    """MODEL_CARD.md: what the model is, how it scored, on which data, how to use it."""
    cfg = ModelConfig.model_validate(state["model_config"])
    experiment = state.get("experiment") or {}
    params = parameter_breakdown(net)
    lines = [f"# {info.get('title', 'Sams-Net music source separation model')}", ""]
    lines += [
        f"Exported from `{info['source']}` (epoch {state.get('epoch')}, code {state.get('code_version', '?')}).",
        "Sams-Net: sliced attention-based network for music source separation (Li et al. 2020); "
        "four targets: " + ", ".join(TARGETS) + ".",
        "",
    ]
    lines += [
        "## Data",
        "",
        f"- Trained on: **{info.get('data_kind') or data_kind(experiment)}**",
        f"- Segment: {experiment.get('data', {}).get('segment_seconds')} s, validation protocol: "
        f"{experiment.get('data', {}).get('valid_protocol')}",
        "",
    ]
    lines += ["## Hyperparameters", "", "| key | value |", "|---|---|"]
    lines += [f"| model.{k} | {v} |" for k, v in cfg.model_dump().items()]
    lines += [f"| train.{k} | {v} |" for k, v in (experiment.get("train") or {}).items() if k in _TRAIN_KEYS]
    lines += [
        "",
        "## Size and cost",
        "",
        f"- Parameters: {params['parameters']:,} "
        f"(convolutions {params['conv_parameters']:,}, LayerNorm affine {params['layernorm_parameters']:,})",
        f"- {macs_per_second(net) / 1e9:.3f} GMACs per second of audio (mask network, STFT excluded)",
        "",
    ]
    lines += ["## Scores (SDR, dB, BSSEval v4: median over frames, then tracks)", ""]
    lines += _scores(
        state.get("metrics") or {}, info.get("test_sdr"), info.get("selection_table"), info.get("test_wiener")
    )
    summary = _summary_rows(info.get("study_summary") or {})
    if summary:
        lines += ["", "### Search summary", "", *_table(summary)]
    lines += [
        "",
        "## Files",
        "",
        f"- `{SEPARATE_FILE}`: `torch.export` program, audio (B, C, N) -> stems (B, 4, C, N) (STFT, masks, "
        "ISTFT; the whole input at once); `torch.export.load(path).module()(audio)`, needs torch only.",
        f"- `{MASKS_FILE}`: `torch.export` program of the mask network, mag (B, C, F, T) -> masks (B, 4, C, F, T).",
        f"- `{ONNX_FILE}`: the same mask network, input `mag`, output `masks`, dynamic batch and frames, "
        f"opset {ONNX_OPSET}.",
        f"- `{WEIGHTS_FILE}`: state dict (`torch.load(..., weights_only=True)`), for `SamsNet(**model_config)`.",
        "- `model_config.json`, `experiment.json`: the configuration it was trained with.",
        "",
        "Largest difference from the eager model at lengths that do and do not fill whole slices: "
        + ", ".join(f"{key} {error:.1e}" for key, error in parity.items())
        + ".",
        "",
        "Use: `samsnet-search separate <this folder> song.wav --out stems/` (in chunks of bounded memory).",
        "",
    ]
    return "\n".join(lines)


_TRAIN_KEYS = ("lr", "batch_size", "epochs", "patience", "seed", "weight_decay", "grad_clip")


def _scores(
    metrics: dict[str, Any],
    test_sdr: dict[str, float] | None,
    selection: list[dict] | None,
    test_wiener: dict[str, Any] | None = None,
) -> list[str]:
    """The SDR tables. A study's validation numbers are its selection table (full validation tracks,
    all seeds); the checkpoint's own per-epoch score on short excerpts is shown only without one,
    since the two measure different things and would contradict each other side by side. The test
    table has a second row for the Wiener post-filter when the study scored the winner with it."""
    lines: list[str] = []
    if selection:
        lines += [
            "Validation (full tracks, median over seeds; the study's selection table):",
            "",
            *_table(selection),
            "",
        ]
    else:
        valid = {t: metrics.get(f"valid_sdr_{t}") for t in TARGETS}
        if any(v is not None for v in valid.values()):
            lines += _table([{"set": "validation (checkpoint)", **valid, "avg": metrics.get("valid_sdr")}]) + [""]
    if test_sdr:
        rows = [{"set": "test", **{t: test_sdr.get(t) for t in TARGETS}, "avg": test_sdr.get("avg")}]
        if test_wiener and isinstance(test_wiener.get("summary"), dict):
            filtered = test_wiener["summary"]
            label = f"test, {test_wiener.get('post_filter', 'Wiener filter')}"
            rows.append({"set": label, **{t: filtered.get(t) for t in TARGETS}, "avg": filtered.get("avg")})
        lines += [
            "Test (this model only; test data never influenced the choice):" if selection else "Test:",
            "",
            *_table(rows),
            "",
        ]
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
    return [
        {"key": k, "value": f"{v:.5g}" if isinstance(v, float) else v}
        for k, v in flatten(kept).items()
        if not isinstance(v, (dict, list))
    ]


def _table(rows: list[dict[str, Any]]) -> list[str]:
    cols = list(dict.fromkeys(k for row in rows for k in row))
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else ("-" if v is None else str(v))  # noqa: E731
    return [
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
        *("| " + " | ".join(fmt(row.get(c)) for c in cols) + " |" for row in rows),
    ]


def data_kind(experiment: dict[str, Any]) -> str:
    """MUSDB18 / MUSDB18-HQ / synthetic, from the training data folder (if still reachable)."""
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


# --- what `samsnet-search export` exports ----------------------------------------------


def export_source(
    source: str,
    out_dir: str | Path,
    *,
    storage: str = "./runs",
    tracking_uri: str | None = None,
    register_as: str | None = None,
    alias: str = DEFAULT_ALIAS,
    progress: Progress = _silent,
) -> tuple[Path, Registration | None]:
    """Export a checkpoint folder / .pt file, a study (name or folder: its best trial), or an
    MLflow run id; register it (always for a study, as `samsnet-<study>`; else when `register_as`
    is given). Returns (export folder, what the registry did, or None). progress: told each step."""

    path = Path(source)
    if path.exists() and not (path / STUDY_MANIFEST).is_file():
        out = export_checkpoint(path, out_dir, progress=progress)
        if not register_as:
            return out, None
        progress(f"export: registering as samsnet-{register_as}")
        return out, register_export(out, register_as, tracking_uri or "./mlruns", alias=alias)
    study = _find_study(source, storage)
    if study is not None:
        return _export_study(study, out_dir, alias, progress)
    if _looks_like_run_id(source):
        with tempfile.TemporaryDirectory() as tmp:
            progress(f"export: downloading the weights of MLflow run {source}")
            ckpt = _download_run_checkpoint(source, tracking_uri or "./mlruns", Path(tmp))
            out = export_checkpoint(ckpt, out_dir, {"source": f"MLflow run {source}"}, progress)
        if not register_as:
            return out, None
        progress(f"export: registering as samsnet-{register_as}")
        return out, register_export(out, register_as, tracking_uri or "./mlruns", run_id=source, alias=alias)
    raise ExportError(
        f"{source}: not a checkpoint folder or .pt file, not a study in {storage}, and not an "
        "MLflow run id (32 hex digits)"
    )


def _looks_like_run_id(text: str) -> bool:
    return len(text) == 32 and all(ch in "0123456789abcdef" for ch in text.lower())


def _wiener_of(test: dict[str, Any]) -> dict[str, Any] | None:
    """The Wiener-filtered test score the selection kept beside the plain one, for the card."""
    filtered = test.get("wiener")
    return {"post_filter": filtered["post_filter"], "summary": filtered["summary"]} if filtered else None


def _find_study(source: str, storage: str):

    try:
        return find_study(source, resolve_storage(storage, Path.cwd()))
    except StudyNotFound:
        return None


def _download_run_checkpoint(run_id: str, tracking_uri: str, dest: Path) -> Path:
    """The run's best weights (`model/best.pt`, logged by the trial) in a local folder: the published
    copy, for a bare run id (a study's own weights come from its storage: `_export_study`)."""

    target = tracking.resolve_tracking(tracking_uri)
    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=f"model/{checkpoint.BEST}", dst_path=str(dest), tracking_uri=target.uri
        )
    except MlflowException as e:
        raise ExportError(
            f"run {run_id} at {target.uri}: no model/{checkpoint.BEST} to export ({one_line(e)})"
        ) from None
    return Path(local)


def _export_study(manifest, out_dir: str | Path, alias: str, progress: Progress = _silent) -> tuple[Path, Registration]:
    """The study's chosen model: the selection's winner once chosen, else its best search trial.
    Its weights come from the study's storage, where the selection found them
    (`search.checkpoints`); it is registered as `samsnet-<study>` from the run that trained them
    (or found registered already: the selection registered the same file)."""

    summary = dict(manifest.summary or {})
    selection = load_selection(manifest.path)
    run_id = selection.winner_job.get("run_id") if selection else summary.get("best_run")
    trial_id = summary.get("best_trial")
    if selection is None and not (trial_id and run_id):
        raise ExportError(f"study {manifest.name!r} ({manifest.state}) has no best trial yet; run it to the end first")
    info = {
        "title": f"Sams-Net chosen by study {manifest.name}",
        "source": f"study {manifest.name}, MLflow run {run_id}",
        "study_summary": summary,
        "selection_table": summary.get("selection"),
        "test_sdr": summary.get("test") if isinstance(summary.get("test"), dict) else None,
        "test_wiener": _wiener_of(selection.test) if selection else None,
    }
    progress(f"export: fetching the weights of study {manifest.name} from {storage.display_uri(manifest.path)}")
    with tempfile.TemporaryDirectory() as tmp:
        if selection is not None:
            ckpt = storage.get_file(selection.winner_job["checkpoint"], Path(tmp) / BEST)
        else:
            found = checkpoints.study_best_checkpoint(manifest, trial_id)
            if found is None:
                raise ExportError(
                    f"study {manifest.name!r}: trial {trial_id} has no checkpoint left in "
                    f"{storage.display_uri(manifest.path)}"
                )
            ckpt = Path(tmp) / "checkpoint"
            found.to_directory(str(ckpt))
        out = export_checkpoint(ckpt, out_dir, info, progress)
    progress(f"export: registering as samsnet-{manifest.name} ({manifest.tracking_uri})")
    return out, register_export(out, manifest.name, manifest.tracking_uri, run_id=run_id, alias=alias)
