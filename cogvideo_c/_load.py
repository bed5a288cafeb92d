"""Loads the compiled core.

Three things happen before the extension loads, in this order:

- OpenMP's waiting policy. libgomp reads ``OMP_WAIT_POLICY`` / ``GOMP_SPINCOUNT`` once, when it is loaded (with
  ``_C``). Its default lets idle workers spin for about 300,000 iterations after each parallel region; on a machine
  whose cores other processes also use, those spinning workers take the time slices of the thread that has work,
  and a 2-thread run measured 3-4x slower than one thread (benchmarks/bench_threads.py). So when the user has set
  neither variable, ``OMP_WAIT_POLICY=PASSIVE`` is put in ``os.environ`` (idle workers sleep at once). To override:
  set ``OMP_WAIT_POLICY=ACTIVE`` (or ``GOMP_SPINCOUNT=N``) and/or ``OMP_NUM_THREADS=N`` before the first
  ``import cogvideo_c``; once libgomp is loaded in the process (by cogvideo_c or by another library), later changes
  to these variables have no effect.
- The BLAS: it lives in the scipy-openblas32 wheel; loading that library first (globally) lets the extension find
  it wherever pip put the wheel.
- A missing extension (a source checkout that was never built, or the checkout's folder shadowing an installed
  package) raises an ImportError that says how to build, instead of Python's "partially initialized module ...
  circular import".
"""

import ctypes
import importlib.machinery
import os

import scipy_openblas32

DEFAULT_OMP_WAIT_POLICY = "PASSIVE"
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = DEFAULT_OMP_WAIT_POLICY

_blas = os.path.join(scipy_openblas32.get_lib_dir(), f"lib{scipy_openblas32.get_library()}.so")
if os.path.exists(_blas):
    ctypes.CDLL(_blas, mode=ctypes.RTLD_GLOBAL)


_package_dir = os.path.dirname(os.path.abspath(__file__))
if not any(os.path.exists(os.path.join(_package_dir, "_C" + s)) for s in importlib.machinery.EXTENSION_SUFFIXES):
    raise ImportError(
        f"cogvideo_c's compiled core (_C) is not built in {_package_dir} for this Python: this looks like a source "
        "checkout that was never built. Build it with `pip install .` (or `pip install -e .` to work on the "
        "sources), or, if cogvideo_c is already installed, run Python from another folder so that this checkout "
        "does not shadow it."
    )

from . import _C  # noqa: E402

__all__ = ["_C"]
