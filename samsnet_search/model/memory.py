"""Peak GPU memory of one training step, predicted from the configuration (no GPU needed).

The count follows the tensors autograd keeps for backward in `SamsNet` and `magnitude_loss`,
per sample, with P = F x T positions and P' = F x i*L positions once the last slice is padded
(d maps, h heads, C audio channels, K targets; `a` bytes per activation: 4 in float32, 2 under
AMP; LayerNorm and the loss stay float32 under CUDA autocast):

* each Sams module: the Q/K/V projection's input row copy (d P'), Q/K/V (3hd P'), the attention
  output (hd P'), all in `a`; the attention's logsumexp (h rows per position, float32, padded to
  `lse_align` rows per slice); both LayerNorm inputs (2d P, float32); the depthwise input,
  pointwise input and activation output (3d P, in `a`); where the SDPA call gets a full-size
  key mask, that mask too (S, h, L, L in `a`); without one, where the last slice is padded, the
  second SDPA call's output and logsumexp (hd F l, l its frames) and the concatenated output
  (hd P) that W^O keeps; with `w_o_scope: slice`, the k - 1 masked, shifted copies of the
  heads' output (hd P each, in `a`) that W^O's per-tap convolutions keep (`SamsModule`);
* outside the modules: the magnitude (C P, float32, plus its half copy under AMP), the mask
  convolution's input (d P) and the sigmoid output (KC P) in `a`, and the loss's product and
  target magnitudes (2 KC P, float32).

The attention backend assumed is CUDA SDPA's flash / memory-efficient kernel, which keeps
O(S L d) plus a logsumexp, never the L x L scores (the math fallback would keep them); the
memory-efficient kernel pads its logsumexp to 32 rows per slice (`lse_align`). With gradient
checkpointing each module keeps only its input (d P, float32), and one module's tensors are
rebuilt at a time in backward.

Beyond what is kept, a step holds the working set of the backward of one module (its attention
gradients, 4hd P' in `a`, plus two d P float32 gradients in flight), the audio and magnitudes of
the batch, the weights, their gradients and Adam's two moments (4 x parameters, float32, plus one
parameter-sized temporary of the update), and `OVERHEAD_BYTES` + `OVERHEAD_FRACTION`.
`docs/gpu-memory.md` has the measured error of this count and the paper config's figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import ExperimentConfig
from .sams_net import SamsNet

GIB = 1024**3
# The CUDA context (driver, kernels of torch, cuBLAS and cuDNN loaded lazily) sits outside the
# caching allocator: 0.5-0.8 GiB with torch 2.x on Ampere/Hopper; 1 GiB covers it with a margin.
OVERHEAD_BYTES = 1 * GIB
# The caching allocator rounds blocks up and fragments (2 MiB segments), and cuDNN picks
# convolution algorithms whose workspaces it allocates beside the tensors: 10 % of the tensors.
OVERHEAD_FRACTION = 0.10
# CUDA's memory-efficient SDPA stores its logsumexp padded to a multiple of 32 query rows.
LSE_ALIGN = 32
AMP_DTYPES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class TrainingShape:
    """What a training step's memory depends on. Names follow `sams_net`: F bins, T frames."""

    bins: int
    frames: int
    batch: int
    channels: int  # d
    heads: int  # h
    depth: int
    slice_frames: int  # L
    parameters: int
    samples: int  # audio samples of a training segment
    audio_channels: int = 2  # C
    targets: int = 4  # K
    dtype: str = "fp32"  # "fp32", or the AMP dtype "bf16" / "fp16"
    grad_checkpoint: bool = False
    full_mask: bool = False  # SDPA receives an (S, h, L, L) key mask (see module docstring)
    lse_align: int = LSE_ALIGN  # 1 for a logsumexp of exactly L rows (flash, CPU SDPA)
    w_o_copies: int = 0  # masked copies of the heads' output W^O keeps: kernel_size - 1 per slice, else 0

    @property
    def slices(self) -> int:
        return math.ceil(self.frames / self.slice_frames)

    @property
    def tail_call(self) -> int:
        """Frames of the padded last slice that SDPA runs again on its own (0: no second call).
        Without a mask, `sams_net._sdpa_kernel` reruns a padded last slice and concatenates."""
        last = self.frames - (self.slices - 1) * self.slice_frames
        return 0 if self.full_mask or last == self.slice_frames else last


