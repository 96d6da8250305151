"""Sliced attention on CPU with its Q/K/V projection, as one fused loop in C, vectorized across
frequency bins.

A token attends over the frames of its slice at its own bin, so the F bins of a slice are F
independent attentions of the same shape. Library routes (SDPA, batched matmuls) run them as
tens of thousands of tiny matrix products, with SIMD lanes idle at 4-64 maps and 6-87 frames,
and write q, k, v and the L x L scores to memory several times. `sliced_attention.c` runs every
step's innermost loop over a block of 32 contiguous bins, so the lanes are full whatever L and
d are, and keeps a block's projection, scores, softmax and values in cache: forward reads x
once and writes the output and the probabilities (kept for backward) once. The layouts are in
the C file.

The C file is compiled on first use with the system's C compiler (`$CC`, else `cc`;
`-O3 -march=native`) into a per-user cache keyed by the source and the CPU's flags, and called
through ctypes, which releases the GIL: work is split over torch's thread count with a thread
pool. (numba, used by metrics/bsseval.py, vectorized these loops poorly: 3-7 GFLOPS.)
Without a compiler the model falls back to the batched-matmul kernel (`supported` is False).

Loading a shared library runs its code, so the cache is guarded: its folder is made 0700 (one
found writable by group or others is made private again and its contents rebuilt; one owned by
another user is refused), and a library is loaded only when its sha256 matches the one written
beside it (`<lib>.sha256`) when it was built; otherwise it is built again, with one warning.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("sliced_attention.c")
BIN_BLOCK = 32  # bins per inner loop (2 AVX-512 vectors; 257 bins fill 9 blocks to 89%); `BLK` in the C file
_FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno", f"-DBLK={BIN_BLOCK}"]
_I64, _F32P, _F64P = ctypes.c_int64, ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_double)


def supported(x: torch.Tensor) -> bool:
    """Whether this kernel can run on `x` here: float32 on CPU, eager (not while torch.export
    or torch.compile traces: a ctypes call is opaque to them), and the C kernel is built."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or torch.compiler.is_compiling():
        return False
    return library() is not None


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "samsnet-search" / "kernels"


