"""Trainer: one configuration, one device. Reporting goes through callbacks.

The search passes a callback that calls `tune.report`; the CLI passes one that draws a
progress bar. Nothing here knows about Ray or MLflow.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..config import TARGETS, ExperimentConfig
from ..data import Splits, load_splits
from ..data.dataset import make_train_loader, validation_excerpts
from ..errors import SamsNetError
from ..metrics.bsseval import median_over_tracks, sdr_v4, track_scores
from . import checkpoint
from .device import amp_dtype, configure_cuda, cudnn_benchmark, loader_defaults, pick_device
from .loss import magnitude_loss
from .validation import chunked_estimates, chunked_loss

log = logging.getLogger(__name__)

TRACK_SDR = "track_sdr"  # metric prefix: track_sdr.<track>.<target>, with train.valid_sdr_per_track


class TrainingDiverged(SamsNetError):
    """The loss became NaN or infinite."""


@dataclass
class EpochResult:
    epoch: int  # 1-based
    train_loss: float
    valid_loss: float
    valid_sdr: float | None  # average of the four targets (dB); None where not computed
    valid_sdr_targets: dict[str, float] | None
    best_valid_loss: float
    is_best: bool
    epochs_without_improvement: int
    stop: bool  # early stopping fires after this epoch
    seconds: float
    cpu_seconds: float  # CPU time of this process over the epoch (all its threads)
    checkpoint_dir: Path
    # track -> target -> SDR (dB), with train.valid_sdr_per_track
    valid_sdr_tracks: dict[str, dict[str, float]] | None = None

    def metrics(self) -> dict[str, float]:
        """Flat, consistently named metrics for Tune and MLflow."""
        out = {
            "epoch": self.epoch,
            "train_loss": self.train_loss,
            "valid_loss": self.valid_loss,
            "best_valid_loss": self.best_valid_loss,
            "epochs_without_improvement": self.epochs_without_improvement,
            "stopped_early": float(self.stop),
            "epoch_seconds": self.seconds,
            "epoch_cpu_seconds": self.cpu_seconds,
        }
        if self.valid_sdr is not None:
            out["valid_sdr"] = self.valid_sdr
            out.update({f"valid_sdr_{t}": v for t, v in (self.valid_sdr_targets or {}).items()})
        for track, scores in (self.valid_sdr_tracks or {}).items():
            out.update({f"{TRACK_SDR}.{track}.{t}": v for t, v in scores.items()})
        return out


Callback = Callable[[EpochResult], None]


@dataclass
class TrainSummary:
    epochs: int
    best_epoch: int
    best_valid_loss: float
    stopped_early: bool
    checkpoint_dir: Path
    history: list[dict] = field(default_factory=list)


def with_loader_defaults(cfg: ExperimentConfig, device: torch.device) -> ExperimentConfig:
    """cfg with `data.num_workers` and `data.pin_memory` chosen for `device` where unset, so the
    checkpoint (and the search's MLflow params) record what the loader used."""
    cpus = cfg.train.threads or torch.get_num_threads()  # a trial's threads are its reserved CPUs
    workers, pin = loader_defaults(cfg.data.num_workers, cfg.data.pin_memory, device, cpus)
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"num_workers": workers, "pin_memory": pin})})


