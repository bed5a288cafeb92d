"""A CUDA-built extension does not map cuBLAS(Lt) until the CUDA backend starts: mapping libcublasLt makes about
150 MiB resident (measured: 189 MiB peak RSS after `import cogvideo_c` with cuBLAS linked, 39 MiB without), which
every CPU-only process paid. The loader itself (dlopen + every symbol) runs without a GPU, so it is tested here.

Outside truth: the process's own /proc/self/maps and peak RSS, read in a fresh interpreter."""

import json
import subprocess
import sys

import pytest

import cogvideo_c

build = cogvideo_c.build_info()
pytestmark = pytest.mark.skipif(
    not build["cuda_compiled"] or build["cuda_emulated"] or not sys.platform.startswith("linux"),
    reason="needs the CUDA backend built for GPUs (nvcc at install time) on Linux",
)

PROBE = r"""
import json
def mapped():
    return sorted({l.split()[-1].rsplit("/", 1)[-1] for l in open("/proc/self/maps") if "libcublas" in l})
import cogvideo_c, numpy as np
from cogvideo_c import tiny
import tempfile
with tempfile.TemporaryDirectory() as d:
    vae = cogvideo_c.AutoencoderKLCogVideoX.from_pretrained(tiny.make_tiny_vae(d))
    vae.decode(np.zeros((1, 4, 1, 4, 4), np.float32))  # the CPU backend at work
after_cpu_work = mapped()
# VmHWM, this image's own peak (ru_maxrss would carry the forking parent's over the exec)
peak_mib = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
cogvideo_c._C.cuda_blas_load()
cogvideo_c._C.cuda_blas_load()  # once per process: the second call is a no-op
print(json.dumps({"after_cpu_work": after_cpu_work, "peak_mib": peak_mib, "after_load": mapped()}))
"""


def test_cublas_is_mapped_only_when_loaded_and_the_loader_resolves_every_function(tmp_path):
    # from another folder: in the checkout root the sources (without a built _C) would shadow the installed package
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["after_cpu_work"] == [], f"cuBLAS mapped before the CUDA backend started: {got['after_cpu_work']}"
    # import + a tiny CPU decode; with cuBLAS linked this process peaked at ~190 MiB (libcublasLt alone ~150)
    assert got["peak_mib"] < 120, f"peak RSS {got['peak_mib']:.0f} MiB"
    assert any(name.startswith("libcublasLt.so.") for name in got["after_load"]), got["after_load"]
    assert any(name.startswith("libcublas.so.") for name in got["after_load"]), got["after_load"]
