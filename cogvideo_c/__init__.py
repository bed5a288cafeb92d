"""cogvideo_c: CogVideoX in C and CUDA behind diffusers' Python API."""

from . import tiny
from ._load import _C
from .memory import (
    OutOfMemoryError,
    max_memory_allocated,
    memory_allocated,
    memory_stats,
    reset_peak_memory_stats,
    set_memory_limit,
)
from .models import AutoencoderKLCogVideoX, AutoencoderKLOutput, DecoderOutput, DiagonalGaussianDistribution
from .pipeline import CogVideoXPipeline, CogVideoXPipelineOutput, DiffusionPipeline
from .schedulers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler, DDIMScheduler, DDIMSchedulerOutput
from .t5 import T5EncoderModel
from .tokenizer import AutoTokenizer, T5Tokenizer, T5TokenizerFast
from .transformer import CogVideoXTransformer3DModel, Transformer2DModelOutput
from .utils import load_image, load_video
from .video import export_to_gif, export_to_video

__version__ = "0.1.0"


def build_info():
    """What was compiled: backends, BLAS, OpenMP threads, compiler."""
    return _C.build_info()


def cuda_is_available():
    """True when the CUDA backend was compiled and a device can run it."""
    return _C.cuda_device_count() > 0


__all__ = [
    "CogVideoXPipeline",
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
    "max_memory_allocated",
    "memory_allocated",
    "memory_stats",
    "reset_peak_memory_stats",
    "set_memory_limit",
]
