"""Builds cogvideo_c._C: the C11 core (always) and the CUDA backend (when a CUDA toolkit is found).

GEMMs go to the scipy-openblas32 wheel (the OpenBLAS NumPy itself builds against), so a fresh machine needs only
Python and a C compiler: everything else comes through pip. OpenMP comes with the compiler.
"""

import glob
import os
import shutil
import subprocess
import sys
import sysconfig

import numpy
import scipy_openblas32
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
C_DIRS = ["core", "mem", "io", "ops/cpu", "models", "python"]


def find_cuda():
    """The CUDA toolkit root, or None: CUDA_HOME / CUDA_PATH, then nvcc on PATH, then /usr/local/cuda."""
    if os.environ.get("CVX_DISABLE_CUDA"):
        return None
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if root and os.path.exists(os.path.join(root, "bin", "nvcc")):
            return root
    nvcc = shutil.which("nvcc")
    if nvcc:
        return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    return None


# The GPUs users have: A100 (80), A10/3090 (86), L4/4090 (89), H100/H200 (90), and PTX of 90 for newer cards.
# CVX_CUDA_ARCHS="90" (a comma-separated list) narrows the build, e.g. for a quick build on one known GPU.
DEFAULT_CUDA_ARCHS = "80,86,89,90"


def cuda_gencode():
    archs = [a.strip() for a in os.environ.get("CVX_CUDA_ARCHS", DEFAULT_CUDA_ARCHS).split(",") if a.strip()]
    if not archs or not all(a.isdigit() and int(a) >= 80 for a in archs):
        raise SystemExit(f"CVX_CUDA_ARCHS={os.environ.get('CVX_CUDA_ARCHS')!r}: expected numbers >= 80, like 80,90")
    flags = []
    for a in archs:
        flags += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    top = max(archs, key=int)
    flags += ["-gencode", f"arch=compute_{top},code=compute_{top}"]  # PTX: the driver compiles it for newer GPUs
    return archs, flags


