"""The `cogvideo-c` command.

cogvideo-c vae-decode [--model VAE_DIR] [--frames 13 --height 60 --width 90] [--tiling] [--slicing]
    decodes random latents (seeded) with the VAE at VAE_DIR, or with an embedded tiny random VAE when no model
    is given, and prints the time, the output shape and the peak memory.
cogvideo-c make-tiny-vae DIR
    writes that tiny VAE in diffusers layout.
"""

import argparse
import sys
import tempfile
import time

import numpy as np

from . import memory
from .models import AutoencoderKLCogVideoX
from .tiny import make_tiny_vae


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


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="cogvideo-c", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
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
        if args.command == "vae-decode":
            return vae_decode(args)
        print(f"wrote {make_tiny_vae(args.dir)}")
        return 0
    except (ValueError, OSError, MemoryError) as err:
        print(f"cogvideo-c: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
