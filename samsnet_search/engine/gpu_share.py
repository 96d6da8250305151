"""A trial's share of its GPU: capped where it is fractional, and an out-of-memory error told
apart from the trial's other failures (it does not fit; retrying it would fail the same way)."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def cap_to_share(share: float, device: str) -> bool:
    """Limit this process's CUDA caching allocator to `share` of the current GPU when the trial
    was given a fraction of one (`resources.gpu` below 1), so that trials sharing a card cannot
    take each other's memory. Returns whether a cap was set (never on CPU: no CUDA context made)."""
    if device == "cpu" or not 0 < share < 1 or not torch.cuda.is_available():
        return False
    index = torch.cuda.current_device()
    torch.cuda.set_per_process_memory_fraction(share, index)
    log.info("CUDA memory capped to %.0f %% of cuda:%d (resources.gpu %g)", 100 * share, index, share)
    return True


def is_out_of_memory(error: BaseException) -> bool:
    """torch's CUDA out-of-memory error, or a RuntimeError saying so (cuDNN, cuBLAS and older
    torch raise those), anywhere in the error's chain of causes."""
    while error is not None:
        if isinstance(error, torch.OutOfMemoryError):
            return True
        if isinstance(error, RuntimeError) and "out of memory" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False