class BuildExt(build_ext):
    """Compiles csrc/ops/cuda/*.cu with nvcc when CUDA is found; otherwise says so and builds the CPU backend."""

    def build_extension(self, ext):
        cuda = find_cuda()
        cu_files = sorted(glob.glob(os.path.join("csrc", "ops", "cuda", "*.cu")))
        if os.environ.get("CVX_CUDA_EMULATE") and cu_files:
            build_emulated_cuda(self, ext, cu_files)
        elif cuda and cu_files:
            archs, gencode = cuda_gencode()
            objects = []
            out_dir = os.path.join(self.build_temp, "cuda")
            os.makedirs(out_dir, exist_ok=True)
            # Accurate math (no --use_fast_math): exp/sin/cos as PyTorch computes them.
            # --threads: the architectures of one file compile in parallel
            threads = str(min(len(gencode) // 2, os.cpu_count() or 1))
            nvcc_flags = ["-std=c++17", "-O3", "-Xcompiler", "-fPIC", "-DCVX_WITH_CUDA=1", "--threads", threads]
            nvcc_flags += gencode
            try:
                for src in cu_files:
                    obj = os.path.join(out_dir, os.path.basename(src) + ".o")
                    if not self.force and os.path.exists(obj) and newer_than_all(obj, [src, *cuda_headers()]):
                        objects.append(obj)
                        continue
                    subprocess.check_call([os.path.join(cuda, "bin", "nvcc"), "-c", src, "-o", obj, *nvcc_flags])
                    objects.append(obj)
                lib64 = os.path.join(cuda, "lib64")
                ext.extra_objects += objects
                ext.sources += [os.path.join("csrc", "ops", "cuda", f) for f in ("table.c", "blas_loader.c")]
                ext.define_macros += [("CVX_WITH_CUDA", "1"), ("CVX_CUDA_LIB_DIR", '"' + lib64 + '"')]
                ext.include_dirs.append(os.path.join(cuda, "include"))
                ext.library_dirs.append(lib64)
                # cuBLAS(Lt) are not linked: blas_loader.c loads them when the CUDA backend first starts (mapping
                # libcublasLt at import would make ~150 MiB resident in every process, GPU or not)
                ext.libraries += ["cudart", "dl", "stdc++"]
                ext.extra_link_args.append("-Wl,-rpath," + lib64)
                archs_text = ", ".join("sm_" + a for a in archs)
                print(f"cogvideo_c: CUDA toolkit found at {cuda}: building the CUDA backend for {archs_text}")
            except (OSError, subprocess.CalledProcessError) as err:
                print(f"cogvideo_c: nvcc failed ({err}); building without the CUDA backend", file=sys.stderr)
        else:
            print("cogvideo_c: no CUDA toolkit found (CUDA_HOME, nvcc on PATH, /usr/local/cuda): CPU backend only")
        super().build_extension(ext)


def build_emulated_cuda(cmd, ext, cu_files):
    """CVX_CUDA_EMULATE=1: the .cu sources compiled as C++ against the CPU emulation of CUDA (csrc/ops/cuda/emu),
    so the CUDA backend runs where no GPU is; build_info() reports cuda_emulated."""
    emu = os.path.join("csrc", "ops", "cuda", "emu")
    cxx = os.environ.get("CXX", "g++")
    out_dir = os.path.join(cmd.build_temp, "cuda-emu")
    os.makedirs(out_dir, exist_ok=True)
    flags = [
        "-std=c++17",
        "-O2",
        "-fPIC",
        "-pthread",
        "-ffp-contract=off",
        "-Wall",
        "-Wno-unused-parameter",
        "-Wno-unknown-pragmas",
    ]
    flags += ["-DCVX_CUDA_EMU", "-DCVX_WITH_CUDA=1", "-I" + os.path.join(emu, "include")]
    deps = cuda_headers() + glob.glob(os.path.join(emu, "*.h")) + glob.glob(os.path.join(emu, "include", "*.h"))
    for src in cu_files + sorted(glob.glob(os.path.join(emu, "*.cpp"))):
        obj = os.path.join(out_dir, os.path.basename(src) + ".o")
        if cmd.force or not os.path.exists(obj) or not newer_than_all(obj, [src, *deps]):
            subprocess.check_call([cxx, "-x", "c++", "-c", src, "-o", obj, *flags])
        ext.extra_objects.append(obj)
    ext.sources.append(os.path.join("csrc", "ops", "cuda", "table.c"))
    ext.define_macros += [("CVX_WITH_CUDA", "1"), ("CVX_CUDA_EMULATED", "1")]
    ext.libraries.append("stdc++")
    ext.extra_link_args.append("-pthread")
    print("cogvideo_c: CVX_CUDA_EMULATE: the CUDA backend compiled against the CPU emulation (no GPU used)")


def cuda_headers():
    return glob.glob(os.path.join("csrc", "**", "*.h"), recursive=True) + glob.glob(
        os.path.join("csrc", "ops", "cuda", "**", "*.cuh"), recursive=True
    )


def newer_than_all(target, deps):
    t = os.path.getmtime(target)
    return all(os.path.getmtime(d) <= t for d in deps)


sources = []
for d in C_DIRS:
    sources += sorted(glob.glob(os.path.join("csrc", d, "*.c")))

blas_lib = scipy_openblas32.get_lib_dir()
# -ffp-contract=off: no fused multiply-adds, so each product rounds as in PyTorch (parity). -fno-trapping-math and
# -fno-math-errno change no value; they let the compiler vectorise clamped polynomial loops and inline sqrtf.
cflags = [
    "-std=c11",
    "-O3",
    "-fopenmp",
    "-ffp-contract=off",
    "-fno-trapping-math",
    "-fno-math-errno",
    "-Wall",
    "-Wextra",
    "-Wno-unused-parameter",
]
if sysconfig.get_platform().startswith("linux"):
    cflags.append("-D_GNU_SOURCE")

ext = Extension(
    "cogvideo_c._C",
    sources=sources,
    include_dirs=[numpy.get_include(), scipy_openblas32.get_include_dir()],
    library_dirs=[blas_lib],
    libraries=[scipy_openblas32.get_library()],
    extra_compile_args=cflags,
    # The rpath finds the BLAS where it was at build time; cogvideo_c/__init__.py also preloads it from the
    # installed scipy-openblas32 wheel, which covers isolated builds whose build environment is gone.
    extra_link_args=["-fopenmp", "-Wl,-rpath," + blas_lib],
    define_macros=[("CVX_HAVE_OPENBLAS", "1")],
)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt})
