"""The `cogvideo-c` command: CogVideoX on the CPU with cogvideo_c, no torch needed.

commands:
  generate       text to video (with --image, image to video; with --video, video to video) with a CogVideoX pipeline
                 folder (diffusers layout), or with the embedded tiny random pipeline when no --model is given;
                 writes an MP4 (.mp4/.m4v/.mov/.mkv/.avi) or a GIF (.gif) and prints the time and peak memory of
                 each stage. The output path, container and fps (and --image / --video) are checked before the
                 model loads.
  make-tiny      writes the embedded tiny random pipeline to a folder (diffusers layout).
  vae-decode     decodes seeded random latents with a VAE folder (or the embedded tiny random VAE) and prints the
                 time, the output shape and the peak memory; --output saves the video as .npy.
  make-tiny-vae  writes the embedded tiny random VAE to a folder (diffusers layout).

Run `cogvideo-c COMMAND --help` for a command's options. Errors (bad values, missing files, memory budgets) exit
with status 2 and a one-line message. Threads: OMP_NUM_THREADS=N (OpenMP waits passively unless OMP_WAIT_POLICY or
GOMP_SPINCOUNT is set).
"""

import argparse
import math
import os
import sys
import tempfile
import time

import numpy as np

from . import __version__, memory
from ._dtypes import _ALIASES
from .models import AutoencoderKLCogVideoX
from .tiny import make_tiny_pipeline, make_tiny_vae
from .video import GIF_SUFFIXES, VIDEO_SUFFIXES, check_fps, check_output_path, export_to_gif, export_to_video

DTYPES = ("float32", "float16", "bfloat16")


def _dtype_name(text):
    """--dtype's value with the aliases torch_dtype takes (fp16, bf16, half, ...) mapped to the three names."""
    return _ALIASES.get(text.lower(), text)


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


def _check_output(path, fps):
    """The export function for path's extension, after checking path and fps as it will (before any model loads)."""
    check_fps(fps)
    if os.path.splitext(path)[1].lower() in GIF_SUFFIXES:
        check_output_path(path, GIF_SUFFIXES)
        return export_to_gif
    check_output_path(path, VIDEO_SUFFIXES)
    return export_to_video


def _video_to_video(args):
    """--video / --strength: the call's video arguments, the video read before any model loads (so a missing or
    unreadable file stops the command first)."""
    from .pipeline_video2video import _check_strength
    from .utils import load_video

    if args.frames is not None:
        raise ValueError("--frames does not apply with --video: the video's frame count sets the output's length")
    strength = 0.8 if args.strength is None else args.strength
    _check_strength(strength, args.steps)
    return {"video": load_video(args.video), "strength": strength}


def generate(args):
    from .pipeline import CogVideoXPipeline
    from .pipeline_image2video import CogVideoXImageToVideoPipeline
    from .pipeline_video2video import CogVideoXVideoToVideoPipeline
    from .utils import load_image

    export = _check_output(args.output, args.fps)
    loras = [_lora_arg(v) for v in args.lora or ()]  # checked before any model loads
    if args.image is not None and args.video is not None:
        raise ValueError("--image (image to video) and --video (video to video): pass one of them")
    if args.strength is not None and args.video is None:
        raise ValueError("--strength goes with --video (video-to-video)")
    # --image: image-to-video; the image is read (and a bad path refused) before any model loads
    image = load_image(args.image) if args.image is not None else None
    conditioning = {} if image is None else {"image": image}
    pipeline_class = CogVideoXPipeline if image is None else CogVideoXImageToVideoPipeline
    if args.video is not None:
        conditioning, pipeline_class = _video_to_video(args), CogVideoXVideoToVideoPipeline
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model or make_tiny_pipeline(tmp, image_to_video=image is not None)
        start = time.perf_counter()
        pipe = pipeline_class.from_pretrained(folder, torch_dtype=args.dtype)
        load_seconds = time.perf_counter() - start
    if loras:
        names = [f"lora_{i}" for i in range(len(loras))]
        for name, (path, _) in zip(names, loras):
            pipe.load_lora_weights(path, adapter_name=name)
        pipe.set_adapters(names, [scale for _, scale in loras])
    if args.tiling:
        pipe.vae.enable_tiling()
    if args.slicing:
        pipe.vae.enable_slicing()
    _apply_offload(pipe, args)
    start = time.perf_counter()
    frame_args = {} if args.video is not None else {"num_frames": args.frames}  # a video sets its own length
    frames = pipe(
        **conditioning, **frame_args, prompt=args.prompt, negative_prompt=args.negative_prompt, height=args.height,
        width=args.width, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
        use_dynamic_cfg=args.dynamic_cfg, generator=args.seed, output_type="np",
    ).frames[0]  # fmt: skip
    seconds = time.perf_counter() - start
    path = export(list(frames), args.output, fps=args.fps)
    name = args.model or f"embedded tiny random {'image-to-video ' if image is not None else ''}pipeline"
    print(f"model: {name} (loaded in {load_seconds:.2f} s)")
    if args.video is not None:
        print(f"from {args.video} ({len(conditioning['video'])} frames) at strength {conditioning['strength']}: "
              f"{pipe.num_timesteps} of {args.steps} steps")  # fmt: skip
    print(f"generated {frames.shape[0]} frames of {frames.shape[2]}x{frames.shape[1]} in {seconds:.2f} s -> {path}")
    print(f"memory by stage (device {pipe._execution_device}, peak per stage):")
    print(pipe.memory_report())
    return 0


