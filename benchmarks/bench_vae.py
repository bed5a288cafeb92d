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
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
LATENT_CHANNELS = 16
META_NAME = "bench_vae_meta.json"
MIB = 2.0**20


# ----------------------------------------------------------------------------------------------------------------
# process memory helpers (Linux /proc; fall back to getrusage)
# ----------------------------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int | None:
    v = _status_kib("VmRSS")
    return None if v is None else v * 1024


def hwm_bytes() -> int | None:
    v = _status_kib("VmHWM")
    return None if v is None else v * 1024


def reset_rss_peak() -> bool:
    """Reset the RSS high-water mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # Linux reports KiB, macOS bytes


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


def _run_decodes(decode, z, repeat: int, warmup: int):
    for _ in range(warmup):
        decode(z)
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = decode(z)
        times.append(time.perf_counter() - t0)
    return out, times


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
        try:
            import cogvideo_c
        except ImportError:  # not installed: fall back to the source checkout this script belongs to
            sys.path.insert(0, str(HERE.parent.parent))
            import cogvideo_c

            res["note"] = f"cogvideo_c imported from the checkout {HERE.parent.parent}"

        vae = cogvideo_c.AutoencoderKLCogVideoX.from_pretrained(args.model_dir, torch_dtype="float32")
        res["version"] = f"cogvideo_c {getattr(cogvideo_c, '__version__', '?')}"
        res["memory_stats_after_load"] = dict(cogvideo_c.memory_stats("cpu"))

        def decode(x):
            return np.asarray(vae.decode(x).sample)

    res["load_s"] = time.perf_counter() - t0
    res["rss_after_load"] = rss_bytes()
    res["rss_peak_reset"] = reset_rss_peak()
    out, times = _run_decodes(decode, z, args.repeat, args.warmup)
    res["hwm_after_decode"] = hwm_bytes()
    res["rss_end"] = rss_bytes()
    res["ru_maxrss"] = maxrss_bytes()
    res["times_s"] = times
    res["time_s_median"] = statistics.median(times)
    res["warmup"] = args.warmup
    if args.child == "cvx":
        import cogvideo_c

        stats = dict(cogvideo_c.memory_stats("cpu"))
        res["memory_stats"] = stats
        res["peak_tensor_bytes"] = stats["allocated_bytes.all.peak"]
    if res["rss_peak_reset"] and res["hwm_after_decode"] is not None:
        res["decode_rss_growth"] = res["hwm_after_decode"] - res["rss_after_load"]
    else:  # high-water mark could not be reset: the load's own peak may be included
        res["decode_rss_growth"] = res["ru_maxrss"] - (res["rss_after_load"] or 0)
    if args.child == "reference":
        res["peak_tensor_bytes"] = res["weights_bytes"] + res["decode_rss_growth"]
    out = np.ascontiguousarray(out, dtype=np.float32)
    res["out_shape"] = list(out.shape)
    res["out_finite"] = bool(np.isfinite(out).all())
    res["out_std"] = float(out.std())
    res["out_absmax"] = float(np.abs(out).max())
    np.save(args.output, out)
    Path(args.result).write_text(json.dumps(res, indent=1))


# ----------------------------------------------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------------------------------------------


def _child_cmd(python: str, args, mode: str, extra: list[str]) -> list[str]:
    cmd = [python, str(HERE), "--child", mode, "--model-dir", str(args.model_dir), "--threads", str(args.threads)]
    cmd += ["--seed", str(args.seed), "--weights-dtype", args.weights_dtype]
    return cmd + extra


def _run(cmd: list[str], env_threads: int) -> None:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(env_threads)
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, env=env, check=True)


def ensure_model(args) -> None:
    meta = {
        "config": "diffusers AutoencoderKLCogVideoX() defaults",
        "seed": args.seed,
        "weights_dtype": args.weights_dtype,
        "init": "conv N(0,1/fan_in); bias N(0,0.01); GN 1+N(0,0.01)",
    }
    d = Path(args.model_dir)
    mfile = d / META_NAME
    if mfile.is_file() and (d / "config.json").is_file():
        try:
            if json.loads(mfile.read_text()) == meta:
                print(f"reusing model in {d}")
                return
        except ValueError:
            pass
    if d.exists():
        for p in (d / "config.json", d / "diffusion_pytorch_model.safetensors", mfile):
            if p.exists():
                p.unlink()
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    _run(_child_cmd(sys.executable, args, "make-model", []), args.threads)
    mfile.write_text(json.dumps(meta))
    print(f"model built and saved in {time.perf_counter() - t0:.1f} s")


def fmt_mib(b) -> str:
    return "n/a" if b is None else f"{b / MIB:,.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=3, help="latent frames (default 3 -> 9 video frames)")
    ap.add_argument("--height", type=int, default=16, help="latent height (default 16 -> 128 px)")
    ap.add_argument("--width", type=int, default=24, help="latent width (default 24 -> 192 px)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=1, help="timed decodes; the median is reported")
    ap.add_argument("--warmup", type=int, default=None, help="untimed decodes first (default: 1 if --repeat > 1)")
    ap.add_argument("--model-dir", default=None, help="cache directory for the random-weight model")
    ap.add_argument(
        "--weights-dtype",
        default="float32",
        choices=["float32", "float16", "bfloat16"],
        help="dtype of the saved weight file (both sides load it as float32)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cvx-python", default=sys.executable, help="interpreter with cogvideo_c installed")
    ap.add_argument("--check-only-reference", action="store_true", help="run only the diffusers side")
    ap.add_argument("--json", default=None, help="also write all raw results to this JSON file")
    ap.add_argument("--child", choices=["make-model", "reference", "cvx"], help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    if args.warmup is None:
        args.warmup = 1 if args.repeat > 1 else 0

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
        impls = [("reference", sys.executable)]
        if not args.check_only_reference:
            impls.append(("cvx", args.cvx_python))
        results = {}
        for mode, py in impls:
            extra = [
                "--input",
                str(work / "z.npy"),
                "--output",
                str(work / f"out_{mode}.npy"),
                "--result",
                str(work / f"res_{mode}.json"),
                "--repeat",
                str(args.repeat),
                "--warmup",
                str(args.warmup),
            ]
            _run(_child_cmd(py, args, mode, extra), args.threads)
            results[mode] = json.loads((work / f"res_{mode}.json").read_text())
        ref = np.load(work / "out_reference.npy")
        for mode in results:
            out = np.load(work / f"out_{mode}.npy")
            if out.shape != ref.shape:
                results[mode]["max_abs_diff"] = f"shape {list(out.shape)} != {list(ref.shape)}"
            else:
                results[mode]["max_abs_diff"] = float(np.abs(out.astype(np.float64) - ref).max())
    finally:
        shutil.rmtree(work, ignore_errors=True)

    names = {"reference": "diffusers (torch)", "cvx": "cogvideo_c"}
    out_shape = results["reference"]["out_shape"]
    print()
    print(
        f"CogVideoX VAE decode, latent [1, 16, {args.frames}, {args.height}, {args.width}] -> video {out_shape}, "
        f"fp32, CPU, {args.threads} threads, median of {args.repeat} (warm-up {args.warmup})"
    )
    print()
    print(
        "| implementation | time (s, median) | peak RSS (MiB) | peak tensor memory (MiB) | max abs diff vs diffusers |"
    )
    print("|---|---:|---:|---:|---:|")
    for mode, r in results.items():
        d = r["max_abs_diff"]
        d = "0 (reference)" if mode == "reference" else (f"{d:.3e}" if isinstance(d, float) else d)
        tensor = fmt_mib(r.get("peak_tensor_bytes"))
        if mode == "reference":
            tensor += "*"
        print(f"| {names[mode]} | {r['time_s_median']:.3f} | {fmt_mib(r['ru_maxrss'])} | {tensor} | {d} |")
    print()
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
    for mode, r in results.items():
        print(
            f"  {names[mode]}: {r['version']}; load {r['load_s']:.2f} s; decode times "
            + ", ".join(f"{t:.3f}" for t in r["times_s"])
            + f" s; output std {r['out_std']:.3f}, max |x| {r['out_absmax']:.3f}, finite {r['out_finite']}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": {k: v for k, v in vars(args).items() if k != "child"}, "results": results}, indent=1)
        )
    if temp_model:
        print(f"(temporary model directory removed; pass --model-dir to cache the {args.weights_dtype} weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
