"""cogvideo_c: CogVideoX in C and CUDA behind diffusers' Python API."""

from . import tiny
from ._load import _C
from .memory import (
    OutOfMemoryError,
    empty_cache,
    max_memory_allocated,
    memory_allocated,
    memory_stats,
    reset_peak_memory_stats,
    set_memory_limit,
)
from .models import AutoencoderKLCogVideoX, AutoencoderKLOutput, DecoderOutput, DiagonalGaussianDistribution
from .pipeline import CogVideoXPipeline, CogVideoXPipelineOutput, DiffusionPipeline
from .pipeline_fun_control import CogVideoXFunControlPipeline
from .pipeline_image2video import CogVideoXImageToVideoPipeline
from .pipeline_video2video import CogVideoXVideoToVideoPipeline
from .schedulers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler, DDIMScheduler, DDIMSchedulerOutput
from .t5 import T5EncoderModel
from .tokenizer import AutoTokenizer, T5Tokenizer, T5TokenizerFast
from .transformer import CogVideoXTransformer3DModel, Transformer2DModelOutput
from .utils import load_image, load_video
from .video import export_to_gif, export_to_video

__version__ = "0.1.0"


def build_info():
    """What was compiled and what runs, as a dict.

    - ``devices``: the devices models and memory budgets can use now (``"cpu"``, ``"emu"`` (an emulated
      accelerator in host memory, for budgets and offload tests), and ``"cuda"`` only when ``cuda`` is True).
    - ``cuda``: True only when CUDA kernels are compiled *and* a CUDA device is present, i.e. ``to("cuda")`` works.
    - ``cuda_compiled``: the build found a CUDA toolkit and compiled the CUDA backend; ``cuda_kernels``: its kernels
      were compiled (for GPUs, or for the CPU emulation of one in a ``CVX_CUDA_EMULATE=1`` build);
      ``cuda_devices``: how many devices the CUDA runtime reports (0 without a CUDA build).
    - ``cpu``, ``blas``, ``openmp``, ``omp_max_threads``, ``compiler``: the CPU backend.
    """
    return _C.build_info()


def cuda_is_available():
    """True when CUDA kernels are compiled and a device can run them (``build_info()["cuda"]``)."""
    return bool(_C.build_info()["cuda"])


__all__ = [
    "CogVideoXPipeline",
    "CogVideoXImageToVideoPipeline",
    "CogVideoXVideoToVideoPipeline",
    "CogVideoXFunControlPipeline",
    "DiffusionPipeline",
    "CogVideoXPipelineOutput",
    "CogVideoXDDIMScheduler",
    "CogVideoXDPMScheduler",
    "DDIMScheduler",
    "DDIMSchedulerOutput",
    "AutoencoderKLCogVideoX",
    "CogVideoXTransformer3DModel",
    "Transformer2DModelOutput",
    "AutoencoderKLOutput",
    "DecoderOutput",
    "DiagonalGaussianDistribution",
    "OutOfMemoryError",
    "AutoTokenizer",
    "T5EncoderModel",
    "T5Tokenizer",
    "T5TokenizerFast",
    "export_to_gif",
    "export_to_video",
    "load_image",
    "load_video",
    "build_info",
    "tiny",
    "cuda_is_available",
    "empty_cache",
    "max_memory_allocated",
    "memory_allocated",
    "memory_stats",
    "reset_peak_memory_stats",
    "set_memory_limit",
]
