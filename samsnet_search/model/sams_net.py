"""Sams-Net: a sliced attention-based network for music source separation (Li et al. 2020).

Shapes use the paper's names: B batch, C audio channels, d = d_k feature maps
(`channels`), h heads, F frequency bins, T frames, i slices, L = T / i frames per slice.

Readings of what the paper leaves open (each is a keyword argument where it is a choice):

* Token. Each time-frequency position is a token of d_k features; it attends over the
  frames of its own slice at the same frequency bin. The paper scales scores by
  1/sqrt(d_k) with d_k the number of feature maps, which only fits tokens of d_k
  features (frames as tokens would have d_k * F features and need 1/sqrt(d_k * F)).
  It also keeps the cost linear in F. We pass `scale=1/sqrt(d_k)` explicitly.
* Heads. Every head has its own 1x1 Q/K/V convolutions with all d_k maps (paper 3.2), so
  `heads` need not divide `channels`; the heads' outputs (h * d_k maps) are concatenated
  and a kxk convolution W^O compresses them back to d_k maps. The paper leaves the per-head
  width open (d_k here; d_k / h, a transformer's split, is the other reading), so the
  convolution sizes are a reading, not fixed by the description.
* Q/K/V in one stage. The paper projects twice: 1x1 convolutions give Q, K, V, then each head
  projects them again (W_i^Q, W_i^K, W_i^V). Two affine maps in a row are one affine map, so
  we keep one 1x1 convolution per head and projection: the same functions, 3 (d^2 + d)
  parameters fewer per module (37,440 at the paper's d = 64, depth 3).
* W^O and the slices (`w_o_scope`). The paper's equations 6 and 8 apply W^O inside each
  slice, then join the slices. The default ("joined") joins the slices first and runs W^O's
  kxk convolution over the whole time axis, so it mixes the k // 2 frames on either side of
  each slice boundary. "slice" runs W^O on each slice alone (zero-padded at the slice's
  edges, `SamsModule._w_o_per_slice`): the paper's order. Same parameters and MACs.
* Parameter count. At the paper's config (3 modules, 2 heads, 64 maps, n_fft 4096) this
  network has 1,886,024 parameters (312,392 in convolutions, 1,573,632 in the LayerNorms'
  per-bin affine). The convolution readings span 1.74M (d_k / h maps per head) to 1.92M (two
  Q/K/V stages) with per-bin LayerNorm; the paper reports 3.70M, which no reading we found
  explains. We do not add layers to reach it.
* Slices. The slice length L is fixed at training (`slice_frames = ceil(T_train / slices)`)
  and the time axis of any input is cut into blocks of L frames. The last block is
  zero-padded and its padded frames are never attended to as keys, never dropped, so a 6 s
  excerpt and a whole song are processed alike. The batched-matmul kernel masks them with a
  key bias built for every input (all zero when the frames fill whole slices); SDPA takes no
  mask and runs a padded last slice again on its own frames (`_sdpa_kernel`). No Python branch
  depends on the frame count's value, so `torch.export` traces one program for any length
  (`delivery.export`).
* Kernel (`kernel_for`). On CPU in float32 the attention is one fused loop in C
  (`cpu_attention`, vectorized across frequency bins: every bin of a slice is an attention of
  the same shape), the Q/K/V projection included. Where that cannot run (another dtype,
  while torch.export traces, no C compiler) and on CUDA, slices and heads are folded into one
  batch of B*F*i*h sequences: batched matmuls on CPU for slices up to `BMM_MAX_SLICE_FRAMES`,
  SDPA otherwise (on CUDA, its fused kernels).
* LayerNorm axes. `LayerNorm(x + Sublayer(x))` normalizes each frame over
  (d_k, F) with an elementwise affine per (map, bin). It is local in time, so
  separating a track in chunks gives the same result as separating it whole. The
  per-bin affine parameters are most of the parameter count (2 * d_k * F per norm).
* Nonlinearity. The paper names none inside the module besides the softmax; we put
  `activation` (default ReLU) after the pointwise convolution, as a transformer's
  feed-forward has one.
* Mask. A 1x1 convolution maps d_k maps to targets x C masks, squashed by a sigmoid
  (default: bounded in [0, 1] like an ideal ratio mask) or a ReLU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import cpu_attention
from .spectral import Spectrogram

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "none": nn.Identity}


class FrameLayerNorm(nn.Module):
    """LayerNorm over (d, F) of each frame. x: (B, d, F, T) -> (B, d, F, T)."""

    def __init__(self, channels: int, bins: int):
        super().__init__()
        self.norm = nn.LayerNorm([channels, bins])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class _BatchedSoftmaxAttention(torch.autograd.Function):
    """softmax(q k^T * scale + bias) v per head over many short sequences, with batched matmuls.

    qkv: (S, L, 3, h, d) contiguous, S sequences of L frames (the Q/K/V projection's output
    as it comes, so q, k, v of a head are strided views and no layout copy is made); bias:
    None or an additive key mask broadcastable to (S, L, L) (0 or -inf). Returns (S, L, h, d).

    Why not SDPA on CPU: its flash kernel pays a per-sequence overhead that dominates on
    tens of thousands of sequences of 6-44 frames with head sizes 4-64, and torch.softmax
    over rows that short is several times slower than its own exp. This is the same
    arithmetic (max-subtracted softmax, float32) in a few large calls; backward keeps only
    qkv, the output and the probabilities, takes rowsum(dP * P) as rowsum(dO * O) (an
    (S, L) rather than (S, L, L) product) and writes the Q/K/V gradients into one tensor.
    """

    @staticmethod
    def forward(ctx, qkv, bias, scale: float):
        S, L, _, h, d = qkv.shape
        out = qkv.new_empty(S, L, h, d)
        probs = []
        for head in range(h):  # h is 1-2 (paper: 2); each head is one batched call
            q, k, v = qkv[:, :, 0, head], qkv[:, :, 1, head], qkv[:, :, 2, head]  # (S, L, d) views
            if bias is None:
                s = torch.bmm(q, k.transpose(1, 2)).mul_(scale)  # (S, L, L) scores
            else:
                s = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale)
            s = s.sub_(s.amax(-1, keepdim=True)).exp_()
            p = s.div_(s.sum(-1, keepdim=True))  # probabilities, in place of the scores
            out[:, :, head] = torch.bmm(p, v)
            probs.append(p)
        ctx.save_for_backward(qkv, out, *probs)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        qkv, out, *probs = ctx.saved_tensors
        grad_qkv = torch.empty_like(qkv)
        for head, p in enumerate(probs):
            q, k, v = qkv[:, :, 0, head], qkv[:, :, 1, head], qkv[:, :, 2, head]
            go, o = grad_out[:, :, head], out[:, :, head]  # (S, L, d)
            grad_qkv[:, :, 2, head] = torch.bmm(p.transpose(1, 2), go)
            grad_p = torch.bmm(go, v.transpose(1, 2))  # (S, L, L)
            delta = (go * o).sum(-1, keepdim=True)  # rowsum(dP * P), (S, L, 1)
            grad_s = grad_p.sub_(delta).mul_(p).mul_(ctx.scale)  # softmax backward, times the score scale
            grad_qkv[:, :, 0, head] = torch.bmm(grad_s, k)
            grad_qkv[:, :, 1, head] = torch.bmm(grad_s.transpose(1, 2), q)
        return grad_qkv, None, None


def _bmm_kernel(qkv, frames, scale: float) -> torch.Tensor:
    N, i, L, _, h, d = qkv.shape
    # Keys in the padded tail of the last slice are never attended to: an additive -inf bias,
    # always built (no `if pad:`, a branch on T for torch.export). `repeat` rather than a
    # reshaped `expand`: the latter's copy-or-view choice is a branch on T too.
    keep = (torch.arange(i * L, device=qkv.device) < frames).view(1, i, 1, L)
    keep = keep.repeat(N, 1, 1, 1).view(-1, 1, L)  # (S, 1, L)
    bias = torch.zeros(keep.shape, dtype=qkv.dtype, device=qkv.device).masked_fill_(~keep, float("-inf"))
    out = _BatchedSoftmaxAttention.apply(qkv.view(N * i, L, 3, h, d).contiguous(), bias, scale)  # (S, L, h, d)
    return out.reshape(N, i * L, h, d).narrow(1, 0, frames)  # narrow: exactly T frames, where [:T] clamps


# Most sequences one SDPA call takes, by device type. CUDA's SDPA kernels put the batch on a grid
# dimension that CUDA caps at 65,535 blocks, and larger batches fail with "invalid configuration
# argument" (pytorch#146704). PyTorch splits the batch itself only in the memory-efficient kernel
# (pytorch#154029 forward, pytorch#154663 backward), not in the flash kernel that half-precision
# training (AMP) runs. A paper-shape trial folds several times that many sequences into the batch
# (S = B F i), so on CUDA the call runs on slices of it. Other devices have no such limit.
SDPA_MAX_BATCH = {"cuda": 65_535}


def _sdpa(qkv, scale: float) -> torch.Tensor:
    """qkv (S, L, 3, h, d) -> (S, L, h, d): SDPA without a mask. q, k, v go to SDPA as strided
    (S, h, L, d) views of the projection (no layout copy). Above the device's `SDPA_MAX_BATCH`
    sequences, one call per slice of the batch (views), the outputs concatenated."""
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # (S, h, L, d)
    limit = SDPA_MAX_BATCH.get(qkv.device.type)
    # torch.export traces one call: the number of slices would be a branch on the frame count. An
    # exported program runs in float32, where CUDA picks the memory-efficient kernel, split by PyTorch.
    if limit is None or torch.compiler.is_exporting() or qkv.shape[0] <= limit:
        return F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2)
    parts = zip(q.split(limit), k.split(limit), v.split(limit))
    return torch.cat([F.scaled_dot_product_attention(*p, scale=scale).transpose(1, 2) for p in parts])


def _sdpa_kernel(qkv, frames, scale: float) -> torch.Tensor:
    # No attention mask, ever: a mask rules out CUDA's flash kernel, and CUDA SDPA expands a
    # boolean one to a full (S, h, L, L) tensor in q's dtype that it keeps for backward (GBs at
    # the paper's shapes). Every slice runs in one call over the padded layout; where the last
    # slice is padded, its result from that call (which saw the padded keys) is dropped and the
    # slice runs again in a second call on its own frames only (N sequences of `last` frames,
    # strided views again): 1/i more attention work instead of a mask.
    N, i, L, _, h, d = qkv.shape
    out = _sdpa(qkv.view(N * i, L, 3, h, d), scale).reshape(N, i * L, h, d)  # slices folded into S = N i
    pad = i * L - frames
    if isinstance(pad, int) and pad == 0:  # eager and unpadded; a symbolic T (torch.export) takes both calls
        return out
    last = frames - (i - 1) * L  # frames of the last slice, 1..L
    tail = _sdpa(qkv.select(1, i - 1).narrow(1, 0, last), scale)  # (N, last, h, d); narrow, as [:last] clamps
    return torch.cat([out.narrow(1, 0, (i - 1) * L), tail], dim=1)  # (N, T, h, d)


# Folded kernels: qkv (N, i, L, 3, h, d) (N = B F rows of i slices of L frames, the time axis
# zero-padded to i L), T real frames, scale -> (N, T, h, d). Padded keys are never attended to;
# both compute softmax(q k^T * scale) v per slice up to float rounding.
FOLDED_KERNELS = {"bmm": _bmm_kernel, "sdpa": _sdpa_kernel}
# Every kernel `SlicedMultiHeadAttention` can run: the folded ones and the fused CPU loop
# (`cpu_attention`), which projects Q/K/V itself. `kernel_for` picks one.
KERNELS = ("bmm", "fused", "sdpa")


# Longest slice for which the batched-matmul kernel beat CPU SDPA in `bench` (attention step,
# one thread: 1.2-1.5x at 11-44 frames, 0.8x at 87, where SDPA's flash kernel has long rows).
# It matters only where the fused kernel cannot run (not float32, or while torch.export traces).
BMM_MAX_SLICE_FRAMES = 48


# Most feature maps for which the fused CPU kernel beats batched matmuls (fwd+bwd, 513 bins,
# 22-frame slices, one thread: 4.6x at 8 maps, 2.2x at 16, 1.2x at 32, 0.9x at 64, where the
# Q/K/V projection's d x d products dominate and MKL's blocked GEMM is faster than its loop).
FUSED_MAX_MAPS = 32


def kernel_for(x: torch.Tensor, slice_frames: int) -> str:
    """The fastest kernel for an input x (B, d, F, T): the fused loop on CPU in float32 when eager
    (`cpu_attention.supported`) for up to `FUSED_MAX_MAPS` maps, else batched matmuls for short
    slices on CPU, else SDPA (long slices on CPU, and CUDA with its fused kernels)."""
    if x.shape[1] <= FUSED_MAX_MAPS and cpu_attention.supported(x):
        return "fused"
    return "bmm" if x.device.type == "cpu" and slice_frames <= BMM_MAX_SLICE_FRAMES else "sdpa"


class SlicedMultiHeadAttention(nn.Module):
    """Sliced multi-head attention (paper eqs. 1-3) without W^O.

    x: (B, d, F, T) -> concatenated heads (B, h * d, F, T).
    """

    def __init__(self, channels: int, heads: int, slice_frames: int, kernel: str | None = None):
        super().__init__()
        if kernel is not None and kernel not in KERNELS:
            raise ValueError(
                f"kernel must be one of {sorted(KERNELS)} or None (by device and slice length), got {kernel!r}"
            )
        self.kernel = kernel  # None: `kernel_for(x, slice_frames)`; a name forces one (tests, bench)
        self.channels = channels
        self.heads = heads
        self.slice_frames = slice_frames
        # One 1x1 conv holds every head's Q, K and V convolutions (3 * h * d output maps);
        # it is the same as 3 * h separate 1x1 convs, in one call.
        self.qkv = nn.Conv2d(channels, 3 * heads * channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.kernel or kernel_for(x, self.slice_frames)
        if kernel == "fused":
            if not cpu_attention.supported(x):
                raise ValueError("kernel 'fused' needs float32 CPU input and a C compiler (see cpu_attention)")
            return self._fused(x)
        return self._folded(x, FOLDED_KERNELS[kernel])

    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        B, d, Fq, T = x.shape
        # x (B, d, F, T) is usually a (B, T, d, F)-strided view already (FrameLayerNorm's output),
        # the layout the kernel reads: bins innermost. It projects Q/K/V itself, in cache.
        out = cpu_attention.fused_attention(
            x.permute(0, 3, 1, 2),
            self.qkv.weight.view(-1, d),
            self.qkv.bias,
            self.slice_frames,
            self.heads,
            1.0 / math.sqrt(d),
        )  # (B, F, T, h, d)
        return out.view(B, Fq, T, self.heads * d).permute(0, 3, 1, 2)  # (B, h d, F, T), channels-last strides

    def _folded(self, x: torch.Tensor, kernel) -> torch.Tensor:
        B, d, Fq, T = x.shape
        h, L = self.heads, self.slice_frames
        i = (T + L - 1) // L  # slices, the last one padded (integer ceil, exact for a symbolic T)
        pad = i * L - T
        # The 1x1 Q/K/V convolution as one matmul over (B, F, T', d) rows; the time axis is
        # padded on the d input maps rather than on the 3hd output maps.
        rows = F.pad(x, (0, pad)).permute(0, 2, 3, 1)  # (B, F, iL, d)
        qkv = F.linear(rows, self.qkv.weight.view(3 * h * d, d), self.qkv.bias)  # (B, F, iL, 3hd)
        qkv = qkv.view(B * Fq, i, L, 3, h, d)  # rows of i slices of L frames (a view)
        out = kernel(qkv, T, 1.0 / math.sqrt(d))  # (B F, T, h, d)
        out = out.reshape(B, Fq, T, h * d)  # (B, F, T, h d)
        return out.permute(0, 3, 1, 2)  # (B, h d, F, T) in channels-last strides, which W^O's conv takes as is


# Where W^O runs: over the joined slices (default) or inside each slice (paper eqs. 6 and 8).
W_O_SCOPES = ("joined", "slice")


class SamsModule(nn.Module):
    """One Sams module: LayerNorm(x + W^O SMHA(x)), then LayerNorm(x + PW(DW(x))).

    x: (B, d, F, T) -> (B, d, F, T). `w_o_scope`: "joined" (W^O over the whole time axis) or
    "slice" (W^O within each slice, paper eqs. 6 and 8).
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        bins: int,
        slice_frames: int,
        kernel_size: int,
        activation: str,
        w_o_scope: str = "joined",
    ):
        super().__init__()
        if w_o_scope not in W_O_SCOPES:
            raise ValueError(f"w_o_scope must be one of {list(W_O_SCOPES)}, got {w_o_scope!r}")
        pad = kernel_size // 2
        self.w_o_scope = w_o_scope
        self.slice_frames = slice_frames
        self.attention = SlicedMultiHeadAttention(channels, heads, slice_frames)
        self.w_o = nn.Conv2d(heads * channels, channels, kernel_size, padding=pad)  # compresses h*d -> d
        self.norm1 = FrameLayerNorm(channels, bins)
        self.depthwise = nn.Conv2d(channels, channels, kernel_size, padding=pad, groups=channels)
        self.pointwise = nn.Conv2d(channels, channels, kernel_size=1)
        self.activation = _ACTIVATIONS[activation]()
        self.norm2 = FrameLayerNorm(channels, bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = self.attention(x)  # (B, h d, F, T)
        x = self.norm1(x + (self.w_o(heads) if self.w_o_scope == "joined" else self._w_o_per_slice(heads)))
        return self.norm2(x + self.activation(self.pointwise(self.depthwise(x))))

    def _w_o_per_slice(self, heads: torch.Tensor) -> torch.Tensor:
        """W^O inside each slice (paper eqs. 6, 8). heads (B, h d, F, T) -> (B, d, F, T).

        The kxk kernel is run as k convolutions of one time tap each (kx1 over frequency, all
        frames): tap tau reads frame t + tau, zeroed where that frame lies in another slice or
        outside the input, so each slice sees zeros past its edges, as its own convolution would.
        Elementwise masks built from the frame index, not slices folded into the batch: folding
        reshapes by the slice count, on which torch.export would guard (a count of 1 refused).
        The same MACs as the joined kernel; autograd keeps k - 1 masked copies of `heads` more.
        """
        T = heads.shape[-1]
        L = self.slice_frames
        kf, kt = self.w_o.kernel_size
        p = kt // 2
        frame = torch.arange(T, device=heads.device)  # (T,)
        padded = F.pad(heads, (p, p))  # (B, h d, F, T + 2p), zeros outside the input
        out = self.w_o.bias.view(1, -1, 1, 1)
        for tap in range(kt):  # tau = tap - p; tap p (tau = 0) always reads its own slice
            source = frame + (tap - p)
            same_slice = torch.div(source, L, rounding_mode="floor") == torch.div(frame, L, rounding_mode="floor")
            x = heads if tap == p else padded.narrow(3, tap, T) * same_slice.to(heads.dtype)  # (B, h d, F, T)
            out = out + F.conv2d(x, self.w_o.weight[..., tap : tap + 1], padding=(kf // 2, 0))  # (B, d, F, T)
        return out


class SamsNet(nn.Module):
    """Magnitude spectrogram in, one mask per target and channel out (paper fig. 1).

    forward(mag): mag (B, C, F, T) -> masks (B, targets, C, F, T).
    `separate(audio)`: audio (B, C, N) -> estimates (B, targets, C, N) using the mixture phase.
    Keyword arguments mirror `samsnet_search.config.ModelConfig`.
    """

    def __init__(
        self,
        *,
        slice_frames: int,
        n_fft: int = 4096,
        hop_length: int = 1024,
        audio_channels: int = 2,
        channels: int = 64,
        heads: int = 2,
        depth: int = 3,
        slices: int | None = None,  # recorded for the config; the network only needs slice_frames
        kernel_size: int = 3,
        activation: str = "relu",
        mask_activation: str = "sigmoid",
        grad_checkpoint: bool = False,
        w_o_scope: str = "joined",  # "slice": W^O within each slice (paper eqs. 6, 8); see module docstring
        targets: int = 4,
    ):
        super().__init__()
        if slice_frames is None or slice_frames < 1:
            raise ValueError("slice_frames must be a positive int (see ModelConfig.resolved)")
        bins = n_fft // 2 + 1
        self.slice_frames = slice_frames
        self.depth = depth
        self.kernel_size = kernel_size
        self.targets = targets
        self.audio_channels = audio_channels
        self.grad_checkpoint = grad_checkpoint
        self.spectrogram = Spectrogram(n_fft, hop_length)
        self.embedding = nn.Conv2d(audio_channels, channels, kernel_size, padding=kernel_size // 2)
        self.blocks = nn.ModuleList(
            SamsModule(channels, heads, bins, slice_frames, kernel_size, activation, w_o_scope) for _ in range(depth)
        )
        self.mask = nn.Conv2d(channels, targets * audio_channels, kernel_size=1)
        self.mask_activation = nn.Sigmoid() if mask_activation == "sigmoid" else nn.ReLU()

    def forward(self, mag: torch.Tensor) -> torch.Tensor:
        B, C, Fq, T = mag.shape
        x = self.embedding(mag)  # (B, d, F, T)
        for block in self.blocks:
            if self.grad_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        masks = self.mask_activation(self.mask(x))  # (B, targets * C, F, T)
        return masks.view(B, self.targets, C, Fq, T)

    def context_frames(self) -> int:
        """Frames of context on each side that make a chunk's output exact, aligned to slices.

        Per module the receptive field grows by at most one slice (attention) plus two
        kernel halos (W^O, depthwise); the embedding adds one halo.
        """
        halo = self.kernel_size // 2
        frames = self.depth * (self.slice_frames + 2 * halo) + halo
        return math.ceil(frames / self.slice_frames) * self.slice_frames

    def separate(self, audio: torch.Tensor) -> torch.Tensor:
        """audio (B, C, N) -> estimates (B, targets, C, N): mask * mixture STFT, then ISTFT.

        The whole input at once; long tracks go through `engine.apply` in chunks of bounded memory.
        """
        spec = self.spectrogram(audio)  # (B, C, F, T) complex
        masks = self(spec.abs())  # (B, targets, C, F, T)
        estimates = masks.float() * spec.unsqueeze(1)  # mixture phase
        return self.spectrogram.inverse(estimates, audio.shape[-1])
