"""Publishing the selection's winner: its export folder, registered as `samsnet-<study>`.

The selection (search layer) chooses the winner and delivery publishes it: the CLI passes
`register_winner` to `search.select.run_selection`, so the search never imports delivery.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ..services import stop, tracking
from .export import export_checkpoint
from .registry import DEFAULT_ALIAS, register


def register_winner(
    checkpoint_dir: Path, info: dict[str, Any], study_name: str, tracking_uri: str, run_id: str | None
) -> dict[str, Any]:
    """Export the winner's checkpoint and register it from `run_id`, the run that trained its
    weights; returns {"name", "version", "alias"} (what study.json's summary records)."""
    with tempfile.TemporaryDirectory() as tmp:
        stop.phase("selection.export")
        out = export_checkpoint(checkpoint_dir, Path(tmp) / "export", info)
        stop.phase("selection.register")
        version = register(out, study_name, tracking_uri, run_id=run_id, alias=DEFAULT_ALIAS)
    return {"name": tracking.registered_model_name(study_name), "version": version, "alias": DEFAULT_ALIAS}
