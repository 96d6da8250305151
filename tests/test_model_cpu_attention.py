"""The fused CPU attention kernel (model/cpu_attention.py + sliced_attention.c): how it is built,
what it does without a gradient, with several threads and in a whole model, and its fallback.

Its numbers against the definition are in test_model_attention.py (every kernel is checked there).
"""

import hashlib
import math
import os
import subprocess
import sys

import pytest
import torch
from test_model_attention import REL_TOL, outputs_and_grads, rel_err

from samsnet_search.model import SamsNet, SlicedMultiHeadAttention, cpu_attention
from samsnet_search.model.sams_net import kernel_for

needs_kernel = pytest.mark.skipif(
    not cpu_attention.supported(torch.zeros(1)), reason="no C compiler here: the fused kernel cannot be built"
)


def pair(channels=4, heads=2, L=7):
    """A fused module and a batched-matmul module with the same weights."""
    fused = SlicedMultiHeadAttention(channels, heads, L, kernel="fused")
    bmm = SlicedMultiHeadAttention(channels, heads, L, kernel="bmm")
    bmm.load_state_dict(fused.state_dict())
    return fused, bmm


@needs_kernel
@pytest.mark.parametrize("bins", [1, 31, 32, 33, 257])  # within, at and past one block of bins
def test_every_block_of_bins_is_exact(bins):
    torch.manual_seed(bins)
    fused, bmm = pair()
    x = torch.randn(2, 4, bins, 23)
    grad_out = torch.randn(2, 8, bins, 23)
    for a, b in zip(outputs_and_grads(fused, fused, x, grad_out), outputs_and_grads(bmm, bmm, x, grad_out)):
        assert rel_err(a, b) < REL_TOL


@needs_kernel
def test_without_gradient_nothing_is_kept_and_the_output_is_the_same():
    torch.manual_seed(0)
    fused, _ = pair()
    x = torch.randn(1, 4, 40, 30)
    with torch.no_grad():
        plain = fused(x)
    assert rel_err(plain, fused(x.requires_grad_())) < REL_TOL
    free = list(cpu_attention.BUFFERS.free)
    with torch.no_grad():
        fused(x)
    assert cpu_attention.BUFFERS.free == free  # no probability buffer taken: none was needed


@needs_kernel
def test_several_threads_give_the_single_thread_result():
    torch.manual_seed(0)
    fused, _ = pair(L=5)
    x = torch.randn(3, 4, 40, 17)
    grad_out = torch.randn(3, 8, 40, 17)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = outputs_and_grads(fused, fused, x, grad_out)
        torch.set_num_threads(3)  # more workers than this machine's cores: still each item once
        three = outputs_and_grads(fused, fused, x, grad_out)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], three[0]) and torch.equal(one[1], three[1])  # output, grad x: each item once
    for a, b in zip(one[2:], three[2:]):  # weight and bias gradients: per-worker partial sums, added
        assert rel_err(a, b) < 1e-6


@needs_kernel
def test_a_whole_model_trains_alike_with_either_kernel():
    """Depth 2: two modules' buffers in flight at once (the pool hands each its own)."""
    torch.manual_seed(0)
    net = SamsNet(slice_frames=6, n_fft=64, hop_length=32, channels=4, heads=2, depth=2)
    mag = torch.rand(2, 2, 33, 20)
    grads = {}
    for kernel in ("fused", "bmm"):
        for block in net.blocks:
            block.attention.kernel = kernel
        net.zero_grad(set_to_none=True)
        for _ in range(2):  # the second step reuses the first one's buffers
            out = net(mag)
            out.square().mean().backward()
        grads[kernel] = [out.detach()] + [p.grad.clone() for p in net.parameters()]
    for a, b in zip(grads["fused"], grads["bmm"]):
        assert rel_err(a, b) < REL_TOL


