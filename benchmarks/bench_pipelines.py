#!/usr/bin/env python3
"""Issue 10's pipelines on the CPU against diffusers, same machine, same threads, one run: image-to-video,
video-to-video, text-to-video with a LoRA (unfused and fused), the LoRA load itself, and the tiled VAE encode.

    python benchmarks/bench_pipelines.py [--parts i2v v2v lora tiling] [--repeat 3] [--warmup 1] [--rounds 1]
        [--threads N]
        [--model-dir DIR] [--torch-python /tmp/cvx-reference/bin/python] [--cvx-python PY]
        [--out benchmarks/results/pipelines.md] [--json benchmarks/results/pipelines.json] [--tiny]

The parent imports only the standard library, numpy and _bench_common; every measurement runs in its own child
process (diffusers' under --torch-python, ours under --cvx-python), so each side's RSS is its own. Both get the same
thread count: OMP_NUM_THREADS for both, torch.set_num_threads as well for diffusers.

Models (random weights, written once by diffusers with save_pretrained and loaded from those same folders by both
sides; float32; --model-dir caches them):
  * VAE: diffusers' default AutoencoderKLCogVideoX config, the released CogVideoX VAE's channels (128, 256, 256,
    512), 215.6 M parameters, re-randomised to moderate scales (tests/reference/_reference_common.rerandomize_vae);
  * transformer (t2v): 30 heads x 64 (D = 1920, CogVideoX-2b's width), 2 layers, time_embed_dim 512, RoPE
    (5b-style), 16 latent channels, max_text_seq_length 226;
  * transformer (i2v): the same with in_channels 32 and a learned positional table (5b-I2V-style) sized to the
    request, so that the table is used as is;
  * text encoder: a T5 (gated-gelu) with d_model 256, 4 heads of 64, d_ff 512, 2 layers; the tokenizer of
    tests/fixtures/pipeline/tiny_5b;
  * LoRA: rank 64, lora_alpha 64 on every block's attn1.to_q / to_k / to_v / to_out.0 (how CogVideoX fine-tunes
    are published), saved by diffusers' save_lora_weights (pytorch_lora_weights.safetensors).
Request (full size): 9 frames (3 latent frames) of 64 x 96, 3 DDIM steps (CogVideoXDDIMScheduler, the 2b release's
config), guidance 6 (classifier-free: 2 rows through the transformer), one prompt: 298 tokens per row (72 video +
226 text). One call takes 5-25 s per side on a 2-core machine. --tiny: diffusers' fast-test sizes (the whole run
in well under a minute: a check of the script, not a measurement).

Parts (each side: one child per part; --warmup untimed calls, then --repeat timed calls, the median reported):
  * i2v: CogVideoXImageToVideoPipeline(image=a PIL image, ...), output_type "np" (the image encode, the denoising
    and the decode);
  * v2v: CogVideoXVideoToVideoPipeline(video=9 PIL frames, strength=0.8, ...) on the t2v folder, output "np"
    (2 of the 3 steps run);
  * lora: CogVideoXPipeline on the t2v folder, output_type "latent" (the denoising, where the adapter works; the
    decode is timed by i2v / v2v): without an adapter, then load_lora_weights (timed, and the RSS growth it causes;
    then unload_lora_weights and load again, --repeat loads in all, the median reported), the unfused calls, then
    fuse_lora() and the fused calls. Peak RSS per phase: the high-water mark over that phase's calls (reset just
    before, /proc/self/clear_refs).
  * tiling: the VAE's encode of one frame (the image-to-video encode) with enable_tiling(tile 64 x 64 pixels,
    diffusers' default overlaps), at several frame sizes, each (side, size) in a fresh child with every weight read
    (paged in) first: the first encode is the memory measurement, peak = the RSS growth over it (ours also:
    memory_stats' activation peak), the second one is timed.
With --rounds N every child runs N times, interleaved (all parts' children once, then again ...; the two sides'
order swapped each round), so that a shared machine's changing load hits both sides alike; times are pooled over the
rounds (the median of all N x --repeat), peaks are the largest seen.
Random draws: diffusers' randn_tensor is replaced by NumPy draws (tests/reference/_reference_common's
numpy_randn_tensor_into, the fixtures' way) and both sides get generator=np.random.default_rng(seed), so outputs are
compared too (max abs difference against diffusers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from _bench_common import (
    CHECKOUT,
    fmt_mib,
    hwm_bytes,
    import_cogvideo_c,
    maxrss_bytes,
    reset_rss_peak,
    rss_bytes,
    run_cmd,
    timed_calls,
)
from bench_offload import machine

HERE = Path(__file__).resolve()
META_NAME = "bench_pipelines_meta.json"
TOKENIZER = CHECKOUT / "tests" / "fixtures" / "pipeline" / "tiny_5b" / "tokenizer"
REFERENCE_HELPERS = CHECKOUT / "tests" / "reference"
DEFAULT_TORCH_PYTHON = "/tmp/cvx-reference/bin/python"
PARTS = ("i2v", "v2v", "lora", "tiling")
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
PROMPT = "a panda plays guitar in a bamboo forest"
NEGATIVE = "blurry, low quality"

FULL = {
    "t5": {"d_model": 256, "d_kv": 64, "num_heads": 4, "d_ff": 512, "num_layers": 2},
    "transformer": {"num_attention_heads": 30, "attention_head_dim": 64, "num_layers": 2, "time_embed_dim": 512},
    "vae": {},  # diffusers' defaults: the released VAE's architecture
    "lora_rank": 64,
    "request": {"height": 64, "width": 96, "num_frames": 9, "num_inference_steps": 3},
    "tiling": {"tile": 64, "sizes": [64, 128, 192]},
}
TINY = {
    "t5": {"d_model": 32, "d_kv": 8, "num_heads": 4, "d_ff": 37, "num_layers": 2},
    "transformer": {"num_attention_heads": 2, "attention_head_dim": 16, "num_layers": 2, "time_embed_dim": 32},
    "vae": {"down_block_types": ["CogVideoXDownBlock3D"] * 4, "up_block_types": ["CogVideoXUpBlock3D"] * 4,
            "block_out_channels": [8, 8, 8, 8], "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 2},
    "lora_rank": 4,
    "request": {"height": 32, "width": 48, "num_frames": 9, "num_inference_steps": 2},
    "tiling": {"tile": 32, "sizes": [32, 64]},
}  # fmt: skip
SCHEDULER = {
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "num_train_timesteps": 1000, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
    "set_alpha_to_one": True, "snr_shift_scale": 3.0, "steps_offset": 0, "timestep_spacing": "trailing",
}  # fmt: skip


def settings(tiny: bool) -> dict:
    return TINY if tiny else FULL


def _transformer_config(s: dict, image_to_video: bool) -> dict:
    r, lat = s["request"], s["vae"].get("latent_channels", 16)
    cfg = dict(s["transformer"], in_channels=lat, out_channels=lat, text_embed_dim=s["t5"]["d_model"],
               patch_size=2, max_text_seq_length=226, use_rotary_positional_embeddings=True,
               sample_height=r["height"] // 8, sample_width=r["width"] // 8, sample_frames=r["num_frames"])  # fmt: skip
    if image_to_video:
        cfg.update(in_channels=2 * lat, use_learned_positional_embeddings=True)
    return cfg


def _inputs(s: dict, seed: int) -> dict:
    """The image (uint8 [H, W, 3]) and the video (uint8 [F, H, W, 3]): smooth gradients with a moving edge."""
    r = s["request"]
    h, w, f = r["height"], r["width"], r["num_frames"]
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w]).reshape(2, 1, 1)
    frames = []
    for k in range(f):
        rgb = np.stack([x, y, 0.5 + 0.5 * np.sin(6.0 * (x + 2 * y) + 0.3 * k + seed)], axis=-1)
        rgb[h // 3 : h // 2, (k * w) // (2 * f) : (k * w) // (2 * f) + w // 4] = [0.9, 0.1, 0.2]
        frames.append(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8))
    return {"image": frames[0], "video": np.stack(frames)}


# ----------------------------------------------------------------------------------------------------------------
# children: the models (torch)
# ----------------------------------------------------------------------------------------------------------------


def child_make(args) -> None:
    sys.path.insert(0, str(REFERENCE_HELPERS))
    import diffusers
    import torch
    import transformers
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXImageToVideoPipeline,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from _reference_common import rerandomize_t5, rerandomize_transformer, rerandomize_vae, rounded_normal

    diffusers.utils.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    s = settings(args.tiny)
    root = Path(args.model_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(TOKENIZER))
    with open(TOKENIZER.parent / "text_encoder" / "config.json") as f:
        vocab = json.load(f)["vocab_size"]
    t5 = transformers.T5EncoderModel(
        transformers.T5Config(vocab_size=vocab, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                              use_cache=False, **s["t5"])
    ).eval()  # fmt: skip
    rerandomize_t5(t5, args.seed)
    torch.manual_seed(args.seed)
    vae = AutoencoderKLCogVideoX(**s["vae"]).eval()
    rerandomize_vae(vae, args.seed + 1)
    scheduler = CogVideoXDDIMScheduler(**SCHEDULER)
    for name, i2v, cls in (("t2v", False, CogVideoXPipeline), ("i2v", True, CogVideoXImageToVideoPipeline)):
        torch.manual_seed(args.seed + 2)
        tr = CogVideoXTransformer3DModel(**_transformer_config(s, i2v)).eval()
        rerandomize_transformer(tr, args.seed + 3 + i2v)
        pipe = cls(tokenizer=tokenizer, text_encoder=t5, vae=vae, transformer=tr, scheduler=scheduler)
        pipe.save_pretrained(str(root / name), safe_serialization=True)
        n = sum(p.numel() for p in tr.parameters())
        print(f"[make] {name}: transformer {n:,} parameters", flush=True)
        if not i2v:  # the LoRA, on the t2v transformer
            tr.add_adapter(LoraConfig(r=s["lora_rank"], lora_alpha=s["lora_rank"], target_modules=LORA_TARGETS,
                                      init_lora_weights=False), adapter_name="bench")  # fmt: skip
            rng = np.random.default_rng(args.seed + 5)
            with torch.no_grad():  # an update of about 0.3 x the input's scale (as make_lora_fixtures.py draws)
                for mod in tr.modules():
                    if hasattr(mod, "lora_A") and "bench" in mod.lora_A:
                        a, b = mod.lora_A["bench"].weight, mod.lora_B["bench"].weight
                        a.copy_(torch.from_numpy(rounded_normal(rng, tuple(a.shape)) / np.float32(np.sqrt(a.shape[1]))))
                        b.copy_(torch.from_numpy(rounded_normal(rng, tuple(b.shape)) *
                                                 np.float32(0.3 / np.sqrt(b.shape[1]))))  # fmt: skip
            sd = get_peft_model_state_dict(tr, adapter_name="bench")
            CogVideoXPipeline.save_lora_weights(str(root / "lora"), transformer_lora_layers=sd)
    print(f"[make] VAE {sum(p.numel() for p in vae.parameters()):,} parameters", flush=True)


# ----------------------------------------------------------------------------------------------------------------
# children: the measurements
# ----------------------------------------------------------------------------------------------------------------


class _Side:
    """What differs between the two sides: the imports, loading, threads, generators."""

    def __init__(self, args, res: dict):
        self.torch = args.side == "diffusers"
        if self.torch:
            sys.path.insert(0, str(REFERENCE_HELPERS))
            import diffusers
            import torch
            import transformers
            from diffusers.models.autoencoders import vae as vae_module
            from diffusers.pipelines.cogvideo import (
                pipeline_cogvideox,
                pipeline_cogvideox_image2video,
                pipeline_cogvideox_video2video,
            )

            from _reference_common import numpy_randn_tensor_into

            warnings.filterwarnings("ignore", category=FutureWarning)  # torch_dtype's rename: both sides use it
            diffusers.utils.logging.set_verbosity_error()
            diffusers.utils.logging.disable_progress_bar()
            transformers.utils.logging.disable_progress_bar()
            torch.set_num_threads(args.threads)
            torch.set_grad_enabled(False)
            numpy_randn_tensor_into((vae_module, pipeline_cogvideox, pipeline_cogvideox_image2video,
                                     pipeline_cogvideox_video2video), [])  # fmt: skip
            self.lib, self.tch = diffusers, torch
            res["version"] = f"diffusers {diffusers.__version__}, torch {torch.__version__}"
            res["torch_threads"] = torch.get_num_threads()
        else:
            self.lib = import_cogvideo_c(res)
            res["version"] = f"cogvideo_c {self.lib.__version__}"
        res["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")

    def pipeline(self, cls_name: str, folder: str):
        kw = {"torch_dtype": self.tch.float32} if self.torch else {"torch_dtype": "float32"}
        pipe = getattr(self.lib, cls_name).from_pretrained(folder, **kw)
        pipe.set_progress_bar_config(disable=True)
        if self.torch:  # the weights into RAM now (a call reads them all), so the calls' RSS is the calls' own
            for p in pipe.transformer.parameters():
                p.sum()
        return pipe

    def frames(self, out) -> np.ndarray:
        return np.asarray(out.float().numpy() if hasattr(out, "float") else out, dtype=np.float32)


def _request(args, s: dict) -> dict:
    return dict(prompt=PROMPT, negative_prompt=NEGATIVE, guidance_scale=6.0, **s["request"])


def child_run(args) -> None:
    res: dict = {"side": args.side, "part": args.part, "threads": args.threads, "rss_start": rss_bytes()}
    s = settings(args.tiny)
    side = _Side(args, res)
    res["rss_after_import"] = rss_bytes()
    root = Path(args.model_dir)
    with np.load(args.input) as f:
        image, video = f["image"], f["video"]
    import PIL.Image

    req = _request(args, s)
    t0 = time.perf_counter()
    if args.part == "i2v":
        pipe = side.pipeline("CogVideoXImageToVideoPipeline", str(root / "i2v"))
        res["load_s"] = time.perf_counter() - t0
        pil = PIL.Image.fromarray(image)
        call = lambda: pipe(image=pil, generator=np.random.default_rng(args.seed), output_type="np", **req).frames  # noqa: E731
        out = timed_calls(res, call, args.repeat, args.warmup, "calls")
    elif args.part == "v2v":
        pipe = side.pipeline("CogVideoXVideoToVideoPipeline", str(root / "t2v"))
        res["load_s"] = time.perf_counter() - t0
        pil = [PIL.Image.fromarray(fr) for fr in video]
        kw = {k: v for k, v in req.items() if k != "num_frames"}  # the video's frames
        call = lambda: pipe(video=pil, strength=0.8, generator=np.random.default_rng(args.seed), output_type="np",  # noqa: E731
                            **kw).frames  # fmt: skip
        out = timed_calls(res, call, args.repeat, args.warmup, "calls")
    else:
        out = _lora_phases(args, side, res, root, req)
    out = side.frames(out)
    res["ru_maxrss"] = maxrss_bytes()
    res["out_shape"], res["out_finite"] = list(out.shape), bool(np.isfinite(out).all())
    np.save(args.output, out)
    Path(args.result).write_text(json.dumps(res, indent=1))


def _lora_phases(args, side: _Side, res: dict, root: Path, req: dict):
    """Base calls, the LoRA load (timed, RSS growth), unfused calls, fuse_lora, fused calls; returns the outputs
    {phase: latents} stacked."""
    t0 = time.perf_counter()
    pipe = side.pipeline("CogVideoXPipeline", str(root / "t2v"))
    res["load_s"] = time.perf_counter() - t0
    outs = []

    def call():
        return pipe(generator=np.random.default_rng(args.seed), output_type="latent", **req).frames

    res["base"] = {}
    outs.append(side.frames(timed_calls(res["base"], call, args.repeat, args.warmup, "calls")))
    folder = str(root / "lora")
    loads, growth = [], None
    for k in range(args.repeat):
        if k:
            pipe.unload_lora_weights()
        before = rss_bytes()
        t0 = time.perf_counter()
        pipe.load_lora_weights(folder, adapter_name="bench")
        loads.append(time.perf_counter() - t0)
        if growth is None:
            growth = rss_bytes() - before
    res["lora_load"] = {"times_s": loads, "time_s_median": statistics.median(loads), "rss_growth": growth}
    if side.torch:
        lora_params = [p for n, p in pipe.transformer.named_parameters() if "lora_" in n]
        res["lora_load"]["adapter_bytes"] = sum(p.numel() * p.element_size() for p in lora_params)
    else:
        res["lora_load"]["adapter_bytes"] = pipe.transformer.lora_bytes
    res["unfused"] = {}
    outs.append(side.frames(timed_calls(res["unfused"], call, args.repeat, args.warmup, "calls")))
    t0 = time.perf_counter()
    pipe.fuse_lora()
    res["fuse_s"] = time.perf_counter() - t0
    res["fused"] = {}
    outs.append(side.frames(timed_calls(res["fused"], call, args.repeat, args.warmup, "calls")))
    return np.stack(outs)


def child_encode(args) -> None:
    """One tiled encode of a size x size frame: the posterior's mode, its time and the peak RSS growth."""
    res: dict = {"side": args.side, "part": "tiling", "size": args.size, "threads": args.threads}
    s = settings(args.tiny)
    side = _Side(args, res)
    folder = str(Path(args.model_dir) / "t2v" / "vae")
    tile = s["tiling"]["tile"]
    rng = np.random.default_rng(args.seed + args.size)
    x = rng.uniform(-1, 1, (1, 3, 1, args.size, args.size)).astype(np.float32)
    if side.torch:
        vae = side.lib.AutoencoderKLCogVideoX.from_pretrained(folder, torch_dtype=side.tch.float32).eval()
        for p in vae.parameters():
            p.sum()
        x = side.tch.from_numpy(x)
    else:
        vae = side.lib.AutoencoderKLCogVideoX.from_pretrained(folder, torch_dtype="float32")
        for i in range(len(vae._core.weight_info())):  # the mapped weights paged in, as diffusers' are read above
            np.asarray(vae._core.weight_data(i)).sum()
        side.lib.reset_peak_memory_stats("cpu")
    vae.enable_tiling(tile_sample_min_height=tile, tile_sample_min_width=tile)
    # the first encode in a fresh process is the memory measurement (a warm-up would leave torch's freed blocks in
    # the heap, hiding its working memory from the growth); the second one is timed
    res["rss_after_load"] = rss_bytes()
    res["rss_peak_reset"] = reset_rss_peak()
    t0 = time.perf_counter()
    vae.encode(x).latent_dist.mode()
    res["first_s"] = time.perf_counter() - t0
    res["hwm_after_calls"] = hwm_bytes()
    res["rss_growth"] = res["hwm_after_calls"] - res["rss_after_load"] if res["rss_peak_reset"] else None
    t0 = time.perf_counter()
    out = vae.encode(x).latent_dist.mode()
    res["time_s_median"] = time.perf_counter() - t0
    res["ru_maxrss"] = maxrss_bytes()
    if not side.torch:
        stats = side.lib.memory_stats("cpu")
        res["activations_peak"] = stats["activations_bytes.peak"]
        res["tensor_peak"] = stats["allocated_bytes.all.peak"]
    out = side.frames(out)
    res["out_shape"], res["out_finite"] = list(out.shape), bool(np.isfinite(out).all())
    np.save(args.output, out)
    Path(args.result).write_text(json.dumps(res, indent=1))


