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
        self.model = torch.export.load(str(checked_program(context.artifacts["export"]))).module()

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        audio = torch.from_numpy(np.asarray(model_input, dtype=np.float32))
        if audio.dim() == 2:
            audio = audio[None]
        with torch.no_grad():
            return self.model(audio).numpy()


set_model(SamsNetSeparator())
