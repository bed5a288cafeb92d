"""Loads the compiled core. The BLAS it links against lives in the scipy-openblas32 wheel; loading that library
first (globally) lets the extension find it wherever pip put the wheel."""

import ctypes
import os

import scipy_openblas32

_blas = os.path.join(scipy_openblas32.get_lib_dir(), f"lib{scipy_openblas32.get_library()}.so")
if os.path.exists(_blas):
    ctypes.CDLL(_blas, mode=ctypes.RTLD_GLOBAL)

from . import _C  # noqa: E402

__all__ = ["_C"]