# ----------------------------------------------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------------------------------------------


def _child(args, python: str, child: str, side: str, work: Path, tag: str, extra=()) -> dict | None:
    result, output = work / f"res_{tag}_{side}.json", work / f"out_{tag}_{side}.npy"
    cmd = [python, str(HERE), "--child", child, "--side", side, "--model-dir", str(args.model_dir),
           "--threads", str(args.threads), "--seed", str(args.seed), "--repeat", str(args.repeat), "--warmup",
           str(args.warmup), "--input", str(work / "inputs.npz"), "--output", str(output), "--result", str(result),
           *extra] + (["--tiny"] if args.tiny else [])  # fmt: skip
    try:
        run_cmd(cmd, args.threads)
    except subprocess.CalledProcessError as e:  # one part failing must not lose the others: the table says which
        return {"error": f"{side} child {tag} failed (exit status {e.returncode}; its traceback is above)"}
    res = json.loads(result.read_text())
    res["output"] = str(output)
    return res


def _diff(a: dict, b: dict, per_phase: bool = False):
    """max |ours - diffusers| of the saved outputs (per_phase: a list, one per leading index: the lora phases)."""
    if "output" not in a or "output" not in b:
        return None
    x, y = np.load(a["output"]).astype(np.float64), np.load(b["output"]).astype(np.float64)
    if x.shape != y.shape:
        return f"shape {list(y.shape)} != {list(x.shape)}"
    if per_phase:
        return [float(np.abs(x[k] - y[k]).max()) for k in range(x.shape[0])]
    return float(np.abs(x - y).max())


