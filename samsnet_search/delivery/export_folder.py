"""An export folder: its files, its manifest (`export.json`), the checks on reading it, loading it.

`export.py` writes the folder, `registry.py` stores it in MLflow; both read it through here.

* `masks.pt2`: `torch.export` program of `SamsNet.forward`, `mag (B, C, F, T) -> masks
  (B, 4, C, F, T)`, batch and frames dynamic; `torch.export.load` runs it with torch alone.
* `separate.pt2`: program of `SamsNet.separate`, `audio (B, C, N) -> stems (B, 4, C, N)` (STFT,
  masks, ISTFT; the whole input at once), batch and samples dynamic.
* `model.onnx`: the mask network of `masks.pt2` as ONNX, for runtimes without torch.
* `weights.pt` (plain state dict), `model_config.json`, `experiment.json`, `MODEL_CARD.md`,
  `mlflow_model.py` (the registry's pyfunc), and `export.json`: format, each file's path and
  sha256, the parity of every exported format with the eager model, what a loader needs to
  know about the network (STFT, slice length, context), source.

Loading checks every file it reads against `export.json`: a path must stay inside the folder
and the file's sha256 must match, else the load is refused naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.export.passes import move_to_device_pass

from ..engine import checkpoint
from ..errors import SamsNetError
from ..model import Spectrogram

# /3: torch.export programs (.pt2) in place of TorchScript; /2 (model.ts) and /1 (no checksums) are refused.
FORMAT = "samsnet-export/3"
MANIFEST = "export.json"
MASKS_FILE, SEPARATE_FILE, ONNX_FILE, WEIGHTS_FILE = "masks.pt2", "separate.pt2", "model.onnx", "weights.pt"
CARD_FILE, CONFIG_FILE, EXPERIMENT_FILE, PYFUNC_FILE = (
    "MODEL_CARD.md",
    "model_config.json",
    "experiment.json",
    "mlflow_model.py",
)
# export.json "files" key -> file name in the folder.
FILES = {
    "masks": MASKS_FILE,
    "separate": SEPARATE_FILE,
    "onnx": ONNX_FILE,
    "weights": WEIGHTS_FILE,
    "card": CARD_FILE,
    "model_config": CONFIG_FILE,
    "experiment": EXPERIMENT_FILE,
    "pyfunc": PYFUNC_FILE,
}
OLD_FORMATS = {
    "samsnet-export/1": "records no checksums, so its files cannot be verified",
    "samsnet-export/2": "holds TorchScript (model.ts), which this version no longer loads",
}


class ExportError(SamsNetError):
    """An export cannot be written, found, loaded or registered."""


def sha256_file(path: Path) -> str:
    return checkpoint.file_digest(path)["sha256"]


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
    if fmt in OLD_FORMATS:
        raise ExportError(f"{folder / MANIFEST}: format {fmt} {OLD_FORMATS[fmt]}; export the model again")
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
    if not (
        isinstance(entry, dict)
        and isinstance(entry.get("path"), str)
        and isinstance(entry.get("sha256"), str)
        and len(entry["sha256"]) == 64
    ):
        raise ExportError(f"{where}: expected {{path: <file in the folder>, sha256: <64 hex digits>}}, got {entry!r}")
    rel = Path(entry["path"])
    # Resolved (symlinks followed) it must still be inside the folder: `../x.pt2`, `/tmp/x.pt2` or a
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
        raise ExportError(
            f"{path}: sha256 {actual[:12]}... differs from {entry['sha256'][:12]}... recorded in "
            f"{MANIFEST}: the file was changed after export; refusing to load it"
        )
    return path


def verify_export(export_dir: str | Path) -> dict[str, Any]:
    """Every file of an export checked against its manifest; returns the manifest."""
    manifest = read_manifest(export_dir)
    for key in manifest["files"]:
        verified_file(export_dir, manifest, key)
    return manifest


def load_program(path: Path, device: str | torch.device = "cpu") -> torch.export.ExportedProgram:
    """A `.pt2` file as an ExportedProgram on `device` (its recorded device constants moved too)."""
    try:
        program = torch.export.load(str(path))
    except Exception as e:  # a corrupt archive, a newer torch, ...
        raise ExportError(f"{path}: cannot be loaded as a torch.export program ({type(e).__name__}: {e})") from None
    return program if torch.device(device).type == "cpu" else move_to_device_pass(program, device)


class ExportedModel:
    """The programs of an export behind the interface of a Python `SamsNet` that inference uses
    (`engine.separate.MaskSeparator`): `model(mag) -> masks`, `separate(audio) -> stems`,
    `spectrogram` (the model's own `Spectrogram`, rebuilt from the recorded STFT), `slice_frames`,
    `context_frames()`, `audio_channels`, `targets`; `.to(device)` and `.eval()` as on a module.
    Nothing of the network runs as Python: both programs are the traced SamsNet."""

    def __init__(self, programs: dict[str, torch.export.ExportedProgram], network: dict[str, int]):
        self.programs = programs
        self.network = dict(network)
        self.device = next(iter(programs["masks"].state_dict.values())).device
        self.masks, self.stems = programs["masks"].module(), programs["separate"].module()
        self.spectrogram = Spectrogram(int(network["n_fft"]), int(network["hop_length"])).to(self.device)
        self.slice_frames = int(network["slice_frames"])
        self.audio_channels = int(network["audio_channels"])
        self.targets = int(network["targets"])

    def __call__(self, mag: torch.Tensor) -> torch.Tensor:
        """mag (B, C, F, T) -> masks (B, targets, C, F, T)."""
        return self.masks(mag)

    def separate(self, audio: torch.Tensor) -> torch.Tensor:
        """audio (B, C, N) -> estimates (B, targets, C, N), the whole input at once."""
        return self.stems(audio)

    def context_frames(self) -> int:
        return int(self.network["context_frames"])

    def to(self, device: str | torch.device) -> "ExportedModel":
        if torch.device(device) == self.device:
            return self
        return ExportedModel({k: move_to_device_pass(p, device) for k, p in self.programs.items()}, self.network)

    def eval(self) -> "ExportedModel":
        return self  # traced in eval mode


def load_exported(export_dir: str | Path, map_location: str | torch.device = "cpu") -> ExportedModel:
    """The torch.export programs of an export folder (no pickles, no SamsNet code), checked."""
    folder = Path(export_dir)
    manifest = read_manifest(folder)
    programs = {key: load_program(verified_file(folder, manifest, key), map_location) for key in ("masks", "separate")}
    network = manifest.get("network")
    if not isinstance(network, dict):
        raise ExportError(f"{folder / MANIFEST}: no network section (STFT, slice length, context); export it again")
    return ExportedModel(programs, network)


def load_weights(export_dir: str | Path) -> nn.Module:
    """The Python SamsNet from `weights.pt` + `model_config.json` (weights_only loading)."""
    folder = Path(export_dir)
    manifest = read_manifest(folder)
    config = json.loads(verified_file(folder, manifest, "model_config").read_text())
    net = checkpoint.build_model(config)
    net.load_state_dict(torch.load(verified_file(folder, manifest, "weights"), map_location="cpu", weights_only=True))
    return net.eval()
