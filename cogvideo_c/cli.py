"""The `cogvideo-c` command.

cogvideo-c vae-decode [--model VAE_DIR] [--frames 13 --height 60 --width 90] [--tiling] [--slicing]
    decodes random latents (seeded) with the VAE at VAE_DIR, or with an embedded tiny random VAE when no model
    is given, and prints the time, the output shape and the peak memory.
cogvideo-c make-tiny-vae DIR
    writes that tiny VAE in diffusers layout.
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from . import memory
from .models import AutoencoderKLCogVideoX
from .tiny import make_tiny_pipeline, make_tiny_vae


def _mib(n):
    return f"{n / 2**20:.1f} MiB"


def vae_decode(args):
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model or make_tiny_vae(tmp)
        vae = AutoencoderKLCogVideoX.from_pretrained(folder, torch_dtype=args.dtype)
    if args.tiling:
        vae.enable_tiling()
    if args.slicing:
        vae.enable_slicing()
    latent = vae.config.latent_channels
    z = np.random.default_rng(args.seed).standard_normal(
        (args.batch, latent, args.frames, args.height, args.width), dtype=np.float32
    )
    memory.reset_peak_memory_stats()
    start = time.perf_counter()
    video = vae.decode(z).sample
    seconds = time.perf_counter() - start
    stats = memory.memory_stats()
    print(f"model: {args.model or 'embedded tiny random VAE'} ({_mib(vae.weight_bytes)} of weights)")
    print(f"decoded latents {tuple(z.shape)} -> video {tuple(video.shape)} in {seconds:.3f} s")
    print(
        f"peak memory: {_mib(stats['allocated_bytes.all.peak'])} "
        f"(activations {_mib(stats['activations_bytes.peak'])}, weights {_mib(stats['weights_bytes.peak'])})"
    )
    if args.output:
        np.save(args.output, video)
        print(f"wrote {args.output}")
    return 0


class _StageTimer:
    """Wall time and peak memory of each pipeline stage, measured around the components' calls."""

    def __init__(self):
        self.rows = []

    def measure(self, label, fn, *args, **kwargs):
        memory.reset_peak_memory_stats()
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.rows.append((label, time.perf_counter() - start, memory.memory_stats()["allocated_bytes.all.peak"]))
        return result

    def wrap(self, pipe, component, label):
        """Times every call of pipe.<component> (a model called like a function)."""
        timer, model = self, getattr(pipe, component)

        class Timed:
            def __call__(self, *args, **kwargs):
                return timer.measure(label, model, *args, **kwargs)

            def __getattr__(self, name):
                return getattr(model, name)

        setattr(pipe, component, Timed())

    def report(self):
        stages = {}
        for label, seconds, peak in self.rows:
            total, worst, calls = stages.get(label, (0.0, 0, 0))
            stages[label] = (total + seconds, max(worst, peak), calls + 1)
        for label, (seconds, peak, calls) in stages.items():
            print(f"  {label:<13} {seconds:8.2f} s  peak {_mib(peak):>12}  ({calls} call{'s' if calls > 1 else ''})")


def generate(args):
    from .pipeline import CogVideoXPipeline
    from .video import export_to_video

    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
        raise OSError(f"cannot write {args.output}: '{out_dir}' is not a writable folder")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model or make_tiny_pipeline(tmp)
        start = time.perf_counter()
        pipe = CogVideoXPipeline.from_pretrained(folder, torch_dtype=args.dtype)
        load_seconds = time.perf_counter() - start
    if args.tiling:
        pipe.vae.enable_tiling()
    if args.slicing:
        pipe.vae.enable_slicing()
    timer = _StageTimer()
    timer.wrap(pipe, "text_encoder", "text encoder")
    timer.wrap(pipe, "transformer", "transformer")
    vae_decode_fn = pipe.vae.decode
    pipe.vae.decode = lambda *a, **k: timer.measure("vae decode", vae_decode_fn, *a, **k)
    start = time.perf_counter()
    frames = pipe(
        prompt=args.prompt, negative_prompt=args.negative_prompt, height=args.height, width=args.width,
        num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
        use_dynamic_cfg=args.dynamic_cfg, generator=args.seed, output_type="np",
    ).frames[0]  # fmt: skip
    seconds = time.perf_counter() - start
    path = export_to_video(list(frames), args.output, fps=args.fps)
    name = args.model or "embedded tiny random pipeline"
    print(f"model: {name} (loaded in {load_seconds:.2f} s)")
    print(f"generated {frames.shape[0]} frames of {frames.shape[2]}x{frames.shape[1]} in {seconds:.2f} s -> {path}")
    timer.report()
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="cogvideo-c", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="text to video (embedded tiny pipeline when no --model)")
    gen.add_argument("--model", help="a CogVideoX pipeline folder in diffusers layout; default: embedded tiny one")
    gen.add_argument("--prompt", default="A panda, dressed in a small red jacket, plays a guitar in a bamboo forest.")
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--output", default="output.mp4")
    gen.add_argument("--steps", type=int, default=50, help="num_inference_steps")
    gen.add_argument("--guidance-scale", type=float, default=6.0)
    gen.add_argument("--dynamic-cfg", action="store_true", help="use_dynamic_cfg")
    gen.add_argument("--frames", type=int, default=None, help="num_frames (default: the model's sample_frames)")
    gen.add_argument("--height", type=int, default=None)
    gen.add_argument("--width", type=int, default=None)
    gen.add_argument("--fps", type=int, default=8)
    gen.add_argument("--seed", type=int, default=42)
    gen.add_argument("--dtype", default="float32", help="weight dtype: float32, float16, bfloat16")
    gen.add_argument("--tiling", action="store_true", help="pipe.vae.enable_tiling()")
    gen.add_argument("--slicing", action="store_true", help="pipe.vae.enable_slicing()")
    tiny_pipe = sub.add_parser("make-tiny", help="write the embedded tiny pipeline to a folder")
    tiny_pipe.add_argument("dir")
    dec = sub.add_parser("vae-decode", help="decode random latents with a CogVideoX VAE")
    dec.add_argument("--model", help="a VAE folder (config.json + safetensors); default: embedded tiny VAE")
    dec.add_argument("--dtype", default="float32", help="weight dtype: float32, float16, bfloat16")
    dec.add_argument("--batch", type=int, default=1)
    dec.add_argument("--frames", type=int, default=3, help="latent frames")
    dec.add_argument("--height", type=int, default=16, help="latent height")
    dec.add_argument("--width", type=int, default=24, help="latent width")
    dec.add_argument("--seed", type=int, default=0)
    dec.add_argument("--tiling", action="store_true", help="vae.enable_tiling()")
    dec.add_argument("--slicing", action="store_true", help="vae.enable_slicing()")
    dec.add_argument("--output", help="save the decoded video as .npy")
    tiny = sub.add_parser("make-tiny-vae", help="write the embedded tiny VAE to a folder")
    tiny.add_argument("dir")
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            return generate(args)
        if args.command == "vae-decode":
            return vae_decode(args)
        if args.command == "make-tiny":
            print(f"wrote {make_tiny_pipeline(args.dir)}")
            return 0
        print(f"wrote {make_tiny_vae(args.dir)}")
        return 0
    except (ValueError, OSError, MemoryError) as err:
        print(f"cogvideo-c: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