def _cpu_signature() -> str:
    """The CPU's instruction-set flags: a library built with -march=native runs only there."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return os.uname().machine


@functools.cache
def library() -> ctypes.CDLL | None:
    """The built kernel, or None (logged once) where it cannot be built or loaded here."""
    compiler = os.environ.get("CC", "cc")
    target = library_path(compiler)
    try:
        trusted = _private_folder(target.parent)
        built = _build(compiler, target, rebuild=not (trusted and _intact(target)))
        try:
            lib = ctypes.CDLL(str(built))
        except OSError:  # a foreign file with a matching hash (another CPU's): build it again, once
            lib = ctypes.CDLL(str(_build(compiler, target, rebuild=True)))
    except (OSError, subprocess.SubprocessError) as err:
        detail = (getattr(err, "stderr", b"") or b"").decode(errors="replace")[-500:]
        log.warning("fused CPU attention unavailable (%s %s); using batched matmuls", err, detail)
        return None
    shape = [ctypes.c_float] + [_I64] * 8  # scale, B, T, h, d, F, L, start, stop
    lib.samsnet_attention_forward.argtypes = [_F32P] * 5 + shape
    lib.samsnet_attention_backward.argtypes = [_F32P] * 7 + [_F64P] * 2 + shape
    return lib


def library_path(compiler: str) -> Path:
    """Where the kernel built by `compiler` for this CPU is cached."""
    key = hashlib.sha256("\0".join([SOURCE.read_text(), compiler, *_FLAGS, _cpu_signature()]).encode()).hexdigest()
    return cache_dir() / f"sliced_attention-{key[:16]}.so"


def digest_path(lib: Path) -> Path:
    """`<lib>.sha256`: the library's content hash, recorded when it was built."""
    return lib.with_name(lib.name + ".sha256")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _private_folder(folder: Path) -> bool:
    """Make `folder` (and the cache folders above it) 0700; whether its contents can be trusted.

    A folder another user owns is refused (OSError): anyone who can write there chooses the code
    this process runs. One of ours that group or others could write is made private again, but
    what is in it may have been planted, so it is not trusted (False: rebuilt)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.getuid():
        raise OSError(f"{folder}: kernel cache owned by uid {info.st_uid}, not this user; refusing to load from it")
    if info.st_mode & 0o077 == 0:
        return True
    log.warning(
        "%s: kernel cache was open to group/others (mode %o); made 0700, rebuilding", folder, info.st_mode & 0o777
    )
    folder.chmod(0o700)
    return False


def _intact(lib: Path) -> bool:
    """Whether `lib` is there with the content hash recorded at build (a missing record counts as
    a mismatch); one warning when it is there but differs."""
    if not lib.is_file():
        return False
    record = digest_path(lib)
    recorded = record.read_text().strip() if record.is_file() else None
    if recorded == _sha256(lib):
        return True
    log.warning("%s: content hash differs from %s recorded at build; rebuilding", lib, record.name)
    return False


def _build(compiler: str, target: Path, rebuild: bool) -> Path:
    """Compile SOURCE to `target` and record its hash beside it, unless it is there. Concurrent
    builds are safe (atomic renames; a reader between the two renames sees a mismatch and builds
    again)."""
    if target.is_file() and not rebuild:
        return target
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        cmd = [compiler, *_FLAGS, "-o", str(built), str(SOURCE)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        digest = digest_path(built)
        digest.write_text(_sha256(built) + "\n")
        os.replace(digest, digest_path(target))
        os.replace(built, target)
    return target


def _ptr(t: torch.Tensor | None, kind=_F32P):
    return None if t is None else ctypes.cast(t.data_ptr(), kind)


class FusedSlicedAttention(torch.autograd.Function):
    """x (B, T, d, F), weight (3 h d, d), bias (3 h d), float32 on CPU; slice length L, heads h,
    scale -> out (B, F, T, h, d): the heads' sliced attention of the projected x."""

    @staticmethod
    def forward(ctx, x, weight, bias, slice_frames: int, heads: int, scale: float) -> torch.Tensor:
        x, weight, bias = (t.detach().contiguous() for t in (x, weight, bias))
        B, T, d, Fq = x.shape
        L, h = slice_frames, heads
        i = (T + L - 1) // L
        out = torch.empty(B, Fq, T, h, d)
        # Without a backward (validation, separation) the probabilities are not kept.
        needs_grad = any(ctx.needs_input_grad[:3])
        probs = BUFFERS.take((B, i, h, -(-Fq // BIN_BLOCK), L, L, BIN_BLOCK)) if needs_grad else None
        tensors = [_ptr(x), _ptr(weight), _ptr(bias), _ptr(out), _ptr(probs)]
        dims = (B, T, h, d, Fq, L)
        _run(lambda bounds: library().samsnet_attention_forward(*tensors, scale, *dims, *bounds), B * i)
        ctx.save_for_backward(x, weight, bias, out, probs)
        ctx.slice_frames, ctx.heads, ctx.scale = L, h, scale
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight, bias, out, probs = ctx.saved_tensors
        B, T, d, Fq = x.shape
        grad_out = grad_out.contiguous()
        grad_x = torch.empty_like(x)
        dims = (B, T, ctx.heads, d, Fq, ctx.slice_frames)
        tensors = [_ptr(x), _ptr(weight), _ptr(bias), _ptr(out), _ptr(probs), _ptr(grad_out), _ptr(grad_x)]
        partials = []  # each worker sums its own weight and bias gradients (double), added here

        def part(bounds: tuple[int, int]) -> int:
            grad_w = torch.zeros(weight.shape, dtype=torch.float64)
            grad_b = torch.zeros(bias.shape, dtype=torch.float64)
            partials.append((grad_w, grad_b))
            sums = _ptr(grad_w, _F64P), _ptr(grad_b, _F64P)
            return library().samsnet_attention_backward(*tensors, *sums, ctx.scale, *dims, *bounds)

        _run(part, B * probs.shape[1])
        BUFFERS.give(probs)
        grad_w = sum(w for w, _ in partials).float()
        grad_b = sum(b for _, b in partials).float()
        return grad_x, grad_w, grad_b, None, None, None


def fused_attention(x, weight, bias, slice_frames: int, heads: int, scale: float) -> torch.Tensor:
    """x (B, T, d, F) -> out (B, F, T, h, d); see `FusedSlicedAttention`."""
    return FusedSlicedAttention.apply(x, weight, bias, slice_frames, heads, scale)


def _run(call, items: int) -> None:
    """call((start, stop)) over (batch, slice) items [0, items), split over torch's thread count;
    call returns the kernel's status (non-zero: its scratch allocation failed)."""
    workers = max(1, min(torch.get_num_threads(), items))
    bounds = [(items * k // workers, items * (k + 1) // workers) for k in range(workers)]
    statuses = [call(bounds[0])] if workers == 1 else list(_pool().map(call, bounds))
    if any(statuses):
        raise MemoryError("fused CPU attention: scratch allocation failed")


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool() -> ThreadPoolExecutor:
    """One pool per torch thread count, kept: the kernel runs a few times per layer and step, and
    starting threads for each call would add a second, short-lived threading layer beside torch's."""
    threads = torch.get_num_threads()
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="samsnet-attention")
    return _POOLS[threads]


class _BufferPool:
    """Probability buffers handed back by backward for the next forward of the same shape.

    They are tens of MB per module and step; a fresh allocation is a fresh mmap whose page
    faults cost as much as the forward kernel itself. At most `keep` buffers are held."""

    def __init__(self, keep: int = 8):
        self.keep = keep
        self.free: list[torch.Tensor] = []

    def take(self, shape: tuple[int, ...]) -> torch.Tensor:
        for index, buffer in enumerate(self.free):
            if buffer.shape == shape:
                return self.free.pop(index)
        return torch.empty(shape)

    def give(self, buffer: torch.Tensor) -> None:
        self.free.append(buffer)
        del self.free[: -self.keep]


BUFFERS = _BufferPool()