def test_without_a_compiler_the_model_falls_back_to_batched_matmuls(tmp_path):
    """No C compiler (CC names none): one warning, `kernel_for` picks bmm, results unchanged."""
    code = (
        "import torch; from samsnet_search.model import SlicedMultiHeadAttention, cpu_attention;"
        "from samsnet_search.model.sams_net import kernel_for;"
        "x = torch.randn(1, 4, 9, 13);"
        "print(cpu_attention.supported(x), kernel_for(x, 5), SlicedMultiHeadAttention(4, 2, 5)(x).shape)"
    )
    env = {"PATH": "/usr/bin:/bin", "CC": str(tmp_path / "no-such-cc"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:2] == ["False", "bmm"]
    assert "fused CPU attention unavailable" in done.stderr and "using batched matmuls" in done.stderr


def test_forcing_the_fused_kernel_where_it_cannot_run_is_named():
    att = SlicedMultiHeadAttention(4, 2, 5, kernel="fused")
    with pytest.raises(ValueError, match="kernel 'fused' needs float32 CPU input"):
        att(torch.randn(1, 4, 3, 13, dtype=torch.float64))


@needs_kernel
def test_a_damaged_cached_library_is_built_again(tmp_path, monkeypatch):
    """Garbage in the kernel cache (a truncated copy, another machine's file) is rebuilt, not fatal.
    (Rebuilt beside it and renamed over it: a process that has the old file loaded keeps it.)"""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cached = cpu_attention.library_path(os.environ.get("CC", "cc"))
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not a shared library")
    cpu_attention.library.cache_clear()
    try:
        assert cpu_attention.library() is not None
        assert cached.read_bytes()[:4] == b"\x7fELF"
    finally:
        monkeypatch.undo()
        cpu_attention.library.cache_clear()


PLANTED = """
#include <stdio.h>
__attribute__((constructor)) static void planted(void) { FILE *f = fopen(MARKER, "w"); if (f) fclose(f); }
"""


def _plant(lib, tmp_path) -> "os.PathLike":
    """Replace the cached `lib` by another valid library whose load writes a marker file."""
    marker = tmp_path / "planted-code-ran"
    src = tmp_path / "planted.c"
    src.write_text(f'#define MARKER "{marker}"\n' + PLANTED)
    subprocess.run([os.environ.get("CC", "cc"), "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return marker


@pytest.fixture
def kernel_cache(tmp_path, monkeypatch, caplog):
    """An empty kernel cache of this test's own; `library()` forgets what it loaded before and after."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cpu_attention.library.cache_clear()
    caplog.set_level("WARNING", logger=cpu_attention.__name__)
    yield cpu_attention.library_path(os.environ.get("CC", "cc"))
    monkeypatch.undo()
    cpu_attention.library.cache_clear()


@needs_kernel
def test_the_cache_folder_is_private_and_the_library_records_its_hash(kernel_cache):
    assert cpu_attention.library() is not None
    assert kernel_cache.parent.stat().st_mode & 0o777 == 0o700
    digest = cpu_attention.digest_path(kernel_cache).read_text().strip()
    assert digest == hashlib.sha256(kernel_cache.read_bytes()).hexdigest()


@needs_kernel
def test_a_tampered_cached_library_is_rebuilt_not_loaded(kernel_cache, tmp_path, caplog):
    assert cpu_attention.library() is not None
    marker = _plant(kernel_cache, tmp_path)  # the recorded hash is the real library's
    cpu_attention.library.cache_clear()
    assert cpu_attention.library() is not None and not marker.exists()
    assert (
        cpu_attention.digest_path(kernel_cache).read_text().strip()
        == hashlib.sha256(kernel_cache.read_bytes()).hexdigest()
    )
    assert [r.getMessage() for r in caplog.records if "content hash differs" in r.getMessage()]


@needs_kernel
def test_a_cache_folder_others_could_write_is_made_private_and_not_trusted(kernel_cache, tmp_path, caplog):
    """Whoever could write the folder could write the hash record too: its contents are rebuilt."""
    assert cpu_attention.library() is not None
    kernel_cache.parent.chmod(0o777)
    marker = _plant(kernel_cache, tmp_path)
    cpu_attention.digest_path(kernel_cache).write_text(hashlib.sha256(kernel_cache.read_bytes()).hexdigest())
    cpu_attention.library.cache_clear()
    assert cpu_attention.library() is not None and not marker.exists()
    assert kernel_cache.parent.stat().st_mode & 0o777 == 0o700
    assert [r.getMessage() for r in caplog.records if "open to group/others" in r.getMessage()]


def test_the_kernel_is_chosen_per_input():
    x = torch.zeros(1, 4, 3, 13)
    want = "fused" if cpu_attention.supported(x) else "bmm"
    assert kernel_for(x, math.ceil(13 / 2)) == want