def _lora_arg(value):
    """--lora PATH[:SCALE] -> (path, scale): a LoRA file or folder and its set_adapters weight (default 1.0)."""
    path, scale = value, 1.0
    head, sep, tail = value.rpartition(":")
    if sep and head and not os.path.exists(value):
        try:
            path, scale = head, float(tail)
        except ValueError:
            raise ValueError(f"--lora {value!r}: SCALE after the last ':' must be a number") from None
    if not math.isfinite(scale):
        raise ValueError(f"--lora {value!r}: SCALE must be finite")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--lora {value!r}: no LoRA file or folder {path!r}")
    return path, scale


def _apply_offload(pipe, args):
    """--device / --offload / --max-memory as the Python calls a diffusers script makes."""
    if args.max_memory is not None and args.offload not in (None, "auto"):
        raise ValueError(f"--max-memory goes with --offload auto (or no --offload), not --offload {args.offload}")
    offload = args.offload or ("auto" if args.max_memory is not None else "none")
    device = args.device
    if offload != "none" and str(device).split(":")[0] == "cpu":
        print(f"note: --offload {offload} on the CPU changes nothing (every weight is already in host memory); "
              "--device emu runs it on the emulated accelerator", file=sys.stderr)  # fmt: skip
    if offload == "none":
        pipe.to(device)
    elif offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.enable_auto_offload(max_memory=args.max_memory or "6GB", device=device)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, and keeps the description's layout."""