def module_bytes(s: TrainingShape) -> int:
    """Bytes one Sams module keeps for backward, per sample."""
    a, d, h, L = AMP_DTYPES[s.dtype], s.channels, s.heads, s.slice_frames
    P, padded = s.bins * s.frames, s.bins * s.slices * L
    kept = a * (d + 4 * h * d) * padded + 4 * 2 * d * P + a * 3 * d * P
    sequences = s.bins * s.slices  # S per sample
    kept += 4 * h * sequences * (math.ceil(L / s.lse_align) * s.lse_align)
    if s.full_mask:
        kept += a * h * sequences * L * L
    kept += a * s.w_o_copies * h * d * P
    if s.tail_call:  # the tail call's output and logsumexp, and the concatenated output W^O keeps
        kept += (
            a * h * d * (P + s.bins * s.tail_call) + 4 * h * s.bins * math.ceil(s.tail_call / s.lse_align) * s.lse_align
        )
    return kept


def outside_bytes(s: TrainingShape) -> int:
    """Bytes kept for backward outside the Sams modules (embedding, mask head, loss), per sample."""
    a, P, KC, C = AMP_DTYPES[s.dtype], s.bins * s.frames, s.targets * s.audio_channels, s.audio_channels
    magnitude = 4 * C * P + (a * C * P if a != 4 else 0)  # the half copy is the embedding's input
    return magnitude + a * (s.channels + KC) * P + 4 * 2 * KC * P


def _tail_bytes(s: TrainingShape) -> int:
    """A module's tensors behind its attention (LayerNorm inputs, convolution inputs), per sample:
    backward has freed them by the time it reaches the attention."""
    return (4 * 2 + AMP_DTYPES[s.dtype] * 3) * s.channels * s.bins * s.frames


def _attention_grad_bytes(s: TrainingShape) -> int:
    """Gradients in flight while one module's attention runs backward, per sample: the output's
    and Q/K/V's (4hd P') and the residual's (d P, float32)."""
    padded = s.bins * s.slices * s.slice_frames
    grads = 4 + (1 if s.tail_call else 0)  # with a tail call, the output's gradient padded back to i L too
    return AMP_DTYPES[s.dtype] * grads * s.heads * s.channels * padded + 4 * s.channels * s.bins * s.frames


def activation_bytes(s: TrainingShape) -> int:
    """Peak bytes of activations and their gradients in one step, the whole batch.

    The peak is where the last module's attention runs backward (the loss's tensors and the
    module's tail are freed by then, the attention's gradients are alive), unless the kept
    tensors alone at the end of forward are more.
    """
    inputs = s.depth * 4 * s.channels * s.bins * s.frames
    # Kept at the end of forward; with checkpointing only the module inputs, and one module is
    # rebuilt at a time in backward.
    kept = inputs if s.grad_checkpoint else s.depth * module_bytes(s)
    rebuilt = inputs + module_bytes(s) if s.grad_checkpoint else kept
    per_sample = max(kept + outside_bytes(s), rebuilt - _tail_bytes(s) + _attention_grad_bytes(s))
    batch_audio = 4 * (1 + s.targets) * s.audio_channels * s.samples
    return s.batch * (per_sample + batch_audio)


def state_bytes(s: TrainingShape) -> int:
    """Weights, gradients, Adam's two moments and one update temporary, float32."""
    return 5 * 4 * s.parameters


def tensor_bytes(s: TrainingShape) -> int:
    """Peak bytes of tensors in one training step (what a CPU run allocates, no CUDA overheads)."""
    return activation_bytes(s) + state_bytes(s)


def peak_bytes(s: TrainingShape) -> int:
    """Predicted peak GPU memory of a training step: tensors plus the CUDA overheads."""
    return int(tensor_bytes(s) * (1 + OVERHEAD_FRACTION)) + OVERHEAD_BYTES


# Whether SDPA receives an (S, h, L, L) key mask, which CUDA's kernels keep at full size for
# backward. `sams_net._sdpa_kernel` passes none (issue 21, item 3; tests/test_model_sdpa.py):
# a padded last slice runs again on its own frames instead.
SDPA_FULL_MASK = False


def training_shape(cfg: ExperimentConfig, amp_dtype: str = "bf16") -> TrainingShape:
    """The shape of a training step of `cfg` on CUDA: AMP in `amp_dtype` when `train.amp`."""
    model = cfg.resolved_model()
    with torch.device("meta"):  # counts parameters without allocating them
        parameters = sum(p.numel() for p in SamsNet(**model.model_dump()).parameters())
    samples = cfg.data.segment_samples
    return TrainingShape(
        bins=model.bins,
        frames=model.frames(samples),
        batch=cfg.train.batch_size,
        channels=model.channels,
        heads=model.heads,
        depth=model.depth,
        slice_frames=model.slice_frames,
        parameters=parameters,
        samples=samples,
        audio_channels=model.audio_channels,
        dtype=amp_dtype if cfg.train.amp and cfg.train.device != "cpu" else "fp32",
        grad_checkpoint=model.grad_checkpoint,
        full_mask=SDPA_FULL_MASK,
        w_o_copies=model.kernel_size - 1 if model.w_o_scope == "slice" else 0,
    )
