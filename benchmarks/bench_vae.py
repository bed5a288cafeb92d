#!/usr/bin/env python3
"""Side-by-side CPU benchmark of the CogVideoX VAE decoder: diffusers (PyTorch) vs cogvideo_c.

    /tmp/cvx-reference/bin/python benchmarks/bench_vae.py [--frames 3 --height 16 --width 24] [--threads N]
        [--repeat N] [--model-dir DIR] [--cvx-python PY] [--check-only-reference]

The model is the real CogVideoX VAE architecture (diffusers' default AutoencoderKLCogVideoX config: block_out_channels
(128, 256, 256, 512), layers_per_block 3, 32 groups, 16 latent channels; 215.6 M parameters) with seeded random
weights, built by diffusers and saved with save_pretrained (safetensors, float32 by default: ~862 MB). Without
--model-dir it goes to a temporary directory that is deleted afterwards; with --model-dir it is cached there (and
reused if the recorded settings match).

Each implementation runs in its own subprocess so its peak RSS is clean; this parent process only uses the standard
library and numpy (it never imports torch, so the children do not inherit a large address space).
  * reference: `python` running this script (needs torch + diffusers); torch.set_num_threads(threads), fp32, no_grad.
  * cogvideo_c: `--cvx-python` (default: this interpreter) with OMP_NUM_THREADS=threads; it needs numpy + cogvideo_c.
Timing: the median of --repeat decodes (with --repeat > 1, one untimed warm-up decode precedes them; --warmup
overrides). Memory: peak RSS = ru_maxrss of the child at the end (whole process: interpreter, libraries, weights,
activations). Peak tensor memory: for cogvideo_c, memory_stats("cpu")["allocated_bytes.all.peak"] (weights +
activations); for torch, which has no CPU allocator statistics, the parameter bytes plus the peak RSS growth during
the decodes (the RSS high-water mark is reset via /proc/self/clear_refs just before decoding, where possible).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _bench_common import (
    add_run_args,
    add_timing_args,
    ensure_model_dir,
    fmt_mib,
    import_cogvideo_c,
    parse_args,
    print_runs,
    print_table,
    rss_bytes,
    rss_growth,
    run_children,
    save_output,
    timed_calls,
    write_json,
)

HERE = Path(__file__).resolve()
LATENT_CHANNELS = 16
META_NAME = "bench_vae_meta.json"


# ----------------------------------------------------------------------------------------------------------------
# children
# ----------------------------------------------------------------------------------------------------------------


def child_make_model(args) -> None:
    import math

    import diffusers
    import torch
    from diffusers import AutoencoderKLCogVideoX

    diffusers.utils.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    vae = AutoencoderKLCogVideoX().eval()  # the default config is the released architecture
    g = torch.Generator().manual_seed(args.seed + 1)
    with torch.no_grad():
        # moderate random weights (outputs O(1), not saturated): conv N(0, 1/fan_in), bias N(0, 0.1^2),
        # GroupNorm weight 1 + N(0, 0.1^2), SpatialNorm conv_y bias 1 + N(0, 0.1^2)
        for name, mod in vae.named_modules():
            if isinstance(mod, torch.nn.GroupNorm):
                mod.weight.copy_(1.0 + 0.1 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
            elif isinstance(mod, (torch.nn.Conv2d, torch.nn.Conv3d)):
                fan_in = mod.weight[0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) / math.sqrt(fan_in))
                b = 0.1 * torch.randn(mod.bias.shape, generator=g)
                mod.bias.copy_(b + 1.0 if name.endswith("conv_y.conv") else b)
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.weights_dtype]
    vae.to(dtype).save_pretrained(args.model_dir, safe_serialization=True)
    n = sum(p.numel() for p in vae.parameters())
    print(f"[make-model] saved {n:,} parameters ({args.weights_dtype}) to {args.model_dir}", flush=True)


def child_bench(args) -> None:
    res: dict = {"impl": args.child, "threads": args.threads, "pid": os.getpid()}
    z = np.load(args.input)
    res["rss_start"] = rss_bytes()
    t0 = time.perf_counter()
    if args.child == "reference":
        import diffusers
        import torch
        from diffusers import AutoencoderKLCogVideoX

        torch.set_num_threads(args.threads)
        torch.set_grad_enabled(False)
        vae = AutoencoderKLCogVideoX.from_pretrained(args.model_dir, torch_dtype=torch.float32).eval()
        res["weights_bytes"] = sum(p.numel() * p.element_size() for p in vae.parameters())
        # from_pretrained may leave parameters backed by the memory-mapped safetensors file, paged in lazily on
        # first use; touch the decoder's parameters now (those a decode reads anyway) so that those page faults are
        # not counted as decode memory. The encoder's stay untouched, as in a decode-only run.
        res["rss_before_touch"] = rss_bytes()
        for p in vae.decoder.parameters():
            p.sum()
        res["version"] = f"torch {torch.__version__}, diffusers {diffusers.__version__}"
        res["torch_threads"] = torch.get_num_threads()

        def decode(x):
            with torch.no_grad():
                return vae.decode(torch.from_numpy(x)).sample.numpy()

    else:
        cogvideo_c = import_cogvideo_c(res)
        vae = cogvideo_c.AutoencoderKLCogVideoX.from_pretrained(args.model_dir, torch_dtype="float32")
        res["version"] = f"cogvideo_c {getattr(cogvideo_c, '__version__', '?')}"
        res["memory_stats_after_load"] = dict(cogvideo_c.memory_stats("cpu"))

        def decode(x):
            return np.asarray(vae.decode(x).sample)

    res["load_s"] = time.perf_counter() - t0
    out = timed_calls(res, lambda: decode(z), args.repeat, args.warmup, "decode")
    if args.child == "cvx":
        stats = dict(cogvideo_c.memory_stats("cpu"))
        res["memory_stats"] = stats
        res["peak_tensor_bytes"] = stats["allocated_bytes.all.peak"]
    res["decode_rss_growth"] = rss_growth(res, "decode")
    if args.child == "reference":
        res["peak_tensor_bytes"] = res["weights_bytes"] + res["decode_rss_growth"]
    save_output(res, out, args.output, args.result)


# ----------------------------------------------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------------------------------------------


def _child_cmd(python: str, args, mode: str, extra: list[str]) -> list[str]:
    cmd = [python, str(HERE), "--child", mode, "--model-dir", str(args.model_dir), "--threads", str(args.threads)]
    cmd += ["--seed", str(args.seed), "--weights-dtype", args.weights_dtype]
    return cmd + extra


def ensure_model(args) -> None:
    meta = {
        "config": "diffusers AutoencoderKLCogVideoX() defaults",
        "seed": args.seed,
        "weights_dtype": args.weights_dtype,
        "init": "conv N(0,1/fan_in); bias N(0,0.01); GN 1+N(0,0.01)",
    }
    build_cmd = _child_cmd(sys.executable, args, "make-model", [])
    ensure_model_dir(Path(args.model_dir), META_NAME, meta, build_cmd, args.threads)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=3, help="latent frames (default 3 -> 9 video frames)")
    ap.add_argument("--height", type=int, default=16, help="latent height (default 16 -> 128 px)")
    ap.add_argument("--width", type=int, default=24, help="latent width (default 24 -> 192 px)")
    add_timing_args(ap, "decodes", "cache directory for the random-weight model")
    ap.add_argument(
        "--weights-dtype",
        default="float32",
        choices=["float32", "float16", "bfloat16"],
        help="dtype of the saved weight file (both sides load it as float32)",
    )
    add_run_args(ap)
    args = parse_args(ap)

    if args.child == "make-model":
        child_make_model(args)
        return 0
    if args.child in ("reference", "cvx"):
        child_bench(args)
        return 0

    work = Path(tempfile.mkdtemp(prefix="bench_vae_"))
    temp_model = args.model_dir is None
    if temp_model:
        args.model_dir = str(work / "model")
    try:
        ensure_model(args)
        rng = np.random.default_rng(args.seed)
        z = rng.standard_normal((1, LATENT_CHANNELS, args.frames, args.height, args.width)).astype(np.float32)
        np.save(work / "z.npy", z)
        results = run_children(
            args, work, "", work / "z.npy", lambda py, mode, extra: _child_cmd(py, args, mode, extra)
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    out_shape = results["reference"]["out_shape"]
    print()
    print(
        f"CogVideoX VAE decode, latent [1, 16, {args.frames}, {args.height}, {args.width}] -> video {out_shape}, "
        f"fp32, CPU, {args.threads} threads, median of {args.repeat} (warm-up {args.warmup})"
    )
    print_table(results)
    rr = results["reference"]
    print(
        f"* torch: parameter bytes {fmt_mib(rr['weights_bytes'])} MiB + peak RSS growth during decode "
        f"{fmt_mib(rr['decode_rss_growth'])} MiB (torch has no CPU allocator statistics)."
    )
    if "cvx" in results:
        rc = results["cvx"]
        after = rc.get("memory_stats_after_load", {}).get("allocated_bytes.all.current")
        print(
            f"  cogvideo_c: allocated_bytes.all.peak (after load: {fmt_mib(after)} MiB allocated); "
            f"peak RSS growth during decode {fmt_mib(rc['decode_rss_growth'])} MiB."
        )
    print_runs(results, "decode")
    if args.json:
        write_json(args.json, args, results)
    if temp_model:
        print(f"(temporary model directory removed; pass --model-dir to cache the {args.weights_dtype} weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