def _parser():
    parser = argparse.ArgumentParser(prog="cogvideo-c", description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    kw = dict(formatter_class=_HelpFormatter)
    about = "text (or --image, or --video) to video (embedded tiny pipeline when no --model)"
    gen = sub.add_parser("generate", help=about, description=about, **kw)
    gen.add_argument(
        "--model", help="a CogVideoX pipeline folder in diffusers layout; when unset, the embedded tiny one"
    )
    gen.add_argument(
        "--prompt", default="A panda, dressed in a small red jacket, plays a guitar in a bamboo forest.", help="prompt"
    )
    gen.add_argument("--negative-prompt", default=None, help="negative_prompt; when unset, none")
    gen.add_argument(
        "--image",
        default=None,
        help="image-to-video: the first frame (an image file), with CogVideoXImageToVideoPipeline (the embedded "
        "tiny image-to-video pipeline when no --model); when unset, text to video",
    )
    gen.add_argument(
        "--video",
        default=None,
        help="video-to-video (CogVideoXVideoToVideoPipeline) from this video file (anything ffmpeg reads, or a GIF); "
        "its frame count sets the output's length",
    )
    gen.add_argument(
        "--strength", type=float, default=None, help="strength of --video's denoising, in (0, 1]; when unset, 0.8"
    )
    gen.add_argument(
        "--output",
        default="output.mp4",
        help=f"the file to write: {', '.join(VIDEO_SUFFIXES)} (H.264) or .gif; checked before the model loads",
    )
    gen.add_argument("--steps", type=int, default=50, help="num_inference_steps")
    gen.add_argument("--guidance-scale", type=float, default=6.0, help="guidance_scale (classifier-free guidance)")
    gen.add_argument("--dynamic-cfg", action="store_true", help="use_dynamic_cfg")
    gen.add_argument("--frames", type=int, default=None, help="num_frames; when unset, the model's sample_frames")
    gen.add_argument("--height", type=int, default=None, help="video height in pixels; when unset, the model's")
    gen.add_argument("--width", type=int, default=None, help="video width in pixels; when unset, the model's")
    gen.add_argument("--fps", type=float, default=8, help="frames per second of the written file")
    gen.add_argument("--seed", type=int, default=42, help="generator seed")
    gen.add_argument(
        "--dtype",
        default="float32",
        type=_dtype_name,
        choices=DTYPES,
        help="weight dtype (torch_dtype; fp16, bf16, half are accepted too)",
    )
    gen.add_argument(
        "--lora",
        action="append",
        metavar="PATH[:SCALE]",
        help="a LoRA (.safetensors file or folder with pytorch_lora_weights.safetensors) loaded with "
        "load_lora_weights, SCALE its set_adapters weight (default 1.0); repeat to mix several",
    )
    gen.add_argument("--tiling", action="store_true", help="pipe.vae.enable_tiling()")
    gen.add_argument("--slicing", action="store_true", help="pipe.vae.enable_slicing()")
    gen.add_argument("--device", default="cpu", help="where the models compute: cpu, or emu (the emulated accelerator)")
    gen.add_argument(
        "--offload",
        choices=("none", "model", "sequential", "auto"),
        default=None,
        help="pipe.to(device) / enable_model_cpu_offload / enable_sequential_cpu_offload / enable_auto_offload "
        "(default: none, or auto with --max-memory)",
    )
    gen.add_argument("--max-memory", default=None, help="the device budget for --offload auto, e.g. 6GB or 512MiB")
    about = "write the embedded tiny pipeline to a folder"
    tiny_pipe = sub.add_parser("make-tiny", help=about, description=about, **kw)
    tiny_pipe.add_argument("dir", help="the folder to create (diffusers layout)")
    about = "decode seeded random latents with a CogVideoX VAE"
    dec = sub.add_parser("vae-decode", help=about, description=about, **kw)
    dec.add_argument("--model", help="a VAE folder (config.json + safetensors); when unset, the embedded tiny VAE")
    dec.add_argument(
        "--dtype",
        default="float32",
        type=_dtype_name,
        choices=DTYPES,
        help="weight dtype (torch_dtype; fp16, bf16, half are accepted too)",
    )
    dec.add_argument("--batch", type=int, default=1, help="batch size")
    dec.add_argument("--frames", type=int, default=3, help="latent frames")
    dec.add_argument("--height", type=int, default=16, help="latent height")
    dec.add_argument("--width", type=int, default=24, help="latent width")
    dec.add_argument("--seed", type=int, default=0, help="seed of the random latents")
    dec.add_argument("--tiling", action="store_true", help="vae.enable_tiling()")
    dec.add_argument("--slicing", action="store_true", help="vae.enable_slicing()")
    dec.add_argument("--output", help="save the decoded video as .npy; when unset, not saved")
    about = "write the embedded tiny VAE to a folder"
    tiny = sub.add_parser("make-tiny-vae", help=about, description=about, **kw)
    tiny.add_argument("dir", help="the folder to create (diffusers layout)")
    return parser


def main(argv=None):
    """Runs the `cogvideo-c` command with argv (default: sys.argv[1:]); returns the exit status."""
    parser = _parser()
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
        print(f"cogvideo-c: error: {' '.join(str(err).split())}", file=sys.stderr)  # one line
        return 2


if __name__ == "__main__":
    sys.exit(main())
