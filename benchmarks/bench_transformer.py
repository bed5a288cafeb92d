#!/usr/bin/env python3
"""Side-by-side CPU benchmark of one CogVideoXTransformer3DModel forward: diffusers (PyTorch) vs cogvideo_c.

    /tmp/cvx-reference/bin/python benchmarks/bench_transformer.py [--preset mid|block2b|all] [--threads N]
        [--repeat N] [--model-dir DIR] [--cvx-python PY] [--json FILE] [--check-only-reference]

Presets (fp32, sin-cos positional table, no RoPE, text_embed_dim 4096, time_embed_dim 512, 16 in/out channels,
patch 2, max_text_seq_length 226; sample_frames/height/width match the latent so no table is recomputed):
  * mid:     8 heads x 64 (D = 512), 4 layers; latent [1, 13, 16, 30, 40] -> 13*15*20 = 3900 video tokens + 226
             text tokens = 4126 tokens (attention-heavy).
  * block2b: one CogVideoX-2b-sized block: 30 heads x 64 (D = 1920), 1 layer; latent [1, 3, 16, 30, 40] -> 900 video
             + 226 text = 1126 tokens (GEMM-heavy).
  * all:     both, one table each.
Weights are seeded random, built by diffusers and re-randomised to a moderate scale (Linear/Conv N(0, 1/fan_in), bias
N(0, 0.1^2), LayerNorm weight 1 + N(0, 0.1^2), bias N(0, 0.1^2)) so that outputs are O(1); saved with
save_pretrained (safetensors, float32) and loaded from that same folder by both sides. Without --model-dir they go
to a temporary directory that is deleted afterwards; with --model-dir they are cached in DIR/<preset> (reused if the
recorded settings match).
Inputs (seeded numpy): hidden_states N(0, 1) [B, F, 16, H, W], encoder_hidden_states N(0, 1) [B, 226, 4096],
timestep int64 [B] = --timestep.

Each implementation runs in its own subprocess so its peak RSS is clean; this parent process only uses the standard
library and numpy (it never imports torch, so the children do not inherit a large address space).
  * reference: `python` running this script (needs torch + diffusers); torch.set_num_threads(threads), fp32, no_grad,
    model(hidden_states=..., encoder_hidden_states=..., timestep=..., return_dict=True).sample.
  * cogvideo_c: `--cvx-python` (default: this interpreter) with OMP_NUM_THREADS=threads; it needs numpy + cogvideo_c
    (if cogvideo_c is not installed, the child imports it from the checkout this script belongs to).
Timing: load (from_pretrained) is timed separately; the forward time is the median of --repeat forwards (with
--repeat > 1, one untimed warm-up forward precedes them; --warmup overrides). Memory: peak RSS = ru_maxrss of the
child at the end (whole process: interpreter, libraries, weights, activations). Peak tensor memory: for cogvideo_c,
memory_stats("cpu")["allocated_bytes.all.peak"] over the forwards (peak statistics reset after the load), i.e.
weights + activations; for torch, which has no CPU allocator statistics, the parameter bytes plus the peak RSS growth
during the forwards (the RSS high-water mark is reset via /proc/self/clear_refs just before, where possible).
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
META_NAME = "bench_transformer_meta.json"
TEXT_LEN = 226
TEXT_DIM = 4096
CHANNELS = 16

# preset -> (diffusers config overrides, latent [B, F, C, H, W])
PRESETS: dict[str, tuple[dict, tuple[int, int, int, int, int]]] = {
    "mid": (
        dict(num_attention_heads=8, attention_head_dim=64, num_layers=4),
        (1, 13, CHANNELS, 30, 40),
    ),
    "block2b": (
        dict(num_attention_heads=30, attention_head_dim=64, num_layers=1),
        (1, 3, CHANNELS, 30, 40),
    ),
}


def preset_config(name: str) -> dict:
    over, (_, f, c, h, w) = PRESETS[name]
    cfg = dict(
        in_channels=c,
        out_channels=c,
        text_embed_dim=TEXT_DIM,
        time_embed_dim=512,
        patch_size=2,
        max_text_seq_length=TEXT_LEN,
        sample_height=h,
        sample_width=w,
        sample_frames=(f - 1) * 4 + 1,  # temporal_compression_ratio 4: the table fits the latent, no recompute
        use_rotary_positional_embeddings=False,
        use_learned_positional_embeddings=False,
    )
    cfg.update(over)
    return cfg


def token_counts(name: str) -> tuple[int, int]:
    _, (_, f, _, h, w) = PRESETS[name]
    return f * (h // 2) * (w // 2), TEXT_LEN


# ----------------------------------------------------------------------------------------------------------------
# children
# ----------------------------------------------------------------------------------------------------------------


def child_make_model(args) -> None:
    import math

    import diffusers
    import torch
    from diffusers import CogVideoXTransformer3DModel

    diffusers.utils.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = CogVideoXTransformer3DModel(**preset_config(args.preset)).eval()
    g = torch.Generator().manual_seed(args.seed + 1)
    done = set()
    with torch.no_grad():
        # moderate random weights (outputs O(1), not saturated): Linear/Conv N(0, 1/fan_in), bias N(0, 0.1^2),
        # LayerNorm weight 1 + N(0, 0.1^2), bias N(0, 0.1^2)
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                if mod.weight is not None:
                    mod.weight.copy_(1.0 + 0.1 * torch.randn(mod.weight.shape, generator=g))
                    done.add(id(mod.weight))
                if mod.bias is not None:
                    mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
                    done.add(id(mod.bias))
            elif isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d)):
                fan_in = mod.weight[0].numel()
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) / math.sqrt(fan_in))
                done.add(id(mod.weight))
                if mod.bias is not None:
                    mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
                    done.add(id(mod.bias))
    missed = [n for n, p in model.named_parameters() if id(p) not in done]
    if missed:
        raise RuntimeError(f"parameters not re-randomised: {missed}")
    model.to(torch.float32).save_pretrained(args.model_dir, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    print(f"[make-model] {args.preset}: saved {n:,} parameters (float32) to {args.model_dir}", flush=True)


def child_bench(args) -> None:
    res: dict = {"impl": args.child, "preset": args.preset, "threads": args.threads, "pid": os.getpid()}
    with np.load(args.input) as f:
        inputs = (f["hidden_states"], f["encoder_hidden_states"], f["timestep"])
    res["rss_start"] = rss_bytes()
    t0 = time.perf_counter()
    if args.child == "reference":
        import diffusers
        import torch
        from diffusers import CogVideoXTransformer3DModel

        diffusers.utils.logging.set_verbosity_error()
        torch.set_num_threads(args.threads)
        torch.set_grad_enabled(False)
        model = CogVideoXTransformer3DModel.from_pretrained(args.model_dir, torch_dtype=torch.float32).eval()
        res["weights_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
        # from_pretrained may leave parameters backed by the memory-mapped safetensors file, paged in lazily on
        # first use; touch them now (a forward reads all of them) so those page faults are not counted as forward
        # memory.
        for p in model.parameters():
            p.sum()
        res["load_s"] = time.perf_counter() - t0
        res["version"] = f"torch {torch.__version__}, diffusers {diffusers.__version__}"
        res["torch_threads"] = torch.get_num_threads()
        inputs = tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in inputs)

        def forward(h, e, t):
            with torch.no_grad():
                out = model(hidden_states=h, encoder_hidden_states=e, timestep=t, return_dict=True).sample
            return out.numpy()

    else:
        cogvideo_c = import_cogvideo_c(res)
        model = cogvideo_c.CogVideoXTransformer3DModel.from_pretrained(args.model_dir, torch_dtype="float32")
        res["load_s"] = time.perf_counter() - t0
        res["version"] = f"cogvideo_c {getattr(cogvideo_c, '__version__', '?')}"
        res["memory_stats_after_load"] = dict(cogvideo_c.memory_stats("cpu"))
        res["weights_bytes"] = res["memory_stats_after_load"]["weights_bytes.current"]
        cogvideo_c.reset_peak_memory_stats("cpu")  # the forwards' peak, not the load's

        def forward(h, e, t):
            return np.asarray(model(hidden_states=h, encoder_hidden_states=e, timestep=t).sample)

    out = timed_calls(res, lambda: forward(*inputs), args.repeat, args.warmup, "forward")
    res["forward_rss_growth"] = rss_growth(res, "forward")
    if args.child == "cvx":
        stats = dict(cogvideo_c.memory_stats("cpu"))
        res["memory_stats"] = stats
        res["peak_tensor_bytes"] = stats["allocated_bytes.all.peak"]
        res["activation_bytes"] = stats["allocated_bytes.all.peak"] - stats["weights_bytes.current"]
        res["activations_bytes_peak"] = stats["activations_bytes.peak"]
    else:
        res["peak_tensor_bytes"] = res["weights_bytes"] + res["forward_rss_growth"]
        res["activation_bytes"] = res["forward_rss_growth"]
    save_output(res, out, args.output, args.result)


# ----------------------------------------------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------------------------------------------


def _child_cmd(python: str, args, preset: str, model_dir: Path, mode: str, extra: list[str]) -> list[str]:
    cmd = [python, str(HERE), "--child", mode, "--preset", preset, "--model-dir", str(model_dir)]
    cmd += ["--threads", str(args.threads), "--seed", str(args.seed)]
    return cmd + extra


def ensure_model(args, preset: str, model_dir: Path) -> None:
    meta = {
        "preset": preset,
        "config": preset_config(preset),
        "seed": args.seed,
        "weights_dtype": "float32",
        "init": "Linear/Conv N(0,1/fan_in); bias N(0,0.01); LN 1+N(0,0.01), bias N(0,0.01)",
    }
    build_cmd = _child_cmd(sys.executable, args, preset, model_dir, "make-model", [])
    ensure_model_dir(model_dir, META_NAME, meta, build_cmd, args.threads)


def run_preset(args, preset: str, root: Path, work: Path) -> dict:
    model_dir = root / preset
    ensure_model(args, preset, model_dir)
    shape = PRESETS[preset][1]
    rng = np.random.default_rng(args.seed)
    h = rng.standard_normal(shape).astype(np.float32)
    e = rng.standard_normal((shape[0], TEXT_LEN, TEXT_DIM)).astype(np.float32)
    t = np.full((shape[0],), args.timestep, dtype=np.int64)
    inp = work / f"in_{preset}.npz"
    np.savez(inp, hidden_states=h, encoder_hidden_states=e, timestep=t)
    return run_children(
        args, work, f"{preset}_", inp, lambda py, mode, extra: _child_cmd(py, args, preset, model_dir, mode, extra)
    )


def print_preset(args, preset: str, results: dict) -> None:
    cfg = preset_config(preset)
    shape = list(PRESETS[preset][1])
    nv, nt = token_counts(preset)
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    print()
    print(
        f"CogVideoXTransformer3DModel forward, preset {preset}: {cfg['num_attention_heads']} heads x "
        f"{cfg['attention_head_dim']} (D = {d}), {cfg['num_layers']} layer(s); latent {shape} -> {nv} video + {nt} "
        f"text = {nv + nt} tokens; fp32, CPU, {args.threads} threads, median of {args.repeat} (warm-up {args.warmup})"
    )
    print_table(results)
    rr = results["reference"]
    print(
        f"* torch: parameter bytes {fmt_mib(rr['weights_bytes'])} MiB + peak RSS growth during the forward "
        f"{fmt_mib(rr['forward_rss_growth'])} MiB (torch has no CPU allocator statistics)."
    )
    if "cvx" in results:
        rc = results["cvx"]
        print(
            f"  cogvideo_c: allocated_bytes.all.peak = weights {fmt_mib(rc['weights_bytes'])} MiB + activations "
            f"{fmt_mib(rc['activation_bytes'])} MiB (activations_bytes.peak {fmt_mib(rc['activations_bytes_peak'])} "
            f"MiB); peak RSS growth during the forward {fmt_mib(rc['forward_rss_growth'])} MiB."
        )
        if rr["time_s_median"] > 0:
            print(f"  time ratio cogvideo_c / torch: {rc['time_s_median'] / rr['time_s_median']:.2f}")
    print_runs(results, "forward")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="mid", choices=[*PRESETS, "all"], help="model size / token count")
    add_timing_args(ap, "forwards", "cache directory for the random-weight models (one per preset)")
    ap.add_argument("--timestep", type=int, default=999)
    add_run_args(ap)
    args = parse_args(ap)
    if args.child and args.preset == "all":
        ap.error("a child runs one preset")

    if args.child == "make-model":
        child_make_model(args)
        return 0
    if args.child in ("reference", "cvx"):
        child_bench(args)
        return 0

    presets = list(PRESETS) if args.preset == "all" else [args.preset]
    work = Path(tempfile.mkdtemp(prefix="bench_transformer_"))
    temp_model = args.model_dir is None
    root = work / "models" if temp_model else Path(args.model_dir)
    all_results = {}
    try:
        for preset in presets:
            all_results[preset] = run_preset(args, preset, root, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    for preset, results in all_results.items():
        print_preset(args, preset, results)
    if args.json:
        write_json(args.json, args, all_results)
    if temp_model:
        print("(temporary model directory removed; pass --model-dir to cache the float32 weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
