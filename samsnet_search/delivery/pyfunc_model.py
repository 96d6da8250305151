"""MLflow pyfunc ("model from code") of a samsnet export: runs `separate.pt2` with torch alone.

Copied into every export as `mlflow_model.py` and run by MLflow, where samsnet_search need not
be installed: it imports only the standard library, numpy, torch and mlflow. So it checks the
program's sha256 against `export.json` itself (the package's loaders do the same through
`export_folder.verified_file`).

predict(audio): float32 (B, C, N) at 44.1 kHz -> stems (B, 4, C, N) in the order vocals, drums,
bass, other; the whole input in one call (for long songs, `samsnet-search separate` goes in chunks).
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel
from torch.export.passes import move_to_device_pass


def checked_program(folder, key="separate"):
    """files.<key> of export.json: a path inside the folder whose sha256 matches, else ValueError."""
    folder = Path(folder)
    entry = json.loads((folder / "export.json").read_text())["files"][key]
    path = folder / entry["path"]
    rel = Path(entry["path"])
    if rel.is_absolute() or ".." in rel.parts or not path.resolve().is_relative_to(folder.resolve()):
        raise ValueError(f"{path}: outside the export folder; refusing to load it")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != entry["sha256"]:
        raise ValueError(
            f"{path}: sha256 {digest[:12]}... differs from {entry['sha256'][:12]}... recorded in "
            "export.json: the file was changed after export; refusing to load it"
        )
    return path


class SamsNetSeparator(PythonModel):
    def load_context(self, context):
        # The GPU where there is one (the program holds SDPA: flash / memory-efficient there);
        # move_to_device_pass moves the device constants recorded in the graph too.
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        program = torch.export.load(str(checked_program(context.artifacts["export"])))
        if self.device.type != "cpu":
            program = move_to_device_pass(program, self.device)
        self.model = program.module()

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        audio = torch.from_numpy(np.asarray(model_input, dtype=np.float32))
        if audio.dim() == 2:
            audio = audio[None]
        with torch.no_grad():
            return self.model(audio.to(self.device)).cpu().numpy()


set_model(SamsNetSeparator())
