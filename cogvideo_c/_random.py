"""Gaussian noise from the generators a diffusers script passes: NumPy ones, or torch ones when torch is installed."""

import numpy as np


def _numpy_dtype_to_torch(dtype):
    import torch  # only reached when the caller passed a torch.Generator

    return {
        np.dtype(np.float16): torch.float16,
        np.dtype(np.float32): torch.float32,
        np.dtype(np.float64): torch.float64,
    }[np.dtype(dtype)]


def _is_torch_generator(g):
    return type(g).__module__.startswith("torch")


def draw_standard_normal(shape, dtype, generator):
    """N(0, 1) noise of `shape` in `dtype` from a numpy Generator (or any object with standard_normal) or a
    torch.Generator, which draws exactly as diffusers' randn_tensor does."""
    if _is_torch_generator(generator):
        import torch

        out = torch.randn(
            tuple(shape), generator=generator, device=generator.device, dtype=_numpy_dtype_to_torch(dtype)
        )
        return out.cpu().numpy()
    if isinstance(generator, np.random.Generator):
        return generator.standard_normal(tuple(shape), dtype=np.float32).astype(dtype, copy=False)
    if hasattr(generator, "standard_normal"):  # RandomState or any duck-typed stream
        return np.asarray(generator.standard_normal(tuple(shape))).astype(dtype, copy=False)
    raise TypeError(
        "generator must be None, an int seed, a numpy.random.Generator, a torch.Generator or a list of them, "
        f"not {type(generator).__name__}"
    )
