"""Memory statistics and budgets, named like torch.cuda's (memory_stats, max_memory_allocated, ...)."""

from ._load import _C

OutOfMemoryError = _C.OutOfMemoryError


def _device(device):
    name = str(device) if device is not None else "cpu"
    return "cuda" if name.startswith("cuda") else name


def memory_stats(device="cpu"):
    """Per-device statistics: allocated/reserved bytes (current and peak), weights vs activations, counts."""
    return _C.memory_stats(_device(device))


def memory_allocated(device="cpu"):
    return memory_stats(device)["allocated_bytes.all.current"]


def max_memory_allocated(device="cpu"):
    return memory_stats(device)["allocated_bytes.all.peak"]


def reset_peak_memory_stats(device="cpu"):
    _C.reset_peak_memory_stats(_device(device))


def set_memory_limit(device, nbytes):
    """Allocations past `nbytes` on `device` raise OutOfMemoryError; None or 0 removes the limit."""
    if nbytes is None:
        nbytes = 0
    nbytes = int(nbytes)
    if nbytes < 0:
        raise ValueError(f"memory limit must be >= 0 bytes, got {nbytes}")
    _C.set_memory_limit(_device(device), nbytes)
