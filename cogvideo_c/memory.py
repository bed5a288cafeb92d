"""Memory statistics and budgets, named like torch.cuda's (memory_stats, max_memory_allocated, ...)."""

from ._load import _C

OutOfMemoryError = _C.OutOfMemoryError


def _device(device):
    name = str(device) if device is not None else "cpu"
    return "cuda" if name.startswith("cuda") else name


def memory_stats(device="cpu"):
    """Per-device statistics: allocated/reserved bytes (current and peak), weights vs activations, counts. On "cuda",
    reserved bytes are what the caching allocator holds from cudaMalloc (its cache included), and
    ``pinned_bytes.current`` the host bytes page-locked for copies to the device (weights copy from pageable memory,
    slower, where it is less than their host bytes)."""
    return _C.memory_stats(_device(device))


def memory_allocated(device="cpu"):
    """Bytes cogvideo_c holds on device now (weights and activations), as ``torch.cuda.memory_allocated``."""
    return memory_stats(device)["allocated_bytes.all.current"]


def max_memory_allocated(device="cpu"):
    """The peak of ``memory_allocated(device)`` since start or the last ``reset_peak_memory_stats``."""
    return memory_stats(device)["allocated_bytes.all.peak"]


def reset_peak_memory_stats(device="cpu"):
    """Starts the peak counters of ``memory_stats(device)`` (and ``max_memory_allocated``) again from now."""
    _C.reset_peak_memory_stats(_device(device))


def empty_cache():
    """Gives the unused memory that the CUDA caching allocator holds back to the driver, as
    ``torch.cuda.empty_cache``: it then counts as free in ``cudaMemGetInfo`` (nvidia-smi) and leaves
    ``memory_stats("cuda")["reserved_bytes.all.current"]``. A no-op before CUDA is used or in a build without it."""
    _C.empty_cache()


def set_memory_limit(device, nbytes):
    """Sets a memory budget: allocations past it raise ``OutOfMemoryError`` (before the work that needs them).

    Args:
        device (`str`): "cpu" or "cuda" (a "cuda:N" name counts as "cuda").
        nbytes (`int` or None): the budget in bytes, for weights and activations together; None or 0 removes it.
    """
    if nbytes is None:
        nbytes = 0
    nbytes = int(nbytes)
    if nbytes < 0:
        raise ValueError(f"memory limit must be >= 0 bytes, got {nbytes}")
    _C.set_memory_limit(_device(device), nbytes)