def _phase_peak(r: dict) -> int | None:
    return r.get("hwm_after_calls") if r.get("rss_peak_reset") else r.get("ru_maxrss")


def ensure_models(args) -> None:
    s = settings(args.tiny)
    meta = {k: s[k] for k in ("t5", "transformer", "vae", "lora_rank", "request")}
    meta["seed"] = args.seed
    root = Path(args.model_dir)
    mfile = root / META_NAME
    if mfile.is_file():
        try:
            if json.loads(mfile.read_text()) == meta:
                print(f"reusing models in {root}")
                return
        except ValueError:
            pass
    for name in ("t2v", "i2v", "lora"):
        shutil.rmtree(root / name, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cmd = [args.torch_python, str(HERE), "--child", "make", "--model-dir", str(root), "--threads", str(args.threads)]
    run_cmd(cmd + ["--seed", str(args.seed)] + (["--tiny"] if args.tiny else []), args.threads)
    shutil.rmtree(root / "i2v" / "vae")  # the same VAE as t2v's: one copy on disk
    (root / "i2v" / "vae").symlink_to(root / "t2v" / "vae", target_is_directory=True)
    mfile.write_text(json.dumps(meta))
    print(f"models written in {time.perf_counter() - t0:.1f} s")


def _pooled(recs: list[dict]) -> dict:
    """One side's records of one configuration over --rounds: the times pooled (their median), the peaks the largest,
    the rest from the last round; a failed round is the result."""
    failed = [r for r in recs if "error" in r]
    if failed:
        return failed[0]
    out = dict(recs[-1])
    for key in ("", "base", "unfused", "fused", "lora_load"):
        sub = [r[key] if key else r for r in recs if (key in r if key else "time_s_median" in r)]
        if not sub:
            continue
        merged = dict(sub[-1])
        merged["times_s"] = [t for r in sub for t in r.get("times_s", [r["time_s_median"]])]
        merged["time_s_median"] = statistics.median(merged["times_s"])
        for peak in ("hwm_after_calls", "ru_maxrss", "rss_growth"):
            if all(r.get(peak) is not None for r in sub):
                merged[peak] = max(r[peak] for r in sub)
        if key:
            out[key] = merged
        else:
            out.update(merged)
    if all("fuse_s" in r for r in recs):
        out["fuse_s"] = statistics.median(r["fuse_s"] for r in recs)
    out["rounds"] = len(recs)
    return out


def run_all(args, work: Path) -> dict:
    """Every part's children, --rounds times, the configurations interleaved (round 1 of all, then round 2 ...) and
    the two sides' order swapped each round, so that a change in a shared machine's load hits both alike."""
    s = settings(args.tiny)
    np.savez(work / "inputs.npz", **_inputs(s, args.seed))
    pys = {"diffusers": args.torch_python, "ours": args.cvx_python}
    configs = []  # (key, child, tag, extra)
    for part in args.parts:
        if part == "tiling":
            configs += [(("tiling", size), "encode", f"enc{size}", ["--size", str(size)]) for size in
                        s["tiling"]["sizes"]]  # fmt: skip
        else:
            configs.append(((part, None), "run", part, ["--part", part]))
    runs: dict = {}
    for rnd in range(args.rounds):
        sides = list(pys) if rnd % 2 == 0 else list(pys)[::-1]
        for key, child, tag, extra in configs:
            for side in sides:
                rec = _child(args, pys[side], child, side, work, tag, extra)
                runs.setdefault(key, {}).setdefault(side, []).append(rec)
    results: dict = {}
    for (part, size), by_side in runs.items():
        r = {side: _pooled(by_side[side]) for side in pys}
        r["max_abs_diff"] = _diff(r["diffusers"], r["ours"], per_phase=part == "lora")
        if part == "tiling":
            results.setdefault("tiling", []).append(dict(r, size=size))
        else:
            results[part] = r
    return results


def _ratio(a, b) -> str:
    return "–" if not a or not b else f"{a / b:.2f}"


def _t(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def _err(r: dict) -> str | None:
    return r.get("error") if isinstance(r, dict) else "missing"


def tables(args, results: dict) -> list[str]:
    lines = []
    rows = []  # (label, diffusers record, ours record, diff)
    for part, label in (("i2v", "image-to-video (`np` frames)"), ("v2v", "video-to-video, strength 0.8")):
        if part in results:
            r = results[part]
            rows.append((label, r["diffusers"], r["ours"], r["max_abs_diff"]))
    lora = results.get("lora")
    if lora:
        diffs = lora["max_abs_diff"] if isinstance(lora["max_abs_diff"], list) else [lora["max_abs_diff"]] * 3
        for k, (phase, label) in enumerate((("base", "text-to-video, no adapter (`latent`)"),
                                            ("unfused", "text-to-video, LoRA unfused (`latent`)"),
                                            ("fused", "text-to-video, LoRA fused (`latent`)"))):  # fmt: skip
            rows.append((label, lora["diffusers"].get(phase, lora["diffusers"]), lora["ours"].get(phase, lora["ours"]),
                         diffs[k]))  # fmt: skip
    if rows:
        lines += ["| call | diffusers (s, median) | ours (s, median) | time ours / diffusers | diffusers peak RSS "
                  "(MiB) | ours peak RSS (MiB) | peak ours / diffusers | max abs diff vs diffusers |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for label, d, o, diff in rows:
            if _err(d) or _err(o):
                lines.append(f"| {label} | {_err(d) or ''} | {_err(o) or ''} | | | | | |")
                continue
            dp, op = _phase_peak(d), _phase_peak(o)
            dt, ot = d["time_s_median"], o["time_s_median"]
            diff = diff if isinstance(diff, str) else ("–" if diff is None else f"{diff:.2e}")
            lines.append(f"| {label} | {dt:.3f} | {ot:.3f} | **{ot / dt:.2f}** | {fmt_mib(dp)} | {fmt_mib(op)} | "
                         f"**{_ratio(op, dp)}** | {diff} |")  # fmt: skip
        lines += ["", "Peak RSS: the process's RSS high-water mark over the row's warm-up and timed calls (reset just "
                  "before them; weights and interpreter included; the whole process's ru_maxrss where the reset is "
                  "not available). Diff: the `np` frames (i2v, v2v) or the latents (t2v rows).", ""]  # fmt: skip
    if lora and not (_err(lora["diffusers"]) or _err(lora["ours"])):
        d, o = lora["diffusers"], lora["ours"]
        dl, ol = d["lora_load"], o["lora_load"]
        lines += ["| LoRA load (`load_lora_weights`, rank %d, to_q/k/v/out) | diffusers | ours | ours / diffusers |"
                  % settings(args.tiny)["lora_rank"], "|---|---:|---:|---:|",
                  f"| time (s, median of {len(dl['times_s'])}) | {dl['time_s_median']:.3f} | {ol['time_s_median']:.3f}"
                  f" | **{_ratio(ol['time_s_median'], dl['time_s_median'])}** |",
                  f"| RSS growth (MiB) | {fmt_mib(dl['rss_growth'])} | {fmt_mib(ol['rss_growth'])} | "
                  f"{_ratio(ol['rss_growth'], dl['rss_growth'])} |",
                  f"| adapter bytes (MiB) | {fmt_mib(dl['adapter_bytes'])} | {fmt_mib(ol['adapter_bytes'])} | |",
                  f"| fuse_lora() (s) | {_t(d.get('fuse_s'))} | {_t(o.get('fuse_s'))} | "
                  f"{_ratio(o.get('fuse_s'), d.get('fuse_s'))} |", ""]  # fmt: skip
    tiling = results.get("tiling")
    if tiling:
        tile = settings(args.tiny)["tiling"]["tile"]
        lines += [f"VAE encode of one frame with enable_tiling(tile {tile} x {tile} pixels), a fresh process per "
                  "row and round, weights paged in first; peak = the RSS growth over the first encode (ours' "
                  "memory_stats activation peak in brackets); time = the second encode:", "",
                  "| frame | diffusers (s) | ours (s) | time ours / diffusers | diffusers peak (MiB) | ours peak (MiB) "
                  "| peak ours / diffusers | max abs diff |", "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for row in tiling:
            d, o = row["diffusers"], row["ours"]
            if _err(d) or _err(o):
                lines.append(f"| {row['size']} | {_err(d) or ''} | {_err(o) or ''} | | | | | |")
                continue
            dg, og = d["rss_growth"], o["rss_growth"]
            diff = row["max_abs_diff"]
            diff = diff if isinstance(diff, str) else ("–" if diff is None else f"{diff:.2e}")
            lines.append(f"| {row['size']} x {row['size']} | {d['time_s_median']:.3f} | {o['time_s_median']:.3f} | "
                         f"**{o['time_s_median'] / d['time_s_median']:.2f}** | {fmt_mib(dg)} | {fmt_mib(og)} "
                         f"({fmt_mib(o.get('activations_peak'))}) | **{_ratio(og, dg)}** | {diff} |")  # fmt: skip
        lines.append("")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--repeat", type=int, default=3, help="timed calls (and LoRA loads); the median is reported")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    ap.add_argument("--rounds", type=int, default=1, help="run every child this many times, interleaved; times pooled")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-dir", default=None, help="cache the models here (default: a temporary folder)")
    ap.add_argument("--torch-python", default=DEFAULT_TORCH_PYTHON, help="interpreter with torch, diffusers, peft")
    ap.add_argument("--cvx-python", default=sys.executable, help="interpreter with cogvideo_c")
    ap.add_argument("--out", default=None, help="Markdown (default: benchmarks/results/pipelines[_tiny].md)")
    ap.add_argument("--json", default=None, help="raw numbers (default: --out with .json)")
    ap.add_argument("--tiny", action="store_true", help="diffusers' fast-test sizes: the script end to end in seconds")
    ap.add_argument("--child", choices=["make", "run", "encode"], help=argparse.SUPPRESS)
    ap.add_argument("--side", choices=["diffusers", "ours"], help=argparse.SUPPRESS)
    ap.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    for name in ("--input", "--output", "--result"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.repeat < 1 or args.warmup < 0 or args.rounds < 1:
        ap.error("--repeat and --rounds must be >= 1, --warmup >= 0")
    if args.child:
        {"make": child_make, "run": child_run, "encode": child_encode}[args.child](args)
        return 0

    tmp = None
    if args.model_dir is None:
        tmp = args.model_dir = tempfile.mkdtemp(prefix="bench_pipelines_model_")
    work = Path(tempfile.mkdtemp(prefix="bench_pipelines_"))
    command = "python benchmarks/bench_pipelines.py " + " ".join(sys.argv[1:])
    load_before, t_start = os.getloadavg(), time.perf_counter()
    try:
        ensure_models(args)
        results = run_all(args, work)
        lines = tables(args, results)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    s = settings(args.tiny)
    meta = {"command": command, "machine": machine(), "threads": args.threads, "repeat": args.repeat,
            "warmup": args.warmup, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "total_s": time.perf_counter() - t_start, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            "settings": s}  # fmt: skip
    head = [
        "# Pipelines on the CPU: cogvideo_c vs diffusers"
        + (" (--tiny: a check of the script, not a measurement)" if args.tiny else ""),
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores; {args.threads} threads each side "
        "(OMP_NUM_THREADS, torch.set_num_threads); "
        f"run {meta['date']} in {meta['total_s'] / 60:.1f} min; load average (1 min) {load_before[0]:.2f} before, "
        f"{meta['loadavg_after'][0]:.2f} after (a shared machine: compare the rows of one run).",
        "",
        f"Models (random weights, float32): transformer {json.dumps(s['transformer'])} + RoPE (i2v: learned table, "
        f"in_channels x 2), T5 {json.dumps(s['t5'])}, VAE {json.dumps(s['vae']) if s['vae'] else 'diffusers defaults'}"
        f"; LoRA rank {s['lora_rank']} on {', '.join(LORA_TARGETS)}. Request: {json.dumps(s['request'])}, guidance "
        f"6; per row and side {args.rounds} child process(es), interleaved with the other rows' and the other side's, "
        f"each {args.warmup} warm-up + {args.repeat} timed calls; the time is the median of all of them.",
        "",
    ]  # fmt: skip
    text = "\n".join(head + lines)
    out = Path(args.out or CHECKOUT / "benchmarks" / "results" / f"pipelines{'_tiny' if args.tiny else ''}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    for rec in _records(results):
        rec.pop("output", None)  # a temporary path
    (Path(args.json) if args.json else out.with_suffix(".json")).write_text(
        json.dumps({"meta": meta, "results": results}, indent=1)
    )
    print()
    print(text)
    failed = [r["error"] for r in _records(results) if "error" in r]
    return 1 if failed else 0


def _records(results: dict):
    for part, r in results.items():
        for row in r if part == "tiling" else [r]:
            yield from (row[side] for side in ("diffusers", "ours"))


if __name__ == "__main__":
    sys.exit(main())
