#!/usr/bin/env python3
"""GPU benchmark against diffusers, same machine, same run (issue 9): the CogVideoX transformer per denoising step
and the VAE's tiled decode, per dtype and offload strategy, with the issue's goals as PASS/FAIL; and issue 10's
calls: the transformer step with a LoRA loaded unfused, and an image-to-video pipeline call.

    python benchmarks/bench_gpu.py --out DIR [--model 2b|5b] [--dtypes bfloat16 float16]
        [--strategies none model sequential group] [--steps 3] [--warmup 1] [--no-vae] [--no-tiled-attention]
        [--no-lora] [--no-i2v] [--i2v-calls 1]
        [--budget-s S] [--work DIR] [--torch-python PY] [--cvx-python PY] [--cvx-device cuda] [--tiny]

What runs (each in its own child process, so that peaks and allocator caches are clean):
  * make-models (torch): diffusers' CogVideoXTransformer3DModel with the released 2b config (5b: 48 heads, 42
    layers, RoPE) and AutoencoderKLCogVideoX with the released VAE config, random init (torch.manual_seed(--seed),
    diffusers' own initialisation, built on the GPU), cast to bfloat16 and saved with save_pretrained. Both sides
    load these same files (float16 runs convert them at load, both sides alike).
  * transformer (one child per side and dtype): the inputs of one denoising step of the 49-frame 480x720 pipeline
    with guidance, latents [2, 13, 16, 60, 90], text [2, 226, 4096], timestep [999, 999] (seeded N(0, 1)); per
    strategy a fresh load, --warmup untimed steps (the first one is also reported: for model offload it is the
    step that brings the component in), then --steps timed steps (median; stops early after --strategy-cap-s with
    at least one). Strategies, done as diffusers' pipelines do them, on the model alone:
      none        diffusers: model.to(device)                 ours: model.to(device)
      model       accelerate.cpu_offload_with_hook             ours: the "model" residency (what
                  (= enable_model_cpu_offload's hook)                 enable_model_cpu_offload installs)
      sequential  accelerate.cpu_offload(model, device)        ours: "sequential" residency, prefetch 1 (what
                  (= enable_sequential_cpu_offload)                  enable_sequential_cpu_offload installs)
      group       diffusers model.enable_group_offload(leaf_level, use_stream=True): diffusers' fastest streaming
                  (diffusers only; compared with our sequential)
    A pipeline around the transformer was not used: diffusers' would need a real T5 and tokenizer, and timing only
    the transformer calls is what the per-step numbers mean; the hooks are the ones its pipelines install.
    Attention: diffusers calls PyTorch SDPA (flash on Hopper); ours runs its flash kernel, and once more with
    CVX_CUDA_ATTENTION=tiled (the cuBLAS-tiled twin; strategy none).
  * vae (one child per side, first dtype): tiled decode (enable_tiling() defaults) of latents [1, 16, 13, 60, 90]
    -> [1, 3, 49, 480, 720]; one untimed decode of 2 latent frames first, then one timed decode.
  * LoRA (first dtype; --no-lora skips it): the transformer children again with a rank-64 LoRA (lora_alpha 64) on
    every block's attn1 to_q / to_k / to_v / to_out.0 (peft's random init, saved by diffusers' save_lora_weights
    in make-models, bfloat16), loaded unfused with model.load_lora_adapter before the strategy's hooks; strategies
    none / model / sequential; the table also gives each side's step over its own step without the adapter.
  * i2v (first dtype; --no-i2v skips it): CogVideoXImageToVideoPipeline on a folder make-models writes (the
    benchmark's transformer config as 5b-I2V-style: in_channels 32, RoPE, a learned positional table sized to the
    request; the benchmark's VAE; a one-layer T5 of the text width, never run: the calls pass prompt_embeds and
    negative_prompt_embeds [1, 226, 4096]), a random 480x720 image, 13 frames, 2 steps, guidance 6, VAE
    enable_tiling(), output_type "np"; per strategy a fresh load and pipe.to(device) / enable_model_cpu_offload /
    enable_sequential_cpu_offload on both sides; one warm-up call (reported as the first), then --i2v-calls timed.
    diffusers' randn_tensor is replaced by NumPy draws (tests/reference/_reference_common.numpy_randn_tensor_into)
    so that both sides draw the same noise and the frames are compared.
  These children run after the first dtype's transformer and VAE children and before the tiled-attention twin and
  the second dtype (the budget skips what does not fit, last first).
Peaks: torch.cuda.max_memory_allocated (diffusers; reset before each strategy) and memory_stats(device)
["allocated_bytes.all.peak"] (ours; reset likewise): weights on the device + activations + staging.

Goals (issue 9): per step <= 0.8x diffusers (strategy none, each dtype); our sequential <= 1.15x our none; our
peak with sequential offload + tiling <= 3 GB for 2b (the larger of the transformer stage under sequential and the
tiled VAE decode; the T5 stage is not run here: streamed, one T5-XXL block is ~0.4 GB).

Output in --out: bench_gpu.md (tables), bench_gpu.json (every number and the environment), bench_gpu.png (plot;
needs matplotlib). The environment check runs first and says what each side lacks (diffusers and its
dependencies, accelerate, torch with CUDA, cogvideo_c with a CUDA device); a side that cannot run is reported, not
fatal. --tiny runs the whole flow with tiny configs (a CPU-only machine: diffusers on the CPU, ours on "cuda" if
built, else on "emu"), as the check of this script.

This parent process imports only the standard library and numpy (matplotlib for the plot at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _bench_common import import_cogvideo_c

HERE = Path(__file__).resolve()
GB = 1e9
STRATEGIES = ("none", "model", "sequential", "group")
DTYPES = ("bfloat16", "float16")
GOAL_STEP_RATIO = 0.8  # ours / diffusers per step, no offload
GOAL_SEQUENTIAL = 1.15  # our sequential / our none
GOAL_PEAK_BYTES = 3 * GB  # sequential + tiling, 2b

# diffusers' CogVideoXTransformer3DModel defaults are the released 2b config; 5b differs in these
MODELS = {
    "2b": {},
    "5b": {"num_attention_heads": 48, "num_layers": 42, "use_rotary_positional_embeddings": True},
}
TINY_TRANSFORMER = {
    "num_attention_heads": 2, "attention_head_dim": 16, "in_channels": 4, "out_channels": 4, "time_embed_dim": 32,
    "text_embed_dim": 32, "num_layers": 2, "sample_width": 8, "sample_height": 8, "sample_frames": 9,
}  # fmt: skip
TINY_VAE = {
    "down_block_types": ["CogVideoXDownBlock3D"] * 4, "up_block_types": ["CogVideoXUpBlock3D"] * 4,
    "block_out_channels": [8, 8, 8, 8], "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 2,
}  # fmt: skip
TINY_TILING = {"tile_sample_min_height": 32, "tile_sample_min_width": 32}  # smaller than the 64x64 frames
LORA_RANK = {False: 64, True: 4}  # tiny: rank 4 (the tiny blocks are 32 wide)
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # attn1 of every block, as CogVideoX fine-tunes are published
I2V = {"frames": 13, "steps": 2}  # the image-to-video call: 13 frames (4 latent frames) 480x720, 2 steps, CFG
I2V_STRATEGIES = ("none", "model", "sequential")


def sizes(tiny: bool) -> dict:
    """The run's shapes: pixels, latent frames, the transformer's inputs (CFG batch 2) and the VAE's latents."""
    if tiny:
        h, w, f, c, text_dim = 64, 64, 3, 4, 32
    else:
        h, w, f, c, text_dim = 480, 720, 13, 16, 4096  # 49 frames: (49 - 1) / 4 + 1 latent frames
    return {
        "height": h, "width": w, "latent_frames": f, "frames": 4 * (f - 1) + 1,
        "latents": [2, f, c, h // 8, w // 8], "text": [2, 226, text_dim], "vae_latents": [1, c, f, h // 8, w // 8],
    }  # fmt: skip


def transformer_config(args) -> dict:
    if args.tiny:
        return dict(TINY_TRANSFORMER, use_rotary_positional_embeddings=args.model == "5b")
    return dict(MODELS[args.model])


def i2v_sizes(tiny: bool) -> dict:
    """The image-to-video request: the benchmark's frame size, fewer frames (tiny: the tiny 9)."""
    s = sizes(tiny)
    frames = 9 if tiny else I2V["frames"]
    return {"height": s["height"], "width": s["width"], "num_frames": frames, "num_inference_steps": I2V["steps"]}


def i2v_transformer_config(args) -> dict:
    """The model's transformer as a 5b-I2V-style one: image latents beside the noise (in_channels x 2), RoPE and a
    learned positional table sized to the request (so that the table is used, not the sin-cos fallback)."""
    s, r = sizes(args.tiny), i2v_sizes(args.tiny)
    cfg = transformer_config(args)
    lat = 4 if args.tiny else 16
    cfg.update(in_channels=2 * lat, out_channels=lat, use_rotary_positional_embeddings=True,
               use_learned_positional_embeddings=True, sample_height=s["height"] // 8, sample_width=s["width"] // 8,
               sample_frames=r["num_frames"])  # fmt: skip
    return cfg


# ----------------------------------------------------------------------------------------------------------------
# environment
# ----------------------------------------------------------------------------------------------------------------

_TORCH_ENV = r"""
import importlib, importlib.util, json, sys
r = {"python": sys.version.split()[0], "missing": []}
# diffusers 0.42.1's requirements (METADATA Requires-Dist; importlib_metadata only before Python 3.8), accelerate for
# the offload hooks
for mod in ("filelock", "huggingface_hub", "numpy", "regex", "requests", "safetensors", "PIL",
            "accelerate", "diffusers", "torch"):
    if importlib.util.find_spec(mod) is None:
        r["missing"].append(mod)
for mod in ("torch", "diffusers", "accelerate", "huggingface_hub", "safetensors", "peft"):  # peft: the LoRA rows
    try:
        r[mod] = importlib.import_module(mod).__version__
    except Exception as e:
        r[mod + "_error"] = f"{type(e).__name__}: {e}"
try:
    import torch
    r["cuda"] = torch.cuda.is_available()
    if r["cuda"]:
        p = torch.cuda.get_device_properties(0)
        r["gpu"] = p.name
        r["gpu_memory_bytes"] = p.total_memory
        r["torch_cuda"] = torch.version.cuda
        r["sdpa_flash"] = torch.backends.cuda.flash_sdp_enabled()
except Exception:
    r["cuda"] = False
print(json.dumps(r))
"""

_CVX_ENV = r"""
import json, sys
sys.path.append(sys.argv[1])
r = {"python": sys.version.split()[0]}
try:
    from _bench_common import import_cogvideo_c
    cvx = import_cogvideo_c(r)
    r["cogvideo_c"] = getattr(cvx, "__version__", "?")
    r["build_info"] = {k: v for k, v in cvx.build_info().items()}
except Exception as e:
    r["error"] = f"{type(e).__name__}: {e}"
print(json.dumps(r))
"""


def probe(python: str, code: str, *argv: str) -> dict:
    try:
        p = subprocess.run([python, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"{python}: {e}"}
    if p.returncode != 0:
        return {"error": f"{python} exited {p.returncode}: {p.stderr.strip()[-800:]}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def check_environment(args) -> dict:
    """What each side has; sets args.torch_device / args.cvx_device, or marks a side unavailable with the reason."""
    tenv = probe(args.torch_python, _TORCH_ENV)
    cenv = probe(args.cvx_python, _CVX_ENV, str(HERE.parent))
    env = {"torch_side": tenv, "cvx_side": cenv, "torch_python": args.torch_python, "cvx_python": args.cvx_python}
    problems = {}
    if "error" in tenv:
        problems["diffusers"] = tenv["error"]
    elif tenv["missing"]:
        lacks = ", ".join(tenv["missing"])
        problems["diffusers"] = f"{args.torch_python} lacks {lacks} (carry them: benchmarks/prepare_gpu_carry.sh)"
    elif not tenv.get("cuda") and not args.tiny:
        problems["diffusers"] = "torch sees no CUDA device (use --tiny on a machine without a GPU)"
    args.torch_device = "cuda" if tenv.get("cuda") else "cpu"
    info = cenv.get("build_info", {})
    if "error" in cenv:
        problems["ours"] = cenv["error"]
    elif args.cvx_device == "cuda" and not info.get("cuda"):
        if args.tiny:
            args.cvx_device = "emu"
            env["note"] = "cogvideo_c has no CUDA device here: ours runs on the emulated accelerator (emu)"
        else:
            problems["ours"] = f"cogvideo_c build_info()['cuda'] is False ({info}): no CUDA kernels or no GPU"
    env["torch_device"], env["cvx_device"], env["problems"] = args.torch_device, args.cvx_device, problems
    print("environment:")
    print(f"  diffusers side ({args.torch_python}): " + json.dumps(tenv))
    print(f"  cogvideo_c side ({args.cvx_python}): " + json.dumps(cenv))
    for side, why in problems.items():
        print(f"  !! {side} cannot run: {why}")
    if env.get("note"):
        print("  note: " + env["note"])
    return env


# ----------------------------------------------------------------------------------------------------------------
# children
# ----------------------------------------------------------------------------------------------------------------


def child_make_models(args) -> None:
    import diffusers
    import torch
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

    diffusers.utils.logging.set_verbosity_error()
    work = Path(args.work)
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    with torch.device(args.torch_device), torch.no_grad():  # diffusers' own init, run on the GPU (seconds, not minutes)
        tr = CogVideoXTransformer3DModel(**transformer_config(args)).eval()
        tr.to("cpu", torch.bfloat16).save_pretrained(work / "transformer", safe_serialization=True)
        n_tr = sum(p.numel() for p in tr.parameters())
        res = {"transformer_parameters": n_tr}
        try:
            res["lora_bytes"] = _make_lora(args, tr, work / "lora")
        except Exception as e:  # peft missing or an API change: the LoRA rows say why, the rest runs
            res["lora_error"] = f"{type(e).__name__}: {e}"
        del tr
        vae = AutoencoderKLCogVideoX(**(TINY_VAE if args.tiny else {})).eval()
        vae.to("cpu", torch.bfloat16).save_pretrained(work / "vae", safe_serialization=True)
        n_vae = res["vae_parameters"] = sum(p.numel() for p in vae.parameters())
        try:
            res["i2v_transformer_parameters"] = _make_i2v(args, vae, work / "i2v")
        except Exception as e:
            res["i2v_error"] = f"{type(e).__name__}: {e}"
    res["seconds"] = time.perf_counter() - t0
    print(
        f"[make-models] transformer {n_tr:,} and VAE {n_vae:,} parameters (bfloat16) in {res['seconds']:.1f} s; "
        + ", ".join(f"{k} {v}" for k, v in res.items() if k.endswith(("_error", "i2v_transformer_parameters")))
    )
    Path(args.result).write_text(json.dumps(res))


def _make_lora(args, tr, folder: Path) -> int:
    """A rank-64 LoRA on every block's attention projections (peft's random init: init_lora_weights=False gives
    nn.Linear's init to both A and B, an update of a fraction of the input's scale), saved by diffusers'
    save_lora_weights in bfloat16; the adapter is removed again."""
    import torch
    from diffusers import CogVideoXPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    r = LORA_RANK[args.tiny]
    tr.add_adapter(LoraConfig(r=r, lora_alpha=r, target_modules=LORA_TARGETS, init_lora_weights=False), "bench")
    sd = {k: v.detach().to("cpu", torch.bfloat16).contiguous() for k, v in
          get_peft_model_state_dict(tr, adapter_name="bench").items()}  # fmt: skip
    CogVideoXPipeline.save_lora_weights(str(folder), transformer_lora_layers=sd)
    tr.delete_adapters("bench")
    return sum(v.numel() * v.element_size() for v in sd.values())


def _make_i2v(args, vae, folder: Path) -> int:
    """A CogVideoXImageToVideoPipeline folder: the i2v transformer (i2v_transformer_config), the benchmark's VAE, a
    one-layer T5 of the text width (the calls pass prompt_embeds: it is never run) and the fixtures' tokenizer."""
    import torch
    import transformers
    from bench_pipelines import SCHEDULER, TOKENIZER
    from diffusers import CogVideoXDDIMScheduler, CogVideoXImageToVideoPipeline, CogVideoXTransformer3DModel

    tr = CogVideoXTransformer3DModel(**i2v_transformer_config(args)).eval()
    with open(TOKENIZER.parent / "text_encoder" / "config.json") as f:
        vocab = json.load(f)["vocab_size"]
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=vocab, d_model=sizes(args.tiny)["text"][2], d_kv=64, num_heads=2, d_ff=64, num_layers=1,
        is_encoder_decoder=False, use_cache=False)).eval()  # fmt: skip
    pipe = CogVideoXImageToVideoPipeline(
        tokenizer=transformers.AutoTokenizer.from_pretrained(str(TOKENIZER)), text_encoder=t5, vae=vae,
        transformer=tr, scheduler=CogVideoXDDIMScheduler(**SCHEDULER))  # fmt: skip
    pipe.to("cpu", torch.bfloat16).save_pretrained(str(folder), safe_serialization=True)
    return sum(p.numel() for p in tr.parameters())


class _Steps:
    """Times `call` (which returns when the device is done): warm-up calls (the first also reported alone), then up
    to `steps` timed calls, stopping after `cap_s` once one is timed."""

    def __init__(self, args):
        self.args = args

    def run(self, call) -> dict:
        a = self.args
        t0 = time.perf_counter()
        out = call()
        first = time.perf_counter() - t0
        for _ in range(a.warmup - 1):
            out = call()
        times, start = [], time.perf_counter()
        for _ in range(a.steps):
            t0 = time.perf_counter()
            out = call()
            times.append(time.perf_counter() - t0)
            if time.perf_counter() - start > a.strategy_cap_s:
                break
        return {"first_call_s": first, "times_s": times, "step_s": statistics.median(times), "out": out}


def _finish(res: dict, out, work: Path, tag: str, keep_output: bool) -> None:
    out = np.ascontiguousarray(out, dtype=np.float32)
    res.update(out_shape=list(out.shape), out_finite=bool(np.isfinite(out).all()), out_absmax=float(np.abs(out).max()))
    if keep_output:
        np.save(work / f"out_{tag}.npy", out)


def _torch_rope(model, s, device):
    """The rotary tables as CogVideoXPipeline._prepare_rotary_positional_embeddings builds them (None for 2b)."""
    cfg = model.config
    if not cfg.use_rotary_positional_embeddings:
        return None
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    p = cfg.patch_size
    grid = (s["height"] // (8 * p), s["width"] // (8 * p))
    crops = get_resize_crop_region_for_grid(grid, cfg.sample_width // p, cfg.sample_height // p)
    return get_3d_rotary_pos_embed(cfg.attention_head_dim, crops, grid, s["latent_frames"], device=device)


def _torch_strategy(args, strategy: str, inputs: tuple) -> dict:
    """One strategy on a freshly loaded diffusers transformer (the hooks of an earlier one never carry over)."""
    import torch
    from diffusers import CogVideoXTransformer3DModel

    dev, dtype, work = args.torch_device, getattr(torch, args.dtype), Path(args.work)
    cuda = dev == "cuda"
    h, e, t = inputs
    rec: dict = {}
    model = CogVideoXTransformer3DModel.from_pretrained(work / "transformer", torch_dtype=dtype).eval()
    if args.lora:  # unfused, before the strategy's hooks (as a pipeline's load_lora_weights before offloading)
        model.load_lora_adapter(str(work / "lora"), prefix="transformer", adapter_name="bench",
                                weight_name="pytorch_lora_weights.safetensors")  # fmt: skip
    rot = _torch_rope(model, sizes(args.tiny), dev)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    hook = None
    if strategy == "none":
        model.to(dev)
    elif strategy == "model":
        from accelerate import cpu_offload_with_hook

        model, hook = cpu_offload_with_hook(model, dev)
    elif strategy == "sequential":
        from accelerate import cpu_offload

        cpu_offload(model, dev, offload_buffers=len(model._parameters) > 0)  # as the pipeline calls it
    else:
        model.enable_group_offload(dev, offload_type="leaf_level", use_stream=cuda)
    rec["device_bytes_before_first_step"] = torch.cuda.memory_allocated() if cuda else None

    def step():
        out = model(hidden_states=h, encoder_hidden_states=e, timestep=t, image_rotary_emb=rot, return_dict=False)[0]
        if cuda:
            torch.cuda.synchronize()
        return out

    timed = _Steps(args).run(step)
    out = timed.pop("out").float().cpu().numpy()
    rec.update(timed)
    rec["peak_bytes"] = torch.cuda.max_memory_allocated() if cuda else None
    _finish(rec, out, work, f"tr_{'lora_' if args.lora else ''}diffusers_{args.dtype}_{strategy}", strategy == "none")
    if hook is not None:
        hook.offload()
    return rec


def child_transformer_torch(args) -> None:
    import gc

    import diffusers
    import torch

    diffusers.utils.logging.set_verbosity_error()
    torch.set_grad_enabled(False)
    dev, dtype = args.torch_device, getattr(torch, args.dtype)
    res = {"side": "diffusers", "dtype": args.dtype, "device": dev, "strategies": {}}
    res["version"] = f"torch {torch.__version__}, diffusers {diffusers.__version__}"
    with np.load(Path(args.work) / "inputs.npz") as f:
        h, e = (torch.from_numpy(f[k]).to(dev, dtype) for k in ("latents", "text"))
        t = torch.from_numpy(f["timestep"]).to(dev)
    for strategy in args.strategies:
        try:
            rec = _torch_strategy(args, strategy, (h, e, t))
        except Exception as err:  # one strategy failing (e.g. an API change) must not lose the others
            rec = {"error": f"{type(err).__name__}: {err}"}
        res["strategies"][strategy] = rec
        gc.collect()
        print(f"[diffusers {args.dtype} {strategy}] " + _brief(rec), flush=True)
        Path(args.result).write_text(json.dumps(res))  # after each strategy: a timeout keeps the ones done


_POLICIES = {"none": ("none", 0), "model": ("model", 0), "sequential": ("sequential", 1)}


def _cvx_strategy(args, cvx, strategy: str, inputs: tuple, attention: str) -> dict:
    """One strategy on a freshly loaded cogvideo_c transformer, its residency set as the pipeline's hooks set it."""
    from cogvideo_c.offload import resolve_device, set_residency

    dev, work = args.cvx_device, Path(args.work)
    h, e, t = inputs
    s = sizes(args.tiny)
    rec: dict = {}
    model = cvx.CogVideoXTransformer3DModel.from_pretrained(str(work / "transformer"), torch_dtype=args.dtype)
    if args.lora:  # unfused: its low-rank weights join their block's group (they stream with it)
        model.load_lora_adapter(str(work / "lora"), prefix="transformer", adapter_name="bench",
                                weight_name="pytorch_lora_weights.safetensors")  # fmt: skip
        rec["lora_bytes"] = model.lora_bytes
    rot = None
    if model.config.use_rotary_positional_embeddings:
        rot = model.rotary_positional_embeddings(s["height"], s["width"], s["latent_frames"])
    set_residency(model, resolve_device(dev), *_POLICIES[strategy])  # "cuda" -> "cuda:0", as model.to() resolves it
    rec["device_bytes_before_first_step"] = cvx.memory_allocated(dev)
    cvx.reset_peak_memory_stats(dev)
    timed = _Steps(args).run(lambda: model(h, e, t, image_rotary_emb=rot).sample)
    out = timed.pop("out")
    rec.update(timed)
    rec["peak_bytes"] = cvx.max_memory_allocated(dev)
    rec["memory_stats"] = dict(cvx.memory_stats(dev))
    tag = f"tr_{'lora_' if args.lora else ''}ours{'_tiled' if attention == 'tiled' else ''}_{args.dtype}_{strategy}"
    _finish(rec, out, work, tag, strategy == "none")
    model.to("cpu")
    return rec


def child_transformer_cvx(args) -> None:
    res = {"side": "ours", "dtype": args.dtype, "device": args.cvx_device, "strategies": {}}
    cvx = import_cogvideo_c(res)
    res["version"] = f"cogvideo_c {cvx.__version__}"
    attention = res["attention"] = os.environ.get("CVX_CUDA_ATTENTION", "flash")
    with np.load(Path(args.work) / "inputs.npz") as f:
        inputs = (f["latents"], f["text"], f["timestep"])
    for strategy in args.strategies:
        if strategy not in _POLICIES:
            rec = {"skipped": "diffusers only (compared with our sequential)"}
        else:
            try:
                rec = _cvx_strategy(args, cvx, strategy, inputs, attention)
            except Exception as err:
                rec = {"error": f"{type(err).__name__}: {err}"}
        res["strategies"][strategy] = rec
        print(f"[ours {attention} {args.dtype} {strategy}] " + _brief(rec), flush=True)
        Path(args.result).write_text(json.dumps(res))  # after each strategy: a timeout keeps the ones done


def child_vae(args) -> None:
    work = Path(args.work)
    with np.load(work / "inputs.npz") as f:
        z = f["vae_latents"]
    tiling = TINY_TILING if args.tiny else {}
    res = {"side": args.side, "dtype": args.dtype, "tiling": tiling or "enable_tiling() defaults"}
    warm = z[:, :, :2].copy()  # 2 latent frames: every kernel and handle once, before the timed decode
    if args.side == "diffusers":
        import diffusers
        import torch
        from diffusers import AutoencoderKLCogVideoX

        diffusers.utils.logging.set_verbosity_error()
        torch.set_grad_enabled(False)
        dev, cuda = args.torch_device, args.torch_device == "cuda"
        res["device"], res["version"] = dev, f"torch {torch.__version__}, diffusers {diffusers.__version__}"
        dtype = getattr(torch, args.dtype)
        vae = AutoencoderKLCogVideoX.from_pretrained(work / "vae", torch_dtype=dtype).eval().to(dev)
        vae.enable_tiling(**tiling)

        def decode(x):
            out = vae.decode(torch.from_numpy(x).to(dev, dtype)).sample
            if cuda:
                torch.cuda.synchronize()
            return out

        decode(warm)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        res["weights_bytes"] = sum(p.numel() * p.element_size() for p in vae.parameters())
        t0 = time.perf_counter()
        out = decode(z)
        res["decode_s"] = time.perf_counter() - t0
        res["peak_bytes"] = torch.cuda.max_memory_allocated() if cuda else None
        out = out.float().cpu().numpy()
    else:
        cvx = import_cogvideo_c(res)
        dev = res["device"] = args.cvx_device
        res["version"] = f"cogvideo_c {cvx.__version__}"
        vae = cvx.AutoencoderKLCogVideoX.from_pretrained(str(work / "vae"), torch_dtype=args.dtype)
        vae.to(dev)
        vae.enable_tiling(**tiling)
        vae.decode(warm)
        cvx.reset_peak_memory_stats(dev)
        res["weights_bytes"] = vae.weight_bytes
        t0 = time.perf_counter()
        out = vae.decode(z).sample
        res["decode_s"] = time.perf_counter() - t0
        res["peak_bytes"] = cvx.max_memory_allocated(dev)
        res["memory_stats"] = dict(cvx.memory_stats(dev))
        vae.to("cpu")
    _finish(res, out, work, f"vae_{args.side}_{args.dtype}", True)
    print(f"[vae {args.side} {args.dtype}] decode {res['decode_s']:.3f} s, peak {_gib(res['peak_bytes'])}", flush=True)
    Path(args.result).write_text(json.dumps(res))


def _pipeline_strategy(pipe, strategy: str, dev: str) -> None:
    """The strategy through the pipeline's own methods (the same names on both sides)."""
    if strategy == "none":
        pipe.to(dev)
    elif strategy == "model":
        pipe.enable_model_cpu_offload(device=dev)
    else:
        pipe.enable_sequential_cpu_offload(device=dev)


def _i2v_call_torch(args, strategy: str, image, embeds) -> dict:
    """One strategy on a freshly loaded diffusers CogVideoXImageToVideoPipeline, offloaded as its methods do."""
    import torch
    from diffusers import CogVideoXImageToVideoPipeline

    dev, cuda = args.torch_device, args.torch_device == "cuda"
    dtype = getattr(torch, args.dtype)
    pipe = CogVideoXImageToVideoPipeline.from_pretrained(str(Path(args.work) / "i2v"), torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    if not args.tiny:  # (the tiny 32-pixel tiles do not give whole latents of a 64-pixel image, in either)
        pipe.vae.enable_tiling()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    _pipeline_strategy(pipe, strategy, dev)
    pos, neg = (torch.from_numpy(x).to(dev, dtype) for x in embeds)

    def call():
        gen = np.random.default_rng(args.seed)
        out = pipe(image=image, prompt_embeds=pos, negative_prompt_embeds=neg, generator=gen, output_type="np",
                   **i2v_sizes(args.tiny)).frames  # fmt: skip
        if cuda:
            torch.cuda.synchronize()
        return out

    rec = _Steps(args).run(call)
    rec["peak_bytes"] = torch.cuda.max_memory_allocated() if cuda else None
    pipe.maybe_free_model_hooks()
    return rec


def _i2v_call_cvx(args, cvx, strategy: str, image, embeds) -> dict:
    """One strategy on a freshly loaded cogvideo_c CogVideoXImageToVideoPipeline, with the same methods."""
    dev = args.cvx_device
    pipe = cvx.CogVideoXImageToVideoPipeline.from_pretrained(str(Path(args.work) / "i2v"), torch_dtype=args.dtype)
    pipe.set_progress_bar_config(disable=True)
    if not args.tiny:  # (the tiny 32-pixel tiles do not give whole latents of a 64-pixel image, in either)
        pipe.vae.enable_tiling()
    cvx.reset_peak_memory_stats(dev)
    _pipeline_strategy(pipe, strategy, dev)
    pos, neg = embeds
    rec = _Steps(args).run(lambda: pipe(image=image, prompt_embeds=pos, negative_prompt_embeds=neg,
                                        generator=np.random.default_rng(args.seed), output_type="np",
                                        **i2v_sizes(args.tiny)).frames)  # fmt: skip
    rec["peak_bytes"] = cvx.max_memory_allocated(dev)
    rec["memory_stats"] = dict(cvx.memory_stats(dev))
    if strategy == "none":
        pipe.to("cpu")
    return rec


def child_i2v(args) -> None:
    """The image-to-video call (prompt embeddings given: the T5 stage is the text-to-video one, benchmarked there)
    per strategy, each on a fresh load; one warm-up call (reported as the first), then --i2v-calls timed ones."""
    import PIL.Image

    args.steps = args.i2v_calls  # the timed calls per strategy (_Steps' count)
    work = Path(args.work)
    res = {"side": args.side, "dtype": args.dtype, "request": i2v_sizes(args.tiny), "strategies": {}}
    with np.load(work / "inputs.npz") as f:
        image = PIL.Image.fromarray(f["image"])
        embeds = (np.ascontiguousarray(f["text"][:1]), np.ascontiguousarray(f["text"][1:]))
    if args.side == "diffusers":
        import diffusers
        import torch

        sys.path.insert(0, str(HERE.parent.parent / "tests" / "reference"))
        from diffusers.models.autoencoders import vae as vae_module
        from diffusers.pipelines.cogvideo import pipeline_cogvideox_image2video

        from _reference_common import numpy_randn_tensor_into

        # the same NumPy draws as ours from the same seed (the fixtures' way): the frames can be compared
        numpy_randn_tensor_into((vae_module, pipeline_cogvideox_image2video), [])
        diffusers.utils.logging.set_verbosity_error()
        torch.set_grad_enabled(False)
        res["version"] = f"torch {torch.__version__}, diffusers {diffusers.__version__}"
        run = lambda strategy: _i2v_call_torch(args, strategy, image, embeds)  # noqa: E731
    else:
        cvx = import_cogvideo_c(res)
        res["version"] = f"cogvideo_c {cvx.__version__}"
        run = lambda strategy: _i2v_call_cvx(args, cvx, strategy, image, embeds)  # noqa: E731
    for strategy in args.strategies:
        try:
            rec = run(strategy)
            out = rec.pop("out")
            _finish(rec, out, work, f"i2v_{args.side}_{args.dtype}_{strategy}", strategy == "none")
        except Exception as err:
            rec = {"error": f"{type(err).__name__}: {err}"}
        res["strategies"][strategy] = rec
        print(f"[i2v {args.side} {args.dtype} {strategy}] " + _brief(rec), flush=True)
        Path(args.result).write_text(json.dumps(res))


def _gib(b) -> str:
    return "n/a" if b is None else f"{b / 2**30:.2f} GiB"


def _brief(rec: dict) -> str:
    if "error" in rec:
        return "error"
    if "step_s" not in rec:
        return rec.get("skipped", "?")
    return (
        f"first {rec['first_call_s']:.3f} s, step {rec['step_s']:.3f} s (median of {len(rec['times_s'])}), "
        f"peak {_gib(rec['peak_bytes'])}"
    )


# ----------------------------------------------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------------------------------------------


class Budget:
    """The wall-clock budget of the whole benchmark: each child gets min(its cap, what is left)."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds if seconds > 0 else None

    def left(self) -> float:
        return float("inf") if self.end is None else self.end - time.monotonic()


def run_child(args, budget: Budget, name: str, python: str, child: list[str], cap_s: float, env=None) -> dict:
    """Runs this script as a child; returns its result JSON, or {"error": ...} (failed, timed out, no time left)."""
    left = budget.left()
    timeout = min(cap_s, left)
    if timeout < 15:
        print(f"== {name}: skipped ({left:.0f} s of the budget left)", flush=True)
        return {"error": f"skipped: {max(left, 0):.0f} s of the time budget left"}
    result = Path(args.work) / f"res_{name}.json"
    result.unlink(missing_ok=True)
    cmd = [python, str(HERE), *child, "--work", args.work, "--result", str(result), "--seed", str(args.seed)]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--strategy-cap-s", str(args.strategy_cap_s)]
    cmd += ["--model", args.model, "--torch-device", args.torch_device, "--cvx-device", args.cvx_device]
    cmd += ["--tiny"] if args.tiny else []
    print(f"== {name} (timeout {timeout:.0f} s): {' '.join(cmd)}", flush=True)
    t0 = time.monotonic()
    try:
        failure = None
        p = subprocess.run(cmd, env=dict(os.environ, **(env or {})), timeout=timeout)
        if p.returncode != 0:
            failure = f"exit status {p.returncode} (see the log)"
    except subprocess.TimeoutExpired:
        failure = f"timed out after {timeout:.0f} s"
    wall = time.monotonic() - t0
    if failure:
        print(f"!! {name}: {failure}", flush=True)
    if not result.is_file():
        return {"error": failure or "no result written", "wall_s": wall}
    res = json.loads(result.read_text())  # a child that failed late keeps what it finished
    res["wall_s"] = wall
    if failure:
        res["error"] = failure
    return res


def agreement(work: Path, ref_tag: str, tag: str):
    """max |ours - diffusers| / max |diffusers| on the saved outputs, or None."""
    a, b = work / f"out_{ref_tag}.npy", work / f"out_{tag}.npy"
    if not (a.is_file() and b.is_file()):
        return None
    ref, got = np.load(a).astype(np.float64), np.load(b).astype(np.float64)
    if ref.shape != got.shape:
        return f"shape {list(got.shape)} != {list(ref.shape)}"
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


def _step(res: dict, strategy: str):
    """(median step, peak, record) of one strategy; a strategy the child never reached carries the child's error."""
    rec = res.get("strategies", {}).get(strategy)
    if rec is None:
        rec = {"error": res["error"]} if "error" in res else {}
    return rec.get("step_s"), rec.get("peak_bytes"), rec


def _verdict(ok) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def summarise(args, env: dict, results: dict) -> dict:
    """The rows of the tables and the goals, from the children's results."""
    work = Path(args.work)
    rows, goals = [], []
    for dtype in args.dtypes:
        ref, ours = results.get(f"tr_diffusers_{dtype}", {}), results.get(f"tr_ours_{dtype}", {})
        tiled = results.get(f"tr_ours_tiled_{dtype}", {})
        for strategy in args.strategies:
            d_step, d_peak, d_rec = _step(ref, strategy)
            # diffusers' group offload (leaf level, streams) against our one streaming mode
            o_step, o_peak, o_rec = _step(ours, "sequential" if strategy == "group" else strategy)
            row = {
                "dtype": dtype,
                "strategy": strategy,
                "diffusers_step_s": d_step,
                "ours_step_s": o_step,
                "diffusers_peak_bytes": d_peak,
                "ours_peak_bytes": o_peak,
                "diffusers_first_s": d_rec.get("first_call_s"),
                "ours_first_s": o_rec.get("first_call_s"),
                "errors": {k: v["error"] for k, v in (("diffusers", d_rec), ("ours", o_rec)) if "error" in v},
            }
            # fmt: skip
            row["time_ratio"] = o_step / d_step if d_step and o_step else None
            row["peak_ratio"] = o_peak / d_peak if d_peak and o_peak else None
            rows.append(row)
        d_none, _, _ = _step(ref, "none")
        o_none, _, _ = _step(ours, "none")
        o_seq, o_seq_peak, _ = _step(ours, "sequential")
        t_none, _, _ = _step(tiled, "none")
        ratio = o_none / d_none if o_none and d_none else None
        goals.append({"dtype": dtype, "goal": f"per step (no offload) <= {GOAL_STEP_RATIO}x diffusers (SDPA)",
                      "measured": ratio, "pass": None if ratio is None else ratio <= GOAL_STEP_RATIO})  # fmt: skip
        if t_none and d_none:
            goals.append({"dtype": dtype, "goal": "(info) tiled-twin attention, per step / diffusers",
                          "measured": t_none / d_none, "pass": None})  # fmt: skip
        ratio = o_seq / o_none if o_seq and o_none else None
        goals.append({"dtype": dtype, "goal": f"our sequential offload <= {GOAL_SEQUENTIAL}x our no-offload step",
                      "measured": ratio, "pass": None if ratio is None else ratio <= GOAL_SEQUENTIAL})  # fmt: skip
        d_seq, _, _ = _step(ref, "sequential")
        if d_seq and d_none:
            goals.append({"dtype": dtype, "goal": "(info) diffusers' sequential / its no-offload step",
                          "measured": d_seq / d_none, "pass": None})  # fmt: skip
        for b in ("ours", "ours_tiled"):
            diff = agreement(work, f"tr_diffusers_{dtype}_none", f"tr_{b}_{dtype}_none")
            if diff is not None:
                goals.append({"dtype": dtype, "goal": f"(info) max abs({b} - diffusers) / max abs(diffusers), one step",
                              "measured": diff, "pass": None})  # fmt: skip
    vae = {side: results.get(f"vae_{side}", {}) for side in ("diffusers", "ours")}
    vdt = args.dtypes[0]
    vae_diff = agreement(work, f"vae_diffusers_{vdt}", f"vae_ours_{vdt}")
    if vae_diff is not None:
        goals.append({"dtype": vdt, "goal": "(info) VAE max abs(ours - diffusers) / max abs(diffusers)",
                      "measured": vae_diff, "pass": None})  # fmt: skip
    ours_seq = results.get(f"tr_ours_{vdt}", {}).get("strategies", {}).get("sequential", {}).get("peak_bytes")
    ours_vae = vae["ours"].get("peak_bytes")
    if args.model == "2b" and not args.tiny:
        peak = max(ours_seq, ours_vae) if ours_seq and ours_vae else None
        goals.append({"dtype": vdt, "goal": "our peak, sequential offload + VAE tiling <= 3 GB (2b; T5 stage not run)",
                      "measured": peak, "pass": None if peak is None else peak <= GOAL_PEAK_BYTES})  # fmt: skip
    extra = _issue10_rows(args, results, goals)
    return {"rows": rows, "goals": goals, "vae": vae, **extra}


def _pair_row(strategy: str, ref: dict, ours: dict) -> dict:
    d_step, d_peak, d_rec = _step(ref, strategy)
    o_step, o_peak, o_rec = _step(ours, strategy)
    return {"strategy": strategy, "diffusers_s": d_step, "ours_s": o_step, "diffusers_peak_bytes": d_peak,
            "ours_peak_bytes": o_peak, "diffusers_first_s": d_rec.get("first_call_s"),
            "ours_first_s": o_rec.get("first_call_s"),
            "time_ratio": o_step / d_step if d_step and o_step else None,
            "peak_ratio": o_peak / d_peak if d_peak and o_peak else None,
            "errors": {k: v["error"] for k, v in (("diffusers", d_rec), ("ours", o_rec)) if "error" in v}}  # fmt: skip


def _issue10_rows(args, results: dict, goals: list) -> dict:
    """The LoRA step and the image-to-video call (first dtype): rows per strategy and (info) goals."""
    work, vdt = Path(args.work), args.dtypes[0]
    out = {"lora_rows": [], "i2v_rows": []}
    make = results.get("make_models", {})
    ref, ours = results.get(f"tr_lora_diffusers_{vdt}"), results.get(f"tr_lora_ours_{vdt}")
    if ref is not None or ours is not None or "lora_error" in make:
        for strategy in (x for x in args.strategies if x in I2V_STRATEGIES):
            row = _pair_row(strategy, ref or {"error": make.get("lora_error", "not run")}, ours or {})
            base_d, _, _ = _step(results.get(f"tr_diffusers_{vdt}", {}), strategy)
            base_o, _, _ = _step(results.get(f"tr_ours_{vdt}", {}), strategy)
            row["diffusers_vs_base"] = row["diffusers_s"] / base_d if row["diffusers_s"] and base_d else None
            row["ours_vs_base"] = row["ours_s"] / base_o if row["ours_s"] and base_o else None
            out["lora_rows"].append(row)
        diff = agreement(work, f"tr_lora_diffusers_{vdt}_none", f"tr_lora_ours_{vdt}_none")
        _info_goals(goals, vdt, "LoRA unfused step", out["lora_rows"], diff)
    ref, ours = results.get("i2v_diffusers"), results.get("i2v_ours")
    if ref is not None or ours is not None or "i2v_error" in make:
        for strategy in (x for x in args.strategies if x in I2V_STRATEGIES):
            out["i2v_rows"].append(_pair_row(strategy, ref or {"error": make.get("i2v_error", "not run")}, ours or {}))
        diff = agreement(work, f"i2v_diffusers_{vdt}_none", f"i2v_ours_{vdt}_none")
        _info_goals(goals, vdt, "image-to-video call", out["i2v_rows"], diff)
    return out


def _info_goals(goals: list, dtype: str, what: str, rows: list, diff) -> None:
    """(info) lines: the first row's time ratio (strategy none) and the outputs' agreement."""
    ratio = next((r["time_ratio"] for r in rows if r["strategy"] == "none"), None)
    goals.append({"dtype": dtype, "goal": f"(info) {what}, ours / diffusers (no offload)", "measured": ratio,
                  "pass": None})  # fmt: skip
    if diff is not None:
        goals.append({"dtype": dtype, "goal": f"(info) {what}, max abs(ours - diffusers) / max abs(diffusers)",
                      "measured": diff, "pass": None})  # fmt: skip


def _f(x, fmt="{:.3f}") -> str:
    return "–" if x is None else (x if isinstance(x, str) else fmt.format(x))


def _mib_or_dash(b) -> str:
    return "–" if b is None else f"{b / 2**20:,.1f}"


def markdown(args, env: dict, summary: dict) -> str:
    s = sizes(args.tiny)
    tenv = env["torch_side"]
    card = tenv.get("gpu", f"no GPU (torch on {env['torch_device']}, ours on {env['cvx_device']})")
    lines = [
        f"# CogVideoX-{args.model}{' (tiny configs)' if args.tiny else ''}: cogvideo_c vs diffusers on {card}",
        "",
        f"{s['frames']} frames {s['height']}x{s['width']}: transformer step on latents {s['latents']} (CFG batch 2),"
        f" text {s['text']}; random weights saved by diffusers (bfloat16), loaded by both; median of up to"
        f" {args.steps} steps after {args.warmup} warm-up. diffusers: {tenv.get('diffusers', '?')}, torch"
        f" {tenv.get('torch', '?')} (CUDA {tenv.get('torch_cuda', '-')}), SDPA attention; ours: flash attention"
        f" kernel. Peaks: torch.cuda.max_memory_allocated / memory_stats()['allocated_bytes.all.peak'].",
        "",
        "| dtype | strategy | diffusers s/step | ours s/step | ours / diffusers | diffusers first step (s) |"
        " ours first step (s) | diffusers peak (MiB) | ours peak (MiB) | peak ours / diffusers |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary["rows"]:
        label = r["strategy"] + (" (diffusers leaf+stream vs our sequential)" if r["strategy"] == "group" else "")
        lines.append(
            f"| {r['dtype']} | {label} | {_f(r['diffusers_step_s'])} | {_f(r['ours_step_s'])} | "
            f"{_f(r['time_ratio'], '{:.2f}x')} | {_f(r['diffusers_first_s'])} | {_f(r['ours_first_s'])} | "
            f"{_mib_or_dash(r['diffusers_peak_bytes'])} | {_mib_or_dash(r['ours_peak_bytes'])} | "
            f"{_f(r['peak_ratio'], '{:.2f}x')} |"
        )
    errors = [(r["dtype"], r["strategy"], side, e) for r in summary["rows"] for side, e in r["errors"].items()]
    vae = summary["vae"]
    if args.vae:
        lines += ["", f"VAE tiled decode, latents {s['vae_latents']} -> {s['frames']} frames, {args.dtypes[0]}:", ""]
        lines += ["| implementation | decode (s) | peak (MiB) | weights (MiB) |", "|---|---:|---:|---:|"]
    for side in ("diffusers", "ours") if args.vae else ():
        v = vae[side]
        if "error" in v:
            errors.append((args.dtypes[0], "vae", side, v["error"]))
        lines.append(
            f"| {side} | {_f(v.get('decode_s'))} | {_mib_or_dash(v.get('peak_bytes'))} | "
            f"{_mib_or_dash(v.get('weights_bytes'))} |"
        )
    lines += _issue10_markdown(args, summary, errors)
    lines += ["", "| dtype | goal | measured | result |", "|---|---|---:|---|"]
    for g in summary["goals"]:
        m = g["measured"]
        text = _f(m / GB, "{:.2f} GB") if "GB" in g["goal"] and isinstance(m, (int, float)) else _f(m, "{:.3g}")
        lines.append(f"| {g['dtype']} | {g['goal']} | {text} | {_verdict(g['pass'])} |")
    if env["problems"] or errors:
        lines += ["", "Not measured / failed:"]
        lines += [f"- {side}: {why}" for side, why in env["problems"].items()]
        lines += [f"- {dt} {st} {side}: {e}" for dt, st, side, e in errors]
    lines += ["", f"Command: `{' '.join(sys.argv)}`", ""]
    return "\n".join(lines)


def _issue10_markdown(args, summary: dict, errors: list) -> list[str]:
    """The LoRA step and image-to-video tables (errors appended to `errors`)."""
    vdt, lines = args.dtypes[0], []
    head = ("| strategy | diffusers (s) | ours (s) | ours / diffusers | diffusers first (s) | ours first (s) | "
            "diffusers peak (MiB) | ours peak (MiB) | peak ours / diffusers |")  # fmt: skip
    for key, title, extra in (
        ("lora_rows", f"Transformer step with a LoRA loaded unfused (rank {LORA_RANK[args.tiny]} on every block's "
         f"{', '.join(LORA_TARGETS)}; load_lora_adapter before the strategy's hooks), {vdt}, median of up to "
         f"{args.steps}; x base = the step without the adapter:", True),
        ("i2v_rows", f"Image-to-video call (CogVideoXImageToVideoPipeline, {json.dumps(i2v_sizes(args.tiny))}, "
         f"guidance 6, prompt embeddings given, VAE tiling{' off (--tiny)' if args.tiny else ''}; pipe.to / "
         f"enable_model_cpu_offload / enable_sequential_cpu_offload), {vdt}, median of {args.i2v_calls} after "
         "one warm-up call:", False),
    ):  # fmt: skip
        rows = summary.get(key) or []
        if not rows:
            continue
        lines += ["", title, "", head + (" diffusers x base | ours x base |" if extra else ""),
                  "|---|" + "---:|" * (8 + 2 * extra)]  # fmt: skip
        for r in rows:
            errors += [(vdt, f"{key[:-5]} {r['strategy']}", side, e) for side, e in r["errors"].items()]
            line = (f"| {r['strategy']} | {_f(r['diffusers_s'])} | {_f(r['ours_s'])} | {_f(r['time_ratio'], '{:.2f}x')}"
                    f" | {_f(r['diffusers_first_s'])} | {_f(r['ours_first_s'])} | "
                    f"{_mib_or_dash(r['diffusers_peak_bytes'])} | {_mib_or_dash(r['ours_peak_bytes'])} | "
                    f"{_f(r['peak_ratio'], '{:.2f}x')} |")  # fmt: skip
            if extra:
                line += f" {_f(r['diffusers_vs_base'], '{:.2f}x')} | {_f(r['ours_vs_base'], '{:.2f}x')} |"
            lines.append(line)
    return lines


def plot(path: Path, args, summary: dict) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        return f"no plot: {e}"
    rows = summary["rows"]
    short = {"bfloat16": "bf16", "float16": "f16"}
    labels = [f"{short[r['dtype']]}\n{r['strategy']}" for r in rows]
    x = np.arange(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.4 * len(rows)) * 1.6, 4.5))
    for ax, key, unit, scale in ((axes[0], "step_s", "s / step", 1.0), (axes[1], "peak_bytes", "peak MiB", 2**-20)):
        for i, (side, color) in enumerate((("diffusers", "tab:gray"), ("ours", "tab:blue"))):
            vals = [(r[f"{side}_{key}"] or 0) * scale for r in rows]
            ax.bar(x + (i - 0.5) * 0.38, vals, 0.38, label="diffusers" if side == "diffusers" else "cogvideo_c",
                   color=color)  # fmt: skip
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylabel(unit)
    if args.model == "2b" and not args.tiny:
        axes[1].axhline(GOAL_PEAK_BYTES / 2**20, color="tab:red", ls="--", lw=1, label="3 GB goal")
    for ax in axes:
        ax.legend()
    axes[0].set_title(f"CogVideoX-{args.model} transformer, one step (CFG batch 2)")
    axes[1].set_title("peak device memory")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return None


def parent(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget_s)
    env = check_environment(args)
    temp_work = args.work is None
    args.work = args.work or tempfile.mkdtemp(prefix="bench_gpu_")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    s = sizes(args.tiny)
    rng = np.random.default_rng(args.seed)
    np.savez(work / "inputs.npz", latents=rng.standard_normal(s["latents"], dtype=np.float32),
             text=rng.standard_normal(s["text"], dtype=np.float32), timestep=np.full(2, 999, dtype=np.int64),
             vae_latents=rng.standard_normal(s["vae_latents"], dtype=np.float32),
             image=rng.integers(0, 256, (s["height"], s["width"], 3), dtype=np.uint8))  # fmt: skip
    results: dict = {}
    torch_ok, cvx_ok = "diffusers" not in env["problems"], "ours" not in env["problems"]
    tp, cp = args.torch_python, args.cvx_python
    if torch_ok:
        results["make_models"] = run_child(args, budget, "make_models", tp, ["--child", "make-models"], 900)
    if "error" in results.get("make_models", {"error": "diffusers cannot run: no random checkpoint"}):
        print("!! no random checkpoint: nothing to measure", flush=True)
    else:
        strat = ["--strategies", *args.strategies]
        plan = []  # in order of importance: the first dtype's numbers and the VAE before the second dtype's
        for i, dtype in enumerate(args.dtypes):
            dt = ["--dtype", dtype]
            plan.append((f"tr_diffusers_{dtype}", torch_ok, tp, ["--child", "transformer-torch", *dt, *strat], None))
            plan.append((f"tr_ours_{dtype}", cvx_ok, cp, ["--child", "transformer-cvx", *dt, *strat], None))
            if i == 0 and args.vae:
                plan.append(("vae_diffusers", torch_ok, tp, ["--child", "vae", "--side", "diffusers", *dt], None))
                plan.append(("vae_ours", cvx_ok, cp, ["--child", "vae", "--side", "ours", *dt], None))
            # issue 10's calls, first dtype only, before the tiled twin and the second dtype (their numbers are owed)
            lora_ok = i == 0 and args.lora_bench and "lora_error" not in results["make_models"]
            lstrat = ["--strategies", *[x for x in args.strategies if x != "group"]]
            if lora_ok and len(lstrat) > 1:
                plan.append((f"tr_lora_diffusers_{dtype}", torch_ok, tp, ["--child", "transformer-torch", *dt, *lstrat,
                                                                          "--lora"], None))  # fmt: skip
                plan.append((f"tr_lora_ours_{dtype}", cvx_ok, cp, ["--child", "transformer-cvx", *dt, *lstrat,
                                                                   "--lora"], None))  # fmt: skip
            istrat = [x for x in args.strategies if x in I2V_STRATEGIES]
            if i == 0 and args.i2v and istrat and "i2v_error" not in results["make_models"]:
                for side, ok, py in (("diffusers", torch_ok, tp), ("ours", cvx_ok, cp)):
                    child = ["--child", "i2v", "--side", side, *dt, "--strategies", *istrat]
                    plan.append((f"i2v_{side}", ok, py, child + ["--i2v-calls", str(args.i2v_calls)], None))
            if args.tiled_attention and "none" in args.strategies:
                tiled = {"CVX_CUDA_ATTENTION": "tiled"}
                plan.append((f"tr_ours_tiled_{dtype}", cvx_ok, cp, ["--child", "transformer-cvx", *dt,
                                                                     "--strategies", "none"], tiled))  # fmt: skip
        for name, ok, python, child, extra_env in plan:
            if ok:
                results[name] = run_child(args, budget, name, python, child, args.child_cap_s, extra_env)
    summary = summarise(args, env, results)
    text = markdown(args, env, summary)
    (out / "bench_gpu.md").write_text(text)
    note = plot(out / "bench_gpu.png", args, summary)
    payload = {"args": {k: v for k, v in vars(args).items() if k not in ("child", "result")}, "environment": env,
               "sizes": s, "results": results, "summary": summary, "plot": note or "bench_gpu.png"}  # fmt: skip
    (out / "bench_gpu.json").write_text(json.dumps(payload, indent=1))
    if temp_work and not args.keep_work:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print()
    print(text)
    if note:
        print(note)
    measured = any("step_s" in rec for r in results.values() for rec in r.get("strategies", {}).values())
    return 0 if measured else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="folder for bench_gpu.md / .json / .png (required unless --child)")
    ap.add_argument("--model", choices=list(MODELS), default="2b")
    ap.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    ap.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    ap.add_argument("--steps", type=int, default=3, help="timed steps per strategy (the median is reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (>= 1; the first is reported)")
    ap.add_argument("--strategy-cap-s", type=float, default=45.0, help="stop timing a strategy after this (>= 1 step)")
    ap.add_argument("--child-cap-s", type=float, default=300.0, help="timeout of one child process")
    ap.add_argument("--budget-s", type=float, default=0.0, help="wall-clock budget of the whole run (0: none)")
    ap.add_argument("--no-vae", dest="vae", action="store_false", help="skip the VAE decode")
    ap.add_argument("--no-tiled-attention", dest="tiled_attention", action="store_false",
                    help="skip our run with the cuBLAS-tiled attention twin")  # fmt: skip
    ap.add_argument("--no-lora", dest="lora_bench", action="store_false",
                    help="skip the transformer step with a LoRA loaded unfused (first dtype)")  # fmt: skip
    ap.add_argument("--no-i2v", dest="i2v", action="store_false", help="skip the image-to-video call (first dtype)")
    ap.add_argument("--i2v-calls", type=int, default=1, help="timed image-to-video calls per strategy")
    ap.add_argument("--lora", action="store_true", help=argparse.SUPPRESS)  # a transformer child: with the LoRA
    ap.add_argument("--tiny", action="store_true", help="tiny configs: the whole flow in seconds, e.g. on a CPU")
    ap.add_argument("--work", default=None, help="folder for the checkpoints and outputs (default: a temp folder)")
    ap.add_argument("--keep-work", action="store_true", help="keep the temporary work folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--torch-python", default=sys.executable, help="interpreter with torch + diffusers")
    ap.add_argument("--cvx-python", default=sys.executable, help="interpreter with cogvideo_c")
    ap.add_argument("--cvx-device", default="cuda", choices=["cuda", "emu", "cpu"], help="where ours runs")
    ap.add_argument("--torch-device", default=None, help=argparse.SUPPRESS)  # set by the environment check
    ap.add_argument("--child", choices=["make-models", "transformer-torch", "transformer-cvx", "vae", "i2v"],
                    help=argparse.SUPPRESS)  # fmt: skip
    ap.add_argument("--side", choices=["diffusers", "ours"], help=argparse.SUPPRESS)
    ap.add_argument("--dtype", choices=DTYPES, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 1 or args.i2v_calls < 1:
        ap.error("--steps, --warmup and --i2v-calls must be >= 1")
    if args.child is None:
        if not args.out:
            ap.error("--out is required")
        if args.model == "5b" and args.tiny:
            print("note: --tiny with --model 5b: a tiny config with RoPE", file=sys.stderr)
        return parent(args)
    {"make-models": child_make_models, "transformer-torch": child_transformer_torch,
     "transformer-cvx": child_transformer_cvx, "vae": child_vae, "i2v": child_i2v}[args.child](args)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