class Trainer:
    """Trains one Sams-Net configuration; writes `workdir/checkpoint/{last,best}.pt` every epoch."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        workdir: str | Path,
        callbacks: Sequence[Callback] = (),
        splits: Splits | None = None,
        device: torch.device | None = None,
    ):
        """device: where to train (the search passes the GPU Ray assigned); None: `pick_device`."""
        self.device = device or pick_device(cfg.train.device)
        self.cfg = cfg = with_loader_defaults(cfg, self.device)
        self.workdir = Path(workdir)
        self.ckpt_dir = self.workdir / "checkpoint"
        self.callbacks = list(callbacks)
        self.amp = cfg.train.amp and self.device.type == "cuda"
        self.splits = splits or load_splits(cfg.data)
        self._setup_backends()
        torch.manual_seed(cfg.train.seed)
        self.model_config = cfg.resolved_model()
        self.model = checkpoint.build_model(self.model_config).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        # Loss scaling only matters for float16; bfloat16 has float32's range.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and amp_dtype() == torch.float16)
        self.loader = make_train_loader(
            self.splits.train,
            cfg.data,
            batch_size=cfg.train.batch_size,
            seed=cfg.train.seed,
            pin_memory=cfg.data.pin_memory,
        )
        self.epoch = 0
        self.history: list[dict] = []
        self.best_valid_loss = math.inf
        self.best_epoch = 0

    def _setup_backends(self) -> None:
        if self.cfg.train.threads:
            torch.set_num_threads(self.cfg.train.threads)
        configure_cuda(self.device, fixed_shapes=True)  # training segments all have one length

    # --- state -----------------------------------------------------------------------

    def _state(self) -> dict:
        return {
            "experiment": self.cfg.model_dump(mode="json"),
            "model_config": self.model_config.model_dump(mode="json"),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
            "epoch": self.epoch,
            "history": self.history,
            "best": {"epoch": self.best_epoch, "valid_loss": self.best_valid_loss},
        }

    def restore(self, path: str | Path, origin: str | None = None) -> None:
        """Continue from a checkpoint folder (or its last.pt): weights, optimizer, RNG, history.

        origin: the stored location of a downloaded copy, named in errors instead of the copy.
        The folder's best.pt (and its checksum) is copied into this trainer's checkpoint
        folder, so the copy may be deleted once this returns.
        """
        path = Path(path)
        state = checkpoint.load(path, map_location=self.device, origin=origin)
        if state["model_config"] != self.model_config.model_dump(mode="json"):
            raise checkpoint.CheckpointError(
                f"{origin or path}: model config differs from the configuration being trained"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        _load_scaler(self.scaler, state.get("scaler"))
        torch.set_rng_state(state["rng"]["torch"].cpu())
        self.epoch = state["epoch"]
        self.history = list(state["history"])
        self.best_epoch = state["best"]["epoch"]
        self.best_valid_loss = state["best"]["valid_loss"]
        source_dir = path if path.is_dir() else path.parent
        if source_dir.resolve() != self.ckpt_dir.resolve() and (source_dir / checkpoint.BEST).is_file():
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            for name in (checkpoint.BEST, checkpoint.BEST + checkpoint.CHECKSUM_SUFFIX):
                if (source_dir / name).is_file():
                    shutil.copy2(source_dir / name, self.ckpt_dir / name)
        log.info("resumed from %s at epoch %d", origin or path, self.epoch)

    # --- loops -----------------------------------------------------------------------

    def train_epoch(self) -> float:
        self.model.train()
        self.loader.dataset.set_epoch(self.epoch)
        total, count = 0.0, 0
        for mixture, targets in self.loader:
            mixture = mixture.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            loss = magnitude_loss(self.model, mixture, targets, self.amp)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"train_loss became {loss.item()} in epoch {self.epoch + 1} "
                    f"(lr={self.cfg.train.lr}); lower train.lr or set train.grad_clip"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.cfg.train.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += loss.item() * mixture.shape[0]
            count += mixture.shape[0]
        return total / max(count, 1)

    @torch.no_grad()
    def validate(self, with_sdr: bool) -> tuple[float, dict[str, float] | None, dict[str, dict[str, float]] | None]:
        """valid_loss over the validation excerpts; per-target SDR (median/median) and each
        track's scores when asked."""
        self.model.eval()
        excerpts = validation_excerpts(self.splits.valid, self.cfg.data, epoch=self.epoch, seed=self.cfg.train.seed)
        with cudnn_benchmark(len({ex.mixture.shape[-1] for ex in excerpts}) == 1):  # whole tracks vary in length
            return self._validate(excerpts, with_sdr)

    def _validate(self, excerpts, with_sdr: bool):
        # In chunks on every protocol: a whole song at once would not fit a GPU (engine.validation).
        chunk = self.cfg.data.valid_chunk_seconds
        losses, scores = [], {}
        for ex in excerpts:
            losses.append(chunked_loss(self.model, ex.mixture, ex.targets, self.device, self.amp, chunk))
            if with_sdr:
                estimates = chunked_estimates(self.model, ex.mixture, self.device, self.amp, chunk)  # (S, C, N)
                # A stem silent over a whole excerpt gives NaN (museval would refuse it);
                # the medians skip NaN. On the host, in float64: a song's worth of samples.
                refs = np.asarray(ex.targets, dtype=np.float64).transpose(0, 2, 1)
                sdr = sdr_v4(refs, estimates.astype(np.float64).transpose(0, 2, 1), on_silent="nan")
                scores[ex.name] = track_scores(sdr, TARGETS)
        if not with_sdr:
            return float(np.mean(losses)), None, None
        return float(np.mean(losses)), median_over_tracks(list(scores.values())), scores

    def fit(self, resume: str | Path | None = None) -> TrainSummary:
        if resume is not None:
            self.restore(resume)
        train = self.cfg.train
        stopped_early = False
        while self.epoch < train.epochs and not stopped_early:
            start, start_cpu = time.perf_counter(), time.process_time()
            train_loss = self.train_epoch()
            self.epoch += 1
            every = train.valid_sdr_every
            with_sdr = every > 0 and (self.epoch % every == 0 or self.epoch == train.epochs)
            valid_loss, sdr, per_track = self.validate(with_sdr)
            is_best = valid_loss < self.best_valid_loss
            if is_best:
                self.best_valid_loss, self.best_epoch = valid_loss, self.epoch
            waited = self.epoch - self.best_epoch
            stopped_early = waited >= train.patience
            result = EpochResult(
                epoch=self.epoch,
                train_loss=train_loss,
                valid_loss=valid_loss,
                valid_sdr=sdr["avg"] if sdr else None,
                valid_sdr_targets={t: sdr[t] for t in TARGETS} if sdr else None,
                best_valid_loss=self.best_valid_loss,
                is_best=is_best,
                epochs_without_improvement=waited,
                stop=stopped_early,
                seconds=time.perf_counter() - start,
                cpu_seconds=time.process_time() - start_cpu,
                checkpoint_dir=self.ckpt_dir,
                valid_sdr_tracks=per_track if train.valid_sdr_per_track else None,
            )
            self.history.append(result.metrics())
            self._write_checkpoints(result)
            log.info("epoch %d: %s", self.epoch, _fmt(result.metrics()))
            for callback in self.callbacks:
                callback(result)
        return TrainSummary(
            epochs=self.epoch,
            best_epoch=self.best_epoch,
            best_valid_loss=self.best_valid_loss,
            stopped_early=stopped_early,
            checkpoint_dir=self.ckpt_dir,
            history=self.history,
        )

    def _write_checkpoints(self, result: EpochResult) -> None:
        if result.is_best:
            checkpoint.save(
                self.ckpt_dir / checkpoint.BEST,
                {
                    "experiment": self.cfg.model_dump(mode="json"),
                    "model_config": self.model_config.model_dump(mode="json"),
                    "model": self.model.state_dict(),
                    "epoch": self.epoch,
                    "metrics": result.metrics(),
                },
            )
        checkpoint.save(self.ckpt_dir / checkpoint.LAST, self._state())


def _load_scaler(scaler: torch.amp.GradScaler, state: dict | None) -> None:
    """Resume the loss scale where the checkpoint has one. A checkpoint from a CPU or bf16 node
    holds an empty (disabled) scaler state, which an fp16 scaler refuses: that scaler starts fresh
    (its scale finds its level again in a few steps). A disabled scaler ignores any state."""
    if scaler.is_enabled() and not state:
        log.info(
            "checkpoint has no float16 loss-scaler state (saved on a CPU or bfloat16 node): the scaler starts fresh"
        )
        return
    scaler.load_state_dict(state or {})


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "epoch")
